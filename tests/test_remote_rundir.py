"""Run directories and models in an object store, against a real S3-compatible server on
loopback (tests/fixtures/s3_server.py); no Ray. The Lion iteration on an s3:// run directory is
in test_remote_lion.py."""

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from lion_distill.data import RunDir, remote
from lion_distill.data.remote import local_model
from lion_distill.data.rundir_checks import unshared_problems
from lion_distill.preflight import run_dir_problems


def test_rundir_in_s3_keeps_its_scheme_for_other_processes(s3_bucket, tmp_path):
    uri = f"{s3_bucket}/runs/x?region=us-east-1"
    run = RunDir(uri)
    run.write_json("state.json", {"done": False})
    run.write_table("iter_0/train_pool.parquet", pa.table({"id": ["a", "b"]}))
    assert run.read_json("state.json") == {"done": False} and run.read_table("iter_0/train_pool.parquet").num_rows == 2
    assert run.path("iter_0") == f"{s3_bucket[5:]}/runs/x/iter_0"  # for run.fs: no scheme
    student = run.uri_of("iter_0", "imitation", "student")
    assert student == f"{s3_bucket}/runs/x/iter_0/imitation/student?region=us-east-1"
    assert RunDir(student.replace("/iter_0/imitation/student", "")).read_json("state.json") == {"done": False}
    local = RunDir(tmp_path / "run")
    assert local.uri_of("iter_0", "student") == str(tmp_path / "run" / "iter_0" / "student") and local.is_local


def test_a_table_written_a_chunk_at_a_time_appears_whole_or_not_at_all(s3_bucket):
    run = RunDir(f"{s3_bucket}/runs/chunks")
    chunk = pa.table({"id": ["a", "b"]})
    with run.table_writer("iter_0/judgments.parquet.first_pass", chunk.schema) as writer:
        for _ in range(3):
            writer.write_table(chunk)
        assert not run.exists("iter_0/judgments.parquet.first_pass")  # not before it is whole
    run.move("iter_0/judgments.parquet.first_pass", "iter_0/judgments.parquet")
    assert run.read_table("iter_0/judgments.parquet").column("id").to_pylist() == ["a", "b"] * 3
    with pytest.raises(RuntimeError):
        with run.table_writer("iter_0/broken.parquet", chunk.schema) as writer:
            writer.write_table(chunk)
            raise RuntimeError("killed midway")
    listed = run.fs.get_file_info(pafs.FileSelector(run.path("iter_0")))
    assert sorted(i.base_name for i in listed) == ["judgments.parquet"]  # no half file, no temp file


def _upload(folder, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(folder), path, destination_filesystem=fs)


def test_a_model_in_s3_is_downloaded_once_per_node_and_again_when_it_changes(
    s3_bucket, tiny_models, tmp_path, monkeypatch
):
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    uri = f"{s3_bucket}/run/iter_0/imitation/student"
    _upload(tiny_models.llama, uri)
    downloads = []
    copy_files = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda *a, **kw: (downloads.append(a[0]), copy_files(*a, **kw)))
    paths = []
    loaders = [threading.Thread(target=lambda: paths.append(local_model(uri))) for _ in range(3)]  # at once, one node
    for t in loaders:
        t.start()
    for t in loaders:
        t.join()
    assert len(downloads) == 1 and len(set(paths)) == 1 and paths[0].startswith(str(tmp_path / "cache"))
    assert AutoConfig.from_pretrained(paths[0]).model_type == "llama"
    assert local_model(uri) == paths[0] and len(downloads) == 1
    # A re-export (a resumed imitation) to the same place is a new version.
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{path}/generation_config.json") as out:
        out.write(b'{"do_sample": true}')
    again = local_model(uri)
    assert (
        again != paths[0]
        and len(downloads) == 2
        and (
            pafs.LocalFileSystem().get_file_info(f"{again}/generation_config.json").size == len(b'{"do_sample": true}')
        )
    )
    tokenizer = local_model(uri, tokenizer_only=True)  # for a process that only tokenises: no weights
    assert tokenizer != again and (Path(again) / "model.safetensors").is_file()
    assert {p.name for p in Path(tokenizer).iterdir()} == {p.name for p in Path(again).iterdir()} - {
        "model.safetensors"
    }
    assert AutoTokenizer.from_pretrained(tokenizer).vocab_size > 0
    assert local_model(str(tiny_models.llama)) == str(tiny_models.llama) and local_model("org/name") == "org/name"
    with pytest.raises(FileNotFoundError, match="no model files"):
        local_model(f"{s3_bucket}/nothing/here")


def test_run_dir_writability_is_checked_in_object_stores_too(s3_bucket):
    assert run_dir_problems(f"{s3_bucket}/runs/x") == []
    missing = "s3://lion-no-such-bucket-3f9a/runs/x"
    problems = run_dir_problems(missing)
    assert len(problems) == 1 and problems[0].startswith(f"run_dir: {missing} is not writable (")


