"""A symmetric pair (``--pair-swap sentence1,sentence2``, issue 40's lever for STS-B): training sees both
orders of each pair, and every prediction is the mean of both orders' grid distributions, through the CLI,
the Python API, validation and calibration alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SHARED_STSB, train_args, write_csv

from raftlm.cli import main
from raftlm.core import RaftlmError

WORDS = ["cats", "dogs", "rain", "sun", "tea"]
TEMPLATE = "A: {sentence1}\\nB: {sentence2}\\nSimilar (0-5):"


def pairs(n: int) -> list[dict]:
    return [
        {"sentence1": f"{WORDS[i % 5]} again {i}", "sentence2": f"{WORDS[(i * 3) % 5]} now", "score": i % 6}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    data = write_csv(d / "pairs.csv", pairs(120))
    extra = [
        "--template",
        TEMPLATE,
        "--target-column",
        "score",
        "--grid",
        "0-5",
        "--pair-swap",
        "sentence1,sentence2",
    ]
    assert main([*train_args(data, d / "run"), *extra]) == 0
    return d / "run", data


def test_predictions_are_the_mean_of_both_orders_and_symmetric(run, tmp_path):
    from raftlm import RAFTRegressor

    run_dir, data = run
    swapped = [{**r, "sentence1": r["sentence2"], "sentence2": r["sentence1"]} for r in pairs(12)]
    write_csv(tmp_path / "a.csv", pairs(12))
    write_csv(tmp_path / "b.csv", swapped)
    for name in ("a", "b"):
        argv = ["predict", "--model", str(run_dir), "--input", str(tmp_path / f"{name}.csv"), "--with-probs"]
        assert main([*argv, "--output", str(tmp_path / f"{name}.jsonl")]) == 0
    a, b = ([json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in "ab")
    # (the same two prompts, in other batch positions: float32's last digits, 1.1e-8 with transformers 5.25)
    np.testing.assert_allclose([r["prediction"] for r in a], [r["prediction"] for r in b], atol=1e-7)
    # the mean of the two orders scored one at a time by the same weights
    reg = RAFTRegressor.load(str(run_dir))
    assert reg.get_params()["pair_swap"] == "sentence1,sentence2"
    p = reg.predictor_
    rows = pairs(12)
    texts = [TEMPLATE.replace("\\n", "\n").format(**r) for r in rows]
    other = [
        TEMPLATE.replace("\\n", "\n").format(
            **{**r, "sentence1": r["sentence2"], "sentence2": r["sentence1"]}
        )
        for r in rows
    ]
    one = p.predict(texts, "rail").values
    two = p.predict(other, "rail").values
    np.testing.assert_allclose([r["prediction"] for r in a], (one + two) / 2, atol=1e-6)
    np.testing.assert_allclose(
        reg.predict([{k: r[k] for k in ("sentence1", "sentence2")} for r in rows]), (one + two) / 2, atol=1e-6
    )
    probs = reg.predict_proba([{k: r[k] for k in ("sentence1", "sentence2")} for r in rows])
    np.testing.assert_allclose(probs, [list(r["probs"].values()) for r in a], atol=1e-6)


def test_training_sees_both_orders(run):
    from raftlm.pipeline import both_orders
    from raftlm.run import load_run

    run_dir, data = run
    predictor = load_run(run_dir)
    from raftlm.files import read_rows, to_examples

    train = to_examples(read_rows(data)[:3], predictor.template, "score", "pairs.csv")
    doubled = both_orders(predictor, train)
    assert len(doubled) == 6 and [e.target for e in doubled] == [e.target for e in train] * 2
    assert doubled[3].text == train[0].text.replace("cats again 0", "X").replace(
        "cats now", "cats again 0"
    ).replace("X", "cats now")


def test_a_pair_the_template_lacks_is_one_line(tmp_path, capsys):
    data = write_csv(tmp_path / "pairs.csv", pairs(40))
    extra = ["--template", TEMPLATE, "--target-column", "score", "--pair-swap", "sentence1,question"]
    assert main([*train_args(data, tmp_path / "run"), *extra]) == 2
    assert "pair_swap names 'question', which the prompt template" in capsys.readouterr().err
    with pytest.raises(RaftlmError, match="name two template fields"):
        from raftlm.config import Config

        Config.build({"data": {"pair_swap": "sentence1"}})


def test_the_default_takes_the_datasets_own_pair():
    """``pair_swap: dataset`` (the default): STS-B's two sentences; no pair for a dataset without one, nor
    for a template that dropped one of its fields; ``none`` turns it off."""
    from raftlm.config import Config
    from raftlm.core import Example, Splits
    from raftlm.pipeline import symmetric_pair

    assert Config().data.pair_swap == "dataset"
    assert Config.build({"data": {"pair_swap": "none"}}).data.pair_swap is None
    stsb_like = Splits([Example("x", 1.0)], [], [], TEMPLATE, grid="0-5", pair_swap="sentence1,sentence2")
    assert symmetric_pair("dataset", stsb_like, TEMPLATE) == ["sentence1", "sentence2"]
    assert symmetric_pair("dataset", stsb_like, "A: {sentence1} only:") is None
    assert symmetric_pair(None, stsb_like, TEMPLATE) is None
    csv_like = Splits([Example("x", 1.0)], [], [], TEMPLATE)
    assert symmetric_pair("dataset", csv_like, TEMPLATE) is None
    assert symmetric_pair("sentence2,sentence1", csv_like, TEMPLATE) == ["sentence2", "sentence1"]


@pytest.mark.skipif(not SHARED_STSB.exists(), reason="../shared/data/stsb is absent")
def test_stsb_carries_its_pair():
    from raftlm.config import DataConfig
    from raftlm.data import load_splits

    for name in ("stsb", "stsb-1k"):
        assert (
            load_splits(DataConfig(dataset=name, data_dir=str(SHARED_STSB))).pair_swap
            == "sentence1,sentence2"
        )


def _client(run_dir):
    from fastapi.testclient import TestClient

    from raftlm.config import Config, ServeSettings
    from raftlm.pipeline import load_for_eval
    from raftlm.serve import create_app, run_info

    cfg = Config.from_yaml(str(run_dir / "config.yaml"), {"model.name": str(run_dir)})
    predictor = load_for_eval(cfg, None)
    settings = ServeSettings(port=0)
    return TestClient(
        create_app(predictor, cfg, settings, run_info(run_dir, predictor, cfg, settings))
    ), predictor


def test_the_server_averages_both_orders_too(run, tmp_path):
    run_dir, _ = run
    rows = [{k: r[k] for k in ("sentence1", "sentence2")} for r in pairs(6)]
    write_csv(tmp_path / "a.csv", rows)
    assert (
        main(
            [
                "predict",
                "--model",
                str(run_dir),
                "--input",
                str(tmp_path / "a.csv"),
                "--output",
                str(tmp_path / "a.jsonl"),
            ]
        )
        == 0
    )
    want = [json.loads(x)["prediction"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    client, _ = _client(run_dir)
    with client:
        got = client.post("/predict", json={"inputs": rows}).json()["predictions"]
        flipped = [{"sentence1": r["sentence2"], "sentence2": r["sentence1"]} for r in rows]
        back = client.post("/predict", json={"inputs": flipped}).json()["predictions"]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(back, want, atol=1e-6)


def test_a_prediction_that_is_not_a_number_is_null_not_a_500(run, monkeypatch):
    import raftlm.serve
    from raftlm.predictor import Predictions

    run_dir, _ = run
    client, predictor = _client(run_dir)
    monkeypatch.setattr(
        raftlm.serve,
        "predict_texts",
        lambda p, texts, cfg, desc=None: Predictions(np.full(len(texts), np.nan)),
    )
    client, _ = _client(run_dir)  # its batcher now predicts NaN (a diverged model)
    with client:
        answer = client.post("/predict", json={"inputs": [{"sentence1": "a b", "sentence2": "c d"}]})
    assert answer.status_code == 200 and answer.json()["predictions"] == [None]


def test_raft_head_averages_both_orders_distributions_and_corrections(tmp_path):
    """raft-head on a symmetric pair: each row's grid probabilities and correction are the means of both
    orders', and its prediction the mean of both orders' (RAIL is linear, so also RAIL + the mean shift)."""
    from raftlm.run import load_run

    data = write_csv(tmp_path / "pairs.csv", pairs(40))
    extra = ["--template", TEMPLATE, "--target-column", "score", "--grid", "0-5", "--method", "raft-head"]
    assert main([*train_args(data, tmp_path / "run"), *extra, "--pair-swap", "sentence1,sentence2"]) == 0
    write_csv(tmp_path / "a.csv", pairs(8))
    out = tmp_path / "a.jsonl"
    argv = ["predict", "--model", str(tmp_path / "run"), "--input", str(tmp_path / "a.csv"), "--with-probs"]
    assert main([*argv, "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    p = load_run(tmp_path / "run")
    fill = TEMPLATE.replace("\\n", "\n").format
    one = p.predict([fill(**r) for r in pairs(8)])
    two = p.predict(
        [fill(**{**r, "sentence1": r["sentence2"], "sentence2": r["sentence1"]}) for r in pairs(8)]
    )
    np.testing.assert_allclose([r["prediction"] for r in rows], (one.values + two.values) / 2, atol=1e-6)
    np.testing.assert_allclose([r["correction"] for r in rows], (one.shift + two.shift) / 2, atol=1e-6)
    np.testing.assert_allclose(
        [list(r["probs"].values()) for r in rows], (one.probs + two.probs) / 2, atol=1e-6
    )
    assert np.abs(one.shift - two.shift).max() > 1e-6  # the orders differ, so the mean is not trivial
