"""Y_grid: the numeric values a model may emit, each with the exact string it emits for it.

Also the affine target scaling that maps a dataset's target range onto the grid's range
(the paper scales the synthetic set to [0, 9]; lemma 3 needs both grid ends to cover the data).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass

import numpy as np

from raftlm.core import RaftlmError, short, warn


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class Grid:
    """Grid values and their strings, e.g. ``Grid.parse("1-5")`` -> values 1..5 emitted as '1'..'5'."""

    values: tuple[float, ...]
    strings: tuple[str, ...]
    single: bool = False  # allow a one-value grid (table 13's '5' ablation: RAIL = 5 p('5'))

    def __post_init__(self) -> None:
        if len(self.values) != len(self.strings):
            raise RaftlmError("grid needs one string per value: give as many strings as values")
        if len(self.values) < (1 if self.single else 2):
            raise RaftlmError(
                f"grid has {len(self.values)} value(s): give at least 2 values, e.g. --grid 1-5 (lemma 3 needs min "
                "and max; the one-token ablation of table 13 needs --single-value-grid)"
            )
        if any(not math.isfinite(v) for v in self.values):
            raise RaftlmError("grid values must be finite numbers: fix the --grid spec")
        if len(set(self.values)) != len(self.values):
            raise RaftlmError(f"grid has duplicate values {list(self.values)}: list each value once")
        if len(set(self.strings)) != len(self.strings) or any(not s for s in self.strings):
            raise RaftlmError(
                f"grid strings {list(self.strings)} must be distinct and non-empty: fix the --grid spec"
            )

    @classmethod
    def from_values(cls, values, decimals: int | None = None) -> Grid:
        """Grid whose strings are the values printed with ``decimals`` places (inferred when None)."""
        values = [float(v) for v in values]
        if decimals is None:
            decimals = 0 if all(v == int(v) for v in values) else max(_decimals(v) for v in values)
        return cls(tuple(values), tuple(_fmt(v, decimals) for v in values))

    @classmethod
    def range(cls, start: float, stop: float, step: float) -> Grid:
        """Equally spaced grid start..stop inclusive, e.g. ``Grid.range(0, 5, 0.1)`` -> '0.0'..'5.0'."""
        if step <= 0 or stop <= start:
            raise RaftlmError(f"bad grid range {start}:{stop}:{step}: need start < stop and step > 0")
        decimals = _decimals(step)
        n = int(round((stop - start) / step)) + 1
        if n > MAX_GRID:
            raise RaftlmError(
                f"grid {start:g}:{stop:g}:{step:g} has {n:,} values, more than {MAX_GRID:,}: use a coarser step"
            )
        if abs(start + (n - 1) * step - stop) > 1e-9 * max(1.0, abs(stop)):
            raise RaftlmError(
                f"grid step {step:g} does not divide {start:g}..{stop:g} (the end is inclusive): choose a step "
                f"that divides {stop - start:g} exactly"
            )
        return cls.from_values([round(start + i * step, decimals) for i in range(n)], decimals)

    @classmethod
    def parse(cls, spec: str, single: bool = False) -> Grid:
        """Parse a CLI grid spec.

        ``1-5`` digits 1..5; ``0:5:0.1`` a range with a step; ``1,2,3`` explicit values (strings as
        written, so ``1.0,2.0`` emits '1.0'); ``1=a,2=b,3=c`` custom strings per value (eq. 15).
        ``single`` admits a one-value grid such as ``5`` (table 13).
        """
        spec = spec.strip()
        try:
            if "=" in spec:
                pairs = [p.split("=", 1) for p in spec.split(",")]
                return cls(tuple(float(v) for v, _ in pairs), tuple(s for _, s in pairs), single)
            if spec.count(":") == 2:
                start, stop, step = (float(p) for p in spec.split(":"))
                return cls.range(start, stop, step)
            if "," in spec or re.fullmatch(r"[+-]?[\d.]+", spec):
                parts = [p.strip() for p in spec.split(",")]
                return cls(tuple(float(p) for p in parts), tuple(parts), single)
            digits = re.fullmatch(r"(\d+)-(\d+)", spec)
            if digits and int(digits[1]) > int(digits[2]):
                raise RaftlmError(
                    f"grid {short(spec)} runs from {digits[1]} down to {digits[2]}: write LOW-HIGH, e.g. 1-5"
                )
            if digits and int(digits[2]) - int(digits[1]) + 1 > MAX_GRID:
                raise RaftlmError(
                    f"grid {short(spec)} has more than {MAX_GRID:,} values: use a smaller range or a range "
                    "with a step, e.g. 0:1000:10"
                )
            if digits:
                return cls.from_values(range(int(digits[1]), int(digits[2]) + 1), 0)
        except ValueError as err:
            if isinstance(err, RaftlmError):
                raise
            raise RaftlmError(
                f"cannot parse grid spec {short(spec)}: use e.g. 1-5, 0:5:0.1, 1,2,3 or 1=a,2=b"
            ) from None
        raise RaftlmError(f"cannot parse grid spec {short(spec)}: use e.g. 1-5, 0:5:0.1, 1,2,3 or 1=a,2=b")

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    @property
    def low(self) -> float:
        """The smallest value RAIL can reach (a one-value grid also reaches 0, with no mass on it)."""
        return min(self.values) if not self.single else min(0.0, self.values[0])

    @property
    def high(self) -> float:
        return max(self.values) if not self.single else max(0.0, self.values[0])

    def nearest_string(self, y: float) -> str:
        """The string of the grid value closest to y (the class label for generative classification)."""
        return self.strings[int(np.argmin(np.abs(self.array - y)))]

    def value_of(self, text: str) -> float | None:
        """Inverse of the string map: the value a grid string stands for, else None."""
        try:
            return self.values[self.strings.index(text)]
        except ValueError:
            return None

    def spec(self) -> str:
        """A spec that ``Grid.parse`` reads back into this grid: ``1-5``, ``1,2.5,4`` or ``1=a,2=b``."""
        lo, hi = self.values[0], self.values[-1]
        steps = tuple(float(v) for v in range(int(lo), int(hi) + 1)) if lo == int(lo) else ()
        if len(self.values) > 1 and lo >= 0 and self.values == steps:
            if self.strings == tuple(str(int(v)) for v in self.values):
                return f"{int(lo)}-{int(hi)}"
        with contextlib.suppress(RaftlmError):
            listed = ",".join(self.strings)
            if "=" not in listed and Grid.parse(listed, self.single) == self:
                return listed
        return ",".join(f"{_exact(v)}={s}" for v, s in zip(self.values, self.strings, strict=True))

    def to_dict(self) -> dict:
        return {"values": list(self.values), "strings": list(self.strings), "single": self.single}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        return cls(tuple(d["values"]), tuple(d["strings"]), d.get("single", False))


MAX_GRID = 10_000  # grid values: each is a string the model scores at every prediction


def _decimals(x: float) -> int:
    """Decimal places of ``x`` as written (1e-05 has 5)."""
    text = np.format_float_positional(float(x), trim="-")
    return len(text.split(".")[1]) if "." in text else 0


@dataclass(frozen=True)
class TargetScaler:
    """Affine map from the data range [data_low, data_high] onto the grid range [grid_low, grid_high]."""

    data_low: float
    data_high: float
    grid_low: float
    grid_high: float

    def __post_init__(self) -> None:
        if not self.data_high > self.data_low:
            raise RaftlmError(
                f"target range [{self.data_low}, {self.data_high}] is empty: targets need at least two distinct values"
            )

    @classmethod
    def identity(cls, grid: Grid) -> TargetScaler:
        return cls(grid.low, grid.high, grid.low, grid.high)

    @property
    def _slope(self) -> float:
        return (self.grid_high - self.grid_low) / (self.data_high - self.data_low)

    def to_grid(self, y):
        return self.grid_low + (np.asarray(y, dtype=np.float64) - self.data_low) * self._slope

    def to_data(self, g):
        return self.data_low + (np.asarray(g, dtype=np.float64) - self.grid_low) / self._slope

    def to_dict(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("data_low", "data_high", "grid_low", "grid_high")}

    @classmethod
    def from_dict(cls, d: dict) -> TargetScaler:
        return cls(**d)


# how a message names the fix, for `raftlm train` and RAFTRegressor alike (make_scaler is reached from both)
FIXED_RANGE = "--target-range LO,HI (target_range=[LO, HI] in RAFTRegressor)"


def make_scaler(grid: Grid, targets, target_range) -> TargetScaler:
    """Resolve a ``target_range`` setting: None (no scaling), "auto" (the targets' min..max) or [lo, hi].

    Warns when scaled targets fall outside the grid's [min, max]: the RAIL predictor cannot reach them.
    """
    y = np.asarray([t for t in targets if t is not None], dtype=np.float64)
    if target_range is None or target_range == "none":
        scaler = TargetScaler.identity(grid)
    elif target_range == "auto":
        if y.size == 0:
            raise RaftlmError(f"target_range 'auto' needs training targets: give {FIXED_RANGE}")
        if y.min() == y.max():  # (a small file's random 80 % can hold one value of several)
            raise RaftlmError(
                f"every training target is {y[0]:g} ({y.size} of them), and target_range 'auto' maps the "
                f"training targets' min..max onto the grid: give more rows, or {FIXED_RANGE}"
            )
        scaler = TargetScaler(float(y.min()), float(y.max()), grid.low, grid.high)
    else:
        lo, hi = (float(v) for v in target_range)
        scaler = TargetScaler(lo, hi, grid.low, grid.high)
    if y.size:
        g = scaler.to_grid(y)
        outside = int(((g < grid.low - 1e-9) | (g > grid.high + 1e-9)).sum())
        if outside:
            warn(
                f"{outside}/{y.size} targets fall outside the grid range [{grid.low:g}, {grid.high:g}] "
                "(RAIL cannot reach them; lemma 3 needs the grid to span the targets): "
                "set --target-range auto or widen --grid (target_range='auto', grid= in RAFTRegressor)",
            )
    return scaler


def _exact(v: float) -> str:
    """``v`` written short (``1``, ``2.5``) where that reads back the same number, else in full (``:g``
    keeps 6 digits: 1234567 would come back as 1.23457e+06)."""
    short_form = f"{v:g}"
    return short_form if float(short_form) == v else repr(float(v))
