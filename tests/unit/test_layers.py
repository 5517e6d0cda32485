"""The rooms of the code stay as docs/architecture.md draws them: one owner per state change, imports
only downward. These tests read the source; a new writer of roster rows or run statuses fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SYNC = Path(__file__).resolve().parents[2] / "sync"


def sources() -> dict[str, str]:
    """Every module of the sync package by dotted name (sync.x, sync.directory.y)."""
    found = {}
    for path in sorted(SYNC.rglob("*.py")):
        parts = path.relative_to(SYNC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path.read_text(encoding="utf-8")
    return found


def imports(source: str) -> set[str]:
    """The modules a source imports from (absolute imports of sync and shared)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] in ("sync", "shared", "azure")}


def writers(pattern: str) -> set[str]:
    """Modules whose code (not comments or docstrings) matches `pattern`."""
    hits = set()
    for name, source in sources().items():
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        if re.search(pattern, code):
            hits.add(name)
    return hits


def test_only_runs_changes_a_runs_status() -> None:
    assert writers(r"\brun\.status\s*=|\bother\.status\s*=|status\s*=\s*RunStatus\.") == {"sync.runs"}


def test_only_apply_writes_or_deletes_roster_rows_and_moves_delta_links() -> None:
    assert writers(r"\broster(_store)?\.(write|delete)\(") == {"sync.apply"}
    assert writers(r"save_delta_state\(") == {"sync.apply", "sync.store"}  # the store defines it
    assert writers(r"\bexcluded\.replace\(") == {"sync.apply"}  # who the last full run excluded


def test_only_safety_decides_whether_a_plan_may_be_applied() -> None:
    assert writers(r"def check_plan|def removal_digest|def emptied_groups") == {"sync.safety"}
    assert writers(r"RemovalGuard\(") <= {"sync.safety", "sync.engine"}  # built from settings in one place


@pytest.mark.parametrize(
    ("module", "may_not_import"),
    [
        ("sync.jobs", ("sync.engine", "sync.store", "sync.roster", "sync.directory", "sync.runs")),
        ("sync.api", ("sync.engine", "sync.store", "sync.roster", "sync.directory", "sync.runs")),
        ("sync.__main__", ("sync.engine", "sync.store", "sync.roster", "sync.directory", "sync.runs")),
        ("sync.roster", ("sync.directory", "sync.engine", "sync.service")),
        ("sync.store", ("sync.directory", "sync.engine", "sync.service", "sync.roster")),
        ("sync.openapi", ("sync.directory", "sync.engine", "sync.service", "sync.store")),
        ("sync.planner", ("sync.directory", "sync.engine", "sync.store", "sync.roster", "azure")),
        ("sync.safety", ("sync.directory", "sync.engine", "sync.store", "sync.roster", "azure")),
        ("sync.eligibility", ("sync.directory", "sync.engine", "sync.store", "sync.roster", "azure")),
        ("sync.models", ("sync.directory", "sync.engine", "sync.store", "sync.eligibility", "azure")),
        ("sync.directory", ("sync.engine", "sync.service", "sync.store", "sync.roster")),
    ],
)
def test_imports_only_go_down(module: str, may_not_import: tuple[str, ...]) -> None:
    names = {
        name
        for mod, source in sources().items()
        if mod == module or mod.startswith(module + ".")
        for name in imports(source)
    }
    wrong = sorted(n for n in names if any(n == bad or n.startswith(bad + ".") for bad in may_not_import))
    assert wrong == [], f"{module} imports {wrong}"


def test_only_the_front_ends_import_azure_functions() -> None:
    assert {name for name, source in sources().items() if "azure.functions" in imports(source)} == {
        "sync.api",
        "sync.jobs",
        "sync.web",
    }
