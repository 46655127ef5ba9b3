"""Does a job's plan fit the cluster's GPUs, and what a wait for resources says when it ends.

    problem = fit_problem(roles, ("student",), train_workers=8, gpus_per_worker=1,
                          cluster=cluster_gpus(), during_training="keep", mode="shared")
    if problem: raise PlanDoesNotFit(problem)      # before the first engine starts

The job holds at once: with shared engines, every frozen engine (teacher, referee, generator,
judge: one per distinct model and engine settings) plus the student's; during training, the
training workers plus, with `during_training: keep`, the frozen engines (`release`: each phase
alone). Per-stage engines hold one role's engine at a time. An engine holds tensor x pipeline
parallel GPUs per replica, all on one node (lion_distill.llm.engine_args.EngineSpec). The cluster's
GPUs are what it has now, or what its autoscaler may grow to where Ray reports a maximum: engines
run on GPUs when the cluster has or can have any (`engines_on_gpus`), so a GPU cluster scaled to
zero GPU nodes starts its engines in bf16 on the nodes the autoscaler adds, not in fp32 on CPU.

A wait that passes its deadline (an engine's start, Ray Train's workers) ends the stage with a
`WaitedTooLong`: the role, what it asked for and what the cluster had; the run stays resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

from lion_distill.config.models import RoleConfig
from lion_distill.llm.engine_args import engine_spec, ranks


class PlanDoesNotFit(RuntimeError):
    """The job asks for more GPUs at once than the cluster has or can grow to (one line)."""


class WaitedTooLong(RuntimeError):
    """A role waited past its deadline for what it asked for."""

    def __init__(self, role: str, asked: str, waited_s: float, cluster: str, what: str = "its resources"):
        super().__init__(f"{role}: waited {waited_s:.0f} s for {what} ({asked}); {cluster}")
        self.role, self.asked = role, asked


@dataclass(frozen=True)
class ClusterGpus:
    total: float  # GPUs the cluster has now
    free: float  # of those, not held by anyone
    per_node: float  # the most one node has (or an autoscaler node type would have)
    autoscaler_max: float | None = None  # the most the autoscaler may grow to, where Ray reports it

    @property
    def ceiling(self) -> float:
        return max(self.total, self.autoscaler_max or 0)

    def describe(self) -> str:
        grows = f", up to {self.autoscaler_max:g} with the autoscaler" if self.autoscaler_max else ""
        return f"the cluster has {self.total:g} GPUs ({self.free:g} free{grows}), at most {self.per_node:g} on one node"


def cluster_gpus() -> ClusterGpus:
    """What the joined cluster has now, and its autoscaler's maximum where Ray reports one."""
    import ray
    from ray._private.state import state

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    per_node = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    autoscaler = None
    try:  # a cluster launched by the autoscaler (or KubeRay with it) records its node types
        config = state.get_cluster_config()
        limits = state.get_max_resources_from_cluster_config() or {}
    except Exception:
        config, limits = None, {}
    if limits.get("GPU"):
        autoscaler = float(limits["GPU"])
        per_node = max([per_node, *(g.resources.get("GPU", 0) for g in config.node_group_configs)])
    return ClusterGpus(
        ray.cluster_resources().get("GPU", 0), ray.available_resources().get("GPU", 0), per_node, autoscaler
    )


def engines_on_gpus(cluster: ClusterGpus | None = None) -> bool:
    """Do the job's engines run on GPUs: the cluster has GPUs, or its autoscaler may add them."""
    return (cluster or cluster_gpus()).ceiling > 0


def engine_gpus(role: RoleConfig) -> int:
    """GPUs a `vllm` role's engine holds on a GPU cluster (EngineSpec.gpus)."""
    return engine_spec(role, gpu=True).gpus


def _ranks(role: RoleConfig) -> str:
    """The engine's ranks as a line says them: TP 4, or TP 4 x PP 2 where it pipelines too."""
    tp = role.parallelism.tensor_parallel_size
    return f"TP {tp}" + (f" x PP {ranks(role) // tp}" if ranks(role) > tp else "")


