"""Decision rules: small pure functions from grid probabilities (or decoded samples) to numbers.

``values`` has shape (G,), ``probs`` shape (N, G) holding p(str(y) | x) for each grid value y.
"""

from __future__ import annotations

import re

import numpy as np

from raftlm.core import DecisionRule

NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def rail(values: np.ndarray, probs: np.ndarray, normalize_grid: bool = False) -> np.ndarray:
    """Eq. 5: sum_y p(str(y)|x) * y; with ``normalize_grid`` the grid mass is renormalized to 1 (table 16)."""
    probs = np.asarray(probs, dtype=np.float64)
    out = probs @ np.asarray(values, dtype=np.float64)
    return out / probs.sum(-1) if normalize_grid else out


def mode(values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Eq. 2: the grid value with the highest probability."""
    return np.asarray(values, dtype=np.float64)[np.argmax(probs, axis=-1)]


def median(values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The grid median (Bayes-optimal for absolute error): smallest y with P(Y <= y) >= half the grid mass."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values)
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64)[:, order], axis=-1)
    idx = (cdf >= 0.5 * cdf[:, -1:] - 1e-12).argmax(-1)
    return values[order][idx]


def grid_share(probs: np.ndarray) -> np.ndarray:
    """Each row renormalized over the grid; a row without grid mass counts as uniform (not 0/0)."""
    p = np.asarray(probs, dtype=np.float64)
    mass = p.sum(-1, keepdims=True)
    return np.where(mass > 0, p / np.where(mass > 0, mass, 1.0), 1.0 / p.shape[-1])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the grid distribution, normalized over the grid (``grid_share``): a row without
    grid mass has the uniform one, log of the grid size."""
    p = grid_share(probs)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)


def parse_float(text: str, default: float = 0.0) -> float:
    """Eq. 1's float(z): the number a decoded string starts with, else ``default`` (the paper's 0.0).

    Rules: leading whitespace is skipped; the longest numeric prefix is read ('3.8\\nThe' -> 3.8,
    '4.' -> 4.0, '-2e1' -> -20.0); anything else (' banana', '', 'nan', 'inf') gives ``default``.
    """
    match = NUMBER.match(text.lstrip())
    if not match:
        return default
    value = float(match.group(0))
    return value if np.isfinite(value) else default


def sample_mean(samples: list[list[str]], default: float = 0.0) -> np.ndarray:
    """Eq. 4 estimated by sampling: the mean of the parsed samples of each example."""
    return np.array([np.mean([parse_float(s, default) for s in row]) for row in samples])


# Decoders that read grid probabilities; `greedy` and `sample-rail` decode text instead (``Predictor.predict``).
GRID_DECODERS: dict[str, DecisionRule] = {"rail": rail, "mode": mode, "median": median}
TEXT_DECODERS = ("greedy", "sample-rail")
DECODERS = (*GRID_DECODERS, *TEXT_DECODERS)


def text_decoded(what: str, decoder: str, fix: str) -> str:
    """The one wording, in every interface, of asking a text decoder for what only the grid distribution
    gives (probabilities, a summary, intervals): ``decoder`` as the interface spells it (``--decoder
    greedy``, ``decoder='greedy'``), ``fix`` what to do instead."""
    return f"{what} reads the grid distribution, which {decoder} does not give (it decodes text): {fix}"


def one_number(what: str, fix: str) -> str:
    """The same for a head run, which predicts one number and has no grid distribution at all."""
    return f"{what} reads the grid distribution, and this model predicts one number (a head): {fix}"


def decode(decoder: str, values: np.ndarray, probs: np.ndarray, normalize_grid: bool = False) -> np.ndarray:
    """Grid decoder ``decoder`` of ``GRID_DECODERS`` applied to ``probs`` (grid units); only RAIL reads
    ``normalize_grid`` (the mode and median are the same either way)."""
    rule = GRID_DECODERS[decoder]
    values = np.asarray(values, dtype=np.float64)
    return rule(values, probs, normalize_grid) if decoder == "rail" else rule(values, probs)
