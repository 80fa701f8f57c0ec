import math
import re

import numpy as np
import pytest

from raftlm.core import KIND_CHOICES, RaftlmError
from raftlm.grid import TargetScaler
from raftlm.uncertainty import (
    KINDS,
    Calibration,
    check_level,
    grid_cdf,
    grid_crps,
    grid_mean,
    grid_median,
    grid_nll,
    grid_quantile,
    grid_std,
    interval_rows,
    min_calibration_size,
)

VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # cells [0.5, 1.5], ..., [4.5, 5.5], width 1
PROBS = np.array([[0.1, 0.2, 0.1, 0.4, 0.2]])  # CDF at the edges: 0, .1, .3, .4, .8, 1
POINT3 = np.array([[0.0, 0.0, 1.0, 0.0, 0.0]])
IDENTITY = TargetScaler(1.0, 5.0, 1.0, 5.0)


def test_the_command_lines_kind_choices_are_the_kinds():
    """core names them so the CLI need not import scikit-learn; they must not drift from KINDS."""
    assert KIND_CHOICES == ("auto", *KINDS)


def test_mean_std_cdf_quantiles_pinned_by_hand():
    np.testing.assert_allclose(grid_mean(VALUES, PROBS), [3.4])
    # E[v^2] = .1 + .8 + .9 + 6.4 + 5 = 13.2, Var = 13.2 - 3.4^2 = 1.64, plus the cell width^2 / 12
    np.testing.assert_allclose(grid_std(VALUES, PROBS), [math.sqrt(1.64 + 1 / 12)])
    np.testing.assert_allclose(grid_std(VALUES, POINT3), [math.sqrt(1 / 12)])  # resolution floor
    # y = 3.2 lies 0.7 into the cell [2.5, 3.5] of mass .1: F = .3 + .1 * .7
    np.testing.assert_allclose(grid_cdf(VALUES, PROBS, 3.2), [0.37])
    np.testing.assert_allclose(grid_cdf(VALUES, PROBS, [0.0]), [0.0])
    np.testing.assert_allclose(grid_cdf(VALUES, PROBS, [9.0]), [1.0])
    # tau .5: F crosses it in cell 4 ([3.5, 4.5], F .4 -> .8): 3.5 + (.5 - .4) / .4 = 3.75
    # tau .05: cell 1: 0.5 + .05 / .1 = 1.0 ; tau .95: cell 5: 4.5 + (.95 - .8) / .2 = 5.25
    np.testing.assert_allclose(grid_quantile(VALUES, PROBS, [0.05, 0.5, 0.95]), [[1.0, 3.75, 5.25]])
    np.testing.assert_allclose(grid_median(VALUES, PROBS), [3.75])
    np.testing.assert_allclose(grid_quantile(VALUES, PROBS, [0.0, 1.0]), [[0.5, 5.5]])


