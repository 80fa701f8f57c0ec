import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_args, write_csv
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from raftlm.cli import USES, build_parser, config_fields, flag_of, main
from raftlm.config import Config
from raftlm.core import RaftlmError
from raftlm.decoders import DECODERS
from raftlm.methods import METHODS
from raftlm.testing import tiny_random_llama

ARTIFACTS = [
    "config.yaml",
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "raftlm.json",
    "metrics.jsonl",
    "eval_results.json",
]


def test_cli_choices_match_the_registries():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: a.choices for a in train._actions}
    assert set(choices["method__method"]) == {*METHODS, "none"}
    assert list(choices["eval__decoder"]) == list(DECODERS)
    for command in USES:  # every config field a command reads is a flag of it (but progress_bar: --quiet)
        sub = parser._subparsers._group_actions[0].choices[command]
        dests = {a.dest for a in sub._actions}
        for key, f in config_fields(command):
            section, name = key.split(".")
            assert hasattr(getattr(Config(), section), name)
            assert (key.replace(".", "__") in dests) == (flag_of(key, f) is not None), (command, key)


def test_train_predict_evaluate_end_to_end(tmp_path, toy_csv):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0
    for name in ARTIFACTS:
        assert (run / name).exists(), name
    assert not (run / "checkpoints").exists()
    results = json.loads((run / "eval_results.json").read_text())
    assert results["train"]["global_step"] == 4 and results["train"]["best_step"] in (2, 4)
    assert results["test"]["n"] == 4 and {"rmse", "pearson", "spearman"} <= set(results["test"])
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "eval_rmse" in s] == [2, 4]

    # weights changed, and the run directory is an ordinary causal LM
    initial, _ = tiny_random_llama(seed=0)
    trained = load_file(run / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.allclose(trained[name], initial.state_dict()[name])
    plain = AutoModelForCausalLM.from_pretrained(run)
    torch.testing.assert_close(plain.state_dict()[name], trained[name])

    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out), "--with-probs"])
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and set(rows[0]) == {"index", "prediction", "target", "probs", "entropy"}
    assert list(rows[0]["probs"]) == ["1", "2", "3", "4", "5"]

    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run), "--split", "test", "--output", str(ev)]) == 0
    metrics = json.loads(ev.read_text())
    assert {"rmse", "mae", "pearson", "spearman", "r2", "n"} <= set(metrics) and metrics["n"] == 4
    assert metrics["rmse"] == pytest.approx(results["test"]["rmse"], abs=1e-6)


def test_resume_continues_from_the_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path, toy_csv):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert main(train_args(toy_csv, full)) == 0
    assert main(train_args(toy_csv, broken, "--set", "training.keep_checkpoints=true")) == 0
    # mimic a crash right after checkpoint-2: drop the final model, results and later checkpoints
    for name in ["eval_results.json", "model.safetensors", "raftlm.json", "config.json"]:
        (broken / name).unlink()
    for ckpt in (broken / "checkpoints").glob("checkpoint-4"):
        import shutil

        shutil.rmtree(ckpt)
    assert main(train_args(toy_csv, broken)) == 2  # unfinished run: refuses without --resume
    stale = broken / ".eval_results.json.raftlm-k1ll3d00.tmp"
    stale.write_text("")  # a SIGKILL during an atomic write leaves this; the next start cleans it
    assert main([*train_args(toy_csv, broken), "--resume"]) == 0
    assert not stale.exists()
    a, b = load_file(full / "model.safetensors"), load_file(broken / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)

    # the log after a resume holds each step once, as an uninterrupted run's does
    def log(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert [(r["step"], sorted(r)) for r in log(broken)] == [(r["step"], sorted(r)) for r in log(full)]
    for x, y in zip(log(broken), log(full), strict=True):
        if "loss" in x:
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    # train_loss and train_runtime_s cover the whole run, not only steps 3-4
    res_full, res_broken = (
        json.loads((r / "eval_results.json").read_text())["train"] for r in (full, broken)
    )
    assert res_broken["train_loss"] == pytest.approx(res_full["train_loss"], rel=1e-5)
    state = json.loads((broken / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    before = state["stateful_callbacks"]["RunTotals"]["args"]
    assert before["steps"] == 2 and res_broken["train_runtime_s"] > before["seconds"] > 0


def test_resume_from_a_checkpoint_without_run_totals(tmp_path, toy_csv):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--set", "training.keep_checkpoints=true")) == 0
    for name in ["eval_results.json", "model.safetensors"]:
        (run / name).unlink()
    state_file = run / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["RunTotals"]  # as written by raftlm before the totals existed
    state_file.write_text(json.dumps(state))
    import shutil

    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    assert main([*train_args(toy_csv, run), "--resume"]) == 0
    assert json.loads((run / "eval_results.json").read_text())["train"]["global_step"] == 4


def _bad(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "./missing/dir"], "model path ./missing/dir does not exist"),
        (["--grid", "5"], "grid has 1 value"),
        (["--grid", "1,1,2"], "duplicate values"),
        (["--target-column", "score"], "target column 'score' is missing"),
    ],
)
def test_bad_train_input_exits_2_with_one_line_and_writes_nothing(tmp_path, toy_csv, capsys, extra, fragment):
    out = tmp_path / "run"
    code, line = _bad(capsys, [*train_args(toy_csv, out), *extra])
    assert code == 2 and fragment in line and line.startswith("raftlm train: error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"text": "x", "target": "high"}, "is not a number"),
        ({"text": "x", "target": "nan"}, "NaN or infinite"),
        ({"text": "x", "target": "inf"}, "NaN or infinite"),
        ({"text": " ", "target": "1"}, "field 'text' is empty"),
    ],
)
def test_bad_rows_exit_2(tmp_path, capsys, row, fragment):
    data = write_csv(tmp_path / "d.csv", [{"text": f"ok {i}", "target": i % 5} for i in range(20)] + [row])
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 2 and fragment in line and not (tmp_path / "run").exists()


