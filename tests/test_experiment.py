"""Issue 4: resumable sweeps and reports (hand-computed means and stds)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import benchmark_module

from raftlm.core import RaftlmError
from raftlm.data import SPLIT_NAMES
from raftlm.experiment import cells
from raftlm.report import aggregate, curve_groups, eval_curve, table, tables, write_report


def test_cells_cross_every_axis_and_run_zero_shot_once():
    sweep = {
        "output_dir": "x",
        "datasets": ["a", {"dataset": "b", "data_dir": "d"}],
        "models": ["m"],
        "methods": [{"method": "none", "decoder": "rail"}, "raft", {"method": "ce", "decoder": "greedy"}],
        "lrs": [1e-4, 1e-5],
        "seeds": [0, 1, 2],
    }
    cs = cells(sweep)
    assert len(cs) == 2 * (1 + 2 * 3 + 2 * 3)
    assert len({c.cell_id for c in cs}) == len(cs)
    assert [c.decoder for c in cs if c.method == "raft"][0] == "rail"
    # seed-major order: every dataset x method x lr at seed 0 before any seed-1 cell
    order = [c.seed for c in cs]
    assert order == sorted(order) and order.count(0) == 2 * (1 + 2 + 2)


def _row(method, decoder, lr, seed, rmse, val, dataset="stsb-1k", model="gemma"):
    return {
        "dataset": dataset,
        "model": model,
        "method": method,
        "decoder": decoder,
        "lr": lr,
        "seed": seed,
        "train_fraction": None,
        "rmse": rmse,
        "mae": rmse,
        "pearson": 1 - rmse,
        "spearman": 1 - rmse,
        "r2": 0.0,
        "n": 10,
        "best_step": 100 * (seed + 1),
        "validation_rmse": val,
        "run_id": "r",
        "cell_id": "c",
    }


FIXTURE = [
    # raft: lr 1e-4 has mean validation 0.55, lr 1e-5 has 0.60 -> 1e-4 is chosen
    _row("raft", "rail", 1e-4, 0, 0.50, 0.50),
    _row("raft", "rail", 1e-4, 1, 0.60, 0.55),
    _row("raft", "rail", 1e-4, 2, 0.40, 0.60),
    _row("raft", "rail", 1e-5, 0, 0.10, 0.60),
    _row("raft", "rail", 1e-5, 1, 0.10, 0.60),
    _row("raft", "rail", 1e-5, 2, 0.10, 0.60),
    _row("ce", "rail", 1e-4, 0, 0.70, 0.70),
    _row("ce", "rail", 1e-4, 1, 0.80, 0.70),
    _row("none", "rail", None, 0, 1.20, None),
]


def test_aggregate_picks_lr_on_validation_and_reports_mean_and_std():
    aggs = {a["label"]: a for a in aggregate(FIXTURE)}
    raft = aggs["RAFT + 1.0 x CE (two-hot target)"]
    assert raft["lr"] == 1e-4 and raft["seeds"] == [0, 1, 2]
    # test RMSE 0.5, 0.6, 0.4: mean 0.5; sample std sqrt(((0)^2 + .1^2 + .1^2) / 2) = 0.1
    assert np.isclose(raft["rmse"], 0.5) and np.isclose(raft["rmse_std"], 0.1)
    assert np.isclose(raft["best_step"], 200)
    # the chosen LR's validation RMSE beside its test metrics: 0.5, 0.55, 0.6 -> 0.55 ± 0.05
    assert np.isclose(raft["validation_rmse"], 0.55) and np.isclose(raft["validation_rmse_std"], 0.05)
    ce = aggs["CE + RAIL"]  # 0.7, 0.8: mean .75, std sqrt((.05^2 * 2) / 1) = 0.0707
    assert np.isclose(ce["rmse"], 0.75) and np.isclose(ce["rmse_std"], 0.0707107, atol=1e-6)
    assert aggs["zero-shot + RAIL"]["rmse"] == 1.2


def test_table_bolds_the_best_per_column():
    md = table(aggregate(FIXTURE), "rmse", "label", "dataset", "RMSE")
    assert "| RAFT + 1.0 x CE (two-hot target) | **0.500 ± 0.100** |" in md
    assert "| CE + RAIL | 0.750 ± 0.071 |" in md and "| zero-shot + RAIL | 1.200 |" in md
    md_p = table(aggregate(FIXTURE), "pearson", "label", "dataset", "Pearson")
    assert (
        "| RAFT + 1.0 x CE (two-hot target) | **0.500 ± 0.100** |" in md_p
    )  # 1 - rmse: the highest Pearson wins


def test_table8_shape_bolds_the_best_method_per_model_row():
    md = table(aggregate(FIXTURE), "rmse", "model", "label", "RMSE", best_per="row")
    # one model row, methods as columns: only raft's 0.500 (the lowest RMSE of the row) is bold
    assert "| | RAFT + 1.0 x CE (two-hot target) | CE + RAIL | zero-shot + RAIL |" in md
    assert "| gemma | **0.500 ± 0.100** | 0.750 ± 0.071 | 1.200 |" in md


def test_report_writes_tables_html(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(FIXTURE))
    page = write_report(str(tmp_path))
    assert page.read_text().startswith("<!doctype html>") and "<b>0.500 ± 0.100</b>" in page.read_text()
    assert "table 3 shape" in (tmp_path / "report.md").read_text()


def test_sweep_resumes_after_being_killed_mid_cell(tmp_path, toy_csv):
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {
            "training": {"max_steps": 400, "eval_steps": 100, "batch_size": 4, "keep_checkpoints": True}
        },
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "none", "decoder": "rail"}, "raft"],
        "lrs": [1e-3],
        "seeds": [0],
        "keep_models": True,  # (keep_checkpoints asks for it: c278347)
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    cmd = [sys.executable, "-m", "raftlm", "experiment", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    runs = tmp_path / "out" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(
        runs.glob("*raft*/checkpoints/checkpoint-100/trainer_state.json")
    ):
        time.sleep(0.05)
    assert list(runs.glob("*raft*/checkpoints/checkpoint-100/trainer_state.json")), "no checkpoint in 120 s"
    proc.kill()
    proc.wait()
    run = next(p for p in runs.glob("*raft*") if p.is_dir())  # (a kill leaves the run's lock file beside it)
    assert not (run / "eval_results.json").exists()  # killed mid-cell
    assert len(list((tmp_path / "out" / "cells").glob("*.json"))) == 1  # the zero-shot cell finished
    # --dry-run says where the killed cell will pick up (its latest complete checkpoint)
    from raftlm.experiment import plan_sweep
    from raftlm.io import latest_complete_checkpoint

    step = latest_complete_checkpoint(run / "checkpoints").name.rsplit("-", 1)[1]
    plan = plan_sweep(str(path)).splitlines()
    assert plan[0].startswith("written  ") and plan[1].startswith("to run   ")
    assert plan[1].endswith(f"--rail  (resumes from step {step})") and int(step) >= 100
    assert plan[2].startswith("1 of 2 cells written, 1 to run, about ")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[2/2 cells]" in done.stderr  # one cell left, counted from the finished one (a log line)
    evals = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "eval_rmse" in line
    ]
    assert evals.count(100) == 1 and evals[-1] == 400  # continued from checkpoint-100, not restarted
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(rows) == 2 and {r["method"] for r in rows} == {"none", "raft"}
    assert (tmp_path / "out" / "results.csv").read_text().startswith("dataset,model,method,decoder,seed,lr")


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    from raftlm.training import latest_complete_checkpoint

    for step, complete in ((100, True), (200, True), (300, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_text("x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-200"
    assert latest_complete_checkpoint(tmp_path / "none") is None


def test_the_shipped_table3_sweep_builds_every_cell_config(tmp_path):
    from pathlib import Path

    from raftlm.experiment import cell_config, load_sweep

    sweep = load_sweep(str(Path(__file__).parents[1] / "sweeps" / "table3-cpu.yaml"))
    cs = cells(sweep)
    assert len(cs) == 3 * (1 + 3 * 2 * 3)  # datasets x (zero-shot + methods x LRs x seeds)
    for c in cs:
        cfg = cell_config(sweep, c, tmp_path / c.run_id)
        assert cfg.model.name == "gemma-3-270m" and cfg.training.seed == c.seed
    stab = load_sweep(str(Path(__file__).parents[1] / "sweeps" / "amazon-raft-stability.yaml"))
    (c1, *_) = cells(stab)  # seed 1 first: the seed that lost its grid mass in table 3
    cfg = cell_config(stab, c1, tmp_path / "s")
    assert c1.seed == 1 and cfg.method.normalize_grid and cfg.training.lr == 1e-4
    table3 = next(
        c for c in cs if c.method == "raft" and c.seed == 1 and c.lr == 1e-4 and "amazon" in c.run_id
    )
    base = cell_config(sweep, table3, tmp_path / "s")  # the same cell but for the normalization
    base.method.normalize_grid = True
    assert base == cfg


def test_a_sweep_deletes_a_runs_weights_once_its_last_cell_is_written(tmp_path, toy_csv, caplog):
    import logging

    from raftlm.core import RaftlmError

    caplog.set_level(logging.INFO, logger="raftlm")
    from raftlm.experiment import run_sweep

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 4, "eval_steps": 2, "batch_size": 4}},
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "raft", "decoder": "rail"}, {"method": "raft", "decoder": "mode"}],
        "lrs": [1e-3],
        "seeds": [0],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    root = run_sweep(str(path))
    run = next(p for p in (root / "runs").iterdir() if p.is_dir())  # (beside it: its data record)
    assert len(list((root / "cells").glob("*.json"))) == 2  # both decoders evaluated the one run
    assert not list(run.glob("*.safetensors")) and not (run / "checkpoints").exists()
    assert (run / "eval_results.json").exists() and (run / "config.yaml").exists()
    assert caplog.text.count("weights deleted") == 1  # after the run's second cell, not its first

    sweep["methods"].append({"method": "raft", "decoder": "median"})  # a decoder added later
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match="no weights left.*keep_models: true"):
        run_sweep(str(path))

    sweep.update(output_dir=str(tmp_path / "kept"), keep_models=True)
    path.write_text(yaml.safe_dump(sweep))
    kept = next(p for p in (run_sweep(str(path)) / "runs").iterdir() if p.is_dir())
    assert list(kept.glob("*.safetensors"))
    sweep["keep_models"] = "no"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match="keep_models must be true or false"):
        run_sweep(str(path))


def test_lrs_are_compared_on_the_seeds_they_all_have():
    # lr_choice first_seed: 1e-5 won seed 0 (validation 0.40 vs 0.50), so only it has seeds 1-2, whose
    # worse validation (0.9) must not hand the choice to 1e-4's single seed
    rows = [
        _row("raft", "rail", 1e-4, 0, 0.50, 0.50),
        _row("raft", "rail", 1e-5, 0, 0.30, 0.40),
        _row("raft", "rail", 1e-5, 1, 0.35, 0.90),
        _row("raft", "rail", 1e-5, 2, 0.40, 0.90),
    ]
    (raft,) = aggregate(rows)
    assert raft["lr"] == 1e-5 and raft["seeds"] == [0, 1, 2] and np.isclose(raft["rmse"], 0.35)


def test_lr_choice_first_seed_runs_later_seeds_at_the_winning_lr_only(tmp_path, toy_csv, caplog, capsys):
    import logging

    from raftlm.cli import main
    from raftlm.core import RaftlmError
    from raftlm.experiment import run_sweep

    caplog.set_level(logging.INFO, logger="raftlm")
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 2, "eval_steps": 2, "batch_size": 4}},
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "ce", "decoder": "rail"}, {"method": "ce", "decoder": "greedy"}],
        "lrs": [1e-6, 1e-2],
        "seeds": [0, 1],
        "lr_choice": "first_seed",
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    # --dry-run: every cell's state and the count, before anything ran; nothing written, no folder made
    capsys.readouterr()
    assert main(["experiment", str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0].strip() for line in plan[:-1]] == ["to run"] * 4 + ["run or skip"] * 4
    assert plan[-1].startswith("0 of 6 cells written, 6 to run, run or skip: the first seed's cells choose")
    assert "next: " in plan[-1] and not (tmp_path / "out").exists()
    root = run_sweep(str(path))
    rows = json.loads((root / "results.json").read_text())
    capsys.readouterr()
    assert main(["experiment", str(path), "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert sorted(line.split("  ")[0] for line in plan[:-1]) == ["skipped"] * 2 + ["written"] * 6
    assert plan[-1] == f"6 of 6 cells written, 0 to run, 2 skipped (their LR lost on the first seed) ({root})"
    seed0 = {(r["decoder"], r["lr"]): r["validation_rmse"] for r in rows if r["seed"] == 0}
    assert len(seed0) == 4  # every lr on the first seed
    for decoder in ("rail", "greedy"):
        won = min((1e-6, 1e-2), key=lambda lr: (seed0[(decoder, lr)], lr))
        assert [r["lr"] for r in rows if r["seed"] == 1 and r["decoder"] == decoder] == [won]
    skipped = caplog.text.count("lost on the first seed")
    assert len(rows) + skipped == 8 and skipped >= 1
    # the progress counts the cells that run (4 on seed 0, seed 1 once at its lr), not the sweep's 8
    counts = re.findall(r"\[(\d+)/(\d+) cells\]", caplog.text)
    assert counts == [(str(k), str(len(rows))) for k in range(1, len(rows) + 1)] and len(rows) == 6
    # every run's weights went, those whose other decoder was skipped too
    assert not list((root / "runs").glob("*/*.safetensors"))
    assert {a["lr"] for a in aggregate(rows)} <= {1e-6, 1e-2}
    # every trained run's validation curve is kept beside the cells: the report draws RMSE vs step
    # (every seed of the chosen lr) without runs/, which holds weights and is not committed
    assert sorted(p.stem for p in (root / "curves").glob("*.jsonl")) == sorted({r["run_id"] for r in rows})
    shutil.rmtree(root / "runs")
    assert [step for step, _ in eval_curve(root, rows[0]["run_id"])] == [2]
    write_report(str(root))
    assert len(list((root / "figures").glob("rmse_vs_step_*.png"))) == 1
    # both decoders chose the lr of the same runs (validation is the run's): one curve, both labels
    (group,) = curve_groups(aggregate(rows), rows)
    assert sorted(group[0]) == ["CE + RAIL", "CE + greedy"] and [r["seed"] for r in group[2]] == [0, 1]
    report = (root / "report.md").read_text()  # one check at step 2 per run: nothing left to fall
    assert "| CE + RAIL | flat x2 (0.000) |" in report and "| CE + greedy | flat x2 (0.000) |" in report
    sweep["lr_choice"] = "best"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match="lr_choice 'best' is not one of"):
        run_sweep(str(path))


def test_curve_state_says_whether_a_validation_curve_was_still_falling_past_best_or_flat():
    from raftlm.report import curve_state

    state, drop = curve_state([(100, 1.0), (200, 0.9), (300, 0.85), (400, 0.8)])
    assert state == "still falling" and np.isclose(drop, 0.05)  # lowest last, 0.05 below step 300
    state, rise = curve_state([(100, 1.0), (200, 0.7), (300, 0.75), (400, 0.8)])
    assert state == "past best" and np.isclose(rise, 0.1)
    state, spread = curve_state([(100, 1.0), (200, 0.7), (300, 0.705), (400, 0.708)])
    assert state == "flat" and np.isclose(spread, 0.003)  # ended 0.008 above its lowest: under 0.01
    state, spread = curve_state([(100, 1.0), (200, 0.71), (300, 0.705), (400, 0.70)])
    assert state == "flat" and np.isclose(spread, 0.005)  # still going down, by under 0.01 per 100 steps


def test_report_marks_entries_whose_seeds_collapsed_and_lists_every_collapsed_cell():
    from raftlm.report import tables

    rows = [dict(r) for r in FIXTURE]
    rows[1]["collapsed"] = "every prediction is 3 (std 0.0e+00, targets' 1.2)"  # raft lr 1e-4 seed 1: chosen
    rows[4]["collapsed"] = "the grid holds 1.0e-09 of the model's probability"  # raft lr 1e-5 seed 1
    md = tables(aggregate(rows), rows)
    assert (
        "| RAFT + 1.0 x CE (two-hot target) | **0.500 ± 0.100 †** |" in md
        and "| CE + RAIL | 0.750 ± 0.071 |" in md
    )
    assert "- RAFT + 1.0 x CE (two-hot target) on stsb-1k, lr 0.0001, seed 1: every prediction is 3" in md
    assert "- RAFT + 1.0 x CE (two-hot target) on stsb-1k, lr 1e-05, seed 1: the grid holds 1.0e-09" in md
    assert "†" not in tables(aggregate(FIXTURE), FIXTURE)


def test_method_options_make_an_ablation_its_own_run_and_its_own_row(tmp_path):
    from raftlm.core import RaftlmError
    from raftlm.experiment import cell_config
    from raftlm.report import label

    sweep = {
        "output_dir": str(tmp_path),
        "datasets": ["stsb-1k"],
        "models": ["gemma"],
        "methods": ["raft", {"method": "raft", "normalize_grid": True}],
        "lrs": [1e-4],
        "seeds": [0],
    }
    plain, normed = cells(sweep)
    assert plain.run_id == "stsb-1k--gemma--raft--lr0.0001--s0"
    assert normed.run_id == "stsb-1k--gemma--raft_normalize_grid_True--lr0.0001--s0"
    assert cell_config(sweep, normed, tmp_path / "r").method.normalize_grid is True
    assert cell_config(sweep, plain, tmp_path / "r").method.normalize_grid is False
    assert (
        label({"method": "raft", "decoder": "rail", "options": normed.options_label})
        == "RAFT + 1.0 x CE (two-hot target) (normalize_grid=True)"
    )
    rows = [
        {**_row("raft", "rail", 1e-4, 0, 0.5, 0.5), "options": ""},
        {**_row("raft", "rail", 1e-4, 0, 0.4, 0.4), "options": "normalize_grid=True"},
    ]
    assert {a["label"]: a["rmse"] for a in aggregate(rows)} == {
        "RAFT + 1.0 x CE (two-hot target)": 0.5,
        "RAFT + 1.0 x CE (two-hot target) (normalize_grid=True)": 0.4,
    }
    sweep["methods"] = [{"method": "raft", "normalise_grid": True}]
    with pytest.raises(RaftlmError, match="normalise_grid"):
        cell_config(sweep, cells(sweep)[0], tmp_path / "r")


def test_a_bad_setting_in_any_cell_fails_before_the_first_cell_runs(tmp_path, toy_csv):
    from raftlm.core import RaftlmError
    from raftlm.experiment import run_sweep

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 2, "batch_size": 4}},
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": ["raft", {"method": "raft", "warmup_steps": "ten"}],  # the second arm is broken
        "lrs": [1e-3],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match=r"sweep cell .*warmup_steps.*training.warmup_steps='ten'"):
        run_sweep(str(path))
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    sweep["methods"], sweep["lrs"] = ["raft"], ["fast"]
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match="sweep lrs='fast' is not a number"):
        run_sweep(str(path))
    path.write_text("output_dir: [unclosed\n")
    with pytest.raises(RaftlmError, match="is not valid YAML"):
        run_sweep(str(path))


def test_report_lists_a_collapsed_zero_shot_cell(tmp_path):
    rows = [dict(r) for r in FIXTURE]
    rows[-1]["collapsed"] = "the grid holds 1.0e-09 of the model's probability"  # the zero-shot cell
    (tmp_path / "results.json").write_text(json.dumps(rows))
    write_report(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "- zero-shot + RAIL on stsb-1k, zero-shot, seed 0: the grid holds 1.0e-09" in md
    assert "| zero-shot + RAIL | 1.200 † |" in md


def test_report_of_a_running_sweep_names_the_entries_short_of_its_planned_seeds(tmp_path):
    from raftlm.report import planned_seeds, tables

    # raft has 3 seeds, ce + rail 2: the line names ce only, and with a 5-seed sweep names both
    md = tables(aggregate(FIXTURE), FIXTURE)
    assert md.startswith("Seeds behind trained entries: 3, except CE + RAIL on stsb-1k: 2.\n")
    md = tables(aggregate(FIXTURE), FIXTURE, planned_seeds=5)
    assert md.startswith(
        "Seeds behind trained entries (the sweep runs 5; still running or stopped early): "
        "RAFT + 1.0 x CE (two-hot target) on stsb-1k: 3; CE + RAIL on stsb-1k: 2.\n"
    )
    assert "Seeds behind" not in tables(aggregate(FIXTURE[:6]), FIXTURE[:6], planned_seeds=3)
    sweep = "output_dir: out\ndatasets: [stsb-1k]\nmodels: [tiny]\nmethods: [raft]\n"
    (tmp_path / "sweep.yaml").write_text(sweep + "seeds: [0, 1, 2, 3]\n")
    assert planned_seeds(tmp_path) == 4
    (tmp_path / "sweep.yaml").write_text(sweep)  # no seeds: the sweep's default, seed 0
    assert planned_seeds(tmp_path) == 1
    (tmp_path / "sweep.yaml").write_text("seeds: [0, 1\n")  # unreadable: unknown, not an error
    assert planned_seeds(tmp_path) is None and planned_seeds(tmp_path / "none") is None


def test_report_tables_the_step_each_entry_was_tested_at():
    from raftlm.report import tables

    md = tables(aggregate(FIXTURE), FIXTURE)
    # best_step 100 x (seed + 1): raft seeds 0-2 -> 200 ± 100; ce seeds 0-1 -> 150 ± 71; no bold, no zero-shot
    part = md.split("**Step of the lowest validation RMSE (the checkpoint tested), gemma**")[1].split("\n\n")[
        1
    ]
    assert part.splitlines()[2:] == [
        "| RAFT + 1.0 x CE (two-hot target) | 200 ± 100 |",
        "| CE + RAIL | 150 ± 71 |",
    ]


def test_eta_prices_each_run_to_train_once_and_each_cell_its_test_time():
    from raftlm.experiment import eta_seconds

    sweep = {
        "output_dir": "x",
        "datasets": ["a", "b"],
        "models": ["m"],
        "methods": [{"method": "ce", "decoder": "rail"}, {"method": "ce", "decoder": "greedy"}],
        "lrs": [1e-4, 1e-5],
        "seeds": [0, 1],
        "lr_choice": "first_seed",
    }
    todo = cells(sweep)
    assert eta_seconds(sweep, todo, []) is None

    def done(c, train, test):
        return {
            "dataset": c.dataset["dataset"],
            "decoder": c.decoder,
            "run_id": c.run_id,
            "train_runtime_s": train,
            "eval_seconds": test,
        }

    a0 = [c for c in todo if c.dataset["dataset"] == "a" and c.seed == 0]  # 2 lrs x 2 decoders
    run = [c for c in a0 if c.run_id == a0[0].run_id]
    assert len(run) == 2
    rows = [done(run[0], 1000, 10), done(run[1], 1000, 30)]  # one run of a, both decoders written
    left = [c for c in todo if c not in run]
    # runs to train: a seed 0 the other lr; b seed 0 both lrs; seed 1 one run each of a and b (lr undecided)
    # = 5 runs x 1000 s (b has no history: the mean over datasets); cells: 2 + 4 + 2 + 2 = 10 x 20 s
    assert eta_seconds(sweep, left, rows) == 5 * 1000 + 10 * 20
    sweep["lr_choice"] = "all_seeds"  # every lr of seed 1 runs: 2 more runs, 4 more cells
    assert eta_seconds(sweep, left, rows) == 7 * 1000 + 14 * 20
    # once b has history its own means price it: b's written cell's run (trained) costs only its other cell
    b0 = next(c for c in left if c.dataset["dataset"] == "b")
    left.remove(b0)
    rows.append(done(b0, 3000, 50))
    # a: 1 + 2 runs x 1000, 2 + 4 cells x 20; b: 1 + 2 runs x 3000 (one of seed 0's is trained), 1 + 2 + 4 cells x 50
    assert eta_seconds(sweep, left, rows) == 3 * 1000 + 6 * 20 + 3 * 3000 + 7 * 50

    # arms price apart: a head on a frozen LM trains in a fraction of a fine-tuning's time, and a greedy
    # decode tests slower than RAIL; an arm with no history yet costs its dataset's mean
    sweep["methods"] = [{"method": "ce", "decoder": "rail"}, {"method": "head-pooled", "trainable": "none"}]
    sweep["datasets"], sweep["lr_choice"] = ["a"], "all_seeds"
    todo = cells(sweep)
    ce, head = ([c for c in todo if c.method == m] for m in ("ce", "head-pooled"))
    assert len(ce) == len(head) == 4
    rows = [done(ce[0], 1000, 10)]
    assert eta_seconds(sweep, todo[1:], rows) == 3 * 1000 + 3 * 10 + 4 * (1000 + 10)
    rows.append(done(head[0], 60, 4))
    left = [c for c in todo if c not in (ce[0], head[0])]
    assert eta_seconds(sweep, left, rows) == 3 * 1000 + 3 * 10 + 3 * (60 + 4)


def test_report_sets_each_raft_entry_against_the_best_other_method():
    from raftlm.report import raft_vs_best

    text = raft_vs_best(aggregate(FIXTURE))
    # raft at its chosen lr 1e-4: 0.5 +- 0.1 (3 seeds) vs ce + rail 0.75 +- 0.071 (2 seeds); Welch's p =
    # scipy.stats.ttest_ind([0.5, 0.6, 0.4], [0.7, 0.8], equal_var=False).pvalue = 0.0494
    assert (
        "| stsb-1k | gemma | RAFT + 1.0 x CE (two-hot target): 0.500 ± 0.100 | CE + RAIL: 0.750 ± 0.071 | -0.250 | 0.05 | RAFT lower |"
        in text
    )
    losing = [dict(r, rmse=r["rmse"] + 0.3) if r["method"] == "raft" else r for r in FIXTURE]
    assert "| +0.050 | 0.56 | RAFT not lower |" in raft_vs_best(aggregate(losing))
    assert raft_vs_best(aggregate([r for r in FIXTURE if r["method"] != "raft"])) == ""
    assert "RAFT against the best other method" in tables(aggregate(FIXTURE))


def one_cell_sweep(tmp_path: Path, data: Path, **base) -> tuple[Path, dict]:
    """A sweep of one RAFT cell (tiny model, one step) on the CSV ``data``, written to tmp_path/sweep.yaml;
    ``base`` adds config sections to its base."""
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {
            "training": {"max_steps": 1, "eval_steps": 1, "batch_size": 4},
            "method": {"grid": "1-5"},
            **base,
        },
        "datasets": [f"csv:{data}"],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-3],
        "seeds": [0],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path, sweep


def test_a_sweep_run_again_with_other_settings_or_data_refuses_its_old_cells(tmp_path, toy_csv):
    """Cells are keyed by dataset, model, method, lr and seed: a changed grid or step count, or an edited
    data file, used to reuse the old results under a sweep.yaml rewritten to claim the new settings."""
    from raftlm.experiment import run_sweep

    data = tmp_path / "toy.csv"
    data.write_bytes(Path(toy_csv).read_bytes())
    path, sweep = one_cell_sweep(tmp_path, data)
    run_sweep(str(path), quiet=True)
    saved = (tmp_path / "out" / "sweep.yaml").read_text()
    assert run_sweep(str(path), quiet=True)  # the same sweep again: its cell stands
    sweep["base"]["method"]["grid"] = "0-10"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(
        RaftlmError, match="was computed with other settings or data than the sweep file now gives"
    ):
        run_sweep(str(path), quiet=True)
    assert (tmp_path / "out" / "sweep.yaml").read_text() == saved  # not rewritten to claim the new grid
    sweep["base"]["method"]["grid"] = "1-5"
    path.write_text(yaml.safe_dump(sweep))
    cell = next((tmp_path / "out" / "cells").glob("*.json"))
    # a setting raftlm gained since the cell ran, at its default, is what the cell ran with: it stands
    row = json.loads(cell.read_text())
    assert row["config"]["method.grid"] == "1-5" and row["data_sha256"]
    del row["config"]["data.pair_swap"]
    cell.write_text(json.dumps(row))
    assert run_sweep(str(path), quiet=True)
    # ...but a setting whose value differs is refused, named
    row["config"]["training.warmup_steps"] = 7
    cell.write_text(json.dumps(row))
    with pytest.raises(RaftlmError, match=r"other settings or data .*\(training.warmup_steps 7 -> None\)"):
        run_sweep(str(path), quiet=True)
    del row["config"]["training.warmup_steps"]
    cell.write_text(json.dumps(row))
    assert run_sweep(str(path), quiet=True)
    # a cell of a sweep that leaves eval.batch_size to follow training's (4), recorded at the fixed 16 of
    # before: the same numbers but for summation order, so it stands (every such folder was refused)
    assert row["config"]["eval.batch_size"] == 4
    row["config"]["eval.batch_size"] = 16
    cell.write_text(json.dumps(row))
    assert run_sweep(str(path), quiet=True)
    row["config"]["eval.batch_size"] = 8  # (not what any default gave: refused)
    cell.write_text(json.dumps(row))
    with pytest.raises(RaftlmError, match=r"other settings or data .*\(eval.batch_size 8 -> 4\)"):
        run_sweep(str(path), quiet=True)
    row["config"]["eval.batch_size"] = 4
    cell.write_text(json.dumps(row))
    data.write_text(data.read_text() + "an added row. rating:,3\n")
    with pytest.raises(RaftlmError, match=r"other settings or data .*\(the data file .*toy.csv changed\)"):
        run_sweep(str(path), quiet=True)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[1] / "sweeps").glob("*.yaml")), ids=str
)
def test_every_shipped_sweep_builds_every_cell_config(name, tmp_path):
    """A sweep file a background run will read hours later fails now, not then: each cell's config builds."""
    from raftlm.experiment import cell_config, load_sweep

    sweep = load_sweep(str(Path(__file__).parents[1] / "sweeps" / name))
    cs = cells(sweep)
    assert cs
    for c in cs:
        cfg = cell_config(sweep, c, tmp_path / c.run_id)
        assert cfg.training.seed == c.seed and (c.lr is None or cfg.training.lr == c.lr)


