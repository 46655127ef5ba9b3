"""A Lion iteration with an `s3://` run directory on a real S3-compatible server (moto, on
loopback): pools, responses, state, the training checkpoints and the student's export all land
in the bucket, and the next stages load the student from there through each node's model
cache. The credentials (environment variables) are written nowhere."""

import json

import pyarrow.fs as pafs

from lion_distill.data import RunDir
from lion_distill.data.remote import cache_root
from lion_distill.lion import loop
from tests.fixtures.s3_server import S3_ENV
from tests.test_lion_e2e import DEMO, KEY, KEY_ENV, overrides


def _files(run: RunDir) -> dict[str, int]:
    infos = run.fs.get_file_info(pafs.FileSelector(run.root, recursive=True))
    return {i.path[len(run.root) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


def _cached() -> set:
    return {p for p in cache_root().glob("*") if p.is_dir()}


def test_lion_iteration_on_an_s3_run_directory(ray_cluster, vllm_server, s3_bucket, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    uri = f"{s3_bucket}/runs/lion"
    cached_before = _cached()
    # Checkpoints kept (train.keep_checkpoints) to see them in the bucket; deleted there at the end.
    state = loop.run(
        loop.load(DEMO, overrides(uri, vllm_server, iterations=1, sample=8, new=2) + ["train.keep_checkpoints=true"])
    )
    run = RunDir(uri)
    assert state["done"] and run.read_json("state.json")["done"]
    # The final imitation trained the iteration-0 student, loaded from the bucket.
    assert state["outputs"]["student_model"] == f"{uri}/iter_1/imitation/student"
    files = _files(run)
    for k in (0, 1):
        assert files[f"iter_{k}/train_pool.parquet"] and files[f"iter_{k}/imitation/teacher_responses.parquet"]
        assert (
            files[f"iter_{k}/imitation/student/config.json"] and files[f"iter_{k}/imitation/student/model.safetensors"]
        )
        assert any(f.startswith(f"iter_{k}/imitation/ray_train/") and f.endswith(".distcp") for f in files)
    for name in ("student_responses", "teacher_responses", "judgments"):
        assert files[f"iter_0/discrimination/{name}.parquet"]
    assert files["iter_0/generation/new_instructions.parquet"] and files["report.md"]
    from lion_distill.train import delete_checkpoints

    delete_checkpoints(f"{uri}/iter_0/imitation/student")  # what an imitation does after export by default
    assert not any(f.startswith("iter_0/imitation/ray_train/") for f in _files(run))
    assert json.loads(run.read_bytes("config.json"))["run_dir"] == uri
    # The discrimination's student actor and the final imitation's training worker loaded the
    # iteration-0 student on this one node, the final imitation's tokenisers its tokenizer:
    # one download of the model, one of the tokenizer files alone.
    new = _cached() - cached_before
    assert sorted(bool(list(p.glob("*.safetensors"))) for p in new) == [False, True], new
    secrets = (S3_ENV["AWS_SECRET_ACCESS_KEY"], KEY)
    for rel in _files(run):  # what the bucket holds now
        data = run.read_bytes(rel)
        assert not any(s.encode() in data for s in secrets), rel
