"""Assistant masks on the chat templates of today's model families (tests/fixtures/templates, with
their provenance): one-, two- and three-turn conversations with a system prompt, each against
the mask written out by hand from what the template renders and what a student served with it
writes. A learnt stretch is shown between ⟦ and ⟧; everything else is context.

The templates are real; the tokenizer is the tiny one (lion_distill.tiny) with each family's
markers added as special tokens, so a marker is one token as it is in the family's own vocabulary
and the mask can be read as text.
"""

import copy
from pathlib import Path

import pytest

from lion_distill.train.chat import IGNORE, Unmaskable, sequences, tokenize_chat
from tests.fixtures.chat_templates import template_tokenizer

S = {"role": "system", "content": "Be terse."}


def U(text):
    return {"role": "user", "content": text}


def A(text, **extra):
    return {"role": "assistant", "content": text, **extra}


ONE = [S, U("Name a colour."), A("Red.")]
TWO = [*ONE, U("Another?"), A("Blue.")]
THREE = [*TWO, U("One more?"), A("Green.")]


def masked(tok, conversation, **template_kwargs) -> list[str]:
    """Each training sequence as text, its learnt tokens between ⟦ and ⟧."""
    out = []
    for ids, labels in tokenize_chat(tok, conversation, 4096, template_kwargs):
        text, learning = "", False
        for token, target in zip(ids, labels):
            learnt = bool(target != IGNORE)
            if learnt != learning:
                text += "⟦" if learnt else "⟧"
                learning = learnt
            text += tok.decode([int(token)])
        out.append(text + ("⟧" if learning else ""))
    return out


CHATML_SYSTEM = "<|im_start|>system\nBe terse.<|im_end|>\n"


def chatml(user, answer, think=""):
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{think}⟦{answer}<|im_end|>⟧\n"


def test_smollm2_chatml_is_one_sequence_every_answer_learnt():
    tok = template_tokenizer("smollm2")
    turns = [chatml("Name a colour.", "Red."), chatml("Another?", "Blue."), chatml("One more?", "Green.")]
    for n, conversation in enumerate((ONE, TWO, THREE), start=1):
        assert masked(tok, conversation) == [CHATML_SYSTEM + "".join(turns[:n])]
    # Without a system prompt the template writes its own: context, as it is when the student is served.
    assert masked(tok, [U("Hi"), A("Hello.")]) == [
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        + chatml("Hi", "Hello.")
    ]


EMPTY_THINK = "<think>\n\n</think>\n\n"


def test_qwen3_each_turn_as_it_is_generated_its_empty_thinking_block_context():
    tok = template_tokenizer("qwen3")
    # One turn: the template writes an empty thinking block before an answer without thinking; the
    # student is not taught it (the teacher did not write it), only the answer and <|im_end|>.
    assert masked(tok, ONE) == [CHATML_SYSTEM + chatml("Name a colour.", "Red.", EMPTY_THINK)]
    # More turns: Qwen3 renders an earlier answer without the block, so each answer is its own
    # sequence, after the history as the template shows it when that answer is being generated.
    history = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
    history2 = history + "<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    first = CHATML_SYSTEM + chatml("Name a colour.", "Red.", EMPTY_THINK)
    second = CHATML_SYSTEM + history + chatml("Another?", "Blue.", EMPTY_THINK)
    third = CHATML_SYSTEM + history2 + chatml("One more?", "Green.", EMPTY_THINK)
    assert masked(tok, TWO) == [first, second]
    assert masked(tok, THREE) == [first, second, third]


def test_qwen3_thinking_is_learnt_inside_its_think_block_and_dropped_from_the_history():
    tok = template_tokenizer("qwen3")
    thinking = [S, U("Name a colour."), A("Red.", reasoning="Primary: red."), U("Another?")]
    thinking.append(A("Blue.", reasoning="Then blue."))
    history = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n"
    assert masked(tok, thinking) == [
        CHATML_SYSTEM
        + "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        + "⟦<think>\nPrimary: red.\n</think>\n\nRed.<|im_end|>⟧\n",
        CHATML_SYSTEM
        + history
        + "<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n"
        + "⟦<think>\nThen blue.\n</think>\n\nBlue.<|im_end|>⟧\n",
    ]
    # enable_thinking false: the empty block is the generation prompt's own.
    assert masked(tok, ONE, enable_thinking=False) == [CHATML_SYSTEM + chatml("Name a colour.", "Red.", EMPTY_THINK)]


LLAMA_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe terse.<|eot_id|>"
)


def llama(user, answer):
    return (
        f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n⟦{answer}<|eot_id|>⟧"
    )


def test_llama_3_2_date_header_is_context_and_every_answer_learnt():
    tok = template_tokenizer("llama3_2")
    turns = [llama("Name a colour.", "Red."), llama("Another?", "Blue."), llama("One more?", "Green.")]
    for n, conversation in enumerate((ONE, TWO, THREE), start=1):
        # date_string: the template's own variable (chat_template_kwargs); else it writes today's date.
        assert masked(tok, conversation, date_string="26 Jul 2024") == [LLAMA_SYSTEM + "".join(turns[:n])]


def gemma(user, answer):
    return f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n⟦{answer}<end_of_turn>⟧\n"


def test_gemma_3_folds_the_system_prompt_into_the_first_user_turn():
    tok = template_tokenizer("gemma3")
    turns = [gemma("Be terse.\n\nName a colour.", "Red."), gemma("Another?", "Blue."), gemma("One more?", "Green.")]
    for n, conversation in enumerate((ONE, TWO, THREE), start=1):
        assert masked(tok, conversation) == ["<bos>" + "".join(turns[:n])]


