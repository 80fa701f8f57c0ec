import json
import re

import numpy as np
import pytest

from raftlm import RaftlmError, RAFTRegressor

TEXTS = [
    f"review {i}: the product was {w}. rating:"
    for i, w in enumerate(["awful", "bad", "fine", "good", "great"] * 6)
]
Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 6)


def small(**kw):
    return RAFTRegressor(
        **{"model": "tiny-random-llama", "max_steps": 3, "batch_size": 8, "lr": 1e-2, "eval_steps": 3, **kw}
    )


def test_fit_predict_score_save_load(tmp_path):
    reg = small(output_dir=str(tmp_path / "run"))
    assert reg.fit(TEXTS, Y, eval_set=(TEXTS[:5], Y[:5])) is reg
    pred = reg.predict(TEXTS)
    assert pred.shape == (30,) and np.all((pred >= 0) & (pred <= 5))  # RAIL over '1'..'5' with mass <= 1
    probs = reg.predict_proba(TEXTS[:2])
    assert probs.shape == (2, 5) and np.all(probs.sum(-1) <= 1 + 1e-9)
    np.testing.assert_allclose(pred[:2], probs @ np.arange(1, 6), rtol=1e-6)
    r2 = reg.score(TEXTS, Y)
    assert r2 == pytest.approx(1 - ((pred - Y) ** 2).sum() / ((Y - Y.mean()) ** 2).sum())
    with pytest.raises(
        RaftlmError, match=r"y\[2\]: target nan is NaN or infinite"
    ):  # not sklearn's ValueError
        reg.score(TEXTS, np.where(np.arange(30) == 2, np.nan, Y))
    # targets as fit reads them ("3.5" is 3.5: sklearn's r2_score refused text), and a diverged model's
    # NaN predictions score NaN, as `raftlm evaluate` reports them (sklearn raised "Input contains NaN")
    assert reg.score(TEXTS, [str(v) for v in Y]) == r2
    reg.predict = lambda X: np.full(len(X), np.nan)
    assert np.isnan(reg.score(TEXTS, Y))
    del reg.predict
    with pytest.raises(RaftlmError, match="unknown interval kind 'cqrr'"):  # the kind first, then calibration
        reg.predict_interval(TEXTS[:2], kind="cqrr")
    with pytest.raises(RaftlmError, match="^confidence level 1.0 must lie strictly between 0 and 1"):
        reg.predict_interval(TEXTS[:2], np.float64(1.0))
    reg.save(tmp_path / "saved")
    again = RAFTRegressor.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict(TEXTS), pred, rtol=1e-5, atol=1e-6)
    assert reg.train_summary_["global_step"] == 3


def test_save_writes_the_training_log_as_train_leaves_it(tmp_path):
    """save() wrote no metrics.jsonl after a fit into a temporary folder (the default), though the docs list
    it among a saved run's files and `raftlm push` uploads it; now the log goes with the estimator, a
    load().save() keeps it, and a zero-shot refit (which trains nothing) drops it."""
    reg = small(progress_bar=False).fit(TEXTS, Y, eval_set=(TEXTS[:5], Y[:5]))
    reg.save(tmp_path / "saved")
    log = (tmp_path / "saved" / "metrics.jsonl").read_text()
    steps = [json.loads(line) for line in log.splitlines()]
    assert [r["step"] for r in steps if "eval_rmse" in r] == [3] and any("loss" in r for r in steps)
    RAFTRegressor.load(tmp_path / "saved").save(tmp_path / "again")
    assert (tmp_path / "again" / "metrics.jsonl").read_text() == log
    reg.set_params(method="none").fit(TEXTS, Y).save(tmp_path / "zero-shot")
    assert not (tmp_path / "zero-shot" / "metrics.jsonl").exists()


def test_init_only_stores_arguments_and_predict_needs_fit():
    reg = RAFTRegressor(model="does-not-matter", lr=3e-4)
    assert reg.lr == 3e-4 and not hasattr(reg, "predictor_")
    with pytest.raises(RaftlmError, match="not fitted"):
        reg.predict(["x"])


