"""What an interrupt (Ctrl+C, SIGTERM) or a failure midway through writing leaves on disk, and whether the
rerun the one-line message names works (a read-only audit of every writing command, stop 64)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import train_args, write_csv

import raftlm.pipeline as pipeline
import raftlm.training as training
from raftlm.cli import main
from raftlm.io import FINISHED_FILE, TRAINING_LOG


@pytest.fixture
def data(toy_csv):
    return toy_csv  # (tmp_path/toy.csv: 40 reviews)


def _said(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _interrupt_when_checkpoints_go(monkeypatch):
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        real(path, *a, **k)
        if Path(path).name.startswith("checkpoint-"):  # (_drop_checkpoints deletes them one by one)
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.shutil, "rmtree", rmtree)


def test_an_interrupt_while_a_finished_run_drops_its_checkpoints_keeps_the_run(
    tmp_path, data, monkeypatch, capsys
):
    """Ctrl+C while a finished run deleted its checkpoints (eval_results.json written) found no checkpoint
    to resume from and deleted the whole run; an --overwrite's finished staged run went the same way, and
    the line said "resume with --resume". Now the finished run stays, and the line says it is whole."""
    run = tmp_path / "run"
    _interrupt_when_checkpoints_go(monkeypatch)
    assert main(train_args(data, run, "--quiet")) == 130
    assert "the run had finished" in _said(capsys)
    assert (run / FINISHED_FILE).is_file() and (run / "model.safetensors").is_file()
    monkeypatch.undo()
    assert (
        main(["predict", "--model", str(run), "--input", str(data), "--output", str(tmp_path / "p.jsonl")])
        == 0
    )

    _interrupt_when_checkpoints_go(monkeypatch)
    assert main(train_args(data, run, "--quiet", "--overwrite", "--max-steps", "2")) == 130
    assert "the run had finished" in _said(capsys)
    assert "max_steps: 2\n" in (run / "config.yaml").read_text() and (run / FINISHED_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "run", "toy.csv"]


def test_an_interrupted_overwrite_says_the_old_run_stands_and_what_to_rerun(
    tmp_path, data, monkeypatch, capsys
):
    """Ctrl+C during `train --overwrite` discarded the staged run (the old one untouched, rightly) but said
    "resume with --resume", which then refused ("already holds a finished run"). A new run interrupted
    before its first checkpoint is removed, and said so."""
    run = tmp_path / "run"
    assert main(train_args(data, run, "--quiet")) == 0
    before = _files(run)
    real_on_log = training.MetricsLogger.on_log

    def on_log(self, args, state, control, logs=None, **kw):
        real_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step >= 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.MetricsLogger, "on_log", on_log)
    assert (
        main(train_args(data, run, "--quiet", "--overwrite", "--max-steps", "8", "--logging-steps", "1"))
        == 130
    )
    said = _said(capsys)
    assert f"the old run {run} is as it was" in said and "rerun with --overwrite" in said, said
    assert _files(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.csv"]

    fresh = tmp_path / "fresh"
    assert main(train_args(data, fresh, "--quiet", "--eval-steps", "5", "--logging-steps", "1")) == 130
    assert "no checkpoint had been saved" in _said(capsys) and not fresh.exists()
    assert main(train_args(data, fresh, "--quiet", "--logging-steps", "1")) == 130  # (a checkpoint at 2)
    assert "resume with --resume" in _said(capsys)
    monkeypatch.undo()
    assert main(train_args(data, fresh, "--quiet", "--resume")) == 0


def test_a_resume_without_a_checkpoint_starts_the_training_log_again(tmp_path, data, monkeypatch):
    """A kill before the first checkpoint (no clean-up runs) left metrics.jsonl with steps 1-2 and a line
    cut short; `train --resume` (which the refusal of the unfinished run names) appended onto the torn
    line and logged steps 1-2 again, and a sweep's report then refused the curve. Now it starts again."""
    run = tmp_path / "run"
    args = train_args(data, run, "--quiet", "--eval-steps", "10", "--logging-steps", "1")
    real_on_log = training.MetricsLogger.on_log

    def killed(self, args, state, control, logs=None, **kw):
        real_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step >= 2:
            with open(self.path, "a") as f:
                f.write('{"step": 3, "loss": 1.2')  # the append a kill cut short
            raise KeyboardInterrupt

    monkeypatch.setattr(training.MetricsLogger, "on_log", killed)
    monkeypatch.setattr(pipeline, "discard_failed", lambda *a: None)  # a SIGKILL: no clean-up ran
    assert main(args) == 130
    monkeypatch.undo()
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
    assert main([*args, "--resume"]) == 0
    records = [json.loads(line) for line in (run / TRAINING_LOG).read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


def test_a_checkpoint_whose_state_a_full_disk_cut_short_is_skipped_by_resume(
    tmp_path, data, monkeypatch, capsys
):
    """Trainer writes trainer_state.json in place and last: a full disk there left a checkpoint that
    counted as complete (the file existed), and every --resume ended in a JSONDecodeError traceback. Now
    such a checkpoint is skipped, as a half-written one is, and resume starts from the one before."""
    run = tmp_path / "run"
    args = train_args(data, run, "--quiet", "--max-steps", "6")

    def on_save(self, args, state, control, **kw):
        if state.global_step >= 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.MetricsLogger, "on_save", on_save, raising=False)
    assert main(args) == 130
    monkeypatch.undo()
    state = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # the disk filled midway
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert json.loads((run / FINISHED_FILE).read_text())["train"]["global_step"] == 6


