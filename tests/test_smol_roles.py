"""The referee's, the judge's and the generator's parsers on real text: SmolLM2-135M-Instruct
(lion_distill.smol) served by vLLM's OpenAI-compatible server on loopback, asked with the
project's own prompts and read with its own parsers. Each figure printed here is recorded
in benchmarks/RESULTS.md; a threshold sits below the figure measured.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lion_distill.data import load_pool
from lion_distill.judging.referee import referee_messages
from lion_distill.judging.rubrics import RUBRICS
from lion_distill.lion.generator import REJECT_REASONS, candidate_rows, clean_candidate, generator_messages
from lion_distill.lion.rouge import NoveltyFilter
from tests.fixtures.server_process import free_port, server_process

REPO = Path(__file__).resolve().parents[1]
ANSWERS = REPO / "data" / "smol" / "teacher_answers.jsonl"
MODEL = "smol"
MAX_TOKENS = 160  # the demo's referee and judge
DEGENERATE = "I don't know."

pytestmark = [pytest.mark.smol, pytest.mark.vllm]


@pytest.fixture(scope="module")
def smol_server(smol_models, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("smol_server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(smol_models.instruct),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
        "--enforce-eager",
        "--seed",
        "0",
    ]
    with server_process(cmd, f"http://127.0.0.1:{port}/v1/models", log, env, startup_s=240):
        import openai

        yield openai.OpenAI(api_key="EMPTY", base_url=f"http://127.0.0.1:{port}/v1")


def ask(client, messages: list[list[dict]], temperature: float, regex: str | None = None) -> list[dict]:
    """All at once (the server batches them): -> [{"text", "finish_reason"}] in order."""
    extra = {"structured_outputs": {"regex": regex}} if regex else None

    def one(m):
        # No per-request seed: it can kill the vllm-cpu engine (docs/environment.md).
        choice = client.chat.completions.create(
            model=MODEL, messages=m, max_tokens=MAX_TOKENS, temperature=temperature, extra_body=extra
        ).choices[0]
        return {"text": choice.message.content, "finish_reason": choice.finish_reason}

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, messages))


def test_referee_reviews_of_real_answers_parse_under_the_constraint(smol_server):
    """Lion's referee prompt, the teacher's real answer against "I don't know." in both orders:
    every constrained review parses. Also printed: the free-form parse rate and how often the
    judge prefers the teacher's answer (RESULTS.md: what a 135M referee / judge can do)."""
    rows = [json.loads(line) for line in ANSWERS.read_text().splitlines()][-8:]
    rubric = RUBRICS["lion"]
    pairs = [(r, r["response"], DEGENERATE) for r in rows] + [(r, DEGENERATE, r["response"]) for r in rows]
    messages = [referee_messages(r, first, second, rubric) for r, first, second in pairs]
    constrained = ask(smol_server, messages, 0.2, rubric.regex(MAX_TOKENS))
    free = ask(smol_server, messages, 0.2)
    scores = [rubric.parse(r["text"]) for r in constrained]
    assert all(s is not None for s in scores), [r["text"][-200:] for r, s in zip(constrained, scores) if s is None]
    free_parsed = sum(rubric.parse(r["text"]) is not None for r in free)
    n = len(rows)
    # The teacher's answer is Assistant 1 in the first n reviews, Assistant 2 in the rest.
    teacher = np.array([s[0] for s in scores[:n]]) + np.array([s[1] for s in scores[n:]])
    degenerate = np.array([s[1] for s in scores[:n]]) + np.array([s[0] for s in scores[n:]])
    print(
        f"referee: {len(scores)} of {len(scores)} constrained reviews parse; free-form {free_parsed} of {len(free)}; "
        f"teacher's answer preferred over {DEGENERATE!r} in {int((teacher > degenerate).sum())} of {n} questions "
        f"({int((teacher == degenerate).sum())} ties, both orders summed)"
    )


def test_generator_real_candidates_pass_cleaning_and_the_rouge_filter(smol_server):
    """Lion's generator prompts, free-form (no constraint, temperature 1.0 and 160 tokens, as the
    real demo runs it), 16 seeds half hard, half easy: every reply is parsed and kept or rejected
    for a reason; the share that passes cleaning and the ROUGE-L filter against the seed pool is
    printed and recorded (RESULTS.md)."""
    pool, _ = load_pool([str(REPO / "data" / "self-instruct" / "seed_tasks.jsonl")])
    rows = pool.to_pylist()
    picks = np.random.default_rng(0).choice(len(rows), 16, replace=False)
    seeds = [{**rows[i], "kind": "hard" if k % 2 else "easy"} for k, i in enumerate(picks)]
    replies = ask(smol_server, [generator_messages(s, s["kind"]) for s in seeds], 1.0)  # the demo's settings
    kept, rejects = candidate_rows(seeds, replies, iteration=0)
    novel = NoveltyFilter([r["instruction"] for r in rows], threshold=0.7).filter([r["instruction"] for r in kept])
    assert len(kept) + sum(rejects.values()) == len(seeds)
    print(
        f"generator: {len(seeds)} replies, {len(kept)} pass cleaning (rejects {dict(rejects)}), {sum(novel)} pass "
        f"ROUGE-L < 0.7; e.g. {[r['instruction'][:80] for r in kept[:3]]}"
    )
    # Measured: 1 of 16 kept and novel, 12 cut at max_tokens (RESULTS.md). The rate is recorded, not
    # tested: a threshold below 1 of 16 could not fail. What is tested: every reply is kept or rejected
    # for a named reason, and what is kept is a clean instruction.
    assert set(rejects) <= set(REJECT_REASONS)
    assert all(clean_candidate(r["instruction"], r["input"], "stop", 4096) is None for r in kept)