def test_every_shipped_sweep_has_a_row_in_reproducing_md():
    """docs/reproducing.md lists the sweeps behind every number: a new sweep file gets its row."""
    root = Path(__file__).parents[1]
    rows = [
        line for line in (root / "docs" / "reproducing.md").read_text().splitlines() if line.startswith("| `")
    ]
    missing = [
        p.name for p in (root / "sweeps").glob("*.yaml") if not any(f"`sweeps/{p.name}`" in r for r in rows)
    ]
    assert not missing


# pre-registered sweeps queued behind others (benchmarks/sweep_queue.sh): no cells committed yet
NOT_RUN_YET = {"bf16-lever.yaml", "ema-base.yaml"}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (Path(__file__).parents[1] / "sweeps").glob("*.yaml")), ids=str
)
def test_every_committed_cell_matches_its_shipped_sweep_file(name):
    """A default changed since a sweep ran must be pinned in its file: rerunning the sweep (to resume it or
    add cells) would otherwise refuse its committed cells as computed with other settings."""
    from raftlm.experiment import check_cell_settings, load_sweep

    root = Path(__file__).parents[1]
    sweep = load_sweep(str(root / "sweeps" / name))
    out = root / sweep["output_dir"]
    checked = 0
    for c in cells(sweep):
        path = out / "cells" / f"{c.cell_id}.json"
        if path.exists():
            check_cell_settings(json.loads(path.read_text()), c, sweep, out, path)
            checked += 1
    assert checked or name in NOT_RUN_YET  # every shipped sweep has committed cells, or is queued


