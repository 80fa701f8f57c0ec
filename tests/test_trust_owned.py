"""raftlm deletes, replaces or claims only what it can prove it wrote (a red-team's third catalogue): a user's
file in a run folder, beside an output or in the model cache is never taken for raftlm's by its name, its
emptiness or the moment it appeared. Each test compares the user's files byte for byte afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import train_args, write_csv

from raftlm import io, models
from raftlm.cli import main
from raftlm.core import RaftlmError

WORDS = ["awful", "bad", "fine", "good", "great"]


def _rows(n: int) -> list[dict]:
    return [{"text": f"review {i}: it was {WORDS[i % 5]}. rating:", "target": 1 + i % 5} for i in range(n)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raftlm")]
    return err[-1] if err else ""


def test_a_recipe_folder_naming_itself_as_output_dir_is_not_taken_for_an_old_run(tmp_path, capsys):
    """`train --config exp/config.yaml --resume` with the recipe's output_dir exp/ took exp/ for a run of a
    raftlm from before markers, marked it, trained into it and replaced the hand-written recipe."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(
        "# my recipe: keep these comments\n"
        f"model: {{name: tiny-random-llama}}\ndata: {{dataset: 'csv:{data}'}}\n"
        f"training: {{output_dir: {exp}, max_steps: 2, eval_steps: 2, batch_size: 4}}\n"
    )
    (exp / "notes.txt").write_text("notes")
    before = _snapshot(exp)
    for extra in ([], ["--resume"]):
        assert main(["train", "--config", str(exp / "config.yaml"), *extra]) == 2
        assert "is not a raftlm run (no .raftlm-run marker" in _one_line(capsys)
        assert _snapshot(exp) == before


