"""RAFTRegressor where it meets the command line and scikit-learn: a loaded run refits as a fresh estimator
would, the API says what `raftlm calibrate` says, applies eval.compile as `raftlm predict` does, and a
callback given to a grid search or cross-validation sees its fits."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from helpers import train_args, write_csv
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_score
from transformers import TrainerCallback

from raftlm import RaftlmError, api
from raftlm.api import RAFTRegressor
from raftlm.cli import main
from raftlm.core import RaftlmWarning

WORDS = ["awful", "bad", "fine", "good", "great"]
TEXTS = [f"review {i}: the product was {WORDS[i % 5]}. rating:" for i in range(20)]
Y = np.array([1.0 + i % 5 for i in range(20)])


def small(**kw) -> RAFTRegressor:
    return RAFTRegressor(
        **{
            "model": "tiny-random-llama",
            "max_steps": 1,
            "batch_size": 8,
            "lr": 1e-2,
            "progress_bar": False,
            **kw,
        }
    )


def test_a_loaded_csv_run_refits_with_the_range_of_the_new_data(tmp_path):
    """A run trained from a CSV (target_range left to the data: "dataset") came back with the range it
    resolved fixed (target_range=None for 1..5 on the grid 1-5), so clone(load(run)).fit on targets 0..190
    scaled nothing and warned that every target was off the grid; `raftlm train --config run/config.yaml`
    on a new file infers the range again, and so does the refit now."""
    rows = [{"text": t, "target": y} for t, y in zip(TEXTS, Y, strict=True)]
    csv = write_csv(tmp_path / "d.csv", rows)
    assert main(train_args(csv, tmp_path / "run", "--quiet", "--max-steps", "1")) == 0
    loaded = RAFTRegressor.load(str(tmp_path / "run"))
    assert loaded.get_params()["target_range"] == "auto"  # as a fresh RAFTRegressor's
    y = np.arange(20) * 10.0
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        refit = clone(loaded).set_params(progress_bar=False).fit(TEXTS, y)
    assert not [w for w in said if "outside the grid range" in str(w.message)]  # (20/20 were)
    scaler = refit.predictor_.scaler
    assert (scaler.data_low, scaler.data_high) == (0.0, 190.0)
    # a range the run's settings give stays (none: targets on the grid as they are)
    assert api._range_param([0.0, 10.0], "csv:d.csv", None) == [0.0, 10.0]
    assert api._range_param("none", "csv:d.csv", None) is None
    assert api._range_param("auto", "csv:d.csv", None) == "auto"
    # a named dataset's declared range is the run's, as it resolved it (synthetic's [-4, 4]): not inferred
    # again from a refit's rows, and get_params says how the run was trained
    assert api._range_param("dataset", "synthetic-original1", [-4.0, 4.0]) == [-4.0, 4.0]
    assert api._range_param("dataset", "in-memory", [1.0, 5.0]) == "auto"


def test_calibrate_warns_of_too_few_examples_as_the_cli_does(caplog):
    """`raftlm calibrate` warns when the calibration set is smaller than split conformal needs (20 for a
    95% interval); calibrate() said nothing."""
    reg = small(method="none").fit(TEXTS, Y)
    with caplog.at_level(logging.WARNING, logger="raftlm"):
        reg.calibrate(TEXTS[:20], Y[:20])
    assert "calibration example" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="raftlm"):
        reg.calibrate(TEXTS[:3], Y[:3])
    assert (
        "calibrate(): only 3 calibration example(s): split conformal intervals need more (0.8 needs 6"
        in caplog.text
    )


@pytest.fixture
def compiled(monkeypatch):
    """torch.compile recorded: what it compiled, and each call of the compiled function."""
    import torch

    calls: list[str] = []

    def fake_compile(fn, **kwargs):
        def run(*args, **kw):
            calls.append(fn.__qualname__)
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_eval_compile_reaches_the_model_api_predict_uses(tmp_path, compiled):
    """eval.compile (`raftlm predict --compile`, or a run's config) torch.compiles the model for
    prediction; fit().predict and load().predict ran it uncompiled."""
    small(method="none").fit(TEXTS, Y).predict(TEXTS[:2])
    assert compiled == []  # off by default
    reg = small(output_dir=str(tmp_path / "run"), settings={"eval": {"compile": True}}).fit(TEXTS, Y)
    reg.predict(TEXTS[:2])
    assert compiled and set(compiled) == {"LlamaForCausalLM.forward"}
    compiled.clear()
    RAFTRegressor.load(str(tmp_path / "run")).predict(TEXTS[:2])
    assert compiled and set(compiled) == {"LlamaForCausalLM.forward"}


class Fits(TrainerCallback):
    def __init__(self):
        self.fits = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.fits += 1


def test_clone_shares_callbacks_so_cross_validation_fits_reach_them():
    """clone deep-copied every callback (scikit-learn copies a list parameter's items), so a callback given
    to cross_val_score or GridSearchCV saw none of their fits."""
    watcher = Fits()
    reg = small(callbacks=[watcher], settings={"training": {"warmup_steps": 0}})
    twin = clone(reg)
    assert twin.callbacks[0] is watcher
    assert twin.settings == reg.settings and twin.settings is not reg.settings  # the rest copied, as before
    scores = cross_val_score(reg, TEXTS, Y, cv=KFold(2, shuffle=True, random_state=0), error_score="raise")
    assert len(scores) == 2 and watcher.fits == 2


def test_shared_refusals_name_the_parameter_the_api_user_passed(tmp_path, monkeypatch, capsys):
    """Refusals `raftlm train` and fit share named only the command's flags: fit(output_dir="~/run") said
    "--output-dir ~/run starts with ~", constant targets "give more rows, or --target-range LO,HI", save(dir)
    "choose another --output-dir". The API's parameter is named now; the command line keeps its flag."""
    with pytest.raises(RaftlmError, match=r"^output_dir ~/run starts with ~"):
        small(output_dir="~/run").fit(TEXTS, Y)
    with pytest.raises(
        RaftlmError, match=r"give more rows, or --target-range LO,HI \(target_range=\[LO, HI\] in"
    ):
        small(method="none").fit(TEXTS, [3.0] * 20)
    with pytest.warns(RaftlmWarning, match=r"widen --grid \(target_range='auto', grid= in RAFTRegressor\)"):
        small(method="none", target_range="1,5").fit(TEXTS, Y * 10)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RaftlmError, match=r"is never replaced or written into: choose another output_dir$"):
        small(output_dir=str(mine)).fit(TEXTS, Y)
    reg = small(method="none").fit(TEXTS, Y)
    with pytest.raises(RaftlmError, match=r"is never replaced or written into: choose another directory$"):
        reg.save(str(mine))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RaftlmError, match=r"^directory .+ is the current folder, one of its parents"):
        reg.save(str(tmp_path))
    csv = write_csv(tmp_path / "d.csv", [{"text": t, "target": y} for t, y in zip(TEXTS, Y, strict=True)])
    assert main(train_args(csv, mine)) == 2
    assert capsys.readouterr().err.rstrip().endswith("choose another --output-dir")


