"""Plain-text tables of metric rows (the CLI's and the demo's printed results)."""

from __future__ import annotations


def format_table(rows: list[dict], columns=("rmse", "mae", "pearson", "spearman", "r2", "n")) -> str:
    """A Markdown table: up to three string fields of the first row as keys, then ``columns``."""
    keys = [k for k, v in rows[0].items() if k not in columns and isinstance(v, str)][:3]
    head = [*keys, *columns]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(
            " | ".join(
                f"{r.get(c, ''):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in head
            )
        )
    return "\n".join(lines)
