"""`run_dir/config.json`: the resolved config a run directory was made with. A job resumed on it
with a different config stops before it starts anything, naming the fields that differ, unless
it is told the change is meant (`--allow-config-change`): stages already complete were made
under the stored config, and what the rest would make under another is a run nobody asked for.

    check_config(run, cfg)                       # before anything starts: raises ConfigChanged
    store_config(run, cfg, allow_change=False)   # checks, then writes config.json
    config_changes(RunConfig, stored, new)       # ["lion.iterations: 2 -> 3", ...]

A field the stored config lacks is not a change: that run directory was written by a version
without the field, whose behaviour the field's default keeps.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing

from pydantic import BaseModel

from lion_distill.data import RunDir

CONFIG_FILE = "config.json"
SHOWN_CHARS = 60
log = logging.getLogger("lion_distill")


class ConfigChanged(ValueError):
    """A resumed run's config differs from the one its run directory was made with."""

    def __init__(self, path: str, changes: list[str]):
        super().__init__(
            f"{path}: this run directory was made with another config; these fields differ "
            "(stored -> now):\n  " + "\n  ".join(changes) + "\n"
            "run with the stored config, give a new run_dir, or pass --allow-config-change to resume "
            "under the new config (config.json is then replaced)"
        )
        self.changes = changes


def _section(annotation) -> type[BaseModel] | None:
    """The model a field holds, where it holds one (a section), alone or as `X | None`."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _section(inner[0]) if len(inner) == 1 else None


def _shown(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def config_changes(model: type[BaseModel], stored: dict, new: dict, prefix: str = "") -> list[str]:
    """Every field whose value differs, by its dotted name: sections are compared field by field,
    any other value (a list, a dict of engine arguments) as a whole."""
    changes = []
    for name, info in model.model_fields.items():
        if name not in stored or name not in new:
            continue
        old, now, section = stored[name], new[name], _section(info.annotation)
        if section is not None and isinstance(old, dict) and isinstance(now, dict):
            changes += config_changes(section, old, now, f"{prefix}{name}.")
        elif old != now:
            changes.append(f"{prefix}{name}: {_shown(old)} -> {_shown(now)}")
    return changes


def check_config(run: RunDir, cfg: BaseModel, allow_change: bool = False) -> list[str]:
    """The fields where `cfg` differs from the stored config.json ([] in a new run directory);
    raises ConfigChanged when there are any, unless `allow_change`."""
    stored = run.read_json(CONFIG_FILE)
    changes = config_changes(type(cfg), stored, cfg.model_dump(mode="json")) if stored is not None else []
    if changes and not allow_change:
        raise ConfigChanged(run.uri_of(CONFIG_FILE), changes)
    return changes


def store_config(run: RunDir, cfg: BaseModel, allow_change: bool = False) -> dict:
    """Write `cfg` (key variable *names* only, never their values) as the run's config.json, after
    comparing it with the one already there; -> the config as written."""
    changes = check_config(run, cfg, allow_change)
    config = cfg.model_dump(mode="json")
    if changes:
        log.warning("config changed since this run directory was made (--allow-config-change): %s", "; ".join(changes))
    run.write_json(CONFIG_FILE, config)
    return config