@pytest.fixture
def trained(tmp_path, data):
    run = tmp_path / "run"
    assert main(train_args(data, run, "--quiet", "--max-steps", "2")) == 0
    return run


def test_an_output_written_into_a_run_is_listed_before_it_is_written(tmp_path, data, trained, monkeypatch):
    """evaluate --output RUN/test.json wrote the file, then listed it in the run's marker: a kill between
    the two left a file the run did not list, and `train --overwrite RUN` refused it as a user's forever
    (demo's three files, predict's output and --entropy's two, likewise). Now the name is listed first."""
    import raftlm.io as io

    real = io.write_json

    def killed_after(path, obj):
        real(path, obj)
        if Path(path).name == "test.json":
            raise KeyboardInterrupt  # (a SIGKILL right after the write, as far as the disk is concerned)

    monkeypatch.setattr(io, "write_json", killed_after)
    evaluate = ["evaluate", "--model", str(trained), "--output", str(trained / "test.json"), "--quiet"]
    assert main(evaluate) == 130 and (trained / "test.json").is_file()
    monkeypatch.undo()
    assert main([*train_args(data, trained, "--quiet", "--max-steps", "2"), "--overwrite"]) == 0


def test_a_full_disk_while_an_output_is_listed_leaves_it_writable_again(
    tmp_path, trained, monkeypatch, capsys
):
    """Listing an output rewrote the marker twice (its name among the run's files, then among its
    outputs): a full disk between the two left a name the run took for one of its own files, and every
    later `evaluate --output RUN/test.json --overwrite` was refused ("writing it would damage the run").
    Now one atomic write; whatever fails, the rerun works."""
    import errno

    import raftlm.io as io

    real, writes = io.write_json, []

    def second_marker_write_fails(path, obj):
        if Path(path).name == ".raftlm-run":
            writes.append(path)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(io, "write_json", second_marker_write_fails)
    evaluate = ["evaluate", "--model", str(trained), "--output", str(trained / "test.json"), "--quiet"]
    main(evaluate)
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*evaluate, "--overwrite"]) == 0, capsys.readouterr().err
    assert json.loads((trained / "test.json").read_text())["n"] > 0


