"""Everything a run will need, checked before it starts or joins a cluster: every problem at
once, one line each, so a run fails in seconds instead of at the stage that needs the thing.

    checks = preflight(cfg)
    checks.inputs      # what the plan and the run both need: [] when the inputs parse
    checks.problems    # inputs + what only a run needs: [] when the run can start
    checks.notes       # worth a line, stops nothing (a hub name, downloaded on each node)
    problems = cluster_problems(cfg, ray.cluster_resources())   # once joined

Inputs: pool files exist and parse (with rows left to use), an evaluation's questions with a
reference answer each, a step-by-step task's files and its teacher's prompt (with its `{input}`
slot), a paper task's splits at their published sizes (unless data.allow_partial).
Only a run needs: an API role's key variable set; a local role's model folder, or a hub
name where each node may download it (neither HF_HUB_OFFLINE nor TRANSFORMERS_OFFLINE set); a
student in each Lion run an evaluation names; a writable run directory (a local path or an object
store URI) and, once joined, the same folder on every node (lion_distill.data.rundir_checks); the experiment tracker can start
(installed, credentials, its folder writable or its server answering); a LoRA student's libraries
installed (PEFT, and bitsandbytes for QLoRA); a white-box mode's teacher (lion_distill.distill.teacher:
the student's vocabulary, an engine allowed top_k logprobs, a server that returns them). `--plan` prices a run whose run-only problems are not
solved yet (no key handed out yet): it prints them as notes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel

from lion_distill.config.distill import DistillRunConfig
from lion_distill.config.evaluate import EvalConfig
from lion_distill.config.models import DataConfig, RoleConfig, TrackingConfig, TrainConfig
from lion_distill.config.run import RunConfig
from lion_distill.config.step_by_step import StepByStepConfig
from lion_distill.data.remote import is_uri, model_problems

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
BF16_BYTES = 2
# The rate a note on a first hub download assumes (an order of magnitude for one download onto a
# shared network filesystem, not a measurement): it only says whether the start's deadline can hold it.
DOWNLOAD_BYTES_PER_S = 100e6


@dataclass
class Checks:
    inputs: list[str] = field(default_factory=list)  # stop the plan and the run: inputs that do not load
    run: list[str] = field(default_factory=list)  # stop only a run: keys, models, the run directory
    notes: list[str] = field(default_factory=list)  # stop nothing

    @property
    def problems(self) -> list[str]:
        return self.inputs + self.run


def roles(cfg: BaseModel, prefix: str = "") -> Iterator[tuple[str, RoleConfig]]:
    """Every RoleConfig in a config, however nested, by its dotted field name."""
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, RoleConfig):
            yield prefix + name, value
        elif isinstance(value, BaseModel):
            yield from roles(value, f"{prefix}{name}.")
        elif isinstance(value, list):  # the evaluation's candidates
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from roles(item, f"{prefix}{name}[{i}].")


def _sections(cfg: BaseModel, kind: type) -> Iterator[tuple[str, BaseModel]]:
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, kind):
            yield name, value


def _offline(env) -> str | None:
    """The variable that keeps transformers and vLLM off the hub, if one is set (as they read it)."""
    return next((v for v in OFFLINE_VARIABLES if env.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")), None)


def role_checks(name: str, role: RoleConfig, checks: Checks, env=os.environ) -> bool:
    """An API role's key; a local role's model: a folder that exists, or a hub name (-> True
    when it is a hub name each node may download)."""
    if role.backend == "openai":
        from lion_distill.llm.openai_client import resolve_api_key

        try:
            resolve_api_key(role, env)
        except ValueError as e:
            checks.run.append(f"{name}.{e}")
        return False
    if os.path.isdir(role.model):
        return False
    if is_uri(role.model):  # in an object store: each node that loads it downloads it (lion_distill.data.remote)
        checks.run += model_problems(f"{name}.model", role.model)
        return False
    if role.model.startswith((".", "/", "~")) or os.sep in role.model.strip("/").split("/", 1)[-1]:
        checks.run.append(f"{name}.model: {role.model!r} does not exist (a local model folder was expected)")
    elif _offline(env):
        checks.run.append(
            f"{name}.model: {role.model!r} is a model hub name, but {_offline(env)} is set, so no node "
            f"may download it: unset {_offline(env)} or give a local folder every node sees"
        )
    else:
        return True
    return False


def data_problems(name: str, data: DataConfig) -> list[str]:
    from lion_distill.data import load_pool
    from lion_distill.errors import PoolFileError

    problems = [f"{name}.pool_files: {path}: file not found" for path in data.pool_files if not os.path.exists(path)]
    if problems:
        return problems
    try:
        _, report = load_pool(data.pool_files, data.field_map, data.max_instruction_chars, data.sources())
    except PoolFileError as e:
        return [f"{name}{'' if data.datasets else '.pool_files'}: {e}"]  # the error names the file or source
    if not report.rows_kept:
        return [f"{name}.pool_files: no usable instructions ({dict(report.rejects)})"]
    return []


def chat_template_problems(cfg: BaseModel) -> list[str]:
    """A Lion student's format against its pool and template (docs/chat-students.md): `alpaca` has no
    place for a conversation; `chat` needs a template that renders and masks a conversation (and,
    with teacher.reasoning keep, renders a thinking), and that accepts each of the pool's
    conversations, each refused one named by its file and line."""
    from lion_distill.data import load_pool
    from lion_distill.errors import PoolFileError
    from lion_distill.llm.prompts import has_chat_template, prompt_format

    data, student = getattr(cfg, "data", None), getattr(cfg, "student", None)
    if not isinstance(data, DataConfig) or student is None or not os.path.isdir(student.model):
        return []
    try:
        pool, _ = load_pool(data.pool_files, data.field_map, data.max_instruction_chars, data.sources())
    except PoolFileError:
        return []  # data_problems says why
    chats = sum(1 for s, h in zip(pool.column("system").to_pylist(), pool.column("history").to_pylist()) if s or h)
    fmt = prompt_format(student)
    if fmt == "alpaca":
        if not chats:
            return []
        return [
            f"student.prompt_format: alpaca has no place for a system prompt or earlier turns; the pool has "
            f"{chats} conversations: set student.prompt_format: chat"
        ]
    if not has_chat_template(student.model):
        return [
            f"student.prompt_format: chat, but {student.model} has no chat template (give its tokenizer a "
            "chat_template, or set student.prompt_format: alpaca)"
        ]
    from lion_distill.train.batches import load_tokenizer
    from lion_distill.train.chat import template_problem

    tok, kwargs = load_tokenizer(student.model), student.chat_template_kwargs
    reasoning = getattr(getattr(cfg, "teacher", None), "reasoning", "drop")
    problem = template_problem(tok, kwargs, thinking=reasoning == "keep")
    if problem:
        field = "teacher.reasoning" if "thinking" in problem else "student.model"
        return [f"{field}: {problem}" + ("; set teacher.reasoning: drop" if field == "teacher.reasoning" else "")]
    return refused_conversations(tok, data, kwargs) if chats else []


MAX_LINES = 5  # refused conversations named one a line; the rest counted


def refused_conversations(tok, data: DataConfig, template_kwargs: dict) -> list[str]:
    """Each pool conversation the student's template refuses, by file and line."""
    from lion_distill.data.readers import LoadReport, checked_rows
    from lion_distill.llm.prompts import instruction_messages
    from lion_distill.train.chat import conversation_problem

    refused = []
    rows = checked_rows(
        data.pool_files, data.field_map, data.max_instruction_chars, sources=data.sources(), report=LoadReport()
    )
    for row, where in rows:
        if row.get("system") or row.get("history"):
            messages = [*instruction_messages(row), {"role": "assistant", "content": "answer"}]
            problem = conversation_problem(tok, messages, template_kwargs)
            if problem:
                refused.append(f"{where}: the student's chat template refuses this conversation: {problem}")
    more = [f"... and {len(refused) - MAX_LINES} more conversations"] if len(refused) > MAX_LINES else []
    return refused[:MAX_LINES] + more