def test_a_pre_marker_run_resumes_only_with_a_whole_checkpoint(tmp_path):
    """What still proves a run of a raftlm from before markers: its config.yaml names the folder as
    output_dir and Trainer saved a whole checkpoint there (the first alone is any recipe folder)."""
    old = tmp_path / "old"
    (old / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (old / "config.yaml").write_text(f"training: {{output_dir: {old}}}\n")
    with pytest.raises(RaftlmError, match="is not a raftlm run"):
        io.check_run_dir(old, overwrite=False, resume=True)
    (old / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    assert io.check_run_dir(old, overwrite=False, resume=True) == old.resolve()
    with pytest.raises(RaftlmError, match="is not a raftlm run"):  # only --resume takes it
        io.check_run_dir(old, overwrite=True, resume=False)


def test_a_failed_build_keeps_a_file_a_user_added_with_a_model_files_name(tmp_path):
    """A failed train emptied the run folder of files named like a model's (config.json, *.safetensors)
    that the user had put there while it trained ("emptied: it is your folder")."""
    from raftlm.run import discard_failed

    build = tmp_path / "run"
    build.mkdir()
    io.write_run_marker(build)
    (build / "config.yaml").write_text("model: {}\n")  # raftlm's
    (build / "config.json").write_text('{"mine": 1}')  # the user's
    (build / "embeddings.safetensors").write_bytes(b"precious")
    discard_failed(build, build, created=True)
    assert (build / "config.json").read_text() == '{"mine": 1}'
    assert (build / "embeddings.safetensors").read_bytes() == b"precious"
    (build / "config.json").unlink()
    (build / "embeddings.safetensors").unlink()
    discard_failed(build, build, created=True)  # only raftlm's files left: it goes
    assert not build.exists()


def _fit_while_a_user_writes(out: Path, name: str, text: str) -> None:
    """RAFTRegressor.fit into ``out`` on the tiny model, the user writing ``out/name`` as training ends."""
    from transformers import TrainerCallback

    from raftlm import RAFTRegressor

    class Write(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            (out / name).write_text(text)

    texts, y = [r["text"] for r in _rows(30)], np.array([r["target"] for r in _rows(30)], float)
    RAFTRegressor(
        model="tiny-random-llama", max_steps=2, batch_size=8, lr=1e-2, eval_steps=2, progress_bar=False,
        output_dir=str(out), callbacks=[Write()],
    ).fit(texts, y)  # fmt: skip


def test_the_saved_model_never_replaces_a_users_file_that_appeared_in_the_run(tmp_path):
    """The final model moved over a config.json the user dropped into the run during training; now the
    train stops in one line naming it, the user's file as it was, the checkpoints kept for --resume."""
    out = tmp_path / "run"
    with pytest.raises(RaftlmError, match=r"gained files raftlm did not write \(config.json\)"):
        _fit_while_a_user_writes(out, "config.json", '{"mine": 1}')
    assert (out / "config.json").read_text() == '{"mine": 1}' and (out / "checkpoints").is_dir()
    saved = tmp_path / "saved"  # RAFTRegressor.save lands its files the same way
    saved.mkdir()
    (saved / "tokenizer.json").write_text("mine")
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "tokenizer.json").write_text("raftlm's")
    io.write_run_marker(saved)
    with pytest.raises(RaftlmError, match=r"\(tokenizer.json\), of the names of the files it writes last"):
        io.move_into_run(saved, [staged / "tokenizer.json"], "save again")
    assert (saved / "tokenizer.json").read_text() == "mine"


@pytest.mark.parametrize(
    "name", [".notes.20240101.tmp", ".final-notes.txt", ".final-notes", ".todo.lock", ".pid.lock"]
)
def test_overwrite_stops_at_a_users_file_named_like_raftlms_leftovers(tmp_path, capsys, name):
    """Counted as raftlm's by their shape and deleted by --overwrite: any `.X.<8 chars>.tmp` (an older
    raftlm's temp name), anything starting `.final-`, an unheld lock file that was empty or held a pid."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "2", "--no-calibrate")) == 0
    target = run / name
    if name == ".final-notes":
        target.mkdir()
        (target / "a.txt").write_text("kept")
    else:
        target.write_text("4242" if name == ".pid.lock" else "" if name.endswith(".lock") else "kept")
    before = _snapshot(run)
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 2
    assert f"holds files raftlm did not write ({name})" in _one_line(capsys)
    assert _snapshot(run) == before and target.exists()
    # raftlm's own leftovers of those shapes still go: an older raftlm's temp file of a file it writes
    target.rename(tmp_path / "moved")
    (run / ".config.yaml.k3j5h2a9.tmp").write_text("half")
    (run / ".out.json.lock").write_text(f"raftlm {os.getpid() + 1}")
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 0


def test_an_empty_lock_file_beside_an_output_is_the_users(tmp_path, capsys):
    """`: > .out.json.lock` was taken over and deleted by the next evaluate --output out.json."""
    lock = tmp_path / ".out.json.lock"
    lock.touch()
    with pytest.raises(RaftlmError, match="exists and is not a raftlm lock file"):
        with io.output_lock(tmp_path / "out.json"):
            pass
    assert lock.exists()
    lock.write_text(f"raftlm {os.getpid() + 1}")  # a killed raftlm's: taken and removed
    with io.output_lock(tmp_path / "out.json"):
        pass
    assert not lock.exists()


def test_the_model_cache_lock_never_follows_a_link_nor_empties_a_file(tmp_path):
    """`open(lock, "w")` emptied whatever a `.gemma-3-270m.lock` link in $RAFTLM_CACHE pointed at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("important")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".gemma-3-270m.lock").symlink_to(victim)
    with pytest.raises(
        RaftlmError, match="cannot take the model cache's lock .* remove it if it is not raftlm's"
    ):
        with models._cache_lock(cache / "gemma-3-270m"):
            pass
    assert victim.read_text() == "important"
    (cache / ".smollm2-135m.lock").write_text("mine")
    with models._cache_lock(cache / "smollm2-135m"):
        pass
    assert (cache / ".smollm2-135m.lock").read_text() == "mine"


def test_an_interrupted_overwrite_of_a_users_file_in_a_run_does_not_make_it_raftlms(
    tmp_path, capsys, monkeypatch
):
    """`predict --output RUN/notes.jsonl --overwrite` listed the user's notes.jsonl in the run's marker before
    writing; killed midway, the notes stayed, now raftlm's, and the next `train --overwrite` deleted them."""
    import raftlm.streaming

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "2", "--no-calibrate")) == 0
    notes = run / "notes.jsonl"
    notes.write_text('{"my": "notes"}\n')
    real = raftlm.streaming.predict_file

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(raftlm.streaming, "predict_file", killed)
    argv = ["predict", "--model", str(run), "--input", str(data), "--output", str(notes), "--overwrite"]
    assert main(argv) == 130
    assert "notes.jsonl" not in json.loads((run / ".raftlm-run").read_text()).get("files", [])
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 2
    assert "holds files raftlm did not write (notes.jsonl)" in _one_line(capsys)
    monkeypatch.setattr(raftlm.streaming, "predict_file", real)  # once replaced, it is raftlm's
    assert main(argv) == 0
    assert "notes.jsonl" in json.loads((run / ".raftlm-run").read_text())["outputs"]
    capsys.readouterr()


