"""Conversations in pools (OpenAI `messages`, ShareGPT `conversations`), in milliseconds:
reading with located rejects, the teacher's requests per user turn, the student's chat
tokenization with the loss on assistant turns only, and its prompts in discrimination."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lion_distill.data import instruction_id, load_pool, pool_table, write_pool
from lion_distill.data.conversations import user_turns
from lion_distill.lion import imitation
from lion_distill.lion.conversations import answer_student
from lion_distill.lion.iteration import rel
from lion_distill.llm.prompts import alpaca_prompt, instruction_messages
from lion_distill.llm.responses import response_row
from lion_distill.train.batches import tokenize_causal
from lion_distill.train.chat import IGNORE, tokenize_chat
from tests.test_lion_stages import ScriptedLLM, _config, _Trained

SHAREGPT = [
    {
        "id": "multi",
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Name a primary colour."},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Another one?"},
            {"from": "gpt", "value": "Blue."},
            {"from": "human", "value": "And a third?"},
            {"from": "gpt", "value": "Yellow."},
        ],
    },
    {
        "id": "single-system",
        "conversations": [
            {"from": "system", "value": "Answer in French."},
            {"from": "human", "value": "Say hello."},
            {"from": "gpt", "value": "Bonjour."},
        ],
    },
    {"id": "single", "conversations": [{"from": "human", "value": "Say hello."}]},
    {"id": "bad-role", "conversations": [{"from": "bot", "value": "x"}]},
    {"id": "not-alternating", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
    {"id": "no-user", "conversations": [{"from": "system", "value": "s"}]},
]


def as_messages(record: dict) -> dict:
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return {
        "messages": [{"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in record["conversations"]]
    }


def test_sharegpt_and_openai_conversations_read_alike_from_json_jsonl_and_parquet(tmp_path):
    files = {
        "sharegpt.json": lambda p: p.write_text(json.dumps(SHAREGPT, indent=1)),
        "sharegpt.jsonl": lambda p: p.write_text("\n".join(json.dumps(r) for r in SHAREGPT)),
        "openai.jsonl": lambda p: p.write_text("\n".join(json.dumps(as_messages(r)) for r in SHAREGPT)),
        "openai.parquet": lambda p: pq.write_table(pa.Table.from_pylist([as_messages(r) for r in SHAREGPT]), p),
    }
    pools = {}
    for name, write in files.items():
        write(tmp_path / name)
        pool, report = load_pool([tmp_path / name])
        assert (
            report.reconciles
            and (report.rows_in, report.rows_kept) == (6, 3)
            and report.rejects == {"bad_conversation": 3}
        )
        pools[name] = pool.to_pylist()
        where = report.examples["bad_conversation"]
        assert where[0].startswith(f"{tmp_path / name}:") and "is 'bot'; expected one of" in where[0]
        assert "where a user turn belongs" in where[1] or "where an assistant turn belongs" in where[1]
        assert where[2].endswith("has no user turn)")
    assert all(rows == pools["sharegpt.json"] for rows in pools.values())
    multi, single_system, single = pools["sharegpt.json"]
    # The last user turn is the instruction; the file's answer to it is dropped (the teacher's replaces it).
    assert multi["instruction"] == "And a third?" and multi["system"] == "You are terse."
    assert [t["content"] for t in json.loads(multi["history"])] == [
        "Name a primary colour.",
        "Red.",
        "Another one?",
        "Blue.",
    ]
    # Single-turn: an instruction, its system prompt kept; without one, exactly the plain instruction.
    assert (single_system["instruction"], single_system["system"], single_system["history"]) == (
        "Say hello.",
        "Answer in French.",
        None,
    )
    assert single["id"] == instruction_id("Say hello.") != single_system["id"] and single["system"] is None
    # JSONL rejects carry their line; parquet rows their row.
    _, report = load_pool([tmp_path / "sharegpt.jsonl"])
    assert report.examples["bad_conversation"][0].startswith(f"{tmp_path / 'sharegpt.jsonl'}:4 (conversations[0].from")
    _, report = load_pool([tmp_path / "openai.parquet"])
    assert report.examples["bad_conversation"][0].startswith(f"{tmp_path / 'openai.parquet'}:row 3 (messages[0].role")


def test_a_conversation_asks_the_teacher_each_user_turn_given_the_turns_before_it():
    row = pool_table(
        [
            {
                "instruction": "And a third?",
                "system": "You are terse.",
                "history": [
                    {"role": "user", "content": "Name a primary colour."},
                    {"role": "assistant", "content": "Red."},
                    {"role": "user", "content": "Another one?"},
                    {"role": "assistant", "content": "Blue."},
                ],
            }
        ]
    ).to_pylist()[0]
    turns = user_turns(row)
    assert [t["instruction"] for t in turns] == ["Name a primary colour.", "Another one?", "And a third?"]
    assert [m["content"] for m in instruction_messages(turns[1])] == [
        "You are terse.",
        "Name a primary colour.",
        "Red.",
        "Another one?",
    ]
    assert instruction_messages(turns[2])[0] == {"role": "system", "content": "You are terse."} and turns[2] is row
    # Each turn's id is the id its prefix has as a pool row: a pool that holds the prefix shares its answer.
    first = pool_table([{"instruction": "Name a primary colour.", "system": "You are terse."}]).to_pylist()[0]
    assert turns[0]["id"] == first["id"] and len({t["id"] for t in turns}) == 3


def _chat_row(tok, messages, max_length=256):
    [(ids, labels)] = tokenize_chat(tok, messages, max_length)  # a prefix-preserving template: one sequence
    return ids, labels, tok.decode(ids[labels != IGNORE])


def test_the_student_learns_every_assistant_turn_and_nothing_else(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models.llama)
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Blue."},
    ]
    ids, labels, learnt = _chat_row(tok, messages)
    assert learnt == "Red.</s>Blue.</s>"  # each answer and its end-of-turn, in the student's template
    whole = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ids) == whole and tok.decode(ids[labels == IGNORE]).count("Be terse.") == 1
    # An answer its model was cut off in teaches no end of turn; max_length cuts the sequence.
    cut = [*messages[:4], {"role": "assistant", "content": "Blue.", "complete": False}]
    assert _chat_row(tok, cut)[2] == "Red.</s>Blue."
    assert len(_chat_row(tok, messages, max_length=12)[0]) == 12
    # In a training batch conversations and Alpaca rows mix; counts are of learnt tokens.
    batch = {
        "instruction": np.array(["Another?", "Say hi."], dtype=object),
        "input": np.array(["", ""], dtype=object),
        "response": np.array(["Blue.", "Hi."], dtype=object),
        "complete": np.array([True, True]),
        "messages": np.array([json.dumps(messages), np.float32("nan")], dtype=object),
    }  # a null, as Ray Data hands it
    out = tokenize_causal(batch, tokenizer_path=tiny_models.llama, max_length=256)
    assert list(out["input_ids"][0]) == list(ids) and out["n_target_tokens"][0] == (labels != IGNORE).sum()
    assert tok.decode(out["input_ids"][1]).startswith(alpaca_prompt("Say hi."))


def test_imitation_answers_every_turn_and_trains_the_conversation_with_the_teachers_answers(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    cfg.student.prompt_format = "chat"
    from lion_distill.data import RunDir

    run = RunDir(str(tmp_path))
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(SHAREGPT[:3]))
    pool, _ = load_pool([path])
    write_pool(run, rel(0, "train_pool.parquet"), pool)
    write_pool(run, rel(0, "cache_pool.parquet"), pool)
    asked = {}

    def teacher(role_name, row, prompt, seed):
        asked[row["id"]] = prompt
        return response_row(f"T:{row['instruction']}", "stop", 5, 5)

    scripted, trained = ScriptedLLM(teacher), []
    monkeypatch.setattr(imitation, "answer", scripted)
    monkeypatch.setattr(
        imitation, "_train", lambda cfg, run, k, student, sft: trained.extend(sft.to_pylist()) or _Trained()
    )
    summary = imitation.imitation(cfg, run, 0, "student").summary
    # 3 pool rows + the two earlier user turns of the 3-turn conversation, in one request batch.
    assert len(scripted.calls) == 1 and len(asked) == 5 and summary["imitation_trained"] == 3
    prompts = sorted(asked.values(), key=len)
    assert [m["content"] for m in prompts[-1]] == [
        "You are terse.",
        "Name a primary colour.",
        "Red.",
        "Another one?",
        "Blue.",
        "And a third?",
    ]  # the file's earlier turns as context
    chats = [json.loads(r["messages"]) for r in trained]
    assert all(set(r) == {"id", "messages"} for r in trained)  # the chat layout (docs/design.md "Data contracts")
    multi = next(c for c in chats if c[-2]["content"] == "And a third?")
    assert [(m["role"], m["content"]) for m in multi] == [
        ("system", "You are terse."),
        ("user", "Name a primary colour."),
        ("assistant", "T:Name a primary colour."),
        ("user", "Another one?"),
        ("assistant", "T:Another one?"),
        ("user", "And a third?"),
        ("assistant", "T:And a third?"),
    ]
    plain = next(c for c in chats if c[0]["role"] == "user" and c[0]["content"] == "Say hello.")
    assert plain == [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "T:Say hello.", "complete": True},
    ]
    assert len(run.read_table(rel(0, "imitation", "teacher_turns.parquet"))) == 2
    # Resumed (training killed): every turn's answer is read back, nothing is asked again.
    trained.clear()
    imitation.imitation(cfg, run, 0, "student")
    assert len(scripted.calls) == 1 and len(trained) == 3


def test_discrimination_asks_the_student_in_the_format_it_was_trained_in():
    pool = pool_table(
        [
            {"instruction": "Say hi."},
            {"instruction": "And a third?", "system": "Be terse."},
            {"instruction": "Sum it.", "input": "1 2"},
        ]
    )
    from lion_distill.config.models import StudentRoleConfig

    scripted = ScriptedLLM(lambda role_name, row, prompt, seed: response_row(json.dumps(prompt), "stop", 1, 1))
    chat = StudentRoleConfig(backend="vllm", model="m", prompt_format="chat")
    responses, records = answer_student(scripted, chat, pool, "discrimination/student", role_name="student")
    responses = responses.to_pylist()
    assert [r["id"] for r in responses] == pool.column("id").to_pylist()
    assert [c["stage"] for c in scripted.calls] == ["discrimination/student"] and len(records) == 1
    assert [json.loads(r["text"]) for r in responses] == [
        [{"role": "user", "content": "Say hi."}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "And a third?"}],
        [{"role": "user", "content": "Sum it.\n\n1 2"}],
    ]
    alpaca = chat.model_copy(update={"prompt_format": "alpaca"})
    plain = pool.filter(pa.array([True, False, True]))
    responses, _ = answer_student(scripted, alpaca, plain, "discrimination/student", role_name="student")
    assert [json.loads(r["text"]) for r in responses.to_pylist()] == [
        alpaca_prompt("Say hi."),
        alpaca_prompt("Sum it.", "1 2"),
    ]
    with pytest.raises(ValueError, match="set student.prompt_format: chat"):
        answer_student(scripted, alpaca, pool, "discrimination/student", role_name="student")


def test_a_students_format_is_checked_against_its_pool_and_template_at_preflight(tmp_path, tiny_models):
    from lion_distill.config import RunConfig
    from lion_distill.preflight import chat_template_problems

    (tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(r) for r in SHAREGPT[:2]))
    (tmp_path / "plain.jsonl").write_text(json.dumps({"instruction": "Say hi."}))
    bare = tmp_path / "bare-student"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text("{}")
    role = {"backend": "vllm", "model": "m"}

    def problems(student: str, files: list[str], **fields) -> list[str]:
        return chat_template_problems(
            RunConfig(
                run_dir=str(tmp_path / "run"),
                data={"pool_files": files},
                teacher={**role, **fields.pop("teacher", {})},
                student={"backend": "hf", "model": student, **fields},
                referee=role,
                generator=role,
            )
        )

    chats, plain = [str(tmp_path / "chats.jsonl")], [str(tmp_path / "plain.jsonl")]
    # No template: alpaca by default, which cannot hold a conversation.
    assert problems(str(bare), chats) == [
        "student.prompt_format: alpaca has no place for a system prompt or earlier turns; the pool has "
        "2 conversations: set student.prompt_format: chat"
    ]
    assert problems(str(bare), chats, prompt_format="chat") == [
        f"student.prompt_format: chat, but {bare} has no chat template (give its tokenizer a chat_template, "
        "or set student.prompt_format: alpaca)"
    ]
    assert problems(str(bare), plain) == [] and problems(str(tiny_models.llama), chats) == []
    # The tiny template has no form for a thinking: a teacher's thinking cannot be kept.
    [line] = problems(str(tiny_models.llama), plain, teacher={"reasoning": "keep"})
    assert line.startswith("teacher.reasoning: the chat template of") and line.endswith("set teacher.reasoning: drop")


def test_a_template_that_cannot_mask_or_refuses_a_conversation_is_one_line_at_preflight(tmp_path, tiny_models):
    """The tiny tokenizer under two templates: one that renders each answer after a counter its
    generation prompt never shows (no mask), one that refuses more than two exchanges (each pool
    conversation longer is named by its file and line)."""
    from lion_distill.config import RunConfig
    from lion_distill.preflight import chat_template_problems

    (tmp_path / "chats.jsonl").write_text("\n".join(json.dumps(r) for r in SHAREGPT[:3]))
    role = {"backend": "vllm", "model": "m"}

    def problems(template: str) -> list[str]:
        student = tmp_path / f"student-{len(template)}"
        student.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tiny_models.llama / name, student / name)
        (student / "chat_template.jinja").write_text(template)
        cfg = RunConfig(
            run_dir=str(tmp_path / "run"),
            data={"pool_files": [str(tmp_path / "chats.jsonl")]},
            teacher=role,
            student={"backend": "hf", "model": str(student)},
            referee=role,
            generator=role,
        )
        return [line.replace(str(student), "STUDENT") for line in chat_template_problems(cfg)]

    counter = (
        "{% for m in messages %}{% if m.role == 'assistant' %}#{{ loop.index }}: {% endif %}{{ m.content }}|"
        "{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    [line] = problems(counter)
    assert line.startswith("student.model: ") and "STUDENT" in line and "cannot be told from the prompt" in line
    two_exchanges = (
        "{% if messages | length > 5 %}{{ raise_exception('At most two exchanges') }}{% endif %}"
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert problems(two_exchanges) == [
        f"{tmp_path / 'chats.jsonl'}:1: the student's chat template refuses this conversation: At most two exchanges"
    ]


def test_a_scripted_iteration_on_conversations_judges_and_generates_from_the_last_turn(tmp_path, monkeypatch):
    """Imitation, discrimination and generation on a conversation pool with scripted LLMs, then
    the export: the Ray-free twin of tests/test_lion_conversations_e2e.py."""
    import datasets

    from lion_distill.data import RunDir
    from lion_distill.judging import judge
    from lion_distill.lion import discrimination, generation
    from lion_distill.lion.export import export_run
    from tests.test_lion_stages import _answers, _candidate

    # Seeds of two or three words: Lion's cap of 4 tokens a seed word would cut the scripted candidates.
    # Every pair is judged hard: the easy quota is filled from hard seeds (lion.quota_rebalance).
    cfg = _config(tmp_path, new_instructions_per_iteration=2, generator_tokens_per_seed_word=None, quota_rebalance=True)
    cfg.student.prompt_format = "chat"
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "chats.json").write_text(json.dumps(SHAREGPT[:3]))
    pool, _ = load_pool([tmp_path / "chats.json"])
    write_pool(run, rel(0, "train_pool.parquet"), pool)
    write_pool(run, rel(0, "cache_pool.parquet"), pool)
    llm = ScriptedLLM(
        lambda role_name, row, prompt, seed: (
            _candidate(role_name, row, prompt, seed)
            if role_name == "generator"
            else _answers(role_name, row, prompt, seed)
        )
    )
    for module in (imitation, discrimination, generation):
        monkeypatch.setattr(module, "answer", llm)
    monkeypatch.setattr(judge, "answer_stream", llm.stream)
    monkeypatch.setattr(imitation, "_train", lambda cfg, run, k, student, sft: _Trained())
    imitation.imitation(cfg, run, 0, "student")
    judged = discrimination.discrimination(cfg, run, 0, "student").summary
    assert judged["judged"] == 3 and judged["hard"] == 3
    referee = next(c for c in llm.calls if c["stage"] == "discrimination/referee")
    assert len(referee["ids"]) == 6
    generated = generation.generation(cfg, run, 0, "student").summary
    new = run.read_table(rel(0, "generation", "new_instructions.parquet")).to_pylist()
    assert generated["new_instructions"] == 2 and all(r["system"] is None and r["history"] is None for r in new)
    assert {r["parent_id"] for r in new} <= set(pool.column("id").to_pylist())
    counts = export_run(run.uri, str(tmp_path / "out"))
    assert counts[0] == {"imitation": 3, "discrimination": 3, "generation": 2, "hard": 3}
    exported = datasets.load_from_disk(str(tmp_path / "out" / "iter_0"))
    multi = next(r for r in exported["discrimination"] if r["instruction"] == "And a third?")
    assert [t["role"] for t in multi["history"]] == ["user", "assistant"] * 2 and multi["hard"]
