"""The edges where raftlm deletes or replaces files (issue: a user's files are sacred; nothing half-written):
RAFTRegressor.save's failures, an interrupted deletion of a replaced run, the frozen-block cache's disk file,
the weight average's checkpoint file, leftovers cleaned only under the output's lock, --shards folders,
a sweep's dropped weights and the demo's output path."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from raftlm import RaftlmError, RAFTRegressor
from raftlm.io import (
    RUN_MARKER,
    foreign_files,
    is_marked_run,
    journal_path,
    latest_complete_checkpoint,
    old_dir,
    output_lock,
    recover_swap,
    remove_run,
    staging_dir,
    swap_in,
    write_run_marker,
)

TEXTS = [
    f"review {i}: it was {w}. rating:" for i, w in enumerate(["awful", "bad", "fine", "good", "great"] * 4)
]
Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 4)


@pytest.fixture(scope="module")
def zero_shot():
    """A fitted estimator that trained nothing (the tiny model, method none): save() without a fit's minutes."""
    return RAFTRegressor(model="tiny-random-llama", method="none", grid="1-5", batch_size=8).fit(TEXTS, Y)


def test_a_save_that_fails_midway_leaves_nothing_and_says_one_line(zero_shot, tmp_path, monkeypatch):
    """A disk filling up while the weights are written: one line, and the new directory is gone; a folder
    the user made empty stays, empty; a finished save is a finished run (its metrics file written last),
    which a second save refuses with the API's own fix."""
    import raftlm.api as api

    def disk_full(predictor, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(api, "save_run", disk_full)
    with pytest.raises(RaftlmError, match=r"^disk full while writing .*new-run \(No space left on device\)"):
        zero_shot.save(str(tmp_path / "new-run"))
    assert not (tmp_path / "new-run").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RaftlmError, match="disk full"):
        zero_shot.save(str(tmp_path / "mine"))
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())
    monkeypatch.undo()

    out = zero_shot.save(str(tmp_path / "mine"))
    assert json.loads((out / "eval_results.json").read_text()) == {} and not foreign_files(out)
    with pytest.raises(RaftlmError, match=r"already holds a finished run: .*overwrite=True in RAFTRegressor"):
        zero_shot.save(str(tmp_path / "mine"))
    assert RAFTRegressor.load(out).results_ is None  # no metrics: a zero-shot fit measured none
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        if not os.access(tmp_path / "ro", os.W_OK):  # (root writes anywhere)
            with pytest.raises(RaftlmError, match=r"^cannot create run directory .*: choose a writable"):
                zero_shot.save(str(tmp_path / "ro" / "run"))
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def a_run(path, files=("model.safetensors", "config.json")):
    path.mkdir(parents=True)
    write_run_marker(path)
    for name in files:
        (path / name).write_text(name)
    (path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    write_run_marker(path, [*files, "checkpoints"])
    return path


def test_a_replaced_run_is_deleted_marker_last_so_a_kill_midway_is_finished_later(tmp_path, monkeypatch):
    """The old run of an --overwrite is deleted with its marker last: killed after some files went, it is
    still a marked run, and the next command deletes the rest; killed between the marker and the folder,
    the empty folder is taken away too (both used to leave a folder raftlm refused as a user's)."""
    out = a_run(tmp_path / "run")
    a_run(staging_dir(out), ("model.safetensors", "tokenizer.json"))
    import raftlm.io as io

    real_unlink, calls = os.unlink, []

    def killed_after_first_file(path, *a, **k):  # Path.unlink -> os.unlink
        calls.append(str(path))
        if len(calls) == 2:
            raise KeyboardInterrupt  # (a SIGKILL, as far as the files on disk are concerned)
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(io.os, "unlink", killed_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        swap_in(staging_dir(out), out)
    monkeypatch.undo()
    assert is_marked_run(old_dir(out)) and journal_path(out).exists()  # half deleted, still raftlm's
    assert "finished an interrupted --overwrite" in recover_swap(out)
    assert not old_dir(out).exists() and sorted(p.name for p in out.iterdir()) == [
        RUN_MARKER,
        "checkpoints",
        "model.safetensors",
        "tokenizer.json",
    ]

    a_run(staging_dir(out), ("model.safetensors",))
    remove_run(a_run(old_dir(out)), keep_folder=True)  # the kill between the marker and the folder
    journal_path(out).write_text(
        json.dumps(
            {"format": "raftlm-swap", "out": "run", "old": old_dir(out).name, "new": staging_dir(out).name}
        )
    )
    assert "the new run is in place" in recover_swap(out)
    assert not old_dir(out).exists() and (out / "model.safetensors").exists()


def test_an_interrupted_swap_never_deletes_a_users_new_file_and_a_failed_rename_names_the_new_run(
    tmp_path, monkeypatch
):
    """A kill after the journal, then a user's file in the run: the next command moved the run aside and
    deleted it whole with the file. A rename that fails (EBUSY, EACCES) was an OSError naming neither run."""
    import raftlm.io as io

    out = a_run(tmp_path / "run")
    a_run(staging_dir(out), ("model.safetensors",))
    journal_path(out).write_text(json.dumps(io._journal(out)))
    (out / "notes.md").write_text("mine")  # after the kill
    with pytest.raises(RaftlmError, match=r"holds files raftlm did not write \(notes.md\).*move those files"):
        recover_swap(out)
    assert (out / "notes.md").read_text() == "mine" and staging_dir(out).is_dir()
    (out / "notes.md").unlink()
    real = os.replace

    def busy(src, dst):
        if str(src) == str(staging_dir(out)):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", busy)
    with pytest.raises(RaftlmError, match=r"could not put the new run in place \(Device or resource busy\)"):
        recover_swap(out)
    assert journal_path(out).exists() and staging_dir(out).is_dir() and old_dir(out).is_dir()
    monkeypatch.undo()
    assert "the new run is in place" in recover_swap(out)
    assert not old_dir(out).exists() and not staging_dir(out).exists()


def test_the_frozen_block_caches_disk_file_is_raftlms_and_a_kills_leftover_goes(tmp_path):
    """A cache that outgrew RAM lives in the run as .hidden-cache-XXXXXXXX.f32: not a user's file (an
    --overwrite used to refuse the run over it), and a kill's leftover is deleted at the next start (each
    resume used to add another copy, GiBs each); a user's file of a like name stays."""
    from raftlm.cache import HiddenStore
    from raftlm.pipeline import _clean_leftovers

    run = a_run(tmp_path / "run")
    store = HiddenStore([3, 2], 4, run, ram_bytes=0)  # no RAM budget: on disk
    assert store.path.parent == run and foreign_files(run) == []
    (run / ".hidden-cache-notes.txt").write_text("mine")
    assert foreign_files(run) == [".hidden-cache-notes.txt"]
    _clean_leftovers(run)  # the process died without close()
    assert not store.path.exists() and (run / ".hidden-cache-notes.txt").exists()


def test_a_checkpoint_without_its_weight_average_is_not_resumed_from(tmp_path):
    """--ema writes ema.safetensors after Trainer finished the checkpoint: a kill in between leaves a
    checkpoint a resume of an --ema run must skip (it restarted the average from the raw weights)."""
    for step, files in ((2, ("trainer_state.json", "ema.safetensors")), (4, ("trainer_state.json",))):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in files:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path, ("ema.safetensors",)).name == "checkpoint-2"


def test_leftover_temp_files_are_cleaned_only_under_the_outputs_lock(tmp_path, capsys):
    """Another process's write in progress (its temp file) is not a kill's leftover: `raftlm evaluate` and
    `raftlm report` used to delete it before taking the lock, and that process lost its result."""
    from raftlm.cli import main
    from raftlm.report import write_report

    out = tmp_path / "metrics.json"
    tmp = tmp_path / ".metrics.json.raftlm-abcd1234.tmp"
    tmp.write_text("{")
    data = tmp_path / "rows.csv"
    data.write_text("text,target\ngood,4\nbad,2\n")
    evaluate = ["evaluate", "--model", "tiny-random-llama", "--input", str(data), "--output", str(out)]
    with output_lock(out):  # a second raftlm process writes metrics.json now
        assert main(evaluate) == 2
    assert "another raftlm process" in capsys.readouterr().err and tmp.exists()

    sweep = tmp_path / "sweep"
    (sweep / "cells").mkdir(parents=True)
    (sweep / ".raftlm-sweep").write_text("{}")
    (sweep / "results.json").write_text("[]")
    left = sweep / ".results.json.raftlm-abcd1234.tmp"
    left.write_text("[")
    with output_lock(sweep, "the sweep's results"), pytest.raises(RaftlmError, match="no finished cells yet"):
        write_report(str(sweep))
    assert left.exists()  # the sweep holds its lock: not a leftover
    with pytest.raises(RaftlmError, match="no finished cells yet"):
        write_report(str(sweep))
    assert not left.exists()  # no sweep running: a kill's leftover, cleaned


def test_shards_overwrite_never_deletes_a_file_shards_did_not_write(tmp_path):
    from raftlm.integrations.ray import SHARDS_MARKER, check_destination

    data = tmp_path / "in.csv"
    data.write_text("text,target\na,1\n")
    out = tmp_path / "shards"
    out.mkdir()
    for name in (SHARDS_MARKER, "part-00000.parquet", "part-00001.parquet"):
        (out / name).write_text("")
    assert check_destination(out, True, 10, str(data)) == out  # only what --shards wrote: replaced
    (out / "notes.md").write_text("mine")
    with pytest.raises(RaftlmError, match=r"holds files --shards did not write \(notes.md\).*move them out"):
        check_destination(out, True, 10, str(data))


def test_shards_cleans_only_its_own_outputs_leftovers_and_a_swap_never_deletes_new_files(tmp_path):
    """The cleanup of a killed swap's folder (.OUT.XXXXXXXX.shards) also matched another output's in use
    (.preds.v2.k2j3h4g5.shards for --output preds), and the swap deleted the old folder whatever it had
    gained while the job ran."""
    from raftlm.integrations.ray import SHARDS_MARKER, _swap_in, check_destination

    data = tmp_path / "in.csv"
    data.write_text("text,target\na,1\n")
    others = [tmp_path / ".preds.v2.k2j3h4g5.shards", tmp_path / ".p[1].abcd1234.shards"]
    own = tmp_path / ".preds.abcd1234.shards"
    for folder in (*others, own):
        folder.mkdir()
        (folder / "part-00000.parquet").write_text("rows")
    check_destination(tmp_path / "preds", True, 10, str(data))
    assert all(f.is_dir() for f in others) and not own.exists()
    out, staging = tmp_path / "out", tmp_path / "staging"
    for folder in (out, staging):
        folder.mkdir()
        (folder / SHARDS_MARKER).write_text("{}")
    (out / "_SUCCESS").write_text("")  # written there while the job ran
    with pytest.raises(RaftlmError, match=r"gained files --shards did not write .*\(_SUCCESS\).*--resume"):
        _swap_in(staging, out)
    assert (out / "_SUCCESS").exists() and (staging / SHARDS_MARKER).exists()
    (out / "_SUCCESS").unlink()
    _swap_in(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.csv", "out", *(f.name for f in others)])


def test_a_sweep_drops_only_raftlms_weights(tmp_path):
    from raftlm.experiment import drop_weights

    run = a_run(tmp_path / "run")
    (run / "mine.bin").write_text("a user's")
    (run / "mine.safetensors").write_text("a user's")  # not listed in the run's marker: not raftlm's
    assert drop_weights(run) == len("model.safetensors") and (run / "mine.bin").exists()
    assert (run / "mine.safetensors").read_text() == "a user's"
    from raftlm.experiment import _weights

    old = tmp_path / "old"  # a run from before the marker listed its files: its weights are its own
    old.mkdir()
    (old / "model.safetensors").write_text("x")
    assert [p.name for p in _weights(old)] == ["model.safetensors"]
    assert not (run / "model.safetensors").exists() and not (run / "checkpoints").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_text("x")
    assert drop_weights(plain) == 0 and (plain / "model.safetensors").exists()  # no marker: not raftlm's


def test_the_demo_says_its_output_dir_is_a_file(tmp_path):
    from raftlm.config import Config
    from raftlm.demo import run_demo

    (tmp_path / "out").write_text("mine")
    cfg = Config()
    cfg.training.output_dir = str(tmp_path / "out")
    with pytest.raises(
        RaftlmError, match=r"^demo output .*out is not a folder: choose a folder for --output-dir"
    ):
        run_demo(cfg)
    assert (tmp_path / "out").read_text() == "mine"


def test_an_interrupted_swap_is_finished_by_one_process_while_the_others_wait(tmp_path):
    """Two commands that find the same journal (two `raftlm predict` of a run whose --overwrite a kill cut
    short) used to finish the swap both at once, and one order of their renames deleted the new run. The
    swap is finished under the run's lock: a command waits while another holds it, then finds it done."""
    import subprocess
    import sys
    import time

    out = a_run(tmp_path / "run")
    a_run(staging_dir(out), ("model.safetensors", "new.json"))
    journal_path(out).write_text(
        json.dumps(
            {"format": "raftlm-swap", "out": "run", "old": old_dir(out).name, "new": staging_dir(out).name}
        )
    )
    holder = subprocess.Popen(  # another command, in the middle of its recovery of the same run
        [
            sys.executable,
            "-c",
            "import sys, time; from raftlm.io import output_lock\n"
            f"with output_lock({str(out)!r}, 'the run directory'):\n"
            "    print('held', flush=True); time.sleep(1.5)\n"
            "    print(time.monotonic(), flush=True)",  # (just before it lets go; one clock for both processes)
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    assert "the new run is in place" in recover_swap(out)  # the holder did nothing: this one finishes it
    finished = time.monotonic()
    assert holder.wait(10) == 0 and finished > float(holder.stdout.readline())  # ...after the holder let go
    assert (out / "new.json").exists() and not staging_dir(out).exists() and not old_dir(out).exists()
    with output_lock(out, "the run directory"):  # as `train` holds it when it finds a journal
        a_run(staging_dir(out), ("model.safetensors", "newer.json"))
        journal_path(out).write_text(
            json.dumps(
                {
                    "format": "raftlm-swap",
                    "out": "run",
                    "old": old_dir(out).name,
                    "new": staging_dir(out).name,
                }
            )
        )
        assert "the new run is in place" in recover_swap(out)
    assert (out / "newer.json").exists()


# --- one behaviour: the Python API reads a run as `raftlm predict` and the server do ----------------------


def test_the_api_reads_a_templates_escapes_once_as_files_and_the_server_do(tmp_path):
    r"""`C:\\temp` in a template is a literal backslash and t. The API resolved the run's (already
    resolved) template again on every predict, so its prompts had a tab there: other prompts than it
    trained on, and than `raftlm predict` and the server read."""
    from raftlm.files import to_examples

    reg = RAFTRegressor(
        model="tiny-random-llama", method="none", grid="1-5", prompt_template=r"Path: C:\\temp {text}"
    )
    reg.fit(TEXTS[:6], Y[:6])
    want = "Path: C:\\temp good"  # one backslash, then "temp"
    assert reg.predictor_.template == "Path: C:\\temp {text}"
    assert reg.prompts(["good"]) == [want] == [e.text for e in reg._examples(["good"])]
    assert [e.text for e in to_examples([{"text": "good"}], reg.predictor_.template, None, "f")] == [want]
    loaded = RAFTRegressor.load(reg.save(str(tmp_path / "run")))
    assert loaded.prompts(["good"]) == [want]
    assert loaded.predict(["good"]) == pytest.approx(reg.predict(["good"]))


def test_a_loaded_run_predicts_with_its_eval_settings_as_the_cli_does(tmp_path):
    """The API took bf16 from training.bf16 (a recipe may train in bf16 and predict in float32, as
    `raftlm predict` and the server then do), its intervals' auto kind as cqr (not the run's
    eval.interval_kind) and loaded in float32 whatever the run's eval.dtype."""
    import yaml

    reg = RAFTRegressor(model="tiny-random-llama", method="none", grid="1-5", batch_size=8)
    reg.fit(TEXTS, Y, eval_set=(TEXTS, Y))  # calibrated on 20 rows
    out = reg.save(str(tmp_path / "run"))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["training"]["bf16"], cfg["eval"]["bf16"] = True, False
    cfg["eval"]["interval_kind"], cfg["eval"]["dtype"] = "std", "bfloat16"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    loaded = RAFTRegressor.load(out)
    # bf16 is what it trains in (clone(loaded).fit trains as the run did), eval.bf16 what it predicts in
    assert loaded.bf16 is True and loaded.settings["eval"]["bf16"] is False and loaded._bf16() is False
    assert str(next(loaded.predictor_.model.parameters()).dtype) == "torch.bfloat16"
    assert (
        str(next(RAFTRegressor.load(out, dtype="float32").predictor_.model.parameters()).dtype)
        == "torch.float32"
    )
    _, auto = loaded.predict_interval(TEXTS[:4], 0.8)
    _, std = loaded.predict_interval(TEXTS[:4], 0.8, kind="std")
    _, cqr = loaded.predict_interval(TEXTS[:4], 0.8, kind="cqr")
    np.testing.assert_array_equal(auto, std)
    assert not np.allclose(auto, cqr)


def test_a_non_finite_prediction_is_null_in_every_jsonl_raftlm_writes(tmp_path, monkeypatch):
    """`raftlm predict` wrote a NaN prediction as a bare NaN (not JSON: most readers refuse the line) while
    the server wrote null."""
    import dataclasses

    import raftlm.streaming as streaming
    from raftlm.cli import main

    data = tmp_path / "rows.csv"
    data.write_text("text\ngood\nbad\n")
    run = RAFTRegressor(model="tiny-random-llama", method="none", grid="1-5").fit(TEXTS[:6], Y[:6])
    saved = run.save(str(tmp_path / "run"))
    real = streaming.predict_examples

    def nan_first(p, examples, *a, **k):
        preds = real(p, examples, *a, **k)
        values = preds.values.copy()
        values[0] = float("nan")
        return dataclasses.replace(preds, values=values)

    monkeypatch.setattr(streaming, "predict_examples", nan_first)
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(saved), "--input", str(data), "--output", str(out)]) == 0
    rows = [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in {out}")) for line in out.open()
    ]
    assert rows[0]["prediction"] is None and isinstance(rows[1]["prediction"], float)


def test_an_atomic_write_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    """Without an fsync, a power cut after the rename can leave an empty file under the name (the rename
    reached the disk, the bytes did not)."""
    import raftlm.io as io

    done, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(
        io.os,
        "fsync",
        lambda fd: done.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd),
    )
    monkeypatch.setattr(io.os, "replace", lambda a, b: done.append(("replace", str(a))) or real_replace(a, b))
    io.write_json(tmp_path / "m.json", {"rmse": 0.5})
    assert [what for what, _ in done] == ["fsync", "replace"] and done[0][1] == done[1][1]
    assert json.loads((tmp_path / "m.json").read_text()) == {"rmse": 0.5}


def test_an_interrupted_swap_is_found_through_a_symlinked_path(tmp_path):
    """`train` resolves its run directory, so a swap's journal lies beside the real folder; `predict` of a
    symlinked run looked for it beside the link and loaded a half-swapped run."""
    real = tmp_path / "real"
    out = a_run(real / "run")
    a_run(staging_dir(out), ("model.safetensors", "new.json"))
    journal_path(out).write_text(
        json.dumps(
            {"format": "raftlm-swap", "out": "run", "old": old_dir(out).name, "new": staging_dir(out).name}
        )
    )
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    assert "the new run is in place" in recover_swap(tmp_path / "link")
    assert (out / "new.json").exists() and not journal_path(out).exists()


@pytest.mark.parametrize(
    ("env", "main"),
    [({}, True), ({"RANK": "1"}, False), ({"OMPI_COMM_WORLD_RANK": "1"}, False), ({"PMI_RANK": "0"}, True)],
)
def test_only_rank_zero_locks_an_output_under_torchrun_or_mpi(tmp_path, monkeypatch, env, main):
    """An MPI launch (``accelerate launch`` on several CPUs) names its ranks PMI_RANK / OMPI_COMM_WORLD_RANK:
    every rank read RANK (unset) as 0, took the run's lock, and the second failed as 'another raftlm process'."""
    from raftlm.io import RANK_VARIABLES, lock_path, main_rank, output_lock

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main_rank() is main
    out = tmp_path / "run"
    with output_lock(out, "the run directory"):
        assert lock_path(out).exists() is main


@pytest.fixture
def rank_one_of_two(monkeypatch):
    """This process as rank 1 of a 2-process torchrun launch (its environment; no process group)."""
    from raftlm.io import RANK_VARIABLES, SIZE_VARIABLES

    for name in (*RANK_VARIABLES, *SIZE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")


@pytest.mark.parametrize("command", [["evaluate", "--model", "x"], ["experiment", "x.yaml"], ["report", "x"]])
def test_commands_that_run_in_one_process_are_refused_under_a_launcher(rank_one_of_two, command, capsys):
    """Under torchrun every rank ran `evaluate` / `experiment` / `report` whole: each wrote the same files (a
    sweep's ranks deleted the weights another was loading). Refused before any work, in one line."""
    from raftlm.cli import main

    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"raftlm {command[0]}: error: raftlm {command[0]} runs in one process, not under torchrun / accelerate "
        "launch (WORLD_SIZE=2): run it plainly, without WORLD_SIZE in its environment (train and predict run "
        "under a launcher)"
    )


def test_fit_without_output_dir_is_refused_under_a_launcher(rank_one_of_two):
    """Each process's temporary run folder was its own: rank 1 never found the best checkpoint rank 0 saved
    and kept other weights than rank 0."""
    with pytest.raises(RaftlmError, match=r"needs output_dir: every process trains into the same run"):
        RAFTRegressor(model="tiny-random-llama", max_steps=1).fit(["a. rating:"] * 2, [1.0, 2.0])


def test_only_rank_zero_cleans_temp_files_and_swap_leftovers(rank_one_of_two, tmp_path):
    """Rank 1 holds no lock (rank 0 holds it for the launch): it deleted a writer's temp file, and removed an
    emptied swap folder rank 0 was looking at."""
    from raftlm.io import check_swap_names, prepare_output

    tmp = tmp_path / ".out.jsonl.raftlm-abcd1234.tmp"
    tmp.write_text("{}")
    prepare_output(tmp_path / "out.jsonl", overwrite=True)
    assert tmp.exists()
    out = a_run(tmp_path / "run")
    staging_dir(out).mkdir()  # what a kill between remove_run's last two steps leaves
    check_swap_names(out)  # (rank 0 removes it)
    assert staging_dir(out).is_dir()


def test_fsdp_across_processes_is_refused_before_any_work(rank_one_of_two, monkeypatch, toy_csv, capsys):
    """Rank 0 alone calibrates, evaluates and saves after training; a sharded model's forward pass gathers
    from every rank, so an FSDP run across GPUs hung at its end, after all its training."""
    from helpers import train_args

    from raftlm.cli import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(train_args(toy_csv, toy_csv.parent / "run")) == 2
    assert capsys.readouterr().err.strip() == (
        "raftlm train: error: FSDP across 2 processes is not supported yet: rank 0 alone evaluates and saves the "
        "trained model, which a sharded model cannot do (the run would hang at its end): train with DDP "
        "(recipes/accelerate/ddp.yaml), or LoRA (trainable: lora) on one GPU"
    )
    assert sorted(p.name for p in toy_csv.parent.iterdir()) == ["toy.csv"]


def test_a_failure_after_the_model_is_saved_keeps_the_run_for_resume(tmp_path, toy_csv, monkeypatch, capsys):
    """_finalize deleted checkpoints/ before it wrote the model card and eval_results.json: a full disk (or
    Ctrl+C) at that moment left a new run with nothing to resume, so the whole run was deleted."""
    from helpers import train_args

    import raftlm.pipeline
    from raftlm.cli import main

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "README.md")

    run = tmp_path / "run"
    monkeypatch.setattr(raftlm.pipeline, "write_model_card", disk_full)
    assert main(train_args(toy_csv, run)) != 0
    assert "No space left on device" in capsys.readouterr().err
    assert (run / "checkpoints").is_dir() and not (run / "eval_results.json").exists()
    monkeypatch.undo()
    assert main(train_args(toy_csv, run, "--resume")) == 0
    assert (run / "eval_results.json").is_file() and not (run / "checkpoints").exists()