def test_mistral_each_answer_after_the_system_prompt_its_generation_prompt_shows():
    """Mistral v0.3 renders the system prompt inside the last user turn only (and not at all once
    the conversation ends with an answer): each answer is learnt after the prompt the student is
    asked with when it writes that answer, the system prompt there."""
    tok = template_tokenizer("mistral_v0_3")
    first = "<s>[INST] Be terse.\n\nName a colour.[/INST]⟦ Red.</s>⟧"
    second = "<s>[INST] Name a colour.[/INST] Red.</s>[INST] Be terse.\n\nAnother?[/INST]⟦ Blue.</s>⟧"
    third = (
        "<s>[INST] Name a colour.[/INST] Red.</s>[INST] Another?[/INST] Blue.</s>"
        "[INST] Be terse.\n\nOne more?[/INST]⟦ Green.</s>⟧"
    )
    assert masked(tok, ONE) == [first]
    assert masked(tok, TWO) == [first, second]
    assert masked(tok, THREE) == [first, second, third]


def test_generation_markers_are_the_mask_where_the_template_has_them():
    """TRL's Mistral training template wraps each answer in {% generation %}: its mask is
    transformers' return_assistant_tokens_mask, one sequence. It drops the system prompt of a
    conversation that ends with an answer, so such a conversation is masked turn by turn instead."""
    tok = template_tokenizer("mistral_v0_3_training")
    plain = [U("Name a colour."), A("Red."), U("Another?"), A("Blue."), U("One more?"), A("Green.")]
    assert masked(tok, plain) == [
        "<s>[INST] Name a colour.[/INST]⟦ Red.</s>⟧[INST] Another?[/INST]⟦ Blue.</s>⟧[INST] One more?[/INST]⟦ Green.</s>⟧"
    ]
    assert masked(tok, TWO) == masked(template_tokenizer("mistral_v0_3"), TWO)
    cut = [*plain[:3], A("Blue is", complete=False)]
    assert masked(tok, cut)[0].endswith("[INST] Another?[/INST]⟦ Blue is⟧</s>")


@pytest.mark.parametrize("family", ["smollm2", "qwen3", "llama3_2", "gemma3", "mistral_v0_3"])
def test_an_answer_its_model_was_cut_off_in_learns_no_end_of_turn(family):
    tok = template_tokenizer(family)
    [text] = masked(tok, [U("Name a colour."), A("Red is", complete=False)], date_string="26 Jul 2024")
    assert "⟦Red is⟧" in text or "⟦ Red is⟧" in text
    assert text.index("⟧") == text.index("Red is") + len("Red is")


def test_a_template_whose_turns_cannot_be_told_from_the_prompt_is_refused():
    tok = copy.deepcopy(template_tokenizer("smollm2"))
    # Renders each answer after a counter the generation prompt never shows.
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}#{{ loop.index }}: {% endif %}{{ m.content }}|"
        "{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(Unmaskable, match="cannot be told from the prompt"):
        sequences(tok, [U("Hi"), A("Hello.")])


def test_the_fixtures_are_the_files_their_readme_names():
    folder = Path(__file__).parent / "fixtures" / "templates"
    readme = (folder / "README.md").read_text()
    for template in folder.glob("*.jinja"):
        assert f"`{template.name}`" in readme


CALL = {"id": "call00001", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
TOOLS = [
    S,
    U("What is 2 + 3?"),
    A("", tool_calls=[CALL]),
    {"role": "tool", "content": "5", "tool_call_id": "call00001", "name": "add"},
    A("It is 5."),
]


def test_qwen3_learns_a_tool_call_as_it_renders_it_and_never_the_tool_result():
    tok = template_tokenizer("qwen3")
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    question = "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    result = "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    # Qwen3 writes the empty thinking block only before the turn being generated: one sequence each.
    assert masked(tok, TOOLS) == [
        CHATML_SYSTEM + question + EMPTY_THINK + f"⟦{call}<|im_end|>⟧\n",
        CHATML_SYSTEM + question + f"{call}<|im_end|>\n" + result + EMPTY_THINK + "⟦It is 5.<|im_end|>⟧\n",
    ]


def test_mistral_learns_a_tool_call_and_its_end_and_never_the_tool_result():
    tok = template_tokenizer("mistral_v0_3")
    call = '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 2, "b": 3}, "id": "call00001"}]</s>'
    question = "[INST] Be terse.\n\nWhat is 2 + 3?[/INST]"
    [first, second] = masked(tok, TOOLS)
    assert first == f"<s>{question}⟦{call}⟧"
    assert second == (
        "<s>[INST] What is 2 + 3?[/INST]"
        + call
        + '[TOOL_RESULTS] {"content": 5, "call_id": "call00001"}[/TOOL_RESULTS]'
        "⟦ It is 5.</s>⟧"
    )


def test_roles_a_template_refuses_are_named_and_others_accepted():
    from lion_distill.train.chat import conversation_problem

    two_users = [U("a"), U("b"), A("c")]
    assert "roles must alternate" in conversation_problem(template_tokenizer("gemma3"), two_users)
    assert conversation_problem(template_tokenizer("qwen3"), two_users) is None  # Qwen3 renders them
    bad_call = [
        U("a"),
        A("", tool_calls=[{**CALL, "id": "short"}]),
        {"role": "tool", "content": "5", "tool_call_id": "short"},
    ]
    assert "length 9" in conversation_problem(template_tokenizer("mistral_v0_3"), [*bad_call, A("b")])
