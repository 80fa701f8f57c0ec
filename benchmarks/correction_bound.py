"""Issue 40's lever "RAFT + a small head correction", bounded before it is built: how much could any
linear correction of the default's predictions, a * y_hat + b, lower its test RMSE?

For each dataset, the default's table-3 cells as shipped (benchmarks/docs.py ``shipped_entry``: the LR
chosen on seed 0's validation, every seed at it) and their saved test predictions: the RMSE as run, the
RMSE after the least-squares a, b fitted on the test split itself (an oracle: no correction fitted on other
data can do better on these rows, so it is an upper bound on the gain, not a result), and the same fitted
on one half and scored on the other (2-fold, seeded: what a correction fitted on held-out data of this size
would bring). A learned head on the LM's hidden state could in principle do more than a linear map of
RAIL's output; what this bounds is the part of the error that is a bias or a scale of the predictions.

The same two fits for a temperature of RAIL's grid distribution (p_i^(1/T), renormalized over the grid
with its grid mass kept; T > 1 flattens it, T < 1 sharpens it), the other cheap post-hoc correction: the
grid values' data units come from the rows themselves (prediction = a x RAIL in grid units + b, the run's
affine target scaling, recovered by least squares: exact up to the probabilities' 6 saved decimals).

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


def predictions(dataset: str, cell_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets, predictions, grid probabilities) of one cell, from whichever folder of SHIPPED_ARMS holds
    it."""
    for folder, _, _ in docs.SHIPPED_ARMS[dataset]:
        path = docs.RESULTS / folder / "predictions" / f"{cell_id}.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            return tuple(np.array([r[k] for r in rows]) for k in ("target", "prediction", "probs"))
    raise FileNotFoundError(f"no predictions of {cell_id}")


def linear_fit(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = np.c_[p, np.ones_like(p)]
    return np.linalg.lstsq(a, y, rcond=None)[0]


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    return regression_metrics(y, p)["rmse"]  # raftlm's own metric, as every cell's


def tempered(probs: np.ndarray, grid: np.ndarray, scale: np.ndarray, t: float) -> np.ndarray:
    """RAIL's prediction (data units: ``scale`` = a, b) of the grid distribution at temperature ``t``."""
    q = np.clip(probs, 1e-12, None) ** (1.0 / t)
    q = q / q.sum(1, keepdims=True) * probs.sum(1, keepdims=True)
    return scale[0] * (q @ grid) + scale[1]


def best_temperature(probs, grid, scale, y) -> float:
    from scipy.optimize import minimize_scalar

    fit = minimize_scalar(
        lambda t: rmse(y, tempered(probs, grid, scale, t)), bounds=(0.1, 10), method="bounded"
    )
    return float(fit.x)


def temperature_row(y: np.ndarray, p: np.ndarray, probs: np.ndarray, grid: np.ndarray, halves) -> dict:
    # grid units (RAIL puts the mass off the grid at 0), then the run's affine scaling to data units
    scale = linear_fit(probs @ grid, p)
    assert np.abs(scale[0] * (probs @ grid) + scale[1] - p).max() < 1e-3, "not RAIL of the saved probs"
    t = best_temperature(probs, grid, scale, y)
    crossed = np.empty_like(p)
    for fit, score in (halves, halves[::-1]):
        t_half = best_temperature(probs[fit], grid, scale, y[fit])
        crossed[score] = tempered(probs[score], grid, scale, t_half)
    return {
        "temperature": t,
        "temperature_oracle_rmse": rmse(y, tempered(probs, grid, scale, t)),
        "temperature_two_fold_rmse": rmse(y, crossed),
    }


def cell_row(y: np.ndarray, p: np.ndarray, probs: np.ndarray, grid: np.ndarray) -> dict:
    slope, intercept = linear_fit(p, y)
    idx = np.random.RandomState(0).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2 :])
    crossed = np.empty_like(p)
    for fit, score in (halves, halves[::-1]):
        a, b = linear_fit(p[fit], y[fit])
        crossed[score] = a * p[score] + b
    return {
        **temperature_row(y, p, probs, grid, halves),
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
            grid = np.array([float(v) for v in cell["grid"]])  # the grid's strings, as numbers
            rows.append({"seed": seed, **cell_row(*predictions(dataset, cell["cell_id"]), grid)})
        keys = (
            "rmse",
            "oracle_rmse",
            "two_fold_rmse",
            "temperature_oracle_rmse",
            "temperature_two_fold_rmse",
        )
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        out[dataset] = {
            "lr": entry["lr"],
            "seeds": rows,
            **mean,
            "oracle_gain": mean["rmse"] - mean["oracle_rmse"],
            "two_fold_gain": mean["rmse"] - mean["two_fold_rmse"],
        }
        print(
            f"{dataset}: RMSE {out[dataset]['rmse']:.4f}, best linear correction (oracle) "
            f"{out[dataset]['oracle_rmse']:.4f}, 2-fold {out[dataset]['two_fold_rmse']:.4f}; best temperature "
            f"(oracle) {out[dataset]['temperature_oracle_rmse']:.4f}, 2-fold "
            f"{out[dataset]['temperature_two_fold_rmse']:.4f} ({len(rows)} seeds)"
        )
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
