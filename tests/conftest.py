from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_csv

from raftlm.testing import tiny_random_llama


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): 2 layers, 32 dims, random init; digits and the space before them are own tokens."""
    return tiny_random_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_merged():
    """Same size, but a BPE where ' 3' may be a single token (GPT-2 style)."""
    return tiny_random_llama(seed=0, isolate_digits=False)


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    words = ["awful", "bad", "fine", "good", "great"]
    rows = [
        {
            "text": f"review {i}: the product was {words[i % 5]}. rating:",
            "target": (i % 5) + 1 + 0.5 * (i % 2),
        }
        for i in range(40)
    ]
    return write_csv(tmp_path / "toy.csv", rows)


@pytest.fixture
def bf16_warning(monkeypatch):
    """Sets this process's CPU as one with (``bf16_warning(True)``) or without bf16 units, the
    once-per-process slow-bf16 warning rearmed; rearmed again afterwards for the real CPU."""
    from raftlm import core

    def cpu(has_bf16: bool) -> None:
        monkeypatch.setattr(core, "cpu_bf16_is_fast", lambda: has_bf16)
        monkeypatch.setattr(core, "cpu_bf16_speedup", lambda: 2.0 if has_bf16 else None)  # None: no units
        core.warn_slow_bf16.cache_clear()

    yield cpu
    core.warn_slow_bf16.cache_clear()