def test_unsorted_grid_unnormalized_mass_and_uneven_cells():
    order = [3, 0, 4, 2, 1]
    half = PROBS * 0.5  # a grid holding half the model's mass: renormalized first
    for f in (grid_mean, grid_std, grid_median):
        np.testing.assert_allclose(f(VALUES[order], half[:, order]), f(VALUES, PROBS))
    # grid 1, 2.5, 4: cells [.25, 1.75], [1.75, 3.25], [3.25, 4.75] (ends as wide as inward)
    uneven, p = np.array([1.0, 2.5, 4.0]), np.array([[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(grid_quantile(uneven, p, [0.25, 0.75]), [[1.0, 2.5]])
    # density in cell 1 = .5 / 1.5 -> NLL = log 3
    np.testing.assert_allclose(grid_nll(uneven, p, [1.0]), [math.log(3)])


def test_nll_and_crps_pinned_by_hand():
    np.testing.assert_allclose(grid_nll(VALUES, PROBS, [3.2]), [-math.log(0.1)])
    np.testing.assert_allclose(grid_nll(VALUES, PROBS, [7.0]), [-math.log(1e-9)])  # outside: floored
    # all mass uniform on [2.5, 3.5]; y = 3: 2 * integral_0^.5 t^2 dt = 1/12
    np.testing.assert_allclose(grid_crps(VALUES, POINT3, [3.0]), [1 / 12])
    # y = 5: integral_0^1 t^2 dt + (5 - 3.5) = 1/3 + 1.5
    np.testing.assert_allclose(grid_crps(VALUES, POINT3, [5.0]), [1 / 3 + 1.5])
    # against a brute-force integral of (F(x) - 1[x >= y])^2 on a fine grid
    x = np.linspace(-3, 9, 240_001)
    for y in (0.0, 2.2, 4.5, 6.0):
        F = grid_cdf(VALUES, np.repeat(PROBS, x.size, 0), x)
        ref = np.trapezoid((F - (x >= y)) ** 2, x)
        np.testing.assert_allclose(grid_crps(VALUES, PROBS, [y]), [ref], atol=1e-4)  # step 5e-5 at the jump


def test_data_units_through_the_target_scaler():
    """Math in data units equals math in grid units mapped back: quantiles through the affine map, std
    scaled by |1 / slope|, NLL shifted by log of it, CRPS scaled by it."""
    scaler = TargetScaler(0.0, 10.0, 1.0, 5.0)  # data = 2.5 (g - 1)
    data_values = scaler.to_data(VALUES)
    np.testing.assert_allclose(data_values, [0, 2.5, 5, 7.5, 10])
    np.testing.assert_allclose(grid_std(data_values, PROBS), 2.5 * grid_std(VALUES, PROBS))
    np.testing.assert_allclose(
        grid_quantile(data_values, PROBS, [0.1, 0.9]),
        scaler.to_data(grid_quantile(VALUES, PROBS, [0.1, 0.9])),
    )
    y = np.array([6.0])
    g = scaler.to_grid(y)
    np.testing.assert_allclose(grid_nll(data_values, PROBS, y), grid_nll(VALUES, PROBS, g) + math.log(2.5))
    np.testing.assert_allclose(grid_crps(data_values, PROBS, y), 2.5 * grid_crps(VALUES, PROBS, g))


@pytest.mark.parametrize("level", [0, 1, 1.5, float("nan"), -0.1, "high", None])
def test_bad_confidence_level_is_a_one_line_error(level):
    with pytest.raises(RaftlmError, match="strictly between 0 and 1") as err:
        check_level(level)
    assert "\n" not in str(err.value)


def test_min_calibration_size_is_what_mapie_accepts():
    # theory: ceil((n + 1) c) <= n from n = 4, 9, 19; MAPIE also wants n >= 1 / alpha with alpha = 1 - c
    # in floats (1 / (1 - .9) = 10.000000000000002), so 6, 11, 20
    assert [min_calibration_size(c) for c in (0.8, 0.9, 0.95)] == [6, 11, 20]


def _head_calibration(residuals, level_targets=None):
    """A head model (one feature: its prediction, data units) predicting 3.0 with these residuals."""
    r = np.asarray(residuals, dtype=np.float64)
    return Calibration(3.0 + r, np.full((r.size, 1), 3.0), None, IDENTITY)


def test_split_conformal_quantile_is_the_ceil_n_plus_1_order_statistic():
    cal = _head_calibration([(-1) ** i * 0.1 * i for i in range(1, 12)])  # |r| = .1 .. 1.1, n = 11
    lo, hi = cal.intervals([[2.0]], [0.8, 0.9], "absolute")
    # level .8: ceil(.8 * 12) = 10th smallest |r| = 1.0 ; level .9: ceil(.9 * 12) = 11th = 1.1
    np.testing.assert_allclose(lo, [[1.0, 0.9]])
    np.testing.assert_allclose(hi, [[3.0, 3.1]])
    with pytest.raises(RaftlmError, match="cannot give a 0.95 interval.*at least 20"):
        cal.intervals([[2.0]], 0.95, "absolute")
    for kind in ("std", "cqr", "grid"):  # a head has no distribution: residual intervals only
        with pytest.raises(RaftlmError, match="only the interval kind absolute"):
            cal.intervals([[2.0]], 0.9, kind)
    assert cal.kind("auto") == "absolute"


def test_std_and_cqr_scores_by_hand():
    # two calibration rows on grid 1..5: a point mass on 3 (std sqrt(1/12)) and PROBS (std s1)
    feats = np.vstack([POINT3, PROBS] * 5)  # n = 10
    y = np.tile([3.5, 1.0], 5)
    cal = Calibration(y, feats, tuple(VALUES), IDENTITY, normalize_grid=True)
    s0, s1 = math.sqrt(1 / 12), math.sqrt(1.64 + 1 / 12)
    # std scores |y - mean| / std: .5 / s0 = 1.732 and 2.4 / s1 = 1.826; ceil(.8 * 11) = 9th of 10 -> 1.826
    lo, hi = cal.intervals(POINT3, [0.8], "std")
    q = 2.4 / s1
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [3 - q * s0, 3 + q * s0])
    # cqr at .8: grid quantiles .1 / .9 of POINT3 are 2.6 / 3.4, of PROBS 1.5 / 5.0 ;
    # scores max(lo - y, y - hi): 3.5 - 3.4 = .1 and 1.5 - 1 = .5 -> 9th of 10 = .5
    lo, hi = cal.intervals(POINT3, [0.8], "cqr")
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [2.6 - 0.5, 3.4 + 0.5])
    lo, hi = cal.intervals(POINT3, [0.8], "grid")  # raw quantiles, no calibration
    np.testing.assert_allclose([lo[0, 0], hi[0, 0]], [2.6, 3.4])


def _synthetic(rng, n, sharpen=2.0):
    """An overconfident model: its grid probabilities are the true ones sharpened (logits x2), and the
    target is drawn from the true histogram distribution (a grid value, then uniform within its cell)."""
    logits = rng.normal(size=(n, 5)) * 1.5
    true = np.exp(logits)
    true /= true.sum(1, keepdims=True)
    model = np.exp(sharpen * logits)
    model /= model.sum(1, keepdims=True)
    k = (true.cumsum(1) < rng.random((n, 1))).sum(1)
    return model, VALUES[k] + rng.uniform(-0.5, 0.5, n)


def test_conformal_coverage_reaches_the_level_on_a_known_distribution():
    """Split conformal promises E[coverage] = ceil((n + 1) c) / (n + 1) >= c for exchangeable data; 30
    calibration draws of 500 and test draws of 2,000 (s.e. of the mean ~0.003) check it for each kind,
    while the raw grid quantiles of this overconfident model undercover."""
    rng = np.random.default_rng(0)
    cov = {k: [] for k in ("absolute", "std", "cqr", "grid")}
    for _ in range(30):
        probs, targets = _synthetic(rng, 500)
        cal = Calibration(targets, probs, tuple(VALUES), IDENTITY, normalize_grid=True)
        X, y = _synthetic(rng, 2000)
        for row in interval_rows(cal, X, y, [0.9]):
            cov[row["kind"]].append(row["coverage"])
    for kind in ("absolute", "std", "cqr"):
        assert 0.9 - 0.01 <= np.mean(cov[kind]) <= 0.9 + 0.01, (kind, np.mean(cov[kind]))
    assert np.mean(cov["grid"]) < 0.85  # the model's own 90 % intervals cover far less


def test_calibration_saved_and_reloaded_gives_identical_intervals(tmp_path):
    rng = np.random.default_rng(1)
    X, y = _synthetic(rng, 60)
    cal = Calibration(y, X, tuple(VALUES), TargetScaler(0.0, 10.0, 1.0, 5.0), source="validation")
    cal.save(tmp_path)
    again = Calibration.load(tmp_path)
    assert again.n == 60 and again.source == "validation" and again.scaler == cal.scaler
    test, _ = _synthetic(rng, 7)
    for kind in ("absolute", "std", "cqr", "grid"):
        a, b = cal.intervals(test, [0.8, 0.9], kind), again.intervals(test, [0.8, 0.9], kind)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert Calibration.load(tmp_path / "nowhere") is None


# --- end to end: the CLI and the Python API on the tiny model ----------------------------------------


def _jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_calibrates_and_predict_evaluate_report_intervals(tmp_path, toy_csv, capsys):
    import json

    from helpers import train_args

    from raftlm.cli import main

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0
    results = json.loads((run / "eval_results.json").read_text())
    assert results["calibration"] == {"source": "validation", "n": 4}  # the whole validation split
    assert {r["kind"] for r in results["test"]["intervals"]} == {"grid"}  # 4 examples: no conformal level
    assert {"crps", "nll", "mean_std"} <= set(results["test"])
    out = tmp_path / "p.jsonl"
    predict = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out), "--overwrite"]
    assert main([*predict, "--interval", "0.9"]) == 2
    assert "4 calibration examples cannot give a 0.9 interval" in capsys.readouterr().err

    # calibrate on 40 labelled examples, then intervals cover >= 90 % of those same examples in-sample
    # (at least ceil(.9 * 41) = 37 of 40 conformity scores are <= their quantile)
    assert main(["calibrate", str(run), "--input", str(toy_csv)]) == 0
    assert json.loads((run / "calibration.json").read_text())["n"] == 40
    for kind in ("absolute", "std", "cqr"):
        assert main([*predict, "--interval", "0.9", "--interval-kind", kind]) == 0
        rows = _jsonl(out)
        inside = [r["lower"] <= r["target"] <= r["upper"] for r in rows]
        assert sum(inside) >= 36, kind
    assert main([*predict, "--interval", "0.8", "--with-uncertainty"]) == 0
    row = _jsonl(out)[0]
    assert {"mean", "std", "median", "entropy", "quantiles", "lower", "upper"} <= set(row)
    assert list(row["quantiles"]) == ["0.05", "0.25", "0.75", "0.95"] and row["std"] > 0
    assert row["quantiles"]["0.05"] <= row["median"] <= row["quantiles"]["0.95"]

    ev = tmp_path / "ev.json"
    assert main(["evaluate", "--model", str(run), "--input", str(toy_csv), "--output", str(ev)]) == 0
    metrics = json.loads(ev.read_text())
    got = {(r["kind"], r["nominal"]) for r in metrics["intervals"]}
    assert got == {(k, c) for k in ("absolute", "std", "cqr", "grid") for c in (0.8, 0.9, 0.95)}
    assert all(r["n"] == 40 for r in metrics["intervals"])
    printed = capsys.readouterr().out
    assert "grid distribution: CRPS" in printed and "coverage" in printed

    for bad in ("0", "1", "1.5", "nan"):
        assert main([*predict, "--interval", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("raftlm predict: error: confidence level") and "between 0 and 1" in err[-1]


def test_no_calibrate_and_uncalibrated_predict(tmp_path, toy_csv, capsys):
    from helpers import train_args

    from raftlm.cli import main

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--no-calibrate")) == 0
    assert not (run / "calibration.json").exists()
    out = tmp_path / "p.jsonl"
    predict = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out)]
    assert main([*predict, "--interval", "0.9"]) == 2
    assert "has no calibration: a run from `raftlm train` is calibrated" in capsys.readouterr().err
    assert main([*predict, "--interval", "0.9", "--interval-kind", "grid"]) == 0
    assert all(r["lower"] <= r["upper"] for r in _jsonl(out))
    assert main(["calibrate", str(tmp_path / "nope")]) == 2


