"""Issue 37, trust at the edges: no path loses a user's files, one contract for every input, and every
bad or hostile input ends in one line (exit code 2), never a traceback, a hang or a silent wrong answer.
The data-loss tests compare the user's files byte for byte afterwards."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import train_args, write_csv

import raftlm.io
import raftlm.pipeline
import raftlm.streaming
from raftlm.cli import main
from raftlm.core import RaftlmError

WORDS = ["awful", "bad", "fine", "good", "great"]


def _rows(n: int) -> list[dict]:
    return [{"text": f"review {i}: it was {WORDS[i % 5]}. rating:", "target": 1 + i % 5} for i in range(n)]


def _bad(capsys, argv) -> tuple[int, str]:
    """Exit code and the one line on stderr (asserting it is one line, and no traceback)."""
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    err = [line for line in err if not line.startswith(("\r", "Loading weights"))]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return code, err[0]


def _never_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(raftlm.pipeline, "_load_for_eval", fail)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what a user's folder must still hold afterwards)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    data = write_csv(d / "toy.csv", _rows(120))  # 12 validation rows: enough to calibrate 90 % intervals
    assert main(train_args(data, d / "run", "--max-steps", "2", "--grid", "0-5")) == 0
    return d / "run", data


def argv(run_dir, data, out, *extra) -> list[str]:
    """`raftlm predict` of ``data`` by ``run_dir`` into ``out``, with ``extra`` flags."""
    return ["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), *extra]


def predict(run_dir, data, out, *extra) -> int:
    return main(argv(run_dir, data, out, *extra))


# --- data loss ---------------------------------------------------------------------------------------


def test_overwrite_never_deletes_a_users_folder_that_holds_a_config_yaml(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.yaml").write_text("model: {name: mine}\n")  # a very common file name
    (proj / "important.txt").write_text("years of work")
    (proj / "src" / "a.py").write_text("print(1)\n")
    before = _snapshot(proj)
    for extra in (["--overwrite"], [], ["--resume"]):
        code, line = _bad(capsys, train_args(data, proj, *extra))
        assert code == 2 and "is not a raftlm run (no .raftlm-run marker" in line
        assert "unfinished run" not in line
        assert _snapshot(proj) == before
    # a raftlm.json does not make it a run either (only the marker does)
    (proj / "raftlm.json").write_text('{"format_version": 1}')
    before = _snapshot(proj)
    code, line = _bad(capsys, train_args(data, proj, "--overwrite"))
    assert code == 2 and _snapshot(proj) == before


def test_a_marked_run_with_a_users_file_in_it_is_not_replaced(run, tmp_path, capsys):
    run_dir, data = run
    import shutil

    mine = tmp_path / "copy"
    shutil.copytree(run_dir, mine)
    (mine / "notes.md").write_text("my notes")
    before = _snapshot(mine)
    code, line = _bad(capsys, train_args(data, mine, "--overwrite", "--max-steps", "2"))
    assert code == 2 and "holds files raftlm did not write (notes.md)" in line
    assert _snapshot(mine) == before


def test_an_output_that_is_the_input_is_refused_for_every_link(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    _never_load(monkeypatch)
    same = tmp_path / "same.csv"
    same.write_bytes(data.read_bytes())
    (tmp_path / "link.csv").symlink_to(same)
    os.link(same, tmp_path / "hard.csv")
    original = same.read_bytes()
    monkeypatch.chdir(tmp_path)
    for output in ("same.csv", "./same.csv", str(same), "link.csv", "hard.csv"):
        code, line = _bad(
            capsys,
            argv(run_dir, "same.csv", output, "--overwrite"),
        )
        assert code == 2 and "is the same file as the input" in line
        assert same.read_bytes() == original
    code, line = _bad(
        capsys,
        ["evaluate", "--model", str(run_dir), "--input", "same.csv", "--output", "hard.csv", "--overwrite"],
    )
    assert code == 2 and "is the same file as the input" in line and same.read_bytes() == original


def test_special_files_are_never_written(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    _never_load(monkeypatch)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    targets = [fifo] + ([Path("/dev/full")] if Path("/dev/full").exists() else [])
    for target in targets:
        code, line = _bad(
            capsys,
            argv(run_dir, str(data), str(target), "--overwrite"),
        )
        assert code == 2 and "not a regular file" in line
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    if Path("/dev/full").exists():
        assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


def test_overwrite_never_uses_a_users_folders_of_the_swaps_names(tmp_path, capsys):
    """--overwrite builds beside the run in .RUN.raftlm-new and parks the old run in .RUN.raftlm-old:
    a user's folders of those names (no marker) are refused, never trained into or deleted; a user's
    .RUN.raftlm-swap.json is not taken for an interrupted swap."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run_dir = tmp_path / "run"
    assert main(train_args(data, run_dir, "--max-steps", "2")) == 0
    weights = (run_dir / "model.safetensors").read_bytes()
    capsys.readouterr()
    for name, file in ((".run.raftlm-old", "thesis.txt"), (".run.raftlm-new", "notes.txt")):
        users = tmp_path / name
        users.mkdir()
        (users / file).write_text("years of work")
        code, line = _bad(capsys, [*train_args(data, run_dir, "--max-steps", "2"), "--overwrite"])
        assert code == 2 and f"{users} exists and is not a raftlm run" in line
        assert _snapshot(users) == {file: b"years of work"} and not (run_dir / file).exists()
        (users / file).unlink()
        users.rmdir()
    journal = tmp_path / ".run.raftlm-swap.json"
    journal.write_text('{"mine": 1}')
    assert predict(run_dir, data, tmp_path / "p.jsonl") == 0  # not "finished an interrupted --overwrite"
    assert journal.read_text() == '{"mine": 1}' and "interrupted" not in capsys.readouterr().err
    code, line = _bad(capsys, [*train_args(data, run_dir, "--max-steps", "2"), "--overwrite"])
    assert code == 2 and "raftlm-swap.json exists and is not raftlm's" in line
    assert journal.read_text() == '{"mine": 1}' and (run_dir / "model.safetensors").read_bytes() == weights


