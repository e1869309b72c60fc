"""Fail when a source file passes the size budget (style rule 10: files under ~500 lines)."""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 500
ROOTS = ("src", "tests", "bench", "tools")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    too_long = []
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").count("\n")
            if lines > LIMIT:
                too_long.append(f"{path.relative_to(root)}: {lines} lines > {LIMIT}")
    for line in too_long:
        print(line, file=sys.stderr)
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