TEXTS = [
    f"review {i}: the product was {w}. rating:"
    for i, w in enumerate(["awful", "bad", "fine", "good", "great"] * 6)
]
Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 6)


def test_api_return_std_predict_interval_and_save_load(tmp_path):
    from raftlm import RAFTRegressor

    reg = RAFTRegressor(model="tiny-random-llama", max_steps=2, batch_size=8, lr=1e-2, eval_steps=2)
    reg.fit(TEXTS, Y, eval_set=(TEXTS, Y))
    assert reg.calibration_.n == 30
    mean, std = reg.predict(TEXTS[:4], return_std=True)
    np.testing.assert_allclose(mean, reg.predict(TEXTS[:4]))
    assert std.shape == (4,) and np.all(std >= math.sqrt(1 / 12) - 1e-12)  # grid 1..5, data = grid units
    pred, pis = reg.predict_interval(TEXTS[:4], confidence_level=0.9)
    assert pred.shape == (4,) and pis.shape == (4, 2, 1) and np.all(pis[:, 0] <= pis[:, 1])
    _, pis2 = reg.predict_interval(TEXTS[:4], confidence_level=[0.8, 0.9], kind="absolute")
    assert pis2.shape == (4, 2, 2) and np.all(pis2[:, 1, 0] <= pis2[:, 1, 1])  # wider at 90 %
    with pytest.raises(RaftlmError, match="strictly between 0 and 1"):
        reg.predict_interval(TEXTS[:4], confidence_level=1.5)
    # a text decoder has no distribution: refused in the API's own words before any text is decoded
    import raftlm.predictor

    def decodes(*a, **k):
        raise AssertionError("text was decoded before the refusal")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raftlm.predictor.Predictor, "generate", decodes)
        said = "reads the grid distribution, which decoder='greedy' does not give (it decodes text): use decoder 'rail'"
        with pytest.raises(RaftlmError, match=re.escape("return_std " + said)):
            reg.predict(TEXTS[:4], decoder="greedy", return_std=True)
        with pytest.raises(RaftlmError, match=re.escape("predict_interval " + said)):
            reg.set_params(decoder="greedy").predict_interval(TEXTS[:4], 0.9, kind="grid")
        with pytest.raises(RaftlmError, match=re.escape("predict_proba " + said)):  # (it gave RAIL's)
            reg.predict_proba(TEXTS[:4])
    reg.set_params(decoder="rail")
    reg.save(tmp_path / "saved")
    again = RAFTRegressor.load(tmp_path / "saved")
    for kind in ("absolute", "std", "cqr"):
        a = reg.predict_interval(TEXTS[:4], 0.9, kind)[1]
        np.testing.assert_allclose(again.predict_interval(TEXTS[:4], 0.9, kind)[1], a, rtol=1e-5, atol=1e-6)