def _engine(names: list[str], role: RoleConfig) -> str:
    return f"{'+'.join(names)} {role.parallelism.replicas} x {_ranks(role)} = {engine_gpus(role)}"


def gpu_plan(
    roles: dict[str, RoleConfig],
    per_iteration: tuple[str, ...],
    train_gpus: float,
    during_training: str,
    mode: str = "shared",
) -> dict:
    """The GPUs the job's engines and training hold at once (`peak_gpus`), and each engine
    (`engines`: "roles replicas x TP = GPUs"). An `hf` role holds a GPU per replica while its
    stage runs (lion_distill.llm.generate), beside the shared engines that are up then."""
    vllm = {name: r for name, r in roles.items() if r.backend == "vllm"}
    hf = {name: r.parallelism.replicas for name, r in roles.items() if r.backend == "hf"}
    groups: dict[str, list[str]] = {}
    for name, r in vllm.items():
        if name not in per_iteration:
            groups.setdefault(engine_spec(r, gpu=True).key, []).append(name)
    frozen_roles = {key: vllm[names[0]] for key, names in groups.items()}
    student = max((engine_gpus(r) for name, r in vllm.items() if name in per_iteration), default=0)
    if mode == "shared":
        frozen = sum(engine_gpus(r) for r in frozen_roles.values())
        serving, training = (
            frozen + student + max(hf.values(), default=0),
            train_gpus + (frozen if during_training == "keep" else 0),
        )
    else:  # a stage starts and stops its own engines: one at a time
        frozen = max([*(engine_gpus(r) for r in vllm.values()), *hf.values()], default=0)
        serving, training = frozen, train_gpus
    engines = [_engine(names, frozen_roles[key]) for key, names in groups.items()]
    engines += [_engine([name], r) for name, r in vllm.items() if name in per_iteration]
    engines += [f"{name} {replicas} x hf = {replicas}" for name, replicas in hf.items()]
    return {
        "frozen_engine_gpus": frozen,
        "student_engine_gpus": student,
        "train_gpus": train_gpus,
        "peak_gpus": max(serving, training),
        "serving_gpus": serving,
        "training_gpus": training,
        "engines": engines,
    }


def fit_problem(
    roles: dict[str, RoleConfig],
    per_iteration: tuple[str, ...],
    *,
    train_workers: int,
    gpus_per_worker: int,
    cluster: ClusterGpus,
    during_training: str,
    mode: str = "shared",
) -> str | None:
    """None when the plan fits; else one line: each engine and training with what they ask,
    what the cluster has, and the setting that would make it fit."""
    train_gpus = train_workers * gpus_per_worker
    plan = gpu_plan(roles, per_iteration, train_gpus, during_training, mode)
    if not cluster.ceiling:
        return None  # engines run on CPU; training's GPUs are lion_distill.preflight.cluster_problems' to check
    too_wide = [
        f"{name}: {_ranks(r)} needs {ranks(r)} GPUs on one node"
        for name, r in roles.items()
        if r.backend == "vllm" and ranks(r) > cluster.per_node
    ]
    if plan["peak_gpus"] <= cluster.ceiling and not too_wide:
        return None
    asks = "; ".join([*plan["engines"], f"training {train_workers} workers x {gpus_per_worker:g} GPU = {train_gpus:g}"])
    if too_wide:
        hint = "lower tensor_parallel_size (or pipeline_parallel_size) or use nodes with more GPUs"
    elif (
        mode == "shared"
        and during_training == "keep"
        and plan["serving_gpus"] <= cluster.ceiling
        and train_gpus <= cluster.ceiling
    ):
        hint = "set serving.during_training: release (engines stop while the student trains)"
    else:
        hint = "use fewer replicas or training workers, or more GPUs"
    return (
        f"the plan holds {plan['peak_gpus']:g} GPUs at once (serving: {mode}, during_training: {during_training}): "
        f"{asks}{'; ' + '; '.join(too_wide) if too_wide else ''}; but {cluster.describe()}: {hint}"
    )