def test_a_finished_overwrite_whose_swap_was_refused_is_never_deleted(tmp_path, capsys, monkeypatch):
    """A run that gained a user's file while --overwrite trained keeps it, and the new run waits staged. The
    message said "move them out and rerun with --overwrite", and that rerun deleted the finished staged run
    (hours of training) before training from zero. Predictions written into a run are raftlm's files now."""
    import raftlm.pipeline

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run_dir, staged = tmp_path / "run", tmp_path / ".run.raftlm-new"
    assert main(train_args(data, run_dir, "--max-steps", "2")) == 0
    assert predict(run_dir, data, run_dir / "preds.jsonl") == 0  # listed in the run's marker: not foreign
    finish = raftlm.pipeline._finish_run

    def finish_while_the_user_writes(*args, **kwargs):
        finish(*args, **kwargs)
        (run_dir / "notes.md").write_text("mine")

    monkeypatch.setattr(raftlm.pipeline, "_finish_run", finish_while_the_user_writes)
    capsys.readouterr()
    assert main([*train_args(data, run_dir, "--max-steps", "3"), "--overwrite"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # (after the training's lines)
    assert "gained files raftlm did not write while training (notes.md)" in line
    assert f"mv {run_dir} {run_dir}.old && mv {staged} {run_dir}" in line
    new_weights = (staged / "model.safetensors").read_bytes()
    monkeypatch.undo()
    (run_dir / "notes.md").unlink()  # what the message used to ask, then --overwrite again
    code, line = _bad(capsys, [*train_args(data, run_dir, "--max-steps", "3"), "--overwrite"])
    assert code == 2 and f"{staged} holds a finished run of an earlier --overwrite" in line
    assert (staged / "model.safetensors").read_bytes() == new_weights
    (run_dir).rename(tmp_path / "run.old")  # the steps it gives
    staged.rename(run_dir)
    assert predict(run_dir, data, tmp_path / "p.jsonl") == 0


def test_report_never_replaces_a_users_report(tmp_path, capsys):
    folder = tmp_path / "rep"
    folder.mkdir()
    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    (folder / "results.json").write_text(json.dumps([{**row, "cell_id": "c", "seed": 0, "lr": 1e-4}]))
    (folder / "report.md").write_text("# my own report")
    (folder / "summary.json").write_text("mine")
    before = _snapshot(folder)
    code, line = _bad(capsys, ["report", str(folder)])
    assert code == 2 and "already holds report.md, summary.json" in line and _snapshot(folder) == before
    (folder / ".raftlm-report").write_text("")  # a file of the marker's name is not report's marker
    code, line = _bad(capsys, ["report", str(folder)])
    assert (
        code == 2
        and "already holds report.md" in line
        and (folder / "report.md").read_text() == "# my own report"
    )
    (folder / ".raftlm-report").unlink()
    for name in ("report.md", "summary.json"):
        (folder / name).unlink()
    assert main(["report", str(folder)]) == 0 and main(["report", str(folder)]) == 0  # its own: replaced
    assert "**RMSE on test" in (folder / "report.md").read_text()


def test_a_report_that_fails_leaves_the_last_report_as_it_was(tmp_path, capsys):
    """report wrote its marker and summary.json, then report.md, then figures, checking as it went: a
    damaged curve line, a diverged check's null RMSE (a TypeError in the figure), a cell without its seed,
    a damaged sweep.yaml or a non-UTF-8 results.json left a new summary beside an old report, or a
    traceback. Now a damaged input is one line and the folder is untouched; a null RMSE is no point."""
    folder = tmp_path / "rep"
    (folder / "curves").mkdir(parents=True)
    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    rows = [{**row, "cell_id": f"c{s}", "seed": s, "lr": 1e-4, "validation_rmse": 1.0} for s in (0, 1)]
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "curves" / "r.jsonl").write_text(
        '{"step": 50, "eval_rmse": 1.2}\n{"step": 100, "eval_rmse": null}\n'
    )
    assert main(["report", str(folder)]) == 0  # (the null point: none drawn)
    assert (folder / "figures" / "rmse_vs_step_d.png").is_file()
    before = _snapshot(folder)
    capsys.readouterr()
    (folder / "curves" / "r.jsonl").write_text('{"step": 50, "eval_rmse": 1.2}\n{"step": 100,\n')
    code, line = _bad(capsys, ["report", str(folder)])
    assert code == 2 and "r.jsonl is not JSON lines" in line
    (folder / "curves" / "r.jsonl").write_text('{"step": 50, "eval_rmse": 1.2}\n')
    snapshot = _snapshot(folder)
    for damaged, said in (
        (json.dumps([{**rows[0], "seed": None}]), "entry 0 is not a cell's result (seed is None"),
        (
            json.dumps([{k: v for k, v in rows[0].items() if k != "lr"}]),
            "entry 0 is not a cell's result (no lr)",
        ),
        (b"\xff\xfe[", "results.json is not UTF-8 text"),
    ):
        path = folder / "results.json"
        path.write_bytes(damaged) if isinstance(damaged, bytes) else path.write_text(damaged)
        code, line = _bad(capsys, ["report", str(folder)])
        assert code == 2 and said in line, line
        assert {k: v for k, v in _snapshot(folder).items() if k != "results.json"} == {
            k: v for k, v in snapshot.items() if k != "results.json"
        }
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "sweep.yaml").write_text("seeds: 5\nbase: text\n")  # damaged: the report goes on without it
    killed = folder / ".report-abcd1234"  # a report killed while drawing: a PNG and savefig's temp file
    killed.mkdir()
    (killed / "a.png").write_bytes(b"png")
    (killed / ".b.png.raftlm-abcd1234.tmp").write_bytes(b"half")
    (folder / ".report-efgh5678").write_text("a file of that shape")  # (not a folder: left, no traceback)
    assert main(["report", str(folder)]) == 0
    assert not killed.exists() and (folder / ".report-efgh5678").exists()
    (folder / ".report-efgh5678").unlink()
    assert before.keys() <= _snapshot(folder).keys() and not list(folder.glob(".report-*"))


def test_evaluate_entropy_files_obey_the_output_contract(run, tmp_path, capsys):
    run_dir, data = run
    mine = tmp_path / "res.entropy.jsonl"
    mine.write_text("PRECIOUS")
    evaluate = ["evaluate", "--model", str(run_dir), "--entropy", "--output", str(tmp_path / "res.json")]
    code, line = _bad(capsys, evaluate)
    assert code == 2 and f"output path {mine} already exists: pass --overwrite" in line
    assert mine.read_text() == "PRECIOUS" and not (tmp_path / "res.json").exists()
    assert main(["evaluate", "--model", str(run_dir), "--entropy", "--quiet"]) == 0  # into the run: recorded
    listed = json.loads((run_dir / ".raftlm-run").read_text())["files"]
    assert {"entropy_test.entropy.jsonl", "entropy_test.entropy.png"} <= set(listed)
    assert not raftlm.io.foreign_files(run_dir)


def test_calibrate_takes_no_output_flag(run, tmp_path, capsys):
    run_dir, _ = run
    code, line = _bad(capsys, ["calibrate", str(run_dir), "--output", str(tmp_path / "mycal.json")])
    assert code == 2 and "unrecognized arguments: --output" in line


def test_calibrate_checks_its_rows_and_the_run_folder_before_the_model_loads(
    run, tmp_path, capsys, monkeypatch
):
    """calibrate loaded the model, then read --input: a missing file, a missing target column or a bad
    row was said after the load (seconds to minutes), and a run folder it cannot write into after all the
    scoring."""
    import raftlm.pipeline

    run_dir, _ = run

    def loads(*args, **kwargs):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(raftlm.pipeline, "load_for_eval", loads)
    no_target = tmp_path / "rows.csv"
    no_target.write_text("text\nit was fine\n")
    for argv_, said in (
        (["--input", str(tmp_path / "missing.csv")], "missing.csv"),
        (["--input", str(no_target)], "target column 'target' is missing"),
    ):
        code, line = _bad(capsys, ["calibrate", str(run_dir), *argv_])
        assert code == 2 and said in line, line
    import tempfile

    def read_only(*args, **kwargs):  # (a read-only run folder; root here writes anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, line = _bad(capsys, ["calibrate", str(run_dir)])
    assert code == 2 and f"cannot write {run_dir / 'calibration.json'} (Permission denied" in line