def docs_at(results: Path, monkeypatch):
    """benchmarks/docs.py reading its results from ``results`` (a test's folder of results files)."""
    docs = benchmark_module("docs")
    monkeypatch.setattr(docs, "RESULTS", results)
    docs.load.cache_clear()
    return docs


def test_docs_shipped_default_row_picks_its_lr_on_seed_0_validation_across_folders(tmp_path, monkeypatch):
    """benchmarks/docs.py's "as shipped" row gathers the default's cells from several sweep folders, takes a
    (LR, seed) found twice from the first folder listed, and follows table 3's rule: the LR whose seed 0 has
    the lower validation RMSE, every seed at that LR."""
    docs = docs_at(tmp_path, monkeypatch)

    def cell(lr, seed, val, test, options=""):
        return {
            "dataset": "amazon-snippets",
            "model": "gemma-3-270m",
            "method": "raft",
            "decoder": "rail",
            "train_fraction": None,
            "options": options,
            "lr": lr,
            "seed": seed,
            "validation_rmse": val,
            "rmse": test,
            "collapsed": False,
        }

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(
        json.dumps(
            [cell(1e-4, 0, 0.61, 0.66, "x"), cell(1e-4, 1, 0.62, 0.65, "x"), cell(5e-5, 0, 0.60, 0.70, "x")]
        )
    )
    (tmp_path / "b" / "results.json").write_text(
        json.dumps(
            [
                cell(5e-5, 0, 0.50, 0.10),
                cell(5e-5, 1, 0.59, 0.64),
                cell(5e-5, 2, 0.58, 0.62),
                cell(1e-4, 0, 0.1, 0.1, "x"),
            ]
        )
    )
    monkeypatch.setitem(docs.SHIPPED_ARMS, "amazon-snippets", [("a", "raft", "x"), ("b", "raft", "")])
    e = docs.shipped_entry("amazon-snippets")
    assert e["lr"] == 5e-5 and e["seeds"] == [0, 1, 2]  # seed 0 at 5e-5 from folder a (0.60 < 0.61), not b's
    assert e["rmse"] == pytest.approx((0.70 + 0.64 + 0.62) / 3)
    assert e["rmse_std"] == pytest.approx(np.std([0.70, 0.64, 0.62], ddof=1))
    table = docs.lr_default_table()  # docs/defaults.md's LR choice: the same cells, the same winner
    assert "| amazon-snippets | 0.6000 | 0.6100 | 5e-5 | 3 |" in table
    assert "| movielens-100k | - | - | - | 0 |" in table  # no cells in this folder
    # the losing LR with more seeds whose mean over the seeds both LRs have is lower (STS-B's 1e-4 in
    # stsb-levers against lr-default's 5e-5): still seed 0's choice, as every table-3 row's
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(
        json.dumps(
            [cell(1e-4, s, v, t) for s, v, t in ((0, 0.7273, 0.75), (1, 0.7219, 0.75), (2, 0.756, 0.77))]
            + [cell(5e-5, s, v, t) for s, v, t in ((0, 0.7268, 0.79), (1, 0.7228, 0.78))]
        )
    )
    monkeypatch.setitem(docs.SHIPPED_ARMS, "amazon-snippets", [("c", "raft", "")])
    e = docs.shipped_entry("amazon-snippets")
    assert e["lr"] == 5e-5 and e["seeds"] == [0, 1] and e["rmse"] == pytest.approx(0.785)
    assert "| amazon-snippets | 0.7268 | 0.7273 | 5e-5 | 2 |" in docs.lr_default_table()
    monkeypatch.setitem(docs.SHIPPED_ARMS, "amazon-snippets", [("missing", "raft", "")])
    assert docs.shipped_entry("amazon-snippets") is None