def test_a_lock_file_a_kill_left_in_a_run_does_not_block_its_overwrite(tmp_path, data, trained, capsys):
    """A SIGKILLed `evaluate --output RUN/test.json` leaves its lock file RUN/.test.json.lock (the kernel
    drops the lock, the file stays): `train --overwrite RUN` refused it as a file raftlm did not write. A
    file of that name that is not raftlm's lock still counts as the user's."""
    (trained / ".test.json.lock").write_text("raftlm 12345")
    assert main([*train_args(data, trained, "--quiet", "--max-steps", "2"), "--overwrite"]) == 0
    (trained / ".notes.lock").write_text("my own notes, not a lock")
    assert main([*train_args(data, trained, "--quiet", "--max-steps", "2"), "--overwrite"]) == 2
    assert ".notes.lock" in capsys.readouterr().err


def test_an_interrupted_predict_overwrite_resumes_as_its_line_says(tmp_path, trained, monkeypatch, capsys):
    """Ctrl+C during `predict --overwrite` of an existing output kept the rows written so far and said
    "resume with --resume", which refused (the old output exists: "pass --overwrite"), as did --resume
    --overwrite; only --overwrite went on, from zero. Now --resume continues and replaces the old output;
    a new file a user put at a path whose interrupted predict did not start with --overwrite stays refused."""
    import raftlm.streaming as streaming

    rows = write_csv(tmp_path / "many.csv", [{"text": f"review {i}: fine. rating:"} for i in range(300)])
    out = tmp_path / "p.jsonl"
    predict = ["predict", "--model", str(trained), "--input", str(rows), "--output", str(out), "--quiet"]
    assert main(predict) == 0
    want = out.read_text()
    out.write_text("the old output\n")
    real_chunks, real_predict, calls = streaming.row_chunks, streaming.predict_examples, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_predict(*a, **k)

    monkeypatch.setattr(streaming, "row_chunks", lambda i, n, b, e: real_chunks(i, 100, b, e))
    monkeypatch.setattr(streaming, "predict_examples", interrupted)
    assert main([*predict, "--overwrite"]) == 130
    assert "resume with --resume" in _said(capsys) and out.read_text() == "the old output\n"
    monkeypatch.setattr(streaming, "predict_examples", real_predict)
    assert main([*predict, "--resume"]) == 0, capsys.readouterr().err
    assert out.read_text() == want and len(calls) == 3  # (the first 200 rows were not predicted again)

    out.unlink()
    calls.clear()
    monkeypatch.setattr(streaming, "predict_examples", interrupted)
    assert main(predict) == 130  # a new output: no --overwrite
    out.write_text("a user's file, put there since\n")
    monkeypatch.setattr(streaming, "predict_examples", real_predict)
    assert main([*predict, "--resume"]) == 2 and "already exists" in _said(capsys)
    assert out.read_text() == "a user's file, put there since\n"
    # and one put where an interrupted --overwrite's old output was: not the file it was replacing
    out.write_text("the old output\n")
    monkeypatch.setattr(streaming, "predict_examples", interrupted)
    calls.clear()
    assert main([*predict, "--overwrite"]) == 130
    out.unlink()
    out.write_text("a user's file, put there since\n")
    monkeypatch.setattr(streaming, "predict_examples", real_predict)
    assert main([*predict, "--resume"]) == 2
    assert "is not the file the interrupted --overwrite was replacing" in _said(capsys)
    assert out.read_text() == "a user's file, put there since\n"


def test_ctrl_c_while_the_parser_is_built_is_one_line(monkeypatch, capsys):
    """Ctrl+C in the first fraction of a second (the parser imports the method and dataset tables) printed
    a traceback: that code ran before main's handler."""
    import raftlm.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["train", "--help"]) == 130
    assert capsys.readouterr().err == "raftlm: error: interrupted before it started; nothing was written\n"


def test_a_lock_a_live_command_holds_in_a_run_still_blocks_its_overwrite(tmp_path, data, trained, capsys):
    """A lock file a kill left counts as raftlm's (54cc823): one a running command holds now does not, as that
    command is writing into the run (its output would land in a run being replaced)."""
    from raftlm.io import output_lock

    with output_lock(trained / "test.json"):
        assert main([*train_args(data, trained, "--quiet", "--max-steps", "2"), "--overwrite"]) == 2
    assert ".test.json.lock" in capsys.readouterr().err
    assert main([*train_args(data, trained, "--quiet", "--max-steps", "2"), "--overwrite"]) == 0


