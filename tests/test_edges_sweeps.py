"""Sweep edges: the data a cell reads from a folder, a second sweep in one output_dir, an LR added to a
first_seed sweep, bold among entries on fewer seeds, labels of arms the method words alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import raftlm.experiment as experiment
from raftlm.core import RaftlmError
from raftlm.report import aggregate, label, table, write_report


def stsb_folder(folder: Path, n_train: int = 871, n_dev: int = 8) -> Path:
    """A stsbenchmark-shaped folder: 863 of the train pairs are load_stsb's validation, the rest train."""
    folder.mkdir()
    for name, n in (("sts-train.csv", n_train), ("sts-dev.csv", n_dev), ("sts-test.csv", n_dev)):
        lines = [
            f"main\tMSRvid\t2012\t{i:04d}\t{i % 6}.000\tA man plays {i}.\tA man sings {i}." for i in range(n)
        ]
        (folder / name).write_text("\n".join(lines) + "\n")
    (folder / "readme.txt").write_text("STS Benchmark\n")
    return folder


def stsb_sweep(tmp_path: Path, folder: Path) -> Path:
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {
            "training": {"max_steps": 1, "eval_steps": 1, "batch_size": 4, "calibrate": False},
            "data": {"val_size": 4},
            "eval": {"eval_size": 4},
        },
        "datasets": [{"dataset": "stsb-1k", "data_dir": str(folder)}],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-3],
        "seeds": [0],
        "keep_models": True,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _edit(path: Path) -> None:
    path.write_text(path.read_text().replace("\t1.000\t", "\t2.000\t"))


# --- 1: the files under a dataset's data_dir are part of what a cell records and checks ------------------


def test_a_cell_on_a_data_dir_is_refused_when_a_file_it_reads_changes(tmp_path):
    folder = stsb_folder(tmp_path / "stsb")
    path = stsb_sweep(tmp_path, folder)
    root = experiment.run_sweep(str(path), quiet=True)
    (cell,) = (root / "cells").glob("*.json")
    assert json.loads(cell.read_text())["data_sha256"]
    # files the cell does not read (sts-test.csv: the test split is dev) change nothing
    _edit(folder / "sts-test.csv")
    (folder / "readme.txt").write_text("edited\n")
    experiment.run_sweep(str(path), quiet=True)
    _edit(folder / "sts-dev.csv")  # the test split it was scored on
    with pytest.raises(RaftlmError, match=r"other settings or data .*data .*sts-dev.csv.* changed"):
        experiment.run_sweep(str(path), quiet=True)


def test_a_killed_run_on_a_data_dir_is_not_resumed_on_edited_files(tmp_path):
    folder = stsb_folder(tmp_path / "stsb")
    path = stsb_sweep(tmp_path, folder)
    root = experiment.run_sweep(str(path), quiet=True)
    (cell,) = (root / "cells").glob("*.json")
    cell.unlink()  # killed after its run finished, before its cell was written
    _edit(folder / "sts-train.csv")
    with pytest.raises(RaftlmError, match=r"^run .* was started on other contents of .*sts-train.csv"):
        experiment.plan_sweep(str(path))


def test_a_cell_written_before_folders_were_hashed_stands(tmp_path):
    """Cells of the committed sweeps recorded no hash for a data_dir (none was taken): they cannot be
    checked, and stand, as a run started before sweeps recorded its data does."""
    folder = stsb_folder(tmp_path / "stsb")
    path = stsb_sweep(tmp_path, folder)
    root = experiment.run_sweep(str(path), quiet=True)
    (cell,) = (root / "cells").glob("*.json")
    row = json.loads(cell.read_text())
    cell.write_text(json.dumps({**row, "data_sha256": None}))
    experiment.run_sweep(str(path), quiet=True)


def test_the_hash_covers_the_files_each_dataset_reads(tmp_path):
    from raftlm.config import DataConfig

    ml = tmp_path / "ml-1m"
    ml.mkdir()
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        (ml / name).write_text("1::1::5::1\n")
    cfg = DataConfig(dataset=f"movielens-1m:{ml}")
    before = experiment.data_hash(cfg)
    (ml / "users.dat").write_text("other\n")  # not read
    assert experiment.data_hash(cfg) == before
    (ml / "ratings.dat").write_text("1::1::4::1\n")
    assert experiment.data_hash(cfg) != before
    # one file: its own sha256, as cells have recorded it since data hashes began
    from raftlm.files import file_sha256

    data = tmp_path / "d.csv"
    data.write_text("text,target\na,1\n")
    assert experiment.data_hash(DataConfig(dataset=f"csv:{data}")) == file_sha256(data)
    assert experiment.data_hash(DataConfig(dataset="stsb-1k")) is None  # the Hub's copy: its name pins it


