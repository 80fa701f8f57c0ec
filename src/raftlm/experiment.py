"""``raftlm experiment sweep.yaml``: datasets x models x methods x learning rates x seeds, resumable.

A sweep file::

    output_dir: benchmarks/results/table3
    base: {model: {trainable: top-6}, training: {max_steps: 150, bf16: true}, eval: {bf16: true}}
    datasets: [stsb-1k, amazon-snippets]          # names, or {dataset: ..., data_dir: ...} mappings
    models: [gemma-3-270m]
    methods: [{method: none, decoder: rail}, {method: ce, decoder: rail}, {method: raft},
              {method: raft, normalize_grid: true},      # other keys: settings of the run (an arm)
              {method: raft, optimizer: adamw, warmup_steps: 8, lrs: [3.0e-5]}]
    lrs: [1.0e-4, 1.0e-5]
    seeds: [0, 1, 2]
    train_fractions: [1.0]                        # optional: data-size curves (figure 4)
    keep_models: false                            # optional (default false): see below

Each cell (one training run evaluated with one decoder) writes ``cells/<id>.json`` atomically when it
is done; rerunning skips finished cells and resumes an interrupted run from its last checkpoint.
Zero-shot cells (method ``none``) do not depend on learning rate or seed and run once. Cells run seed by
seed, so a sweep stopped early has every dataset x method at the first seeds rather than some not at all.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import yaml

from raftlm import methods, uncertainty
from raftlm.config import SECTIONS, Config, DataConfig, TrainConfig, read_yaml_file, to_bool, to_float
from raftlm.core import RaftlmError, short
from raftlm.data import data_files
from raftlm.io import (
    RUN_FILES,
    SWEEP_MARKER,
    check_folder,
    check_model_name,
    check_no_tilde,
    clean_stale_tmp,
    is_marked_run,
    is_sweep_dir,
    latest_complete_checkpoint,
    output_lock,
    read_json,
    read_run_marker,
    write_json,
    write_text,
)
from raftlm.metrics import collapse
from raftlm.report import CURVES, best_lr, cell_problem, sweep_seeds

log = logging.getLogger(__name__)

METRICS = ("rmse", "mae", "pearson", "spearman", "r2", "n")
# how a sweep with several lrs chooses one (appendix D: on validation): every lr on every seed, or every
# lr on the first seed and the later seeds only at the lr that won there (a third fewer runs for 2 lrs x
# 3 seeds). The report reads lr_choice from the sweep.yaml saved beside the cells, so it makes the same
# choice (an lr added to the file after later seeds ran included).
LR_CHOICES = ("all_seeds", "first_seed")


@dataclass(frozen=True)
class Cell:
    dataset: dict
    model: str
    method: str
    decoder: str
    lr: float | None
    seed: int
    train_fraction: float | None = None
    options: tuple = ()  # (key, value) pairs of the method section, sorted: an ablation's settings

    @property
    def options_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.options)

    @property
    def run_id(self) -> str:
        """The training run this cell evaluates (shared by decoders of the same run)."""
        parts = [
            self.dataset["dataset"],
            self.model,
            f"{self.method}+{self.options_label}" if self.options else self.method,
            f"lr{self.lr:g}" if self.lr else "zs",
            f"s{self.seed}",
        ]
        if self.train_fraction:
            parts.append(f"f{self.train_fraction:g}")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "--".join(parts))

    @property
    def cell_id(self) -> str:
        return f"{self.run_id}--{self.decoder}"


SWEEP_KEYS = {
    "output_dir",
    "base",
    "datasets",
    "models",
    "methods",
    "lrs",
    "seeds",
    "train_fractions",
    "keep_models",
    "lr_choice",
}


def load_sweep(path: str) -> dict:
    """A sweep file, checked field by field (types, empty lists, unknown keys, a usable output folder)
    before any cell runs; every problem is one line naming the field."""
    sweep = read_yaml_file(path, "sweep file")
    where = f"sweep file {path}"
    if sweep is not None and not isinstance(sweep, dict):
        raise RaftlmError(f"{where} must be a mapping (output_dir, datasets, models, methods, ...)")
    missing = [k for k in ("output_dir", "datasets", "models", "methods") if k not in (sweep or {})]
    if missing:
        raise RaftlmError(f"{where} lacks {missing}: see `raftlm experiment --help` for the format")
    unknown = sorted(map(str, set(sweep) - SWEEP_KEYS))
    if unknown:
        raise RaftlmError(f"{where}: unknown key(s) {unknown}: the keys are {sorted(SWEEP_KEYS)}")
    check_sweep(sweep, where)
    return sweep


def _list(sweep: dict, key: str, where: str, of, what: str) -> list:
    value = sweep.get(key)
    if not isinstance(value, list) or not value:
        raise RaftlmError(f"{where}: {key} must be a non-empty list of {what}, got {short(value)}")
    for item in value:
        if not of(item):
            raise RaftlmError(f"{where}: {key} entry {short(item)} is not {what}")
    return value


def _text(x) -> bool:
    return isinstance(x, str) and bool(x.strip())


# settings each cell sets from the sweep's axes (``cell_config``), so ``base`` cannot give them
CELL_SETS = {
    ("model", "name"): "models",
    ("data", "dataset"): "datasets",
    ("method", "method"): "methods",
    ("training", "lr"): "lrs (or a methods entry's lrs)",
    ("training", "seed"): "seeds",
    ("training", "output_dir"): "output_dir (each cell's run goes under it)",
    ("eval", "decoder"): "methods (a methods entry's decoder)",
}


def check_sweep(sweep: dict, where: str) -> None:
    out = sweep["output_dir"]
    if not _text(out):
        raise RaftlmError(f"{where}: output_dir must be a folder path, got {short(out)}")
    if Path(out).exists() and not Path(out).is_dir():
        raise RaftlmError(f"{where}: output_dir {out} is a file: choose a folder")
    check_folder(out, out)
    _list(
        sweep,
        "datasets",
        where,
        lambda d: _text(d) or (isinstance(d, dict) and _text(d.get("dataset"))),
        "a dataset name or a mapping with dataset:",
    )
    _list(sweep, "models", where, _text, "a model name")
    _list(
        sweep,
        "methods",
        where,
        lambda m: _text(m) or (isinstance(m, dict) and _text(m.get("method"))),
        "a method name or a mapping with method:",
    )
    number = lambda x: not isinstance(x, bool) and isinstance(x, int | float | str)  # noqa: E731
    for key, what in (("lrs", "learning rates"), ("seeds", "seeds"), ("train_fractions", "fractions")):
        if key in sweep:
            _list(
                sweep, key, where, lambda x, k=key: number(x) or (k == "train_fractions" and x is None), what
            )
    for m in sweep["methods"]:
        if isinstance(m, dict) and "lrs" in m:
            _list(m, "lrs", f"{where}: methods entry {short(m)}", number, "learning rates")
    fractions = [
        1.0 if f is None else to_float(f, "sweep train_fractions") for f in sweep.get("train_fractions", [])
    ]
    if len(fractions) != len(set(fractions)):  # (null is all the data: 1.0)
        raise RaftlmError(
            f"{where}: train_fractions {short(sweep['train_fractions'])} lists one fraction twice (null is "
            "all the data, as 1.0): drop the repeat"
        )
    base = sweep.get("base", {})
    if not isinstance(base, dict | None) or any(
        v is not None and not isinstance(v, dict) for v in (base or {}).values()
    ):
        raise RaftlmError(f"{where}: base must map config sections to settings, got {short(base)}")
    # each cell sets these: a base value was overwritten without a word
    for (section, key), axis in CELL_SETS.items():
        if key in ((base or {}).get(section) or {}):
            raise RaftlmError(
                f"{where}: base {section}.{key} is set by each cell from the sweep's {axis}: give it there, "
                "and drop it from base"
            )
    if "train_fractions" in sweep and "train_fraction" in (((base or {}).get("data")) or {}):
        raise RaftlmError(  # (a null fraction, "all the data", trained on base's; 1.0 overrode it)
            f"{where}: base data.train_fraction is set by each cell from the sweep's train_fractions: give it "
            "there, and drop it from base"
        )
    kept = ((base or {}).get("training") or {}).get("keep_checkpoints", False)
    if to_bool(kept, "base training.keep_checkpoints") and sweep.get("keep_models", False) is False:
        raise RaftlmError(  # (keep_models false deleted the checkpoints with the weights, without a word)
            f"{where}: base training.keep_checkpoints keeps checkpoints that keep_models: false (the default) "
            "deletes once a run's cells are written: set keep_models: true, or drop keep_checkpoints"
        )
    if sweep.get("lr_choice", "all_seeds") not in LR_CHOICES:
        raise RaftlmError(f"{where}: lr_choice {short(sweep['lr_choice'])} is not one of {list(LR_CHOICES)}")
    if not isinstance(sweep.get("keep_models", False), bool):
        raise RaftlmError(f"{where}: keep_models must be true or false, got {short(sweep['keep_models'])}")


def cells(sweep: dict) -> list[Cell]:
    entries = [{"dataset": d} if isinstance(d, str) else dict(d) for d in sweep["datasets"]]
    names = Counter(str(d["dataset"]) for d in entries)
    twice = next(
        (n for n, k in names.items() if k > 1 and len({repr(d) for d in entries if d["dataset"] == n}) > 1),
        None,
    )
    if twice:  # a cell's id names the dataset alone: the entries' cells would be one another's
        raise RaftlmError(
            f"sweep datasets: {twice} is listed {names[twice]} times with other settings (a cell's id names the "
            "dataset alone): run each setting as a sweep of its own (another output_dir), or set it in base"
        )
    out, seeds = [], sweep_seeds(sweep)
    for d in sweep["datasets"]:
        dataset = {"dataset": d} if isinstance(d, str) else dict(d)
        for model in sweep["models"]:
            for m in sweep["methods"]:
                m = {"method": m} if isinstance(m, str) else m
                if not isinstance(m, dict) or "method" not in m:
                    raise RaftlmError(
                        f"sweep methods entry {short(m)}: give a method name or a mapping with method:"
                    )
                method = m["method"]
                kind = methods.get(method)
                options = tuple(sorted((k, v) for k, v in m.items() if k not in ("method", "decoder", "lrs")))
                decoder = m.get("decoder", kind.default_decoder)
                if not kind.trains:
                    if "lrs" in m:  # (it trains nothing: its lrs were ignored without a word)
                        raise RaftlmError(
                            f"sweep methods entry {short(m)}: {method} is zero-shot and trains nothing: drop its lrs"
                        )
                    out.append(Cell(dataset, model, method, decoder, None, 0, None, options))
                    continue
                for frac in sweep.get("train_fractions", [None]):
                    frac = None if frac is None else to_float(frac, "sweep train_fractions")  # "0.5" too
                    for lr in m.get("lrs", sweep.get("lrs", [TrainConfig.lr])):  # (train's default)
                        for seed in seeds:
                            lr = to_float(lr, "sweep lrs")
                            out.append(Cell(dataset, model, method, decoder, lr, seed, frac, options))
    repeated = next((c for c, n in Counter(c.cell_id for c in out).items() if n > 1), None)
    if repeated:
        raise RaftlmError(
            f"sweep cell {repeated} appears {Counter(c.cell_id for c in out)[repeated]} times (a dataset, model, "
            "method entry, lr or seed is listed twice): drop the repeats"
        )
    # seed by seed (stable sort): a sweep stopped early still covers every dataset, method and lr
    return sorted(out, key=lambda c: seeds.index(c.seed) if c.seed in seeds else 0)


def check_cells(sweep: dict, todo: list[Cell], root: Path) -> None:
    """Build every cell's config before the first cell runs, and check each dataset and model name (a
    misspelled one, a data file that is not there): a bad setting fails now, not hours in."""
    from raftlm.data import check_dataset_name

    for name in dict.fromkeys(str(c.dataset["dataset"]) for c in todo):
        try:
            check_dataset_name(name)
        except RaftlmError as err:
            raise RaftlmError(f"sweep datasets: {err}") from None
    for name in dict.fromkeys(c.model for c in todo):
        try:
            check_model_name(name)
        except RaftlmError as err:
            raise RaftlmError(f"sweep models: {err}".replace("--model", "the sweep's models")) from None
    for cell in todo:
        try:
            cfg = cell_config(sweep, cell, root / "runs" / cell.run_id)
            if methods.get(cell.method).trains:  # what train refuses from its settings alone, said now
                methods.check_train(
                    cell.method, cfg.eval.decoder, str(cfg.training.output_dir), cfg.model.trainable
                )
            # the files a cell still to run reads (a data_dir's: STS-B's CSVs) are there: said now, not hours in
            missing = [p for p in data_files(cfg.data) if not p.exists()]
            if missing and not cell_result(root, cell).exists():
                raise RaftlmError(
                    f"dataset {short(cfg.data.dataset)} reads {missing[0]}, which does not exist: check the "
                    "dataset's data_dir"
                )
        except RaftlmError as err:
            raise RaftlmError(f"sweep cell {cell.cell_id}: {err}") from None


AXES = {
    "lr": "lrs:",
    "seed": "seeds:",
    "name": "models:",
    "dataset": "datasets:",
    "train_fraction": "train_fractions:",
}


def option_section(key: str) -> str:
    """The config section of a method entry's extra key (method first: ``normalize_grid``, ``ce_weight``;
    then training, model, data: ``warmup_steps``, ``trainable``...)."""
    if key == "output_dir":  # (it was taken, and each run went to the sweep's runs/ folder anyway)
        raise RaftlmError(
            "output_dir in a sweep's methods entry: a sweep puts each run in its output_dir's runs/ folder; "
            "drop it"
        )
    if key in AXES:
        raise RaftlmError(
            f"{key} in a sweep's methods entry would be overridden by the sweep's own axis: list it under "
            f"{AXES[key]} instead"
        )
    for section in ("method", "training", "model", "data"):
        if key in {f.name for f in fields(SECTIONS[section])}:
            return section
    raise RaftlmError(f"unknown setting {short(key)} in a sweep's methods entry: use a config field name")


def cell_config(sweep: dict, cell: Cell, run_dir: Path) -> Config:
    base = {k: dict(v or {}) for k, v in (sweep.get("base") or {}).items()}  # (a section left empty: {})
    base.setdefault("model", {})["name"] = cell.model
    base.setdefault("data", {}).update(cell.dataset)
    if cell.train_fraction is not None:
        base["data"]["train_fraction"] = cell.train_fraction
    base.setdefault("method", {})["method"] = cell.method
    for key, value in cell.options:
        section = option_section(key)
        if section == "data" and key in cell.dataset and cell.dataset[key] != value:  # (the arm's won unsaid)
            raise RaftlmError(
                f"data.{key} is set by both its dataset entry ({short(cell.dataset[key])}) and its method arm "
                f"({short(value)}): set it in one of them"
            )
        base.setdefault(section, {})[key] = value
    training = base.setdefault("training", {})
    training.update(output_dir=str(run_dir), seed=cell.seed)
    if cell.lr is not None:
        training["lr"] = cell.lr
    base.setdefault("eval", {})["decoder"] = cell.decoder if cell.decoder != "head" else "rail"
    methods.get(cell.method).decoder_name(base["eval"]["decoder"], cell.method)  # one a head reads
    return Config.build(base)


NOT_SETTINGS = ("output_dir", "progress_bar", "report_to", "length_chunks")  # how a cell runs, not what


def config_values(config: Config) -> dict:
    """Every setting of ``config`` as ``section.field: value`` (JSON values), but where or how a run
    reports (``NOT_SETTINGS``)."""
    cfg = json.loads(json.dumps(config.to_dict(), default=str))
    return {
        f"{section}.{key}": value
        for section, fields_ in cfg.items()
        for key, value in fields_.items()
        if not (section == "training" and key in NOT_SETTINGS)
    }


def data_hash(data: DataConfig) -> str | None:
    """The content hash of every local file a dataset reads (``data_files``; None: it reads none). A csv or
    jsonl file's is its own sha256, as cells have recorded it since sweeps hashed data files; any other
    dataset's hashes its files' names and contents, one file included (an Amazon file alone: a titles file
    added beside it later changes the hash, where its own sha256 is what older cells recorded)."""
    files = [p for p in data_files(data) if p.is_file()]
    if not files:
        return None
    if data.dataset.startswith(("csv:", "jsonl:")):
        return _file_hash(files[0])
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{_file_hash(p)}\n".encode())
    return h.hexdigest()


def legacy_data_hash(data: DataConfig) -> str | None:
    """What raftlm recorded before it hashed every file a dataset reads: the file the dataset names (a
    folder's files, a data_dir's, an Amazon file's titles beside it: none). A cell or run that recorded
    it was checked as far as that went, and still is."""
    _, _, path = data.dataset.partition(":")
    return _file_hash(Path(path)) if path and Path(path).is_file() else None


def _file_hash(path: Path) -> str:
    st = path.stat()
    if time.time() - st.st_mtime < 2:  # (as git: an edit within the same timestamp tick that keeps the
        from raftlm.files import file_sha256  # size looks unchanged to the cache, so it is read)

        return file_sha256(path)
    return _data_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _data_changed(recorded: str | None, data: DataConfig) -> bool:
    """Whether ``recorded`` (a cell's or run's data hash) is not the data ``data`` reads now: it is
    neither today's hash nor the one raftlm recorded before it hashed every file read
    (``legacy_data_hash``: None for a data_dir, whose cells and runs cannot be checked and stand). A
    dataset that reads no local file now (a data_dir dropped for the Hub's copy) changed a setting, which
    the settings' check names."""
    if not data_files(data):
        return False
    return recorded != data_hash(data) and recorded != legacy_data_hash(data)


def _data_text(data: DataConfig) -> str:
    files = data_files(data)
    return f"data file{'s' if len(files) > 1 else ''} {', '.join(map(str, files))}"


def cell_settings(sweep: dict, cell: Cell, root: Path) -> str:
    """The fingerprint cells recorded before they recorded their settings (``config``): their config and
    the content of the data file they named (``legacy_data_hash``)."""
    cfg = cell_config(sweep, cell, root / "runs" / cell.run_id)
    return fingerprint(config_values(cfg), legacy_data_hash(cfg.data))


def fingerprint(values: dict, data_sha256: str | None) -> str:
    h = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    if data_sha256 is not None:
        h.update(data_sha256.encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _data_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A data file's content hash, read once per version of the file (every cell of a dataset asks)."""
    from raftlm.files import file_sha256

    return file_sha256(path)


def check_cell_settings(row: dict, cell: Cell, sweep: dict, root: Path, path: Path) -> None:
    """A written cell was computed with this sweep's settings and data. A cell that records its settings
    (``config``) is compared setting by setting: a setting added to raftlm since, at its default, is the
    behaviour the cell ran with and passes; any other difference (a setting or default that changed, other
    data) refuses the cell, naming it. Cells with only a fingerprint compare it; cells written before
    fingerprints have none, and are trusted. The data is every file the cell reads (``data_files``); a cell
    recorded before raftlm hashed them all is compared as far as it recorded (``legacy_data_hash``)."""
    recorded = row.get("config")
    if isinstance(recorded, dict):
        cfg = cell_config(sweep, cell, root / "runs" / cell.run_id)
        now, defaults = config_values(cfg), _default_values()
        changed = [
            f"{key} {short(recorded[key])} -> {short(value)}"
            if key in recorded
            else f"{key} (new) {short(value)}"
            for key, value in now.items()
            if (
                recorded[key] != value and not _followed_batch(key, recorded[key], now)
                if key in recorded
                else value != defaults.get(key)
            )
        ]
        if _data_changed(row.get("data_sha256"), cfg.data):
            changed.append(f"the {_data_text(cfg.data)} changed")
    elif "settings" in row and row["settings"] != cell_settings(sweep, cell, root):
        changed = ["its fingerprint differs"]
    else:
        return
    if changed:
        raise RaftlmError(
            f"cell {path} was computed with other settings or data than the sweep file now gives "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}): write the changed sweep to a "
            f"new output_dir, or delete that cell and runs/{cell.run_id} to recompute it"
        )


def _followed_batch(key: str, before, now: dict) -> bool:
    """eval.batch_size follows training.batch_size unless given (since cda22b2); a cell or run recorded at
    the fixed 16 before, where the sweep leaves it to follow, computed the same numbers (batching changes
    nothing but float summation order), so it stands."""
    return (
        key == "eval.batch_size"
        and before == _default_values()[key]
        and now[key] == now.get("training.batch_size")
    )


@functools.lru_cache(maxsize=1)
def _default_values() -> dict:
    """Every setting's default as ``section.field: value`` (JSON values)."""
    return config_values(Config())


def run_cell(sweep: dict, cell: Cell, root: Path) -> dict:
    from raftlm.data import load_splits
    from raftlm.io import write_jsonl
    from raftlm.pipeline import eval_limit, evaluate_predictor, load_for_eval, train_run

    run_dir = root / "runs" / cell.run_id
    cfg = cell_config(sweep, cell, run_dir)
    settings, data_sha256 = config_values(cfg), data_hash(cfg.data)  # what the cell records it ran with
    splits = load_splits(cfg.data)
    train = {}
    trains = methods.get(cell.method).trains
    if trains:
        check_run_settings(run_dir, cfg)
        if not (run_dir / "eval_results.json").exists():
            fresh = run_dir.exists() and not (run_dir / "config.yaml").exists()
            if data_sha256 is not None and not (run_dir / "config.yaml").exists():
                write_json(run_data_record(run_dir), {"data_sha256": data_sha256})  # (before it trains)
            train_run(cfg, overwrite=fresh, resume=not fresh, evaluate_test=False)  # evaluated below
        train = json.loads((run_dir / "eval_results.json").read_text())["train"]
        # the validation curve outlives the run directory (weights dropped, runs/ not committed)
        write_text(root / CURVES / f"{cell.run_id}.jsonl", (run_dir / "metrics.jsonl").read_text())
        if not _weights(run_dir):
            raise RaftlmError(
                f"run {run_dir} has no weights left (deleted after its cells finished, keep_models: false): "
                f"delete {run_dir} to retrain it, and set keep_models: true to keep models from now on"
            )
        cfg.model.name = str(run_dir)
    predictor = load_for_eval(cfg, splits)
    calibration = uncertainty.Calibration.load(run_dir) if trains else None
    start = time.time()
    # the whole test split unless the sweep sets eval.eval_size (then a sample where the split keeps its
    # file's order): each prediction row carries its example's index in the whole split
    test = eval_limit(splits.test, cfg, splits.in_file_order("test"))
    where = {id(e): i for i, e in enumerate(splits.test)}
    metrics, preds = evaluate_predictor(predictor, test, cfg, desc=cell.cell_id, calibration=calibration)
    rows = [
        {"index": where[id(e)], "target": e.target, "prediction": float(preds.values[i])}
        for i, e in enumerate(test)
    ]
    if preds.probs is not None:
        # PIT = F(target) under the grid histogram (the report's calibration figure reads it)
        values, rest = uncertainty.data_values(predictor), uncertainty.predictor_rest(predictor)
        shift = np.zeros(len(test)) if preds.shift is None else preds.shift  # raft-head's correction
        pit = uncertainty.grid_cdf(values, preds.probs, np.array([e.target for e in test]) - shift, rest)
        for i, r in enumerate(rows):
            r["probs"] = [round(float(p), 6) for p in preds.probs[i]]
            r["entropy"] = float(preds.entropy[i])
            r["pit"] = float(pit[i])
            if preds.shift is not None:
                r["correction"] = float(shift[i])
    write_jsonl(root / "predictions" / f"{cell.cell_id}.jsonl", rows)
    return {
        "dataset": cell.dataset["dataset"],
        "model": cell.model,
        "method": cell.method,
        "decoder": cell.decoder,
        "seed": cell.seed,
        "lr": cell.lr,
        "train_fraction": cell.train_fraction,
        "options": cell.options_label,
        "settings": fingerprint(settings, data_sha256),
        "config": settings,
        "data_sha256": data_sha256,
        **{k: metrics[k] for k in METRICS},
        "best_step": train.get("best_step"),
        "validation_rmse": train.get("best_validation_rmse"),
        "train_runtime_s": train.get("train_runtime_s"),
        "eval_seconds": round(time.time() - start, 1),
        "collapsed": collapse([e.target for e in test], preds.values, preds.grid_alone),
        "run_id": cell.run_id,
        "cell_id": cell.cell_id,
        "grid": predictor.grid.strings,
        **{k: metrics[k] for k in ("crps", "nll", "mean_std") if k in metrics},
        "calibration_n": calibration.n if calibration is not None else None,
        "intervals": metrics.get("intervals", []),
        # raft-head: the test RMSE of its RAIL part alone (the prediction less the correction), what the
        # correction adds without a second test pass
        **({"rail_only_rmse": rail_only_rmse(test, preds)} if preds.shift is not None else {}),
    }


def rail_only_rmse(test: list, preds) -> float:
    """RMSE of a correction head's RAIL part on ``test``: each prediction less its correction."""
    from raftlm.metrics import regression_metrics

    return regression_metrics([e.target for e in test], preds.values - preds.shift)["rmse"]


WEIGHTS = ("*.safetensors",)  # what raftlm writes (a .bin or .pt in a run is not raftlm's to delete)


def _weights(run_dir: Path) -> list[Path]:
    """The weight files raftlm saved into the run (its marker lists them; head.safetensors is a fixed name):
    a user's mine.safetensors beside them is not one. A run from before markers listed files: all of them."""
    marker = read_run_marker(run_dir) or {}
    found = [p for pattern in WEIGHTS for p in run_dir.glob(pattern)]
    if not isinstance(marker.get("files"), list):
        return found
    ours = set(marker["files"]) | RUN_FILES
    return [p for p in found if p.name in ours]


def drop_weights(run_dir: Path) -> int:
    """Delete a finished run's weight files and leftover checkpoints; returns the bytes freed. The
    run's config.yaml, eval_results.json and metrics.jsonl stay; a folder without raftlm's run marker
    keeps everything."""
    import shutil

    if not is_marked_run(run_dir):
        return 0
    freed = 0
    for p in _weights(run_dir):
        freed += p.stat().st_size
        p.unlink()
    ckpt = run_dir / "checkpoints"
    if ckpt.exists():
        freed += sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        shutil.rmtree(ckpt)
    return freed


def run_data_record(run_dir: Path) -> Path:
    """Where a sweep records the content hash of the local data a run trains on (``data_hash``; beside the
    run: a run directory holds only what `raftlm train` writes)."""
    return run_dir.parent / f".{run_dir.name}.data.json"


def check_run_settings(run_dir: Path, cfg: Config) -> None:
    """A run directory a cell resumes or reuses was started with the settings the cell now gives, on the
    same local data (every file it reads, recorded when it started): a sweep edited after a kill, or a
    data file edited since, would otherwise resume (or reuse) a run of the old settings or rows and record
    the new ones."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        started = json.loads(run_data_record(run_dir).read_text(encoding="utf-8")).get("data_sha256")
    except (OSError, ValueError, AttributeError):
        started = None  # (a run started before sweeps recorded it: its data cannot be checked)
    if started is not None and _data_changed(started, cfg.data):
        raise RaftlmError(
            f"run {run_dir} was started on other contents of the {_data_text(cfg.data)} than they hold now: "
            f"delete {run_dir} to train it again on the data as it is, or restore the data"
        )
    before, now = config_values(Config.from_yaml(str(saved))), config_values(cfg)
    changed = [
        f"{k} {short(before.get(k))} -> {short(v)}"
        for k, v in now.items()
        if before.get(k) != v
        and k != "eval.decoder"  # (a run's cells differ in it: each its own decoder)
        and not _followed_batch(k, before.get(k), now)
    ]
    if changed:
        raise RaftlmError(
            f"run {run_dir} was started with other settings than the sweep file now gives "
            f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}): delete {run_dir} to train it "
            "again, or write the changed sweep to a new output_dir"
        )


def stray_cells(root: Path, todo: list[Cell]) -> list[Path]:
    """Cell results in ``root/cells`` that the sweep does not list (an earlier version of its file's)."""
    ids = {c.cell_id for c in todo}
    return sorted(p for p in (root / "cells").glob("*.json") if p.stem not in ids)


def collect(root: Path, todo: list[Cell]) -> list[dict]:
    """results.json and results.csv from the sweep's written cells; a stray cell (not in the sweep now:
    its settings were never checked against it) stays out, so the report never averages it in."""
    ids = {c.cell_id for c in todo}
    rows = [read_cell(p) for p in sorted((root / "cells").glob("*.json")) if p.stem in ids]
    write_json(root / "results.json", rows)
    buf = io.StringIO()
    if rows:  # every key any cell has (heads lack crps); lists and the settings stay in results.json
        nested = ("grid", "intervals", "config", "data_sha256")
        cols = list(dict.fromkeys(k for r in rows for k in r if k not in nested))
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    write_text(root / "results.csv", buf.getvalue())
    return rows


def cell_result(root: Path, cell: Cell) -> Path:
    """Where a sweep writes ``cell``'s result once it is done."""
    return root / "cells" / f"{cell.cell_id}.json"


def first_seed_rivals(cell: Cell, first: int, todo: list[Cell]) -> list[Cell]:
    """The ``first`` seed's cells of ``cell``'s arm and decoder, one per lr: those its lr is chosen on."""
    return [
        c
        for c in todo
        if c.seed == first and c.lr is not None and replace(c, lr=cell.lr, seed=cell.seed) == cell
    ]


def lost_on_first_seed(sweep: dict, cell: Cell, todo: list[Cell], root: Path) -> bool:
    """``lr_choice: first_seed``: whether ``cell`` (a later seed) has an lr that lost on the first seed,
    i.e. whose first-seed validation RMSE is not the lowest among its lrs. Until every first-seed rival
    is written nothing is decided (False: the cell runs)."""
    if sweep.get("lr_choice", "all_seeds") != "first_seed" or cell.lr is None:
        return False
    first = sweep_seeds(sweep)[0]
    if cell.seed == first:
        return False
    scores = {}
    for c in first_seed_rivals(cell, first, todo):
        path = cell_result(root, c)
        score = read_cell(path).get("validation_rmse") if path.exists() else None
        if score is None:
            return False
        scores[c.lr] = score
    return len(scores) > 1 and cell.lr != best_lr(scores)


def cells_to_run(sweep: dict, left: list[Cell]) -> list[Cell]:
    """The cells of ``left`` that will run: under ``lr_choice: first_seed`` a later seed whose lr is not
    yet decided runs at one lr, so its cells at every lr count once (``left`` already lacks the lrs
    that lost)."""
    if sweep.get("lr_choice") != "first_seed":
        return left
    first = sweep_seeds(sweep)[0]
    once = {(c if c.seed == first else replace(c, lr=None)).cell_id: c for c in reversed(left)}
    return list(once.values())


def _arm(run_id: str) -> str:
    """A run's dataset, model, method and settings: its id less the LR, seed and train fraction."""
    return "--".join(run_id.split("--")[:3])


def eta_seconds(sweep: dict, left: list[Cell], done: list[dict]) -> float | None:
    """Time the cells in ``left`` will take, from what the written cells ``done`` recorded: each run
    still to train costs the mean training time of its arm (dataset, model, method and settings: a frozen
    LM's head trains in a fraction of a fine-tuning's time), each cell the mean test time of its arm and
    decoder; where those have none yet, its dataset's mean, then the mean over all datasets. Counting
    cells alone would price a greedy decode of a trained run like its training. Under ``lr_choice:
    first_seed`` a later seed whose lr is not yet decided counts once, not once per lr. None before any
    cell is written."""
    if not done:
        return None
    left = cells_to_run(sweep, left)

    def means(rows: list[dict], key: str, *groups) -> list[dict]:
        """Per group function: {group: mean of ``key``}, then {None: the mean over every row}."""
        out = []
        for group in (*groups, lambda r: None):
            per: dict = {}
            for r in rows:
                if r.get(key) is not None:
                    per.setdefault(group(r), []).append(float(r[key]))
            out.append({g: sum(vs) / len(vs) for g, vs in per.items()})
        return out

    def price(table: list[dict], *keys) -> float:
        return next((t[k] for t, k in zip(table, (*keys, None), strict=True) if k in t), 0.0)

    runs = list({r["run_id"]: r for r in done if r.get("train_runtime_s") is not None}.values())
    train = means(runs, "train_runtime_s", lambda r: _arm(r["run_id"]), lambda r: r["dataset"])
    test = means(done, "eval_seconds", lambda r: (_arm(r["run_id"]), r["decoder"]), lambda r: r["dataset"])
    trained = {r["run_id"] for r in done}
    to_train = {c.run_id: c.dataset["dataset"] for c in left if methods.get(c.method).trains}
    seconds = sum(price(train, _arm(r), d) for r, d in to_train.items() if r not in trained)
    return seconds + sum(price(test, (_arm(c.run_id), c.decoder), c.dataset["dataset"]) for c in left)


def check_sweep_dir(root: Path) -> None:
    """A sweep writes (results.json, sweep.yaml, report.md, ...) only into a new or empty folder, or one a
    sweep wrote (``io.is_sweep_dir``)."""
    if not root.exists() or not any(root.iterdir()) or is_sweep_dir(root):
        return
    names = sorted(p.name for p in root.iterdir())[:4]
    raise RaftlmError(
        f"sweep output_dir {root} holds files no sweep wrote ({', '.join(names)}): raftlm would overwrite "
        "them; choose a new or empty output_dir"
    )


def sweep_file_name(root: Path) -> str | None:
    """The name of the sweep file that owns output folder ``root`` (its marker says; None: a new folder,
    or one written before markers named their sweep)."""
    try:
        marker = json.loads((root / SWEEP_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = marker.get("sweep_file") if isinstance(marker, dict) else None
    return name if isinstance(name, str) and name else None


def _own_copy(root: Path, path: str) -> bool:
    """Whether ``path`` is the copy of the sweep file a sweep saved into ``root`` (its sweep.yaml)."""
    copy_ = root / "sweep.yaml"
    return copy_.is_file() and Path(path).resolve() == copy_.resolve()


def check_same_sweep(root: Path, path: str) -> None:
    """One output folder, one sweep: the sweep file that first wrote ``root`` runs there again (to resume,
    or edited to add or drop cells: results.json then follows the file), and so does the copy it saved
    there (sweep.yaml); a sweep file of another name would replace that sweep's results.json, sweep.yaml
    and report with its own, so it is refused, as `raftlm train` refuses a run directory of other settings.
    (The name, not the path: the same file in another checkout of the project is the same sweep.)"""
    owner, name = sweep_file_name(root), Path(path).name
    if owner is None or owner == name or _own_copy(root, path):
        return
    raise RaftlmError(
        f"sweep output_dir {root} holds the results of sweep file {owner}, not {name}: give {name} an "
        f"output_dir of its own (it would replace {owner}'s results.json and sweep.yaml), or run {owner} "
        "(or the sweep.yaml saved there) to resume that sweep"
    )


def read_cell(path: Path) -> dict:
    """A written cell's JSON; a damaged one (edited, or a disk error) is one line saying how to redo it."""
    row = read_json(path, "delete it to run that cell again")
    if why := cell_problem(row):
        raise RaftlmError(
            f"cell result {path} is not a cell's result ({why}): delete it to run that cell again"
        )
    return row


def _open_sweep(path: str, quiet: bool = False) -> tuple[dict, dict, Path, list[Cell]]:
    """The sweep file read and checked as a run starts (every cell's config builds, the output folder is a
    sweep's or new): (sweep, the sweep as written, its output folder, its cells)."""
    sweep = load_sweep(path)
    as_written = copy.deepcopy(sweep)
    if quiet:  # every cell's bars and loss lines off (a setting of how runs report, not of what they train)
        base = sweep.get("base") or {}
        sweep["base"] = {**base, "training": {**(base.get("training") or {}), "progress_bar": False}}
    check_no_tilde(sweep["output_dir"], "sweep output_dir")
    root = Path(sweep["output_dir"])
    todo = cells(sweep)
    if not todo:
        raise RaftlmError(f"sweep file {path} has no cells to run: list datasets, models and methods")
    check_cells(sweep, todo, root)
    check_sweep_dir(root)
    check_same_sweep(root, path)
    return sweep, as_written, root, todo


def _check_written(sweep: dict, todo: list[Cell], root: Path) -> dict[str, dict]:
    """The written results by cell id, each checked: a damaged or stale one fails now, not after hours of
    other cells."""
    written, runs = {}, set()
    for c in todo:
        path = cell_result(root, c)
        if path.exists():
            written[c.cell_id] = read_cell(path)
            check_cell_settings(written[c.cell_id], c, sweep, root, path)
        elif c.run_id not in runs and methods.get(c.method).trains:  # a killed run it would resume
            runs.add(c.run_id)
            run_dir = root / "runs" / c.run_id
            check_run_settings(run_dir, cell_config(sweep, c, run_dir))
    return written


def cell_states(sweep: dict, todo: list[Cell], root: Path) -> list[str]:
    """Each cell's state now, in run order: "written", "skipped" (``lr_choice: first_seed``: its LR lost
    on the first seed), "to run", or "run or skip" (a later seed whose LR waits for the first seed's
    cells: the first seed decides which of its LRs runs)."""
    first = sweep_seeds(sweep)[0] if sweep.get("lr_choice") == "first_seed" else None
    states = []
    for c in todo:
        if cell_result(root, c).exists():
            states.append("written")
        elif lost_on_first_seed(sweep, c, todo, root):
            states.append("skipped")
        elif first is not None and c.lr is not None and c.seed != first and _undecided(c, first, todo, root):
            states.append("run or skip")
        else:
            states.append("to run")
    return states


def _undecided(cell: Cell, first: int, todo: list[Cell], root: Path) -> bool:
    """Whether a later seed's LR still waits for the ``first`` seed's cells (more than one LR there, not
    every one written)."""
    rivals = first_seed_rivals(cell, first, todo)
    return len({c.lr for c in rivals}) > 1 and not all(cell_result(root, c).exists() for c in rivals)


def plan_sweep(path: str) -> str:
    """``raftlm experiment SWEEP --dry-run``: what a run of the sweep would do now, read from its file and
    its written cells (checked as a run checks them); runs nothing and writes nothing."""
    sweep, _, root, todo = _open_sweep(path)
    written = _check_written(sweep, todo, root)
    states = cell_states(sweep, todo, root)
    done = list(written.values())
    left = [c for c, s in zip(todo, states, strict=True) if s not in ("written", "skipped")]
    width = max(map(len, states))
    lines = []
    for c, s in zip(todo, states, strict=True):
        last = latest_complete_checkpoint(root / "runs" / c.run_id / "checkpoints")
        resumes = f"  (resumes from step {last.name.rsplit('-', 1)[1]})" if last and s != "written" else ""
        lines.append(f"{s:<{width}}  {c.cell_id}{resumes}")
    seconds = eta_seconds(sweep, left, done)
    eta = (
        "" if seconds is None or not left else f", about {seconds / 60:.0f} min from the written cells' times"
    )
    runs = len(cells_to_run(sweep, left))
    skipped = states.count("skipped")
    lines.append(
        f"{len(done)} of {len(done) + runs} cells written, {runs} to run{eta}"
        + (f", {skipped} skipped (their LR lost on the first seed)" if skipped else "")
        + (", run or skip: the first seed's cells choose which LR runs" if "run or skip" in states else "")
        + (f"; next: {left[0].cell_id}" if left else "")
        + f" ({root})"
    )
    if stray := stray_note(root, todo):
        lines.append(stray)
    return "\n".join(lines)


def stray_note(root: Path, todo: list[Cell]) -> str | None:
    """What a sweep says of cell results in its folder that it does not list."""
    stray = stray_cells(root, todo)
    if not stray:
        return None
    return (
        f"{len(stray)} cell result{'s' if len(stray) > 1 else ''} in {root / 'cells'} "
        f"{'are' if len(stray) > 1 else 'is'} not in this sweep (e.g. {stray[0].name}: an earlier version of the "
        "file's?): left out of results.json and the report; list its entry again, or move it out"
    )


def run_sweep(path: str, quiet: bool = False) -> Path:
    sweep, as_written, root, todo = _open_sweep(path, quiet)
    root.mkdir(parents=True, exist_ok=True)
    # the marker names the sweep file that owns the folder (check_same_sweep): the first to write it (a
    # resume from the saved copy, sweep.yaml, names none of its own)
    owner = sweep_file_name(root) or (None if _own_copy(root, path) else Path(path).name)
    marker = {"format": "raftlm-sweep", "version": 1, **({"sweep_file": owner} if owner else {})}
    write_json(root / SWEEP_MARKER, marker)
    from raftlm.cache import reuse_stores  # (torch: only when cells run)

    # cells that differ in LR, seed or what trains above the frozen blocks share their cached states
    with output_lock(root, "the sweep's results"), reuse_stores():
        ran = _run_cells(sweep, todo, root, None if _own_copy(root, path) else as_written)
    done = sum(cell_result(root, c).exists() for c in todo)
    skipped = f", {len(todo) - done} skipped (lr_choice first_seed)" if done < len(todo) else ""
    print(f"{done} of {len(todo)} cells done ({ran} run now{skipped}): {root / 'results.csv'}")
    return root


def _run_cells(sweep: dict, todo: list[Cell], root: Path, as_written: dict | None) -> int:
    """Run every cell of ``todo`` not written yet; returns how many ran. ``as_written`` is the sweep file
    as the user wrote it (saved beside the results; None: the sweep runs from that copy, which stays as
    the user edited it, comments and layout)."""
    keep = bool(sweep.get("keep_models", False))
    (root / "cells").mkdir(parents=True, exist_ok=True)
    for folder in (root, root / "cells", root / "predictions", root / CURVES):
        clean_stale_tmp(folder)  # left by a kill during a write
    result = functools.partial(cell_result, root)
    _check_written(sweep, todo, root)
    if stray := stray_note(root, todo):
        log.warning(stray)
    if as_written is not None:
        write_text(root / "sweep.yaml", yaml.safe_dump(as_written, sort_keys=False))
    collect(root, todo)  # results.json as the file lists cells now (a kill in the first cell: not the old)
    skip = lambda c: lost_on_first_seed(sweep, c, todo, root)  # noqa: E731
    ran = 0
    for cell in todo:
        if result(cell).exists():
            continue
        if skip(cell):
            log.info(
                f"  {cell.cell_id}: skipped, lr {cell.lr:g} lost on the first seed (lr_choice first_seed)"
            )
            continue
        left = [c for c in todo if not result(c).exists() and not skip(c)]
        done = [read_cell(result(c)) for c in todo if result(c).exists()]
        seconds = eta_seconds(sweep, left, done)
        eta = "ETA after the first cell" if seconds is None else f"ETA {seconds / 60:.0f} min"
        total = len(done) + len(cells_to_run(sweep, left))  # not the lrs that lost on the first seed
        log.info(f"[{len(done) + 1}/{total} cells] {cell.cell_id} ({eta})")
        write_json(result(cell), run_cell(sweep, cell, root))
        ran += 1
        run_dir = root / "runs" / cell.run_id
        siblings = [c for c in todo if c.run_id == cell.run_id]  # the run's other decoders
        if not keep and run_dir.exists() and all(result(c).exists() or skip(c) for c in siblings):
            freed = drop_weights(run_dir)
            log.info(f"  {cell.run_id}: every cell written, weights deleted ({freed / 2**20:.0f} MB)")
        collect(root, todo)
    collect(root, todo)
    return ran