def test_an_interrupt_in_a_folder_the_user_made_says_it_was_emptied_not_removed(
    tmp_path, data, monkeypatch, capsys
):
    """The line said "(RUN removed)" where raftlm emptied an empty folder the user had made and kept it."""
    run = tmp_path / "mine"
    run.mkdir()
    real_on_log = training.MetricsLogger.on_log

    def on_log(self, args, state, control, logs=None, **kw):
        real_on_log(self, args, state, control, logs=logs, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.MetricsLogger, "on_log", on_log)
    assert main(train_args(data, run, "--quiet", "--eval-steps", "5", "--logging-steps", "1")) == 130
    assert f"({run} emptied: it is your folder)" in _said(capsys) and run.is_dir() and not any(run.iterdir())


def test_a_kill_between_predicts_last_rename_and_its_records_removal_is_finished_by_the_next_command(
    tmp_path, trained, monkeypatch, capsys
):
    """Killed after the partial file became the output but before the prediction record went: the output was
    whole, and the rerun its line names refused (--resume: "already exists: pass --overwrite"; without a flag:
    "left its partial file: pass --resume"). Now the next command finishes that last step (the record goes,
    the output stays as written) and says the prediction had finished."""
    import os

    import raftlm.streaming as streaming
    from raftlm.io import job_path

    rows = write_csv(tmp_path / "rows.csv", [{"text": f"review {i}: fine. rating:"} for i in range(30)])
    out = tmp_path / "p.jsonl"
    predict = ["predict", "--model", str(trained), "--input", str(rows), "--output", str(out), "--quiet"]

    def killed(output, world=1):
        os.replace(streaming.partial_path(output), output)
        raise KeyboardInterrupt  # (where a SIGKILL would stop it: the record is still there)

    monkeypatch.setattr(streaming, "finish_job", killed)
    assert main(predict) == 130
    want = out.read_text()
    assert len(want.splitlines()) == 30 and job_path(out).exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*predict, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "had finished" in err and "nothing to resume" in err, err
    assert out.read_text() == want and not job_path(out).exists()
    assert main(predict) == 2 and "already exists" in _said(capsys)  # (now an output like any other)


def test_a_multi_process_predicts_leftover_parts_after_its_output_was_written_go_with_its_record(tmp_path):
    """Under a launch the output is written from the processes' parts, then the parts and the record go: a kill
    between left the whole output beside them. A record that predates a replaced output, or a row count that
    does not match, is still an interrupted prediction."""
    import os

    from raftlm.io import check_output, job_path, partial_path

    out = tmp_path / "p.jsonl"
    record = {"input_sha256": "x", "model": "m", "rows": 3, "processes": 2}

    def leftover(lines: int, replaces: bool = False):
        job_path(out).write_text(json.dumps({**record, **({"replaces": True} if replaces else {})}))
        for r in range(2):
            partial_path(out, r, 2).write_text('{"index": 0}\n')
        out.write_text('{"index": 0}\n' * lines)
        t = os.stat(job_path(out)).st_mtime_ns
        os.utime(out, ns=(t + 10**6, t + 10**6) if not replaces else (t - 10**9, t - 10**9))

    leftover(3)
    with pytest.raises(Exception, match="had finished"):
        check_output(out, overwrite=False, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]
    leftover(2)  # rows missing: not the finished prediction's output
    with pytest.raises(Exception, match="already exists"):
        check_output(out, overwrite=False, resume=True)
    assert job_path(out).exists()
    leftover(3, replaces=True)  # the old output an --overwrite is replacing
    assert check_output(out, overwrite=False, resume=True) == out
    assert job_path(out).exists() and partial_path(out, 0, 2).exists()


