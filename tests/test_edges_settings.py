"""One setting, one value, whichever way it comes (a read-only audit of flags, --set, --config recipes and a
run's config.yaml reused as one, stop 65)."""

from __future__ import annotations

import yaml
from helpers import train_args

from raftlm.cli import main
from raftlm.config import Config


def _err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_two_flags_of_one_field_are_refused_and_set_overrides_a_flag_as_documented(tmp_path, toy_csv, capsys):
    """--trainable top-2 --freeze-backbone froze the model without a word; --set comes last, after the flags
    (docs/cli.md says the order), so --lr 1e-2 --set training.lr=1e-3 trains at 1e-3."""
    run = tmp_path / "run"
    assert (
        main(
            [
                *train_args(toy_csv, run, "--quiet", "--max-steps", "1"),
                "--trainable",
                "top-2",
                "--freeze-backbone",
            ]
        )
        == 2
    )
    assert "--freeze-backbone and --trainable top-2 both set model.trainable: give one of them" in _err(
        capsys
    )
    assert not run.exists()
    assert main([*train_args(toy_csv, run, "--quiet", "--max-steps", "1"), "--set", "training.lr=1e-3"]) == 0
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["training"]["lr"] == 1e-3
    )  # (train_args: --lr 1e-2)


def test_a_runs_config_reused_as_a_recipe_lets_eval_follow_the_training_flags(tmp_path, toy_csv):
    """train --config RUN/config.yaml --batch-size 8 --bf16 kept the run's eval batch 4 and bf16 off (its
    config.yaml writes the values eval followed), where the same flags without the recipe give 8 and bf16."""
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet", "--max-steps", "1", "--batch-size", "4")) == 0
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    assert recipe["eval"]["batch_size"] == 4 == recipe["training"]["batch_size"]
    cfg = Config.build(recipe, {"training.batch_size": 8, "training.bf16": True})
    assert (cfg.eval.batch_size, cfg.eval.bf16) == (8, True)
    recipe["eval"]["batch_size"] = 2  # a value of its own: kept
    assert Config.build(recipe, {"training.batch_size": 8}).eval.batch_size == 2


def test_a_recipes_settings_count_as_given_for_the_commands_checks(tmp_path, toy_csv, capsys):
    """--config's keys were not seen by the checks of flags: a recipe's grid or max_length for a trained run
    was ignored in silence (--grid, --max-length refused), and calibrate's eval.split from a recipe calibrated
    on validation. A run's own config.yaml as the recipe changes nothing, so it is no refusal."""
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet", "--max-steps", "1")) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": {"grid": "0-9"}}))
    predict = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(tmp_path / "p.jsonl")]
    assert main([*predict, "--config", str(recipe)]) == 2
    assert f"method.grid (in --config {recipe}) does not apply to the trained run" in _err(capsys)
    assert main([*predict, "--config", str(run / "config.yaml"), "--quiet"]) == 0
    split = tmp_path / "split.yaml"
    split.write_text(yaml.safe_dump({"eval": {"split": "train"}}))
    assert main(["calibrate", str(run), "--config", str(split), "--quiet"]) == 0
    assert "calibrated on train" in capsys.readouterr().out


def test_a_recipes_training_batch_and_bf16_reach_a_runs_eval_as_set_and_the_api_do(tmp_path, toy_csv):
    """`predict --model RUN --config r.yaml` with training.bf16 / batch_size in r.yaml kept the run's eval
    values (they followed its training ones), where --set training.bf16=true and the API's bf16=True reach
    eval; docs/cli.md: a --config key counts as given, as its flag would."""
    from raftlm.cli import _run_config, build_parser

    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--quiet", "--max-steps", "1", "--batch-size", "4")) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"training": {"bf16": True, "batch_size": 2}}))
    base = ["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(tmp_path / "p.jsonl")]
    for extra in (
        ["--config", str(recipe)],
        ["--set", "training.bf16=true", "--set", "training.batch_size=2"],
    ):
        cfg = _run_config(build_parser().parse_args([*base, *extra]))
        assert (cfg.eval.bf16, cfg.eval.batch_size) == (True, 2), extra
    recipe.write_text(yaml.safe_dump({"training": {"bf16": True}, "eval": {"bf16": False}}))  # its own: kept
    assert _run_config(build_parser().parse_args([*base, "--config", str(recipe)])).eval.bf16 is False
