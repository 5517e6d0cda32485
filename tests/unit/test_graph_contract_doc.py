"""docs/graph-contract.md stays true: every test it names exists, and every Graph path the product
builds has its row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "graph-contract.md").read_text(encoding="utf-8")


def test_every_test_the_contract_names_exists() -> None:
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", DOC))
    defined = {
        match
        for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^(?:async )?def (test_[a-z0-9_]+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert named and sorted(named - defined) == []


def test_every_graph_path_the_product_builds_has_a_row() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "sync" / "directory").glob("*.py"))
    # Relative URLs the product writes itself ($batch items, delta): "/groups/{}/transitiveMembers/..."
    built = set(re.findall(r'"(/(?:groups|users)[^"?]*)', sources))
    segments = {re.sub(r"\{[^}]*\}", "{id}", path) for path in built}
    missing = [path for path in sorted(segments) if path.replace("{id}/", "").split("/")[-1] not in DOC]
    assert segments and missing == []
