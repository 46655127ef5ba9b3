"""Few-shot chain-of-thought prompts as text files (lion_distill/step_by_step/prompts/<task>.txt, or a
user's own): the prompt with `{input}` where the row's input goes, which the teacher continues
as a raw completion. Leading `#` lines are a comment, not prompt: the prompts shipped here say
in them where their exemplars come from (a user's own file needs none).

    prompt = load_prompt(default_prompt_file("cqa"))
    prompt.render(row)   # the exemplars, then "Q: <row input>\nA:"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lion_distill.errors import PromptError

PROMPTS = Path(__file__).resolve().parent / "prompts"
SLOT = "{input}"
EXAMPLE = "data/step-by-step/my-task/prompt.txt"  # a user's own task's prompt, commented
# What a missing prompt file should hold.
WRITE = (
    "a few worked examples of the task, each 'Q: <input>' then 'A: <reasoning> <answer phrase> <label>.' "
    f"(data.answer_phrase, 'So the answer is' by default), then 'Q: {SLOT}' and 'A:', with exactly one {SLOT} "
    f"where each row's input goes; an example: {EXAMPLE}"
)


@dataclass(frozen=True)
class FewShotPrompt:
    path: str
    provenance: str  # the file's leading comment ("" when it has none)
    template: str

    def render(self, row: dict) -> str:
        return self.template.replace(SLOT, row["input"])


def default_prompt_file(task: str) -> Path:
    return PROMPTS / f"{task}.txt"


def load_prompt(path: str | Path) -> FewShotPrompt:
    path = Path(path)
    if not path.is_file() and path.parent == PROMPTS:  # a task this repository ships no prompt for: jsonl
        raise PromptError(f"not set, and no prompt ships for this task: set teacher.prompt_file to a file of {WRITE}")
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found; write there {WRITE}")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = 0
    while header < len(lines) and lines[header].startswith("#"):
        header += 1
    provenance = "\n".join(line.lstrip("# ") for line in lines[:header])
    template = "\n".join(lines[header:]).strip("\n")
    if template.count(SLOT) != 1:
        raise PromptError(
            f"{path}: a prompt needs exactly one {SLOT} where the row's input goes (found {template.count(SLOT)})"
        )
    return FewShotPrompt(str(path), provenance, template)