def test_predict_interval_refuses_what_its_calibration_cannot_give_before_predicting(monkeypatch):
    """predict_interval predicted every row of X, then refused a level its calibration was too small for (and
    an uncalibrated estimator's conformal kind): said first now, as `raftlm predict --interval` says it."""
    reg = small(method="none").fit(TEXTS, Y)

    def never(*a, **k):
        raise AssertionError("predicted before the interval was checked")

    monkeypatch.setattr(reg, "_predictions", never)
    with pytest.raises(RaftlmError, match="is not calibrated: call calibrate"):
        reg.predict_interval(TEXTS, 0.9, kind="cqr")
    reg.calibrate(TEXTS[:4], Y[:4])
    monkeypatch.setattr(reg, "_predictions", never)
    with pytest.raises(RaftlmError, match=r"4 calibration examples cannot give a 0.9 interval"):
        reg.predict_interval(TEXTS, 0.9)
    monkeypatch.undo()
    _, intervals = reg.predict_interval(TEXTS[:2], 0.5)
    assert intervals.shape == (2, 2, 1)


def test_fit_into_an_unfinished_run_names_what_the_api_can_do(tmp_path, toy_csv):
    """fit(output_dir=an unfinished run) said "pass --resume to continue it": RAFTRegressor has no resume."""
    from raftlm.io import FINISHED_FILE

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet", "--max-steps", "1")) == 0
    (run / FINISHED_FILE).unlink()  # (as a run a kill stopped midway: no metrics file yet)
    with pytest.raises(
        RaftlmError,
        match=r"holds an unfinished run: pass overwrite=True to train it again, or "
        r"choose another output_dir$",
    ):
        small(output_dir=str(run)).fit(TEXTS, Y)
    assert main([*train_args(toy_csv, run, "--quiet", "--max-steps", "1")]) == 2  # the CLI keeps its flags


