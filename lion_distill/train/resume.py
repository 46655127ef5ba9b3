"""A training resumed from its checkpoints goes on exactly where it stopped, or does not start.

    refuse_changed_schedule(storage_path(output_dir), name, schedule_of(cfg, ranks, n_rows))

A checkpoint restores the sharded weights and optimizer under any world size, but where each rank
is in the epoch (`micro_in_epoch`: micro-batches of `batch_size` rows, of its share of the seeded
order, batches.epoch_order) and how long the schedule is (steps a epoch: rows / ranks / batch /
accumulation) are counted in the settings it was written with. Resumed with other ones, a run
would silently skip or repeat rows and stretch or cut its learning-rate schedule. So the driver
keeps those settings beside Ray Train's checkpoints (`SCHEDULE` in the run's storage folder) and
refuses, in one line naming each setting, a resume that changes them. More epochs or another
max_steps resume as before: they extend or cut the schedule on purpose.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.fs as pafs

SCHEDULE = "lion_schedule.json"
# What a rank's position in the data and the schedule's length are counted in, by config field.
FIELDS = {
    "ranks": "train.num_workers",
    "batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    "rows": "the usable training rows",
}


class ResumeRefused(ValueError):
    """A resume would change what the checkpoint's data position and schedule are counted in."""


def schedule_of(cfg, ranks: int, rows: int) -> dict:
    return {
        "ranks": ranks,
        "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "rows": rows,
    }


def refuse_changed_schedule(storage: str, name: str, schedule: dict) -> None:
    """Raise ResumeRefused when the training `name` under `storage` (Ray Train's storage path: a
    local path or a URI with its query) has checkpoints made with another schedule; else record
    `schedule` there for the next resume."""
    base, sep, query = storage.partition("?")
    fs, folder = pafs.FileSystem.from_uri(posixpath.join(base, name) + sep + query)
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    checkpoints = [f for f in found if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")]
    path = posixpath.join(folder, SCHEDULE)
    if checkpoints and fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            before = json.loads(f.read())
        changed = [
            f"{FIELDS[k]} {before[k]} -> {schedule[k]}" for k in FIELDS if k in before and before[k] != schedule[k]
        ]
        if changed:
            raise ResumeRefused(
                f"{name}: its checkpoints in {posixpath.join(base, name)} count each rank's place in the data and "
                f"the schedule's length in other settings ({'; '.join(changed)}): resumed so, it would skip or "
                "repeat rows and change its learning-rate schedule. Set them back, or delete that folder to "
                "train from the start"
            )
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(schedule).encode())