def test_overwrite_of_a_mount_point_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """A container's volume at --output-dir: --overwrite built the new run on the other filesystem, and
    renaming the mount point failed (EBUSY) after all the training, leaving a journal every later command
    of the run failed on."""
    from helpers import train_args

    from raftlm.cli import main
    from raftlm.integrations.ray import SHARDS_MARKER, check_destination

    data = tmp_path / "toy.csv"
    data.write_text("text,target\n" + "".join(f"r{i},{1 + i % 5}\n" for i in range(40)))
    run = tmp_path / "output"
    assert main(train_args(data, run, "--max-steps", "1")) == 0
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / SHARDS_MARKER).write_text("{}")
    mounts = {str(run), str(shards)}
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) in mounts)
    capsys.readouterr()
    assert main([*train_args(data, run, "--max-steps", "1"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {run} is a mount point" in err and f"e.g. {run / 'run'}" in err
    assert not (tmp_path / ".output.raftlm-new").exists() and (run / "eval_results.json").is_file()
    with pytest.raises(RaftlmError, match=f"--output {shards} is a mount point"):
        check_destination(shards, True, 10, str(data))


def test_docs_write_leaves_a_page_with_a_mistyped_closing_marker_untouched(tmp_path, monkeypatch, capsys):
    """benchmarks/docs.py --write filled an opening marker up to the NEXT marker's close when its own was
    mistyped (<!-- /doc -->): the heading and prose between them were replaced by one number."""
    from helpers import benchmark_module

    docs = benchmark_module("docs")
    page = tmp_path / "page.md"
    text = (
        "Cells: <!-- docs:table3.cells -->0<!-- /doc -->\n\n## A heading\n\nHand-written prose.\n\n"
        "Again: <!-- docs:table3.cells -->0<!-- /docs -->\n"
    )
    page.write_text(text)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(docs, "PAGES", [page])
    assert docs.main(["--write"]) == 1
    assert page.read_text() == text and not list(tmp_path.glob(".*"))
    assert "page.md: marker table3.cells has no <!-- /docs --> before the next one" in capsys.readouterr().err
    page.write_text(text.replace("<!-- /doc -->", "<!-- /docs -->"))
    assert docs.main(["--write"]) == 0
    assert "## A heading\n\nHand-written prose." in page.read_text() and "-->0<" not in page.read_text()


def _register_many(run: str, prefix: str, n: int, barrier) -> None:
    from raftlm.io import register_output

    barrier.wait(60)  # (both at once: the race is in every step)
    for i in range(n):
        register_output(os.path.join(run, f"{prefix}{i}.json"))


def test_outputs_two_processes_register_in_one_run_at_once_are_all_listed(tmp_path):
    """The marker's read-modify-write is one process's at a time: two commands writing outputs into one run
    at once lost listings (then 'a user's file' to --overwrite for ever)."""
    import multiprocessing

    from raftlm.io import read_run_marker, write_run_marker

    run = tmp_path / "run"
    run.mkdir()
    write_run_marker(run, ["raftlm.json"])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_register_many, args=(str(run), p, 150, barrier)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    listed = read_run_marker(run)["outputs"]
    assert len(listed) == 300
    assert sorted(os.listdir(run)) == [".raftlm-run"]  # (the lock leaves no file)


def _modes(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in sorted(folder.iterdir())}


def test_a_saved_run_and_a_converted_model_are_readable_as_every_file_raftlm_writes(
    zero_shot, tmp_path, monkeypatch
):
    """safetensors writes model.safetensors 0600: a run saved by the API (train's was made 0644) and the
    GGUF model converted into a shared $RAFTLM_CACHE could not be read by a colleague (PermissionError
    loading the run, or every other user's conversion failed for ever). Every file gets the umask's
    permissions, as any file raftlm writes."""
    from test_interrupts_models_ray import fake_conversion

    from raftlm import models

    old = os.umask(0o022)
    try:
        zero_shot.save(str(tmp_path / "run"))
        monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path / "cache"))
        fake_conversion(monkeypatch)
        converted = models._convert_gguf("smollm2-135m")
    finally:
        os.umask(old)
    saved = _modes(tmp_path / "run")
    assert saved["model.safetensors"] == 0o644 and set(saved.values()) == {0o644}, saved
    assert set(_modes(converted).values()) == {0o644} and (converted.stat().st_mode & 0o777) == 0o755
