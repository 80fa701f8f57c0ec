"""Issue 40, item 3's lever "RAFT + a small head correction": method raft-head predicts RAIL + b + w^T
mean-pool(e_out(x)) from one forward pass, trained with RAFT's loss on that sum (+ 1.0 x CE, two-hot)."""

import json

import numpy as np
import pytest
import torch
from helpers import train_args
from torch.testing import assert_close

from raftlm.cache import build_store, skip_frozen
from raftlm.cli import main
from raftlm.config import Config
from raftlm.core import Example, RaftlmError
from raftlm.heads import HEAD_CLASSES, RAILCorrectionHead
from raftlm.losses import RAFTLoss, ce_targets
from raftlm.methods import METHODS
from raftlm.pipeline import make_trainable, new_predictor
from raftlm.report import label
from raftlm.run import load_run
from raftlm.scoring import PromptBatch
from raftlm.training import build_features, frozen_blocks_to_cache, make_collator

WORDS = ["awful", "bad", "fine", "good", "great"]
EXAMPLES = [Example(f"review {i}: " + "so " * i + f"{WORDS[i % 5]}. rating:", 1.0 + i % 5) for i in range(6)]


def predictor_for(grid="1-5", trainable="full", **method):
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "trainable": trainable},
            "method": {"method": "raft-head", "grid": grid, "target_range": "none", **method},
        }
    )
    predictor = new_predictor(cfg, EXAMPLES)
    make_trainable(predictor, cfg)
    return cfg, predictor


def batch_of(predictor, examples=EXAMPLES, store=None, method="raft-head"):
    feats = build_features(predictor, examples, method, None)
    inputs = make_collator(predictor.pad_id, store=store)(feats)
    batch = PromptBatch(
        inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False, inputs.get("hidden")
    )
    return batch, inputs["targets"]


def by_hand(predictor, batch):
    """RAIL of the predictor's own scorer + b + w^T (mean of the final states over each row's real tokens)."""
    head = predictor.head
    rail = predictor.scorer(predictor.model, batch).exp() @ torch.tensor(predictor.grid.values)
    states = predictor.model.model(**batch.model_inputs()).last_hidden_state
    mask = batch.attention_mask[..., None].float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return rail + pooled @ head.correction.linear.weight[0] + head.correction.linear.bias[0]


# single-token strings, and '1.5' (its paths read through the KV cache)
@pytest.mark.parametrize("grid", ["1-5", "1:5:0.5"])
def test_starts_at_rail_and_equals_rail_plus_the_pooled_correction_by_hand(grid):
    _, predictor = predictor_for(grid)
    head = predictor.head
    assert isinstance(head, RAILCorrectionHead) and predictor.fmt.single_token == (grid == "1-5")
    batch, _ = batch_of(predictor)
    with torch.no_grad():
        rail = predictor.scorer(predictor.model, batch).exp() @ torch.tensor(predictor.grid.values)
        assert_close(head(predictor.model, batch), rail, atol=1e-6, rtol=0)  # w = 0, b = 0: RAIL itself
        torch.nn.init.normal_(head.correction.linear.weight)
        head.correction.linear.bias.fill_(0.25)
        assert_close(head(predictor.model, batch), by_hand(predictor, batch), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(head(predictor.model, batch), rail, atol=1e-3)


def test_loss_is_the_squared_error_of_the_sum_plus_the_two_hot_ce():
    cfg, predictor = predictor_for()
    loss_fn = METHODS["raft-head"].loss(predictor, cfg.method)
    assert isinstance(loss_fn, RAFTLoss) and loss_fn.correction is predictor.head
    assert (loss_fn.ce_weight, loss_fn.ce_target) == (1.0, "two-hot")  # raft's defaults
    torch.nn.init.normal_(predictor.head.correction.linear.weight)
    batch, _ = batch_of(predictor)
    targets = torch.tensor([1.0, 2.25, 3.0, 4.5, 5.0, 1.75])
    log_probs = predictor.scorer(predictor.model, batch)
    values = torch.tensor(predictor.grid.values)
    expected = ((by_hand(predictor, batch) - targets) ** 2).mean() - (
        ce_targets(targets, values, "two-hot") * log_probs
    ).sum(-1).mean()
    assert_close(loss_fn(predictor.model, batch, targets), expected, atol=1e-5, rtol=1e-5)
    # the squared error reaches both parts: the correction's weights and the LM's
    loss_fn(predictor.model, batch, targets).backward()
    assert predictor.head.correction.linear.weight.grad.abs().sum() > 0
    assert predictor.model.model.layers[1].mlp.up_proj.weight.grad.abs().sum() > 0


def test_rebuilt_from_its_config_predicts_the_same():
    _, predictor = predictor_for("1:5:0.5")
    head = predictor.head
    torch.nn.init.normal_(head.correction.linear.weight)
    config = head.config()
    assert json.loads(json.dumps(config)) == config  # what raftlm.json stores
    assert config["values"] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0] and config["pooling"] == "mean"
    rebuilt = HEAD_CLASSES["RAILCorrectionHead"](**config)
    rebuilt.load_state_dict(head.state_dict())
    batch, _ = batch_of(predictor)
    with torch.no_grad():
        assert_close(rebuilt(predictor.model, batch), head(predictor.model, batch))


