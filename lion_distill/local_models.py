"""Model names that exist on no hub, resolved in a config to folders built on this machine:
`tiny://llama` and `tiny://t5` (lion_distill.tiny: random, for plumbing) and `smol://instruct` and
`smol://student?layers=N` (lion_distill.smol: the real small model, for what depends on what a model
says). A job resolves them as it loads its config, so any config (the demos') can name them."""

from __future__ import annotations

from pathlib import Path

from lion_distill.smol import SMOL_SCHEME, resolve_smol
from lion_distill.tiny import DEFAULT_CACHE, TINY_SCHEME, TinyModels, build_tiny_models


def resolve_local_models(cfg, tiny_cache: str | Path = DEFAULT_CACHE):
    """A config (any pydantic model) with every local model name, wherever it sits (a role's
    model, a list of candidates), replaced by its built folder. Builds only what is named."""
    data = cfg.model_dump()
    named: list[str] = []

    def walk(node, where: str):
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str) and node.startswith(TINY_SCHEME):
            kind = node[len(TINY_SCHEME) :]
            if kind not in ("llama", "t5"):
                raise ValueError(f"{where}: unknown tiny model {node!r}; expected tiny://llama or tiny://t5")
            named.append(kind)
            return str(getattr(tiny_models(), kind))
        if isinstance(node, str) and node.startswith(SMOL_SCHEME):
            named.append(node)
            return str(resolve_smol(node, where))
        return node

    built: list[TinyModels] = []

    def tiny_models() -> TinyModels:
        if not built:
            built.append(build_tiny_models(tiny_cache))
        return built[0]

    resolved = walk(data, "")
    return type(cfg).model_validate(resolved) if named else cfg
