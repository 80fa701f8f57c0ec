"""Predictive uncertainty from the grid distribution, and split-conformal intervals.

**One distribution.** A grid model gives probabilities p_k of the grid values v_1 < ... < v_G; the rest of
its probability, 1 - sum_k p_k, goes to strings that are not grid values. The predictive distribution is
the one whose mean *is* the printed RAIL prediction (eq. 5, sum_k p_k v_k): the grid values with their
probabilities, and the rest of the mass on the value 0 in grid units (``rest``: what eq. 5 credits a
non-grid answer with, as eq. 1 does an unparsable decode). With ``normalize_grid`` (table 16) the point
prediction is RAIL over the renormalized grid, and so is the distribution (``rest=None``). Its mean, std,
median, quantiles, CRPS, NLL and every interval are computed from it, so the point prediction, the
``mean`` and the intervals around them describe one distribution. For a trained model the rest is tiny
(grid mass ~1) and both readings agree; for an untrained one it is not, and the intervals say so.

**As a density.** A continuous target needs a density, so each value's probability is spread uniformly
over its cell: from the midpoint with the previous value to the midpoint with the next; the end cells reach
as far outward as inward (grid 1..5: cells [0.5, 1.5], ..., [4.5, 5.5]). This histogram gives the CDF
(piecewise linear, so quantiles interpolate within a cell), the NLL (-log(p_k / width_k) for a target in
cell k) and the CRPS. ``std`` is sqrt(E[(Y - mean)^2]) under the histogram, which on an evenly spaced grid
of step h is sqrt(Var_grid + h^2 / 12): a model sure of one value keeps the grid's resolution as its
spread (and the std-scaled conformal score never divides by zero).

**Units.** The distribution functions take ``values`` in whatever units the caller uses; raftlm passes
data units (``scaler.to_data(grid values)``: the target scaler is affine and increasing, so probabilities
carry over, quantiles map through it and std divides by its slope). Intervals and widths are in data units.

**Conformal intervals** (split conformal: finite-sample coverage >= the confidence level when calibration
and test examples are exchangeable) come from MAPIE 1.x. The features MAPIE sees are the grid
probabilities of each text (or a head's prediction), not the texts, so the LLM runs once per text and a
stored calibration needs no model: ``GridRegressor`` and ``ColumnRegressor`` are the thin, already-fitted
scikit-learn regressors over those features. Kinds (``KINDS``): ``absolute`` |y - y_hat| around the
point prediction (constant width), ``std`` |y - y_hat| / std (width follows the predicted std), ``cqr``
conformalized grid quantiles [Q(a/2), Q(1 - a/2)] (Romano et al. 2019, symmetric correction), and
``grid``, the raw grid quantiles with no calibration (what the model's own distribution claims).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from raftlm import decoders
from raftlm.core import KIND_CHOICES, RaftlmError, check_level, level_text, short, warn
from raftlm.grid import TargetScaler

LEVELS = (0.8, 0.9, 0.95)  # what `evaluate` reports
QUANTILES = (0.05, 0.25, 0.75, 0.95)  # what `predict --with-uncertainty` writes besides the median
NLL_DENSITY_FLOOR = 1e-9  # a target outside every cell costs -log(1e-9) = 20.7 nats, not infinity
CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1


# --- the grid distribution (pure functions over values (G,) and probs (N, G)) -----------------------


def _histogram(values, probs, rest: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted values, probabilities (N, values) in that order, cell edges (values + 1,). With ``rest``
    (a value, same units) the mass off the grid sits there (a value of its own, or added to the grid
    value it equals); without, the grid is renormalized and a row without grid mass counts as uniform."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise RaftlmError(
            "a one-value grid has no distribution to read uncertainty from: use a grid of 2+ values"
        )
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if rest is None:
        p = decoders.grid_share(p)
    else:
        p = p / np.maximum(p.sum(-1, keepdims=True), 1.0)  # float error can put the sum a hair above 1
        off = 1.0 - p.sum(-1)
        at = np.flatnonzero(np.isclose(v, rest))
        if at.size:
            p = p.copy()
            p[:, at[0]] += off
        else:
            v, p = np.append(v, rest), np.concatenate([p, off[:, None]], axis=-1)
    order = np.argsort(v)
    v, p = v[order], p[:, order]
    mid = (v[1:] + v[:-1]) / 2
    edges = np.concatenate([[v[0] - (v[1] - v[0]) / 2], mid, [v[-1] + (v[-1] - v[-2]) / 2]])
    return v, p, edges


def _cdf_at_edges(p: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((len(p), 1)), np.cumsum(p, axis=-1)], axis=-1)


def _cell_of(edges: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, y, side="right") - 1, 0, len(edges) - 2)


def grid_mean(values, probs, rest: float | None = None) -> np.ndarray:
    """The distribution's mean: RAIL (eq. 5) with ``rest``, RAIL over the renormalized grid without."""
    v, p, _ = _histogram(values, probs, rest)
    return p @ v


