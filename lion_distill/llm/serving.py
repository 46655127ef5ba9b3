"""Long-lived vLLM engines for a job: one Ray Serve LLM deployment per distinct model and
engine settings, started on first use and kept until the job ends.

    with job_engines({"teacher": cfg.teacher, "referee": cfg.referee, ...}, cfg.serving, run_id=run.uri):
        generate(cfg.teacher, rows, to_prompt, stage="iter_0/imitation/teacher", role_name="teacher")
        ...                                   # every `vllm` role of every stage goes to its engine

Inside the block, `lion_distill.llm.generate` sends a `vllm` role's rows through Ray Data to the
role's engine (lion_distill.llm.serve_backend); roles whose model and engine settings are equal
(teacher, referee and generator of one 70B model) share one engine, whatever their
sampling. Frozen roles start once per job. The roles named in `per_iteration` (the
student) change model: a new model starts a new engine and retires the old one, and
`training()` retires them before fine-tuning; with `during_training: release` it stops
every engine, so training gets all GPUs, and they start again on next use (that cost is
in `engine_start_s`). Outside a block, or with `mode: per_stage`, each call starts and
stops its own engines as before.

Nothing outlives the job: the block deletes its Serve applications on exit, on an
exception and on SIGTERM; a detached reaper actor on the driver's node deletes them once
the GCS records the job as ended without having cleaned up (SIGKILL, a lost driver
process): the job's status decides, never a failed call; and a job entering a block for
the same run first deletes what a dead job of that run left. Applications are named
`lion-<run hash>-<engine hash>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from lion_distill.config.models import RoleConfig, ServingConfig
from lion_distill.driver_node import job_finished, on_driver_node, this_job
from lion_distill.llm.engine_args import EngineSpec, engine_spec
from lion_distill.llm.fit import PlanDoesNotFit, WaitedTooLong, cluster_gpus, engines_on_gpus, fit_problem

log = logging.getLogger("lion_distill.llm")

NAMESPACE = "lion-distill"
APP_PREFIX = "lion-"
REAPER_POLL_S = 2.0

_active: JobEngines | None = None


def active() -> JobEngines | None:
    """The engines of the job block we are in, if any."""
    return _active


def run_prefix(run_id: str) -> str:
    return APP_PREFIX + hashlib.sha256(run_id.encode()).hexdigest()[:8] + "-"


@dataclass
class Engine:
    app: str
    spec: EngineSpec
    roles: set[str] = field(default_factory=set)

    @property
    def model_id(self) -> str:
        return self.spec.model

    def wait_ready(self, timeout_s: float) -> None:
        from lion_distill.llm.serve_backend import PROBE_TIMEOUT_S, probe, wait_until

        deadline = time.monotonic() + timeout_s
        wait_until(
            lambda: probe(self.app, self.model_id, max(1.0, min(PROBE_TIMEOUT_S, deadline - time.monotonic()))),
            timeout_s,
            f"engine {self.app}",
        )


class JobEngines:
    """The engines of one job. Made by `job_engines`; stages reach it through `active()`."""

    def __init__(self, run_id: str, serving: ServingConfig, per_iteration: tuple[str, ...], gpu: bool):
        self.serving, self.per_iteration, self.gpu = serving, per_iteration, gpu
        self.prefix = run_prefix(run_id)
        self.engines: dict[str, Engine] = {}  # engine key -> engine
        # (role, seconds waited or None, model loads: one per replica) since the last take_metrics
        self.starts: list[tuple[str, float | None, int]] = []
        self._reaper = None

    @property
    def shared(self) -> bool:
        return self.serving.mode == "shared"

    # --- generation --------------------------------------------------------------

    def run(self, role: RoleConfig, prompted, *, role_name: str, chat: bool, structured_output, logprobs, parts=None):
        """-> (lazy dataset in the response contract, GPUs held). A drawn row (lion_distill.llm.generate's
        `draw`) seeds its request on GPUs; a CPU engine cannot seed one request and is not re-seeded
        per draw (it is shared), so its draws differ by the engine's advancing generator."""
        from lion_distill.llm.serve_backend import run_serve

        engine = self.engine_for(role, role_name)
        out = run_serve(
            engine,
            role,
            prompted,
            chat=chat,
            role_name=role_name,
            structured_output=structured_output,
            logprobs=logprobs,
            gpu=self.gpu,
            retries=self.serving.retries,
            ready_timeout_s=self.serving.ready_timeout_s,
            parts=parts,
        )
        return out, float(engine.spec.gpus)

    def engine_for(self, role: RoleConfig, role_name: str) -> Engine:
        spec = engine_spec(role, self.gpu)
        key = spec.key
        for other_key, engine in list(self.engines.items()):
            if other_key != key and role_name in engine.roles:  # this role moved on (a new student)
                engine.roles.discard(role_name)
                if not engine.roles:
                    self._stop(other_key)
        if key not in self.engines:
            self.engines[key] = self._start(spec, role, role_name)
        self.engines[key].roles.add(role_name)
        return self.engines[key]

    def count_per_stage_start(self, role: RoleConfig, role_name: str) -> None:
        """A per-stage vLLM call starts (and stops) `replicas` engines of its own."""
        self.starts.append((role_name, None, role.parallelism.replicas))

    # --- lifetimes ----------------------------------------------------------------

    def _start(self, spec: EngineSpec, role: RoleConfig, role_name: str) -> Engine:
        """Deploy the role's engine and wait, up to serving.ready_timeout_s, until it runs."""
        from ray.serve.llm import build_llm_deployment

        from lion_distill.llm.engine_start import EngineFailure, EngineStartFailed
        from lion_distill.llm.serve_backend import DEPLOYMENT, llm_config
        from lion_distill.llm.serve_server import JobLLMServer

        app = self.prefix + spec.key
        try:  # Serve LLM checks engine argument names here, before anything starts
            deployment = build_llm_deployment(
                llm_config(spec), deployment_cls=JobLLMServer, override_serve_options={"name": DEPLOYMENT}
            )
        except (ValueError, TypeError) as exc:
            raise EngineStartFailed(role_name, role.model, EngineFailure(f"{type(exc).__name__}: {exc}", True)) from exc
        self._track(app, add=True)
        log.info("starting engine %s for %s (%s)", app, role_name, role.model)
        begin = time.perf_counter()
        self._deploy_until_running(app, deployment, spec, role_name)
        seconds = time.perf_counter() - begin
        self.starts.append((role_name, seconds, role.parallelism.replicas))
        log.info("engine %s up in %.1f s", app, seconds)
        return Engine(app, spec)

    def _deploy_until_running(self, app: str, deployment, spec: EngineSpec, role_name: str) -> None:
        """Deploy `app` until it runs, within serving.ready_timeout_s. A failure a retry may fix (the
        engine died while it loaded) gets one more try; a GPU whose memory another process still
        holds is waited for and tried again (lion_distill.llm.engine_start.retry_after)."""
        from ray import serve

        from lion_distill.llm.engine_start import EngineStartFailed, retry_after, wait_running

        deadline = time.monotonic() + self.serving.ready_timeout_s
        for attempt in itertools.count(1):
            serve.run_many(
                [serve.RunTarget(deployment, name=app, route_prefix=None)], wait_for_applications_running=False
            )
            try:
                failure = wait_running(
                    app,
                    max(0.0, deadline - time.monotonic()),
                    lambda scheduling: self._waited(app, spec, role_name, scheduling),
                )
            except BaseException:
                serve.delete(app)  # nothing half-started is left holding GPUs
                raise
            if failure is None:
                return
            serve.delete(app)
            wait = retry_after(failure, attempt, deadline - time.monotonic())
            if wait is None:
                raise EngineStartFailed(role_name, spec.model, failure)
            log.warning("engine %s failed to start (%s); starting it again in %.0f s", app, failure.cause, wait)
            time.sleep(wait)

    def _waited(self, app: str, spec: EngineSpec, role_name: str, scheduling: bool):
        """The deadline passed: which role waited, for what, and what the cluster has."""
        what = "its engine's resources" if scheduling else "its engine to start"
        raise WaitedTooLong(
            f"{role_name} ({app})",
            spec.ask(),
            self.serving.ready_timeout_s,
            cluster_gpus().describe(),
            what=what,
        )

    def _stop(self, key: str) -> None:
        from ray import serve

        engine = self.engines.pop(key)
        log.info("stopping engine %s", engine.app)
        serve.delete(engine.app)
        self._track(engine.app, add=False)

    @contextmanager
    def training(self):
        """Around fine-tuning: the per-iteration engines stop (their model is about to be
        replaced); with during_training=release every engine stops, to start again on next use."""
        for key, engine in list(self.engines.items()):
            if self.serving.during_training == "release" or engine.roles <= set(self.per_iteration):
                self._stop(key)
        yield

    def take_metrics(self) -> dict:
        """Since the last call: `engine_starts` (model loads: an engine of N replicas is N) and
        `engine_start_s/<role>` (seconds the job waited for the engines that role started;
        per-stage engines start inside their stage and are not timed apart)."""
        starts, self.starts = self.starts, []
        out = {"engine_starts": sum(loads for _, _, loads in starts)}
        for role, seconds, _ in starts:
            if seconds is not None:
                out[f"engine_start_s/{role}"] = round(out.get(f"engine_start_s/{role}", 0.0) + seconds, 3)
        return out

    def open(self) -> None:
        """Delete what a dead job of this run left, and watch this job's driver."""
        import ray
        from ray import serve

        # Engines are reached through deployment handles: no HTTP proxy (a port, a process).
        serve.start(proxy_location="Disabled")
        try:
            ray.kill(ray.get_actor(self.prefix + "reaper", namespace=NAMESPACE))
        except ValueError:
            pass  # no reaper left: the last job of this run ended cleanly
        delete_apps(self.prefix)
        self._reaper = (
            ray.remote(num_cpus=0)(_Reaper)
            .options(name=self.prefix + "reaper", namespace=NAMESPACE, lifetime="detached", **on_driver_node())
            .remote(this_job(), self.prefix)
        )
        self._reaper.watch.remote()

    def close(self) -> None:
        import ray

        for key in list(self.engines):
            try:
                self._stop(key)
            except Exception as exc:  # the reaper's sweep below still deletes it
                log.warning("stopping engine %s: %s", self.engines.get(key), exc)
        delete_apps(self.prefix)
        if self._reaper is not None:
            ray.kill(self._reaper)

    def _track(self, app: str, add: bool) -> None:
        if self._reaper is not None:
            self._reaper.track.remote(app, add)


