"""--plan: the run priced from its config and pools, with no cluster and no request; preflight."""

import json
from pathlib import Path

import pytest

from lion_distill.config.loader import validate
from lion_distill.plan import Line, budget_warnings, family, plan_table
from lion_distill.plan.lion import lion_plan
from lion_distill.plan.tokens import TokenCounter
from lion_distill.preflight import cluster_problems, preflight
from tests.fixtures.questions import short_questions

REPO = Path(__file__).resolve().parents[1]
SEED = str(REPO / "data/self-instruct/seed_tasks.jsonl")


def config(tmp_path, llama, **lion):
    api = {
        "backend": "openai",
        "model": "gpt",
        "openai": {
            "base_url": "http://127.0.0.1:9/v1",
            "price_per_1k_prompt_tokens": 1.0,
            "price_per_1k_completion_tokens": 2.0,
        },
    }
    return validate(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"pool_files": [SEED], "sample_size": 20},
            "teacher": {**api, "sampling": {"max_tokens": 10}},
            "student": {"backend": "hf", "model": llama, "sampling": {"max_tokens": 8}},
            "referee": {**api, "sampling": {"max_tokens": 6}},
            "generator": {**api, "sampling": {"max_tokens": 12}},
            "lion": {
                "iterations": 2,
                "new_instructions_per_iteration": 8,
                "generation_rounds": 3,
                "referee_retries": 1,
                **lion,
            },
            "plan": {"referee_failure_rate": 0.5, "generator_acceptance_rate": 0.5, "tokenizers": {"teacher": llama}},
            "train": {"num_workers": 0},
        },
        "test",
    )


def by_call(plan):
    return {(ln.stage, ln.call): ln for ln in plan.lines}


def test_lion_counts_follow_the_loop(tmp_path, tiny_models):
    plan = lion_plan(config(tmp_path, str(tiny_models.llama)))
    lines = by_call(plan)
    assert lines["iter_0/imitation", "imitation/teacher"].requests == 20
    assert lines["iter_0/discrimination", "discrimination/student"].requests == 20
    assert lines["iter_0/discrimination", "discrimination/referee"].requests == 40  # twice per pair
    assert lines["iter_0/discrimination", "discrimination/referee_retry1"].requests == 20  # half the pairs again
    rounds = [lines["iter_0/generation", f"generation/generator_round{r}"].requests for r in range(3)]
    assert rounds == [8, 4, 2]  # the missing instructions each round, half kept
    kept = 8 - 1  # 8 * (1 - 0.5**3)
    assert lines["iter_1/imitation", "imitation/teacher"].requests == kept
    assert lines["iter_1/discrimination", "discrimination/referee"].requests == 2 * (20 + kept)  # the cache pool grew
    assert lines["iter_2/imitation", "imitation/teacher"].requests == kept  # the final imitation
    teacher = lines["iter_0/imitation", "imitation/teacher"]
    assert teacher.completion_tokens == 20 * 10 and teacher.basis == "max_tokens"
    assert teacher.usd == pytest.approx((teacher.prompt_tokens * 1.0 + teacher.completion_tokens * 2.0) / 1000)
    assert lines["iter_0/discrimination", "discrimination/student"].usd == 0  # local role: GPU-hours, not dollars
    assert lines["iter_0/discrimination", "discrimination/student"].gpu_hours is None  # no throughput known
    assert plan.totals()["requests"] == sum(ln.requests for ln in plan.lines)
    table = plan_table(plan)
    assert "iter_1/generation" in table and "generation/generator_round2" in table and "total" in table


