"""CLI manners (issue 15): flags equal to a default still count, per-command help with defaults,
--version, results alone on stdout, --quiet."""

import pytest
from helpers import train_args

import raftlm.demo
from raftlm import __version__
from raftlm.cli import build_parser, main
from raftlm.methods import METHODS


def _demo_config(monkeypatch, *flags):
    seen = {}
    monkeypatch.setattr(
        raftlm.demo,
        "run_demo",
        lambda cfg, overwrite, bf16_given: seen.update(cfg=cfg, bf16_given=bf16_given),
    )
    assert main(["demo", *flags]) == 0
    return seen["cfg"]


def test_demo_flags_win_even_when_equal_to_a_config_default(monkeypatch):
    cfg = _demo_config(monkeypatch, "--lr", "1e-5", "--model", "tiny-random-llama", "--max-length", "512")
    assert cfg.training.lr == 1e-5  # Config's default lr is 1e-5, the demo's 1e-4
    assert cfg.model.name == "tiny-random-llama" and cfg.data.max_length == 512
    cfg = _demo_config(monkeypatch)
    assert (cfg.training.lr, cfg.model.name, cfg.data.max_length) == (1e-4, "gemma-3-270m", 192)


def _help(command: str) -> str:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return sub.format_help()


def test_each_command_lists_only_the_flags_it_uses_with_defaults():
    train, predict, evaluate, demo = (_help(c) for c in ("train", "predict", "evaluate", "demo"))
    for flag in ("--lr", "--max-steps", "--optimizer", "--pooling", "--freeze-backbone"):
        assert flag in train and flag not in predict and flag not in evaluate
    assert (
        "--resume" in train and "--resume" in predict and "--resume" not in evaluate
    )  # predict resumes its file
    for flag in ("--input", "--output", "--decoder", "--grid", "--dataset", "--bf16"):
        assert flag in predict
    assert "--split" in evaluate and "--split" not in predict and "--input" not in train
    assert "training (training.* in a recipe):" in train and "model (model.* in a recipe):" in train
    assert "(default: 500)" in train and "(default: 150)" in demo  # each command's own defaults (--max-steps)
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    method = next(a for a in sub._actions if a.dest == "method__method")
    assert all(f"{name}," in method.help for name in METHODS) and "none (zero-shot)" in method.help


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"raftlm {__version__}"