def test_report_never_draws_its_figures_through_a_link(tmp_path, capsys):
    """A report folder's figures/ that is a link had the PNGs replaced into wherever it pointed."""
    folder = tmp_path / "rep"
    folder.mkdir()
    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    (folder / "results.json").write_text(json.dumps([{**row, "cell_id": "c", "seed": 0, "lr": 1e-4}]))
    assert main(["report", str(folder)]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.png").write_bytes(b"mine")
    import shutil

    shutil.rmtree(folder / "figures", ignore_errors=True)
    (folder / "figures").symlink_to(mine)
    before = _snapshot(mine)
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    assert "figures is a link, where the report's figures go" in _one_line(capsys)
    assert _snapshot(mine) == before


def test_a_sweep_run_from_its_saved_copy_keeps_the_users_edits_of_it(tmp_path):
    """`raftlm experiment OUT/sweep.yaml` rewrote that copy through yaml.safe_dump: the comments and layout
    the user gave it were lost (the settings survived)."""
    from raftlm.experiment import run_sweep

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 1, "eval_steps": 1, "batch_size": 4}, "method": {"grid": "1-5"}},
        "datasets": [f"csv:{data}"], "models": ["tiny-random-llama"], "methods": ["raft"], "lrs": [1e-3],
        "seeds": [0],
    }  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(json.dumps(sweep))  # (JSON is YAML)
    run_sweep(str(tmp_path / "sweep.yaml"), quiet=True)
    saved = tmp_path / "out" / "sweep.yaml"
    edited = "# the sweep of the paper's table 3, run again from here\n" + saved.read_text()
    saved.write_text(edited)
    run_sweep(str(saved), quiet=True)
    assert saved.read_text() == edited