def test_unknown_dataset_and_existing_outputs(tmp_path, toy_csv, capsys):
    code, line = _bad(capsys, ["train", "--dataset", "nope", "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "unknown dataset 'nope'" in line
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0
    code, line = _bad(capsys, train_args(toy_csv, run))
    assert code == 2 and "already holds a finished run" in line and "--overwrite" in line
    existing = tmp_path / "preds.jsonl"
    existing.write_text("keep me")
    code, line = _bad(
        capsys, ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(existing)]
    )
    assert code == 2 and "already exists" in line and existing.read_text() == "keep me"
    assert (
        main(
            [
                "predict",
                "--model",
                str(run),
                "--input",
                str(toy_csv),
                "--output",
                str(existing),
                "--overwrite",
            ]
        )
        == 0
    )
    assert existing.read_text().startswith('{"index": 0')


def test_console_script_exit_code_and_common_mistakes_before_torch(tmp_path):
    """The everyday mistakes are one line and exit 2 before torch is imported (seconds sooner): a model
    that names nothing, a missing input, the output on the input, a damaged run's raftlm.json, train
    without a run directory or with a method that does not train, an unknown dataset or a missing data
    file, an output that exists, a bad row of the input, serve or calibrate of a folder that is no run,
    an unexpanded ~."""
    rows = write_csv(tmp_path / "rows.csv", [{"text": "fine", "target": 3}])
    damaged = tmp_path / "run"
    damaged.mkdir()
    (damaged / "raftlm.json").write_text('{"grid": ')
    rows.with_name("mine.jsonl").write_text("a user's file\n")
    out = str(tmp_path / "p.jsonl")
    from raftlm.io import write_run_marker

    finished, users = tmp_path / "done", tmp_path / "project"  # (train into them was refused after torch)
    finished.mkdir()
    write_run_marker(finished)
    (finished / "eval_results.json").write_text("{}")
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    train = ["train", "--model", "tiny-random-llama", "--dataset", f"csv:{rows}", "--output-dir"]
    for argv, said in (
        (
            [*train, str(finished)],
            f"raftlm train: error: run directory {finished} already holds a finished run",
        ),
        ([*train, str(users)], f"raftlm train: error: output directory {users} is not a raftlm run"),
        (
            [
                "train",
                "--model",
                "nope",
                "--dataset",
                "synthetic-original1",
                "--output-dir",
                str(tmp_path / "r"),
            ],
            "raftlm train: error: unknown model 'nope'",
        ),
        (
            ["predict", "--model", "tiny-random-llama", "--input", str(tmp_path / "no.csv"), "--output", out],
            "raftlm predict: error: input file",
        ),
        (
            [
                "predict",
                "--model",
                "tiny-random-llama",
                "--input",
                str(rows),
                "--output",
                str(rows),
                "--overwrite",
            ],
            "raftlm predict: error: --output",
        ),
        (["evaluate", "--model", str(tmp_path / "nothere" / "x")], "raftlm evaluate: error: model path"),
        (["serve", str(damaged.parent / "nope")], "raftlm serve: error:"),
        (["calibrate", str(damaged.parent / "nope")], "raftlm calibrate: error:"),
        (["evaluate", "--dataset", "nope"], "raftlm evaluate: error: unknown dataset 'nope'"),
        (
            ["predict", "--model", "tiny-random-llama", "--dataset", "synthetic-original1"]
            + ["--input", str(rows), "--output", out],
            f"raftlm predict: error: {rows} line 2: column",
        ),
        (
            ["demo", "--output-dir", "~/raftlm-demo-x"],
            "raftlm demo: error: --output-dir ~/raftlm-demo-x starts with ~",
        ),
        (["train", "--model", "tiny-random-llama"], "raftlm train: error: train needs --output-dir"),
        (
            ["train", "--method", "none", "--output-dir", str(tmp_path / "r")],
            "raftlm train: error: method none is zero-shot",
        ),
        (
            [
                "train",
                "--model",
                "tiny-random-llama",
                "--dataset",
                "nope",
                "--output-dir",
                str(tmp_path / "r"),
            ],
            "raftlm train: error: unknown dataset 'nope'",
        ),
        (
            ["train", "--model", "tiny-random-llama", "--dataset", f"csv:{tmp_path / 'no.csv'}"]
            + ["--output-dir", str(tmp_path / "r")],
            "raftlm train: error: input file",
        ),
        (
            ["predict", "--model", "tiny-random-llama", "--dataset", "synthetic-original1"]
            + ["--input", str(rows), "--output", str(rows.with_name("mine.jsonl"))],
            f"raftlm predict: error: output path {rows.with_name('mine.jsonl')} already exists: pass --overwrite",
        ),
        (
            ["predict", "--model", str(damaged), "--input", str(rows), "--output", out],
            f"raftlm predict: error: {damaged / 'raftlm.json'} is unreadable",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "raftlm", *argv], capture_output=True, text=True
        )
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith(said), (argv, last)
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert "raftlm.cli" in imported and "torch" not in imported, argv
    assert not Path(out).exists() and not (tmp_path / "r").exists()
    assert rows.with_name("mine.jsonl").read_text() == "a user's file\n"


def test_the_model_names_config_checks_are_the_ones_models_loads():
    from raftlm.io import MODEL_NAMES
    from raftlm.models import ENCODERS, GGUF_MODELS

    assert set(MODEL_NAMES) == {*GGUF_MODELS, *ENCODERS, "tiny-random-llama", "tiny-random-bert"}


@pytest.mark.parametrize(
    "recipe", sorted(__import__("pathlib").Path(__file__).parents[1].glob("recipes/*.yaml"))
)
def test_recipes_load(recipe):
    cfg = Config.from_yaml(str(recipe))
    assert cfg.data.data_dir is None  # the Hub copy (--data-dir FOLDER offline): no folder users lack
    assert cfg.method.method in METHODS and cfg.training.bf16 in (True, False) and cfg.model.dropout == 0.1
    # the paper's recipes pick the checkpoint on the whole validation split (appendix D), not the default 300
    assert cfg.data.val_size == (300 if recipe.name == "stsb1k-raft-cpu.yaml" else None)


def test_val_size_defaults_to_300_and_all_is_the_whole_split(tmp_path, toy_csv, capsys):
    assert Config().data.val_size == 300
    for word in ("all", "ALL", " all "):
        assert Config.build(overrides={"data.val_size": word}).data.val_size is None
    with pytest.raises(RaftlmError, match="val_size=0: use a positive number"):
        Config.build(overrides={"data.val_size": 0})
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--val-size", "all")) == 0
    assert Config.from_yaml(str(run / "config.yaml")).data.val_size is None  # saved as null: the whole split
    results = json.loads((run / "eval_results.json").read_text())
    assert results["validation"] == {"n": 4, "split_size": 4, "chosen": "all"}
    assert "validated on" not in capsys.readouterr().err


def test_evaluate_entropy_analysis_writes_data_and_histogram(tmp_path, toy_csv):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--model", str(run), "--split", "test", "--output", str(out), "--entropy"]) == 0
    metrics = json.loads(out.read_text())
    rows = [json.loads(line) for line in (tmp_path / "ev.entropy.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and (tmp_path / "ev.entropy.png").stat().st_size > 1000
    import numpy as np

    assert metrics["mean_entropy_after"] == pytest.approx(np.mean([r["entropy_after"] for r in rows]))
    assert metrics["mean_entropy_after"] == pytest.approx(metrics["mean_entropy"])
    assert all(r["change"] == pytest.approx(r["entropy_after"] - r["entropy_before"]) for r in rows)


def test_demo_scatter_keeps_outliers_on_the_plot(tmp_path):
    import numpy as np

    from raftlm.demo import scatter

    y = np.linspace(-3, 3, 20)
    preds = {"greedy": np.r_[y[:-1], 200.0], "rail": y * 0.5}
    scores = {k: {"rmse": 1.0, "spearman": 0.5} for k in preds}
    scatter(tmp_path / "s.png", y, preds, scores)
    assert (tmp_path / "s.png").stat().st_size > 5000


def test_format_table_labels_then_metrics():
    from raftlm.tables import format_table

    text = format_table(
        [{"method": "raft", "decoder": "rail", "rmse": 0.5, "mae": 0.4, "n": 3}], columns=("rmse", "n")
    )
    assert text.splitlines()[0] == "method | decoder | rmse | n"


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, toy_csv, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, line = _bad(capsys, train_args(toy_csv, out, "--overwrite"))
    assert code == 2 and "is not a raftlm run (no .raftlm-run marker; it holds thesis.tex)" in line
    assert "--overwrite" not in line
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "toy.csv"]


def test_overwrite_keeps_the_old_run_until_the_new_one_has_finished(tmp_path, toy_csv, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0
    old = (run / "model.safetensors").read_bytes()
    import raftlm.pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(raftlm.pipeline, "fit", boom)
    with pytest.raises(RuntimeError, match="killed"):
        main(train_args(toy_csv, run, "--overwrite", "--seed", "1"))
    assert (run / "model.safetensors").read_bytes() == old and (run / "eval_results.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.csv"]  # no staged leftovers
    monkeypatch.undo()
    (run / "notes.txt").write_text("the user's file")  # not raftlm's: the run is not replaced
    code, line = _bad(capsys, train_args(toy_csv, run, "--overwrite", "--seed", "1"))
    assert code == 2 and "holds files raftlm did not write (notes.txt)" in line
    assert (run / "notes.txt").read_text() == "the user's file" and (
        run / "model.safetensors"
    ).read_bytes() == old
    (run / "notes.txt").unlink()
    assert main(train_args(toy_csv, run, "--overwrite", "--seed", "1")) == 0
    assert (run / "model.safetensors").read_bytes() != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy.csv"]
    code, line = _bad(capsys, train_args(toy_csv, run, "--overwrite", "--resume"))
    assert code == 2 and "pass one of them" in line


def test_unwritable_output_dir_is_a_one_line_error(tmp_path, toy_csv, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, line = _bad(capsys, train_args(toy_csv, blocker / "run"))
    assert code == 2 and "cannot create run directory" in line and "writable --output-dir" in line
    code, line = _bad(capsys, train_args(toy_csv, blocker))
    assert code == 2 and "is a file" in line


def test_validation_subset_does_not_cut_the_test_split(tmp_path, toy_csv, capsys):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--val-size", "2")) == 0
    saved = Config.from_yaml(str(run / "config.yaml"))
    assert saved.data.val_size == 2 and saved.eval.eval_size is None
    results = json.loads((run / "eval_results.json").read_text())
    assert results["test"]["n"] == 4  # the whole test split
    # which validation examples chose the checkpoint is recorded and said (the toy file has no split
    # column: raftlm shuffled it, so its first examples)
    assert results["validation"] == {"n": 2, "split_size": 4, "chosen": "the first"}
    said = "validated on the first 2 of 4 validation examples (--val-size; --val-size all: the whole split)"
    assert said in capsys.readouterr().err
    out = tmp_path / "test.json"
    assert main(["evaluate", "--model", str(run), "--split", "test", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 4 and "of 4 examples" not in capsys.readouterr().err
    out3 = tmp_path / "test3.json"
    assert main(["evaluate", "--model", str(run), "--eval-size", "3", "--output", str(out3)]) == 0
    row = json.loads(out3.read_text())
    assert (row["n"], row["split_size"]) == (3, 4)
    assert "scored the first 3 of 4 examples (--eval-size)" in capsys.readouterr().err
    # a file given with --input is in its user's order (maybe sorted by target): a seeded sample, not its head
    out_in = tmp_path / "input3.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run),
                "--input",
                str(toy_csv),
                "--eval-size",
                "3",
                "--output",
                str(out_in),
            ]
        )
        == 0
    )
    assert "scored a seeded random sample of 3 of" in capsys.readouterr().err


def test_old_data_eval_size_reads_as_val_size_with_a_warning(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("data: {eval_size: 300}\n")
    with pytest.warns(FutureWarning, match=r"data.eval_size is deprecated.*data.val_size"):
        cfg = Config.from_yaml(str(recipe))
    assert cfg.data.val_size == 300 and cfg.eval.eval_size is None