def test_stdout_carries_results_and_quiet_silences_the_rest(tmp_path, toy_csv, capsys):
    assert main(train_args(toy_csv, tmp_path / "run")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"run directory: {tmp_path / 'run'}" and "'loss'" not in out
    assert "rmse | mae" in out and "'loss'" in err  # Trainer's loss lines go to stderr
    assert main(train_args(toy_csv, tmp_path / "quiet", "--quiet")) == 0
    quiet_out, quiet_err = capsys.readouterr()
    assert quiet_out.splitlines()[0] == f"run directory: {tmp_path / 'quiet'}"
    assert "'loss'" not in quiet_err and "it/s" not in quiet_err and "%|" not in quiet_err


@pytest.mark.parametrize("argv", [["train", "--nope"], ["train", "--lr"], ["report"]])
def test_usage_errors_are_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raftlm") and "--help" in err[0]


def test_demo_uses_bf16_only_on_a_cpu_with_bf16_units(monkeypatch):
    """bf16 autocast is 3.3x slower than float32 on a CPU without AVX512-BF16/AMX, and 1.5x on one with
    avx512_bf16 and no AMX: the demo asks the CPU's flags, then measures its bf16 matmul when it runs."""
    from raftlm.core import cpu_has_bf16

    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_bf16(
        "flags\t\t: fpu avx2 avx512f avx512bw\nmodel name\t: has avx512_bf16 in its name\n"
    )
    cfg = _demo_config(monkeypatch)
    assert cfg.training.bf16 == cfg.eval.bf16 == cpu_has_bf16()
    assert _demo_config(monkeypatch, "--bf16").training.bf16 is True
    assert _demo_config(monkeypatch, "--set", "training.bf16=false").training.bf16 is False
    # flags are not enough (avx512_bf16 without AMX ran a bf16 matmul at 0.6x float32's): when the demo
    # runs, a CPU whose bf16 matmul measures slow runs it in float32, and says so
    from raftlm import demo
    from raftlm.core import BF16_MIN_SPEEDUP, cpu_bf16_is_fast, cpu_bf16_speedup

    measured = cpu_bf16_speedup()  # this machine's, for real: a ratio where the flags say bf16
    assert (measured is None) == (not cpu_has_bf16()) and (measured is None or measured > 0)
    assert cpu_bf16_is_fast() == (measured is not None and measured >= BF16_MIN_SPEEDUP)
    monkeypatch.setattr(demo, "cpu_bf16_speedup", lambda: 0.61)
    for fast in (False, True):
        monkeypatch.setattr(demo, "cpu_bf16_is_fast", lambda fast=fast: fast)
        cfg = _demo_config(monkeypatch, "--bf16")
        cfg.training.bf16 = cfg.eval.bf16 = True  # (the demo's defaults on a CPU whose flags say bf16)
        said = demo.bf16_measured(cfg)
        if fast:
            assert said is None and cfg.training.bf16 is True
        else:
            assert "bf16 matmul measured 0.61x float32's" in said
            assert cfg.training.bf16 is cfg.eval.bf16 is False


def test_the_demo_measures_bf16_only_where_no_bf16_flag_was_given(monkeypatch):
    given = []
    monkeypatch.setattr(raftlm.demo, "run_demo", lambda cfg, overwrite, bf16_given: given.append(bf16_given))
    for flags in ([], ["--bf16"], ["--set", "eval.bf16=false"], ["--lr", "1e-5"]):
        assert main(["demo", *flags]) == 0
    assert given == [False, True, True, False]


def test_quiet_silences_every_command(tmp_path, toy_csv, capsys):
    """predict, evaluate, calibrate and experiment draw no bars, loss lines or info logs with --quiet."""
    import yaml

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet")) == 0
    capsys.readouterr()
    for argv in (
        ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(tmp_path / "p.jsonl")],
        ["evaluate", "--model", str(run)],
        ["calibrate", str(run)],
    ):
        assert main([*argv, "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "it/s" not in err and "%|" not in err and "INFO" not in err, (argv, err)
    sweep = {
        "output_dir": str(tmp_path / "sweep"),
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-3],
        "base": {"training": {"max_steps": 2, "batch_size": 4, "eval_steps": 1}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["experiment", str(tmp_path / "s.yaml"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert (
        "'loss'" not in err and "it/s" not in err and "[1/1 cells]" not in err and "1 of 1 cells done" in out
    )
    assert "progress_bar" not in (tmp_path / "sweep" / "sweep.yaml").read_text()  # saved as written


def test_raftlms_warnings_are_raftlms_one_line(tmp_path, toy_csv, capsys, recwarn):
    """The collapse warning raised inside Trainer's evaluation loop names raftlm's own line, and the
    command line prints it as one `raftlm: warning:` line."""
    import warnings

    from raftlm.core import RaftlmWarning

    assert main(train_args(toy_csv, tmp_path / "run", "--lr", "3", "--quiet")) == 0
    mine = [w for w in recwarn if issubclass(w.category, RaftlmWarning)]
    assert mine and all("/raftlm/" in w.filename and "transformers" not in w.filename for w in mine)
    message = str(mine[0].message)
    line = warnings.formatwarning(mine[0].message, mine[0].category, mine[0].filename, mine[0].lineno)
    assert line.count("\n") == 2  # Python's own format outside the CLI: location line + source line
    from raftlm.cli import _logging

    with _logging(quiet=True):
        formatted = warnings.formatwarning(
            mine[0].message, mine[0].category, mine[0].filename, mine[0].lineno
        )
    assert formatted == f"raftlm: warning: {message}\n"


def test_a_tied_lm_head_restored_from_a_checkpoint_is_not_reported_missing(caplog):
    """Gemma's LM head is its input embedding: restoring the best checkpoint finds it "missing", which
    transformers reports as if the model were broken. raftlm ties it again and says nothing."""
    import logging

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raftlm.training import RegressionTrainer, tied_parameter_names

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    assert tied_parameter_names(model) == {"model.embed_tokens.weight", "lm_head.weight"}
    trainer = object.__new__(RegressionTrainer)  # only .model is read
    trainer.model = model
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with caplog.at_level(logging.WARNING, logger="transformers.trainer"):
        trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
        assert "missing keys" not in caplog.text
        del state["model.norm.weight"]  # a key that really is missing is still reported
        trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
    assert "There were missing keys in the checkpoint model loaded: ['model.norm.weight']" in caplog.text
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(model.lm_head.weight, torch.nn.Parameter)


def test_evaluate_into_a_closed_pipe_writes_its_file_first(tmp_path, toy_csv):
    """`raftlm evaluate --output X | head -1`: X is written, and the closed stdout ends quietly."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet")) == 0
    env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1] / "src")}
    cmd = (
        f"{sys.executable} -m raftlm evaluate --model {run} --output {tmp_path / 'e.json'} --quiet | head -1"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=300
    )
    assert (tmp_path / "e.json").exists() and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0 and done.stdout.startswith("model")


def test_help_is_built_from_the_config_and_cannot_drift():
    """Issue 38: every flag, default and choice comes from the typed config and the registries."""
    from raftlm.data import DATASETS, PATH_DATASETS

    top = " ".join(build_parser().format_help().split())
    assert f"--method: {len(METHODS)} methods" in top
    train, predict, serve, experiment = (_help(c) for c in ("train", "predict", "serve", "experiment"))
    squeezed = "".join(train.split())  # (argparse wraps lines, also at hyphens)
    for name in [*DATASETS, *(f"{p}:PATH" for p in PATH_DATASETS), "csv:PATH", "jsonl:PATH", "hf:ID"]:
        assert name in squeezed, name
    sections = [line for line in train.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections[2] == "common:" and sections[-1] == "the paper's ablations:", sections
    assert train.index("--lr") < train.index("--grad-accum") < train.index("--new-tokens")
    flat = " ".join(predict.split())
    assert "(default: stsb-1k)" not in flat and "(default: the run's; zero-shot: stsb-1k)" in flat
    # a trained run's grid and template are its own (--grid is refused for one): not "the dataset's";
    # calibrate measures on validation whatever the run's eval.split (it said "the run's; zero-shot: test")
    assert "1=a,2=b (default: the run's; zero-shot: the dataset's)" in flat
    assert "(csv/jsonl/hf) (default: the run's)" in flat
    assert "--split SPLIT train, validation or test (default: validation)" in " ".join(
        _help("calibrate").split()
    )
    assert "--batch-size" in predict and "prediction batch size" in predict  # eval.batch_size there
    assert "default: the run's eval.batch_size" in " ".join(serve.split())  # --max-batch: no fixed number
    assert "(default: 5.0)" in serve and "--bf16 [{true,false,auto}]" in serve
    assert "raftlm/experiment.py" not in experiment and "--quiet" in experiment
    parser = build_parser()
    for argv in (["serve", "r", "--bf16=auto"], ["predict", "--bf16", "auto"], ["train", "--bf16"]):
        args = parser.parse_args(argv)
        assert getattr(args, "eval__bf16", None) or getattr(args, "training__bf16", None) in ("auto", "true")
