"""Every shipped run config loads, and configs/lion-7b.yaml is the paper's setup."""

import os
from pathlib import Path

import pytest

from lion_distill.config import RunConfig, load_config
from lion_distill.config.evaluate import EvalJobConfig
from lion_distill.config.step_by_step import StepByStepConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Lion's run configs; step-by-step-*.yaml have their own model (tests/test_step_by_step.py).
ALL = [
    p for p in sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml")) if not p.name.startswith("step-by-step-")
]


def test_configs_exist():
    assert {"lion-7b.yaml", "lion-7b-vllm.yaml"} <= {p.name for p in ALL}


def model_of(path: Path):
    """The config model of the job a shipped config is for: Lion's unless its name says otherwise."""
    return EvalJobConfig if path.name.startswith("eval-") else RunConfig


def endpoints(node) -> list[dict]:
    if isinstance(node, dict):
        return ([node] if "api_key_env" in node else []) + [e for v in node.values() for e in endpoints(v)]
    return [e for v in node for e in endpoints(v)] if isinstance(node, list) else []


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path, model=model_of(path))
    for endpoint in endpoints(cfg.model_dump()):
        # The key is named, never written into a config.
        assert endpoint["api_key_env"] and not endpoint["api_key_env"].startswith("sk-")


def test_lion_7b_is_the_papers_setup():
    cfg = load_config(CONFIGS / "lion-7b.yaml")
    for role in (cfg.teacher, cfg.referee, cfg.generator):
        assert (role.backend, role.model) == ("openai", "gpt-3.5-turbo")
        assert role.openai.api_key_env == "OPENAI_API_KEY"
        assert role.openai.price_per_1k_prompt_tokens > 0 and role.openai.price_per_1k_completion_tokens > 0
        assert role.openai.budget_usd is not None
    assert cfg.student.backend == "vllm" and "llama-7b" in cfg.student.model.lower()
    assert cfg.student.dtype == "bfloat16"
    lion = cfg.lion
    assert (lion.iterations, lion.new_instructions_per_iteration) == (3, 6000)
    assert (lion.tau, lion.rouge_l_threshold, lion.hard_fraction) == (1.0, 0.7, 0.5)
    assert lion.rouge_l_field == "instruction"
    assert cfg.data.pool_files[0].endswith("alpaca_data.json")
    train = cfg.train
    assert (train.architecture, train.learning_rate, train.epochs) == ("causal", 2e-5, 3)
    assert train.max_length == 1024  # Lion's model_max_length
    assert train.num_workers * train.gpus_per_worker == 8
    assert train.num_workers * train.batch_size * train.gradient_accumulation_steps == 128


def test_lion_7b_vllm_serves_every_role_locally():
    cfg = load_config(CONFIGS / "lion-7b-vllm.yaml")
    for role in (cfg.teacher, cfg.referee, cfg.generator):
        assert role.backend == "vllm" and role.parallelism.tensor_parallel_size in (4, 8)
    assert cfg.lion == load_config(CONFIGS / "lion-7b.yaml").lion
    assert cfg.train == load_config(CONFIGS / "lion-7b.yaml").train


def test_overrides_apply_to_shipped_config():
    cfg = load_config(CONFIGS / "lion-7b.yaml", ["run_dir=s3://bucket/lion", "lion.iterations=1"])
    assert (cfg.run_dir, cfg.lion.iterations) == ("s3://bucket/lion", 1)


