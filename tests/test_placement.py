"""Where engines and long-lived actors land, on a two-node cluster of fake-GPU raylets
(tests/fixtures/gpu_cluster.py): a tensor-parallel engine's GPUs on one node, for Ray Serve
LLM's deployments and Ray Data's per-stage engines alike; the driver state actor, the engine
reaper and a rate gate on the driver's node even when Ray would rather put them elsewhere;
and the reaper, which deletes a job's engines once the GCS says the job ended, never on one
failed read."""

import asyncio

import pytest

from lion_distill.config.models import Parallelism, RoleConfig
from lion_distill.driver_node import job_status
from lion_distill.llm.engine_args import engine_spec

HOLD_ONE_GPU_PER_NODE = r"""
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(log_to_driver=False)

@ray.remote(num_cpus=0, num_gpus=1)
class Holder:
    def ready(self):
        return True

nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
holders = [Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
ray.get([h.ready.remote() for h in holders])  # two GPUs free now, but never two on one node
"""

TP2_ON_ONE_NODE = (
    HOLD_ONE_GPU_PER_NODE
    + r"""
import json, sys
from ray.data.llm import build_processor
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from lion_distill.config.models import Parallelism, RoleConfig
from lion_distill.llm.engine_args import engine_spec
from lion_distill.llm.serve_backend import llm_config
from lion_distill.llm.vllm_backend import processor_config

role = RoleConfig(backend="vllm", model=sys.argv[1], parallelism=Parallelism(tensor_parallel_size=2))
spec = engine_spec(role, gpu=True)
opts = LLMServer.get_deployment_options(llm_config(spec))
engine_stage = build_processor(processor_config(role, spec, chat=True)).get_stage_by_name("vLLMEngineStage")
groups = {  # what each path asks Ray for, one engine each
    "serve": lambda: placement_group(opts["placement_group_bundles"], strategy=opts["placement_group_strategy"]),
    "data": lambda: engine_stage.map_batches_kwargs["ray_remote_args_fn"]()["scheduling_strategy"].placement_group,
}
out = {}
# Ray's default strategy would straddle the two nodes:
straddling = placement_group(opts["placement_group_bundles"], strategy="PACK")
out["pack_places_across_nodes"] = straddling.wait(10)
remove_placement_group(straddling)
for name, make in groups.items():
    pg = make()
    out[name + "_waits"] = not pg.wait(3)
    ray.kill(holders[0])  # a node with two free GPUs
    out[name + "_placed"] = pg.wait(20)
    out[name + "_nodes"] = len(set(placement_group_table(pg)["bundles_to_node_id"].values()))
    out[name + "_bundles"] = len(placement_group_table(pg)["bundles"])
    remove_placement_group(pg)
    holders[0] = Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[0], soft=False)).remote()
    ray.get(holders[0].ready.remote())
print(json.dumps(out))
"""
)


def test_engine_placement_is_one_bundle_per_rank_on_one_node():
    tp4 = RoleConfig(backend="vllm", model="m", parallelism=Parallelism(tensor_parallel_size=4, replicas=3))
    gpu = engine_spec(tp4, gpu=True)
    assert gpu.placement() == {"bundles": [{"GPU": 1, "CPU": 1}] * 4, "strategy": "STRICT_PACK"}
    assert gpu.placement(cpus_per_rank=0)["bundles"] == [{"GPU": 1}] * 4
    assert gpu.gpus == 12 and gpu.ask() == "3 replica(s) of 4 x {'GPU': 1}, STRICT_PACK (one node)"
    pp = engine_spec(tp4.model_copy(update={"engine_kwargs": {"pipeline_parallel_size": 2}}), gpu=True)
    # Pipeline ranks are GPUs too: what the engine places is what the fit check and the metrics count.
    assert len(pp.placement()["bundles"]) == pp.ranks == 8 and pp.gpus == 24
    cpu = engine_spec(tp4, gpu=False)
    assert cpu.placement() == {"bundles": [{"CPU": 1}]} and cpu.gpus == 0


@pytest.mark.ray
@pytest.mark.serve
def test_a_tp2_engine_waits_for_one_node_with_two_gpus_never_straddles(gpu_cluster, tiny_models):
    got = gpu_cluster.run(TP2_ON_ONE_NODE, str(tiny_models.llama))
    assert got["pack_places_across_nodes"], got  # the control: Ray's default would have split the engine
    for path in ("serve", "data"):
        assert got[f"{path}_waits"] and got[f"{path}_placed"], got
        assert got[f"{path}_bundles"] == 2 and got[f"{path}_nodes"] == 1, got