def grid_std(values, probs, rest: float | None = None) -> np.ndarray:
    """sqrt(E[(Y - mean)^2]) under the histogram: spread of the cell centres around the mean plus each
    cell's own width^2 / 12 (on an evenly spaced grid: sqrt(Var_grid + h^2 / 12))."""
    v, p, e = _histogram(values, probs, rest)
    mu = p @ v
    centre, width = (e[1:] + e[:-1]) / 2, np.diff(e)
    return np.sqrt((p * ((centre - mu[:, None]) ** 2 + width**2 / 12)).sum(-1))


def grid_cdf(values, probs, y, rest: float | None = None) -> np.ndarray:
    """P(Y <= y) under the histogram, one y per row."""
    _, p, e = _histogram(values, probs, rest)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), (len(p),))
    k, rows = _cell_of(e, y), np.arange(len(p))
    frac = np.clip((y - e[k]) / np.diff(e)[k], 0.0, 1.0)
    return _cdf_at_edges(p)[rows, k] + p[rows, k] * frac


def grid_quantile(values, probs, level, rest: float | None = None) -> np.ndarray:
    """Quantile(s) of the histogram: (N,) for one level, (N, L) for a sequence of levels."""
    _, p, e = _histogram(values, probs, rest)
    F, rows, width = _cdf_at_edges(p), np.arange(len(p)), np.diff(e)
    levels = np.atleast_1d(np.asarray(level, dtype=np.float64))
    out = np.empty((len(p), levels.size))
    for j, tau in enumerate(levels):
        k = np.minimum((F[:, 1:] < tau).sum(-1), len(width) - 1)  # the cell where F crosses tau
        pk = p[rows, k]
        frac = np.clip((tau - F[rows, k]) / np.where(pk > 0, pk, 1.0), 0.0, 1.0)
        out[:, j] = e[k] + frac * width[k]
    return out[:, 0] if np.ndim(level) == 0 else out


def grid_median(values, probs, rest: float | None = None) -> np.ndarray:
    """The interpolated median (decoders.median is the discrete one: a grid value)."""
    return grid_quantile(values, probs, 0.5, rest)


def grid_nll(values, probs, y, rest: float | None = None) -> np.ndarray:
    """-log density of y under the histogram (nats; density per unit of ``values``), floored at
    NLL_DENSITY_FLOOR for targets outside every cell."""
    _, p, e = _histogram(values, probs, rest)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), (len(p),))
    k = _cell_of(e, y)
    density = p[np.arange(len(p)), k] / np.diff(e)[k]
    density = np.where((y >= e[0]) & (y <= e[-1]), density, 0.0)
    return -np.log(np.maximum(density, NLL_DENSITY_FLOOR))


def grid_crps(values, probs, y, rest: float | None = None) -> np.ndarray:
    """CRPS = integral of (F(x) - 1[x >= y])^2 dx under the histogram (units of ``values``; for a point
    forecast it would be the absolute error). F is linear between breakpoints (the edges and y), so each
    piece integrates exactly: L (g0^2 + g0 g1 + g1^2) / 3."""
    _, p, e = _histogram(values, probs, rest)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), (len(p),))
    F = _cdf_at_edges(p)
    out = np.empty(len(p))
    for i in range(len(p)):
        x = np.sort(np.append(e, y[i]))
        fx = np.interp(x, e, F[i])
        h = (x[:-1] >= y[i]).astype(np.float64)  # the step 1[x >= y] on each piece
        g0, g1 = fx[:-1] - h, fx[1:] - h
        out[i] = float((np.diff(x) * (g0 * g0 + g0 * g1 + g1 * g1)).sum() / 3)
    return out


