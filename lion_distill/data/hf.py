"""Hugging Face `datasets` as seed pools: a `save_to_disk` folder, or a `load_dataset` source
(`json`, `parquet`, `csv`, `arrow` with local `data_files`; a hub id where the hub is
reachable). Rows are read from the dataset's memory-mapped Arrow table, so every record
keeps its `source:row N` and goes through the same checks and reject counts as a file's.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from lion_distill.data.records import RawRecord, read_table_rows
from lion_distill.errors import PoolFileError


def _arrow(ds) -> pa.Table:
    """A `datasets.Dataset`'s rows as one Arrow table (slices of its memory-mapped files)."""
    return ds.with_format("arrow")[:]


def _one_split(found, source: str, split: str = "train"):
    from datasets import DatasetDict

    if not isinstance(found, DatasetDict):
        return found
    if split in found:
        return found[split]
    if len(found) == 1:
        return next(iter(found.values()))
    raise PoolFileError(f"{source}: a DatasetDict without a {split!r} split (splits: {sorted(found)}); save one split")


def read_saved_dataset(
    path: Path, field_map: dict[str, str] | None = None, keep: tuple[str, ...] = ()
) -> Iterator[RawRecord]:
    """A folder written by `Dataset.save_to_disk` (or a DatasetDict's: its train split)."""
    from datasets import load_from_disk

    try:
        found = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise PoolFileError(f"{path}: a folder but not a Hugging Face datasets folder (save_to_disk): {e}") from None
    return read_table_rows(_arrow(_one_split(found, str(path))), str(path), "datasets folder", field_map, keep)


def source_label(source: dict) -> str:
    """How rejects name a load_dataset source: its builder and files (or its hub id)."""
    files = ",".join(source.get("data_files") or [])
    return f"{source['path']}:{files}" if files else source["path"]


def read_dataset_source(
    source: dict, field_map: dict[str, str] | None = None, keep: tuple[str, ...] = ()
) -> Iterator[RawRecord]:
    """`datasets.load_dataset(path, name, data_files=..., split=...)`: one split's rows."""
    from datasets import load_dataset

    label = source_label(source)
    missing = [f for f in source.get("data_files") or [] if not glob.glob(f)]
    if missing:
        raise PoolFileError(f"{label}: no such data file(s) {missing}")
    try:
        ds = load_dataset(
            source["path"],
            source.get("name"),
            data_files=source.get("data_files") or None,
            split=source.get("split", "train"),
        )
    except Exception as e:  # datasets raises many types (offline hub, bad csv, unknown split): one line names it
        raise PoolFileError(
            f"{label}: load_dataset failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from None
    return read_table_rows(_arrow(ds), label, "dataset", field_map, keep)
