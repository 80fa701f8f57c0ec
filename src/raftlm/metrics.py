"""Regression metrics: RMSE (the paper's primary metric), MAE, Pearson, Spearman, R^2."""

from __future__ import annotations

import numpy as np
from scipy import stats


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        # correlations are undefined for constant predictions; report 0.0 rather than NaN
        "pearson": 0.0 if constant else float(stats.pearsonr(y_true, y_pred)[0]),
        "spearman": 0.0 if constant else float(stats.spearmanr(y_true, y_pred)[0]),
        "r2": float(1.0 - (err**2).sum() / ss_tot) if ss_tot > 0 else 0.0,
        "n": int(y_true.size),
    }


DEAD_GRID = (
    "the grid holds"  # how ``collapse`` starts the message of the first mode (callers pick a fix by it)
)


def collapse(y_true, y_pred, probs=None) -> str | None:
    """Why predictions carry no signal, if they do not; None when they vary.

    Two ways a grid model dies, both seen in RAFT runs with too large a step: the grid loses its
    probability mass to other tokens (unnormalized RAIL then pulls every prediction toward 0), or
    the grid distribution saturates on one value (every prediction the same number). In both,
    RAFT's gradient (proportional to the grid probabilities and their spread) vanishes, so training
    seldom recovers. Example: probs rows summing to 1e-9 -> 'the grid holds 1.0e-09 ...'.
    """
    if probs is not None and len(probs) and (mass := float(np.asarray(probs).sum(-1).mean())) < 0.01:
        return f"{DEAD_GRID} {mass:.1e} of the model's probability on average (it moved to other tokens)"
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    spread, scale = float(y_pred.std()), float(y_true.std())
    if scale > 0 and spread < 1e-3 * scale:
        return f"every prediction is {y_pred.mean():.4g} (std {spread:.1e}, targets' {scale:.3g}): " + (
            "the grid distribution saturated on one value"
            if probs is not None
            else "the model predicts a constant"
        )
    return None
