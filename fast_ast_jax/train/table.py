"""Result rows as a plain-text table (evaluate.py, the ElasticAST evaluation table)."""
from __future__ import annotations

from typing import Any


def format_table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "num_clips"))
    lines = [" | ".join(f"{k:>12}" for k in keys)]
    for r in rows:
        lines.append(" | ".join(
            f"{r[k]:>12.4g}" if isinstance(r.get(k), float) else f"{str(r.get(k, '')):>12}"
            for k in keys))
    return "\n".join(lines)
