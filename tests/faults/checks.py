"""What every fault test checks after its run: requests paid for twice, secrets written, files a
killed process must not leave behind."""

from pathlib import Path


def paid_twice(stats: dict) -> int:
    """Requests the endpoint answered more than once (a counting proxy's stats)."""
    return sum(n - 1 for n in stats["answered"].values() if n > 1)


def files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def leftovers(run: Path) -> list[Path]:
    """Files a finished run keeps from a killed one: temp files (but a killed part writer's, in its
    call's parts folder, never read: docs/reliability.md), open journals, rows for workers, training
    checkpoints (deleted once their stage is recorded)."""
    patterns = ("*.tmp-*", "*.jsonl.open", "*.open.jsonl", "*/requests/*", "*/train_rows/*", "*/ray_train/*")
    found = {p for pattern in patterns for p in run.rglob(pattern)}
    return sorted(p for p in found if not (p.name.startswith("part-") and "/parts/" in str(p)))