def eval_checks(name: str, cfg: EvalConfig, checks: Checks) -> None:
    """Questions that load and a reference answer for each (inputs), and a student in every Lion
    run named (the run's: the plan prices a run that has not trained it yet)."""
    from lion_distill.errors import CandidateError, EvalDataError, PoolFileError
    from lion_distill.evaluate.job import candidate_role
    from lion_distill.evaluate.questions import load_questions, read_reference_answers

    try:
        questions = load_questions(cfg.questions, cfg.seed)[0]
        if cfg.reference.answers is not None:
            read_reference_answers(cfg.reference, questions)
    except (PoolFileError, EvalDataError) as e:
        checks.inputs.append(f"{name}: {e}")
    for i, candidate in enumerate(cfg.candidates):
        if candidate.lion_run is not None:
            try:
                candidate_role(candidate)
            except CandidateError as e:
                checks.run.append(f"{name}.candidates[{i}]: {e}")


def step_by_step_problems(cfg: StepByStepConfig) -> list[str]:
    """The task's files (train and test rows, released rationales) and a generating teacher's prompt."""
    from lion_distill.errors import PromptError, TaskDataError
    from lion_distill.step_by_step.prompts import default_prompt_file, load_prompt
    from lion_distill.step_by_step.readers import size_problems
    from lion_distill.step_by_step.stages import read_task

    d = cfg.data  # every split there at its published size (unless data.allow_partial); then whether they parse
    problems = size_problems(d.task, d.data_dir, {"train": d.train_limit, "test": d.test_limit}, d.allow_partial)
    try:
        problems or read_task(cfg)
    except TaskDataError as e:
        problems.append(f"data: {e}")
    if cfg.teacher.source == "generate":
        try:
            load_prompt(cfg.teacher.prompt_file or default_prompt_file(cfg.data.task))
        except PromptError as e:
            problems.append(f"teacher.prompt_file: {e}")
    return problems


