"""The configuration reference, generated from the models' `Field(description=...)`:

    python -m lion_distill.config.docs > docs/configuration.md

One table per model, reached from the three jobs' configs in the order a reader meets them;
tests/test_config_docs.py fails when docs/configuration.md differs from what this prints.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Iterator

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from lion_distill.config.evaluate import EvalJobConfig
from lion_distill.config.run import RunConfig
from lion_distill.config.step_by_step import StepByStepConfig

COMMAND = "python -m lion_distill.config.docs > docs/configuration.md"
JOBS = (
    ("Lion", "jobs/lion.py", "lion-distill lion", RunConfig),
    ("Distilling step-by-step", "jobs/step_by_step.py", "lion-distill step-by-step", StepByStepConfig),
    ("Evaluation", "jobs/evaluate.py", "lion-distill evaluate", EvalJobConfig),
)
BOUNDS = {
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Ge: ("ge", ">="),
    annotated_types.Lt: ("lt", "<"),
    annotated_types.Le: ("le", "<="),
}

HEADER = f"""# Configuration reference

Generated from the pydantic models in `lion_distill/config/` by `{COMMAND}`: edit the models'
`Field(description=...)`, not this page (`tests/test_config_docs.py` fails when it is stale).

A run is one YAML file (see `configs/`), with `--set a.b.c=value` overrides on the command line
(values read as YAML: `--set lion.hard_easy_ratio=[2,1]`). Unknown keys are rejected, and every
error names the file, the field and what was expected. API keys never enter a config: a role
names the environment variable that holds its key (`openai.api_key_env`).
"""


def models(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """`root` and every model its fields hold, depth first, each once."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for info in model.model_fields.values():
            for inner in nested(info.annotation):
                visit(inner)

    visit(root)
    return iter(seen)


def nested(annotation) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in nested(arg)]


def type_name(annotation, metadata: list = ()) -> str:
    """A field's type as a reader writes YAML for it: `int > 0`, `"a" | "b"`, `list[str]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], list(args[1:]))
    bounds = [f"{BOUNDS[type(m)][1]} {getattr(m, BOUNDS[type(m)][0])}" for m in metadata if type(m) in BOUNDS]
    suffix = (" " + ", ".join(bounds)) if bounds else ""
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" + suffix
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation)) + suffix


def default_text(info: FieldInfo) -> str:
    """The default as YAML; a section's, by the fields it sets apart from that section's own defaults."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        changed = {
            k: v
            for k, v in to_jsonable_python(value).items()
            if fields[k].is_required() or v != to_jsonable_python(fields[k].get_default(call_default_factory=True))
        }
        return f"`{_yaml(changed)}`" if changed else "its defaults"
    return f"`{_yaml(to_jsonable_python(value))}`"


def _yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text.removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary(model: type[BaseModel]) -> str:
    """The docstring's first paragraph, on one line."""
    doc = model.__doc__ or ""
    if doc == BaseModel.__doc__ or not doc.strip():
        return ""
    text = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    return text.removesuffix("::") + ("." if text.endswith("::") else "")


def table(model: type[BaseModel], parents: dict[type, list[str]]) -> str:
    lines = [f"## {model.__name__}", ""]
    if summary(model):
        lines += [summary(model), ""]
    if parents.get(model):
        lines += ["Found at: " + ", ".join(f"`{p}`" for p in parents[model]) + ".", ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        default = _cell(default_text(info))
        kind = type_name(info.annotation, info.metadata)
        lines.append(f"| `{name}` | {_cell(kind)} | {default} | {_cell(info.description or '')} |")
    return "\n".join(lines)


def where_used(roots: list[type[BaseModel]]) -> dict[type, list[str]]:
    """Model -> the `Parent.field` names that hold it."""
    used: dict[type, list[str]] = {}
    for root in roots:
        for model in models(root):
            for name, info in model.model_fields.items():
                for inner in nested(info.annotation):
                    entry = f"{model.__name__}.{name}"
                    if entry not in used.setdefault(inner, []):
                        used[inner].append(entry)
    return used


def render() -> str:
    roots = [job[-1] for job in JOBS]
    parents = where_used(roots)
    jobs = "\n".join(
        f"- {title} (`{script}`, `{command}`): [{model.__name__}](#{model.__name__.lower()})"
        for title, script, command, model in JOBS
    )
    ordered: list[type[BaseModel]] = []
    for root in roots:
        ordered += [m for m in models(root) if m not in ordered]
    return "\n\n".join([HEADER.rstrip(), "Each job's config:\n\n" + jobs, *(table(m, parents) for m in ordered)]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