def test_cached_loss_and_gradients_equal_the_uncached_path(tmp_path):
    cfg, predictor = predictor_for(trainable="top-1")
    predictor.model.train()
    torch.nn.init.normal_(predictor.head.correction.linear.weight)
    loss_fn = METHODS["raft-head"].loss(predictor, cfg.method)
    assert frozen_blocks_to_cache(predictor, cfg) == 1
    feats = build_features(predictor, EXAMPLES, "raft-head", None)
    store = build_store(predictor.model, [f["prompt_ids"] for f in feats], 1, predictor.pad_id, tmp_path)

    def loss_and_grads(store, k):
        model = predictor.model
        model.zero_grad()
        batch, targets = batch_of(predictor, store=store)
        with skip_frozen(model, k):
            loss = loss_fn(model, batch, targets)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss0, grads0 = loss_and_grads(None, 0)
    loss1, grads1 = loss_and_grads(store, 1)
    assert_close(loss1, loss0, atol=1e-6, rtol=1e-5)
    assert "raftlm_head.correction.linear.weight" in grads0 and grads0.keys() == grads1.keys()
    for name in grads0:
        assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-4, msg=name)


def test_cli_trains_saves_the_head_and_every_interface_predicts_its_sum(tmp_path, toy_csv):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--method", "raft-head")) == 0
    head = json.loads((run / "raftlm.json").read_text())["head"]
    assert head["class"] == "RAILCorrectionHead" and head["kwargs"]["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    loaded = load_run(run)
    texts = [line.split(",")[0] for line in toy_csv.read_text().splitlines()[1:]]
    sums = loaded.predict(texts).values
    rail = loaded.predict(texts, "rail").values  # a head model always predicts with its head
    np.testing.assert_array_equal(sums, rail)
    loaded.head = None  # the same run's RAIL alone: the correction trained away from 0
    assert np.abs(loaded.predict(texts).values - sums).max() > 1e-4
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    np.testing.assert_allclose([r["prediction"] for r in rows], sums, rtol=1e-5, atol=1e-6)


def test_report_names_it_after_raft_and_weighs_it_as_raft():
    row = {"method": "raft-head", "decoder": "head", "options": ""}
    assert label(row) == "RAFT + 1.0 x CE (two-hot target) + mean-pooled correction"
    assert METHODS["raft-head"].raft and METHODS["raft"].raft and not METHODS["head-pooled"].raft


def test_its_distribution_is_the_grid_distribution_shifted_by_the_correction(tmp_path, toy_csv):
    """raft-head keeps RAFT's grid distribution: --with-probs, --with-uncertainty, predict_proba and the
    grid intervals read it, shifted by the correction, so its mean is the prediction (every interface)."""
    from raftlm import RAFTRegressor
    from raftlm.uncertainty import grid_crps, grid_quantile, summarize

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--method", "raft-head")) == 0
    loaded = load_run(run)
    out = tmp_path / "preds.jsonl"
    args = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out), "--with-probs"]
    assert main([*args, "--with-uncertainty", "--interval", "0.8", "--interval-kind", "grid"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the Python API's grid probabilities (unrounded) are the CLI's (rounded to 6 places)
    reg = RAFTRegressor.load(str(run))
    texts = [line.split(",")[0] for line in toy_csv.read_text().splitlines()[1:]]
    probs = reg.predict_proba(texts)
    np.testing.assert_allclose([list(r["probs"].values()) for r in rows], probs, atol=1e-6)
    shift = np.array([r["correction"] for r in rows])
    assert list(rows[0]["probs"]) == ["1", "2", "3", "4", "5"] and np.abs(shift).max() > 1e-4
    data_grid = loaded.scaler.to_data(loaded.grid.array)  # toy targets 1..5.5: the scaler is not 1:1
    assert loaded.scaler.to_data(1.0) - loaded.scaler.to_data(0.0) != pytest.approx(1.0)
    rest = loaded.scaler.to_data(0.0)  # the off-grid mass sits at grid value 0, as RAIL puts it
    pred = np.array([r["prediction"] for r in rows])
    np.testing.assert_allclose(pred, probs @ data_grid + (1 - probs.sum(1)) * rest + shift, atol=1e-5)
    np.testing.assert_allclose([r["mean"] for r in rows], pred, atol=1e-5)
    plain = summarize(data_grid, probs, rest)  # the unshifted distribution's, moved by the correction
    np.testing.assert_allclose([r["median"] for r in rows], plain["median"] + shift, atol=1e-5)
    np.testing.assert_allclose([r["std"] for r in rows], plain["std"], atol=1e-5)
    q = grid_quantile(data_grid, probs, [0.1, 0.9], rest) + shift[:, None]  # the 80 % interval's ends
    np.testing.assert_allclose([[r["lower"], r["upper"]] for r in rows], q, atol=1e-5)
    np.testing.assert_allclose(reg.predict(texts), pred, atol=1e-5)  # the API's prediction is the CLI's
    mean, std = reg.predict(texts, return_std=True)
    np.testing.assert_allclose(std, [r["std"] for r in rows], atol=1e-6)
    _, bounds = reg.predict_interval(texts, 0.8, kind="grid")
    np.testing.assert_allclose(bounds[:, :, 0], [[r["lower"], r["upper"]] for r in rows], atol=1e-6)
    # evaluate scores the shifted distribution: its CRPS is the grid's at target - correction
    res = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run), "--input", str(toy_csv), "--output", str(res)]) == 0
    got = json.loads(res.read_text())
    y = np.array([float(line.split(",")[1]) for line in toy_csv.read_text().splitlines()[1:]])
    assert got["crps"] == pytest.approx(grid_crps(data_grid, probs, y - shift, rest).mean(), abs=1e-6)
    # appendix E.8's entropy analysis reads the same grid distribution
    res = tmp_path / "entropy.json"
    assert (
        main(["evaluate", "--model", str(run), "--input", str(toy_csv), "--output", str(res), "--entropy"])
        == 0
    )
    after = json.loads(res.read_text())["mean_entropy_after"]
    assert after == pytest.approx(float(np.mean([r["entropy"] for r in rows])), abs=1e-6)
    # and plain evaluate reports the distribution's entropy and grid mass, as for every grid model
    assert got["mean_entropy"] == pytest.approx(after, abs=1e-6)
    assert got["mean_grid_mass"] == pytest.approx(float(probs.sum(1).mean()), abs=1e-5)


