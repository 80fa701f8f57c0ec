"""The small interfaces everything else implements: examples, scorers and decision rules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class RaftlmError(ValueError):
    """A user-facing error: one line that names the problem and the fix (CLI exit code 2)."""


@dataclass(frozen=True)
class Example:
    """One regression example: the rendered prompt text and its numeric target (None when unknown)."""

    text: str
    target: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise RaftlmError(
                "empty text in an example: every input needs non-empty text (drop or fill the row)"
            )
        if self.target is not None and not math.isfinite(self.target):
            raise RaftlmError(
                f"non-finite target {self.target!r}: drop or fix rows whose target is NaN or inf"
            )


class GridScorer(Protocol):
    """Anything that returns log p(str(y) | x) for every grid value y, shape (n_texts, n_grid)."""

    def score(self, texts: list[str]) -> np.ndarray: ...


class DecisionRule(Protocol):
    """A pure function from grid values and per-example grid probabilities to point predictions."""

    def __call__(self, values: np.ndarray, probs: np.ndarray) -> np.ndarray: ...
