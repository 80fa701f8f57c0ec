"""The two-hot probe against table3-converged: per dataset, RAFT + 1.0 x CE with the two-hot CE target
(`sweeps/two-hot-probe.yaml`, LR 1e-4, seeds 0-2) beside table3-converged's entries at their chosen LRs
(the default's nearest-value CE, the paper's RAFT, the mean-pooled head, CE + RAIL): mean test RMSE,
Spearman, the gap and Welch's t-test p over seeds, and the mean probability of the most likely grid value
(from each sweep's rounding_floor.json: run benchmarks/rounding_floor.py on both first). And whether the
two CE targets differ at all on MovieLens (whose ratings are grid values), on table3-converged's training
split: where they agree, its RAFT + 1.0 x CE entry is the two-hot default's. No model runs.

    python benchmarks/rounding_floor.py benchmarks/results/two-hot-probe
    python benchmarks/two_hot_compare.py      # prints and writes two-hot-probe/compare.md
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from raftlm.data import load_splits
from raftlm.experiment import cell_config, cells, load_sweep
from raftlm.losses import ce_targets
from raftlm.pipeline import grid_and_scaler
from raftlm.report import format_entry, welch_p

RESULTS = Path(__file__).resolve().parent / "results"
PROBE, TABLE3 = RESULTS / "two-hot-probe", RESULTS / "table3-converged"
TWO_HOT = "RAFT + 1.0 x CE (two-hot target)"
OTHERS = {  # table3-converged label -> name here
    "RAFT + 1.0 x CE (nearest target)": "RAFT + 1.0 x CE, nearest (the default before two-hot)",
    "RAFT (the paper's: no CE term)": "RAFT, the paper's (no CE term)",
    "mean-pooled head": "mean-pooled head",
    "CE + RAIL": "CE + RAIL",
}


def floor_cells(root: Path) -> list[dict]:
    """A sweep's per-cell rows of rounding_floor.json (none when rounding_floor.py has not run on it)."""
    path = root / "rounding_floor.json"
    return json.loads(path.read_text())["cells"] if path.exists() else []


def top_prob(cells: list[dict], label: str, dataset: str, lr: float) -> str:
    """Mean over seeds of the mean top grid probability at ``lr``, with its range ("-" when not measured)."""
    vals = [c["top_prob"] for c in cells if (c["entry"], c["dataset"], c["lr"]) == (label, dataset, lr)]
    return f"{np.mean(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})" if vals else "-"


def targets_agree(dataset: str) -> tuple[bool, int]:
    """Whether the nearest and two-hot CE targets are identical on ``dataset``'s training split, as
    table3-converged built it (grid and target scaling included), and how many targets it holds."""
    sweep = load_sweep(TABLE3 / "sweep.yaml")
    cell = next(c for c in cells(sweep) if c.dataset["dataset"] == dataset and c.method == "raft")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cell_config(sweep, cell, Path(tmp))
    splits = load_splits(cfg.data)
    grid, scaler = grid_and_scaler(cfg, splits.train, splits.grid, splits.target_range)
    y = torch.tensor(scaler.to_grid([e.target for e in splits.train]), dtype=torch.float32)  # as training
    values = torch.tensor(grid.values, dtype=torch.float32)
    return torch.equal(ce_targets(y, values), ce_targets(y, values, "two-hot")), len(y)


def main() -> None:
    probe = {
        a["dataset"]: a for a in json.loads((PROBE / "summary.json").read_text()) if a["label"] == TWO_HOT
    }
    table3 = {(a["dataset"], a["label"]): a for a in json.loads((TABLE3 / "summary.json").read_text())}
    floors = {root: floor_cells(root) for root in (PROBE, TABLE3)}
    lines = [
        "Two-hot CE target (RAFT + 1.0 x CE, `sweeps/two-hot-probe.yaml`, LR 1e-4, no LR choice) against",
        "table3-converged at its chosen LRs; test RMSE mean ± std over seeds; two-hot - other and Welch's p;",
        "top p: mean top grid probability on test (range over seeds). From `benchmarks/two_hot_compare.py`.",
        "",
        "| dataset | entry | LR | seeds | test RMSE | Spearman | two-hot - it | p | top p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, two in probe.items():
        rows = [("RAFT + 1.0 x CE, two-hot", two, PROBE, TWO_HOT)]
        rows += [
            (name, table3[dataset, lab], TABLE3, lab)
            for lab, name in OTHERS.items()
            if (dataset, lab) in table3
        ]
        for name, a, root, lab in rows:
            gap, p = ("", "") if a is two else (f"{two['rmse'] - a['rmse']:+.3f}", welch_p(two, a))
            lines.append(
                f"| {dataset} | {name} | {a['lr']:g} | {len(a['seeds'])} | {format_entry(a, 'rmse')} "
                f"| {a['spearman']:.3f} | {gap} | {p} | {top_prob(floors[root], lab, dataset, a['lr'])} |"
            )
    same, n = targets_agree("movielens-100k")
    lines += [
        "",
        f"movielens-100k: the nearest and two-hot CE targets of its {n} training targets are "
        + ("identical: its RAFT + 1.0 x CE entry is the two-hot default's." if same else "NOT identical."),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (PROBE / "compare.md").write_text(text)


if __name__ == "__main__":
    main()
