"""The settings tables of docs/operations.md, written from the settings themselves.

    python -m relay.docs          # rewrites the tables between their markers in docs/operations.md

Each table lies between `<!-- settings: NAME -->` and `<!-- end settings -->`; tests/test_cli.py
fails when one differs from what this writes, so the documentation cannot disagree with the
code (a new setting, a changed default, a renamed variable).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from relay.agent.launch import SURFACE as SERVE
from relay.control.config import SURFACE as CONTROL
from relay.settings import markdown_table

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
MARKER = re.compile(r"(<!-- settings: ([\w ]+) -->\n)(.*?)(<!-- end settings -->)", re.DOTALL)


def tables() -> dict[str, str]:
    """Each table by its marker's name."""
    return {"relay control": markdown_table(CONTROL), "relay serve": markdown_table(SERVE)}


def rewrite(text: str) -> str:
    """`text` with every marked table replaced by the current one (KeyError: an unknown name)."""
    current = tables()
    return MARKER.sub(lambda m: f"{m[1]}\n{current[m[2]]}\n{m[4]}", text)


def main() -> int:
    text = OPERATIONS.read_text()
    new = rewrite(text)
    if new != text:
        OPERATIONS.write_text(new)
        print(f"rewrote the settings tables of {OPERATIONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