def test_docs_rows_with_added_seeds_merge_folders_and_say_the_design(tmp_path, monkeypatch):
    """A table-3 row given more seeds in another folder (EXTRA_ARMS: sweeps/stsb-seeds.yaml) is the mean of
    every seed at its LR, and the default-vs-best sentence says that seeds were added after a first p, with
    the p the first three seeds gave."""
    from raftlm.report import welch_p

    docs = docs_at(tmp_path, monkeypatch)

    def cell(method, lr, seed, test, options=""):
        return {
            "dataset": "stsb-1k",
            "model": "gemma-3-270m",
            "method": method,
            "decoder": "head" if method == "head-pooled" else "rail",
            "train_fraction": None,
            "options": options,
            "lr": lr,
            "seed": seed,
            "validation_rmse": test - 0.01,
            "rmse": test,
            "collapsed": False,
        }

    mine = {0: 0.786, 1: 0.775, 2: 0.776, 3: 0.770, 4: 0.772}
    head = {0: 0.784, 1: 0.794, 2: 0.791, 3: 0.795, 4: 0.788}
    table3 = [cell("head-pooled", 1e-4, s, head[s]) for s in range(3)] + [cell("head-pooled", 5e-5, 0, 0.9)]
    seeds = [cell("head-pooled", 1e-4, s, head[s], "pair_swap=none") for s in (3, 4)]
    seeds += [cell("raft", 5e-5, s, mine[s]) for s in (3, 4)]
    for folder, rows in (
        (docs.TABLE3, table3),
        ("lr-default", [cell("raft", 5e-5, s, mine[s]) for s in range(3)]),
        ("stsb-seeds", seeds),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(rows))
    summary = [{**a, "label": "mean-pooled head"} for a in aggregate(table3)]
    (tmp_path / docs.TABLE3 / "summary.json").write_text(json.dumps(summary))
    for ds in ("amazon-snippets", "movielens-100k"):
        monkeypatch.setitem(docs.SHIPPED_ARMS, ds, [("missing", "raft", "")])
    entry = docs.summary()
    ours, theirs = entry["stsb-1k", docs.SHIPPED], entry["stsb-1k", "mean-pooled head"]
    assert ours["seeds"] == theirs["seeds"] == [0, 1, 2, 3, 4] and theirs["lr"] == 1e-4
    assert theirs["rmse"] == pytest.approx(np.mean(list(head.values())))
    first = [
        {"rmse": np.mean(v[:3]), "rmse_std": np.std(v[:3], ddof=1), "seeds": [0, 1, 2]}
        for v in (list(mine.values()), list(head.values()))
    ]
    text = docs.raft_vs_best()
    assert text == (
        f"STS-B-1K: {ours['rmse']:.3f} against {theirs['rmse']:.3f} (mean-pooled head; "
        f"{ours['rmse'] - theirs['rmse']:+.3f}, p {welch_p(ours, theirs)} over 5 and 5 seeds; the default and the "
        f"mean-pooled head's seeds past the first 3 were added after p {welch_p(*first)} over those)"
    )
    assert welch_p(ours, theirs) != welch_p(*first)

    # the table bolds the lowest entry among those with every table-3 seed: one seed is not yet a finding
    (tmp_path / "raft-head-lever").mkdir()
    lone = {**cell("raft-head", 1e-4, 0, 0.700), "decoder": "head"}
    (tmp_path / "raft-head-lever" / "results.json").write_text(json.dumps([lone]))
    docs.load.cache_clear()
    md = docs.table3([docs.SHIPPED, "mean-pooled head", docs.RAFT_HEAD])
    assert f"| **{docs.entry_text(ours)}** (5) |" in md and "| 0.700 (1) |" in md


