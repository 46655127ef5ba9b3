"""The `distill` section and what a white-box mode needs of its teacher, checked before a run: the
teacher's engine gets room for top_k logprobs without splitting from the referee's, a teacher of
another vocabulary, an API without prompt logprobs and a max_logprobs below top_k are refused at
preflight in one line each (lion_distill.distill.teacher, lion_distill.preflight)."""

import re

import pytest

from lion_distill.config import RunConfig
from lion_distill.config.distill import DistillRunConfig
from lion_distill.config.models import DistillConfig, RoleConfig
from lion_distill.distill.teacher import signal_problems, with_teacher_logprobs
from lion_distill.llm.engine_args import engine_spec
from lion_distill.preflight import preflight

POOL = "data/self-instruct/seed_tasks.jsonl"


def lion_config(**sections) -> RunConfig:
    shared = {"backend": "vllm", "model": "/models/teacher-70b"}
    return RunConfig(
        run_dir="/tmp/x",
        data={"pool_files": [POOL]},
        teacher=shared,
        referee=shared,
        generator={**shared, "sampling": {"temperature": 1.0}},
        student={"backend": "vllm", "model": "/models/student-7b"},
        **sections,
    )


def test_every_field_of_the_section_says_what_it_does():
    for name, field in DistillConfig.model_fields.items():
        assert field.description and len(field.description) > 40, name
    assert DistillConfig().mode == "sft" and DistillConfig().top_k == 20  # today's training; vLLM's default cap


def test_the_teachers_engine_gets_top_k_logprobs_and_still_serves_the_referee():
    cfg = lion_config(distill={"mode": "logit_kd", "top_k": 32})
    assert engine_spec(cfg.teacher, gpu=True).key == engine_spec(cfg.referee, gpu=True).key
    raised = with_teacher_logprobs(cfg)
    for role in (raised.teacher, raised.referee, raised.generator):
        assert engine_spec(role, gpu=True).serve_kwargs["max_logprobs"] == 32
    assert engine_spec(raised.teacher, gpu=True).key == engine_spec(raised.referee, gpu=True).key  # one engine still
    assert "max_logprobs" not in raised.student.engine_kwargs  # another model: untouched
    # A scoring pass's own engine: room for its k, never less than the engine's own cap.
    assert engine_spec(cfg.teacher, gpu=False, logprobs=32).engine_kwargs["max_logprobs"] == 32
    assert "max_logprobs" not in engine_spec(cfg.teacher, gpu=False, logprobs=5).engine_kwargs
    assert engine_spec(raised.teacher, gpu=False, logprobs=21).engine_kwargs["max_logprobs"] == 32
    # At vLLM's default cap, or without a white-box mode, nothing changes.
    for same in (lion_config(distill={"mode": "logit_kd"}), lion_config(distill={"top_k": 32})):
        assert with_teacher_logprobs(same) == same
    judged = lion_config(lion={"discriminator": "divergence"}, distill={"top_k": 25})
    assert with_teacher_logprobs(judged).teacher.engine_kwargs["max_logprobs"] == 25


def test_a_teacher_of_another_vocabulary_is_refused_in_one_line_naming_both(smol_models, tiny_models):
    cfg = DistillRunConfig(
        run_dir="/tmp/x",
        data={"pool_files": [POOL]},
        teacher={"backend": "vllm", "model": str(smol_models.instruct)},
        student={"backend": "hf", "model": str(tiny_models.llama)},
        distill={"mode": "logit_kd"},
    )
    inputs, _ = signal_problems(cfg, {})
    (line,) = inputs
    assert str(smol_models.instruct) in line and str(tiny_models.llama) in line and "distill.mode: sft" in line
    assert "\n" not in line
    assert line in preflight(cfg, {}).inputs
    same = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": str(smol_models.student)})})
    assert signal_problems(same, {}) == ([], [])
    sft = cfg.model_copy(update={"distill": DistillConfig()})
    assert signal_problems(sft, {}) == ([], [])  # the text path needs no vocabulary in common


