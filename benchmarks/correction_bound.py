"""Issue 40's lever "RAFT + a small head correction", bounded before it is built: how much could any
linear correction of the default's predictions, a * y_hat + b, lower its test RMSE?

For each dataset, the default's table-3 cells as shipped (benchmarks/docs.py ``shipped_entry``: the LR
chosen on seed 0's validation, every seed at it) and their saved test predictions: the RMSE as run, the
RMSE after the least-squares a, b fitted on the test split itself (an oracle: no correction fitted on other
data can do better on these rows, so it is an upper bound on the gain, not a result), and the same fitted
on one half and scored on the other (2-fold, seeded: what a correction fitted on held-out data of this size
would bring). A learned head on the LM's hidden state could in principle do more than a linear map of
RAIL's output; what this bounds is the part of the error that is a bias or a scale of the predictions.

    python benchmarks/correction_bound.py   # -> benchmarks/results/correction_bound.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from raftlm.metrics import regression_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs  # noqa: E402  (benchmarks/docs.py: the shipped default's cells)

OUT = docs.RESULTS / "correction_bound.json"


def predictions(dataset: str, cell_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) of one cell, from whichever folder of SHIPPED_ARMS holds it."""
    for folder, _, _ in docs.SHIPPED_ARMS[dataset]:
        path = docs.RESULTS / folder / "predictions" / f"{cell_id}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            return np.array([r["target"] for r in rows]), np.array([r["prediction"] for r in rows])
    raise FileNotFoundError(f"no predictions of {cell_id}")


def linear_fit(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = np.c_[p, np.ones_like(p)]
    return np.linalg.lstsq(a, y, rcond=None)[0]


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return regression_metrics(y, p)["rmse"]  # raftlm's own metric, as every cell's


def cell_row(y: np.ndarray, p: np.ndarray) -> dict:
    slope, intercept = linear_fit(p, y)
    idx = np.random.RandomState(0).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2 :])
    crossed = np.empty_like(p)
    for fit, score in (halves, halves[::-1]):
        a, b = linear_fit(p[fit], y[fit])
        crossed[score] = a * p[score] + b
    return {
        "rmse": rmse(y, p),
        "oracle_rmse": rmse(y, slope * p + intercept),
        "two_fold_rmse": rmse(y, crossed),
        "slope": float(slope),
        "intercept": float(intercept),
        "n": len(y),
    }


def main() -> int:
    out = {}
    for dataset in docs.DATASETS:
        entry = docs.shipped_entry(dataset)
        if entry is None:
            continue
        cells = docs.shipped_cells(dataset)
        rows = []
        for seed in entry["seeds"]:
            cell = cells[entry["lr"], seed]
            rows.append({"seed": seed, **cell_row(*predictions(dataset, cell["cell_id"]))})
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("rmse", "oracle_rmse", "two_fold_rmse")}
        out[dataset] = {
            "lr": entry["lr"],
            "seeds": rows,
            **mean,
            "oracle_gain": mean["rmse"] - mean["oracle_rmse"],
            "two_fold_gain": mean["rmse"] - mean["two_fold_rmse"],
        }
        print(
            f"{dataset}: RMSE {out[dataset]['rmse']:.4f}, best linear correction (oracle) "
            f"{out[dataset]['oracle_rmse']:.4f}, 2-fold {out[dataset]['two_fold_rmse']:.4f} ({len(rows)} seeds)"
        )
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
