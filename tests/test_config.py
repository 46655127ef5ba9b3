import textwrap

import pytest

from lion_distill.config import ConfigError, load_config, parse_override

MINIMAL = """
run_dir: runs/x
data: {pool_files: [data/self-instruct/seed_tasks.jsonl]}
teacher: {backend: openai, model: gpt-3.5-turbo, openai: {api_key_env: MY_KEY, budget_usd: 5}}
student: {backend: vllm, model: /models/llama-7b}
referee: {backend: openai, model: gpt-3.5-turbo}
generator: {backend: hf, model: /models/gen}
"""


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_file_takes_paper_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.lion.iterations == 3 and cfg.lion.new_instructions_per_iteration == 6000
    assert cfg.lion.tau == 1.0 and cfg.lion.rouge_l_threshold == 0.7 and cfg.lion.hard_fraction == 0.5
    assert cfg.teacher.openai.api_key_env == "MY_KEY" and cfg.teacher.openai.budget_usd == 5
    assert cfg.referee.openai.api_key_env == "OPENAI_API_KEY"  # defaulted for the openai backend
    assert cfg.student.openai is None and cfg.train.architecture == "causal"


def test_overrides_keep_yaml_types_and_create_sections(tmp_path):
    cfg = load_config(
        write(tmp_path, MINIMAL),
        [
            "lion.tau=1.5",
            "teacher.sampling.max_tokens=64",
            "train.activation_checkpointing=true",
            "lion.hard_easy_ratio=[2, 1]",
            "student.parallelism.tensor_parallel_size=4",
            "teacher.sampling.seed=null",
        ],
    )
    assert cfg.lion.tau == 1.5 and cfg.teacher.sampling.max_tokens == 64
    assert cfg.train.activation_checkpointing is True and cfg.lion.hard_fraction == pytest.approx(2 / 3)
    assert cfg.student.parallelism.tensor_parallel_size == 4 and cfg.teacher.sampling.seed is None


@pytest.mark.parametrize(
    "override, expected",
    [
        ("lion.tua=1", "lion.tua: unknown field"),
        ("teacher.backend=vlm", "teacher.backend: Input should be 'vllm', 'hf' or 'openai' (got 'vlm')"),
        ("teacher.sampling.temperature=abc", "teacher.sampling.temperature: Input should be a valid number"),
        ("lion.rouge_l_threshold=1.5", "lion.rouge_l_threshold: Input should be less than or equal to 1"),
        ("student.backend=openai", "the student is fine-tuned"),
        ("generator.openai.base_url=http://x", "generator: Value error, 'openai' settings given but backend is 'hf'"),
        ("data.pool_files=[]", "data: Value error, give the seed pool: pool_files"),
    ],
)
def test_errors_name_file_field_and_expectation(tmp_path, override, expected):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_section_is_named(tmp_path):
    path = write(tmp_path, MINIMAL.replace("referee: {backend: openai, model: gpt-3.5-turbo}\n", ""))
    with pytest.raises(ConfigError, match=r"run.yaml: referee: required field is missing"):
        load_config(path)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "run_dir: x\nlion: {tau: 1\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3:1: invalid YAML"):
        load_config(path)


def test_file_and_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("lion.tau")
    with pytest.raises(ConfigError, match="lion.tau is int, not a section"):
        load_config(write(tmp_path, MINIMAL), ["lion.tau=1", "lion.tau.x=2"])


def test_a_training_worker_has_no_gpu_or_one(tmp_path):
    """One FSDP rank drives one device: 0.5 would put two NCCL ranks on a GPU (NCCL aborts), 2 would idle one."""
    assert load_config(write(tmp_path, MINIMAL), ["train.gpus_per_worker=1"]).train.gpus_per_worker == 1
    for fraction in ("0.5", "2"):
        with pytest.raises(ConfigError, match=r"train.gpus_per_worker.*one FSDP rank on one device"):
            load_config(write(tmp_path, MINIMAL), [f"train.gpus_per_worker={fraction}"])
