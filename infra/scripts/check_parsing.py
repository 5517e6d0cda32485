"""Fail when checkov could not parse a Bicep file other than app/graph-app.bicep.

checkov exits 0 even when it cannot parse a file, and then checks nothing in it. Its parser
does not know the Microsoft Graph Bicep extension's `extension` keyword, so
infra/app/graph-app.bicep is the one parsing error expected; any other is a failure.

Usage (make iac): python infra/scripts/check_parsing.py .run/checkov.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXPECTED = ("app/graph-app.bicep",)


def unexpected_parsing_errors(report: object) -> list[str]:
    """Files checkov could not parse, other than the expected one; ["?"] when it cannot tell."""
    reports = report if isinstance(report, list) else [report]
    bad: list[str] = []
    for item in reports:
        if not isinstance(item, dict):
            return ["?"]
        files = item.get("results", {}).get("parsing_errors", [])
        count = item.get("summary", item).get("parsing_errors", len(files))
        if count != len(files):
            bad.append(f"{count - len(files)} unnamed file(s)")
        bad.extend(f for f in files if not f.replace("\\", "/").endswith(EXPECTED))
    return bad


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    bad = unexpected_parsing_errors(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    if bad:
        print("checkov could not parse (so checked nothing in): " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