def test_lions_own_ways_are_priced_as_they_ask(tmp_path, tiny_models):
    # lion-7b.yaml's: the teacher answers the cache pool again (step 2.1), the referee is asked
    # again while a pass reads more (here 0.5 of 20 pairs a pass: 10, 5, 2.5, 1.25, 0.625), and
    # each generator reply is priced at its round's expected largest seed cap (4 x the seed's words).
    cfg = config(
        tmp_path,
        str(tiny_models.llama),
        referee_retries=None,
        discrimination_teacher="ask_again",
        generator_tokens_per_seed_word=4,
    )
    lines = by_call(lion_plan(cfg))
    assert lines["iter_0/discrimination", "discrimination/teacher"].requests == 20
    assert lines["iter_1/discrimination", "discrimination/teacher"].requests == 20 + 7
    retries = [c for s, c in lines if s == "iter_0/discrimination" and "retry" in c]
    assert len(retries) == 5
    from lion_distill.lion.generator import seed_token_cap
    from lion_distill.lion.loop import initial_pool
    from lion_distill.plan.lion import expected_largest

    caps = sorted(seed_token_cap(r, 4) for r in initial_pool(cfg)[0].to_pylist())
    assert expected_largest(caps, 1) == sum(caps) / len(caps) and expected_largest(caps, len(caps)) == caps[-1]
    assert expected_largest([1, 2, 3], 2) == (2 + 3 + 3) / 3  # of the pairs {1,2}, {1,3}, {2,3}
    cap = round(expected_largest(caps, cfg.lion.new_instructions_per_iteration))
    assert cap != cfg.generator.sampling.max_tokens
    assert lines["iter_0/generation", "generation/generator_round0"].completion_tokens == 8 * cap


def test_prompt_tokens_come_from_the_role_tokenizer_or_a_stated_ratio(tmp_path, tiny_models):
    from transformers import AutoTokenizer

    from lion_distill.lion.loop import initial_pool
    from lion_distill.lion.prompts import teacher_messages

    cfg = config(tmp_path, str(tiny_models.llama), iterations=1)
    cfg.data.sample_size = 1
    plan = lion_plan(cfg)
    tok = AutoTokenizer.from_pretrained(tiny_models.llama)
    (seed,) = initial_pool(cfg)[0].to_pylist()
    text = tok.apply_chat_template(teacher_messages(seed), tokenize=False, add_generation_prompt=True)
    expected = len(tok(text, add_special_tokens=False)["input_ids"])
    assert by_call(plan)["iter_0/imitation", "imitation/teacher"].prompt_tokens == expected
    # The generator has no local tokenizer: 4 characters a token plus OpenAI's message framing.
    assert TokenCounter(None, 4.0).count([{"role": "user", "content": "x" * 40}]) == 3 + 4 + 10
    assert any("generator: tokens counted with 4 characters a token" == a for a in plan.assumptions)


def test_observed_figures_replace_priors_and_completed_stages_are_not_priced(tmp_path, tiny_models):
    from lion_distill.data import RunDir

    cfg = config(tmp_path, str(tiny_models.llama))
    run = RunDir(cfg.run_dir)
    run.write_json("state.json", {"completed": ["iter_0/imitation"]})
    run.write_json(
        "iter_0/metrics.json",
        {
            "rows/imitation/teacher": 20,
            "completion_tokens/imitation/teacher": 60,
            "failed_rows/imitation/teacher": 1,
            "lion/imitation_asked": 20,
            # one failed, one blank: both asked again in discrimination
            "lion/imitation_failed_answers": 2,
            "lion/candidates": 10,
            "lion/new_instructions": 10,
        },
    )
    from lion_distill.llm.ledger import SpendLog

    SpendLog(run, role="referee", stage="iter_0/discrimination", every_s=0).add(
        retries=0, failed=False, prompt_tokens=0, completion_tokens=0, cost_usd=1.0
    )
    cfg.referee.openai.budget_usd = 1.01  # the spend log has taken nearly all of it
    plan = lion_plan(cfg)
    lines = by_call(plan)
    (warning,) = [w for w in plan.warnings if "budget_usd" in w]
    assert (
        warning.startswith("referee: budget_usd $1.01 runs out in stage iter_0/discrimination")
        and "$1.00 of it" in warning
    )
    assert plan.skipped == ["iter_0/imitation"] and ("iter_0/imitation", "imitation/teacher") not in lines
    assert lines["iter_0/discrimination", "discrimination/teacher"].requests == pytest.approx(
        2
    )  # 10% failed, asked again
    assert lines["iter_1/imitation", "imitation/teacher"].completion_tokens == pytest.approx(
        8 * 3
    )  # 3 a reply, observed
    assert [ln.call for ln in plan.lines if ln.stage == "iter_0/generation"] == [
        "generation/generator_round0"
    ]  # all kept


