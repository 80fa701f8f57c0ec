"""Real pretrained model (Gemma 3 270M from the PyPI package): `make test-slow`."""

import numpy as np
import pytest
import torch
from helpers import SHARED_STSB

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.grid import Grid
from raftlm.pipeline import new_predictor
from raftlm.scoring import naive_log_probs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_STSB.exists(), reason="../shared/data/stsb is absent"),
]


@pytest.fixture(scope="module")
def gemma():
    cfg = Config.build(
        {"model": {"name": "gemma-3-270m"}, "data": {"dataset": "stsb-1k", "data_dir": str(SHARED_STSB)}}
    )
    splits = load_splits(cfg.data)
    return new_predictor(cfg, splits), splits


def test_gemma_answer_format_and_zero_shot_rail_on_stsb(gemma):
    predictor, splits = gemma
    tok = predictor.tokenizer
    assert predictor.fmt.fold_prefix  # Gemma: ' 3' is '▁' + '3'; the '▁' is teacher-forced
    assert [tok.decode(list(c)) for c in predictor.fmt.candidates] == list("012345")  # STS-B's grid
    texts = [e.text for e in splits.test[:16]]
    preds = predictor.predict(texts, "rail", batch_size=8)
    assert preds.probs.shape == (16, 6) and np.all(preds.probs.sum(-1) < 1)
    assert np.all(preds.probs.sum(-1) > 0.3)  # the base model puts real mass on the digit answers
    assert np.all((preds.values > 0) & (preds.values < 5))


def test_gemma_multi_token_grid_equals_brute_force(gemma):
    predictor, splits = gemma
    from raftlm.predictor import Predictor

    multi = Predictor.create(
        predictor.model,
        predictor.tokenizer,
        Grid.parse("0:1:0.5"),
        predictor.scaler,
        [e.text for e in splits.train[:4]],
    )
    texts = [e.text for e in splits.test[:2]]
    fast = torch.tensor(multi.grid_log_probs(texts, batch_size=2))
    with torch.no_grad():
        slow = naive_log_probs(multi.model, multi.tokenizer, multi.fmt, texts).double()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_gemma_20_step_raft_lowers_the_training_loss(tmp_path):
    from raftlm.pipeline import train_run

    cfg = Config.build(
        {
            "model": {"name": "gemma-3-270m", "trainable": "top-4"},
            "data": {
                "dataset": "stsb-1k",
                "data_dir": str(SHARED_STSB),
                "train_size": 80,
                "val_size": 32,
                "max_length": 128,
            },
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 20,
                "batch_size": 8,
                "lr": 1e-4,
                "eval_steps": 20,
                "logging_steps": 5,
                "bf16": True,
            },
            "eval": {"bf16": True},
        }
    )
    import json

    run = train_run(cfg)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 4 and np.mean(losses[2:]) < losses[0]