def summarize(
    values, probs, rest: float | None = None, quantiles: Sequence[float] = QUANTILES, shift=None
) -> dict[str, np.ndarray]:
    """Per-example mean (the RAIL prediction), std, interpolated median, entropy (nats, of the grid) and
    quantiles of the distribution; ``shift`` (N,) moves each distribution by that much (a correction
    head's: its mean is then the prediction)."""
    shift = np.zeros(len(probs)) if shift is None else np.asarray(shift, dtype=np.float64)
    return {
        "mean": grid_mean(values, probs, rest) + shift,
        "std": grid_std(values, probs, rest),
        "median": grid_median(values, probs, rest) + shift,
        "entropy": decoders.entropy(probs),
        "quantiles": grid_quantile(values, probs, list(quantiles), rest) + shift[:, None],
    }


def split_features(X, grid) -> tuple[np.ndarray, np.ndarray]:
    """Grid features as (probabilities (N, G), shift (N,), data units). A shifted distribution (a
    correction head's, ``Predictions.shift``) carries its shift as one column after the G probabilities;
    an unshifted one has none (shift 0)."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] == len(grid) + 1:
        return X[:, :-1], X[:, -1]
    return X, np.zeros(len(X))


# --- scikit-learn regressors over precomputed features (what MAPIE wraps) ----------------------------


class GridRegressor(RegressorMixin, BaseEstimator):
    """Point prediction (``rule`` over ``values`` in grid units, mapped to data units by ``scaler``), or
    with ``quantile`` set that quantile of the grid CDF, from grid probabilities as the features X (N, G)
    (with a shift column, ``split_features``: both moved by the shift).
    ``predict(X, return_std=True)`` also returns the grid std (data units), as MAPIE's std score needs.
    Nothing to learn: ``fit`` only records the feature count (MAPIE checks it on prefit estimators)."""

    def __init__(
        self,
        values: tuple = (),
        scaler: TargetScaler | None = None,
        rule: str = "rail",
        normalize_grid: bool = False,
        quantile: float | None = None,
    ):
        self.values = values
        self.scaler = scaler
        self.rule = rule
        self.normalize_grid = normalize_grid
        self.quantile = quantile

    def fit(self, X, y=None) -> GridRegressor:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def _data_values(self) -> np.ndarray:
        return self.scaler.to_data(np.asarray(self.values, dtype=np.float64))

    def predict(self, X, return_std: bool = False):
        probs, shift = split_features(X, self.values)
        rest = rest_value(self.scaler, self.normalize_grid)
        if self.quantile is not None:
            return grid_quantile(self._data_values(), probs, self.quantile, rest) + shift
        g = decoders.decode(self.rule, self.values, probs, self.normalize_grid)
        point = self.scaler.to_data(g) + shift
        return (point, grid_std(self._data_values(), probs, rest)) if return_std else point


def rest_value(scaler: TargetScaler, normalize_grid: bool) -> float | None:
    """Where the distribution puts the mass off the grid (data units): grid value 0, as RAIL does; None
    (renormalize) when the predictions renormalize the grid."""
    return None if normalize_grid else float(scaler.to_data(np.asarray(0.0)))


class ColumnRegressor(RegressorMixin, BaseEstimator):
    """The prediction is the single feature: a predictive head's output (data units), X of shape (N, 1)."""

    def fit(self, X, y=None) -> ColumnRegressor:
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X):
        return np.asarray(X, dtype=np.float64)[:, 0]


# --- interval kinds --------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalKind:
    """``bounds(calibration, X, levels, rule)`` -> lower, upper of shape (N, L)."""

    bounds: Callable
    needs_grid: bool  # reads the grid distribution (not available for heads)
    conformal: bool  # needs a calibration
    help: str


def _mapie_split(cal: Calibration, X, levels, rule: str, score) -> tuple[np.ndarray, np.ndarray]:
    from mapie.regression import SplitConformalRegressor

    reg = SplitConformalRegressor(
        cal.point_estimator(rule), confidence_level=list(levels), conformity_score=score, prefit=True
    )
    reg.conformalize(cal.features, cal.targets)
    _, pis = reg.predict_interval(np.asarray(X, dtype=np.float64))
    return pis[:, 0, :], pis[:, 1, :]


def _absolute(cal: Calibration, X, levels, rule: str):
    return _mapie_split(cal, X, levels, rule, "absolute")


