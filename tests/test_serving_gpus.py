"""GPU placement of shared engines without GPUs: a Ray instance that declares 16 GPUs
(`num_gpus=16`) reserves what Ray Serve LLM would ask for each engine of
configs/lion-7b-vllm.yaml (placement groups from LLMServer.get_deployment_options, one per
replica) and the training workers, and fit_problem's verdict matches what Ray can place."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import ray
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.util.placement_group import placement_group, remove_placement_group
from lion_distill.config import load_config
from lion_distill.llm.engine_args import engine_spec
from lion_distill.llm.serve_backend import llm_config
from lion_distill.llm.fit import cluster_gpus, fit_problem, gpu_plan

# A fresh instance of its own ("local"): the session may run other clusters (the fake-GPU one), which
# a bare ray.init() would join.
ray.init(address="local", num_cpus=16, num_gpus=int(sys.argv[2]), include_dashboard=False)  # a CPU per replica actor
cfg = load_config("configs/lion-7b-vllm.yaml", ["serving=shared"])
# The hub's 70B is not reachable here: a local model with the same parallelism.
roles = {name: getattr(cfg, name).model_copy(update={"model": sys.argv[1]}) for name in cfg.ROLES}
roles["student"] = roles["student"].model_copy(update={"max_model_len": 512})  # another engine than the frozen one

def reserve(role):
    opts = LLMServer.get_deployment_options(llm_config(engine_spec(role, gpu=True)))
    groups = [placement_group(opts["placement_group_bundles"], strategy=opts["placement_group_strategy"])
              for _ in range(role.parallelism.replicas)]
    return groups, all(g.wait(10) for g in groups)

train = [{"GPU": cfg.train.gpus_per_worker}] * cfg.train.num_workers
plan = gpu_plan(roles, ("student",), len(train) * cfg.train.gpus_per_worker, "keep")
problem = fit_problem(roles, ("student",), train_workers=len(train), gpus_per_worker=cfg.train.gpus_per_worker,
                      cluster=cluster_gpus(), during_training="keep")
frozen, frozen_ok = reserve(roles["teacher"])
student, student_ok = reserve(roles["student"])
for g in student:  # the student's engine stops before training (its model is about to change)
    remove_placement_group(g)
training_ok = placement_group(train).wait(10)
print(json.dumps({"problem": problem, "peak": plan["peak_gpus"], "frozen": frozen_ok,
                  "student": student_ok, "training": training_ok}))
"""


@pytest.mark.ray
@pytest.mark.serve
@pytest.mark.parametrize("gpus", [16, 8])
def test_the_fit_check_matches_what_ray_places_on_declared_gpus(tiny_models, gpus):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_models.llama), str(gpus)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["peak"] == 16 and got["frozen"]
    fits = got["student"] and got["training"]
    assert fits == (got["problem"] is None) == (gpus == 16), got
