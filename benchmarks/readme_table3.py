"""Print the README's table3-converged table (test RMSE, mean ± std, seeds in brackets) from the sweep's
summary.json, each entry as `raftlm report` formats it; with --write, replace the table in README.md.
Run after the sweep commits new cells:

    python benchmarks/readme_table3.py --write
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from raftlm.report import format_entry

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "benchmarks" / "results" / "table3-converged" / "summary.json"
README = ROOT / "README.md"
DATASETS = {"stsb-1k": "STS-B-1K", "amazon-snippets": "Amazon snippets", "movielens-100k": "MovieLens-100K"}
ZERO_SHOT = "zero-shot + rail"
# README row name -> the entry's label in the report (summary.json's "label")
ROWS = {
    "zero-shot RAIL": ZERO_SHOT,
    "CE + greedy (the paper's CE)": "ce + greedy",
    "CE + RAIL": "ce + rail",
    "mean-pooled head": "head-pooled",
    "RAFT, the paper's (no CE term)": "raft (ce_weight=0.0)",
    "RAFT + 1.0 x CE, nearest target (the default then)": "raft",
}
HEADER = "| test RMSE (seeds) | " + " | ".join(DATASETS.values()) + " |"


def table(summary: list[dict]) -> str:
    entry = {(a["dataset"], a["label"]): a for a in summary}
    trained = [label for label in ROWS.values() if label != ZERO_SHOT]
    best = {ds: min(entry[ds, label]["rmse"] for label in trained if (ds, label) in entry) for ds in DATASETS}
    lines = [HEADER, "|---" * (len(DATASETS) + 1) + "|"]
    for name, label in ROWS.items():
        cells = []
        for ds in DATASETS:
            a = entry.get((ds, label))
            if a is None:
                cells.append("—")
            elif label == ZERO_SHOT:
                cells.append(format_entry(a, "rmse"))
            else:
                text = format_entry(a, "rmse")
                cells.append((f"**{text}**" if a["rmse"] == best[ds] else text) + f" ({len(a['seeds'])})")
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