def test_a_fitted_estimator_with_eval_compile_pickles_and_comes_back_compiled():
    """eval.compile compiles the model predictions come from, in place on a CPU: the fitted estimator then
    failed to pickle (PicklingError: the compiled forward), so joblib and a saved pickle broke. The predictor
    pickles without the compiled function and compiles again when unpickled; the weights are one copy."""
    import pickle

    reg = small(method="none", settings={"eval": {"compile": True}}).fit(TEXTS, Y)
    back = pickle.loads(pickle.dumps(reg))
    assert "forward" in vars(
        back.predictor_.model
    )  # (compiled again: an instance attribute over the class's)
    assert "forward" in vars(reg.predictor_.model)  # (the original stays compiled)
    a, b = reg.predictor_.model, back.predictor_.model
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_eval_settings_given_after_load_reach_sampling_and_the_interval_kind_as_the_cli_flags_do(tmp_path):
    """A loaded run's predict read eval.num_samples and eval.interval_kind from the run as it was saved, so
    set_params(settings={"eval": ...}) changed batch_size and bf16 but not these: `--num-samples 4` had no
    API equivalent, and predict_interval's auto kind stayed the run's."""
    import json

    rows = [{"text": f"review {i}: it was {WORDS[i % 5]}. rating:", "target": 1 + i % 5} for i in range(80)]
    csv = write_csv(tmp_path / "d.csv", rows)
    run = tmp_path / "run"
    assert main(train_args(csv, run, "--quiet", "--max-steps", "1")) == 0
    out, few = tmp_path / "p.jsonl", write_csv(tmp_path / "few.csv", rows[:6])  # (sampling is slow)
    flags = ["--decoder", "sample-rail", "--num-samples", "4", "--quiet"]
    assert main(["predict", "--model", str(run), "--input", str(few), "--output", str(out), *flags]) == 0
    cli = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    reg, texts = RAFTRegressor.load(str(run)), [r["text"] for r in rows[:6]]
    default = reg.predict(texts, decoder="sample-rail")
    reg.set_params(settings={**(reg.get_params()["settings"] or {}), "eval": {"num_samples": 4}})
    four = reg.predict(texts, decoder="sample-rail")
    np.testing.assert_allclose(four, cli, rtol=1e-6)
    assert not np.allclose(four, default)
    reg.set_params(settings={"eval": {"interval_kind": "absolute"}})
    _, auto = reg.predict_interval(TEXTS[:4], 0.8)
    _, absolute = reg.predict_interval(TEXTS[:4], 0.8, kind="absolute")
    _, cqr = reg.predict_interval(TEXTS[:4], 0.8, kind="cqr")
    np.testing.assert_array_equal(auto, absolute)
    assert not np.allclose(auto, cqr)


def test_model_params_set_after_fit_are_said_once_and_apply_at_the_next_fit():
    """set_params(max_length=..., prompt_template=...) after fit changed nothing until the next fit, in
    silence, while decoder, batch_size, bf16 and seed apply at once (`raftlm predict` refuses the flags of
    the first kind for a trained run): the estimator says so once per change."""
    reg = small().fit(TEXTS, Y)
    before = reg.predict(TEXTS[:3])
    reg.set_params(max_length=64, batch_size=2)  # (batch_size: at once, said nothing of)
    with pytest.warns(RaftlmWarning) as said:
        after = reg.predict(TEXTS[:3])
    assert [str(w.message) for w in said] == [
        "max_length changed since the model was fitted: predictions come from the fitted model (max_length="
        f"{reg.model_params_['max_length']}); a new value applies at the next fit(X, y)"
    ]
    np.testing.assert_allclose(before, after, rtol=1e-6)  # (batch 2: other padding, the last digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.predict(TEXTS[:3])  # said once
        reg.set_params(max_length=reg.model_params_["max_length"], decoder="mode").predict(TEXTS[:3])
    reg.set_params(max_length=64).fit(TEXTS, Y)  # the next fit takes it
    assert reg.predictor_.max_length == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg.predict(TEXTS[:3])