def delete_apps(prefix: str) -> list[str]:
    """Delete every Serve application whose name starts with `prefix`; -> their names."""
    from ray import serve

    try:
        apps = [name for name in serve.status().applications if name.startswith(prefix)]
    except Exception:  # Serve is not running: nothing to delete
        return []
    for name in apps:
        log.info("deleting Serve application %s", name)
        serve.delete(name)
    return apps


class _Reaper:
    """A detached actor on the driver's node that deletes a job's Serve applications once the
    GCS records the job as ended (lion_distill.driver_node) without it having deleted them itself.
    A job table it cannot read now is no verdict: it asks again."""

    def __init__(self, job_id: str, prefix: str):
        self.job_id, self.prefix, self.apps = job_id, prefix, set()

    def track(self, app: str, add: bool) -> None:
        (self.apps.add if add else self.apps.discard)(app)

    async def watch(self) -> None:
        import ray

        await self.job_ended()
        await asyncio.get_running_loop().run_in_executor(None, delete_apps, self.prefix)
        ray.actor.exit_actor()

    async def job_ended(self) -> None:
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, job_finished, self.job_id) is not True:
            await asyncio.sleep(REAPER_POLL_S)


@contextmanager
def job_engines(
    roles: dict[str, RoleConfig],
    serving: ServingConfig,
    *,
    run_id: str,
    per_iteration: tuple[str, ...] = ("student",),
    train_workers: int = 0,
    gpus_per_worker: int = 0,
):
    """The block a job runs its stages in (see the module docstring). `roles`: every role of
    the job by name; `run_id`: the run directory, which names the job's applications. Raises
    PlanDoesNotFit, before any engine starts, when the engines and training (`train_workers`
    x `gpus_per_worker`) cannot hold their GPUs at once (lion_distill.llm.fit)."""
    global _active
    if _active is not None:
        raise RuntimeError("job_engines blocks do not nest: one job, one set of engines")
    cluster = cluster_gpus()
    engines = JobEngines(run_id, serving, per_iteration, gpu=engines_on_gpus(cluster))
    problem = fit_problem(
        roles,
        per_iteration,
        train_workers=train_workers,
        gpus_per_worker=gpus_per_worker,
        cluster=cluster,
        during_training=serving.during_training,
        mode=serving.mode,
    )
    if problem:
        raise PlanDoesNotFit(problem)
    uses_vllm = any(r.backend == "vllm" for r in roles.values())
    if engines.shared and uses_vllm:
        engines.open()
    previous = _exit_on_sigterm()
    _active = engines
    try:
        yield engines
    finally:
        _active = None
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if engines.shared and uses_vllm:
            engines.close()


def _exit_on_sigterm():
    """SIGTERM (`ray job stop`, Kubernetes) unwinds the block, so its engines are deleted."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _exit)


@contextmanager
def training():
    """Wrap fine-tuning in this: frees the GPUs engines need not hold while the student trains."""
    if _active is None or not _active.shared:
        yield
        return
    with _active.training():
        yield


def take_engine_metrics() -> dict:
    """Engine starts since the last call (for a stage's metrics.json); {} outside a job block."""
    return {} if _active is None else _active.take_metrics()