def test_dict_inputs_fill_the_template_and_targets_are_scaled(tmp_path):
    reg = small(prompt_template="Title: {title}. Stars:", target_range="auto", method="none", grid="0-9")
    rows = [{"title": f"movie {i}"} for i in range(6)]
    reg.fit(rows, [10, 20, 30, 40, 50, 60])
    assert reg.predictor_.scaler.to_dict() == {
        "data_low": 10.0,
        "data_high": 60.0,
        "grid_low": 0.0,
        "grid_high": 9.0,
    }
    assert reg.predict(rows).shape == (6,)
    with pytest.raises(RaftlmError, match="2 texts but 3 targets"):
        reg.fit(rows[:2], [1, 2, 3])


def test_a_zero_shot_fit_calibrates_on_eval_set_refuses_output_dir_and_a_refit_forgets(tmp_path):
    """method none used to ignore eval_set and output_dir, and a refit kept the old calibration_."""
    reg = small(method="none", grid="1-5")
    reg.fit(TEXTS, Y, eval_set=(TEXTS, Y))  # 30 examples: enough for 90 % split-conformal intervals
    assert reg.calibration_.n == 30
    pred, intervals = reg.predict_interval(TEXTS[:3], 0.9)
    assert np.all((intervals[:, 0, 0] <= pred) & (pred <= intervals[:, 1, 0]))
    reg.fit(TEXTS, Y)  # no eval_set now: the earlier calibration measured another fit
    assert reg.calibration_ is None
    with pytest.raises(RaftlmError, match="this RAFTRegressor is not calibrated"):
        reg.predict_interval(TEXTS[:3], 0.9)
    with pytest.raises(RaftlmError, match="method 'none' is zero-shot: fit trains nothing and writes no run"):
        small(method="none", output_dir=str(tmp_path / "run")).fit(TEXTS, Y)
    assert not (tmp_path / "run").exists()


# --- a scikit-learn estimator (issue 15) -----------------------------------------------------------


def test_get_set_params_and_clone():
    from sklearn.base import clone

    reg = small(patience=2, progress_bar=False)
    params = reg.get_params()
    assert params["lr"] == 1e-2 and params["patience"] == 2 and params["callbacks"] is None
    assert reg.set_params(lr=3e-3) is reg and reg.lr == 3e-3
    assert params["ce_target"] is None  # the method's: two-hot for raft
    assert reg.set_params(ce_target="two-hot")._config(None).method.ce_target == "two-hot"
    twin = clone(reg)
    assert twin is not reg and twin.get_params() == reg.get_params() and not hasattr(twin, "predictor_")


def test_grid_search_and_cross_val_score_with_the_tiny_model():
    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

    reg = small(progress_bar=False)
    folds = KFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(reg, {"lr": [1e-3, 1e-2]}, cv=folds, error_score="raise").fit(TEXTS, Y)
    assert (
        search.best_params_["lr"] in (1e-3, 1e-2) and np.isfinite(search.cv_results_["mean_test_score"]).all()
    )
    assert search.best_estimator_.predict(TEXTS[:3]).shape == (3,)
    scores = cross_val_score(reg, np.array(TEXTS), Y, cv=folds, error_score="raise")
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_pandas_inputs_pair_up_by_position():
    pd = pytest.importorskip("pandas")
    from raftlm.api import examples_from

    order = [3, 0, 4, 1, 2]
    texts = pd.Series([TEXTS[i] for i in order], index=[10, 2, 7, 0, 5])  # shuffled integer index
    y = pd.Series([Y[i] for i in order], index=[0, 5, 2, 10, 7])  # and another one
    ex = examples_from(texts, y, "{text}")
    assert [(e.text, e.target) for e in ex] == [(TEXTS[i], Y[i]) for i in order]
    by_name = examples_from(texts.set_axis(list("abcde")), y.set_axis(list("vwxyz")), "{text}")
    assert [e.target for e in by_name] == [Y[i] for i in order]  # a string index: no KeyError
    frame = pd.DataFrame({"title": ["Up", "Heat"], "year": ["2009", "1995"]}, index=["x", "y"])
    ex = examples_from(frame, np.array([4.0, 5.0]), "Title: {title} ({year}). Stars:")
    assert [e.text for e in ex] == ["Title: Up (2009). Stars:", "Title: Heat (1995). Stars:"]
    assert [e.text for e in examples_from(np.array(["a b", "c d"]), None, "{text}")] == ["a b", "c d"]


