"""Does the plan fit the cluster's GPUs (lion_distill.llm.fit), in milliseconds without Ray; and, on
a cluster of fake-GPU raylets, a Lion job whose plan cannot fit ends with one line, before any
engine starts."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lion_distill.config.models import Parallelism, RoleConfig
from lion_distill.llm.fit import ClusterGpus, fit_problem, gpu_plan
from tests.fixtures.gpu_cluster import GPUS_PER_NODE

REPO = Path(__file__).resolve().parent.parent


def role(model, tp=1, replicas=1, backend="vllm") -> RoleConfig:
    return RoleConfig(backend=backend, model=model, parallelism=Parallelism(tensor_parallel_size=tp, replicas=replicas))


BIG = role("/70b", tp=4, replicas=2)
ROLES = {"teacher": BIG, "referee": BIG, "generator": BIG, "student": role("/7b", replicas=8)}


def fits(cluster_gpus, train_workers, during_training, per_node=8, mode="shared", autoscaler=None, roles=ROLES):
    return fit_problem(
        roles,
        ("student",),
        train_workers=train_workers,
        gpus_per_worker=1.0,
        cluster=ClusterGpus(cluster_gpus, cluster_gpus, per_node, autoscaler),
        during_training=during_training,
        mode=mode,
    )


def test_keep_needs_room_for_everything_release_for_each_phase():
    plan = gpu_plan(ROLES, ("student",), train_gpus=8, during_training="keep")
    assert plan["frozen_engine_gpus"] == 8 and plan["peak_gpus"] == 16  # one 70B engine for three roles
    assert fits(24, 8, "keep") is None
    # Training on 16 GPUs beside the frozen engine's 8 needs 24; stopping the engines for it needs 16.
    line = fits(16, 16, "keep")
    assert "during_training: release" in line and "\n" not in line
    assert "teacher+referee+generator 2 x TP 4 = 8" in line and "student 8 x TP 1 = 8" in line
    assert "training 16 workers x 1 GPU = 16" in line and "the cluster has 16 GPUs" in line
    assert fits(16, 16, "release") is None
    assert "fewer replicas" in fits(12, 16, "release")


def test_per_stage_engines_hold_one_engine_at_a_time_and_the_autoscaler_counts():
    assert fits(8, 8, "keep", mode="per_stage") is None  # the 70B's 8 or training's 8, never both
    assert fits(8, 9, "keep", mode="per_stage") is not None
    assert fits(8, 16, "release", autoscaler=32) is None  # the cluster may grow to 32
    assert "up to 32 with the autoscaler" in fits(8, 40, "release", autoscaler=32)


def test_a_tensor_parallel_engine_needs_its_gpus_on_one_node():
    line = fits(16, 0, "release", per_node=2)
    assert "teacher: TP 4 needs 4 GPUs on one node" in line and "at most 2 on one node" in line
    assert fits(0, 0, "keep", per_node=0) is None  # no GPUs at all: every engine runs on CPU


def test_an_hf_role_holds_a_gpu_per_replica_beside_the_shared_engines():
    roles = {**ROLES, "judge": role("/judge", replicas=4, backend="hf")}
    plan = gpu_plan(roles, ("student",), train_gpus=8, during_training="release")
    assert plan["serving_gpus"] == 8 + 8 + 4 and "judge 4 x hf = 4" in plan["engines"]
    assert fits(16, 8, "release") is None and fits(16, 8, "release", roles=roles) is not None
    assert fits(20, 8, "release", roles=roles) is None
    per_stage = {"student": role("/7b"), "judge": role("/judge", replicas=4, backend="hf")}
    assert gpu_plan(per_stage, ("student",), train_gpus=0, during_training="keep", mode="per_stage")["peak_gpus"] == 4


def test_pipeline_ranks_count_in_the_plan_the_node_check_and_the_engines_gpus():
    from lion_distill.llm.fit import engine_gpus

    pipelined = BIG.model_copy(update={"engine_kwargs": {"pipeline_parallel_size": 2}})  # 2 x (TP 4 x PP 2)
    roles = {"teacher": pipelined, "student": role("/7b", replicas=8)}
    assert engine_gpus(pipelined) == 16
    plan = gpu_plan(roles, ("student",), train_gpus=8, during_training="release")
    assert plan["frozen_engine_gpus"] == 16 and "teacher 2 x TP 4 x PP 2 = 16" in plan["engines"]
    assert fits(24, 8, "release", roles=roles) is None
    assert "teacher: TP 4 x PP 2 needs 8 GPUs on one node" in fits(32, 8, "release", per_node=4, roles=roles)


def test_engines_run_on_gpus_where_the_autoscaler_may_add_them():
    from lion_distill.llm.fit import engines_on_gpus

    assert engines_on_gpus(ClusterGpus(8, 8, 8)) and not engines_on_gpus(ClusterGpus(0, 0, 0))
    # Scaled to zero GPU nodes: bf16 engines that wait for the nodes, not fp32 ones on the CPUs.
    assert engines_on_gpus(ClusterGpus(0, 0, 8, autoscaler_max=16))


def test_gpu_roles_that_will_start_on_cpu_are_said_where_ray_reports_no_ceiling():
    """Ray 2.60's autoscalers report no cluster config, so ClusterGpus.autoscaler_max is None on a
    launcher or KubeRay cluster scaled to zero GPU nodes: preflight says so for the roles set for GPUs."""
    from lion_distill.config import load_config
    from lion_distill.preflight import cpu_engine_notes

    gpu_config, cpu_config = load_config(REPO / "configs/lion-7b-vllm.yaml"), load_config(REPO / "configs/demo.yaml")
    (note,) = cpu_engine_notes(gpu_config, ClusterGpus(0, 0, 0))
    assert note.startswith("teacher, student, referee, generator: set for GPUs") and "start on CPU" in note
    assert "max_model_len 512" in note and "min_workers: 1" in note
    assert cpu_engine_notes(gpu_config, ClusterGpus(8, 8, 8)) == []
    assert cpu_engine_notes(gpu_config, ClusterGpus(0, 0, 8, autoscaler_max=16)) == []  # the ceiling says GPUs
    assert cpu_engine_notes(gpu_config, ClusterGpus(0, 0, 0, autoscaler_max=0)) == []  # it says none: CPU it is
    assert cpu_engine_notes(cpu_config, ClusterGpus(0, 0, 0)) == []  # tiny models in fp32: a CPU config


OVER_ASKING = [
    "--set=serving=shared",
    "--set=teacher.parallelism.tensor_parallel_size=2",
    "--set=referee.parallelism.replicas=2",
    "--set=train.num_workers=2",
    "--set=train.gpus_per_worker=1",
    "--set=eval=null",
]


@pytest.mark.ray
@pytest.mark.serve  # in the Serve session, which starts the fake-GPU cluster anyway
def test_an_over_asking_plan_ends_in_one_line_within_60_s(gpu_cluster, tiny_models, tmp_path):
    # Frozen engines: the teacher's 1 x TP 2, the referee's 2 x TP 1, the generator's 1 x TP 1 (the
    # student is hf: no engine), kept beside 2 training workers of a GPU each: 7 GPUs at once, on a
    # cluster of 2 nodes x 2. Each alone fits, so only the sum can refuse it.
    begin = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "jobs/lion.py",
            "--config",
            "configs/demo.yaml",
            f"--set=run_dir={tmp_path / 'run'}",
            *OVER_ASKING,
        ],
        cwd=REPO,
        env=gpu_cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - begin
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert seconds < 60 and len(errors) == 1, proc.stderr[-3000:]
    assert f"the cluster has {2 * GPUS_PER_NODE} GPUs" in errors[0] and "training 2 workers x 1 GPU = 2" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "iter_0" / "imitation").exists()  # nothing started


def test_preflight_says_what_a_70b_first_start_and_per_stage_engines_cost():
    """configs/lion-7b-vllm.yaml: three roles of one 70B engine loading it anew in every stage
    (serving: per_stage, for its one 8-GPU node), and its 141 GB download inside a 900 s start (sized
    from the hub's model card, which this machine cannot reach: the note's line from its size)."""
    from lion_distill.config import load_config
    from lion_distill.preflight import first_download_note, preflight

    cfg = load_config(REPO / "configs/lion-7b-vllm.yaml")
    (per_stage,) = [n for n in preflight(cfg, env={}).notes if n.startswith("serving: per_stage")]
    assert "teacher, referee, generator" in per_stage and "needs 16 GPUs at once" in per_stage
    line = first_download_note(["teacher"], "org/70b", 70_553_706_496, 900)
    assert "downloads about 141 GB" in line and "about 24 min" in line and "hf download org/70b" in line
    assert first_download_note(["teacher"], "org/1b", 1_000_000_000, 900) is None  # 2 GB: 20 s
