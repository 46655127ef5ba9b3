"""A reader of the repository alone can follow every reference: cited docs exist in it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    REPO / "Makefile",
    REPO / "README.md",
    REPO / "pyproject.toml",
    *REPO.glob("docs/*.md"),
    *(
        p
        for d in ("lion_distill", "jobs", "tests", "benchmarks", "cluster", "configs")
        for p in (REPO / d).rglob("*")
        if p.suffix in {".py", ".md", ".yaml", ".yml", ""} and p.is_file() and "__pycache__" not in p.parts
    ),
]


def test_no_reference_to_documents_outside_the_repository():
    outside = [
        f"{p.relative_to(REPO)}:{n}"
        for p in SOURCES
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"\b(ENVIRONMENT|DESIGN)\.md\b", line)
    ]
    assert not outside, outside


def test_cited_docs_exist():
    cited = {m for p in SOURCES for m in re.findall(r"\bdocs/[\w.-]+\.md\b", p.read_text(errors="replace"))}
    assert cited and all((REPO / c).is_file() for c in cited), sorted(c for c in cited if not (REPO / c).is_file())


def test_the_package_does_not_ship_test_support():
    assert not (REPO / "lion_distill/llm/fault_server.py").exists()
    assert not any("aiohttp import web" in p.read_text() for p in (REPO / "lion_distill").rglob("*.py"))
