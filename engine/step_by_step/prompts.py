"""Few-shot chain-of-thought prompts as text files (engine/step_by_step/prompts/<task>.txt, or a
user's own): `#` lines at the top say where the exemplars come from, the rest is the prompt
with `{input}` where the row's input goes. The teacher continues it as a raw completion.

    prompt = load_prompt(default_prompt_file("cqa"))
    prompt.render(row)   # the exemplars, then "Q: <row input>\nA:"
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "prompts"
SLOT = "{input}"


@dataclass(frozen=True)
class FewShotPrompt:
    path: str
    provenance: str  # the file's leading comment
    template: str

    def render(self, row: dict) -> str:
        return self.template.replace(SLOT, row["input"])


def default_prompt_file(task: str) -> Path:
    return PROMPTS / f"{task}.txt"


def load_prompt(path: str | Path) -> FewShotPrompt:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = 0
    while header < len(lines) and lines[header].startswith("#"):
        header += 1
    provenance = "\n".join(line.lstrip("# ") for line in lines[:header])
    template = "\n".join(lines[header:]).strip("\n")
    if template.count(SLOT) != 1:
        raise ValueError(f"{path}: a prompt needs exactly one {SLOT} where the row's input goes "
                         f"(found {template.count(SLOT)})")
    if not provenance:
        raise ValueError(f"{path}: start the file with `#` lines saying where its exemplars come from")
    return FewShotPrompt(str(path), provenance, template)