def test_the_server_gives_its_distribution_exactly_as_raftlm_predict(tmp_path, toy_csv):
    """/predict on a raft-head run: probs, each row's correction, the uncertainty summary and a conformal
    interval (cqr: it has a grid distribution) are the numbers `raftlm predict` writes."""
    from test_serve import offline, post, server

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--method", "raft-head")) == 0
    assert main(["calibrate", str(run), "--input", str(toy_csv)]) == 0
    flags = ("--interval", "0.8", "--with-uncertainty", "--with-probs")
    expected = offline(run, toy_csv, tmp_path / "preds.jsonl", *flags)
    keys = [k for k in expected[0] if k not in ("index", "target")]
    assert {"correction", "probs", "lower", "median"} <= set(keys)
    texts = [line.split(",")[0] for line in toy_csv.read_text().splitlines()[1:]]
    options = {"interval": 0.8, "with_uncertainty": True, "with_probs": True}
    with server(run) as (base, _, _):
        got = post(base, {"inputs": [{"text": t} for t in texts], **options}).json()
    assert got["interval_kind"] == "cqr"
    names = {"prediction": "predictions"}
    for i, row in enumerate(expected):
        assert _close({k: got[names.get(k, k)][i] for k in keys}, {k: row[k] for k in keys}), i