@pytest.mark.parametrize(
    "X, y, fragment",
    [
        (np.array([["a", "b"]]), [1.0], "X has shape (1, 2)"),
        (["a", None], [1, 2], "X[1]: field 'text' is missing (null)"),
        (["a", 5], [1, 2], "X[1]: field 'text' is 5 (a int), not text"),
        (["a", "b"], [1.0, float("nan")], "y[1]: target nan is NaN or infinite"),
        (["a", "b"], [1.0, True], "y[1]: target True is not a number"),
        (["a", "b"], [[1.0, 2.0], [3.0, 4.0]], "y has shape (2, 2)"),
        ([{"text": "a"}, {"text": float("nan")}], [1, 2], "X[1]: field 'text' is missing (null)"),
        ([{"text": "a"}, {"text": ""}], [1, 2], "X[1]: field 'text' is empty"),
    ],
)
def test_bad_inputs_are_one_line_errors(X, y, fragment):
    from raftlm.api import examples_from

    with pytest.raises(RaftlmError) as err:
        examples_from(X, y, "{text}")
    assert fragment in str(err.value)


def test_a_dataframe_fit_writes_a_run_like_the_cli(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"review": TEXTS}, index=[f"id{i}" for i in range(30)])
    y = pd.Series(Y, index=frame.index[::-1])  # labels that disagree: ignored, position counts
    reg = small(prompt_template="{review}", output_dir=str(tmp_path / "run"), progress_bar=False, lr="1e-2")
    reg.fit(frame, y, eval_set=(frame[:6], y[:6]))
    run = tmp_path / "run"
    assert {"config.yaml", "raftlm.json", "model.safetensors", "metrics.jsonl", "eval_results.json"} <= {
        p.name for p in run.iterdir()
    }
    assert not (run / "checkpoints").exists() and reg.train_summary_["best_step"] == 3
    assert "lr: 0.01\n" in (run / "config.yaml").read_text()  # the string "1e-2" became a float
    assert "'loss'" not in capsys.readouterr().err  # progress_bar=False: no bars, no loss lines
    assert reg.predict(frame[:4]).shape == (4,)
    with pytest.raises(RaftlmError, match="already holds a finished run.*overwrite=True"):
        reg.fit(frame, y)
    reg.set_params(overwrite=True).fit(frame, y)