def test_correction_bound_measures_what_a_linear_correction_removes():
    """benchmarks/correction_bound.py: a bias and a scale of the predictions are what the oracle removes
    (RMSE to the noise), the 2-fold fit nearly so; unbiased predictions leave nothing to remove."""
    cb = benchmark_module("correction_bound")
    rng = np.random.RandomState(1)
    y = rng.uniform(1, 5, 2000)
    noise = rng.normal(0, 0.3, 2000)
    grid = np.arange(-3.0, 10.0)  # wide enough for every prediction below

    def cell_row(y, p):  # grid probabilities whose RAIL is p: its two neighbouring grid values
        lo = np.floor(p).astype(int)
        i, w = lo - int(grid[0]), p - lo
        probs = np.zeros((len(p), len(grid)))
        probs[np.arange(len(p)), i], probs[np.arange(len(p)), i + 1] = 1 - w, w
        return cb.cell_row(y, probs @ grid, probs, grid)

    row = cell_row(y, y + noise + 0.5)  # noisy and shifted: RMSE sqrt(0.3^2 + 0.5^2)
    assert row["rmse"] == pytest.approx(0.583, abs=0.02)
    assert row["oracle_rmse"] == pytest.approx(0.29, abs=0.02)  # the noise, less its regression to the mean
    assert row["oracle_rmse"] <= row["two_fold_rmse"] < row["oracle_rmse"] + 0.005
    fair = cell_row(y + noise, y)  # a conditional mean: the targets scatter around the predictions
    assert fair["rmse"] - fair["oracle_rmse"] < 0.001 and fair["slope"] == pytest.approx(1.0, abs=0.02)


def test_correction_bound_finds_the_temperature_that_undoes_an_overconfident_distribution():
    """An overconfident grid distribution (the true one's logits x 2) is undone by temperature 2: the oracle
    RMSE falls to the targets' own noise, and RAIL's data units come from the rows (here 10 x grid - 3)."""
    cb = benchmark_module("correction_bound")
    rng = np.random.RandomState(2)
    grid = np.arange(1.0, 6.0)
    logits = rng.normal(0, 1.5, (3000, 5))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sharp = np.exp(2 * logits) / np.exp(2 * logits).sum(1, keepdims=True)
    y = 10 * (true @ grid) - 3 + rng.normal(0, 0.1, 3000)
    row = cb.cell_row(y, 10 * (sharp @ grid) - 3, sharp, grid)
    assert row["temperature"] == pytest.approx(2.0, abs=0.05)
    assert row["temperature_oracle_rmse"] == pytest.approx(0.1, abs=0.005)
    assert row["rmse"] > 0.5
    assert (
        row["temperature_oracle_rmse"]
        <= row["temperature_two_fold_rmse"]
        < row["temperature_oracle_rmse"] + 0.005
    )