def _close(a, b) -> bool:
    """Equal, floats up to float32's last digits: the server runs a request in one forward pass, `raftlm
    predict` in batches of eval.batch_size (with transformers 5.25 the batch size moves the last bit)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-7)
    return a == b


def test_mode_and_median_decode_its_shifted_distribution_alike_in_cli_api_and_server(
    tmp_path, toy_csv, capsys
):
    """--decoder mode / median on a raft-head run: the grid's mode / median + the row's correction (its
    distribution's), the same numbers from `raftlm predict`, the Python API and the server; a text decoder
    is refused in one line, as is any decoder other than rail for a plain head (it used to be ignored)."""
    from test_serve import offline, post, server

    from raftlm import RAFTRegressor
    from raftlm.decoders import median, mode

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--method", "raft-head")) == 0
    loaded = load_run(run)
    texts = [line.split(",")[0] for line in toy_csv.read_text().splitlines()[1:]]
    rail = offline(run, toy_csv, tmp_path / "rail.jsonl", "--with-probs")
    probs = np.array([list(r["probs"].values()) for r in rail])
    shift = np.array([r["correction"] for r in rail])
    data_grid = loaded.scaler.to_data(loaded.grid.array)
    reg = RAFTRegressor.load(str(run))
    for name, rule in (("median", median), ("mode", mode)):
        expected = rule(data_grid, probs) + shift  # the scaler is affine: a grid value's data value + shift
        rows = offline(run, toy_csv, tmp_path / f"{name}.jsonl", "--decoder", name, "--with-probs")
        got = np.array([r["prediction"] for r in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.abs(got - [r["prediction"] for r in rail]).max() > 1e-3  # not RAIL + the correction
        assert [r["correction"] for r in rows] == [r["correction"] for r in rail]
        np.testing.assert_allclose(reg.predict(texts, decoder=name), got, atol=1e-5)
        res = tmp_path / f"{name}-eval.json"
        argv = ["evaluate", "--model", str(run), "--input", str(toy_csv), "--output", str(res)]
        assert main([*argv, "--decoder", name]) == 0
        assert json.loads(res.read_text())["decoder"] == name
    with server(run, "--decoder", "median") as (base, _, _):
        answer = post(base, {"inputs": [{"text": t} for t in texts]}).json()
    median_rows = [json.loads(line) for line in (tmp_path / "median.jsonl").read_text().splitlines()]
    assert _close(answer["predictions"], [r["prediction"] for r in median_rows])

    capsys.readouterr()
    args = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(tmp_path / "g.jsonl")]
    assert main([*args, "--decoder", "greedy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "decoder 'greedy' does not apply to a raft-head model" in err and "rail, mode, median" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "g.jsonl").exists()
    with pytest.raises(RaftlmError, match="decoder 'greedy' does not apply to a raft-head model"):
        reg.predict(texts, decoder="greedy")

    # a plain head ignores every decoder: the API refuses one instead of silently predicting the head's number
    pooled = tmp_path / "pooled"
    assert main(train_args(toy_csv, pooled, "--method", "head-pooled")) == 0
    with pytest.raises(RaftlmError, match="decoder 'median' does not apply to a head-pooled model"):
        RAFTRegressor.load(str(pooled)).predict(texts, decoder="median")
    np.testing.assert_array_equal(  # rail, the default, is its head
        RAFTRegressor.load(str(pooled)).predict(texts, decoder="rail"),
        RAFTRegressor.load(str(pooled)).predict(texts),
    )
    fresh = tmp_path / "fresh"
    assert main(train_args(toy_csv, fresh, "--method", "head-pooled", "--decoder", "mode")) == 2
    assert "decoder 'mode' does not apply to a head-pooled model" in capsys.readouterr().err
    assert not fresh.exists()
    assert main(["serve", str(pooled), "--decoder", "median", "--port", "0"]) == 2  # before the model loads
    assert "decoder 'median' does not apply to a head-pooled model" in capsys.readouterr().err
