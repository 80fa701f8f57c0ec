"""The README's bad-input catalogue (issue 15): each input gives one line on stderr, exit code 2, and
leaves nothing half-written; unusual but valid inputs (a BOM, YAML `lr: 1e-4`) just work."""

import json
import os

import pytest
from helpers import train_args, write_csv

import raftlm.pipeline
from raftlm.cli import main
from raftlm.io import write_json


def _bad(capsys, argv) -> tuple[int, str]:
    """Exit code and the one line on stderr (asserting it is one line)."""
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return code, err[0]


def _never_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(raftlm.pipeline, "_load_for_eval", fail)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--lr", "inf"], "training.lr='inf': use a finite number"),
        (["--lr", "nan"], "training.lr='nan': use a finite number"),
        (["--lr", "-1e-4"], "lr=-0.0001: use a positive learning rate"),
        (["--max-steps", "4.7"], "training.max_steps='4.7': use a whole number"),
        (["--max-steps", "four"], "training.max_steps='four': use a whole number"),
        (["--set", "training.max_steps=4.7"], "training.max_steps=4.7: use a whole number"),
        (["--set", "training.bf16=maybe"], "training.bf16='maybe': use true, false or auto"),
        (["--trainable", "5"], "trainable='5': use full, lora, none or top-N"),
        (["--grid", "5-1"], "runs from 5 down to 1: write LOW-HIGH"),
        (["--grid", ""], "grid is empty"),
        (["--target-range", "-4,x"], "use none, auto, dataset or LO,HI"),
        (["--template", "{text"], "prompt template '{text' is malformed (expected '}'"),
        (["--template", "{text:d}"], "is malformed (field {text:d})"),
        (["--template", "Review: {text!r}"], "is malformed (field {text!r})"),
        (["--report-to", "nosuchtracker"], "report_to 'nosuchtracker': use none, all or some of"),
        (["--method", "nope"], "argument --method: invalid choice: 'nope'"),
        (["--max-steps"], "argument --max-steps: expected one argument"),
    ],
)
def test_bad_settings(tmp_path, toy_csv, capsys, extra, fragment):
    out = tmp_path / "run"
    code, line = _bad(capsys, [*train_args(toy_csv, out), *extra])
    assert code == 2 and fragment in line and line.startswith("raftlm train: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.csv"]


def test_a_tracker_that_is_not_installed(tmp_path, toy_csv, capsys):
    pytest.importorskip("transformers.integrations")
    from transformers.integrations import get_available_reporting_integrations

    if "tensorboard" in get_available_reporting_integrations():
        pytest.skip("tensorboard is installed here")
    code, line = _bad(capsys, train_args(toy_csv, tmp_path / "run", "--report-to", "tensorboard"))
    assert code == 2 and "report_to tensorboard: it is not installed here: pip install tensorboard" in line


