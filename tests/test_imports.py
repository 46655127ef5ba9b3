"""Imports run one way, down (docs/design.md, "Layers"): no module of `lion_distill` imports one that imports it
back, directly or through others, counting the imports made inside functions, and only the
composition roots read `lion_distill.plan`. Read from the source with `ast`: nothing is imported."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The command line prices a run before it starts one (`--plan`): the only reader of the plan.
PLAN_READERS = {"lion_distill.cli"}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph(root: Path = REPO / "lion_distill") -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, anywhere in its body."""
    modules = {module_name(p): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lion_distill"):
                # `from lion_distill.data import readers` imports a module; `from lion_distill.data import RunDir`, the package.
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("lion_distill")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_engine_imports_itself_back():
    assert cycles(import_graph()) == []


def test_only_the_composition_roots_read_the_plan():
    graph = import_graph()
    readers = {
        m
        for m, targets in graph.items()
        if not m.startswith("lion_distill.plan")
        and any(t == "lion_distill.plan" or t.startswith("lion_distill.plan.") for t in targets)
    }
    assert readers <= PLAN_READERS, sorted(readers - PLAN_READERS)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph seen a package at a time: `lion_distill.lion.judge` counts as `lion_distill.lion`;
    a top-level module (`lion_distill.runner`) is a package of its own."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(package(module), set()).update(package(t) for t in targets)
    return {p: targets - {p} for p, targets in out.items()}


def test_the_package_graph_collapses_modules_to_their_packages():
    graph = {
        "lion_distill.a.x": {"lion_distill.b.y"},
        "lion_distill.b.y": {"lion_distill.a.z"},
        "lion_distill.a.z": set(),
    }
    assert package_graph(graph) == {"lion_distill.a": {"lion_distill.b"}, "lion_distill.b": {"lion_distill.a"}}
    assert cycles(package_graph(graph)) == [["lion_distill.a", "lion_distill.b"]]


def test_no_package_imports_one_that_imports_it_back():
    assert cycles(package_graph(import_graph())) == []


def module_aliases(paths) -> list[str]:
    """`file:line: module as alias` for each of the package's modules imported under another name
    (`from lion_distill.train import step as S`): a module is read by its own name everywhere."""
    modules = {module_name(p) for p in (REPO / "lion_distill").rglob("*.py")}
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                named = [(f"{node.module}.{a.name}", a) for a in node.names]
            elif isinstance(node, ast.Import):
                named = [(a.name, a) for a in node.names]
            else:
                continue
            found += [
                f"{path.relative_to(REPO)}:{node.lineno}: {name} as {a.asname}"
                for name, a in named
                if a.asname and name in modules and a.asname != name.rsplit(".", 1)[-1]
            ]
    return found


def test_no_module_of_the_package_is_imported_under_an_alias():
    paths = [p for folder in ("lion_distill", "tests", "benchmarks", "jobs") for p in (REPO / folder).rglob("*.py")]
    assert module_aliases(paths) == []


def test_what_lion_and_the_evaluation_share_lies_below_both():
    """Judging (rubrics, review parsing, the pairwise judge) and asking a role over rows
    (lion_distill.llm.answers) import neither job; the evaluation never imports Lion (Lion reads the
    evaluation's scores, docs/design.md "Layers")."""
    packages = package_graph(import_graph())
    jobs = {"lion_distill.lion", "lion_distill.evaluate"}
    assert packages["lion_distill.judging"] & jobs == set()
    assert packages["lion_distill.llm"] & jobs == set()
    assert "lion_distill.lion" not in packages["lion_distill.evaluate"]
    assert {"lion_distill.judging"} <= packages["lion_distill.lion"] & packages["lion_distill.evaluate"]
