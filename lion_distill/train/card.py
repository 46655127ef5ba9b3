"""What an exported student says about how it was trained: a model card (README.md) naming its
format, and for an `alpaca` student a chat template that renders Lion's Alpaca layout, so a
chat-completions request to it (vLLM, Ray Serve LLM) is asked as it was trained.

    label_export("runs/x/iter_0/imitation/student", "alpaca", base_model="/models/llama-7b")

The template renders one user message as Lion's prompt (src/train.py's `PROMPT_DICT`, no input:
a chat request has no input field; a row's input is in its user message, as
lion_distill.llm.prompts.instruction_text puts it) and, after it, an assistant message as the
answer and eos, the sequence an `alpaca` student is trained on. Anything else (a system prompt,
earlier turns) is refused by the template: the student never saw it.
"""

from __future__ import annotations

import os
import tempfile

from lion_distill.llm.prompts import ALPACA_NO_INPUT

CARD = "README.md"
TEMPLATE_FILE = "chat_template.jinja"  # transformers reads it before tokenizer_config.json's template


def alpaca_chat_template(bos: bool) -> str:
    """The Alpaca layout as a chat template; `bos`: the tokenizer starts a prompt with its bos token."""
    head, tail = ALPACA_NO_INPUT.split("{instruction}")
    return (
        "{%- if not (messages | length in [1, 2] and messages[0]['role'] == 'user'"
        " and (messages | length == 1 or messages[1]['role'] == 'assistant')) -%}"
        "{{- raise_exception('This student was trained in the Alpaca layout: send one user message, "
        "without a system prompt or earlier turns') -}}"
        "{%- endif -%}"
        + ("{{- bos_token -}}" if bos else "")
        + "{{- "
        + repr(head)
        + " + messages[0]['content'] + "
        + repr(tail)
        + " -}}"
        + "{%- if messages | length == 2 -%}{{- messages[1]['content'] + eos_token -}}{%- endif -%}"
    )


def card_text(prompt_format: str, base_model: str, chat_template_kwargs: dict | None = None) -> str:
    how = {
        "chat": (
            "its own chat template (the one in this folder): send chat messages, e.g. vLLM's or Ray Serve LLM's "
            "`/v1/chat/completions`; the loss was on its assistant turns"
        ),
        "alpaca": (
            "Lion's Alpaca layout (`### Instruction:\\n...\\n\\n### Response:\\n`, src/train.py's PROMPT_DICT); "
            "the chat template in this folder renders that layout, so `/v1/chat/completions` with one user "
            "message asks it as it was trained (no system prompt, no earlier turns)"
        ),
    }[prompt_format]
    kwargs = (
        f"\n\nChat template variables it was trained with: `{chat_template_kwargs}`." if chat_template_kwargs else ""
    )
    return (
        "---\nlibrary_name: transformers\ntags: [lion-distill, distillation]\n"
        f"prompt_format: {prompt_format}\n---\n\n"
        "# A student distilled by lion-distill\n\n"
        f"Fine-tuned from `{base_model}` on a teacher's answers.\n\n"
        f"Prompt format: **{prompt_format}**. It was trained in {how}.{kwargs}\n"
    )


def label_export(model_dir: str, prompt_format: str, *, base_model: str, chat_template_kwargs: dict | None = None):
    """Write the card (and an `alpaca` student's chat template) into an export: a local folder or
    a pyarrow filesystem URI."""
    from lion_distill.train.batches import load_tokenizer

    files = {CARD: card_text(prompt_format, base_model, chat_template_kwargs)}
    if prompt_format == "alpaca":
        tok = load_tokenizer(base_model)
        bos = tok.bos_token_id is not None and tok("x", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
        files[TEMPLATE_FILE] = alpaca_chat_template(bos)
    _write(model_dir, files)


def _write(folder: str, files: dict[str, str]) -> None:
    if "://" not in folder:
        for name, text in files.items():
            with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, encoding="utf-8") as f:
                f.write(text)
            os.replace(f.name, os.path.join(folder, name))
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(folder)
    for name, text in files.items():
        with fs.open_output_stream(f"{path}/{name}") as out:
            out.write(text.encode("utf-8"))


FORMAT_WORDS = {
    "chat": "its own chat template (a conversation per instruction, the loss on the assistant turn)",
    "alpaca": "Lion's Alpaca layout (`### Instruction:` ... `### Response:`)",
}


def student_line(config: dict | None) -> str:
    """The format the student is trained, asked, evaluated and exported in, and what of the
    teacher's thinking it learns (docs/chat-students.md); empty before the run wrote its config."""
    student, teacher = (config or {}).get("student") or {}, (config or {}).get("teacher") or {}
    fmt = student.get("prompt_format")
    if fmt not in FORMAT_WORDS:
        return ""
    thinking = "kept" if teacher.get("reasoning") == "keep" else "dropped"
    return f"Student format: **{fmt}**: trained, asked and exported in {FORMAT_WORDS[fmt]}; the teacher's thinking {thinking}."