def test_a_sweep_with_eval_size_samples_a_split_in_file_order_and_keeps_split_indices(tmp_path):
    """eval_size on a test split kept in its file's order (sorted by target here) scores a seeded sample,
    not the file's first rows, and every prediction row names its example's index in the whole split."""
    from helpers import write_csv

    from raftlm.experiment import run_sweep

    rows = [
        {"text": f"item {i}. rating:", "target": 1 + (i % 40) / 10, "split": s}
        for s in SPLIT_NAMES
        for i in range(40)
    ]
    rows = sorted(rows, key=lambda r: (r["split"], r["target"]))
    data = write_csv(tmp_path / "sorted.csv", rows)
    path, _ = one_cell_sweep(tmp_path, data, eval={"eval_size": 8})
    run_sweep(str(path), quiet=True)
    (pred,) = (tmp_path / "out" / "predictions").glob("*.jsonl")
    got = [json.loads(line) for line in pred.read_text().splitlines()]
    test = sorted(1 + (i % 40) / 10 for i in range(40))
    assert len(got) == 8 and [r["index"] for r in got] != list(range(8))  # not the 8 lowest targets
    assert all(r["target"] == test[r["index"]] for r in got)  # each index is the row's place in the split


def test_default_shipped_reads_each_cells_validation_passes_from_a_shared_log(tmp_path):
    """benchmarks/default_shipped.py times a seed's validation passes from the sweep's log, which holds every
    cell the sweep ran (a resumed cell announced twice): only the passes after that cell's lines count."""
    ds = benchmark_module("default_shipped")
    bar = "validation: 100%|##########| 108/108 [{}<00:00,  1.30it/s]\r"
    log = tmp_path / "sweep.log"
    log.write_text(
        "[1/2 cells] a--rail\n"
        + bar.format("01:30")
        + bar.format("01:00:05")
        + "[2/2 cells] b--rail\n"
        + bar.format("00:40")
        + "validation:  50%|#####| 54/108 [00:20<00:20]\n"
        + "[2/2 cells] b--rail (resumed)\n"
        + bar.format("00:50")
        + "validation: 100%|##########| 38/38 [00:10<00:00]\n"
    )
    assert ds.validation_passes(108, log, "a--rail") == [90, 3605]
    assert ds.validation_passes(108, log, "b--rail") == [40, 50]
    assert ds.validation_passes(108, log) == [90, 3605, 40, 50] and ds.validation_passes(38, log) == [10]
    assert ds.validation_passes(108, tmp_path / "missing.log", "a--rail") == []


def test_docs_raft_head_decision_follows_its_preregistered_rule(tmp_path, monkeypatch):
    """sweeps/raft-head-lever.yaml's rule as benchmarks/docs.py says it: raft-head's mean validation RMSE (LR
    chosen on seed 0) against the default's on the same seeds, pending until every dataset has seeds 0-2,
    and the default changes only if raft-head is lower on all three."""
    docs = docs_at(tmp_path, monkeypatch)

    def cell(dataset, method, lr, seed, val):
        return {
            "dataset": dataset,
            "model": "gemma-3-270m",
            "method": method,
            "decoder": "head" if method == "raft-head" else "rail",
            "train_fraction": None,
            "options": "",
            "lr": lr,
            "seed": seed,
            "validation_rmse": val,
            "rmse": val + 0.02,
            "collapsed": False,
        }

    base = {"stsb-1k": 0.74, "amazon-snippets": 0.61, "movielens-100k": 1.05}
    default = [cell(ds, "raft", 1e-4, s, v + 0.01 * s) for ds, v in base.items() for s in range(3)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps(default))
    for ds in base:
        monkeypatch.setitem(docs.SHIPPED_ARMS, ds, [("d", "raft", "")])

    def write(rows):
        (tmp_path / "raft-head-lever").mkdir(exist_ok=True)
        (tmp_path / "raft-head-lever" / "results.json").write_text(json.dumps(rows))
        docs.load.cache_clear()
        return docs.raft_head_decision()

    # STS-B seed 0 at both LRs (5e-5 wins on validation): compared with the default's seed 0 only
    text = write([cell("stsb-1k", "raft-head", 5e-5, 0, 0.70), cell("stsb-1k", "raft-head", 1e-4, 0, 0.80)])
    assert text.startswith("STS-B-1K: 0.700 against 0.740 (1 seed, LR 5e-5); Amazon snippets: not run yet")
    assert text.endswith("(decision pending: 0 of 3 datasets have seeds 0-2)")
    lower = [cell(ds, "raft-head", 1e-4, s, v - 0.005) for ds, v in base.items() for s in range(3)]
    text = write(lower)
    assert "STS-B-1K: 0.735 against 0.750 (3 seeds, LR 1e-4)" in text
    assert text.endswith("(lower on all three: raft-head becomes the default)")
    # MovieLens: 1.070 against the default's mean 1.060 over seeds 0-2: not lower there
    mixed = lower[:6] + [cell("movielens-100k", "raft-head", 1e-4, s, 1.07) for s in range(3)]
    text = write(mixed)
    assert "MovieLens-100K: 1.070 against 1.060 (3 seeds, LR 1e-4)" in text
    assert text.endswith("(lower on 2 of 3: the default stays, raft-head is an option)")
    # not lower on one dataset with seeds 0-2 decides it while the others are still pending
    text = write(mixed[6:] + lower[:4])
    assert (
        "STS-B-1K: 0.735 against 0.750 (3 seeds, LR 1e-4); Amazon snippets: 0.605 against 0.610 (1 seed"
        in text
    )
    assert text.endswith(
        "(not lower on MovieLens-100K at seeds 0-2, which decides it: the default stays, raft-head is an option)"
    )

    # sweeps/bf16-lever.yaml's rule: at most the default's + 0.005 on all three (the same comparison)
    def bf16(rows):
        (tmp_path / "bf16-lever").mkdir(exist_ok=True)
        (tmp_path / "bf16-lever" / "results.json").write_text(json.dumps(rows))
        docs.load.cache_clear()
        return docs.bf16_decision()

    def bf16_cell(ds, seed, val):
        return {**cell(ds, "raft", 1e-4, seed, val), "options": "bf16=True"}

    at_margin = [bf16_cell(ds, s, v + 0.01 * s + 0.005) for ds, v in base.items() for s in range(3)]
    assert bf16(at_margin[:1]).endswith("(decision pending: 0 of 3 datasets have seeds 0-2)")
    text = bf16(at_margin)
    assert "Amazon snippets: 0.625 against 0.620 (3 seeds, LR 1e-4)" in text
    assert text.endswith("(within +0.005 on all three: training.bf16 defaults to auto)")
    over = at_margin[:8] + [bf16_cell("movielens-100k", 2, 1.05 + 0.02 + 0.0065)]  # mean 0.0055 over
    assert bf16(over).endswith("(within +0.005 on 2 of 3: bf16 training stays opt-in)")

    # what the correction adds on test, over the cells at the chosen LR that record their RAIL part
    assert docs.raft_head_rail_part().startswith("STS-B-1K: not recorded yet;")
    mixed[1]["rail_only_rmse"], mixed[2]["rail_only_rmse"] = 0.80, 0.90  # STS-B seeds 1, 2 (test 0.755)
    write(mixed + [{**cell("stsb-1k", "raft-head", 5e-5, 0, 0.9), "rail_only_rmse": 2.0}])  # not its LR
    assert docs.raft_head_rail_part().startswith("STS-B-1K: 0.755 with it, 0.850 without (2 seeds); Amazon")


