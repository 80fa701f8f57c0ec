"""Typed config: every value is converted to its field's type (YAML, --set, flags and the API alike)."""

import pytest
from helpers import BENCHMARKS, SHARED_STSB, benchmark_module

from raftlm.cli import build_parser, config_from_args
from raftlm.config import Config
from raftlm.core import RaftlmError
from raftlm.data import load_splits


def _yaml(tmp_path, text: str) -> Config:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return Config.from_yaml(str(path))


def test_yaml_strings_become_their_fields_types(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string, and "false" is a non-empty (truthy) string
    cfg = _yaml(tmp_path, 'training: {lr: 1e-4, bf16: "false", max_steps: "4", eval_steps: 2.0}\n')
    assert cfg.training.lr == 0.0001 and isinstance(cfg.training.lr, float)
    assert cfg.training.bf16 is False and cfg.training.max_steps == 4 and cfg.training.eval_steps == 2
    cfg = _yaml(tmp_path, "training: {bf16: Yes, keep_checkpoints: 1}\nmethod: {normalize_grid: 'ON'}\n")
    assert cfg.training.bf16 is True and cfg.training.keep_checkpoints is True and cfg.method.normalize_grid
    assert _yaml(tmp_path, "method: {grid: 5, single_value_grid: true}\n").method.grid == "5"


def test_bf16_auto_turns_autocast_on_only_where_the_hardware_runs_it_fast(monkeypatch, tmp_path):
    """auto is resolved when the config is built, so a run's saved config.yaml says what it ran."""
    import torch

    from raftlm import core

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for has_units in (True, False):
        monkeypatch.setattr(core, "cpu_bf16_is_fast", lambda has_units=has_units: has_units)
        cfg = _yaml(tmp_path, "training: {bf16: auto}\neval: {bf16: AUTO}\n")
        assert cfg.training.bf16 is cfg.eval.bf16 is has_units
        assert f"bf16: {str(has_units).lower()}\n" in cfg.to_yaml()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert _yaml(tmp_path, "training: {bf16: auto}\neval: {bf16: auto}\n").eval.bf16 is True
    # eval on the CPU of a GPU machine asks the CPU (still without bf16 units here)
    assert _yaml(tmp_path, "eval: {bf16: auto, device: cpu}\n").eval.bf16 is False
    args = build_parser().parse_args(["train", "--set", "training.bf16=auto"])
    assert config_from_args(args).training.bf16 is True
    # a run trained in bf16 evaluates and predicts in bf16 (as RAFTRegressor's one bf16 does), whether
    # --bf16 or --set said it, unless eval.bf16 is set too
    assert config_from_args(args).eval.bf16 is True
    args = build_parser().parse_args(["train", "--bf16"])
    assert config_from_args(args).eval.bf16 is True
    args = build_parser().parse_args(["train", "--bf16", "--set", "eval.bf16=false"])
    assert config_from_args(args).eval.bf16 is False


def test_set_and_flags_convert_the_same_way():
    args = build_parser().parse_args(
        ["train", "--set", "training.lr=1e-4", "--set", "training.bf16=false", "--max-steps", "7"]
    )
    cfg = config_from_args(args)
    assert (cfg.training.lr, cfg.training.bf16, cfg.training.max_steps) == (0.0001, False, 7)
    assert config_from_args(build_parser().parse_args(["train", "--lr", "3e-4"])).training.lr == 3e-4


@pytest.mark.parametrize(
    "recipe, fragment",
    [
        ({"training": {"max_steps": "four"}}, "training.max_steps='four': use a whole number"),
        ({"training": {"max_steps": 4.7}}, "training.max_steps=4.7: use a whole number"),
        ({"training": {"max_steps": True}}, "training.max_steps=True: use a whole number"),
        ({"training": {"lr": "fast"}}, "training.lr='fast' is not a number"),
        ({"training": {"lr": "inf"}}, "training.lr='inf': use a finite number"),
        ({"training": {"lr": float("nan")}}, "training.lr=nan: use a finite number"),
        ({"training": {"lr": -1e-4}}, "lr=-0.0001: use a positive learning rate"),
        ({"training": {"lr": 0}}, "use a positive learning rate"),
        ({"training": {"bf16": "maybe"}}, "training.bf16='maybe': use true, false or auto"),
        ({"training": {"bf16": 2}}, "training.bf16=2: use true, false or auto"),
        ({"training": {"max_steps": None}}, "training.max_steps is empty (null)"),
        ({"training": {"warmup_steps": -1}}, "warmup_steps=-1: use a number >= 0"),
        ({"model": {"trainable": 5}}, "trainable='5': use full, lora, none or top-N"),
        ({"model": {"name": ["a"]}}, "model.name=['a']: use a text value"),
        ({"method": {"grid": ""}}, "grid is empty"),
        ({"method": {"target_range": "a,b"}}, "target_range='a,b': use none, auto, dataset or LO,HI"),
        ({"method": {"target_range": [1, 2, 3]}}, "use none, auto, dataset or LO,HI"),
        ({"method": {"target_range": "5,1"}}, "LO,HI with LO < HI"),
        ({"eval": {"temperature": "hot"}}, "eval.temperature='hot' is not a number"),
        ({"training": 5}, "config section 'training' must be a mapping"),
    ],
)
def test_values_that_cannot_be_converted_are_one_line_errors(recipe, fragment):
    with pytest.raises(RaftlmError) as err:
        Config.build(recipe)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_target_range_pairs_and_the_api_path():
    assert Config.build({"method": {"target_range": "-4, 4"}}).method.target_range == [-4.0, 4.0]
    assert Config.build({"method": {"target_range": ["1", 5]}}).method.target_range == [1.0, 5.0]
    # as the help wrote it until stop 44 ("[lo, hi]"): it was refused
    assert Config.build({"method": {"target_range": "[1, 5]"}}).method.target_range == [1.0, 5.0]
    assert Config.build({"method": {"target_range": None}}).method.target_range is None
    assert Config.build({"data": {"train_size": None}}).data.train_size is None


def test_recipe_that_is_not_a_mapping_of_sections(tmp_path):
    with pytest.raises(RaftlmError, match="section 'training' must be a mapping of settings"):
        _yaml(tmp_path, "training: 5\n")
    with pytest.raises(RaftlmError, match="must be a mapping of sections"):
        _yaml(tmp_path, "- a\n- b\n")


def test_train_defaults_are_the_frontier_winner():
    """`raftlm train` given data flags only trains the setting benchmarks/frontier.py chose on STS-B-1K
    validation (benchmarks/results/frontier.json): same model, depth, optimizer, schedule, steps and
    loss, and (where the STS-B files are) the grid, which is the dataset's: STS-B's own is 0-5."""
    import json
    from dataclasses import replace

    from raftlm.methods import METHODS

    frontier = benchmark_module("frontier")
    rows = json.loads((BENCHMARKS / "results" / "frontier.json").read_text())
    best = min(rows, key=lambda r: r["validation_rmse"])["setting"]

    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", *flags, "--output-dir", "run"]))

    winner, default = (
        cfg(*frontier.BASE, *frontier.SETTINGS[best]),
        cfg("--dataset", "stsb-1k", "--data-dir", str(SHARED_STSB)),
    )
    assert winner.model == default.model and winner.training == default.training
    assert replace(winner.method, grid=None, ce_weight=None, ce_target=None) == default.method
    if SHARED_STSB.exists():  # the grid comes from the dataset: stsb-1k's own is the winner's
        assert load_splits(default.data).grid == winner.method.grid
    assert winner.method.ce_weight == METHODS[default.method.method].default_ce_weight
    # the one default the frontier did not choose: its settings all ran the nearest value's CE target,
    # the default's is two-hot (chosen later at table3-converged's budget: two-hot-probe/compare.md)
    assert winner.method.ce_target == "nearest"
    assert METHODS[default.method.method].default_ce_target == "two-hot"


def test_the_headline_commands_parse_and_record_what_ran(tmp_path):
    """benchmarks/stsb_headline.py's train and evaluate arguments are valid `raftlm` command lines (its
    first run failed at the evaluate step on a positional run directory), and the published result
    records that same train command."""
    import json
    import shlex

    headline = benchmark_module("stsb_headline")
    train, evaluate = headline.commands("../shared/data/stsb", tmp_path / "run", tmp_path / "test.json")
    cfg = config_from_args(build_parser().parse_args(train))
    # today's default but for the steps and the validation subset: STS-B's own grid, both orders of the pair
    assert (cfg.data.dataset, cfg.method.grid, cfg.training.max_steps) == ("stsb", None, 900)
    assert (cfg.data.val_size, cfg.data.pair_swap, cfg.method.ce_target) == (300, "dataset", None)
    ev = build_parser().parse_args(evaluate)
    assert (
        ev.model__name == str(tmp_path / "run") and ev.data__stsb_test == "test" and ev.eval__split == "test"
    )
    published = json.loads((BENCHMARKS / "results" / "stsb-headline.json").read_text())["commands"][0]
    assert shlex.split(published)[1:] == [
        a.replace(str(tmp_path / "run"), "runs/stsb-headline") for a in train
    ]


def test_ce_target_is_a_raft_option_with_two_values():
    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", *flags, "--output-dir", "run"]))

    assert cfg().method.ce_target is None  # the method's: two-hot for raft (tests/test_cache.py)
    assert cfg("--ce-target", "two-hot").method.ce_target == "two-hot"
    assert cfg("--ce-target", "nearest").method.ce_target == "nearest"
    with pytest.raises(RaftlmError, match="ce_target='three-hot': use nearest or two-hot"):
        Config.build({"method": {"ce_target": "three-hot"}})
    with pytest.raises(RaftlmError, match="ce_target is a raft option: drop it for method ce"):
        Config.build({"method": {"method": "ce", "ce_target": "two-hot"}})
    # a sweep's base may pin the nearest target (the old default) for every method: harmless beside CE
    assert Config.build({"method": {"method": "ce", "ce_target": "nearest"}}).method.ce_target == "nearest"


def test_a_bf16_run_evaluates_in_bf16_from_a_flag_a_recipe_or_a_sweep_alike(tmp_path, toy_csv):
    """`--bf16` set eval.bf16 too, but a recipe's or a sweep's `training.bf16: true` did not: the same run
    evaluated, saved `eval.bf16: false` and was served in float32. An eval.bf16 given anywhere still wins."""
    import argparse

    from raftlm.cli import build_parser, config_from_args
    from raftlm.experiment import cell_config, cells

    assert Config.build({"training": {"bf16": True}}).eval.bf16 is True
    assert Config.build({"training": {"bf16": True}, "eval": {"bf16": False}}).eval.bf16 is False
    assert Config.build({}, {"training.bf16": True}).eval.bf16 is True
    recipe = tmp_path / "r.yaml"
    recipe.write_text("training: {bf16: true}\n")
    args = build_parser().parse_args(["train", "--config", str(recipe)])
    assert isinstance(args, argparse.Namespace) and config_from_args(args).eval.bf16 is True
    recipe.write_text("eval: {bf16: false}\n")
    flagged = build_parser().parse_args(["train", "--config", str(recipe), "--bf16"])
    assert config_from_args(flagged).eval.bf16 is False  # the recipe said so (the flag overrode it)
    sweep = {
        "output_dir": str(tmp_path / "s"),
        "datasets": [f"csv:{toy_csv}"],
        "models": ["tiny-random-llama"],
    }
    sweep |= {"methods": [{"method": "raft", "bf16": True}], "lrs": [1e-4], "seeds": [0]}
    (cell,) = cells(sweep)
    assert cell_config(sweep, cell, tmp_path / "s").eval.bf16 is True


def test_a_runs_training_batch_is_its_eval_batch_and_the_servers_from_every_interface(tmp_path):
    """`RAFTRegressor(batch_size=4)` validated, calibrated and predicted in batches of 4, `raftlm train
    --batch-size 4` in batches of 16 (a batch lowered for memory ran out at the first validation), and the
    server batched 16 rows whatever the run's eval batch. Now one batch size everywhere unless given."""
    from raftlm.api import RAFTRegressor
    from raftlm.cli import build_parser, config_from_args
    from raftlm.config import ServeSettings

    assert Config.build({"training": {"batch_size": 4}}).eval.batch_size == 4
    assert Config.build({}, {"training.batch_size": 4}).eval.batch_size == 4
    assert Config.build({"training": {"batch_size": 4}, "eval": {"batch_size": 32}}).eval.batch_size == 32
    cli = config_from_args(build_parser().parse_args(["train", "--batch-size", "4"]))
    api = RAFTRegressor(batch_size=4)._config(str(tmp_path / "r"))
    assert [(c.training.batch_size, c.eval.batch_size) for c in (cli, api)] == [(4, 4), (4, 4)]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval: {batch_size: 2}\n")
    given = config_from_args(
        build_parser().parse_args(["train", "--config", str(recipe), "--batch-size", "8"])
    )
    assert (given.training.batch_size, given.eval.batch_size) == (8, 2)
    # the server's batch cap: the run's eval batch unless --max-batch says otherwise
    assert (
        ServeSettings().for_run(cli).max_batch == 4 and ServeSettings(max_batch=8).for_run(cli).max_batch == 8
    )
    flags = build_parser().parse_args(["serve", "run"])
    assert ServeSettings(**{f: getattr(flags, f) for f in ("max_batch", "port")}).for_run(api).max_batch == 4