def _std_scaled(cal: Calibration, X, levels, rule: str):
    from mapie.conformity_scores import StdConformityScore

    return _mapie_split(cal, X, levels, rule, StdConformityScore())


def _cqr(cal: Calibration, X, levels, rule: str):
    """MAPIE's ConformalizedQuantileRegressor takes three prefit quantile regressors for one level, so
    each level gets its own (the grid CDF at a/2, 1 - a/2 and 0.5)."""
    from mapie.regression import ConformalizedQuantileRegressor

    lower, upper = [], []
    for level in levels:
        a = 1.0 - level
        ests = [cal.quantile_estimator(q) for q in (a / 2, 1 - a / 2, 0.5)]
        reg = ConformalizedQuantileRegressor(ests, confidence_level=level, prefit=True)
        reg.conformalize(cal.features, cal.targets)
        _, pis = reg.predict_interval(np.asarray(X, dtype=np.float64), symmetric_correction=True)
        lower.append(pis[:, 0, 0])
        upper.append(pis[:, 1, 0])
    return np.stack(lower, -1), np.stack(upper, -1)


def _raw_grid(cal: Calibration, X, levels, rule: str):
    values = cal.scaler.to_data(np.asarray(cal.grid, dtype=np.float64))
    rest = rest_value(cal.scaler, cal.normalize_grid)
    probs, shift = split_features(X, cal.grid)
    tails = [(1 - c) / 2 for c in levels]
    lower, upper = (
        grid_quantile(values, probs, q, rest) + shift[:, None] for q in (tails, [1 - t for t in tails])
    )
    return lower, upper


KINDS: dict[str, IntervalKind] = {
    "absolute": IntervalKind(
        _absolute, False, True, "y_hat +- the conformal quantile of |y - y_hat| (constant width)"
    ),
    "std": IntervalKind(
        _std_scaled, True, True, "y_hat +- the conformal quantile of |y - y_hat| / std, times std"
    ),
    "cqr": IntervalKind(_cqr, True, True, "grid quantiles [Q(a/2), Q(1-a/2)] widened by a conformal margin"),
    "grid": IntervalKind(_raw_grid, True, False, "raw grid quantiles [Q(a/2), Q(1-a/2)], not calibrated"),
}


def min_calibration_size(level: float) -> int:
    """The fewest calibration examples MAPIE gives a finite split-conformal interval with at ``level``:
    the finite-sample quantile needs ceil((n + 1) level) <= n, and MAPIE also asks n >= 1 / alpha (in its
    float arithmetic, alpha = 1 - level: 0.8 -> 6, 0.9 -> 11, 0.95 -> 20; theory alone: 4, 9, 19)."""
    alpha = 1 - level
    n = max(1, math.ceil(max(1 / alpha, 1 / (1 - alpha))))
    while np.ceil((1 - alpha) * (n + 1)) / n > 1.0:
        n += 1
    return n


def warn_calibration(source: str, n: int, who: str = "raftlm calibrate") -> None:
    """Calibrations whose coverage guarantee is void or tiny (`raftlm calibrate`, ``RAFTRegressor.calibrate``):
    said in the log, not refused; ``who`` begins each line."""
    log = logging.getLogger("raftlm")
    if source == "train":
        log.warning(
            f"{who}: calibrating on the training split, which the model has seen: its residuals are "
            "too small, so the coverage guarantee is void; calibrate on validation or on held-out --input"
        )
    if source == "test":
        log.warning(
            f"{who}: calibrating on the test split leaks it: coverage measured on test afterwards is "
            "no longer an honest estimate; calibrate on validation or on held-out --input"
        )
    need = {c: min_calibration_size(c) for c in LEVELS}
    if n < max(need.values()):
        levels = ", ".join(f"{c:g} needs {k}" for c, k in need.items())
        log.warning(
            f"{who}: only {n} calibration example(s): split conformal intervals need more ({levels}); "
            "the levels it cannot give will be refused"
        )


# --- a stored calibration --------------------------------------------------------------------------