def test_api_head_model_gets_residual_intervals_only(tmp_path):
    from raftlm import RAFTRegressor

    reg = RAFTRegressor(
        model="tiny-random-llama", method="head-pooled", max_steps=2, batch_size=8, lr=1e-2, eval_steps=2
    )
    reg.fit(TEXTS, Y, eval_set=(TEXTS, Y))
    with pytest.raises(RaftlmError, match="predicts one number"):
        reg.predict(TEXTS[:2], return_std=True)
    _, pis = reg.predict_interval(TEXTS[:2], 0.9)  # auto -> absolute for a head
    np.testing.assert_allclose(pis[:, 1, 0] - pis[:, 0, 0], pis[0, 1, 0] - pis[0, 0, 0])  # constant width
    with pytest.raises(RaftlmError, match="only the interval kind absolute"):
        reg.predict_interval(TEXTS[:2], 0.9, kind="cqr")


def test_report_averages_interval_rows_over_seeds_into_a_coverage_table():
    from raftlm.report import aggregate, interval_table

    def cell(seed, cov, width):
        return {
            "dataset": "stsb-1k", "model": "gemma", "method": "raft", "decoder": "rail", "seed": seed,
            "lr": 1e-4, "train_fraction": None, "options": "", "rmse": 1.0, "mae": 1.0, "pearson": 0.5,
            "spearman": 0.5, "r2": 0.1, "validation_rmse": 1.0, "crps": 0.5 + seed / 10,
            "intervals": [{"kind": "cqr", "nominal": 0.9, "coverage": cov, "width": width, "n": 100}],
        }  # fmt: skip

    aggs = aggregate([cell(0, 0.88, 2.0), cell(1, 0.92, 3.0)])
    assert np.isclose(aggs[0]["crps"], 0.55)  # (.5 + .6) / 2
    # coverage (.88 + .92) / 2 = .9, width (2 + 3) / 2 = 2.5
    assert "| RAFT + 1.0 x CE (two-hot target) [cqr] | 0.900 / 2.500 |" in interval_table(aggs)