def test_unwritable_output_dir(tmp_path, toy_csv, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # (root writes anywhere)
        code, line = _bad(capsys, train_args(toy_csv, locked / "run"))
        assert code == 2 and f"cannot create run directory {locked / 'run'}" in line, line
    # the kernel's file systems: named as such (the /proc message blamed a missing folder /proc/PID)
    for place in ("/proc/self", "/proc/self/run", "/sys/raftlm-run"):
        code, line = _bad(capsys, train_args(toy_csv, place))
        assert code == 2 and "a file system the kernel makes up (it holds no run)" in line, line


def test_settings_read_as_strings_are_converted(tmp_path, toy_csv):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('training: {lr: 1e-4, bf16: "false", max_steps: "4"}\n')  # lr: a string to PyYAML
    run = tmp_path / "run"
    args = ["train", "--config", str(recipe), "--model", "tiny-random-llama", "--dataset", f"csv:{toy_csv}"]
    assert main([*args, "--output-dir", str(run), "--eval-steps", "2", "--batch-size", "4"]) == 0
    saved = (run / "config.yaml").read_text()
    assert "lr: 0.0001\n" in saved and "bf16: false\n" in saved and "max_steps: 4\n" in saved
    run2 = tmp_path / "run2"
    assert main([*train_args(toy_csv, run2), "--set", "training.lr=1e-4"]) == 0
    assert "lr: 0.0001\n" in (run2 / "config.yaml").read_text()


# --- input files ----------------------------------------------------------------------------------


def _rows(n=20):
    return [{"text": f"ok {i}", "target": i % 5} for i in range(n)]


def test_latin1_csv_names_the_byte_and_line(tmp_path, capsys):
    data = tmp_path / "latin.csv"
    data.write_bytes("text,target\nfine,1\ncaf\xe9 au lait,2\n".encode("latin-1"))
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 2 and "latin.csv is not UTF-8 (byte 0xe9 on line 3): save it as UTF-8" in line


def test_utf8_bom_is_dropped_from_the_header(tmp_path):
    data = tmp_path / "bom.csv"
    text = "text,target\n" + "".join(f"ok {i},{i % 5}\n" for i in range(20))
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert main(train_args(data, tmp_path / "run", "--max-steps", "1")) == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("text,target\na,1\nb, extra,2\n", "d.csv line 3: 3 fields but the header has 2: quote fields"),
        ("text,target\na,1\nb\n", "d.csv line 3: 1 fields but the header has 2"),
        ("text,target,target\na,1,2\n", "header: column 'target' appears 2 times"),
        ("text,target,split\na,1,train\nb,2,dev\n", "d.csv line 3: split 'dev' is not one of"),
    ],
)
def test_malformed_csv(tmp_path, capsys, text, fragment):
    data = tmp_path / "d.csv"
    data.write_text(text)
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 2 and fragment in line


def test_row_errors_name_the_files_line_not_the_place_in_a_shuffled_split(tmp_path, capsys):
    rows = _rows(30)
    rows[24]["target"] = "high"  # data row 25: line 26 of the file (after the header)
    code, line = _bad(capsys, train_args(write_csv(tmp_path / "d.csv", rows), tmp_path / "run"))
    assert code == 2 and "d.csv line 26: target 'high' is not a number" in line


