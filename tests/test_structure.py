"""The layout's rules, checked on the source: the core imports no probe or report, and no import circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE_CORE = {"probes", "privacy", "reports"}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports: at the top, inside a function or under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted((REPO / "audit").rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_probe_privacy_or_report_module(path):
    bad = sorted(name for name in imports(path) if name.split(".")[0] in OUTSIDE_CORE)
    assert not bad, f"{path.relative_to(REPO)} imports {bad}; find plugins through their entry points"


def _graph(package: str) -> dict[str, set[str]]:
    # Imports under TYPE_CHECKING count: a circle a type checker walks is still a circle.
    files = {_module(p): p for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", ["audit", "reports", "rai_audit"])
def test_no_import_circles(package):
    # A package's __init__ re-exporting its modules is not a circle: the modules never import it back.
    graph = {name: {m for m in deps if m != package} for name, deps in _graph(package).items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