def test_predict_deletes_no_partial_lock_or_temp_file_it_cannot_prove_it_wrote(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "o.jsonl"
    partial, lock = tmp_path / ".o.jsonl.partial", tmp_path / ".o.jsonl.lock"
    partial.write_text("notes")
    for extra in ([], ["--resume"], ["--overwrite"]):
        code, line = _bad(capsys, argv(run_dir, data, out, *extra))
        assert code == 2 and "raftlm has no record of writing it" in line and partial.read_text() == "notes"
    partial.unlink()
    lock.write_text("my lock notes")
    code, line = _bad(capsys, argv(run_dir, data, out))
    assert code == 2 and "is not a raftlm lock file" in line and lock.read_text() == "my lock notes"
    for other in ("4242", ""):  # a pid alone (another tool's lock) or nothing is no proof either
        lock.write_text(other)
        code, line = _bad(capsys, argv(run_dir, data, out))
        assert code == 2 and "is not a raftlm lock file" in line and lock.read_text() == other
    lock.write_text("raftlm 4242")  # what a killed raftlm left: reused and removed
    assert predict(run_dir, data, out) == 0 and not lock.exists()


def test_resuming_a_run_killed_after_its_last_step_trains_no_step_more(tmp_path):
    """Killed while testing, after the checkpoint at max_steps: --resume tests the same weights (Trainer
    took a 5th step of a 4-step run when 4 steps are not a whole number of epochs)."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))  # 32 training rows: 8 steps an epoch
    run_dir = tmp_path / "run"
    assert main(train_args(data, run_dir, "--keep-checkpoints")) == 0
    weights = (run_dir / "model.safetensors").read_bytes()
    (run_dir / "eval_results.json").unlink()
    assert main([*train_args(data, run_dir, "--keep-checkpoints"), "--resume"]) == 0
    assert json.loads((run_dir / "eval_results.json").read_text())["train"]["global_step"] == 4
    assert (run_dir / "model.safetensors").read_bytes() == weights


def test_resume_trains_on_the_runs_saved_data(tmp_path):
    """--resume continues the run as config.yaml saved it: another --dataset given now is said and
    ignored, for the data too (it used to train and test on the new file under the old config)."""
    data, other = write_csv(tmp_path / "toy.csv", _rows(40)), write_csv(tmp_path / "other.csv", _rows(200))
    run_dir = tmp_path / "run"
    assert main(train_args(data, run_dir, "--keep-checkpoints")) == 0
    (run_dir / "eval_results.json").unlink()
    with pytest.warns(
        Warning, match="settings given now that differ from it are ignored .*data.dataset 'csv:"
    ):
        assert main([*train_args(other, run_dir), "--resume"]) == 0
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["n_train"] == 32 and results["test"]["n"] == 4  # toy.csv's split, not other.csv's


# --- silent wrong results ------------------------------------------------------------------------------


def _interrupted_prediction(run_dir: Path, data: Path, out: Path, monkeypatch) -> None:
    """A prediction into ``out`` that died after its first chunk of 16 rows (its partial file stays)."""
    from raftlm.config import Config
    from raftlm.pipeline import load_for_eval

    real, calls = raftlm.streaming.predict_examples, []

    def dies(p, ex, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p, ex, *a, **k)

    monkeypatch.setattr(raftlm.streaming, "predict_examples", dies)
    cfg = Config.from_yaml(str(run_dir / "config.yaml"), {"model.name": str(run_dir)})
    with pytest.raises(KeyboardInterrupt):
        raftlm.streaming.predict_file(load_for_eval(cfg, None), cfg, data, out, chunk_rows=16)
    monkeypatch.setattr(raftlm.streaming, "predict_examples", real)


def test_resume_refuses_an_edited_input_and_a_retrained_model(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    mine = tmp_path / "data.csv"
    mine.write_bytes(data.read_bytes())
    out = tmp_path / "p.jsonl"
    _interrupted_prediction(run_dir, mine, out, monkeypatch)
    rows = _rows(120)
    rows[3]["target"] = 99  # same row count, other content
    write_csv(mine, rows)
    code, line = _bad(capsys, argv(run_dir, str(mine), str(out), "--resume"))
    assert code == 2 and "the input file's content changed" in line
    # the input restored, the model retrained under it: refused too
    mine.write_bytes(data.read_bytes())
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    _interrupted_prediction(other, mine, tmp_path / "q.jsonl", monkeypatch)
    assert (
        main(train_args(data, other, "--overwrite", "--max-steps", "2", "--seed", "3", "--grid", "0-5")) == 0
    )
    capsys.readouterr()
    code, line = _bad(
        capsys,
        argv(other, str(mine), str(tmp_path / "q.jsonl"), "--resume"),
    )
    assert code == 2 and "the model changed" in line


def test_a_second_writer_of_the_same_output_stops_at_once(run, tmp_path, capsys, monkeypatch):
    from raftlm.io import output_lock

    run_dir, data = run
    _never_load(monkeypatch)
    out = tmp_path / "p.jsonl"
    with output_lock(out):  # another predict holds it (an flock on its own open file)
        code, line = _bad(capsys, argv(run_dir, str(data), str(out)))
    assert code == 2 and f"(pid {os.getpid()}) is writing output {out}" in line
    assert not out.exists() and not (tmp_path / ".p.jsonl.lock").exists()  # released and removed


def test_two_real_predict_processes_on_one_output(run, tmp_path):
    """Two processes at once: one writes every row of its own input, the other stops with one line."""
    import subprocess
    import sys

    run_dir, data = run
    big = write_csv(tmp_path / "big.csv", _rows(40) * 500)
    out = tmp_path / "p.jsonl"
    out.write_text("an old output\n")
    cmd = [
        sys.executable,
        "-m",
        "raftlm",
        "predict",
        "--model",
        str(run_dir),
        "--output",
        str(out),
        "--quiet",
        "--overwrite",
    ]
    first = subprocess.Popen([*cmd, "--input", str(big)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / ".p.jsonl.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / ".p.jsonl.lock").exists(), "the first predict took no lock within 60 s"
    second = subprocess.run([*cmd, "--input", str(data)], capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2 and "is writing output" in second.stderr.strip().splitlines()[-1]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20_000 and [r["index"] for r in rows] == list(range(20_000))


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training:\n  lr: 0.5\n  max_steps: 2\n  lr: 0.001\n")
    code, line = _bad(capsys, ["train", "--config", str(recipe), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "key 'lr' appears twice in one mapping (lines 2 and 4)" in line
    sweep = tmp_path / "s.yaml"
    sweep.write_text("output_dir: o\ndatasets: [stsb]\nmodels: [m]\nmethods: [raft]\nmodels: [n]\n")
    code, line = _bad(capsys, ["experiment", str(sweep)])
    assert code == 2 and "key 'models' appears twice in one mapping (lines 3 and 5)" in line


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"methods": ["raft", "raft"]}, "appears 2 times"),
        ({"seeds": [0, 0]}, "appears 2 times"),
        ({"datasets": []}, "datasets must be a non-empty list"),
        ({"datasets": [123]}, "datasets entry 123 is not a dataset name"),
        ({"seeds": 3}, "seeds must be a non-empty list"),
        ({"output_dir": [1]}, "output_dir must be a folder path"),
        ({"lrs": ["fast"]}, "sweep lrs='fast' is not a number"),
        ({"base": [1]}, "base must map config sections"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
    ],
)
def test_sweep_files_of_the_wrong_shape_are_one_line(tmp_path, capsys, change, fragment):
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "datasets": ["synthetic-original1"],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-3],
        "seeds": [0],
        **change,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    code, line = _bad(capsys, ["experiment", str(path)])
    assert code == 2 and fragment in line
    assert not (tmp_path / "out").exists()


def test_sweep_output_dir_that_is_a_file_or_read_only(tmp_path, capsys):
    base = {"datasets": ["synthetic-original1"], "models": ["tiny-random-llama"], "methods": ["raft"]}
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**base, "output_dir": str(blocker)}))
    code, line = _bad(capsys, ["experiment", str(path)])
    assert code == 2 and "is a file: choose a folder" in line and blocker.read_text() == "x"
    path.write_text(yaml.safe_dump({**base, "output_dir": "/proc/raftlm-sweep"}))
    code, line = _bad(capsys, ["experiment", str(path)])
    assert code == 2 and "cannot write /proc/raftlm-sweep" in line


def test_a_corrupt_cell_and_a_results_file_of_the_wrong_shape(tmp_path, capsys):
    out = tmp_path / "out"
    sweep = {
        "output_dir": str(out),
        "datasets": ["synthetic-original1"],
        "models": ["tiny-random-llama"],
        "methods": [{"method": "none", "decoder": "rail"}],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["experiment", str(path)]) == 0
    assert "1 of 1 cells done (1 run now)" in capsys.readouterr().out
    assert main(["experiment", str(path)]) == 0
    assert "1 of 1 cells done (0 run now)" in capsys.readouterr().out  # counts what really ran
    cell = next((out / "cells").glob("*.json"))
    cell.write_text('{"dataset": "synth')  # damaged
    code, line = _bad(capsys, ["experiment", str(path)])
    assert code == 2 and "is unreadable" in line and "delete it to run that cell again" in line
    (out / "results.json").write_text("[1, 2]")
    code, line = _bad(capsys, ["report", str(out)])
    assert code == 2 and "entry 0 is not a cell's result" in line


def test_a_jsonl_with_targets_in_some_rows_is_refused_naming_both_rows(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    _never_load(monkeypatch)
    rows = [{"text": f"review {i}"} for i in range(5)] + [{"text": "x", "target": 3}]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, line = _bad(
        capsys,
        argv(run_dir, str(data), str(tmp_path / "p.jsonl")),
    )
    assert code == 2 and "line 6 has a target ('target') but line 1 has none" in line
    assert not (tmp_path / "p.jsonl").exists()


def test_a_jsonl_with_targets_in_every_row_keeps_them_all(run, tmp_path):
    run_dir, _ = run
    data = tmp_path / "all.jsonl"
    data.write_text("".join(json.dumps({"text": f"review {i}", "target": i}) + "\n" for i in range(4)))
    assert predict(run_dir, data, tmp_path / "p.jsonl") == 0
    out = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["target"] for r in out] == [0, 1, 2, 3]


def test_the_same_template_is_the_same_prompt_through_every_interface(tmp_path):
    """The README's --template "A: {a}\\nB: {b}" on the command line, a YAML recipe (single-quoted: a
    literal backslash) and Python's "A: {a}\\nB: {b}" (a real newline) give byte-identical prompts
    through the CLI, RAFTRegressor, the recipe's run and raftlm serve."""
    import subprocess
    import sys

    import httpx

    from raftlm import RAFTRegressor

    rows = [{"a": f"left {i}", "b": f"right {WORDS[i % 5]}", "target": 1 + i % 5} for i in range(40)]
    data = write_csv(tmp_path / "pairs.csv", rows)
    expected = "A: left 7\nB: right fine"
    common = ["--target-column", "target", "--max-steps", "2"]
    cli_run, recipe_run = tmp_path / "cli", tmp_path / "recipe"
    assert main([*train_args(data, cli_run), "--template", "A: {a}\\nB: {b}", *common]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  template: 'A: {a}\\nB: {b}'\n")
    assert main([*train_args(data, recipe_run), "--config", str(recipe), *common]) == 0

    out = tmp_path / "p.jsonl"
    one = write_csv(tmp_path / "one.csv", [rows[7]])
    assert main(argv(cli_run, str(one), str(out), "--with-prompts")) == 0
    through_cli = json.loads(out.read_text())["prompt"]

    reg = RAFTRegressor(
        model="tiny-random-llama", prompt_template="A: {a}\nB: {b}", max_steps=2, batch_size=4
    )
    reg.fit([{k: r[k] for k in "ab"} for r in rows], [r["target"] for r in rows])
    through_api = reg.prompts([{"a": "left 7", "b": "right fine"}])[0]
    loaded = RAFTRegressor.load(str(cli_run)).prompts([{"a": "left 7", "b": "right fine"}])[0]

    server = subprocess.Popen(
        [sys.executable, "-m", "raftlm", "serve", str(recipe_run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    try:
        url = server.stdout.readline().split(" on ")[1].split()[0]
        body = {"inputs": [{"a": "left 7", "b": "right fine"}], "with_prompts": True}
        through_serve = httpx.post(f"{url}/predict", json=body, timeout=60).json()["prompts"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert through_cli == through_api == loaded == through_serve == expected
    templates = {json.loads((d / "raftlm.json").read_text())["template"] for d in (cli_run, recipe_run)}
    assert templates == {"A: {a}\nB: {b}"}


def test_a_loaded_estimators_params_are_the_runs(tmp_path):
    from sklearn.base import clone

    from raftlm import RAFTRegressor

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main([*train_args(data, run), "--grid", "0-5", "--max-steps", "3", "--lr", "2e-3"]) == 0
    loaded = RAFTRegressor.load(str(run))
    params = loaded.get_params()
    assert params["grid"] == "0-5" and params["max_steps"] == 3 and params["lr"] == 2e-3
    assert params["model"] == "tiny-random-llama" and params["batch_size"] == 4
    texts, y = [r["text"] for r in _rows(40)], [r["target"] for r in _rows(40)]
    assert loaded.predict_proba(texts[:2]).shape == (2, 6)
    again = clone(loaded).fit(texts, y)
    assert again.predict_proba(texts[:2]).shape == (2, 6)  # the same grid, not the default's 1-5


def test_the_interval_is_built_around_the_printed_prediction(run, tmp_path):
    """The tiny model puts almost no mass on the grid, so RAIL (eq. 5) predicts near the bottom of the
    range; the distribution's mean is that number and its intervals hold it."""
    run_dir, data = run
    out = tmp_path / "p.jsonl"
    assert predict(run_dir, data, out, "--interval", "0.9", "--with-uncertainty", "--with-probs") == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    mass = np.array([sum(r["probs"].values()) for r in rows])
    assert mass.max() < 0.5  # far from renormalized: the case where the two readings differed
    for r in rows:
        assert r["mean"] == pytest.approx(r["prediction"], abs=1e-6)
        assert r["lower"] <= r["prediction"] <= r["upper"]
        assert r["quantiles"]["0.05"] <= r["median"] <= r["quantiles"]["0.95"]
    from raftlm import RAFTRegressor

    reg = RAFTRegressor.load(str(run_dir))
    texts = [r["text"] for r in _rows(120)]
    pred, intervals = reg.predict_interval(texts, 0.9)
    assert np.all((intervals[:, 0, 0] <= pred) & (pred <= intervals[:, 1, 0]))
    mean, _ = reg.predict(texts, return_std=True)
    np.testing.assert_allclose(mean, [r["prediction"] for r in rows], atol=1e-6)


def test_flags_a_trained_run_cannot_honour_are_refused(run, tmp_path, capsys):
    """predict / evaluate / calibrate of a run used to ignore --grid, --template, --text-column... and
    print the run's answer as if they applied."""
    run_dir, data = run
    for extra in (
        ["--grid", "5-1"],
        ["--template", "X {nope}"],
        ["--text-column", "nope"],
        ["--set", "method.grid=1-3"],
    ):
        code, line = _bad(capsys, argv(run_dir, data, tmp_path / "p.jsonl", *extra))
        flag = "--grid" if "method.grid" in extra[-1] else extra[0]
        assert code == 2 and line.startswith(
            f"raftlm predict: error: {flag} does not apply to the trained run"
        )
    code, line = _bad(capsys, ["evaluate", "--model", str(run_dir), "--input", str(data), "--split", "test"])
    assert code == 2 and "--input scores that file and --split a split of the dataset" in line
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "extra, line",
    [
        (["--max-length", "64"], "--max-length does not apply to the trained run {run}: it cuts prompts at its own "
         "max length (512, in its raftlm.json): drop --max-length, or train a run with it"),
        (["--dataset", "stsb"], "--dataset is not read: --input gives the rows, and the run {run} its prompt and "
         "grid: drop --dataset, or drop --input to evaluate a split of the dataset"),
        (["--num-samples", "8"], "--num-samples is read by --decoder sample-rail only (the decoder here is rail): "
         "drop --num-samples, or pass --decoder sample-rail"),
        (["--decoder", "greedy", "--temperature", "0.5"], "--temperature is read by --decoder sample-rail only "
         "(the decoder here is greedy)"),
        (["--seed", "3"], "--seed is read by --decoder sample-rail only (the decoder here is rail)"),
        (["--max-new-tokens", "3"], "--max-new-tokens is read by the text decoders (greedy, sample-rail) only "
         "(the decoder here is rail): drop --max-new-tokens, or pass --decoder greedy or sample-rail"),
        (["--set", "eval.temperature=2"], "--temperature is read by --decoder sample-rail only"),
        (["--target-column", "score"], "--target-column 'score' is not a column of {data} (its columns: text, "
         "target): check the name, or drop --target-column"),
        (["--interval-kind", "std"], "--interval-kind chooses the kind of --interval's intervals: pass --interval "
         "too, or drop --interval-kind"),
        # evaluate took it and wrote no intervals; predict refused it only after loading the model
        (["--decoder", "greedy", "--interval", "0.9"], "--interval reads the grid distribution, which --decoder "
         "greedy does not give (it decodes text): drop --interval, or use --decoder rail, mode or median"),
    ],
)  # fmt: skip
def test_flags_this_model_would_not_read_are_refused(run, tmp_path, capsys, extra, line):
    """They were taken and did nothing: a run's --max-length, a dataset beside --input, the sampling
    flags of a decoder that does not sample, --interval-kind without --interval."""
    run_dir, data = run
    for command in ("predict", "evaluate"):
        out = tmp_path / f"{command}.jsonl"
        code, said = _bad(
            capsys, [command, "--model", str(run_dir), "--input", str(data), "--output", str(out), *extra]
        )
        assert code == 2 and said.startswith(
            f"raftlm {command}: error: " + line.format(run=run_dir, data=data)
        ), said
        assert not out.exists()
    # what they apply to still runs: sampling flags with the sampling decoder, a kind with its interval
    ok = [*argv(run_dir, data, tmp_path / "ok.jsonl"), "--decoder", "sample-rail", "--num-samples", "2"]
    assert main([*ok, "--temperature", "0.5", "--seed", "3", "--max-new-tokens", "2", "--quiet"]) == 0
    capsys.readouterr()  # (its warning that 2 new tokens decoded no number, where not shown before)
    # calibrate reads none of them: not its flags at all
    code, said = _bad(capsys, ["calibrate", str(run_dir), "--decoder", "greedy"])
    assert code == 2 and "unrecognized arguments: --decoder greedy" in said


@pytest.mark.parametrize(
    "template, fragment",
    [
        ("R: {text} {target}", "puts the target column 'target' into the prompt"),
        ("{{text}}", "has no {column} field, so every prompt would be the same"),
        (
            "R: {text} ({split})",
            "puts the split column into the prompt: it says which split a row belongs to",
        ),
    ],
)
def test_a_template_that_leaks_the_target_or_names_no_column_is_refused(tmp_path, capsys, template, fragment):
    rows = _rows(40)
    data = write_csv(
        tmp_path / "toy.csv",
        [{**r, "split": ("train", "validation", "test")[i % 3]} for i, r in enumerate(rows)],
    )
    code, line = _bad(capsys, [*train_args(data, tmp_path / "run"), "--template", template])
    assert code == 2 and fragment in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"text": "a", "target": NaN}\n', "NaN is not a JSON number"),
        ('{"text": "a", "target": -Infinity}\n', "-Infinity is not a JSON number"),
        ('{"text": "a", "target": 1, "text": "z"}\n', "the key 'text' appears twice"),
        ("text,target\na,1_000\n", "target '1_000' is not a number"),
        ("text,target\na,\u0663\n", "is not a number"),  # an Arabic-Indic 3
        ("text,target\na,\uff11\n", "is not a number"),  # a full-width 1
    ],
)
def test_targets_are_plain_numbers_and_json_rows_plain_json(run, tmp_path, capsys, content, fragment):
    run_dir, _ = run
    data = tmp_path / ("in.jsonl" if content.startswith("{") else "in.csv")
    data.write_text(content, encoding="utf-8")
    code, line = _bad(capsys, argv(run_dir, data, tmp_path / "p.jsonl"))
    assert code == 2 and "line " in line and fragment in line and not (tmp_path / "p.jsonl").exists()


def test_an_unexpanded_tilde_or_a_trailing_slash_writes_nothing(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    monkeypatch.chdir(tmp_path)
    code, line = _bad(capsys, train_args(data, "~"))
    assert code == 2 and "starts with ~, which was not expanded" in line
    for out in ("~/p.jsonl", "newdir/"):
        code, line = _bad(capsys, argv(run_dir, data, out))
        assert code == 2 and ("not expanded" in line or "ends in a slash" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- tracebacks become one line ------------------------------------------------------------------------


def test_a_csv_field_past_csvs_limit_is_read_and_truncated(run, tmp_path, capsys):
    run_dir, _ = run
    data = tmp_path / "huge.csv"
    data.write_text("text\n" + "word " * 40_000 + "\nshort one\n")  # 200,000 characters in one field
    with pytest.warns(UserWarning, match="truncated from the left"):
        assert predict(run_dir, data, tmp_path / "p.jsonl") == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"text": "a", "target": ' + "9" * 5000 + "}", "line 1: unreadable JSON"),
        ('{"text": "bad \\ud800 half"}', "field 'text' holds a lone surrogate ('\\ud800')"),
        ('{"text": 5}', "field 'text' is 5 (a int), not text"),
        ('{"text": null}', "field 'text' is missing (null)"),
        ('{"text": true}', "field 'text' is True (a boolean), not text"),
        ("[" * 100_000, "line 1: unreadable JSON (nested too deeply)"),
    ],
)
def test_hostile_jsonl_rows_are_one_line(run, tmp_path, capsys, monkeypatch, line, fragment):
    run_dir, _ = run
    _never_load(monkeypatch)
    data = tmp_path / "d.jsonl"
    data.write_text(line + "\n")
    code, err = _bad(
        capsys,
        argv(run_dir, str(data), str(tmp_path / "p.jsonl")),
    )
    assert code == 2 and fragment in err


def test_an_output_folder_that_does_not_exist_fails_before_loading(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    _never_load(monkeypatch)
    code, line = _bad(
        capsys,
        argv(
            str(run_dir),
            str(data),
            str(tmp_path / "no/deeper/o.jsonl"),
        ),
    )
    assert code == 2 and "does not exist; create it first (mkdir -p" in line
    assert not (tmp_path / "no").exists()


def test_a_full_disk_is_one_line_and_keeps_what_was_written(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    out = tmp_path / "p.jsonl"
    real = raftlm.streaming.prediction_rows
    calls = []

    def full_after_first_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(raftlm.streaming, "prediction_rows", full_after_first_chunk)
    monkeypatch.setattr(raftlm.streaming, "CHUNK_ROWS", 16)
    import inspect

    defaults = raftlm.streaming.predict_file.__defaults__
    params = list(inspect.signature(raftlm.streaming.predict_file).parameters)
    i = params.index("chunk_rows") - (len(params) - len(defaults))
    monkeypatch.setattr(
        raftlm.streaming.predict_file, "__defaults__", (*defaults[:i], 16, *defaults[i + 1 :])
    )
    code, line = _bad(capsys, argv(run_dir, str(data), str(out)))
    assert code == 2 and "disk full while writing" in line and "--resume" in line
    partial = raftlm.streaming.partial_path(out)
    assert len(partial.read_text().splitlines()) == 16  # the first chunk is kept for --resume
    monkeypatch.undo()
    assert predict(run_dir, data, out, "--resume") == 0
    assert len(out.read_text().splitlines()) == 120


def test_a_full_disk_while_training_is_one_line(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "toy.csv", _rows(40))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoints"))

    monkeypatch.setattr(raftlm.pipeline, "fit", full)
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 2 and "disk full while writing" in line


def test_a_damaged_calibration_only_matters_when_intervals_are_asked(run, tmp_path, capsys):
    import shutil

    run_dir, data = run
    mine = tmp_path / "run"
    shutil.copytree(run_dir, mine)
    (mine / "calibration.json").write_text('{"targets": [1, 2')
    assert predict(mine, data, tmp_path / "p.jsonl") == 0
    capsys.readouterr()
    code, line = _bad(
        capsys,
        argv(mine, str(data), str(tmp_path / "q.jsonl"), "--interval", "0.9"),
    )
    assert code == 2 and "calibration.json is damaged" in line and f"raftlm calibrate {mine}" in line


@pytest.mark.parametrize("damage", ["model.safetensors", "raftlm.json"])
def test_a_truncated_run_is_one_line(run, tmp_path, capsys, damage):
    import shutil

    run_dir, data = run
    mine = tmp_path / "run"
    shutil.copytree(run_dir, mine)
    path = mine / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    code, line = _bad(capsys, argv(mine, str(data), str(tmp_path / "p.jsonl")))
    assert code == 2 and ("truncated or corrupt" in line or "is unreadable" in line)
    assert not (tmp_path / "p.jsonl").exists()


def test_training_into_the_current_folder_is_refused_before_training(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "mine.txt").write_text("x")

    def never(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(raftlm.pipeline, "fit", never)
    for out in (".", str(work), str(tmp_path)):
        code, line = _bad(capsys, train_args(data, out, "--overwrite"))
        assert code == 2 and "is the current folder, one of its parents" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv", "work"]
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("training.lr=[1,2", "is not valid YAML"),
        ("training.lr=*x", "is not valid YAML"),
        ("training.lr=!!python/object/apply:os.system [echo hi]", "is not valid YAML"),
        ("training.lr={a: 1, a: 2}", "key 'a' appears twice"),
    ],
)
def test_set_values_that_are_not_yaml_are_one_line(tmp_path, capsys, value, fragment):
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    code, line = _bad(capsys, [*train_args(data, tmp_path / "run"), "--set", value])
    assert code == 2 and fragment in line
    assert not (tmp_path / "run").exists()


def test_a_yaml_bomb_is_refused_quickly_and_never_echoed(tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nmodel:\n  name: *j\n")
    start = time.time()
    code, line = _bad(capsys, ["train", "--config", str(bomb), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "expand to over 100,000 values" in line and len(line) < 300
    assert time.time() - start < 5


def test_ctrl_c_in_train_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    data = write_csv(tmp_path / "toy.csv", _rows(40))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(raftlm.pipeline, "fit", interrupted)
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 130 and line == (  # (a new run without a checkpoint: removed, and said so)
        f"raftlm train: error: interrupted; no checkpoint had been saved, so nothing was kept "
        f"({tmp_path / 'run'} removed): run the command again"
    )
    assert not (tmp_path / "run").exists()


def test_sigterm_in_predict_is_one_line_exit_143_and_resumable(run, tmp_path):
    """A scheduler's stop (SIGTERM) ended predict silently with 143; now it unwinds as Ctrl-C does."""
    import signal
    import subprocess
    import sys

    run_dir, _ = run
    data = write_csv(tmp_path / "many.csv", [{"text": f"review {i}: fine. rating:"} for i in range(20000)])
    out = tmp_path / "p.jsonl"
    src = str(Path(raftlm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raftlm", *argv(run_dir, data, out, "--quiet", "--batch-size", "8")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    partial = tmp_path / ".p.jsonl.partial"
    deadline = time.time() + 120
    while (
        not (partial.exists() and partial.stat().st_size) and proc.poll() is None and time.time() < deadline
    ):
        time.sleep(0.05)
    assert partial.exists() and partial.stat().st_size, "predict wrote no row within 120 s (or ended first)"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "raftlm predict: error: terminated; resume with --resume (the rows written so far are kept)"
    )
    assert not out.exists() and partial.exists()
    assert main([*argv(run_dir, data, out, "--quiet"), "--resume"]) == 0
    assert len(out.read_text().splitlines()) == 20000


def test_serve_refuses_non_finite_numbers_before_loading(run, capsys, monkeypatch):
    run_dir, _ = run
    import raftlm.serve

    monkeypatch.setattr(raftlm.serve, "load_for_eval", lambda *a, **k: pytest.fail("loaded"))
    for flag, value in (
        ("--max-wait-ms", "nan"),
        ("--max-wait-ms", "inf"),
        ("--max-batch", "0"),
        ("--port", "1e9"),
    ):
        code, line = _bad(capsys, ["serve", str(run_dir), flag, value])
        assert code == 2, (flag, value, line)


def test_an_interrupted_overwrite_swap_is_finished_by_the_next_command(run, tmp_path, capsys):
    """kill -9 between the swap's two renames: no run at the path, old and new runs in hidden folders.
    The next command finishes the swap from its journal and says so."""
    import shutil

    from raftlm.run import journal_path, old_dir, staging_dir

    run_dir, data = run
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    new = staging_dir(out)
    shutil.copytree(run_dir, new)
    (new / "eval_results.json").write_text('{"train": {}, "new": true}')
    journal_path(out).write_text(json.dumps({"out": out.name, "old": old_dir(out).name, "new": new.name}))
    os.replace(out, old_dir(out))  # the first rename happened, the kill came before the second
    assert not out.exists()
    assert predict(out, data, tmp_path / "p.jsonl") == 0
    err = capsys.readouterr().err
    assert f"finished an interrupted --overwrite of {out}: the new run is in place" in err
    assert json.loads((out / "eval_results.json").read_text())["new"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "run"]


def test_run_files_get_normal_permissions(run):
    run_dir, _ = run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "raftlm.json", "config.yaml", "README.md"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o666 & ~umask, name


def test_pickle_weights_are_refused(tmp, tmp_path, capsys):
    model, tok = tmp
    folder = tmp_path / "pickled"
    import torch

    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):  # pickle weights only, as old checkpoints have them
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    data = write_csv(tmp_path / "d.csv", _rows(10))
    code, line = _bad(
        capsys,
        [
            "predict",
            "--model",
            str(folder),
            "--dataset",
            f"csv:{data}",
            "--input",
            str(data),
            "--output",
            str(tmp_path / "p.jsonl"),
        ],
    )
    assert code == 2 and "holds pickle weights only" in line


@pytest.fixture
def tmp():
    from raftlm.testing import tiny_random_llama

    return tiny_random_llama(seed=0)


def test_calibrating_on_training_or_test_data_or_one_example_warns(run, tmp_path, capsys):
    import shutil

    run_dir, data = run
    mine = tmp_path / "run"
    shutil.copytree(run_dir, mine)
    assert main(["calibrate", str(mine), "--split", "train"]) == 0
    assert "coverage guarantee is void" in capsys.readouterr().err
    assert main(["calibrate", str(mine), "--split", "test"]) == 0
    assert "calibrating on the test split leaks it" in capsys.readouterr().err
    assert main(["calibrate", str(mine), "--set", "eval.split=test"]) == 0  # (--set was read as validation)
    assert "calibrating on the test split leaks it" in capsys.readouterr().err
    assert main(["calibrate", str(mine)]) == 0  # the default: validation, whatever eval.split the run saved
    assert "calibrated on validation" in capsys.readouterr().out
    assert main(["calibrate", str(mine), "--input", str(data), "--set", "eval.split=test"]) == 2
    assert "--input scores that file and --split a split" in capsys.readouterr().err
    one = write_csv(tmp_path / "one.csv", _rows(1))
    assert main(["calibrate", str(mine), "--input", str(one)]) == 0
    assert "only 1 calibration example(s)" in capsys.readouterr().err


def test_row_contract_is_the_same_for_files_and_the_api():
    from raftlm.api import examples_from
    from raftlm.files import to_examples

    for bad, fragment in (
        ({"a": "x", "b": None}, "missing (null)"),
        ({"a": "x", "b": " "}, "is empty"),
        ({"a": "x", "b": 5}, "not text"),
    ):
        with pytest.raises(RaftlmError) as from_file:
            to_examples([bad], "{a} {b}", None, "f.jsonl")
        with pytest.raises(RaftlmError) as from_api:
            examples_from([bad], None, "{a} {b}")
        assert fragment in str(from_file.value)
        assert str(from_file.value).split(": ", 1)[1] == str(from_api.value).split(": ", 1)[1]


def test_no_output_may_replace_a_file_of_a_run(run, tmp_path, capsys, monkeypatch):
    """`predict --output RUN/model.safetensors --overwrite` would destroy the run's weights."""
    import shutil

    run_dir, data = run
    mine = tmp_path / "run"
    shutil.copytree(run_dir, mine)
    before = _snapshot(mine)
    # (and in another case: on macOS and Windows Model.safetensors is model.safetensors)
    names = ("model.safetensors", "raftlm.json", "config.yaml", "tokenizer.json", ".raftlm-run")
    for name in (*names, "Model.SafeTensors", "Config.yaml", "RAFTLM.json", "Tokenizer.json"):
        code, line = _bad(
            capsys,
            argv(mine, str(data), str(mine / name), "--overwrite"),
        )
        assert code == 2 and "is a file of the raftlm run" in line, name
    assert _snapshot(mine) == before
    # an output of its own in the run directory is fine, and may be replaced
    for _ in range(2):
        assert (
            main(["evaluate", "--model", str(mine), "--output", str(mine / "test.json"), "--overwrite"]) == 0
        )
    capsys.readouterr()


def test_no_output_may_be_a_file_the_command_reads(run, tmp_path, capsys, monkeypatch):
    """Only --input was checked: `evaluate --dataset csv:d.csv --output d.csv --overwrite` replaced the data
    with its metrics, `--config r.yaml --output r.yaml` the recipe, `--output MODEL/config.json` a model
    folder's config (a folder that is not a run: run_file does not guard it)."""
    import shutil

    run_dir, data = run
    _never_load(monkeypatch)
    d = tmp_path / "d.csv"
    d.write_bytes(data.read_bytes())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  dataset: csv:{d}\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    for f in run_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(f, hf / f.name)
    before = _snapshot(tmp_path)
    model = ["--model", str(run_dir)]
    for args, output in (
        (["evaluate", *model, "--dataset", f"csv:{d}"], d),
        (["predict", "--model", "tiny-random-llama", "--dataset", f"csv:{d}", "--input", str(data)], d),
        (["evaluate", *model, "--config", str(recipe)], recipe),
        (["evaluate", "--model", str(hf), "--dataset", f"csv:{data}"], hf / "config.json"),
    ):
        code, line = _bad(capsys, [*args, "--output", str(output), "--overwrite"])
        assert code == 2 and "is the same file as the input" in line, (args, line)
    assert _snapshot(tmp_path) == before
    link = tmp_path / "link.json"  # a link to a missing file is an existing entry: it needs --overwrite
    link.symlink_to(tmp_path / "backup" / "final.json")
    code, line = _bad(capsys, ["evaluate", *model, "--input", str(data), "--output", str(link)])
    assert code == 2 and "already exists (a link to the missing" in line and link.is_symlink()


def test_out_of_memory_is_one_line(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(raftlm.streaming, "predict_examples", oom)
    code, line = _bad(
        capsys,
        argv(run_dir, str(data), str(tmp_path / "p.jsonl")),
    )
    assert code == 2 and line.startswith("raftlm predict: error: out of memory")


def test_the_demo_runs_twice_into_its_own_folder_and_never_into_a_users(tmp_path, capsys, monkeypatch):
    """`make demo` twice: the second --overwrite replaces the first run with the demo's own files in it;
    a user's folder as --output-dir is refused before the minutes of zero-shot scoring."""
    out = tmp_path / "demo"
    tiny = [
        "--model",
        "tiny-random-llama",
        "--max-steps",
        "2",
        "--eval-steps",
        "1",
        "--train-size",
        "40",
        "--quiet",
    ]
    import raftlm.demo
    from raftlm.core import Splits

    real = raftlm.demo.load_splits

    def small(cfg):  # the demo's data, cut to a few rows (it scores 500 test snippets three ways)
        s = real(cfg)
        return Splits(s.train[:40], s.validation[:8], s.test[:8], s.template, s.grid, s.target_range)

    monkeypatch.setattr(raftlm.demo, "load_splits", small)
    monkeypatch.setattr(raftlm.pipeline, "load_splits", small)
    for extra in ([], ["--decoder", "median"]):  # (the decoder asked for: it was overwritten by rail)
        assert (
            main(["demo", "--output-dir", str(out), "--overwrite", "--set", "data.val_size=8", *tiny, *extra])
            == 0
        )
    assert {"scatter.png", "demo_results.json", "raftlm.json"} <= {p.name for p in out.iterdir()}
    rows = json.loads((out / "demo_results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["zero-shot greedy", "zero-shot rail", "RAFT + median"]
    assert [r["decoder"] for r in rows] == ["greedy", "rail", "median"]  # (scored so, not only named)
    assert "amazon-snippets, tiny-random-llama, held-out test split:" in capsys.readouterr().out
    monkeypatch.setattr(raftlm.demo, "load_splits", lambda cfg: pytest.fail("loaded data for --method none"))
    code, line = _bad(capsys, ["demo", "--output-dir", str(out), "--overwrite", "--method", "none", *tiny])
    assert code == 2 and "--method none trains nothing: pick a trained method" in line
    monkeypatch.setattr(raftlm.demo, "load_splits", small)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    _never_load(monkeypatch)
    code, line = _bad(capsys, ["demo", "--output-dir", str(mine), "--overwrite", *tiny])
    assert code == 2 and "is not a raftlm run" in line and (mine / "thesis.tex").read_text() == "x"


def test_a_sweep_never_writes_into_a_users_folder(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"my": "data"}')
    (mine / "sweep.yaml").write_text("mine: true\n")
    before = _snapshot(mine)
    sweep = {"output_dir": str(mine), "datasets": ["synthetic-original1"], "models": ["tiny-random-llama"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**sweep, "methods": [{"method": "none", "decoder": "rail"}]}))
    code, line = _bad(capsys, ["experiment", str(path)])
    assert code == 2 and "holds files no sweep wrote" in line and _snapshot(mine) == before


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("eval.batch_size=0", "batch_size=0: use a positive integer"),
        ("eval.temperature=0", "temperature=0: use a temperature > 0"),
        ("model.trainable=top-0", "top-N needs N >= 1"),
        ("data.history=-1", "history=-1"),
        ("training.weight_decay=-0.1", "weight_decay=-0.1"),
    ],
)
def test_settings_out_of_range_fail_before_any_work(run, tmp_path, capsys, monkeypatch, setting, fragment):
    run_dir, data = run
    _never_load(monkeypatch)
    code, line = _bad(capsys, argv(run_dir, data, tmp_path / "p.jsonl", "--set", setting))
    assert code == 2 and fragment in line


def test_an_input_that_is_a_device_is_named_as_one(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    _never_load(monkeypatch)
    code, line = _bad(
        capsys,
        argv(run_dir, "/dev/zero", str(tmp_path / "p.jsonl")),
    )
    assert code == 2 and "is a character device, not a regular file" in line


def test_overwriting_a_run_through_a_symlink_replaces_the_real_run(run, tmp_path):
    import shutil

    run_dir, data = run
    real = tmp_path / "real"
    shutil.copytree(run_dir, real)
    (tmp_path / "link").symlink_to(real)
    old = (real / "model.safetensors").read_bytes()
    assert (
        main(
            train_args(
                data, tmp_path / "link", "--overwrite", "--max-steps", "2", "--seed", "5", "--grid", "0-5"
            )
        )
        == 0
    )
    assert (tmp_path / "link").is_symlink() and (tmp_path / "link").resolve() == real
    assert (real / "model.safetensors").read_bytes() != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no swap leftovers


def test_a_loaded_runs_template_trains_its_clone_on_the_same_prompts(tmp_path):
    """A loaded run's params gave its template resolved, and fit resolved it again: `dir C:\\temp: {text}`
    trained its clone on `dir C:<tab>emp: ...`. The params hold it as written."""
    from sklearn.base import clone

    from raftlm import RAFTRegressor

    texts, y = [r["text"] for r in _rows(8)], [r["target"] for r in _rows(8)]
    reg = RAFTRegressor(model="tiny-random-llama", prompt_template="dir C:\\\\temp: {text}", max_steps=1)
    reg.fit(texts, y).save(str(tmp_path / "run"))
    loaded = RAFTRegressor.load(str(tmp_path / "run"))
    assert loaded.get_params()["prompt_template"] == "dir C:\\\\temp: {text}"
    again = clone(loaded).fit(texts, y)
    assert again.prompts(texts[:1]) == loaded.prompts(texts[:1]) == [f"dir C:\\temp: {texts[0]}"]


def test_a_recipe_given_to_evaluate_a_run_layers_over_the_runs_settings(tmp_path):
    """`evaluate --model RUN --config eval.yaml` dropped the run's own config.yaml: its dataset fell back to
    the default (STS-B-1K: another dataset's test split, scored without a word), its split seed and decoder
    too. The run's settings, then the recipe, then flags, as without --config."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main([*train_args(data, run), "--max-steps", "2", "--split-seed", "3", "--decoder", "median"]) == 0
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("eval:\n  split: test\n")
    plain, recipes = tmp_path / "plain.json", tmp_path / "recipe.json"
    assert main(["evaluate", "--model", str(run), "--split", "test", "--output", str(plain)]) == 0
    assert main(["evaluate", "--model", str(run), "--config", str(recipe), "--output", str(recipes)]) == 0
    a, b = json.loads(plain.read_text()), json.loads(recipes.read_text())
    assert a == b and a["n"] == 4 and a["decoder"] == "median"


def test_a_loaded_runs_clone_trains_with_all_the_runs_settings(tmp_path):
    """`clone(RAFTRegressor.load(run)).fit` trains the same way again: settings no parameter carries
    (scheduler, warmup, dropout, weight decay, sampling...) reach it through `settings`; the clone used
    its defaults (a cosine schedule with warmup, no dropout), and val_size fell back to 300."""
    from sklearn.base import clone

    from raftlm import RAFTRegressor
    from raftlm.api import _owned_keys
    from raftlm.config import Config

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {dropout: 0.1}\ndata: {val_size: all}\n"
        "training: {scheduler: constant, warmup_steps: 0, weight_decay: 0.05, logging_steps: 1}\n"
        "eval: {num_samples: 8, temperature: 0.5, batch_size: 2}\n"  # (training's: 4, lowered for memory)
    )
    assert main([*train_args(data, run), "--config", str(recipe), "--max-steps", "2"]) == 0
    loaded = RAFTRegressor.load(str(run))
    assert loaded.get_params()["settings"] == {
        "model": {"dropout": 0.1},
        "training": {"scheduler": "constant", "warmup_steps": 0, "weight_decay": 0.05, "logging_steps": 1},
        "eval": {"num_samples": 8, "temperature": 0.5, "batch_size": 2},
    }
    # it predicts in the run's eval batches, as `raftlm predict` and the server (it used training's 4)
    seen, real = [], loaded.predictor_.predict

    def spy(texts, decoder="rail", batch_size=16, *args, **kwargs):
        seen.append(batch_size)
        return real(texts, decoder, batch_size, *args, **kwargs)

    loaded.predictor_.predict = spy
    texts = [r["text"] for r in _rows(6)]
    loaded.predict(texts), loaded.predict_proba(texts), loaded.calibrate(texts * 2, [1.0, 2.0] * 6)
    assert loaded.get_params()["batch_size"] == 4 and set(seen) == {2}
    del loaded.predictor_.predict
    texts, y = [r["text"] for r in _rows(40)], [r["target"] for r in _rows(40)]
    again = clone(loaded).fit(texts, y)
    saved, trained = Config.from_yaml(str(run / "config.yaml")).to_dict(), again.config_.to_dict()
    owned = _owned_keys()  # (a parameter's value is the run's resolved one: grid 1-5 for the data's default)
    for section in ("model", "method", "training", "eval"):
        for key, value in saved[section].items():
            if key not in owned[section] | {"progress_bar"}:
                assert trained[section][key] == value, (section, key)
    assert loaded.get_params()["val_size"] in ("all", None) and trained["data"]["val_size"] is None  # all
    with pytest.raises(RaftlmError, match=r"settings training.lr is one of RAFTRegressor's own parameters"):
        RAFTRegressor(settings={"training": {"lr": 1e-3}}).fit(texts, y)
    with pytest.raises(RaftlmError, match=r"settings \{'trainer'.*map config sections"):
        RAFTRegressor(settings={"trainer": {}}).fit(texts, y)


def test_a_second_report_waits_for_the_first_instead_of_deleting_its_drawings(tmp_path, capsys, monkeypatch):
    """Two reports of one folder (a sweep's sync and a user's): the second one's clean-up of a killed
    report's drawing folder (.report-XXXXXXXX, PNGs only) took the first's while it drew, and the first
    failed saving its figures. Now a report holds the report's lock: the second waits (REPORT_WAIT), and
    says who holds it if the wait ends."""
    import raftlm.report as report

    folder = tmp_path / "rep"
    folder.mkdir()
    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    rows = [{**row, "cell_id": f"c{s}", "seed": s, "lr": 1e-4, "validation_rmse": 1.0} for s in (0, 1)]
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "curves").mkdir()
    (folder / "curves" / "r.jsonl").write_text(
        '{"step": 50, "eval_rmse": 1.2}\n{"step": 100, "eval_rmse": 1.1}\n'
    )
    real_figures, second = report.figures, []

    def figures(root, aggs, rows, figdir):
        if not second:
            second.append("started")
            (figdir / "half.png").write_bytes(b"drawn before the second report started")
            second.append(main(["report", str(folder)]))
            second.append(capsys.readouterr().err.strip())
            assert (figdir / "half.png").is_file()
            (figdir / "half.png").unlink()
        return real_figures(root, aggs, rows, figdir)

    monkeypatch.setattr(report, "figures", figures)
    monkeypatch.setattr(report, "REPORT_WAIT", 0.2, raising=False)
    assert main(["report", str(folder)]) == 0
    assert second[1] == 2 and "another raftlm process" in second[2] and "is writing the report" in second[2]
    assert (folder / "figures" / "rmse_vs_step_d.png").is_file()
    assert not list(folder.glob(".report*")) and not list(folder.glob(".*.lock"))