@dataclass
class Calibration:
    """Calibration examples as MAPIE's features: targets (n,) in data units, and either grid
    probabilities (n, G) with the grid values (grid units), or a head's predictions (n, 1) (``grid``
    None). Saved as ``calibration.json`` in the run directory (exact floats, so reloading gives
    identical intervals)."""

    targets: np.ndarray
    features: np.ndarray
    grid: tuple | None
    scaler: TargetScaler
    normalize_grid: bool = False
    source: str = "validation"
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.targets)

    @classmethod
    def uncalibrated(cls, predictor, X: np.ndarray) -> Calibration:
        """No examples: only the raw ``grid`` kind runs (with a grid distribution)."""
        return cls(
            np.zeros(0), np.zeros((0, X.shape[1])), _grid_of(predictor, X), predictor.scaler, source="none"
        )

    def point_estimator(self, rule: str = "rail"):
        if self.grid is None:
            return ColumnRegressor().fit(self.features)
        return GridRegressor(self.grid, self.scaler, rule, self.normalize_grid).fit(self.features)

    def quantile_estimator(self, level: float) -> GridRegressor:
        return GridRegressor(self.grid, self.scaler, normalize_grid=self.normalize_grid, quantile=level).fit(
            self.features
        )

    def kind(self, kind: str = "auto") -> str:
        """Resolve ``auto`` (cqr with a grid distribution, absolute without) and refuse what cannot run."""
        if kind == "auto":
            return "cqr" if self.grid is not None else "absolute"
        if kind not in KINDS:
            raise RaftlmError(f"unknown interval kind {kind!r}: use one of {list(KIND_CHOICES)}")
        if KINDS[kind].needs_grid and self.grid is None:
            raise RaftlmError(
                f"interval kind {kind} needs a grid distribution, but this model predicts one number "
                "(a predictive head): only the interval kind absolute (residual intervals) applies"
            )
        return kind

    def check_levels(self, levels, kind: str = "auto") -> tuple[str, list[float]]:
        """The kind and levels this calibration can give (``kind`` resolved), or one line saying why not: a
        kind the model has no distribution for, a level its examples are too few for."""
        kind = self.kind(kind)
        levels = [check_level(c) for c in np.atleast_1d(levels)]
        if KINDS[kind].conformal:
            for c in levels:
                if self.n < (need := min_calibration_size(c)):
                    raise RaftlmError(
                        f"{self.n} calibration examples cannot give a {level_text(c)} interval (split conformal needs "
                        f"at least {need}): calibrate on more examples or ask for a lower level"
                    )
        return kind, levels

    def intervals(self, X, levels, kind: str = "auto", rule: str = "rail") -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (N, L) for features X (the model's grid probabilities, or head
        predictions as a column) at each confidence level."""
        kind, levels = self.check_levels(levels, kind)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.features.shape[1]:
            raise RaftlmError(
                f"features of shape {X.shape} do not match the calibration's {self.features.shape[1]} columns: "
                "recalibrate this run (`raftlm calibrate RUN`)"
            )
        return KINDS[kind].bounds(self, X, levels, rule)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "n": self.n,
            "grid": None if self.grid is None else list(self.grid),
            "scaler": self.scaler.to_dict(),
            "normalize_grid": self.normalize_grid,
            **self.extra,
            "targets": self.targets.tolist(),
            "features": self.features.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        known = {"format_version", "source", "n", "grid", "scaler", "normalize_grid", "targets", "features"}
        return cls(
            np.asarray(d["targets"], dtype=np.float64),
            np.asarray(d["features"], dtype=np.float64),
            None if d["grid"] is None else tuple(d["grid"]),
            TargetScaler.from_dict(d["scaler"]),
            d.get("normalize_grid", False),
            d.get("source", "validation"),
            {k: v for k, v in d.items() if k not in known},
        )

    def save(self, run_dir: str | Path) -> Path:
        from raftlm.io import write_json

        return write_json(Path(run_dir) / CALIBRATION_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir: str | Path, required: bool = True) -> Calibration | None:
        """The run's calibration, or None when it has none. A damaged calibration.json is a one-line
        error when ``required`` (intervals were asked for), else a warning and None."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            message = f"{path} is damaged ({short(str(err))}): recalibrate with `raftlm calibrate {run_dir}`"
            if required:
                raise RaftlmError(message) from None
            warn(message + "; going on without conformal intervals")
            return None


# --- glue to a Predictor ---------------------------------------------------------------------------


def features(predictor, preds) -> np.ndarray:
    """What intervals are computed from: grid probabilities (N, G), with a correction head's shift as one
    more column (N, G + 1), or the point predictions (N, 1) of a head or of a one-value grid (neither has
    a distribution)."""
    if preds.shift is not None:
        return np.column_stack([preds.probs, preds.shift])
    if preds.probs is not None and preds.probs.shape[1] > 1:
        return preds.probs
    if preds.probs is not None or predictor.head is not None or predictor.fmt is None:
        return np.asarray(preds.values, dtype=np.float64)[:, None]
    raise RaftlmError(NO_DISTRIBUTION)