def test_sweep_cells_carry_intervals_and_the_report_draws_calibration(tmp_path, toy_csv):
    import json

    import yaml

    from raftlm.experiment import run_sweep
    from raftlm.report import write_report

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 2, "eval_steps": 2, "batch_size": 4}},
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-3],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    root = run_sweep(str(path))
    (row,) = json.loads((root / "results.json").read_text())
    assert row["calibration_n"] == 4 and {r["kind"] for r in row["intervals"]} == {"grid"}
    assert "crps" in row and "intervals" not in (root / "results.csv").read_text().splitlines()[0]
    pred = json.loads((root / "predictions" / f"{row['cell_id']}.jsonl").read_text().splitlines()[0])
    assert 0 <= pred["pit"] <= 1
    write_report(str(root))
    assert "Interval coverage / mean width at 90%" in (root / "report.md").read_text()
    assert list((root / "figures").glob("calibration_*.png"))


def test_the_calibration_figure_names_only_the_markers_it_draws(tmp_path, monkeypatch):
    """A sweep without conformal calibration (calibrate: false) draws the grid's lines only: its legend
    and title advertise no conformal markers (they did, issue 38)."""
    import json

    import raftlm.report as report

    (tmp_path / "predictions").mkdir()
    rows = [{"pit": p} for p in np.linspace(0.05, 0.95, 10)]
    (tmp_path / "predictions" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}
    monkeypatch.setattr(report, "_save", lambda fig, path: seen.setdefault("fig", fig) and path)
    grid_only = {"label": "RAFT", "intervals": [{"kind": "grid", "nominal": 0.9, "coverage": 0.9}]}
    report._calibration_figure(tmp_path, [(grid_only, {"cell_id": "c"})], tmp_path, "stsb-1k", "stsb")
    ax = seen.pop("fig").axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["RAFT (grid)"] and "absolute" not in ax.get_title()
    both = {
        **grid_only,
        "intervals": [*grid_only["intervals"], {"kind": "cqr", "nominal": 0.9, "coverage": 0.88}],
    }
    report._calibration_figure(tmp_path, [(both, {"cell_id": "c"})], tmp_path, "stsb-1k", "stsb")
    texts = [t.get_text() for t in seen["fig"].axes[0].get_legend().get_texts()]
    assert texts == ["RAFT (grid)", "conformal cqr"]