def run_dir_problems(run_dir: str) -> list[str]:
    from lion_distill.data.rundir_checks import writable_problems

    return writable_problems(run_dir)  # a local path or an object store URI alike


def student_space_checks(cfg: RunConfig, checks: Checks) -> None:
    """A Lion student named by hub id: the run directory's disk holds every imitation's export
    and the training checkpoints alive at once (lion_distill.data.student_size)."""
    from lion_distill.data.student_size import hub_parameters, space_problem

    params = hub_parameters(cfg.student.model)
    if params is None:
        checks.notes.append(
            f"student.model: {cfg.student.model!r} could not be sized (not in this machine's Hugging "
            "Face cache, and the hub did not answer): run_dir's free space is not checked"
        )
        return
    imitations = cfg.lion.iterations + cfg.lion.final_imitation
    alive = 0 if cfg.train.lora else 2 * (imitations if cfg.train.keep_checkpoints else 1)  # Ray Train keeps two
    problem = space_problem("student", params, cfg.run_dir, exports=imitations, checkpoints=alive)
    if problem:
        checks.run.append(problem)


def lora_problems(name: str, train: TrainConfig) -> list[str]:
    """A LoRA student's libraries, the `lora` extra: PEFT, and bitsandbytes for a 4-bit base (QLoRA)."""
    import importlib.util

    if train.lora is None:
        return []
    needs = {"peft": f"{name}.lora"} | (
        {"bitsandbytes": f"{name}.lora.load_in_4bit"} if train.lora.load_in_4bit else {}
    )
    return [
        f"{where}: {package} is not installed (pip install 'lion-distill[lora]')"
        for package, where in needs.items()
        if importlib.util.find_spec(package) is None
    ]