def test_share_check_needs_a_cluster_and_a_local_path(s3_bucket, tmp_path):
    """Without Ray there are no other nodes; an object store is one bucket wherever it is
    opened. (The check itself, on a node that cannot see the folder: test_two_nodes.py.)"""
    assert unshared_problems(f"{s3_bucket}/runs/x") == []
    assert unshared_problems(str(tmp_path)) == []


def test_train_storage_goes_through_the_uris_filesystem(tmp_path):
    from lion_distill.train.loop import _storage, storage_path

    out = "s3://bucket/runs/x/iter_0/imitation/student?endpoint_override=127.0.0.1:9&scheme=http"
    assert (
        storage_path(out) == "s3://bucket/runs/x/iter_0/imitation/ray_train?endpoint_override=127.0.0.1:9&scheme=http"
    )
    storage = _storage(out)
    assert storage["storage_path"] == "bucket/runs/x/iter_0/imitation/ray_train"
    assert isinstance(storage["storage_filesystem"], pafs.S3FileSystem)
    assert _storage(str(tmp_path / "student")) == {"storage_path": str(tmp_path / "ray_train")}


def test_serve_replica_loads_a_model_in_s3_from_its_nodes_copy(s3_bucket, tiny_models, tmp_path, monkeypatch):
    from ray.serve.llm import LLMConfig, ModelLoadingConfig

    from lion_distill.llm.serve_server import with_local_model

    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    uri = f"{s3_bucket}/run/iter_0/imitation/student"
    _upload(tiny_models.llama, uri)
    config = LLMConfig(model_loading_config=ModelLoadingConfig(model_id=uri, model_source=uri))
    local = with_local_model(config).model_loading_config
    assert local.model_id == uri and local.model_source.startswith(str(tmp_path / "cache"))
    local_config = LLMConfig(model_loading_config=ModelLoadingConfig(model_id="m", model_source=str(tiny_models.llama)))
    assert with_local_model(local_config) is local_config


def test_preflight_accepts_a_model_in_s3_only_where_one_is(s3_bucket, tiny_models):
    from lion_distill.config.models import RoleConfig
    from lion_distill.preflight import Checks, role_checks

    def role_problems(name, role):
        checks = Checks()
        role_checks(name, role, checks)
        return checks.problems

    uri = f"{s3_bucket}/run/iter_0/imitation/student"
    _upload(tiny_models.llama, uri)
    assert role_problems("student", RoleConfig(backend="hf", model=uri)) == []
    empty = f"{s3_bucket}/run/iter_1/imitation/student"
    assert role_problems("student", RoleConfig(backend="hf", model=empty)) == [
        f"student.model: {empty} has no config.json (a Hugging Face model folder was expected)"
    ]
    unreachable = f"{s3_bucket}/m?endpoint_override=127.0.0.1:9&scheme=http"  # nothing listens on port 9
    (problem,) = role_problems("student", RoleConfig(backend="hf", model=unreachable))
    assert problem.startswith(f"student.model: {unreachable} cannot be read (")


def test_a_file_above_s3s_copy_limit_is_moved_whole(s3_bucket, monkeypatch):
    """S3 copies one object of at most 5 GiB (CopyObject, what pyarrow's move sends); a larger file is
    streamed into place instead. The limit lowered to a few bytes takes a small file down that path."""
    import lion_distill.data.rundir as rundir

    run = RunDir(f"{s3_bucket}/runs/big")
    monkeypatch.setattr(rundir, "COPY_OBJECT_LIMIT", 16)
    run.write_bytes("a.bin", b"x" * 1000)  # written to a temp file, then moved: the streamed path
    run.move("a.bin", "b.bin")
    assert run.read_bytes("b.bin") == b"x" * 1000 and not run.exists("a.bin")
    assert [i.base_name for i in run.fs.get_file_info(pafs.FileSelector(run.path(), recursive=True))] == ["b.bin"]


def test_a_student_half_uploaded_to_an_object_store_is_no_candidate(s3_bucket, tmp_path):
    """An object store cannot swap a folder in whole: the export is marked complete last, and the
    evaluation takes no student without the mark (its config.json may be there before its weights)."""
    from lion_distill.config.evaluate import CandidateConfig
    from lion_distill.evaluate.job import CandidateError, candidate_role
    from lion_distill.train.checkpoint import publish_dir

    run = RunDir(f"{s3_bucket}/runs/half")
    run.write_json("config.json", {"student": {"backend": "hf", "model": "base"}})
    run.write_json("iter_0/imitation/student/config.json", {"model_type": "llama"})  # the copy under way
    candidate = CandidateConfig(name="s", lion_run=run.uri)
    with pytest.raises(CandidateError, match="no student checkpoint"):
        candidate_role(candidate)
    local = tmp_path / "export"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "llama"}')
    (local / "model.safetensors").write_bytes(b"weights")
    publish_dir(str(local), run.uri_of("iter_0/imitation/student"))
    assert candidate_role(candidate).model == run.uri_of("iter_0", "imitation", "student")