def test_docs_ema_decision_compares_the_same_seeds_at_lr_1e_4(tmp_path, monkeypatch):
    """sweeps/ema-lever.yaml's rule as benchmarks/docs.py says it: the average's mean validation RMSE
    against the default's without it over the same seeds (LR 1e-4, from each dataset's own folder), adopted
    only if lower on all three at seeds 0-2."""
    docs = docs_at(tmp_path, monkeypatch)
    base = {"stsb-1k": 0.74, "amazon-snippets": 0.61, "movielens-100k": 1.05}

    def cell(ds, seed, val, options=""):
        return {"dataset": ds, "method": "raft", "lr": 1e-4, "seed": seed, "options": options,
                "validation_rmse": val, "rmse": val + 0.02, "spearman": 0.8}  # fmt: skip

    plain = [cell(ds, s, v + 0.01 * s) for ds, v in base.items() for s in range(3)]
    plain.append({**cell("stsb-1k", 0, 0.5), "lr": 5e-5})  # another LR: not compared
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "results.json").write_text(json.dumps(plain))
    for ds in base:
        monkeypatch.setitem(docs.EMA_BASE, ds, [("plain", "raft", ""), ("missing", "raft", "")])

    def decide(rows):
        (tmp_path / "ema-lever").mkdir(exist_ok=True)
        (tmp_path / "ema-lever" / "results.json").write_text(json.dumps(rows))
        docs.load.cache_clear()
        return docs.ema_decision()

    ema = [cell(ds, s, v + 0.01 * s - 0.004, "ema=0.99") for ds, v in base.items() for s in range(3)]
    text = decide([ema[1]])  # STS-B seed 1 alone: the default's seed 1 only
    assert text.startswith("STS-B-1K: 0.746 against 0.750 (1 seed); Amazon snippets: not run yet")
    assert text.endswith("(decision pending: 0 of 3 datasets have seeds 0-2)")
    assert decide(ema).endswith("(lower on all three: --ema 0.99 becomes the default)")
    worse = [*ema[:3], {**ema[3], "validation_rmse": 0.63}, *ema[4:6]]  # Amazon 0.630, 0.616, 0.626
    text = decide(worse)
    assert "Amazon snippets: 0.624 against 0.620 (3 seeds); MovieLens-100K: not run yet" in text
    assert text.endswith(
        "(not lower on Amazon snippets at seeds 0-2, which decides it: the average stays an option)"
    )


def test_a_raft_head_cell_records_its_rail_part_alone(tmp_path, toy_csv):
    """A raft-head cell's predictions carry each row's correction, and the cell the test RMSE of its RAIL
    part alone (the prediction less the correction): what the correction adds, from the one test pass."""
    from raftlm.experiment import run_sweep
    from raftlm.metrics import regression_metrics

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 4, "eval_steps": 2, "batch_size": 4}},
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "raft-head"}],
        "lrs": [1e-2],
        "seeds": [0],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    root = run_sweep(str(path))
    (cell_file,) = (root / "cells").glob("*.json")
    cell = json.loads(cell_file.read_text())
    rows = [json.loads(line) for line in (root / "predictions" / cell_file.name).with_suffix(".jsonl").open()]
    y = [r["target"] for r in rows]
    rail = [r["prediction"] - r["correction"] for r in rows]
    assert cell["rail_only_rmse"] == pytest.approx(regression_metrics(y, rail)["rmse"])
    assert cell["rmse"] == pytest.approx(regression_metrics(y, [r["prediction"] for r in rows])["rmse"])
    assert cell["rail_only_rmse"] != pytest.approx(cell["rmse"])  # the trained correction moved it


def test_a_sweep_file_is_checked_whole_before_its_first_cell(tmp_path, toy_csv):
    """A base section left empty crashed with a TypeError; a misspelled dataset or model, or a data file
    that is not there, passed every check and failed only when its cells came up (hours in)."""
    from raftlm.experiment import plan_sweep

    path, sweep = one_cell_sweep(tmp_path, Path(toy_csv))
    sweep["base"]["model"] = None  # `model:` with nothing under it
    path.write_text(yaml.safe_dump(sweep))
    assert "0 of 1 cells written, 1 to run" in plan_sweep(str(path))
    for key, entry, said in (
        ("datasets", "amazon-snipets", r"^sweep datasets: unknown dataset 'amazon-snipets': use one of"),
        (
            "datasets",
            f"csv:{tmp_path}/missing.csv",
            r"^sweep datasets: dataset 'csv:.*missing.csv': .* does not exist",
        ),
        ("models", "smolm2-135m", r"^sweep models: "),
        (  # a data_dir's files (they were found missing when the cell came up, --dry-run said nothing)
            "datasets",
            {"dataset": "stsb-1k", "data_dir": f"{tmp_path}/no-stsb"},
            r"^sweep cell stsb-1k--.*: dataset 'stsb-1k' reads .*no-stsb/sts-train.csv, which does not exist",
        ),
    ):
        bad = {**sweep, key: [*sweep[key], entry]}
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(RaftlmError, match=said):
            plan_sweep(str(path))
    assert not (tmp_path / "out").exists()


def test_a_sweep_leaves_out_cells_its_file_no_longer_lists_and_never_resumes_a_changed_run(tmp_path, toy_csv):
    """Cells of an earlier version of the sweep file (never checked against it) went into results.json
    and the report's means; a run a kill left mid-training resumed with its old settings while its cell
    recorded the new ones."""
    from raftlm.config import Config
    from raftlm.experiment import cell_config, cells, check_run_settings, plan_sweep, run_sweep

    path, sweep = one_cell_sweep(tmp_path, Path(toy_csv))
    run_sweep(str(path), quiet=True)
    out = tmp_path / "out"
    (cell,) = (out / "cells").glob("*.json")
    stray = out / "cells" / cell.name.replace("--s0--", "--s7--")
    stray.write_text(cell.read_text().replace('"seed": 0', '"seed": 7'))
    assert "1 cell result in" in plan_sweep(str(path)) and stray.name in plan_sweep(str(path))
    run_sweep(str(path), quiet=True)  # (its one cell is written: it collects again)
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())] == [0]

    (c,) = cells(sweep)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = cell_config(sweep, c, run_dir)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    check_run_settings(run_dir, cfg)  # the same settings: it resumes
    changed = Config.from_yaml(str(run_dir / "config.yaml"), {"training.max_steps": 3})
    with pytest.raises(
        RaftlmError, match=r"was started with other settings .*training.max_steps 1 -> 3.*delete"
    ):
        check_run_settings(run_dir, changed)


def test_one_dataset_listed_twice_with_other_settings_is_told_what_to_do():
    """Two entries of one dataset that differ in a setting made the same cell ids, refused as "listed
    twice: drop the repeats", which they are not."""
    sweep = {
        "output_dir": "x",
        "datasets": [{"dataset": "stsb-1k", "stsb_test": "dev"}, {"dataset": "stsb-1k", "stsb_test": "test"}],
        "models": ["m"],
        "methods": ["raft"],
        "lrs": [1e-4],
    }
    with pytest.raises(
        RaftlmError, match=r"^sweep datasets: stsb-1k is listed 2 times with other settings .*own"
    ):
        cells(sweep)
    from raftlm.experiment import check_sweep, option_section

    with pytest.raises(RaftlmError, match=r"train_fractions \[None, 1.0\] lists one fraction twice"):
        check_sweep({**sweep, "output_dir": "x", "train_fractions": [None, 1.0]}, "sweep.yaml")

    with pytest.raises(RaftlmError, match="^output_dir in a sweep's methods entry: .*drop it"):
        option_section("output_dir")
    sweep["datasets"] = ["stsb-1k", "stsb-1k"]  # a plain repeat keeps its message
    with pytest.raises(RaftlmError, match="listed twice\\): drop the repeats"):
        cells(sweep)


@pytest.mark.parametrize(
    ("section", "key", "axis"),
    [("training", "lr", "lrs"), ("training", "seed", "seeds"), ("eval", "decoder", "methods")],
)
def test_a_base_setting_each_cell_sets_is_refused(tmp_path, toy_csv, section, key, axis):
    """`base: {training: {lr: ...}}` trained every cell at the sweep's lrs instead (1e-5 when it gave none),
    seed 0 and the method's decoder, without a word. Refused before any work, naming the axis."""
    from raftlm.experiment import run_sweep

    value = {"lr": 1e-4, "seed": 3, "decoder": "median"}[key]
    path, _ = one_cell_sweep(tmp_path, toy_csv, **{section: {key: value}})
    with pytest.raises(
        RaftlmError, match=rf"base {section}\.{key} is set by each cell from the sweep's {axis}"
    ):
        run_sweep(str(path), quiet=True)
    assert not (tmp_path / "out").exists()


def test_a_sweep_without_lrs_trains_at_trains_default_lr():
    from raftlm.config import TrainConfig
    from raftlm.experiment import cells

    sweep = {"datasets": ["stsb-1k"], "models": ["tiny-random-llama"], "methods": ["raft"], "seeds": [0]}
    assert [c.lr for c in cells(sweep)] == [TrainConfig.lr] == [1e-4]  # as `raftlm train` (it was 1e-5)