def test_plan_warns_when_the_teachers_max_tokens_cuts_its_answers(tmp_path, tiny_models):
    from lion_distill.data import RunDir

    cfg = config(tmp_path, str(tiny_models.llama))  # teacher max_tokens 10
    (warning,) = [w for w in lion_plan(cfg).warnings if w.startswith("teacher: ")]
    assert warning.startswith(
        "teacher: sampling.max_tokens 10 cuts answers: a whole answer takes about 300 tokens "
        "(plan.answer_tokens); cut answers are left out of imitation (lion.train_on_truncated)"
    )
    assert "lion.min_imitation_fraction (0.5)" in warning
    cfg.teacher.sampling.max_tokens = 400
    assert not [w for w in lion_plan(cfg).warnings if w.startswith("teacher: ")]
    # What the run saw wins over the prior: most answers cut at 400.
    RunDir(cfg.run_dir).write_json(
        "iter_0/metrics.json", {"lion/imitation_asked": 20, "lion/imitation_truncated_answers": 15}
    )
    (warning,) = [w for w in lion_plan(cfg).warnings if w.startswith("teacher: ")]
    assert "75% of the teacher's answers so far were cut at it" in warning


def test_budget_warning_names_the_stage():
    lines = [
        Line("iter_0/imitation", "imitation/teacher", "teacher", 10, 0, 0, usd=4.0),
        Line("iter_0/discrimination", "discrimination/referee", "referee", 10, 0, 0, usd=1.0),
        Line("iter_1/imitation", "imitation/teacher", "teacher", 10, 0, 0, usd=4.0),
    ]
    (warning,) = budget_warnings(lines, {"teacher": 5.0, "referee": 5.0}, {"referee": 1.0})
    assert warning.startswith("teacher: budget_usd $5 runs out in stage iter_1/imitation (imitation/teacher)")
    assert budget_warnings(lines, {"teacher": 3.0}, {"teacher": 2.5})[0].count("iter_0/imitation") == 1
    assert family("generation/generator_round12") == "generation/generator"
    assert (
        family("discrimination/referee_retry1")
        == "discrimination/referee"
        == family("discrimination/referee_truncated")
    )


def test_cli_plan_starts_nothing_and_writes_plan_json(tmp_path, tiny_models, capsys):
    import ray
    import yaml

    from lion_distill.cli import main

    cfg = config(tmp_path, str(tiny_models.llama))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    was_up = ray.is_initialized()
    assert main(["plan", "lion", "--config", str(path)]) == 0
    assert ray.is_initialized() == was_up
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert saved["totals"]["requests"] == pytest.approx(sum(ln["requests"] for ln in saved["lines"]))
    assert "imitation/teacher" in saved["by_family"]
    assert "iter_0/imitation" in capsys.readouterr().out