def test_fit_leaves_no_temporary_directory(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    reg = small(progress_bar=False).fit(TEXTS, Y)
    assert list(tmp_path.iterdir()) == [] and reg.predict(TEXTS[:2]).shape == (2,)


def test_patience_and_trainer_callbacks():
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    counter = Steps()
    # lr 1e-30 leaves the weights as they are, so validation RMSE never improves after the first
    reg = small(lr=1e-30, max_steps=20, eval_steps=1, patience=2, progress_bar=False, callbacks=[counter])
    reg.fit(TEXTS, Y, eval_set=(TEXTS[:5], Y[:5]))
    assert reg.train_summary_["global_step"] == 3 and counter.steps == 3  # best at 1, no gain at 2 and 3


def test_bf16_auto_is_float32_on_a_cpu_without_bf16_units(bf16_warning, recwarn, monkeypatch):
    """bf16="auto" stays a parameter (clone keeps it) and resolves per machine: float32 here, bf16 where
    the CPU has the units."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto asks the CPU, on a GPU machine too
    bf16_warning(False)
    reg = small(bf16="auto").fit(TEXTS, Y)
    assert reg.get_params()["bf16"] == "auto" and reg._bf16() is False
    assert not [w for w in recwarn if "drop --bf16" in str(w.message)]
    np.testing.assert_array_equal(reg.predict(TEXTS), small(bf16=False).fit(TEXTS, Y).predict(TEXTS))
    bf16_warning(True)
    assert reg._bf16() is True


def test_fit_validates_on_val_size_of_eval_set_as_train_does(tmp_path):
    """val_size (default 300, "all": every row) picks the validation rows as `raftlm train --val-size`
    does: a seeded sample of Python lists, which keep their user's order; the run records which."""
    import json

    assert (
        small().get_params()["val_size"] == 300 and small(val_size="all")._config(None).data.val_size is None
    )
    reg = small(val_size=4, output_dir=str(tmp_path / "run"), progress_bar=False)
    reg.fit(TEXTS, Y, eval_set=(TEXTS[:10], Y[:10]))
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["validation"] == {"n": 4, "split_size": 10, "chosen": "a seeded random sample of"}
    small(output_dir=str(tmp_path / "all"), progress_bar=False).fit(TEXTS, Y, eval_set=(TEXTS[:10], Y[:10]))
    results = json.loads((tmp_path / "all" / "eval_results.json").read_text())
    assert results["validation"] == {"n": 10, "split_size": 10, "chosen": "all"}


def test_texts_fill_the_templates_one_field_as_the_server_takes_them():
    """A text alone is a row of the template's one field, whatever its name, in the Python API as in the
    server (the API made every text {"text": ...}: a run templated "Review: {review}" refused a list of
    texts that the server took); with two fields both refuse it in the same words."""
    from raftlm.api import examples_from
    from raftlm.files import to_examples
    from raftlm.serve import _as_rows

    one = "Review: {review}\nStars:"
    api = examples_from(["great", "bad"], None, one)
    served = to_examples(_as_rows(["great", "bad"], one), one, None, "request")
    assert (
        [e.text for e in api] == [e.text for e in served] == ["Review: great\nStars:", "Review: bad\nStars:"]
    )
    two = "{title}: {text}"
    said = re.escape(
        "a text alone is a row only when the prompt template has one field; this one has 2 (title, text)"
    )
    with pytest.raises(RaftlmError, match=rf"^X\[1\]: {said}"):
        examples_from([{"title": "a", "text": "b"}, "c"], None, two)
    with pytest.raises(RaftlmError, match=rf"^request row 2: {said}"):
        _as_rows([{"title": "a", "text": "b"}, "c"], two)
    with pytest.raises(RaftlmError, match=r"X\[0\]: field 'review' is 3 \(a int\), not text"):
        examples_from([3], None, one)


def test_data_settings_apply_to_fit_or_are_refused(tmp_path):
    """settings={"data": {"train_size": 5}} (or train_fraction) was accepted, written into config.yaml and
    ignored: fit trained on all 30 rows where `raftlm train --train-size 5` trains on 5. Now fit samples
    its rows as train does; settings of a file or dataset (text_column, data_dir, ...) are refused."""
    for settings, n in (({"data": {"train_size": 5}}, 5), ({"data": {"train_fraction": 0.2}}, 6)):
        reg = small(progress_bar=False, settings=settings).fit(TEXTS, Y)
        assert reg.results_["n_train"] == n
    for key in ("text_column", "target_column", "data_dir", "history", "stsb_test"):
        with pytest.raises(RaftlmError, match=f"^settings data.{key} says how `raftlm train` reads"):
            small(settings={"data": {key: "x"}}).fit(TEXTS, Y)


def test_eval_set_is_checked_and_its_rows_are_named_as_its_own():
    """eval_set=(X_val, None) trained every step validating on rows without targets (RMSE nan), then
    failed at calibration (or, without it, kept a NaN-driven early stop); a list of pairs was a raw
    ValueError; a bad validation row was named as a training row (y[3])."""
    for bad in ((TEXTS[:4], None), [(TEXTS[:4], Y[:4])], TEXTS[:4]):
        with pytest.raises(RaftlmError, match=r"^eval_set is .*: give \(X_val, y_val\)"):
            small().fit(TEXTS, Y, eval_set=bad)
    with pytest.raises(RaftlmError, match=r"^eval_set y\[3\]: target nan"):
        small().fit(TEXTS, Y, eval_set=(TEXTS[:4], [1.0, 2.0, 3.0, float("nan")]))


def test_a_failed_first_fit_is_not_fitted_and_predict_reads_no_training_setting(tmp_path):
    """check_is_fitted passed after a fit that failed (calibration_ was set before the model was built);
    predict re-checked every training setting, so set_params(lr=-1) after fit failed predict."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    reg = small(lr=-1)
    with pytest.raises(RaftlmError):
        reg.fit(TEXTS, Y)
    with pytest.raises(NotFittedError):
        check_is_fitted(reg)
    reg.set_params(lr=1e-2).fit(TEXTS, Y)
    check_is_fitted(reg)
    pred = reg.predict(TEXTS[:3])
    np.testing.assert_array_equal(reg.set_params(lr=-1, max_steps=0).predict(TEXTS[:3]), pred)


def test_load_keeps_what_trains_and_validates_as_the_run_did(tmp_path):
    """load() gave bf16=eval.bf16, so a run trained in bf16 and predicted in float32 came back training in
    float32 (and the reverse turned bf16 training on); it dropped data.split_seed, which picks the
    val_size validation rows, so clone(load(run)).fit validated on other rows."""
    from sklearn.base import clone

    reg = small(
        progress_bar=False,
        output_dir=str(tmp_path / "run"),
        val_size=4,
        settings={"eval": {"bf16": False}, "data": {"split_seed": 7}},
        bf16=True,
    ).fit(TEXTS, Y, eval_set=(TEXTS[:10], Y[:10]))
    assert (reg.config_.training.bf16, reg.config_.eval.bf16) == (True, False)
    again = clone(RAFTRegressor.load(tmp_path / "run"))
    cfg = again._config(None)
    assert (cfg.training.bf16, cfg.eval.bf16, cfg.data.split_seed) == (True, False, 7)


def test_a_fitted_estimator_predicts_as_its_run_is_loaded_and_saves_as_trained(tmp_path):
    """On a GPU eval.dtype is bfloat16: train measured test and calibration on a bfloat16 copy, `raftlm
    predict` and load() predict with one, but fit().predict used the float32 weights as trained (and its
    intervals a calibration of the other copy). Shown on the CPU with eval.dtype bfloat16: fit().predict
    equals load().predict now, and save() still writes the float32 weights."""
    from safetensors.torch import load_file

    reg = small(
        progress_bar=False, output_dir=str(tmp_path / "run"), settings={"eval": {"dtype": "bfloat16"}}
    )
    reg.fit(TEXTS, Y, eval_set=(TEXTS[:8], Y[:8]))
    loaded = RAFTRegressor.load(tmp_path / "run")
    np.testing.assert_array_equal(reg.predict(TEXTS), loaded.predict(TEXTS))
    mine, theirs = reg.predict_interval(TEXTS[:4], 0.8), loaded.predict_interval(TEXTS[:4], 0.8)
    np.testing.assert_array_equal(mine[1], theirs[1])
    reg.save(tmp_path / "saved")
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    assert {str(w.dtype) for w in weights.values()} == {"torch.float32"}


def test_interval_levels_and_a_generator_are_read_as_given():
    """predict_interval(X, []) returned intervals of no level without a word and [[0.8, 0.9]] raised a
    ValueError; score(generator, y) read X twice, the second time empty (sklearn's "inconsistent numbers")."""
    reg = small(progress_bar=False, method="none").fit(TEXTS, Y, eval_set=(TEXTS, Y))
    for bad in ([], [[0.8, 0.9]]):
        with pytest.raises(RaftlmError, match=r"^confidence_level .*: give a level between 0 and 1"):
            reg.predict_interval(TEXTS[:2], bad)
    assert reg.score((t for t in TEXTS), Y) == reg.score(TEXTS, Y)


def test_fit_errors_speak_of_the_api_not_a_file():
    """fit([], []) said "dataset in-memory has no training examples: check the file or its split column";
    a row missing the template's field said "training, --template can name yours instead"."""
    with pytest.raises(RaftlmError, match=r"^fit got no rows: pass X and y with at least one row each$"):
        small().fit([], [])
    with pytest.raises(RaftlmError, match=r"prompt_template= in Python\) can name yours instead"):
        small(prompt_template="{review}").fit([{"text": "x"}, {"text": "y"}], [1, 2])


def test_a_refit_that_fails_leaves_the_earlier_fit_whole(tmp_path):
    """A refit reset calibration_, the training log and the placed copy before it trained: one that failed
    left the earlier model with none of them (intervals refused, save() without its log)."""
    reg = small(progress_bar=False).fit(TEXTS, Y, eval_set=(TEXTS[:8], Y[:8]))
    before = reg.predict_interval(TEXTS[:3], 0.8)
    with pytest.raises(RaftlmError):
        reg.set_params(lr=-1).fit(TEXTS, Y, eval_set=(TEXTS[:8], Y[:8]))
    np.testing.assert_array_equal(reg.predict_interval(TEXTS[:3], 0.8)[1], before[1])
    assert reg.training_log_ is not None