def secret_problems(cfg: BaseModel) -> list[str]:
    """A credential written into the run directory's or an endpoint's URI (lion_distill.data.uri_secrets):
    refused before the plan too, which writes the config's plan into the run directory."""
    from lion_distill.data.uri_secrets import uri_problem

    uris = [("run_dir", getattr(cfg, "run_dir", None))]
    uris += [(f"{name}.openai.base_url", role.openai.base_url) for name, role in roles(cfg) if role.openai]
    uris += [(f"{name}.uri", tracking.uri) for name, tracking in _sections(cfg, TrackingConfig)]
    return [problem for field, uri in uris if (problem := uri_problem(field, uri))]


def stage_problems(cfg: BaseModel) -> list[str]:
    """What a stage checks of its config as it starts, checked now: a constrained review that cannot
    fit the referee's (or judge's) max_tokens, a constraint asked of a role that cannot be constrained
    (a stage refusing it after an imitation has trained would waste that training)."""
    from functools import partial

    from lion_distill.evaluate.evaluation import judge_settings
    from lion_distill.judging.judge import check_constraint
    from lion_distill.lion.discrimination import referee_settings
    from lion_distill.lion.generation import CANDIDATE_JSON_SCHEMA, CANDIDATE_REGEX
    from lion_distill.llm import check_structured_output
    from lion_distill.llm.answers import constraint

    def generator_constraint(lion, generator):
        structured = constraint(lion.generator_constraint, generator, CANDIDATE_REGEX, CANDIDATE_JSON_SCHEMA)
        check_structured_output(structured, generator.backend)

    checks = []
    if isinstance(cfg, RunConfig):
        lion = cfg.lion
        checks.append(("referee.sampling", partial(check_constraint, cfg.referee, referee_settings(cfg))))
        checks.append(("lion.generator_constraint", partial(generator_constraint, lion, cfg.generator)))
    for name, e in _sections(cfg, EvalConfig):
        checks.append((f"{name}.judge.sampling", partial(check_constraint, e.judge, judge_settings(e))))
    problems = []
    for where, check in checks:
        try:
            check()
        except ValueError as error:
            problems.append(f"{where}: {error}")
    return problems


def preflight(cfg: BaseModel, env=os.environ) -> Checks:
    """Every problem that would stop the plan or the run, one line each, and the notes."""
    checks = Checks()
    checks.inputs += secret_problems(cfg)
    if checks.inputs:  # nothing else is checked: a check's own line could name the URI (and its key)
        return checks
    for name, data in _sections(cfg, DataConfig):
        checks.inputs += data_problems(name, data)
    checks.inputs += chat_template_problems(cfg)
    checks.inputs += stage_problems(cfg)
    models = list(roles(cfg))
    if isinstance(cfg, StepByStepConfig):
        checks.inputs += step_by_step_problems(cfg)
        models.append(("student", RoleConfig(backend="hf", model=cfg.student.model)))  # a T5, loaded by transformers
    for name, evaluation in _sections(cfg, EvalConfig):
        eval_checks(name, evaluation, checks)
    hub: dict[str, list[str]] = {}  # a hub model -> the roles that load it
    for name, role in models:
        if role_checks(name, role, checks, env):
            hub.setdefault(role.model, []).append(name)
    checks.notes += [
        f"{', '.join(names)}: {model!r} is a model hub name: each node that loads it downloads it "
        "into its Hugging Face cache"
        for model, names in hub.items()
    ]
    serving = getattr(cfg, "serving", None)
    if serving is not None:
        checks.notes += download_notes(hub, dict(models), serving.ready_timeout_s)
    if isinstance(cfg, RunConfig):
        checks.notes += per_stage_notes(cfg)
    if getattr(cfg, "run_dir", None):
        from lion_distill.joblock import unguarded_note

        problems = run_dir_problems(cfg.run_dir)
        checks.run += problems
        note = None if problems else unguarded_note(cfg.run_dir)  # concurrent submits, where unguarded
        checks.notes += [note] if note else []
    if isinstance(cfg, RunConfig) and "student" in hub.get(cfg.student.model, []) and not is_uri(cfg.run_dir):
        student_space_checks(cfg, checks)
    for name, settings in _sections(cfg, TrackingConfig):
        from lion_distill.metrics.tracking import problems as tracking_problems

        checks.run += tracking_problems(name, settings, cfg.run_dir, env)
    for name, train in _sections(cfg, TrainConfig):
        checks.run += lora_problems(name, train)
    if isinstance(cfg, RunConfig | DistillRunConfig):
        from lion_distill.distill.teacher import signal_problems

        inputs, run = signal_problems(cfg, env)
        checks.inputs, checks.run = checks.inputs + inputs, checks.run + run
    return checks