PINNED = (
    HOLD_ONE_GPU_PER_NODE
    + r"""
import json, sys
from ray._private.state import actors
from lion_distill.config.models import OpenAIEndpoint, ServingConfig
from lion_distill.data import RunDir
from lion_distill.llm.gate import NAMESPACE, gate_name, shared_gate
from lion_distill.llm.serving import JobEngines
from lion_distill.runner import driver, fresh_state

class Probe:
    def ready(self):
        return True

me = ray.get_runtime_context().get_node_id()
# The driver's node has no CPU left: Ray puts an actor that asks for one (its default) on
# the other node, as it would when the driver's node is busy or has no CPUs (a head node).
busy = ray.remote(num_cpus=2)(Probe).options(scheduling_strategy=NodeAffinitySchedulingStrategy(me, soft=False)).remote()
ray.get(busy.ready.remote())
node_of = lambda actor: actors(actor._actor_id.hex())["Address"]["NodeID"]
control = ray.remote(num_cpus=1)(Probe).options(lifetime="detached").remote()
ray.get(control.ready.remote())
state = driver(RunDir(sys.argv[1]), fresh_state("lion", "pinned"))
shared_gate(OpenAIEndpoint(base_url="http://127.0.0.1:9/v1"), "pinned-model")
gate = ray.get_actor(gate_name(OpenAIEndpoint(base_url="http://127.0.0.1:9/v1"), "pinned-model"), namespace=NAMESPACE)
engines = JobEngines(sys.argv[1], ServingConfig(), ("student",), gpu=False)
engines.open()
out = {"control_elsewhere": node_of(control) != me, "driver_state": node_of(state) == me, "gate": node_of(gate) == me,
       "reaper": node_of(engines._reaper) == me}
engines.close()
for actor in (control, state, gate):
    ray.kill(actor)
print(json.dumps(out))
"""
)


@pytest.mark.ray
@pytest.mark.serve
def test_long_lived_actors_sit_on_the_drivers_node_even_when_it_is_busy(gpu_cluster, tmp_path):
    got = gpu_cluster.run(PINNED, str(tmp_path / "run"))
    assert got["control_elsewhere"], got  # the driver's node is full
    assert got["driver_state"] and got["gate"] and got["reaper"], got


def test_a_job_is_dead_only_when_the_job_table_says_so(monkeypatch):
    from lion_distill.llm import serving

    rows = [{"JobID": "01000000", "IsDead": True}, {"JobID": "02000000", "IsDead": False}]
    assert job_status(rows, "01000000") is True and job_status(rows, "02000000") is False
    assert job_status(rows, "03000000") is None  # not listed: no verdict
    # A read that fails (the GCS busy for a moment) or says "running" is no verdict of death:
    # the reaper asks again, and returns only on the table's "dead".
    answers = iter([None, False, None, False, True])
    monkeypatch.setattr(serving, "job_finished", lambda job_id: next(answers))
    monkeypatch.setattr(serving, "REAPER_POLL_S", 0)
    asyncio.run(serving._Reaper("02000000", "lion-x-").job_ended())
    assert next(answers, "all read") == "all read"


REAPED = r'''
import json, signal, subprocess, sys, time
import ray
from ray import serve
from lion_distill.llm.serving import REAPER_POLL_S, run_prefix

JOB = """
import sys, time, ray
from ray import serve
from lion_distill.config.models import ServingConfig
from lion_distill.llm.serving import JobEngines
ray.init(log_to_driver=False)
engines = JobEngines(sys.argv[1], ServingConfig(), ("student",), gpu=False)
engines.open()

@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    def __call__(self):
        return "ok"

serve.run(Echo.bind(), name=engines.prefix + "echo", route_prefix=None)
print("up", flush=True)
time.sleep(600)
"""
ray.init(log_to_driver=False)
prefix = run_prefix(sys.argv[1])
apps = lambda: [a for a in serve.status().applications if a.startswith(prefix)]
job = subprocess.Popen([sys.executable, "-c", JOB, sys.argv[1]], stdout=subprocess.PIPE, text=True)
assert job.stdout.readline().strip() == "up"
time.sleep(3 * REAPER_POLL_S)  # the reaper has looked at the job table a few times
kept = apps()
job.send_signal(signal.SIGKILL)  # no cleanup of its own
job.wait()
begin = time.monotonic()
while apps() and time.monotonic() - begin < 60:
    time.sleep(0.5)
print(json.dumps({"kept_while_alive": kept, "left": apps(), "reaped_in_s": time.monotonic() - begin}))
'''


@pytest.mark.ray
@pytest.mark.serve
def test_the_reaper_keeps_a_live_jobs_engines_and_deletes_a_killed_ones(gpu_cluster, tmp_path):
    got = gpu_cluster.run(REAPED, str(tmp_path / "run"))
    assert got["kept_while_alive"] and got["left"] == [], got