@pytest.mark.parametrize(
    "teacher, distill, match",
    [
        ({"backend": "openai", "model": "gpt-4o"}, {"mode": "logit_kd"}, "teacher.openai.base_url: .*OpenAI's API"),
        (
            {"backend": "openai", "model": "m", "openai": {"base_url": "http://127.0.0.1:9/v1"}},
            {"mode": "logit_kd"},
            "distill.teacher_tokenizer: .*a local folder",
        ),
        (
            {"backend": "vllm", "model": "/models/t", "engine_kwargs": {"max_logprobs": 10}},
            {"mode": "logit_kd"},
            "teacher.engine_kwargs.max_logprobs: 10 is below distill.top_k 20",
        ),
        (
            {"backend": "vllm", "model": "/models/t", "reasoning": "keep"},
            {"mode": "logit_kd"},
            "teacher.reasoning: keep .* no teacher signal",
        ),
    ],
)
def test_a_teacher_that_cannot_give_the_signal_is_a_preflight_error(teacher, distill, match):
    cfg = lion_config(distill=distill).model_copy(update={"teacher": RoleConfig(**teacher)})
    inputs, run = signal_problems(cfg, {})
    assert len(inputs) == 1 and not run
    assert re.search(match, inputs[0]), inputs


def test_a_server_that_refuses_top_k_is_a_run_problem_with_its_own_words(vllm_server, tiny_models):
    """The session's vLLM server runs with vLLM's default max_logprobs (20)."""
    teacher = {
        "backend": "openai",
        "model": vllm_server.model,
        "openai": {"base_url": vllm_server.base_url, "api_key_env": "LION_NO_KEY"},
    }
    base = dict(run_dir="/tmp/x", data={"pool_files": [POOL]}, teacher=teacher)
    student = {"backend": "hf", "model": str(tiny_models.llama)}
    tokenizer = str(tiny_models.llama)
    ok = DistillRunConfig(**base, student=student, distill={"mode": "logit_kd", "teacher_tokenizer": tokenizer})
    assert signal_problems(ok, {}) == ([], [])
    over = ok.model_copy(update={"distill": ok.distill.model_copy(update={"top_k": 21})})
    inputs, (line,) = signal_problems(over, {})
    assert not inputs and "refused a request for 21 prompt logprobs" in line and "20" in line, line


def test_the_plans_price_the_scoring_pass_and_leave_out_the_referee(tiny_models, tmp_path):
    from lion_distill.plan.distill import distill_plan
    from lion_distill.plan.lion import lion_plan

    tiny = str(tiny_models.llama)
    role = {"backend": "vllm", "model": tiny, "sampling": {"max_tokens": 32}}
    base = dict(run_dir=str(tmp_path / "run"), data={"pool_files": [POOL], "sample_size": 10}, teacher=role)
    plan = distill_plan(DistillRunConfig(**base, student=role, distill={"mode": "logit_kd"}))
    (signal,) = [ln for ln in plan.lines if ln.call == "signal"]
    (answers,) = [ln for ln in plan.lines if ln.call == "teacher"]
    assert signal.requests == answers.requests == 10 and signal.completion_tokens == 10  # one token a pass
    assert signal.prompt_tokens == answers.prompt_tokens + answers.completion_tokens  # prompt + answer prefilled
    assert "kB of signal" in signal.basis and any("168 bytes a token" in a for a in plan.assumptions)
    assert [ln.call for ln in distill_plan(DistillRunConfig(**base, student=role)).lines] == ["teacher", "train"]
    lion = lion_plan(
        RunConfig(
            **base,
            student=role,
            referee=role,
            generator=role,
            lion={"iterations": 1, "discriminator": "divergence", "final_imitation": False},
        )
    )
    calls = [ln.call for ln in lion.lines if ln.stage == "iter_0/discrimination"]
    assert calls == ["discrimination/teacher", "discrimination/signal"]  # no student answers, no referee
