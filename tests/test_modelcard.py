"""A run directory explains itself: its README.md, and scoring it with plain transformers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import train_args, write_csv

from raftlm.cli import main
from raftlm.modelcard import model_card

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "score_with_transformers.py"
WORDS = ["awful", "bad", "fine", "good", "great"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [
        {"review": f"it was {WORDS[i % 5]}{' very' * (i % 4)}", "target": 1 + i % 5 + 0.5 * (i % 2)}
        for i in range(40)
    ]
    return write_csv(tmp_path_factory.mktemp("card") / "toy.csv", rows)


def _train(data: Path, out: Path, *extra: str) -> Path:
    assert main(train_args(data, out, "--template", "Review: {review}. Stars:", "--lr", "1e-3", *extra)) == 0
    return out


def _predict(run: Path, data: Path, out: Path) -> list[float]:
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(out)]) == 0
    return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]


@pytest.mark.parametrize(
    "extra", [(), ("--grid", "1:5:0.5", "--normalize-grid")], ids=["digits", "multi-token-normalized"]
)
def test_plain_transformers_script_equals_raftlm_predict(data, tmp_path, extra):
    run = _train(data, tmp_path / "run", *extra)
    expected = _predict(run, data, tmp_path / "preds.jsonl")
    # run the example without raftlm: it must not import it
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert not [m for m in sys.modules if m.startswith('raftlm')], 'imported raftlm'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLE), str(run), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line)["prediction"] for line in proc.stdout.splitlines()]
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 1e-4  # the rows differ, so the comparison means something


def test_every_run_has_a_model_card_whose_snippet_scores_like_raftlm(data, tmp_path):
    run = _train(data, tmp_path / "run")
    card = (run / "README.md").read_text()
    results = json.loads((run / "eval_results.json").read_text())
    for fragment in [
        "| base model | `tiny-random-llama` |",
        "| method | `raft` |",
        "Review: {review}. Stars:",
        "1 -> '1', 2 -> '2', 3 -> '3', 4 -> '4', 5 -> '5'",
        f"{results['test']['rmse']:.4f}",
        f"Validation RMSE {results['train']['best_validation_rmse']:.4f}",
        "y = 1 + (g - 1) * (5.5 - 1) / (5 - 1)",
    ]:
        assert fragment in card, fragment
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    snippet = snippet.replace("RUN_DIR", str(run)).replace('"..."', '"it was good very"')
    scope: dict = {}
    exec(snippet, scope)  # the card's own code, as a user would paste it
    rows = [{"review": "it was good very", "target": 1}]
    expected = _predict(run, write_csv(tmp_path / "one.csv", rows), tmp_path / "one.jsonl")
    assert float(scope["y"]) == pytest.approx(expected[0], abs=1e-5)


def test_a_card_without_config_or_metrics_says_so():
    meta = {
        "method": "raft",
        "grid": {"values": [1.0, 2.0], "strings": ["1", "2"]},
        "scaler": {"data_low": 0.0, "data_high": 1.0, "grid_low": 1.0, "grid_high": 2.0},
        "template": "{text}",
        "answer_prefix": " ",
        "fold_prefix": True,
        "candidates": [[5], [6]],
        "normalize_grid": False,
        "max_length": 512,
        "head": None,
    }
    card = model_card(meta, None, None)
    assert "not recorded" in card and "Not evaluated when saved" in card and "```python" in card
    head = model_card({**meta, "head": {"class": "PooledHead", "kwargs": {}}}, None, None)
    assert "`PooledHead` head" in head and "```python" not in head