def download_notes(hub: dict[str, list[str]], models: dict[str, RoleConfig], ready_timeout_s: float) -> list[str]:
    """A hub model that no local cache holds is downloaded by the first engine that loads it, inside
    its start's deadline (serving.ready_timeout_s): a 70B's 141 GB does not fit 900 s. Sized from the
    hub's model card (lion_distill.data.student_size); a model that cannot be sized gets no note."""
    from lion_distill.data.student_size import cached_parameters, hub_parameters

    notes = []
    for model, names in hub.items():
        if not any(models[n].backend == "vllm" for n in names) or cached_parameters(model) is not None:
            continue
        note = first_download_note(names, model, hub_parameters(model), ready_timeout_s)
        notes += [note] if note else []
    return notes


def first_download_note(names: list[str], model: str, params: int | None, ready_timeout_s: float) -> str | None:
    fix = (
        f"download it first into the nodes' shared Hugging Face cache (`hf download {model}` where HF_HOME "
        "points, cluster/README.md) or raise serving.ready_timeout_s"
    )
    if params is None:  # no cache, no hub here: nothing to say
        return None
    seconds = BF16_BYTES * params / DOWNLOAD_BYTES_PER_S
    if seconds <= ready_timeout_s:
        return None
    return (
        f"{', '.join(names)}: the first engine of {model!r} downloads about {BF16_BYTES * params / 1e9:.0f} GB "
        f"(bf16), about {seconds / 60:.0f} min at {DOWNLOAD_BYTES_PER_S / 1e6:.0f} MB/s, past "
        f"serving.ready_timeout_s ({ready_timeout_s:.0f} s): {fix}"
    )


def per_stage_notes(cfg: RunConfig) -> list[str]:
    """With `serving: per_stage` every stage starts its own engines: roles that would share one
    engine (a 70B teacher, referee and generator) load the model once per stage that asks them."""
    from lion_distill.llm.engine_args import engine_spec
    from lion_distill.llm.fit import gpu_plan

    if cfg.serving.mode != "per_stage":
        return []
    local = {name: getattr(cfg, name) for name in cfg.ROLES if getattr(cfg, name).backend == "vllm"}
    groups: dict[str, list[str]] = {}
    for name, role in local.items():
        if name != "student":
            groups.setdefault(engine_spec(role, gpu=True).key, []).append(name)
    train_gpus = cfg.train.num_workers * cfg.train.gpus_per_worker
    shared = gpu_plan(local, ("student",), train_gpus, "release", mode="shared")["peak_gpus"]
    return [
        f"serving: per_stage: {', '.join(names)} load {local[names[0]].model!r} anew in each stage that asks "
        f"them (at least {len(names)} loads an iteration); serving: shared loads it once a job and needs "
        f"{shared:g} GPUs at once (during_training: release)"
        for names in groups.values()
        if len(names) > 1
    ]


