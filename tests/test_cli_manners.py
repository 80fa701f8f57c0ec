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
    monkeypatch.setattr(raftlm.demo, "run_demo", lambda cfg, overwrite: seen.setdefault("cfg", cfg))
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
    method = next(a for a in sub._actions if a.dest == "method")
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
    """bf16 autocast is 3.3x slower than float32 on a CPU without AVX512-BF16/AMX: the demo asks the CPU."""
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