def test_calibrate_holds_the_runs_lock_and_replaces_only_raftlms_files(tmp_path, data, trained, capsys):
    """A read-only audit of calibrate: it took no lock, so a `train --overwrite RUN` swapped in meanwhile got
    the old model's calibration.json and int8 maxima (exit 0 both); in a run without raftlm's marker (a copy
    from the Hub) it replaced a user's calibration.json; a folder of that name failed after scoring, naming a
    temp file; an interrupted --overwrite's run was "not a run directory". Now: the run's lock, raftlm's files
    only, checked before the model loads, the swap finished first."""
    import raftlm.cli as cli
    from raftlm.io import RUN_MARKER, output_lock, staging_dir

    calibrate = ["calibrate", str(trained), "--input", str(data)]
    with output_lock(trained.resolve(), "the run directory"):  # (as train --overwrite holds it)
        assert main(calibrate) == 2
    assert "is writing the run directory" in _said(capsys)

    (trained / "calibration.json").unlink()
    (trained / "calibration.json").mkdir()
    assert main(calibrate) == 2 and "is a directory, where calibrate writes" in _said(capsys)
    (trained / "calibration.json").rmdir()

    copy = tmp_path / "from-hub"
    shutil.copytree(trained, copy)
    (copy / RUN_MARKER).unlink()
    (copy / "calibration.json").write_text('{"mine": "my notes"}')
    assert main(["calibrate", str(copy), "--input", str(data)]) == 2
    assert "is not a raftlm calibration.json" in _said(capsys)
    assert (copy / "calibration.json").read_text() == '{"mine": "my notes"}'
    (copy / "calibration.json").unlink()
    assert main(["calibrate", str(copy), "--input", str(data)]) == 0  # (a new file: nothing replaced)
    assert main(["calibrate", str(copy), "--input", str(data)]) == 0  # (raftlm's own, by its format)
    assert json.loads((copy / "calibration.json").read_text())["source"] == str(data)

    # an --overwrite a kill interrupted mid-swap (journal written, the old run renamed away, the new one staged)
    from raftlm.io import _journal, journal_path, old_dir, write_json

    shutil.copytree(trained, staging_dir(trained))
    write_json(journal_path(trained), _journal(trained))
    trained.rename(old_dir(trained))
    assert not cli.is_run_dir(trained)
    assert main(calibrate) == 0, capsys.readouterr().err
    assert "finished an interrupted --overwrite" in capsys.readouterr().err


def test_the_demos_lines_name_fixes_the_demo_has(tmp_path, monkeypatch, capsys):
    """An interrupted demo said "resume with --resume" (demo has no such flag; a plain rerun then said "pass
    --overwrite"); a demo into a user's folder said "pass --overwrite", which then refused it as not a
    raftlm run. Each line now names what works."""
    import raftlm.demo
    from raftlm.core import Splits

    real = raftlm.demo.load_splits

    def small(cfg):
        s = real(cfg)
        return Splits(s.train[:40], s.validation[:8], s.test[:8], s.template, s.grid, s.target_range)

    monkeypatch.setattr(raftlm.demo, "load_splits", small)
    monkeypatch.setattr(pipeline, "load_splits", small)
    out = tmp_path / "demo"
    tiny = ["--model", "tiny-random-llama", "--max-steps", "4", "--eval-steps", "2", "--quiet"]
    demo = ["demo", "--output-dir", str(out), "--set", "data.val_size=8", *tiny]
    real_save, saves = training.Trainer._save_checkpoint, []

    def stop_after_a_checkpoint(self, *a, **k):
        real_save(self, *a, **k)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.Trainer, "_save_checkpoint", stop_after_a_checkpoint)
    assert main(demo) == 130
    assert _said(capsys).endswith(
        f"{out} holds the unfinished run: rerun with --overwrite (the demo starts over)"
    )
    monkeypatch.setattr(training.Trainer, "_save_checkpoint", real_save)
    assert main([*demo, "--overwrite"]) == 0, capsys.readouterr().err

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["demo", "--output-dir", str(mine), *tiny]) == 2
    assert "holds files raftlm did not write and is never replaced: choose another --output-dir" in _said(
        capsys
    )


