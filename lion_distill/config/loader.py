"""Load a run config from YAML plus `--set a.b.c=value` overrides; every error names
the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lion_distill.config.run import RunConfig
from lion_distill.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value); the value is read as YAML, so
    numbers, booleans, lists and null keep their types."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, for example --set lion.tau=1.5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e.problem})") from None
    return path, value


def apply_override(data: dict, path: list[str], value: Any, text: str) -> None:
    node = data
    for depth, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"--set {text!r}: {where} is {type(child).__name__}, not a section with fields")
        node = child
    node[path[-1]] = value


def _describe(error: dict) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    expected = error["msg"]
    if error["type"] == "extra_forbidden":
        expected = "unknown field (check its spelling; see docs/configuration.md)"
    elif error["type"] == "missing":
        expected = "required field is missing"
    got = error.get("input")
    shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    return f"{field}: {expected}{shown}"


def validate(data: dict, source: str, model: type[BaseModel] = RunConfig) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: {_describe(err)}" for err in e.errors()]
        raise ConfigError("invalid run config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path, overrides: list[str] = (), model: type[BaseModel] = RunConfig) -> BaseModel:
    """A job's config (`model`: Lion's RunConfig unless a job names its own) from YAML + overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    source = str(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, text)
    if overrides:
        source += " (with --set " + " ".join(overrides) + ")"
    return validate(data, source, model)