# The repository lacks these configs' input files (Alpaca's 52K; the e-SNLI and ANLI train inputs).
NO_INPUTS_HERE = {"lion-7b.yaml", "lion-7b-vllm.yaml", "step-by-step-esnli.yaml", "step-by-step-anli1.yaml"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_plans_without_keys_or_a_cluster(path, tmp_path, monkeypatch, capsys):
    """`--plan` of each shipped config exits 0 with its hub names and no API key set; where the
    repository lacks its input files, Lion's pool is a small Alpaca file instead, and a
    step-by-step task's missing files are one line each, never a traceback."""
    import json

    import ray

    from lion_distill.cli import main

    for name in ("OPENAI_API_KEY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    job = (
        "evaluate"
        if path.name.startswith("eval-")
        else "step-by-step"
        if path.name.startswith("step-by-step")
        else "lion"
    )
    overrides = ["--set", f"run_dir={tmp_path / 'run'}"]
    if job == "lion" and path.name in NO_INPUTS_HERE:
        pool = tmp_path / "alpaca_data.json"
        pool.write_text(
            json.dumps(
                [{"instruction": f"Give {i} tips for staying healthy.", "input": "", "output": "."} for i in range(40)]
            )
        )
        overrides += ["--set", f"data.pool_files=[{pool}]"]
    if job == "step-by-step" and path.name != "step-by-step-demo.yaml":  # a paper config: the user's full sets
        overrides += [
            "--set",
            f"data.data_dir={CONFIGS.parent / 'data' / 'step-by-step'}",
            "--set",
            "data.allow_partial=true",
        ]
    was_up = ray.is_initialized()
    code = main([job, "--config", str(path), "--plan", *overrides])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and ray.is_initialized() == was_up
    if job == "step-by-step" and path.name in NO_INPUTS_HERE:
        assert code == 2 and err.splitlines()[0].startswith("error: ") and "train" in err
        assert all(line.startswith(("error: ", "  data: ", "  data.data_dir: ")) for line in err.splitlines()), err
        return
    assert code == 0, err
    assert (tmp_path / "run" / "plan.json").exists()
    if "OPENAI_API_KEY" in path.read_text():
        assert "Before the run can start:" in out and "OPENAI_API_KEY" in out
    if "meta-llama/" in path.read_text():
        assert "is a model hub name: each node that loads it downloads it" in out


# The scenario configs docs/quickstart.md starts from: the model -> what they run.
SCENARIOS = {
    "endpoint-teacher.yaml": RunConfig,  # an OpenAI-compatible teacher by base_url, a hub-named student
    "vllm-teacher-tp.yaml": RunConfig,  # a tensor-parallel vLLM teacher, an open base model as student
    "step-by-step-my-task.yaml": StepByStepConfig,  # your own JSONL task with its prompt file
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_configs_pass_preflight_as_a_cluster_would(name, tmp_path):
    """Hub names are configuration: where nodes may download (no offline variable set, as on a
    cluster) preflight passes with the key handed out, noting each hub name; on an offline machine
    the same names are run problems naming the variable, never input errors, so --plan still works
    (test_every_shipped_config_plans_without_keys_or_a_cluster runs it)."""
    from lion_distill.preflight import OFFLINE_VARIABLES, preflight

    cfg = load_config(CONFIGS / name, [f"run_dir={tmp_path / 'run'}"], model=SCENARIOS[name])
    cluster = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES} | {"TEACHER_API_KEY": "sk-test"}
    checks = preflight(cfg, cluster)
    assert checks.problems == [], checks.problems
    assert any("is a model hub name: each node that loads it downloads it" in note for note in checks.notes)
    offline = preflight(cfg, {**cluster, "HF_HUB_OFFLINE": "1"})
    assert offline.inputs == [] and offline.run
    assert all("is a model hub name, but HF_HUB_OFFLINE is set" in p for p in offline.run), offline.run


def test_the_endpoint_scenario_names_its_key_never_holds_it():
    cfg = load_config(CONFIGS / "endpoint-teacher.yaml")
    for role in (cfg.teacher, cfg.referee, cfg.generator):
        assert role.backend == "openai" and role.openai.base_url and role.openai.api_key_env == "TEACHER_API_KEY"
    assert cfg.student.backend != "openai" and "/" in cfg.student.model and not Path(cfg.student.model).exists()
    tp = load_config(CONFIGS / "vllm-teacher-tp.yaml")
    assert tp.teacher.backend == "vllm" and tp.teacher.parallelism.tensor_parallel_size == 4


LION_REF = CONFIGS.parent / "tests" / "reference" / "lion"
# Every Lion hyperparameter and sampling setting of configs/lion-7b.yaml: (dotted field, value,
# reference file under tests/reference/lion, line, what that line says). "paper": the paper's own
# numbers (arXiv 2305.12870: "a mere 70k training data" = 52K Alpaca + 3 iterations x 6K, hard:easy
# 1:1), which no script of Lion's holds.
LION_7B = [
    ("teacher.model", "gpt-3.5-turbo", "chatgpt_inference.py.txt", 25, "model='gpt-3.5-turbo'"),
    ("teacher.sampling.temperature", 0.7, "chatgpt_inference.py.txt", 27, "temperature=0.7"),
    ("teacher.sampling.max_tokens", 1024, "chatgpt_inference.py.txt", 60, "'--max-tokens', type=int, default=1024"),
    # No top_p in the request: the API's default, 1.
    ("teacher.sampling.top_p", 1.0, "chatgpt_inference.py.txt", 24, "response = openai.ChatCompletion.create("),
    ("student.sampling.temperature", 0.7, "lion_inference.py.txt", 66, "temperature=0.7"),
    ("student.sampling.max_tokens", 1024, "lion_inference.py.txt", 75, "max_new_tokens=1024"),
    # GenerationConfig without top_k or top_p: transformers' defaults (>= 4.28.1, requirements.txt), 50 and 1.0.
    ("student.sampling.extra.top_k", 50, "lion_inference.py.txt", 65, "generation_config = GenerationConfig("),
    ("student.sampling.top_p", 1.0, "requirements.txt", 2, "transformers>=4.28.1"),
    ("student.dtype", "bfloat16", "README.md", 129, "--bf16 True"),
    ("referee.model", "gpt-3.5-turbo", "chatgpt_referee.py.txt", 26, "model='gpt-3.5-turbo'"),
    ("referee.sampling.temperature", 0.2, "chatgpt_referee.py.txt", 28, "temperature=0.2"),
    ("referee.sampling.max_tokens", 512, "chatgpt_referee.py.txt", 97, "'--max-tokens', type=int, default=512"),
    ("referee.sampling.top_p", 1.0, "chatgpt_referee.py.txt", 25, "response = openai.ChatCompletion.create("),
    ("generator.model", "gpt-3.5-turbo", "generate_hard_instruction.py.txt", 65, 'model_name="gpt-3.5-turbo"'),
    ("generator.sampling.temperature", 1.0, "generate_hard_instruction.py.txt", 68, "temperature=1.0"),
    ("generator.sampling.top_p", 1.0, "generate_hard_instruction.py.txt", 69, "top_p=1.0"),
    (
        "lion.generator_tokens_per_seed_word",
        4,
        "generate_hard_instruction.py.txt",
        121,
        "max_tokens = len(inst_i_os[0]['instruction'].split()) * 4",
    ),
    ("lion.generator_prompt", "lion", "generate_hard_instruction.py.txt", 21, 'prompt = open("prompt_hard.txt")'),
    ("lion.candidate_filter", "lion", "generate_hard_instruction.py.txt", 31, "def post_process_gpt3_response("),
    ("lion.rouge_l_threshold", 0.7, "generate_hard_instruction.py.txt", 161, "if max(rouge_scores) > 0.7:"),
    ("lion.rouge_l_reject", "above", "generate_hard_instruction.py.txt", 161, "> 0.7"),
    (
        "lion.rouge_l_tokenizer",
        "rouge",
        "generate_hard_instruction.py.txt",
        96,
        'rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)',
    ),
    (
        "lion.rouge_l_field",
        "instruction",
        "generate_hard_instruction.py.txt",
        151,
        'scorer._tokenizer.tokenize(instruction_data_entry["instruction"])',
    ),
    # Each kind is drawn from its own seed file only (--seed_tasks_path: the hard, or the easy, instructions).
    (
        "lion.quota_rebalance",
        False,
        "generate_hard_instruction.py.txt",
        116,
        "random.sample(seed_instruction_data, num_prompt_instructions)",
    ),
    ("lion.tau", 1.0, "discrimination.py.txt", 50, "referee['review_score_diff'] >= 1"),
    ("lion.referee_prompt", "lion", "chatgpt_referee.py.txt", 71, "def gen_prompt(ques, ans1, ans2):"),
    (
        "lion.referee_retries",
        None,
        "chatgpt_referee.py.txt",
        145,
        "while len(new_question_idx_list) < len(old_question_idx_list):",
    ),
    ("lion.referee_retry_temperature", 0.2, "chatgpt_referee.py.txt", 28, "temperature=0.2"),
    ("lion.show_input", False, "chatgpt_inference.py.txt", 67, "ques = [i['instruction'] for i in question_jsons]"),
    (
        "lion.discrimination_teacher",
        "ask_again",
        "README.md",
        184,
        "2.1 Acquire the teacher's response on the Cache Pool",
    ),
    ("train.learning_rate", 2e-5, "README.md", 140, "--learning_rate 2e-5"),
    ("train.weight_decay", 0.0, "README.md", 141, "--weight_decay 0."),
    ("train.warmup_ratio", 0.03, "README.md", 142, "--warmup_ratio 0.03"),
    ("train.lr_schedule", "cosine", "README.md", 143, '--lr_scheduler_type "cosine"'),
    ("train.epochs", 3, "README.md", 131, "--num_train_epochs 3"),
    ("train.max_length", 1024, "README.md", 132, "--model_max_length 1024"),
    ("lion.iterations", 3, "paper", None, None),
    ("lion.new_instructions_per_iteration", 6000, "paper", None, None),
    ("lion.hard_easy_ratio", (1.0, 1.0), "paper", None, None),
]


def _field(cfg, dotted: str):
    value = cfg
    for name in dotted.split("."):
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


@pytest.mark.parametrize("field, value, source, line, says", LION_7B, ids=[row[0] for row in LION_7B])
def test_lion_7b_holds_each_setting_to_lions_source_line(field, value, source, line, says):
    cfg = load_config(CONFIGS / "lion-7b.yaml")
    assert _field(cfg, field) == value
    if source != "paper":
        assert says in (LION_REF / source).read_text().splitlines()[line - 1], f"{source}:{line}"


def test_lion_7b_reaches_lions_global_batch_and_the_trainers_other_defaults(tmp_path):
    from transformers import TrainingArguments

    readme = (LION_REF / "README.md").read_text().splitlines()
    for line, says in (
        (126, "--nproc_per_node=8"),
        (133, "--per_device_train_batch_size 2"),
        (135, "--gradient_accumulation_steps 8"),
    ):
        assert says in readme[line - 1], f"README.md:{line}"
    train = load_config(CONFIGS / "lion-7b.yaml").train
    assert train.num_workers * train.batch_size * train.gradient_accumulation_steps == 8 * 2 * 8
    # What Lion's command leaves to the HF Trainer: clipping at 1.0, seed 42.
    defaults = TrainingArguments(output_dir=str(tmp_path))
    assert (train.max_grad_norm, train.seed) == (defaults.max_grad_norm, defaults.seed)


def test_the_paper_configs_differ_from_each_other_only_in_how_roles_are_served():
    api, local = (load_config(CONFIGS / n) for n in ("lion-7b.yaml", "lion-7b-vllm.yaml"))
    assert api.lion == local.lion and api.train == local.train and api.student.sampling == local.student.sampling
