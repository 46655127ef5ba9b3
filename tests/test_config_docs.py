"""The configuration reference is generated from the models' descriptions and kept current."""

from pathlib import Path

from lion_distill.config.docs import COMMAND, JOBS, models, render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_config_field_has_a_description():
    missing = [
        f"{model.__name__}.{name}"
        for job in JOBS
        for model in models(job[-1])
        for name, info in model.model_fields.items()
        if not (info.description or "").strip().endswith(".")
    ]
    assert not missing, f"give these fields Field(..., description='One sentence.'): {missing}"


def test_configuration_page_is_current():
    assert PAGE.read_text(encoding="utf-8") == render(), f"docs/configuration.md is stale: run `{COMMAND}`"


def test_the_page_names_sections_types_and_defaults():
    text = render()
    assert "## RoleConfig" in text and "Found at: `RunConfig.teacher`" in text
    assert "| `tau` | float | `1.0` |" in text
    assert '| `backend` | "vllm" \\| "hf" \\| "openai" | required |' in text
    assert "| `max_tokens` | int > 0 | `512` |" in text
    # A section whose default differs from its model's own defaults shows what it sets.
    assert "`{architecture: seq2seq, learning_rate: 5.0e-05" in text
