"""What every fault test checks after its run: requests paid for twice, secrets written, files a
killed process must not leave behind."""

from pathlib import Path


def paid_twice(stats: dict) -> int:
    """Requests the endpoint answered more than once (a counting proxy's stats)."""
    return sum(n - 1 for n in stats["answered"].values() if n > 1)


def files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def leftovers(run: Path) -> list[Path]:
    """Files a finished run keeps from a killed one: temp files and folders (an export's staging
    folder among them), open answer journals, rows for workers, training checkpoints (deleted once
    their stage is recorded). Not counted, known limits (docs/reliability.md): a killed parquet
    writer's temporary file (a part's or a table's, never read) and a killed writer's open spend
    part (`*.open.jsonl`: a record, read as spend every time the log is read)."""
    patterns = ("*.tmp-*", "*.jsonl.open", "*/requests/*", "*/train_rows/*", "*/ray_train/*")
    found = {p for pattern in patterns for p in run.rglob(pattern)}
    return sorted(p for p in found if not (p.is_file() and ".parquet" in p.name and ".tmp-" in p.name))
