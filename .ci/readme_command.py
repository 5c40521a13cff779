"""Print one of the README's two commands: the fenced block after `<!-- command: NAME -->`.

The README is the one place the two commands are written; .ci/run runs what this prints,
so the commands a newcomer copies are the commands CI proves.

    python3 .ci/readme_command.py first|tests
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(name: str, text: str | None = None) -> str:
    text = README.read_text() if text is None else text
    found = re.findall(rf"<!-- command: {re.escape(name)} -->\s*```bash\n(.*?)```", text,
                       flags=re.S)
    if len(found) != 1:
        raise SystemExit(f"error: README.md has {len(found)} blocks marked "
                         f"'<!-- command: {name} -->' (need exactly one)")
    return found[0].strip()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 .ci/readme_command.py first|tests")
    print(readme_command(sys.argv[1]))
