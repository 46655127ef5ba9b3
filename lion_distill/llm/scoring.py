"""A scoring pass: the teacher's top-k log-probabilities at every token of given answers, from one
prefill of prompt + answer token ids (`prompt_logprobs`), for answers already written (cached, reused,
or asked of a server that returns no ids with its answers) and, on-policy, for the student's samples.

    signal, record = score(cfg.teacher, requests, top_k=20, stage="imitation/signal", role_name="teacher",
                           run_dir=run, parts="iter_0/imitation/signal")
    # requests: id, prompt_ids, answer_ids (list<int32>); signal: lion_distill.llm.token_signal.signal_schema(20)

Resumable block by block as every stage output (lion_distill.llm.parts): each finished block of
signal rows is written as it finishes; a pass killed midway asks only the ids not written. A row the
engine could not score (a top_k above its max_logprobs, a prompt over its context) is not written and
fails the pass with the engine's reason, after the rest are written: a distillation never trains on
a silently shortened signal.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa
import pyarrow.compute as pc

from lion_distill.config.models import RoleConfig
from lion_distill.data.rundir import RunDir
from lion_distill.errors import ScoringFailed
from lion_distill.llm.parts import NOT_FINAL, Parts, read_answers, write_parts, written_ids
from lion_distill.llm.scorers import ERROR, REQUEST, HFScorer, OpenAIScorer, serve_scoring, vllm_scoring
from lion_distill.llm.token_signal import signal_schema
from lion_distill.metrics import StageRecord, stage_timer


def score(
    role: RoleConfig,
    requests: pa.Table,
    *,
    top_k: int,
    stage: str,
    role_name: str,
    run_dir: RunDir | None = None,
    parts: str | None = None,
) -> tuple[pa.Table, StageRecord]:
    """-> (one signal row per request, in any order; the pass's StageRecord: rows scored now, prompt
    tokens prefilled, `rows_from_parts` those an earlier attempt wrote). See the module docstring."""
    import ray

    folder = None if parts is None or run_dir is None else scoring_folder(parts, role, stage, top_k)
    done = written_ids(run_dir, folder) if folder else pa.array([], pa.string())
    todo = requests.select(list(REQUEST))
    if len(done):
        todo = todo.filter(pc.invert(pc.is_in(todo.column("id"), value_set=done)))
    fresh = signal_schema(top_k).empty_table()
    with stage_timer(stage) as rec:
        rec.extra["rows_from_parts"] = len(done)
        if todo.num_rows:
            ds = ray.data.from_arrow(todo).repartition(target_num_rows_per_block=role.parallelism.batch_size)
            out = _passes(role, ds, top_k, role_name).map_batches(
                _final(top_k), batch_format="pyarrow", batch_size=None
            )
            out = write_parts(out, folder and Parts(run_dir.uri_of(folder))).materialize()
            table = pa.concat_tables(ray.get(out.to_arrow_refs()), promote_options="permissive")
            rec.rows, rec.prompt_tokens = table.num_rows, int(pc.sum(table["_prompt_tokens"]).as_py() or 0)
            _raise_failed(table, role_name, top_k)
            fresh = table.select(signal_schema(top_k).names)
    if folder:
        return read_answers(run_dir, folder, signal_schema(top_k).names) or fresh, rec
    return fresh, rec


def scoring_folder(base: str, role: RoleConfig, stage: str, top_k: int) -> str:
    """A pass's folder of parts: its stage, then what a signal depends on besides the ids (the model
    and k), so parts of another teacher or k are never taken for this pass's."""
    digest = hashlib.sha256(json.dumps([role.model, top_k]).encode()).hexdigest()[:12]
    return f"{base}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', stage)}-{digest}"


def _passes(role: RoleConfig, ds, k: int, role_name: str):
    """The backend's pass over the rows (lion_distill.llm.scorers)."""
    import ray

    from lion_distill.llm import serving

    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if role.backend == "hf":
        return ds.map_batches(
            HFScorer,
            fn_constructor_kwargs={"model_path": role.model, "k": k},
            batch_format="pyarrow",
            batch_size=role.parallelism.batch_size,
            compute=ray.data.ActorPoolStrategy(size=role.parallelism.replicas),
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
        )
    if role.backend == "openai":
        from lion_distill.llm.openai_client import resolve_api_key

        return ds.map_batches(
            OpenAIScorer,
            fn_constructor_kwargs={"role": role, "k": k, "api_key": resolve_api_key(role)},
            batch_format="pyarrow",
            batch_size=role.parallelism.batch_size,
            compute=ray.data.ActorPoolStrategy(size=role.parallelism.replicas),
            num_cpus=0.5,
        )
    engines = serving.active()
    if engines is not None and engines.shared:
        return serve_scoring(engines.engine_for(role, role_name), role, ds, k)
    timeout = engines.serving.ready_timeout_s if engines is not None else 900.0
    return vllm_scoring(role, ds, k, gpu=gpus > 0, start_timeout_s=timeout)


def _final(k: int):
    """A batch of the backend's rows -> the signal schema's columns, plus the row's prefill
    (`_prompt_tokens`), its error and NOT_FINAL (a failed row is not written to the parts)."""
    schema = signal_schema(k)

    def cast(batch: pa.Table) -> pa.Table:
        failed = pc.is_valid(batch[ERROR])
        columns = {f.name: batch[f.name].cast(f.type) for f in schema}
        columns.update({"_prompt_tokens": batch["prompt_tokens"], ERROR: batch[ERROR], NOT_FINAL: failed})
        return pa.table(columns)

    return cast


def _raise_failed(table: pa.Table, role_name: str, k: int) -> None:
    errors = table[ERROR].drop_null()
    if len(errors):
        raise ScoringFailed(
            f"{role_name}: {len(errors)} of {table.num_rows} answers could not be scored with top_k={k}: "
            f"{errors[0].as_py()} (the rows scored are kept; fix the cause and run again)"
        )