def test_a_titles_file_added_beside_an_amazon_file_after_its_cells_ran_is_a_change(tmp_path):
    """An Amazon file alone was hashed as its own sha256, which is also what older cells recorded (accepted
    as they are): a meta_*.json added beside it later (its titles enter every prompt) passed unseen. Any
    dataset but a csv or jsonl file now hashes its files' names with their contents, one file included."""
    from raftlm.config import DataConfig
    from raftlm.files import file_sha256

    reviews = tmp_path / "reviews_Office_Products_5.json"
    reviews.write_text('{"overall": 5, "reviewText": "fine"}\n')
    cfg = DataConfig(dataset=f"amazon:{reviews}")
    today = experiment.data_hash(cfg)
    assert today != file_sha256(reviews) and not experiment._data_changed(today, cfg)
    assert not experiment._data_changed(file_sha256(reviews), cfg)  # an older cell's record still stands
    (tmp_path / "meta_Office_Products.json").write_text('{"asin": "x", "title": "Stapler"}\n')
    assert experiment._data_changed(today, cfg)


# --- 2: one output_dir, one sweep -----------------------------------------------------------------------


def fake_cells(monkeypatch, validation: dict) -> None:
    """Cells written without training: each (lr, seed)'s validation RMSE (and test RMSE) from ``validation``."""

    def run_cell(sweep, cell, root):
        v = validation.get((cell.lr, cell.seed), 0.5)
        return {
            "dataset": cell.dataset["dataset"],
            "model": cell.model,
            "method": cell.method,
            "decoder": cell.decoder,
            "seed": cell.seed,
            "lr": cell.lr,
            "train_fraction": cell.train_fraction,
            "options": cell.options_label,
            **dict(rmse=v, mae=v, pearson=1 - v, spearman=1 - v, r2=0.0, n=4, best_step=1),
            "validation_rmse": v,
            "run_id": cell.run_id,
            "cell_id": cell.cell_id,
        }

    monkeypatch.setattr(experiment, "run_cell", run_cell)


def write_sweep(path: Path, **sweep) -> Path:
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_second_sweep_in_a_sweeps_output_dir_is_refused(tmp_path, toy_csv, monkeypatch):
    fake_cells(monkeypatch, {})
    common = dict(output_dir=str(tmp_path / "out"), datasets=[f"csv:{toy_csv}"], models=["tiny-random-llama"])
    first = write_sweep(tmp_path / "first.yaml", **common, methods=["raft"], lrs=[1e-3], seeds=[0])
    root = experiment.run_sweep(str(first), quiet=True)
    results, saved = (root / "results.json").read_bytes(), (root / "sweep.yaml").read_bytes()
    other = write_sweep(tmp_path / "other.yaml", **common, methods=[{"method": "ce", "decoder": "rail"}])
    for run in (experiment.run_sweep, experiment.plan_sweep):
        with pytest.raises(
            RaftlmError, match=r"^sweep output_dir .*out holds the results of sweep file first.yaml"
        ):
            run(str(other))
    assert (root / "results.json").read_bytes() == results and (root / "sweep.yaml").read_bytes() == saved
    # the same sweep, edited (a seed added), resumes; so does the copy the sweep saved beside its results
    write_sweep(first, **common, methods=["raft"], lrs=[1e-3], seeds=[0, 1])
    experiment.run_sweep(str(first), quiet=True)
    assert len(json.loads((root / "results.json").read_text())) == 2
    experiment.run_sweep(str(root / "sweep.yaml"), quiet=True)
    experiment.run_sweep(str(first), quiet=True)


# --- 3: an LR added to a first_seed sweep after its later seeds ran ---------------------------------------


