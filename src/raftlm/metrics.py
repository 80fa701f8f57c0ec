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
