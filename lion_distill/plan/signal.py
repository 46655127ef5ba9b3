"""What a white-box mode adds to a plan: the teacher's scoring pass over the answers the student
learns from (a prefill of prompt + answer and one token each, lion_distill.llm.scoring) and the
signal it leaves in the run directory (per answer token: k ids and k log-probabilities, the token's
id and its own log-probability, 4 bytes each, before parquet's compression)."""

from __future__ import annotations

from lion_distill.config.models import DistillConfig, RoleConfig
from lion_distill.plan import Line, price


def bytes_per_token(k: int) -> int:
    return 8 * k + 8


def signal_line(
    stage: str,
    call: str,
    teacher: RoleConfig,
    distill: DistillConfig,
    rows: float,
    prompt_tokens: float,
    answer_tokens: float,
    throughput: float | None,
) -> tuple[Line, str]:
    """-> (the scoring pass's line, its basis saying the signal's size on disk; the assumption behind it)."""
    size = rows * answer_tokens * bytes_per_token(distill.top_k)
    line = Line(
        stage,
        call,
        "teacher",
        rows,
        rows * (prompt_tokens + answer_tokens),
        rows,
        basis=f"a prefill of prompt + answer a row; {_size(size)} of signal",
    )
    note = (
        f"teacher signal: top {distill.top_k} at each of about {answer_tokens:,.0f} tokens an answer, "
        f"{bytes_per_token(distill.top_k)} bytes a token in the run directory (before compression)"
    )
    return price(teacher, line, throughput), note


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"
