"""Usage and cost of an API stage: what was spent, written next to the cache."""
from __future__ import annotations

import re
import time

from engine.config.models import OpenAIEndpoint
from engine.data.rundir import RunDir
from engine.metrics import StageRecord

LEDGER_DIR = "llm_cache/ledger"


def cost_usd(endpoint: OpenAIEndpoint, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * endpoint.price_per_1k_prompt_tokens
            + completion_tokens * endpoint.price_per_1k_completion_tokens) / 1000.0


def write_ledger(run_dir: RunDir, rec: StageRecord, *, role_name: str, model: str, endpoint: OpenAIEndpoint) -> str:
    """One JSON file per stage run (a resumed stage adds another): the key is never in it."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", rec.stage)
    rel = f"{LEDGER_DIR}/{slug}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}.json"
    run_dir.write_json(rel, {
        "stage": rec.stage, "role": role_name, "model": model, "base_url": endpoint.base_url,
        "rows": rec.rows, "failed_rows": rec.failed_rows, "api_requests": rec.api_requests,
        "api_retries": rec.api_retries, "api_cached": rec.api_cached, "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens, "cost_usd": round(rec.cost_usd, 8),
        "budget_usd": endpoint.budget_usd, "seconds": round(rec.seconds, 3),
    })
    return rel