def test_a_quoted_train_fraction_is_a_fraction_and_a_zero_shot_entry_refuses_lrs():
    """train_fractions: ["0.5"] passed the sweep's checks, then every dry run and run failed with a
    traceback (Unknown format code 'g' for str); lrs on a zero-shot entry were ignored without a word."""
    from raftlm.experiment import cells

    sweep = {"datasets": ["stsb-1k"], "models": ["tiny-random-llama"], "lrs": [1e-4], "seeds": [0]}
    (quoted,) = cells({**sweep, "methods": ["raft"], "train_fractions": ["0.5"]})
    (plain,) = cells({**sweep, "methods": ["raft"], "train_fractions": [0.5]})
    assert quoted.train_fraction == 0.5 and quoted.cell_id == plain.cell_id and "--f0.5" in quoted.run_id
    with pytest.raises(RaftlmError, match=r"none is zero-shot and trains nothing: drop its lrs"):
        cells({**sweep, "methods": [{"method": "none", "lrs": [1e-3]}]})


def test_an_entry_is_named_by_the_settings_its_cells_recorded_not_todays_defaults():
    """Labels read only sweep.yaml's base: a results.json moved away from it (or a damaged sweep.yaml)
    named the paper's RAFT (ce_weight 0) "RAFT + 1.0 x CE (two-hot target)", today's default."""
    from raftlm.report import label

    row = {"method": "raft", "decoder": "rail", "options": None}
    paper = {**row, "config": {"method.ce_weight": 0.0, "method.ce_target": "nearest", "training.lr": 1e-4}}
    assert label(paper) == "RAFT (the paper's: no CE term)"
    assert label(paper, {"ce_weight": 1.0}) == "RAFT (the paper's: no CE term)"  # what ran, over the file
    assert label(row) == "RAFT + 1.0 x CE (two-hot target)"  # an older cell: the file's base, else defaults


def test_a_killed_run_is_checked_against_the_data_and_the_file_before_any_cell_runs(tmp_path, toy_csv):
    """A run a kill left unwritten (its cell not written yet) resumed on a data file edited since: the
    cell recorded the new file's hash, the validation and the kept checkpoint were the old rows'. And a
    killed run whose settings the sweep file changed since was refused only when the sweep reached it
    (hours in), while --dry-run said it would resume. Both are said before the first cell now."""
    from raftlm.experiment import cells, plan_sweep, run_sweep

    original = Path(toy_csv).read_bytes()
    data = tmp_path / "data.csv"
    data.write_bytes(original)
    path, sweep = one_cell_sweep(tmp_path, data)
    sweep["keep_models"] = True
    path.write_text(yaml.safe_dump(sweep))
    run_sweep(str(path), quiet=True)
    out = tmp_path / "out"
    (cell,) = (out / "cells").glob("*.json")
    cell.unlink()  # killed after its run finished, before its cell was written
    data.write_text(data.read_text().replace(",3\n", ",4\n"))  # the file edited since
    with pytest.raises(RaftlmError, match=r"^run .* was started on other contents of .*data.csv"):
        plan_sweep(str(path))
    with pytest.raises(RaftlmError, match=r"^run .* was started on other contents of .*data.csv"):
        run_sweep(str(path), quiet=True)
    data.write_bytes(original)  # restored: it reuses the run
    run_sweep(str(path), quiet=True)
    assert cell.is_file()

    cell.unlink()
    sweep["base"]["training"]["weight_decay"] = 0.1  # the file edited since the run started
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match=r"was started with other settings .*weight_decay"):
        plan_sweep(str(path))
    (c,) = cells(sweep)
    assert not cell.exists() and (out / "runs" / c.run_id).is_dir()


def test_results_follow_the_sweep_file_from_its_start(tmp_path, toy_csv, monkeypatch):
    """A sweep file edited to drop a method, then run and killed in its first new cell: sweep.yaml said
    the new design while results.json (and so the report) still held the dropped method's cells."""
    import raftlm.experiment as experiment

    path, sweep = one_cell_sweep(tmp_path, Path(toy_csv))
    sweep["methods"] = ["raft", {"method": "ce", "decoder": "rail"}]
    path.write_text(yaml.safe_dump(sweep))
    experiment.run_sweep(str(path), quiet=True)
    out = tmp_path / "out"
    assert {r["method"] for r in json.loads((out / "results.json").read_text())} == {"raft", "ce"}
    sweep["methods"], sweep["seeds"] = ["raft"], [0, 1]
    path.write_text(yaml.safe_dump(sweep))

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_cell", killed)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_sweep(str(path), quiet=True)
    assert [r["method"] for r in json.loads((out / "results.json").read_text())] == ["raft"]


def test_report_states_its_statistics_and_lrs_and_refuses_a_cell_listed_twice(tmp_path):
    """report.md never said which LR each entry's numbers came from, which std, or which Welch test; and a
    results.json with a cell twice (a hand merge) counted its seed twice (n=4, a smaller std, a smaller p)."""
    (tmp_path / "results.json").write_text(json.dumps(FIXTURE))
    write_report(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "sample std (ddof 1)" in md and "Welch's two-sided t-test" in md
    lrs = md[md.index("**Learning rate chosen on validation**") :]
    chosen = {a["label"]: a["lr"] for a in aggregate(FIXTURE) if a["lr"] is not None}
    for label, lr in chosen.items():
        assert f"| {label} | {lr:g} |" in lrs
    (tmp_path / "results.json").write_text(json.dumps(FIXTURE + FIXTURE[-1:]))
    with pytest.raises(RaftlmError, match=r"results.json holds cell c 2 times"):
        write_report(str(tmp_path))


def test_a_base_train_fraction_beside_train_fractions_is_refused(tmp_path, toy_csv):
    """base data.train_fraction 0.5 with train_fractions [null, 0.5]: the null cell ("all the data", the
    sweep's own check says) trained on half and the report counted it as full data; with [1.0] the base
    value was overridden without a word. Without train_fractions it stays a plain setting."""
    from raftlm.experiment import plan_sweep

    path, sweep = one_cell_sweep(tmp_path, toy_csv)
    sweep["base"]["data"] = {"train_fraction": 0.5}
    path.write_text(yaml.safe_dump(sweep))
    plan_sweep(str(path))  # (a plain setting: every cell trains on half)
    sweep["train_fractions"] = [None, 0.5]
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match=r"base data\.train_fraction is set by each cell from the sweep's"):
        plan_sweep(str(path))


def test_report_tables_the_data_scaling_entries_and_names_their_fraction(tmp_path):
    """A sweep with train_fractions: its entries below 1 were in summary.json and a figure only, report.md
    showed none of them (nor which fraction a collapsed cell had)."""
    rows = []
    for fraction, rmse in ((None, 0.5), (0.5, 0.7)):
        for seed in (0, 1):
            r = _row("raft", "rail", 1e-4, seed, rmse + 0.01 * seed, rmse)
            rows.append({**r, "train_fraction": fraction, "cell_id": f"c{fraction}-{seed}"})
    rows[-1]["collapsed"] = "every prediction is 3.0"
    (tmp_path / "results.json").write_text(json.dumps(rows))
    write_report(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    scaling = md[md.index("by fraction of the training data") :]
    assert "| | 1 | 0.5 |" in scaling and "0.505 ± 0.007" in scaling and "0.705 ± 0.007" in scaling
    assert "lr 0.0001, 0.5 of the training data, seed 1" in md


def test_keep_checkpoints_with_keep_models_false_is_refused(tmp_path, toy_csv):
    """base training.keep_checkpoints: true under keep_models: false (the default): the sweep deleted the
    checkpoints with the weights once the run's cells were written, without a word."""
    from raftlm.experiment import plan_sweep

    path, sweep = one_cell_sweep(tmp_path, toy_csv)
    sweep["base"]["training"]["keep_checkpoints"] = True
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match=r"keep_checkpoints keeps checkpoints that keep_models: false"):
        plan_sweep(str(path))
    sweep["keep_models"] = True
    path.write_text(yaml.safe_dump(sweep))
    plan_sweep(str(path))


def test_a_diverged_entry_first_in_a_column_does_not_take_the_bold_from_the_best():
    """min() over a column whose first mean is NaN (a diverged entry) returned NaN: nothing equalled it,
    and the column had no bold entry at all."""
    aggs = aggregate(FIXTURE)
    first = next(a for a in aggs if a["label"] == "zero-shot + RAIL")
    diverged = [{**first, "rmse": float("nan")}, *[a for a in aggs if a is not first]]
    md = table(diverged, "rmse", "label", "dataset", "RMSE")
    assert "| RAFT + 1.0 x CE (two-hot target) | **0.500 ± 0.100** |" in md