# (a text decoder's predictions: what features refuses, and what the server refuses before computing them)
NO_DISTRIBUTION = (
    "intervals and the uncertainty summary need the grid distribution: decode with rail, mode or median "
    "(--decoder; decoder= in Python): greedy and sample-rail decode text and have none"
)


def _grid_of(predictor, X: np.ndarray) -> tuple | None:
    """The grid values when the features are grid probabilities, else None."""
    return tuple(predictor.grid.values) if X.shape[1] > 1 else None


def data_values(predictor) -> np.ndarray:
    """The grid values in data units (where the distribution math runs)."""
    return predictor.scaler.to_data(predictor.grid.array)


def predictor_rest(predictor) -> float | None:
    """``rest_value`` of a predictor's grid (see the module docstring: one distribution)."""
    return rest_value(predictor.scaler, predictor.normalize_grid)


def center_rule(decoder: str) -> str:
    """The point prediction intervals are centred on: the evaluation decoder if it reads the grid."""
    return decoder if decoder in decoders.GRID_DECODERS else "rail"


def calibrate(
    predictor,
    examples,
    batch_size: int = 16,
    bf16: bool = False,
    source: str = "validation",
    desc: str | None = "calibrate",
) -> Calibration:
    """Score ``examples`` once and keep what split-conformal calibration needs (no model inside);
    ``desc=None`` hides the progress bar."""
    if not examples or any(e.target is None for e in examples):
        raise RaftlmError("calibration needs examples with targets: choose a split or file that has them")
    preds = predictor.predict(predictor.texts_of(examples), "rail", batch_size, bf16=bf16, desc=desc)
    preds = predictor.average_orders(preds, "rail")  # (both orders of a symmetric pair)
    X = features(predictor, preds)
    cal = Calibration(
        np.asarray([e.target for e in examples], dtype=np.float64),
        X,
        _grid_of(predictor, X),
        predictor.scaler,
        predictor.normalize_grid,
        source,
    )
    if cal.n >= min_calibration_size(max(LEVELS)):  # a readable summary beside the stored examples
        lo, hi = cal.intervals(X[:1], LEVELS, "absolute")
        cal.extra["absolute_half_width"] = {
            f"{c:g}": float((hi[0, j] - lo[0, j]) / 2) for j, c in enumerate(LEVELS)
        }
    return cal


def interval_rows(
    cal: Calibration,
    X: np.ndarray,
    targets,
    levels: Sequence[float] = LEVELS,
    kinds: Sequence[str] | None = None,
    rule: str = "rail",
    asked: bool = False,
) -> list[dict]:
    """Coverage and mean width per (kind, level) on labelled examples. Kinds the calibration cannot run
    (conformal ones when it is ``uncalibrated``, grid ones for a head) and levels it is too small for are
    left out, unless ``asked`` (a level or kind given: refused in one line, as `predict` refuses it)."""
    y = np.asarray(targets, dtype=np.float64)
    rows = []
    for kind in kinds or list(KINDS):
        # (a kind asked for that cannot run: refused)
        spec = KINDS[cal.kind(kind) if asked and kinds else kind]
        if (spec.needs_grid and cal.grid is None) or (spec.conformal and cal.n == 0):
            continue
        ok = [c for c in levels if not spec.conformal or cal.n >= min_calibration_size(c)]
        if not ok:
            continue
        lower, upper = cal.intervals(X, ok, kind, rule)
        for j, c in enumerate(ok):
            inside = (y >= lower[:, j]) & (y <= upper[:, j])
            rows.append(
                {
                    "kind": kind,
                    "nominal": float(c),
                    "coverage": float(inside.mean()),
                    "width": float((upper[:, j] - lower[:, j]).mean()),
                    "n": int(y.size),
                }
            )
    if asked and not rows:  # nothing could be given: the reason, in predict's words
        kind = cal.kind((kinds or ["auto"])[0])
        if KINDS[kind].conformal and cal.n == 0:
            raise RaftlmError(NOT_CALIBRATED)
        cal.intervals(X, levels, kind, rule)
    return rows