def test_an_lr_added_after_later_seeds_ran_is_chosen_as_the_sweep_ran_and_the_report_says_so(
    tmp_path, toy_csv, monkeypatch
):
    # 1e-3 ran alone on seeds 0-2 (nothing to choose); 1e-4 added later wins seed 0 (0.4 < 0.5), so the
    # sweep runs seeds 1-2 at 1e-4. 1e-3's later seeds (0.1) would win a mean over every seed.
    fake_cells(
        monkeypatch,
        {(1e-3, 0): 0.5, (1e-3, 1): 0.1, (1e-3, 2): 0.1, (1e-4, 0): 0.4, (1e-4, 1): 0.9, (1e-4, 2): 0.9},
    )
    common = dict(
        output_dir=str(tmp_path / "out"),
        datasets=[f"csv:{toy_csv}"],
        models=["tiny-random-llama"],
        methods=[{"method": "ce", "decoder": "rail"}],
        seeds=[0, 1, 2],
        lr_choice="first_seed",
    )
    path = write_sweep(tmp_path / "sweep.yaml", **common, lrs=[1e-3])
    experiment.run_sweep(str(path), quiet=True)
    write_sweep(path, **common, lrs=[1e-3, 1e-4])
    root = experiment.run_sweep(str(path), quiet=True)
    rows = json.loads((root / "results.json").read_text())
    assert sorted((r["lr"], r["seed"]) for r in rows) == [
        (1e-4, 0),
        (1e-4, 1),
        (1e-4, 2),
        (1e-3, 0),
        (1e-3, 1),
        (1e-3, 2),
    ]
    write_report(str(root))
    md = (root / "report.md").read_text()
    lrs = md[md.index("**Learning rate chosen on validation**") :]
    assert "| CE + RAIL | 0.0001 |" in lrs  # the first seed's choice, the one the later seeds ran at
    assert "the lowest validation RMSE on the first seed (seed 0, lr_choice: first_seed: the LR" in md
    assert "CE + RAIL on csv:" in md and "seeds 1, 2 also ran at lr 0.001" in md


# --- 4: bold among entries on every seed -----------------------------------------------------------------


def _agg(method, rmse, seeds, lr=1e-4):
    return {
        "dataset": "d",
        "model": "m",
        "method": method,
        "decoder": "rail",
        "train_fraction": None,
        "options": "",
        "lr": lr,
        "seeds": seeds,
        "label": method,
        "collapsed_seeds": [],
        "rmse": rmse,
        "rmse_std": 0.1,
    }


def test_an_entry_on_fewer_seeds_never_takes_the_bold():
    aggs = [_agg("raft", 0.5, [0, 1, 2]), _agg("ce", 0.3, [0]), _agg("zero-shot", 1.2, [0], lr=None)]
    md = table(aggs, "rmse", "label", "dataset", "RMSE")
    assert "| raft | **0.500 ± 0.100** |" in md and "| ce | 0.300 |" in md
    # zero-shot has no seed to add: it competes on its one
    best_zero = [_agg("raft", 0.5, [0, 1, 2]), _agg("zero-shot", 0.2, [0], lr=None)]
    assert "| zero-shot | **0.200** |" in table(best_zero, "rmse", "label", "dataset", "RMSE")
    # a sweep still running: the most-seeded entries there compete (2 seeds), not the 1-seed one
    md = table([_agg("raft", 0.5, [0, 1]), _agg("ce", 0.3, [0])], "rmse", "label", "dataset", "R")
    assert "| raft | **0.500 ± 0.100** |" in md and "| ce | 0.300 |" in md
    # table 8 shape (best per row): the same rule
    md = table(aggs, "rmse", "model", "label", "R", best_per="row")
    assert "| m | **0.500 ± 0.100** | 0.300 | 1.200 |" in md


