"""The layering of docs/design.md: arrows point down, no import cycle in ssl_zoo/, no import of
ssl-zoo code hidden inside a function to dodge one, and methods/ use only the contract and the
building blocks; the design doc the docstrings cite exists and has the parts they name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssl_zoo"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(ssl_zoo modules imported at module level, function-level ssl_zoo imports as text)."""
    tree = ast.parse(path.read_text())
    top, hidden = set(), []
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}

    def targets(node) -> set[str]:
        out = set()
        if isinstance(node, ast.Import):
            out = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        return {m for m in out if m in modules}

    def type_checking(node) -> bool:
        return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)

    for node in tree.body:
        if type_checking(node):
            continue
        top |= targets(node)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if targets(inner):
                    hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return top, hidden


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        top, _ = _imports(path)
        # importing ssl_zoo.a.b also runs the package ssl_zoo.a's __init__
        graph[name] = {m for m in top if m != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_ssl_zoo_import_hidden_in_a_function():
    hidden = [h for p in [*PACKAGE.rglob("*.py"), *(ROOT / "methods").glob("*.py")]
              for h in _imports(p)[1]]
    assert hidden == []


def test_arrows_point_down():
    """Building blocks never import the commands above them, and methods/ only the contract
    and the building blocks."""
    commands = {"ssl_zoo.cli", "ssl_zoo.compare", "ssl_zoo.train", "ssl_zoo.assemble",
                "ssl_zoo.report", "ssl_zoo.testing"}
    graph = _graph()
    for name, deps in graph.items():
        if name in commands or name in ("ssl_zoo", "ssl_zoo.__main__"):
            continue
        assert not deps & commands, f"{name} imports {deps & commands}"
    for path in (ROOT / "methods").glob("*.py"):
        top, _ = _imports(path)
        assert not top & commands, f"{path.name} imports {top & commands}"


def test_the_design_doc_has_what_the_docstrings_cite():
    """Every citation of the design doc followed by a quoted part (a section) names a heading or
    a bold term of the doc; the quoted part may wrap onto the next docstring line."""
    import re

    doc = (ROOT / "docs" / "design.md").read_text()
    parts = {m.strip().lower() for m in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    parts |= {m.strip(" .").lower() for m in re.findall(r"\*\*([^*]+)\*\*", doc)}
    cited = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "methods").glob("*.py"),
                 *(ROOT / "tests").rglob("*.py")]:
        text = re.sub(r"\s+", " ", path.read_text())
        for part in re.findall(r'docs/design\.md, "([^"]+)"', text):
            cited.append((path.name, part))
    assert cited, "no docstring cites docs/design.md"
    missing = [(name, part) for name, part in cited
               if not any(p.startswith(part.lower()) for p in parts)]
    assert missing == []