def _role_gpus(role: RoleConfig) -> tuple[str, int]:
    """(what a local role's engines ask, in its config's words; the GPUs they hold)."""
    from lion_distill.llm.engine_args import ranks

    p = role.parallelism
    if role.backend == "openai":
        return "", 0
    if role.backend == "hf":
        return f"replicas {p.replicas} (one GPU each, the hf backend)", p.replicas
    pp = ranks(role) // p.tensor_parallel_size
    pipeline = f" x pipeline_parallel_size {pp}" if pp > 1 else ""
    return f"tensor_parallel_size {p.tensor_parallel_size}{pipeline} x replicas {p.replicas}", ranks(role) * p.replicas


def cluster_problems(cfg: BaseModel, resources: dict, gpu_ceiling: float = 0.0) -> list[str]:
    """What the joined cluster lacks: GPUs for training workers and, where the cluster has GPUs
    (local roles run on CPU otherwise), for the largest local role (a vllm engine's tensor x
    pipeline parallel x replicas, lion_distill.llm.engine_args.ranks; stages run one at a time).
    `gpu_ceiling`: the GPUs its autoscaler may grow to (lion_distill.llm.fit.ClusterGpus.ceiling),
    so that a cluster scaled to zero GPU nodes is judged by what it can have."""
    from lion_distill.data.rundir_checks import unshared_problems

    gpus, cpus, problems = max(resources.get("GPU", 0), gpu_ceiling), resources.get("CPU", 0), []
    has = "the cluster has" if gpus == resources.get("GPU", 0) else "the cluster can grow to"
    problems += unshared_problems(cfg.run_dir) if getattr(cfg, "run_dir", None) else []  # every node sees it
    train = getattr(cfg, "train", None)
    if train is not None and train.gpus_per_worker:
        need = train.num_workers * train.gpus_per_worker
        if need > gpus:
            problems.append(
                f"train: {train.num_workers} workers x {train.gpus_per_worker:g} GPUs need {need:g} GPUs; {has} {gpus:g}"
            )
    if train is not None and train.num_workers > cpus:
        problems.append(f"train.num_workers: {train.num_workers} workers need a CPU each; the cluster has {cpus:g}")
    if gpus:
        problems += [
            f"{name}.parallelism: {asks} need {need} GPUs; {has} {gpus:g}"
            for name, role in roles(cfg)
            for asks, need in [_role_gpus(role)]
            if need > gpus
        ]
    return problems


def cpu_engine_notes(cfg: BaseModel, cluster) -> list[str]:
    """vllm roles set for GPUs (bf16 or fp16, or more than one rank) whose engines will start on CPU:
    the cluster (lion_distill.llm.fit.ClusterGpus) has no GPUs now and Ray reports no autoscaler
    ceiling. Ray 2.60's own autoscalers (the cluster launcher's, KubeRay's) report none, so to
    engines_on_gpus a GPU cluster scaled to zero GPU nodes looks like a CPU one (docs/gpu.md)."""
    from lion_distill.llm.engine_args import CPU_MAX_MODEL_LEN, ranks
    from lion_distill.llm.fit import engines_on_gpus

    if engines_on_gpus(cluster) or cluster.autoscaler_max is not None:
        return []
    gpu_roles = [
        name
        for name, role in roles(cfg)
        if role.backend == "vllm" and (ranks(role) > 1 or role.dtype in ("bfloat16", "float16"))
    ]
    if not gpu_roles:
        return []
    return [
        f"{', '.join(gpu_roles)}: set for GPUs, but the cluster has no GPUs now and Ray reports no autoscaler "
        f"ceiling (Ray 2.60's autoscalers report none), so their engines start on CPU (max_model_len "
        f"{CPU_MAX_MODEL_LEN} where unset); keep a GPU node running (min_workers: 1, as cluster/ does) "
        "for GPU engines"
    ]