def test_preflight_reports_every_problem_at_once(tmp_path, capsys, monkeypatch):
    import yaml

    from lion_distill.cli import main

    monkeypatch.delenv("PREFLIGHT_TEST_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(blocker / "run"),
                "data": {"pool_files": [str(tmp_path / "missing.json")]},
                "teacher": {"backend": "openai", "model": "gpt", "openai": {"api_key_env": "PREFLIGHT_TEST_KEY"}},
                "student": {"backend": "vllm", "model": "/no/such/llama"},
                "referee": {"backend": "hf", "model": "meta-llama/Llama-2-7b-hf"},
                "generator": {"backend": "openai", "model": "m", "openai": {"base_url": "http://127.0.0.1:1/v1"}},
            }
        )
    )
    assert main(["lion", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("error: ")
    assert any("data.pool_files" in ln and "missing.json: file not found" in ln for ln in lines)
    assert any("teacher.openai.api_key_env" in ln and "PREFLIGHT_TEST_KEY" in ln for ln in lines)
    assert any("student.model: '/no/such/llama' does not exist" in ln for ln in lines)
    assert any("referee.model" in ln and "hub name" in ln and "HF_HUB_OFFLINE is set" in ln for ln in lines)
    assert any(ln.strip().startswith("run_dir:") and "not writable" in ln for ln in lines)
    assert not any("generator" in ln for ln in lines)  # a loopback server needs no key
    assert main(["lion", "--config", str(path), "--plan"]) == 2  # a plan needs its pool
    err = capsys.readouterr().err
    assert "missing.json: file not found" in err and "PREFLIGHT_TEST_KEY" not in err  # only what the plan needs

    cfg = validate(
        {**yaml.safe_load(path.read_text()), "run_dir": str(tmp_path / "run"), "data": {"pool_files": [str(broken)]}},
        "test",
    )
    checks = preflight(cfg, env={"PREFLIGHT_TEST_KEY": "k"})
    assert len(checks.inputs) == 1 and "broken.json" in checks.inputs[0]
    assert [p.split(":")[0] for p in checks.run] == ["student.model"]
    # Online, a hub name is a model: one note, no problem.
    assert checks.notes == [
        "referee: 'meta-llama/Llama-2-7b-hf' is a model hub name: each node that loads "
        "it downloads it into its Hugging Face cache"
    ]
    assert "referee.model" in preflight(cfg, env={"TRANSFORMERS_OFFLINE": "1"}).run[-1]


def test_plan_needs_no_key_and_notes_what_the_run_still_needs(tmp_path, tiny_models, capsys, monkeypatch):
    import yaml

    from lion_distill.cli import main

    monkeypatch.delenv("PLAN_TEST_KEY", raising=False)
    for offline in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):  # a hub name is then a model (the plan downloads nothing)
        monkeypatch.delenv(offline, raising=False)
    cfg = config(tmp_path, str(tiny_models.llama)).model_dump(mode="json")
    cfg["teacher"]["openai"] = {"api_key_env": "PLAN_TEST_KEY", "price_per_1k_prompt_tokens": 1.0}  # api.openai.com
    cfg["referee"] = {"backend": "vllm", "model": "org/some-model"}  # a hub name
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["lion", "--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    notes = out[out.index("Notes:") :]
    assert "referee: 'org/some-model' is a model hub name" in notes
    assert "Before the run can start:" in notes and "PLAN_TEST_KEY" in notes
    assert (
        "referee: tokens counted with 4 characters a token (org/some-model is not in this machine's hub cache)" in out
    )
    assert (tmp_path / "run" / "plan.json").exists()
    assert main(["lion", "--config", str(path)]) == 2  # the run itself still refuses without the key
    assert "PLAN_TEST_KEY" in capsys.readouterr().err


def test_plan_counts_with_a_hub_tokenizer_from_the_local_cache(tmp_path, tiny_models, monkeypatch):
    """A hub name whose tokenizer is in the Hugging Face cache is counted with it; nothing is downloaded."""
    import shutil

    import huggingface_hub.constants

    from lion_distill.config.models import PlanConfig, RoleConfig
    from lion_distill.plan.tokens import counter_for

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if (tiny_models.llama / name).exists():
            shutil.copy(tiny_models.llama / name, snapshot / name)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = counter_for(RoleConfig(backend="vllm", model="org/tiny"), "teacher", PlanConfig())
    assert cached.source == "tokenizer org/tiny (this machine's hub cache)"
    local = counter_for(RoleConfig(backend="vllm", model=str(tiny_models.llama)), "teacher", PlanConfig())
    text = "Name three primary colours, and say why they are called so."
    assert cached.count(text) == local.count(text) != round(len(text) / 4)


def test_cluster_problems_count_gpus_and_cpus(tmp_path, tiny_models):
    cfg = config(tmp_path, str(tiny_models.llama))
    assert cluster_problems(cfg, {"CPU": 2}) == []
    cfg.student.parallelism.tensor_parallel_size, cfg.student.parallelism.replicas = 4, 2
    cfg.train.num_workers, cfg.train.gpus_per_worker = 8, 1
    problems = cluster_problems(cfg, {"CPU": 4, "GPU": 4})
    assert any(p.startswith("train: 8 workers x 1 GPUs need 8 GPUs; the cluster has 4") for p in problems)
    # An hf role holds one GPU a replica, whatever its tensor_parallel_size (lion_distill.llm.generate).
    assert not any(p.startswith("student.parallelism") for p in problems)
    cfg.student.parallelism.replicas = 8
    problems = cluster_problems(cfg, {"CPU": 4, "GPU": 4})
    assert any(
        p.startswith("student.parallelism: replicas 8 (one GPU each, the hf backend) need 8 GPUs") for p in problems
    )
    from lion_distill.config.models import StudentRoleConfig

    pipelined = {"pipeline_parallel_size": 2}
    cfg.student = StudentRoleConfig(
        backend="vllm", model="m", parallelism={"tensor_parallel_size": 2, "replicas": 2}, engine_kwargs=pipelined
    )
    line = "student.parallelism: tensor_parallel_size 2 x pipeline_parallel_size 2 x replicas 2 need 8 GPUs; the cluster has 4"
    assert line in cluster_problems(cfg, {"CPU": 8, "GPU": 4})
    # A cluster scaled to zero GPU nodes is judged by what its autoscaler may grow to.
    assert cluster_problems(cfg, {"CPU": 8}, gpu_ceiling=16) == []
    assert any("the cluster can grow to 4" in p for p in cluster_problems(cfg, {"CPU": 8}, gpu_ceiling=4))
    assert any(p.startswith("train.num_workers: 8 workers") for p in problems)


def test_step_by_step_plan_prices_the_teachers_rationales(tmp_path):
    from lion_distill.plan.step_by_step import step_by_step_plan
    from lion_distill.step_by_step import job

    cfg = job.load(str(REPO / "configs/step-by-step-demo.yaml"), [f"run_dir={tmp_path / 'run'}"])
    plan = step_by_step_plan(cfg)
    (teacher,) = [ln for ln in plan.lines if ln.call == "rationales/teacher"]
    rows = [int(n) for n in plan.assumptions[0].replace(",", "").split() if n.isdigit()]
    assert (
        teacher.requests == sum(rows) and teacher.completion_tokens == sum(rows) * cfg.teacher.role.sampling.max_tokens
    )
    trained = {ln.stage for ln in plan.lines if ln.call.startswith("train/")}
    assert trained == {f"train/{m}/{f:g}" for m in cfg.methods for f in cfg.fractions}


def eval_section(tmp_path, llama, judge_price: float = 1.0) -> dict:
    """Three questions with their reference answers, a priced API judge."""
    questions, answers = short_questions(tmp_path, 3)
    return {
        "questions": {"files": [str(questions)], "field_map": {"instruction": "text"}},
        "reference": {"answers": str(answers)},
        "judge": {
            "backend": "openai",
            "model": "gpt",
            "sampling": {"max_tokens": 5},
            "openai": {
                "base_url": "http://127.0.0.1:9/v1",
                "price_per_1k_prompt_tokens": judge_price,
                "price_per_1k_completion_tokens": judge_price,
                "budget_usd": 0.05,
            },
        },
        "judge_retries": 2,
    }


def test_lion_plan_prices_every_evaluation_in_the_order_the_stages_run(tmp_path, tiny_models):
    from lion_distill.data import RunDir
    from lion_distill.lion.loop import lion_stages

    cfg = config(tmp_path, str(tiny_models.llama))
    cfg = cfg.model_copy(
        update={
            "eval": validate(
                {**cfg.model_dump(mode="json"), "eval": eval_section(tmp_path, str(tiny_models.llama))}, "test"
            ).eval
        }
    )
    plan = lion_plan(cfg)
    stages = [s.name for s in lion_stages(cfg, RunDir(cfg.run_dir))]
    assert list(dict.fromkeys(ln.stage for ln in plan.lines)) == stages  # iter_-1/eval first, one after each imitation
    lines = by_call(plan)
    for k in (-1, 0, 1, 2):
        assert lines[f"iter_{k}/eval", "eval/candidate"].requests == 3  # the student answers every question
        assert lines[f"iter_{k}/eval", "eval/judge"].requests == 6  # both orders of every pair
        assert lines[f"iter_{k}/eval", "eval/candidate"].role == "student"
    assert lines["iter_0/eval", "eval/judge_retry1"].requests == 3  # the referee's failure prior: half the pairs
    assert lines["iter_0/eval", "eval/judge_retry2"].requests == 1.5
    assert any("judge: budget_usd $0.05 runs out in stage iter_" in w for w in plan.warnings)


def test_evaluation_plan_counts_the_reference_candidates_judge_and_retries(tmp_path, tiny_models):
    from lion_distill.config.evaluate import EvalJobConfig
    from lion_distill.plan.evaluate import evaluate_plan

    section = eval_section(tmp_path, str(tiny_models.llama))
    section["reference"] = {"name": "gpt-3.5", "role": {**section["judge"], "sampling": {"max_tokens": 40}}}
    section["candidates"] = [
        {"name": "a", "role": {"backend": "hf", "model": str(tiny_models.llama), "sampling": {"max_tokens": 7}}},
        {"name": "b", "role": {"backend": "vllm", "model": str(tiny_models.llama)}},
    ]
    cfg = EvalJobConfig.model_validate(
        {"run_dir": str(tmp_path / "eval"), "eval": section, "plan": {"referee_failure_rate": 0.5}}
    )
    plan = evaluate_plan(cfg)
    lines = by_call(plan)
    assert lines["questions", "eval/reference"].requests == 3 and lines["questions", "eval/reference"].usd > 0
    for name in ("a", "b"):
        assert lines[f"candidate/{name}", "eval/candidate"].requests == 3
        assert lines[f"candidate/{name}", "eval/candidate"].role == name
        assert lines[f"candidate/{name}", "eval/judge"].requests == 6
        assert lines[f"candidate/{name}", "eval/judge_retry1"].requests == 3  # half the pairs asked again
        assert lines[f"candidate/{name}", "eval/judge_retry2"].requests == 1.5
    assert lines["candidate/a", "eval/candidate"].completion_tokens == 3 * 7
    # The judge reads the question, the reference answer (40 tokens) and the candidate's reply (7 tokens).
    assert lines["candidate/a", "eval/judge"].prompt_tokens - lines["candidate/b", "eval/judge"].prompt_tokens == 6 * (
        7 - cfg.eval.candidates[1].role.sampling.max_tokens
    )

    from lion_distill.data import RunDir

    RunDir(cfg.run_dir).write_json("state.json", {"completed": ["questions", "candidate/a"]})
    plan = evaluate_plan(cfg)
    assert plan.skipped == ["questions", "candidate/a"] and {ln.stage for ln in plan.lines} == {"candidate/b"}


def test_step_by_step_plan_gives_training_gpu_hours_and_skips_finished_stages(tmp_path):
    from lion_distill.data import RunDir
    from lion_distill.plan.step_by_step import step_by_step_plan
    from lion_distill.step_by_step import job

    cfg = job.load(
        str(REPO / "configs/step-by-step-demo.yaml"),
        [f"run_dir={tmp_path / 'run'}", "train.gpus_per_worker=1", "plan.train_tokens_per_s_per_gpu=100"],
    )
    plan = step_by_step_plan(cfg)
    train = [ln for ln in plan.lines if ln.call.startswith("train/")]
    assert train and all(ln.gpu_hours == pytest.approx(ln.prompt_tokens / 100 / 3600) for ln in train)
    first = train[0].stage
    run = RunDir(cfg.run_dir)
    run.write_json("state.json", {"completed": ["rationales", first]})
    run.write_json(f"{first}/result.json", {"tokens_per_s": 400.0, "gpus": 2})  # measured: 200 a GPU
    plan = step_by_step_plan(cfg)
    assert plan.skipped == ["rationales", first] and first not in {ln.stage for ln in plan.lines}
    assert all(ln.gpu_hours == pytest.approx(ln.prompt_tokens / 200 / 3600) for ln in plan.lines)
    assert "student: 200 training tokens/s a GPU (observed)" in plan.assumptions


def test_preflight_checks_an_evaluation_before_it_starts(tmp_path, tiny_models):
    from lion_distill.config.evaluate import EvalJobConfig

    section = eval_section(tmp_path, str(tiny_models.llama))
    section["questions"]["files"] = [str(tmp_path / "missing.jsonl")]
    section["candidates"] = [
        {"name": "lion", "lion_run": str(tmp_path / "no-run")},
        {"name": "local", "role": {"backend": "vllm", "model": str(tmp_path / "no-model")}},
    ]
    cfg = EvalJobConfig.model_validate({"run_dir": str(tmp_path / "eval"), "eval": section})
    checks = preflight(cfg, env={})
    assert any(p.startswith("eval: ") and "missing.jsonl" in p for p in checks.inputs)
    assert any(p.startswith("eval.candidates[0]: candidate lion:") and "config.json not found" in p for p in checks.run)
    assert any(p.startswith("eval.candidates[1].role.model:") and "does not exist" in p for p in checks.run)
    section["questions"]["files"] = [short_questions(tmp_path, 3)[0]]
    (tmp_path / "answers.jsonl").write_text('{"question_id": 1, "text": "An apple."}\n')  # questions 2 and 3 unanswered
    section["candidates"] = section["candidates"][1:]
    problems = preflight(
        EvalJobConfig.model_validate({"run_dir": str(tmp_path / "eval"), "eval": section}), env={}
    ).inputs
    assert any(p.startswith("eval: ") and "question_id" in p for p in problems), problems


def test_job_lines_stay_plain_text_after_ray_serve_llm_takes_the_root_logger(capsys):
    import logging

    from lion_distill.cli import _log_to_stderr

    _log_to_stderr()
    import ray.serve.llm  # noqa: F401  (its import puts a JSON handler on the root logger)

    logging.getLogger("lion_distill.test").info("stage done")
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "stage done" in ln]
    assert line.endswith("INFO lion_distill.test: stage done")  # not a JSON object, as the root logger's lines now are


def test_a_teachers_prompt_without_its_slot_is_one_preflight_line(tmp_path, capsys):
    """Plan and run both stop on it in seconds, with no traceback; a user's prompt needs no `#` header."""
    from lion_distill.cli import main

    config = str(REPO / "configs/step-by-step-demo.yaml")
    bad, mine = tmp_path / "bad.txt", tmp_path / "mine.txt"
    bad.write_text("Q: what goes here?\nA:")
    mine.write_text("Q: {input}\nA:")
    for extra in ([], ["--plan"]):
        code = main(
            [
                "step-by-step",
                "--config",
                config,
                "--set",
                f"run_dir={tmp_path / 'run'}",
                "--set",
                f"teacher.prompt_file={bad}",
                *extra,
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert err.splitlines()[1:] == [
            f"  teacher.prompt_file: {bad}: a prompt needs exactly one {{input}} where the row's input goes (found 0)"
        ]
    assert (
        main(
            [
                "step-by-step",
                "--config",
                config,
                "--set",
                f"run_dir={tmp_path / 'run'}",
                "--set",
                f"teacher.prompt_file={mine}",
                "--plan",
            ]
        )
        == 0
    )


def test_a_credential_in_a_uri_is_refused_naming_the_field_never_the_value(tmp_path, capsys):
    import yaml

    from lion_distill.cli import main

    secret, token = "wJalrXUtnFEMI-never-printed", "sk-live-9f8e7d-never-printed"
    cfg = {
        "run_dir": f"s3://AKIAEXAMPLE:{secret}@bucket/runs/x",
        "data": {"pool_files": [SEED]},
        "teacher": {"backend": "openai", "model": "gpt", "openai": {"base_url": f"https://api.x/v1?api_key={token}"}},
        "student": {"backend": "hf", "model": "/no/such/student"},
        "referee": {"backend": "hf", "model": "/no/such/referee"},
        "generator": {"backend": "hf", "model": "/no/such/generator"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for plan in ([], ["--plan"]):  # refused before the plan too: it writes into the run directory
        assert main(["lion", "--config", str(path), *plan]) == 2
        err = capsys.readouterr().err
        assert secret not in err and token not in err and "AKIAEXAMPLE" not in err
        lines = err.strip().splitlines()[1:]
        assert len(lines) == 2, lines  # nothing else checked: another check's line could name the URI
        assert lines[0].strip().startswith("run_dir: the URI holds a credential (user:password)")
        assert lines[1].strip().startswith("teacher.openai.base_url: the URI holds a credential (api_key)")


def test_preflight_knows_what_a_stage_would_refuse(tmp_path, tiny_models):
    """The constrained review's explanation needs room in the referee's max_tokens: said before the
    run starts, not when discrimination starts after imitation has trained."""
    cfg = config(tmp_path, str(tiny_models.llama), referee_constraint="regex")
    (line,) = [p for p in preflight(cfg, env={}).inputs if p.startswith("referee.sampling")]
    assert (
        "sampling.max_tokens 6 leaves no room for an explanation" in line
        and "give the referee / judge at least" in line
    )
    cfg.referee.sampling.max_tokens = 512
    assert not [p for p in preflight(cfg, env={}).inputs if p.startswith("referee.")]
    cfg.generator = cfg.generator.model_copy(update={"backend": "hf", "openai": None})
    cfg.lion.generator_constraint = "regex"
    (line,) = [p for p in preflight(cfg, env={}).inputs if p.startswith("lion.generator_constraint")]
    assert "the hf backend cannot constrain decoding" in line
