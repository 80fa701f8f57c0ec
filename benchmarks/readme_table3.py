"""Print the README's table3-converged table (test RMSE, mean ± std, seeds in brackets) from the sweep's
summary.json; with --write, replace the table in README.md. Run after the sweep commits new cells:

    python benchmarks/readme_table3.py --write
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "benchmarks" / "results" / "table3-converged" / "summary.json"
README = ROOT / "README.md"
DATASETS = {"stsb-1k": "STS-B-1K", "amazon-snippets": "Amazon snippets", "movielens-100k": "MovieLens-100K"}
# README row -> (method, decoder or None for a head, whether the entry is the paper's RAFT: ce_weight 0)
ROWS = {
    "zero-shot RAIL": ("none", "rail", False),
    "CE + greedy (the paper's CE)": ("ce", "greedy", False),
    "CE + RAIL": ("ce", "rail", False),
    "mean-pooled head": ("head-pooled", None, False),
    "RAFT, the paper's (no CE term)": ("raft", "rail", True),
    "RAFT + 1.0 x CE (the default)": ("raft", "rail", False),
}
HEADER = "| test RMSE (seeds) | " + " | ".join(DATASETS.values()) + " |"


def find(summary: list[dict], dataset: str, key: tuple) -> dict | None:
    method, decoder, paper = key
    for row in summary:
        if row["dataset"] != dataset or row["method"] != method:
            continue
        if decoder and row["decoder"] != decoder:
            continue
        if paper == ("ce_weight" in (row["options"] or "")):
            return row
    return None


def table(summary: list[dict]) -> str:
    trained = [key for key in ROWS.values() if key[0] != "none"]
    best = {
        ds: min(r["rmse"] for r in (find(summary, ds, k) for k in trained) if r is not None)
        for ds in DATASETS
    }
    lines = [HEADER, "|---" * (len(DATASETS) + 1) + "|"]
    for name, key in ROWS.items():
        cells = []
        for ds in DATASETS:
            row = find(summary, ds, key)
            if row is None:
                cells.append("—")
                continue
            n = len(row["seeds"])
            cell = f"{row['rmse']:.3f}" + (f" ± {row['rmse_std']:.3f}" if n > 1 else "")
            if key[0] != "none":
                cell = (f"**{cell}**" if row["rmse"] == best[ds] else cell) + f" ({n})"
            if row["collapsed_seeds"]:
                cell += f" [collapsed {row['collapsed_seeds']}]"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    text = table(json.loads(SUMMARY.read_text()))
    print(text)
    if "--write" in sys.argv[1:]:
        readme = README.read_text()
        new, n = re.subn(re.escape(HEADER) + r".*?\n\n", lambda _: text + "\n\n", readme, count=1, flags=re.S)
        if n != 1:
            sys.exit(f"readme_table3: no table starting {HEADER!r} in {README}")
        README.write_text(new)


if __name__ == "__main__":
    main()