@pytest.mark.parametrize(
    "lines, fragment",
    [
        (
            ['{"text": "a", "target": 1}', '{"text": "b", "target": true}'],
            "line 2: target True is not a number",
        ),
        (['{"text": "a", "target": 1}', "", '{"text": "b", target: 2}'], "d.jsonl line 3: invalid JSON"),
        (['{"text": "a", "target": 1}', "[1, 2]"], "d.jsonl line 2: a JSON list, not an object"),
        (['{"text": "a", "target": null}'], "line 1: target None is not a number"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, capsys, lines, fragment):
    data = tmp_path / "d.jsonl"
    good = [json.dumps({"text": f"ok {i}", "target": i % 5}) for i in range(20)]
    data.write_text("\n".join([*lines, *good]) + "\n")
    code, line = _bad(capsys, train_args(data, tmp_path / "run"))
    assert code == 2 and fragment in line


# --- predict / evaluate: check the model, the input and the output before the work ------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    data = write_csv(tmp / "toy.csv", _rows(40))
    assert main(train_args(data, tmp / "run", "--max-steps", "2")) == 0
    return tmp / "run", data


def test_predict_checks_its_output_before_loading_the_model(tmp_path, run_dir, capsys, monkeypatch):
    run, data = run_dir
    _never_load(monkeypatch)
    base = ["predict", "--model", str(run), "--input", str(data), "--output"]
    code, line = _bad(capsys, [*base, "/proc/raftlm/preds.jsonl"])
    assert code == 2 and "cannot write /proc/raftlm/preds.jsonl" in line and "mkdir -p /proc/raftlm" in line
    code, line = _bad(capsys, [*base, str(tmp_path)])
    assert code == 2 and "is a directory: give a file name" in line
    code, line = _bad(capsys, [*base[:4], str(tmp_path / "none.csv"), "--output", str(tmp_path / "p.jsonl")])
    assert code == 2 and "none.csv does not exist" in line
    code, line = _bad(capsys, ["evaluate", "--model", str(run), "--output", "/proc/raftlm/e.json"])
    assert code == 2 and "cannot write /proc/raftlm/e.json" in line


def test_predict_on_a_directory_that_is_not_a_run(tmp_path, run_dir, capsys, monkeypatch):
    _, data = run_dir
    _never_load(monkeypatch)
    out = ["--input", str(data), "--output", str(tmp_path / "p.jsonl")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    code, line = _bad(capsys, ["predict", "--model", str(mine), *out])
    assert code == 2 and "is not a raftlm run (no raftlm.json) nor a saved model" in line
    (mine / "config.yaml").write_text("model: {name: tiny-random-llama}\n")  # training never finished
    code, line = _bad(capsys, ["evaluate", "--model", str(mine)])
    assert code == 2 and "holds an unfinished run" in line and "--resume" in line
    code, line = _bad(capsys, ["predict", "--model", str(tmp_path / "typo"), *out])
    assert code == 2 and "typo does not exist: check --model" in line
    code, line = _bad(capsys, ["predict", "--model", "tiny-random-llama", *out])
    assert code == 2 and "zero-shot prediction needs --dataset" in line
    assert not (tmp_path / "p.jsonl").exists()
    # a relative typo beside its folder is a missing path, for train's base model as for predict's run
    # (not a hub id "runs/typo" tried online): one rule, io.check_model_name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for argv in (
        ["train", "--model", "runs/typo", "--dataset", "synthetic-original1", "--output-dir", "r"],
        ["evaluate", "--model", "runs/typo"],
        ["predict", "--model", "runs/typo", *out],
    ):
        code, line = _bad(capsys, argv)
        assert (
            code == 2
            and "model path runs/typo does not exist: check --model (its folder runs/ is here" in line
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "runs"]


def test_predict_cleans_the_temp_file_a_kill_left(tmp_path, run_dir):
    run, data = run_dir
    stale = tmp_path / ".p.jsonl.raftlm-a1b2c3d4.tmp"
    stale.write_text("")  # what a SIGKILL during the last write left
    other = tmp_path / ".other.json.raftlm-a1b2c3d4.tmp"
    other.write_text("")
    users = tmp_path / ".p.jsonl.a1b2c3d4.tmp"  # not raftlm's name: a user's file, kept
    users.write_text("mine")
    assert (
        main(["predict", "--model", str(run), "--input", str(data), "--output", str(tmp_path / "p.jsonl")])
        == 0
    )
    assert not stale.exists() and other.exists()  # only the output's own leftovers go
    assert users.read_text() == "mine"
    star = tmp_path / "g"
    star.mkdir()
    (star / ".other.jsonl.raftlm-a1b2c3d4.tmp").write_text("another output's")
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(star / "*")]) == 0
    assert (star / ".other.jsonl.raftlm-a1b2c3d4.tmp").exists()  # the name is not a glob pattern


# --- outputs are strict JSON ------------------------------------------------------------------------


def test_json_outputs_have_no_nan_or_infinity_tokens(tmp_path):
    path = write_json(tmp_path / "r.json", {"rmse": float("nan"), "xs": [1.0, float("inf")], "n": 3})

    def refuse(token):
        raise ValueError(token)

    assert json.loads(path.read_text(), parse_constant=refuse) == {"rmse": None, "xs": [1.0, None], "n": 3}


def test_a_diverged_run_still_writes_valid_json(tmp_path, toy_csv, monkeypatch):
    import raftlm.training

    real = raftlm.training.regression_metrics

    def nan_metrics(y, p):
        return {k: float("nan") for k in real(y, p)}

    monkeypatch.setattr(raftlm.training, "regression_metrics", nan_metrics)  # validation RMSE NaN
    monkeypatch.setattr(raftlm.pipeline, "regression_metrics", nan_metrics)  # test metrics NaN
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run)) == 0

    def refuse(token):
        raise ValueError(token)

    results = json.loads((run / "eval_results.json").read_text(), parse_constant=refuse)
    assert results["test"]["rmse"] is None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    assert os.path.getsize(run / "metrics.jsonl") > 0


def test_demo_checks_its_output_dir_before_scoring(capsys, monkeypatch):
    _never_load(monkeypatch)
    code, line = _bad(capsys, ["demo", "--output-dir", "/proc/raftlm-demo"])
    assert code == 2 and "cannot write /proc/raftlm-demo" in line