def test_overwrite_looks_inside_the_runs_own_folders(tmp_path, capsys):
    """checkpoints/ and logs/ were raftlm's by name and deleted whole: a scheduler's job log sent to
    RUN/logs/ (`#SBATCH -o runs/a/logs/%j.out`) went with a `train --overwrite`, and a file a user left in
    checkpoints/ with the finished run's checkpoints."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "2", "--no-calibrate", "--keep-checkpoints")) == 0
    (run / "logs" / "tb").mkdir(parents=True)
    (run / "logs" / "tb" / "events.out.tfevents.1.host").write_bytes(b"raftlm's tracker")
    (run / "logs" / "4242.out").write_text("my job's log")
    (run / "checkpoints" / "notes.txt").write_text("mine")
    before = _snapshot(run)
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 2
    assert "holds files raftlm did not write (checkpoints/notes.txt, logs/4242.out)" in _one_line(capsys)
    assert _snapshot(run) == before
    (run / "logs" / "4242.out").unlink()
    (run / "checkpoints" / "notes.txt").unlink()
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 0  # events files are raftlm's
    mine = tmp_path / "mine"  # a finished run drops its checkpoints, not a file of yours among them
    (mine / "checkpoints").mkdir(parents=True)
    io.write_run_marker(mine)
    (mine / "checkpoints" / "checkpoint-2").mkdir()
    (mine / "checkpoints" / "notes.txt").write_text("mine")
    from raftlm.pipeline import _drop_checkpoints

    _drop_checkpoints(mine)
    assert sorted(p.name for p in (mine / "checkpoints").iterdir()) == ["notes.txt"]


def test_a_readme_of_yours_in_an_unfinished_run_is_not_replaced_by_the_model_card(tmp_path, capsys):
    """The run's last files (model card README.md, calibration.json, eval_results.json) were raftlm's by
    name: a README.md the user wrote into a run killed after its checkpoint was replaced by the card at the
    end of `train --resume`. Now they are claimed before the first is written, and one of yours is refused."""
    out = tmp_path / "run"
    with pytest.raises(RaftlmError, match=r"gained files raftlm did not write \(README.md\)"):
        _fit_while_a_user_writes(out, "README.md", "my notes on this run")
    assert (out / "README.md").read_text() == "my notes on this run" and not (
        out / "eval_results.json"
    ).exists()


def test_an_unmarked_run_folders_files_are_inputs_an_output_may_not_replace(tmp_path, capsys, monkeypatch):
    """A run folder without the marker (a Hub copy) had only raftlm's own names guarded: `evaluate --output
    COPY/vocab.txt --overwrite` replaced a tokenizer file of another name."""
    import shutil

    import raftlm.pipeline

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "1", "--no-calibrate", "--quiet")) == 0
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / ".raftlm-run").unlink()
    (copy / "vocab.txt").write_text("a tokenizer's vocabulary")

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(raftlm.pipeline, "_load_for_eval", never)
    capsys.readouterr()
    argv = ["evaluate", "--model", str(copy), "--input", str(data), "--output", str(copy / "vocab.txt")]
    assert main([*argv, "--overwrite"]) == 2
    assert "is the same file as the input" in _one_line(capsys)
    assert (copy / "vocab.txt").read_text() == "a tokenizer's vocabulary"


def test_an_interrupted_new_output_in_a_run_is_unlisted_again(tmp_path, capsys, monkeypatch):
    """`predict --output RUN/preds.jsonl` listed preds.jsonl in the run's marker before writing; stopped
    before its output existed, the name stayed listed, and a file of yours saved there later was raftlm's
    to delete with the run."""
    import raftlm.streaming

    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "2", "--no-calibrate")) == 0

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(raftlm.streaming, "predict_file", stopped)
    argv = ["predict", "--model", str(run), "--input", str(data), "--output", str(run / "preds.jsonl")]
    assert main(argv) == 130
    assert "preds.jsonl" not in json.loads((run / ".raftlm-run").read_text()).get("files", [])
    (run / "preds.jsonl").write_text("my own predictions\n")
    capsys.readouterr()
    assert main(train_args(data, run, "--max-steps", "2", "--overwrite")) == 2
    assert "holds files raftlm did not write (preds.jsonl)" in _one_line(capsys)


def test_a_shards_output_in_a_run_is_looked_inside_before_the_run_is_replaced(tmp_path):
    """`predict --engine ray --shards N --output RUN/preds` lists preds/ in the run: a notebook the user then
    saved in it went with the run's --overwrite, where replacing the shards folder itself refuses it."""
    run = tmp_path / "run"
    run.mkdir()
    io.write_run_marker(run, ["preds"], ["preds"])
    (run / "preds").mkdir()
    for name in (io.SHARDS_MARKER, "part-00000.parquet"):
        (run / "preds" / name).write_bytes(b"raftlm's")
    assert io.foreign_files(run) == []
    (run / "preds" / "analysis.ipynb").write_text("mine")
    assert io.foreign_files(run) == ["preds/analysis.ipynb"]
    with pytest.raises(RaftlmError, match=r"holds files raftlm did not write \(preds/analysis.ipynb\)"):
        io.check_run_dir(run, overwrite=True, resume=False)


def test_a_refused_report_cleans_nothing(tmp_path, capsys):
    """report cleaned a killed report's leftovers (`.report-XXXXXXXX` folders of PNGs) before it checked the
    folder was a sweep's or its own: a user's `.report-march_01` of figures went, then the report refused."""
    folder = tmp_path / "rep"
    folder.mkdir()
    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    (folder / "results.json").write_text(json.dumps([{**row, "cell_id": "c", "seed": 0, "lr": 1e-4}]))
    (folder / "report.md").write_text("# my own report")
    (folder / ".report-march_01").mkdir()
    (folder / ".report-march_01" / "fig.png").write_bytes(b"my figure")
    before = _snapshot(folder)
    assert main(["report", str(folder)]) == 2
    assert "already holds report.md" in _one_line(capsys) and _snapshot(folder) == before


def test_evaluate_entropy_locks_its_two_files(tmp_path, capsys):
    """evaluate --entropy's two files had no lock of their own: a second evaluate writing them at once
    (or cleaning their temp files) went ahead."""
    data = write_csv(tmp_path / "toy.csv", _rows(40))
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "1", "--no-calibrate", "--quiet")) == 0
    capsys.readouterr()
    with io.output_lock(run / "entropy_test.entropy.png"):  # another evaluate --entropy writes it now
        assert main(["evaluate", "--model", str(run), "--entropy", "--quiet"]) == 2
    line = _one_line(capsys)
    assert "another raftlm process" in line and "entropy_test.entropy.png" in line