NOT_CALIBRATED = (
    "this model has no calibration: a run from `raftlm train` is calibrated (unless --no-calibrate; "
    "`raftlm calibrate RUN` adds one), a model that is not a run cannot be: pass --interval-kind "
    "grid for the raw, uncalibrated grid quantiles"
)


def evaluation(
    predictor,
    preds,
    targets,
    cal: Calibration | None = None,
    levels: Sequence[float] = LEVELS,
    kinds: Sequence[str] | None = None,
    decoder: str = "rail",
    asked: bool = False,
) -> dict:
    """What `evaluate` adds: CRPS, NLL and mean std of the grid distribution (data units), and interval
    coverage / width rows (conformal kinds when calibrated, the raw grid quantiles always)."""
    y = np.asarray(targets, dtype=np.float64)
    out: dict = {}
    if preds.probs is None and predictor.head is None and predictor.fmt is not None:
        return out  # text decoders: no distribution, no intervals
    X = features(predictor, preds)
    if X.shape[1] > 1:  # a shifted distribution's scores are the grid's at y - shift
        values, rest = data_values(predictor), predictor_rest(predictor)
        probs, shift = split_features(X, predictor.grid.values)
        out["crps"] = float(grid_crps(values, probs, y - shift, rest).mean())
        out["nll"] = float(grid_nll(values, probs, y - shift, rest).mean())
        out["mean_std"] = float(grid_std(values, probs, rest).mean())
    cal = cal if cal is not None else Calibration.uncalibrated(predictor, X)
    if rows := interval_rows(cal, X, y, levels, kinds, center_rule(decoder), asked):
        out["intervals"] = rows
    return out


def check_interval(cal: Calibration | None, level: float, kind: str = "auto") -> None:
    """An interval at ``level`` of ``kind`` from calibration ``cal`` (None: the run has none, and only kind
    grid applies) is one it can give; `raftlm predict` asks before the model loads."""
    if cal is None:
        if kind != "grid":
            raise RaftlmError(NOT_CALIBRATED)
        return
    cal.check_levels([level], kind)


def check_run_interval(cfg) -> Calibration | None:
    """`raftlm predict --interval` (either engine), before the model loads: the run's calibration (read
    only when an interval is asked for: a damaged calibration.json must not stop plain predictions), and
    the interval asked for one it can give (``check_interval``; an uncalibrated model's refusal depends on
    whether it has a grid distribution, so it comes after the model loads)."""
    from raftlm.io import is_run_dir

    e = cfg.eval
    if not e.interval:
        return None
    calibration = Calibration.load(cfg.model.name) if is_run_dir(cfg.model.name) else None
    if calibration is not None:  # (without one, what the model is decides the line: said once it loads)
        check_interval(calibration, e.interval, e.interval_kind)
    return calibration


def prediction_fields(
    predictor,
    preds,
    cal: Calibration | None,
    level: float | None = None,
    kind: str = "auto",
    decoder: str = "rail",
    summary: bool = False,
) -> list[dict]:
    """Per-example fields `predict` adds: with ``summary`` the grid distribution's mean, std, median,
    entropy and QUANTILES; with ``level`` an interval (``lower``, ``upper``) of ``kind``."""
    rows: list[dict] = [{} for _ in preds.values]
    if not summary and level is None:
        return rows
    X = features(predictor, preds)
    if summary:
        if X.shape[1] < 2:
            raise RaftlmError(
                decoders.one_number(
                    'the uncertainty summary (--with-uncertainty, "with_uncertainty")',
                    "ask for an interval of a calibrated run instead (residual intervals)",
                )
            )
        probs, shift = split_features(X, predictor.grid.values)
        s = summarize(data_values(predictor), probs, predictor_rest(predictor), shift=shift)
        for i, row in enumerate(rows):
            row.update({k: float(s[k][i]) for k in ("mean", "std", "median", "entropy")})
            row["quantiles"] = {f"{q:g}": float(v) for q, v in zip(QUANTILES, s["quantiles"][i], strict=True)}
    if level is not None:
        check_interval(cal, level, kind)
        cal = cal if cal is not None else Calibration.uncalibrated(predictor, X)
        lower, upper = cal.intervals(X, [level], kind, center_rule(decoder))
        for i, row in enumerate(rows):
            row.update(lower=float(lower[i, 0]), upper=float(upper[i, 0]))
    return rows