def test_the_report_caption_states_the_bold_rule(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"seeds": [0, 1, 2]}))
    rows = [_row("raft", s, 0.5) for s in (0, 1, 2)] + [_row("ce", 0, 0.3)]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    write_report(str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "among those there on the most seeds (a zero-shot entry has one and always competes)" in md
    assert "| CE + RAIL | 0.300 |" in md and "| RAFT + 1.0 x CE (two-hot target) | **0.500 ± 0.000** |" in md


def _row(method, seed, rmse, options=""):
    return {
        "dataset": "d",
        "model": "m",
        "method": method,
        "decoder": "rail",
        "lr": 1e-4,
        "seed": seed,
        "train_fraction": None,
        "options": options,
        **dict(rmse=rmse, mae=rmse, pearson=1 - rmse, spearman=1 - rmse, r2=0.0, n=4, best_step=1),
        "validation_rmse": rmse,
        "run_id": f"{method}{options}{seed}",
        "cell_id": f"{method}{options}{seed}",
    }


# --- 5: arms the method's words name alike ----------------------------------------------------------------


def test_arms_that_differ_in_an_option_the_method_does_not_word_get_distinct_labels():
    plain = {"method": "ce", "decoder": "rail", "options": ""}
    assert label(plain) == "CE + RAIL"
    assert label({**plain, "options": "pooling=max"}) == "CE + RAIL (pooling=max)"  # ce ignores pooling
    raft = {"method": "raft", "decoder": "rail", "options": "ntl_weight=0.5"}
    assert label(raft) == "RAFT + 1.0 x CE (two-hot target) (ntl_weight=0.5)"
    assert label({**raft, "options": "ce_weight=0.0"}) == "RAFT (the paper's: no CE term)"  # worded
    # an option at the method's default words the entry as the default does: still two rows in a table
    rows = [_row("raft", 0, 0.5), _row("raft", 0, 0.4, options="ce_weight=1.0")]
    aggs = aggregate(rows)
    assert len({a["label"] for a in aggs}) == 2
    md = table(aggs, "rmse", "label", "dataset", "RMSE")
    assert "0.500" in md and "0.400" in md


def test_raft_is_compared_with_the_best_other_entry_however_few_its_seeds():
    """Unlike the bold, the verdict line keeps a method on one seed so far (0.40) as RAFT's comparison: left
    out, RAFT would read "lower" against the next one (0.45) while a better method is still running. Its p
    is "-" (Welch needs 2 seeds each), and the line's heading says so."""
    from raftlm.report import aggregate, raft_vs_best

    rows = [_row("raft", s, 0.42 + 0.01 * s) for s in (0, 1, 2)]
    rows += [_row("ce", s, 0.44 + 0.01 * s) for s in (0, 1, 2)] + [_row("head-pooled", 0, 0.40)]
    text = raft_vs_best(aggregate(rows))
    assert "| mean-pooled head: 0.400 | +0.030 | - | RAFT not lower |" in text, text
    assert "the best other on any number of seeds, unlike the bold" in text


def test_a_report_never_replaces_a_users_report_files_in_a_sweeps_folder(tmp_path):
    """In a sweep's folder the report replaced any report.md and figures/ there, a user's too (the sweep's
    marker proves raftlm made the folder, not those files). Only beside the report's own marker now."""
    from raftlm.io import SWEEP_MARKER

    (tmp_path / SWEEP_MARKER).write_text(json.dumps({"format": "raftlm-sweep", "version": 1}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"seeds": [0]}))
    (tmp_path / "results.json").write_text(json.dumps([_row("raft", 0, 0.5)]))
    (tmp_path / "report.md").write_text("my own notes on this sweep")
    with pytest.raises(RaftlmError, match=r"holds report.md that no raftlm report wrote .*move them out"):
        write_report(str(tmp_path))
    assert (tmp_path / "report.md").read_text() == "my own notes on this sweep"
    (tmp_path / "report.md").unlink()
    write_report(str(tmp_path))
    write_report(str(tmp_path))  # (its own files, beside its marker: replaced)
    assert "RAFT" in (tmp_path / "report.md").read_text()
    # a report an older raftlm wrote before reports were marked: its page's title says whose it is
    (tmp_path / ".raftlm-report").unlink()
    (tmp_path / "report.md").write_text("an older report")
    write_report(str(tmp_path))
    assert "RAFT" in (tmp_path / "report.md").read_text()


def test_an_interrupted_report_says_its_files_may_be_part_new(tmp_path, monkeypatch, capsys):
    """Ctrl+C among the report's writes left a new summary.json and report.md beside the old report.html and
    figures, and said "nothing half-written was left". Its line says what is there and the rerun."""
    import raftlm.report as report
    from raftlm.cli import main

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"seeds": [0]}))
    (tmp_path / "results.json").write_text(json.dumps([_row("raft", 0, 0.5)]))
    real = report.write_text

    def interrupted(path, text):
        if str(path).endswith("report.html"):
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(report, "write_text", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("some may be the new report's and some the old: run the same command again")
    )
    monkeypatch.setattr(report, "write_text", real)
    assert main(["report", str(tmp_path)]) == 0


def test_a_setting_given_by_both_a_dataset_entry_and_a_method_arm_is_refused(tmp_path, toy_csv, capsys):
    """datasets: [{dataset: csv:toy.csv, max_length: 64}] with an arm {method: raft, max_length: 32} ran at 32
    without a word (a base key that one of the sweep's lists sets is refused: so is this, before any cell)."""
    from raftlm.cli import main

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "datasets": [{"dataset": f"csv:{toy_csv}", "max_length": 64}],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "raft", "max_length": 32}],
        "lrs": [1e-4],
        "seeds": [0],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["experiment", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.max_length is set by both its dataset entry (64) and its method arm (32)" in err, err
    sweep["methods"] = [{"method": "raft", "max_length": 64}]  # the same value twice is one value
    path.write_text(yaml.safe_dump(sweep))
    assert main(["experiment", str(path), "--dry-run"]) == 0