def test_predict_refuses_an_interval_its_calibration_cannot_give_before_the_model_loads(
    tmp_path, trained, monkeypatch, capsys
):
    """The README says every command checks its inputs before any model loads: `predict --interval 0.9` of
    a run calibrated on 4 examples loaded the model and predicted, then refused (a newcomer's first run on a
    40-row file). Now said first, in the same line; a level it can give still runs."""
    rows = write_csv(tmp_path / "new.csv", [{"text": "review: fine. rating:"}])
    out = tmp_path / "p.jsonl"
    predict = ["predict", "--model", str(trained), "--input", str(rows), "--output", str(out), "--quiet"]
    real = pipeline._load_for_eval

    def never(*a, **k):
        raise AssertionError("the model was loaded before the interval was checked")

    monkeypatch.setattr(pipeline, "_load_for_eval", never)
    assert main([*predict, "--interval", "0.9"]) == 2
    assert "calibration examples cannot give a 0.9 interval (split conformal needs at least 11)" in _said(
        capsys
    )
    assert not out.exists()
    monkeypatch.setattr(pipeline, "_load_for_eval", real)
    assert main([*predict, "--interval", "0.5"]) == 0, capsys.readouterr().err


def test_an_overwrites_old_output_is_never_taken_for_the_finished_new_one(tmp_path):
    """A predict --overwrite killed within its old output's timestamp tick (a filesystem of 1-second times),
    with as many rows: the old output looked newer than the record and whole, so the record and parts went and
    --resume said the prediction had finished. The record keeps the old output's identity now."""
    import os

    from raftlm.io import check_output, file_identity, job_path, partial_path

    out = tmp_path / "p.jsonl"
    out.write_text('{"index": 0}\n' * 3)  # the old output
    record = {"input_sha256": "x", "model": "m", "rows": 3, "processes": 1, "replaces": True}
    job_path(out).write_text(json.dumps({**record, "replaced": file_identity(out)}))
    partial_path(out).write_text('{"index": 0}\n')
    t = os.stat(job_path(out)).st_mtime_ns
    os.utime(out, ns=(t, t))  # (the same tick as the record)
    job_path(out).write_text(json.dumps({**record, "replaced": file_identity(out)}))
    os.utime(job_path(out), ns=(t, t))
    assert check_output(out, overwrite=False, resume=True) == out  # resumes, replacing the old output
    assert job_path(out).exists() and partial_path(out).exists()


def test_evaluate_refuses_an_interval_it_cannot_give_before_the_model_loads(
    tmp_path, trained, monkeypatch, capsys
):
    """evaluate --interval 0.9 of a run calibrated on 4 examples scored the whole split, then refused."""

    def never(*a, **k):
        raise AssertionError("the model was loaded before the interval was checked")

    monkeypatch.setattr(pipeline, "_load_for_eval", never)
    assert main(["evaluate", "--model", str(trained), "--interval", "0.9", "--quiet"]) == 2
    assert "calibration examples cannot give a 0.9 interval" in _said(capsys)


def test_a_run_whose_weights_a_sweep_dropped_says_so_in_every_command(tmp_path, trained, capsys):
    """A sweep's run after keep_models false (model.safetensors deleted): predict, evaluate, calibrate and
    RAFTRegressor.load said "cannot load model ...: check the path, or go online for hub ids"; push alone
    named the fix. Every command loading it names it now."""
    import re

    from raftlm import RaftlmError, RAFTRegressor

    (trained / "model.safetensors").unlink()
    said = "is a run without its model weights (model.safetensors): a sweep drops its runs' weights"
    rows = write_csv(tmp_path / "new.csv", [{"text": "review: fine. rating:", "target": 3}] * 3)
    for argv in (
        ["predict", "--model", str(trained), "--input", str(rows), "--output", str(tmp_path / "p.jsonl")],
        ["evaluate", "--model", str(trained)],
        ["calibrate", str(trained), "--input", str(rows)],
    ):
        assert main([*argv, "--quiet"]) == 2
        assert said in _said(capsys)
    with pytest.raises(RaftlmError, match=re.escape(said)):
        RAFTRegressor.load(str(trained))
