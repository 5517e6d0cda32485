"""The Azure build installs exactly the versions the tests ran with.

The Flex Consumption remote build runs `pip install -r requirements.txt`. requirements.txt pins
the direct dependencies and pulls in constraints.txt (`-c`), which pins the whole resolved tree;
both files must ship with the package (.funcignore).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s#;]+)")


def pins(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version of every `name==version` line."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := PIN.match(line.strip()):
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def runtime_closure() -> set[str]:
    """Every distribution requirements.txt pulls in on this interpreter (markers evaluated)."""
    environment = {k: str(v) for k, v in default_environment().items()}
    todo = list(pins(ROOT / "requirements.txt"))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_requirements_pull_in_the_constraints_the_build_honours() -> None:
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    assert "-c constraints.txt" in lines


def test_constraints_ship_with_the_app() -> None:
    ignored = {line.strip() for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()}
    assert "constraints.txt" not in ignored
    assert "requirements.txt" not in ignored


def test_direct_pins_agree_with_the_constraints() -> None:
    constraints = pins(ROOT / "constraints.txt")
    for name, version in pins(ROOT / "requirements.txt").items():
        assert constraints.get(name) == version, name


def test_every_runtime_distribution_is_pinned_to_the_installed_version() -> None:
    """The tested virtualenv is what Azure gets: each package of the runtime tree is pinned, and
    pinned to the version installed here."""
    constraints = pins(ROOT / "constraints.txt")
    closure = runtime_closure()
    assert {"azure-functions", "azure-core", "opentelemetry-sdk"} <= closure
    unpinned = sorted(name for name in closure if name not in constraints)
    assert unpinned == []
    drift = {
        n: (constraints[n], metadata.version(n)) for n in closure if constraints[n] != metadata.version(n)
    }
    assert drift == {}
