"""The jobs behind the CLI and the Python API: prepare, train, evaluate, predict.

A run directory holds: config.yaml (resolved), the model (safetensors) and tokenizer, raftlm.json,
metrics.jsonl, eval_results.json (written last: its presence marks a finished run), and while
training, checkpoints/ (for resume).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import set_seed

from raftlm import methods, uncertainty
from raftlm.config import VAL_SIZE, Config
from raftlm.core import (
    Example,
    RaftlmError,
    Splits,
    env_flag,
    launch_state,
    short,
    warn,
)
from raftlm.data import cap, cap_words, load_splits
from raftlm.grid import Grid, TargetScaler, make_scaler
from raftlm.io import (
    CHECKPOINT_NAME,
    FINAL_NAME,
    FINAL_PREFIX,
    HIDDEN_CACHE_NAME,
    HIDDEN_CACHE_PREFIX,
    HIDDEN_CACHE_SUFFIX,
    INT8_MAXIMA_FILE,
    claim,
    clean_stale_tmp,
    every_rank_failed,
    is_marked_run,
    launch_size,
    make_folder,
    move_into_run,
    on_rank_zero,
    output_lock,
    recover_swap,
    write_json,
    write_run_marker,
    write_text,
)
from raftlm.metrics import regression_metrics
from raftlm.modelcard import write_model_card
from raftlm.models import (
    add_number_tokens,
    attach_head,
    detach_head,
    is_int8,
    is_smoothed,
    load_model,
    set_trainable,
    unwrap_for_saving,
)
from raftlm.predictor import Predictor
from raftlm.prompts import template_fields
from raftlm.run import (
    FINISHED_FILE,
    check_run_dir,
    discard_failed,
    discard_staged,
    is_run_dir,
    load_run,
    save_run,
    swap_in,
    writable_place,
)
from raftlm.training import fit, latest_complete_checkpoint, reporting


@contextlib.contextmanager
def no_load_bars(quiet: bool):
    """transformers' own bars ("Loading weights", "Writing model shards") off while loading, when
    ``quiet`` (``--quiet``, ``RAFTRegressor(progress_bar=False)``); back as they were after."""
    from transformers.utils import logging as hf_logging

    on = hf_logging.is_progress_bar_enabled()
    if quiet and on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and on:
            hf_logging.enable_progress_bar()


def grid_and_scaler(
    cfg: Config, train: list[Example], grid_spec: str, default_range: object
) -> tuple[Grid, TargetScaler]:
    """The grid and target scaling ``cfg`` gives for data whose own defaults are ``grid_spec`` and
    ``default_range`` (used where ``cfg`` says "dataset"), fitted on ``train``'s targets: what a run of
    ``cfg`` scores and trains on. A fixed-grid method's grid is written into ``cfg.method``."""
    m, method = cfg.method, methods.get(cfg.method.method)
    if method.fixed_grid and (m.grid or grid_spec) != method.fixed_grid:
        m.grid = method.fixed_grid  # table 15: targets scaled to [0, 1], p1 = p('1')
        if m.target_range == "dataset" and default_range is None:
            m.target_range = "auto"
    grid = Grid.parse(m.grid or grid_spec, single=m.single_value_grid)
    target_range = default_range if m.target_range == "dataset" else m.target_range
    return grid, make_scaler(grid, [e.target for e in train], target_range)


def new_predictor(
    cfg: Config, splits_or_examples: Splits | list[Example], template: str = "{text}"
) -> Predictor:
    """A pretrained model bound to a grid, target scaling and answer format from ``cfg`` and the data;
    with a predictive head attached when the method has one."""
    m = cfg.method
    method = methods.get(m.method)
    encoder = method.encoder
    if method.causal_only and cfg.model.attention == "bidirectional":
        raise RaftlmError(
            f"{m.method} with bidirectional attention degenerates (every answer token sees itself): use "
            f"--attention causal for {m.method}"
        )
    if isinstance(splits_or_examples, Splits):
        train, template = splits_or_examples.train, splits_or_examples.template
        grid_spec, default_range = splits_or_examples.grid, splits_or_examples.target_range
    else:
        train, grid_spec, default_range = splits_or_examples, "1-5", "auto"
    grid, scaler = grid_and_scaler(cfg, train, grid_spec, default_range)
    set_seed(cfg.training.seed)
    with no_load_bars(not cfg.training.progress_bar):
        model, tok = load_model(
            cfg.model.name,
            dropout=cfg.model.dropout,
            seed=cfg.training.seed,
            encoder=encoder,
            init=cfg.model.init,
        )
    extra = {}
    if m.new_tokens and not encoder:
        new = add_number_tokens(model, tok, list(grid.strings), m.new_tokens, cfg.training.seed)
        grid = Grid(grid.values, tuple(new))
        extra["new_tokens"] = m.new_tokens
    probes = [e.text for e in train[:8]]
    predictor = Predictor.create(
        model,
        tok,
        grid,
        scaler,
        probes,
        template,
        answer_prefix=m.answer_prefix,
        normalize_grid=m.normalize_grid,
        max_length=cfg.data.max_length,
        method=m.method,
        bind=not encoder,
        bidirectional=cfg.model.attention == "bidirectional",
    )
    if pair := symmetric_pair(cfg.data.pair_swap, splits_or_examples, template):
        extra["pair_swap"] = pair
    predictor.extra.update(extra)
    if method.head is not None:
        targets = [e.target for e in train if e.target is not None]
        bias = float(np.mean(scaler.to_grid(targets))) if targets else 0.0
        predictor.head = method.head(predictor, m, bias)
        attach_head(predictor.model, predictor.head)
    return predictor


def symmetric_pair(pair_swap: str | None, splits: Splits | list, template: str) -> list[str] | None:
    """The two template fields whose orders a run trains on and averages (``data.pair_swap``): those named,
    or (``dataset``) the dataset's own pair where its template still has both fields; None for none."""
    if pair_swap == "dataset":
        own = splits.pair_swap if isinstance(splits, Splits) else None
        fields_ = template_fields(template)
        return own.split(",") if own and all(f in fields_ for f in own.split(",")) else None
    if not pair_swap:
        return None
    pair = pair_swap.split(",")
    absent = [f for f in pair if f not in template_fields(template)]
    if absent:
        raise RaftlmError(
            f"pair_swap names {absent[0]!r}, which the prompt template {short(template)} lacks: name two of "
            f"its fields {template_fields(template)}"
        )
    return pair


def both_orders(predictor: Predictor, train: list[Example]) -> list[Example]:
    """With a symmetric pair (``data.pair_swap``), the training examples in both orders: each example and
    its other order, with the same target. Without one, ``train`` as it is."""
    if predictor.pair is None:
        return train
    other = predictor.texts_of(train)[len(train) :]
    return train + [Example(text, e.target) for text, e in zip(other, train, strict=True)]


def make_trainable(predictor: Predictor, cfg: Config) -> None:
    """Freeze/unfreeze per ``cfg.model.trainable`` (or wrap in LoRA); a head always trains, whole (it is
    detached while LoRA wraps the backbone: peft put adapters on the head's own Linear layers, trained
    beside their full weights, one never read (MultiheadAttention reads out_proj.weight directly))."""
    if predictor.head is not None:
        detach_head(predictor.model)
    predictor.model = set_trainable(
        predictor.model, cfg.model.trainable, cfg.model.lora_r, cfg.model.lora_alpha
    )
    if predictor.head is not None:
        # an encoder's pooler (BERT's) feeds no head (they read the hidden states): frozen, as its gradient is
        # none anyway; under DDP, where the head runs outside DDP's forward, a trainable parameter without a
        # gradient failed the second step ("Expected to have finished reduction in the prior iteration")
        for name, module in predictor.model.named_modules():
            if name.split(".")[-1] == "pooler":
                module.requires_grad_(False)
        # so is an LM head not tied to the input embeddings under a head that reads hidden states only
        # (Llama-3-8B, Qwen2.5-7B; the tiny test model), where DDP needs it (its logits feed no loss): one
        # process trains the same numbers either way, and its checkpoints of earlier versions resume
        reads_logits = getattr(predictor.head, "reads_logits", True)
        out = None if reads_logits or launch_size() < 2 else predictor.model.get_output_embeddings()
        if out is not None and out.weight is not predictor.model.get_input_embeddings().weight:
            out.requires_grad_(False)
        attach_head(predictor.model, predictor.head)


def validation_subset(splits: Splits, cfg: Config) -> list[Example]:
    """The validation examples used while training (``data.val_size``: ``raftlm.data.cap``)."""
    return cap(splits.validation, cfg.data.val_size, splits.in_file_order("validation"), cfg.data.split_seed)


def eval_limit(examples: list[Example], cfg: Config, file_order: bool) -> list[Example]:
    """What ``evaluate`` scores: the whole split unless ``eval.eval_size`` limits it (``raftlm.data.cap``;
    ``file_order``: the examples are in their source's order, e.g. a file given with --input)."""
    return cap(examples, cfg.eval.eval_size, file_order, cfg.data.split_seed)


def predict_texts(predictor: Predictor, texts: list[str], cfg: Config, desc: str | None):
    """Predictions of finished prompts with the decoder and decoding settings of ``cfg.eval``."""
    e = cfg.eval
    return predictor.predict(
        texts,
        e.decoder,
        e.batch_size,
        e.num_samples,
        e.temperature,
        e.max_new_tokens,
        e.bf16,
        cfg.training.seed,
        desc=desc if cfg.training.progress_bar else None,
    )


def predict_examples(predictor: Predictor, examples: list[Example], cfg: Config, desc: str | None):
    """Predictions of examples (with a symmetric pair, the mean over both orders of each)."""
    preds = predict_texts(predictor, predictor.texts_of(examples), cfg, desc)
    return predictor.average_orders(preds, cfg.eval.decoder)


def evaluate_predictor(
    predictor: Predictor,
    examples: list[Example],
    cfg: Config,
    desc: str = "evaluate",
    calibration: uncertainty.Calibration | None = None,
    asked: bool = False,
) -> tuple[dict, object]:
    """Point metrics, plus (``uncertainty.evaluation``) CRPS / NLL of the grid distribution and interval
    coverage and width: conformal kinds with a ``calibration``, at ``eval.interval`` or 80/90/95 %."""
    if not examples or any(e.target is None for e in examples):
        raise RaftlmError("evaluation needs examples with targets: choose a split or file that has them")
    decoder = predictor.decoder_name(cfg.eval.decoder)
    preds = predict_examples(predictor, examples, cfg, desc)
    metrics = {**regression_metrics([x.target for x in examples], preds.values), "decoder": decoder}
    e = cfg.eval
    levels = [e.interval] if e.interval else uncertainty.LEVELS
    kinds = None if e.interval_kind == "auto" else [e.interval_kind]
    targets = [x.target for x in examples]
    # ``asked``: `raftlm evaluate`'s --interval / --interval-kind, refused in one line when they cannot be
    # given (train's test split, a sweep cell and the demo report what they can, after all their training)
    asked = asked and (bool(e.interval) or kinds is not None)
    metrics.update(
        uncertainty.evaluation(predictor, preds, targets, calibration, levels, kinds, e.decoder, asked)
    )
    if decoder in ("greedy", "sample-rail"):
        metrics["unparsed"] = preds.n_unparsed
        # decodes far outside the target range (e.g. '100' on a 0-5 scale) dominate RMSE: count them
        g = predictor.scaler.to_grid(preds.values)
        metrics["outside_grid_range"] = int(((g < predictor.grid.low) | (g > predictor.grid.high)).sum())
    elif preds.probs is not None:  # a grid model's, or raft-head's (its grid distribution, shifted)
        metrics["mean_entropy"] = float(np.mean(preds.entropy))
        metrics["mean_grid_mass"] = float(np.mean(preds.probs.sum(-1)))
    return metrics, preds


def is_main_process() -> bool:
    return launch_state().is_main_process


def _barrier() -> None:
    launch_state().wait_for_everyone()


@dataclass
class Run:
    """A finished run: its directory, the trained predictor (in memory) and eval_results.json."""

    path: Path
    predictor: Predictor
    results: dict


def train_run(cfg: Config, overwrite: bool = False, resume: bool = False, evaluate_test: bool = True) -> Path:
    """Train per ``cfg`` into ``cfg.training.output_dir``; returns the finished run directory."""
    return fit_run(cfg, overwrite, resume, evaluate_test).path


def _resumed_config(cfg: Config, out: Path) -> Config:
    """What ``--resume`` continues: the run's saved config.yaml (its data, model, method and training),
    with only how the run reports or splits its batches taken from the flags given now; without a saved
    config (killed before it was written), ``cfg``."""
    if not (out / "config.yaml").is_file() or not is_marked_run(out):
        return cfg
    resumed = Config.from_yaml(str(out / "config.yaml"))
    for name in ("progress_bar", "report_to", "length_chunks", "output_dir"):
        setattr(resumed.training, name, getattr(cfg.training, name))
    if resumed.to_dict() != cfg.to_dict():
        changed = _config_changes(resumed.to_dict(), cfg.to_dict())
        warn(
            f"resuming with the run's saved config.yaml; settings given now that differ from it are ignored "
            f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}): pass --overwrite to train "
            "afresh with them"
        )
    return resumed


def _config_changes(saved: dict, given: dict, prefix: str = "") -> list[str]:
    """``section.field (saved -> given)`` for each setting that differs."""
    said = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            said += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            said.append(f"{prefix}{key} {short(a)} -> {short(b)}")
    return said


def fit_run(
    cfg: Config,
    overwrite: bool = False,
    resume: bool = False,
    evaluate_test: bool = True,
    splits: Splits | None = None,
    callbacks: list | tuple = (),
    output_name: str = "--output-dir",
) -> Run:
    """Train per ``cfg`` into ``cfg.training.output_dir`` (``raftlm train`` and ``RAFTRegressor.fit``):
    ``splits`` default to ``cfg.data``'s; ``callbacks`` are more Trainer callbacks; ``output_name`` is what
    errors call the run directory (``output_dir`` in RAFTRegressor).

    Under ``accelerate launch`` every process trains (Trainer does DDP); only the main process writes
    the run directory and evaluates on the test split.
    """
    methods.check_train(
        cfg.method.method, cfg.eval.decoder, cfg.training.output_dir, cfg.model.trainable, output_name
    )
    check_sharding()
    reporting(cfg.training.report_to)  # a tracker that is not installed fails before any work
    out = Path(cfg.training.output_dir)
    if resume:  # the run continues as it was saved, its data included
        cfg = _resumed_config(cfg, out)
    if splits is None:  # before touching the disk: bad data leaves nothing behind
        splits = load_splits(cfg.data)
    if not splits.train:
        raise RaftlmError(
            f"dataset {cfg.data.dataset} has no training examples: check the file or its split column"
        )
    asked = [
        name
        for name, on in (
            ("patience", cfg.training.patience),
            ("val_size", cfg.data.val_size not in (None, VAL_SIZE)),  # set, not the default
        )
        if on
    ]
    if asked and not splits.validation:  # settings that need a validation split, without one
        warn(
            f"{' and '.join(asked)} {'do' if len(asked) > 1 else 'does'} nothing: the data have no validation "
            "split (training keeps its last step and writes no calibration); give one (a split column with "
            "'validation' rows, or fit(..., eval_set=...))"
        )
    out = writable_place(out, output_name)
    with output_lock(out, "the run directory"):
        return _fit_locked(cfg, out, overwrite, resume, evaluate_test, splits, callbacks, output_name)


def check_sharding() -> None:
    """FSDP across several processes is refused before any work: after training rank 0 alone calibrates,
    evaluates and saves, and each forward pass of an FSDP-sharded model gathers its weights from every
    rank, so the run would hang at its end (after all its training). FSDP on one process (what
    benchmarks/gpu.py checks) and DDP across many run."""
    if env_flag("ACCELERATE_USE_FSDP") and (n := launch_size()) > 1:
        raise RaftlmError(
            f"FSDP across {n} processes is not supported yet: rank 0 alone evaluates and saves the trained "
            "model, which a sharded model cannot do (the run would hang at its end): train with DDP "
            "(recipes/accelerate/ddp.yaml), or LoRA (trainable: lora) on one GPU"
        )


def _fit_locked(
    cfg: Config,
    out: Path,
    overwrite: bool,
    resume: bool,
    evaluate_test: bool,
    splits: Splits,
    callbacks,
    output_name: str,
) -> Run:
    # an --overwrite a kill interrupted is finished by rank 0 first: its refusal (a user's file in the run)
    # is every rank's (the others waited SWAP_WAIT for it, then sat alone at the next barrier)
    on_rank_zero(lambda: recover_swap(out))
    build = check_run_dir(out, overwrite, resume, output_name)
    _barrier()  # every rank has looked at the folder before rank 0 changes it
    on_rank_zero(lambda: _clear_for(build, out))  # (rank 0's error is every rank's, here and below)
    created = not build.exists()
    was_empty = created or not any(build.iterdir())
    on_rank_zero(lambda: _start_run_dir(build))
    try:
        predictor, results = _train_into(build, cfg, splits, resume, evaluate_test, callbacks)
    except BaseException as err:
        # a staged --overwrite run goes (the old run stays as it was); so does a new run directory
        # with no checkpoint to resume from. Never a finished one (eval_results.json written)
        finished = (build / FINISHED_FILE).is_file()
        nothing_to_resume = was_empty and latest_complete_checkpoint(build / "checkpoints") is None
        discard = not finished and (build != out or nothing_to_resume)
        if is_main_process() and discard:
            discard_failed(build, out, created)
        if isinstance(err, KeyboardInterrupt):  # what the interrupt left, for the CLI's one line
            err.raftlm_hint = _interrupted_hint(
                build, out, finished, discard and is_main_process(), cfg.training.keep_checkpoints
            )
        if every_rank_failed(err):  # the others wait for rank 0's cleaning: the launcher stops the rest of
            _barrier()  # a launch once one process exits, and a kill mid-cleaning would leave it half done
        raise
    if build != out:
        try:
            on_rank_zero(lambda: swap_in(build, out))
        except KeyboardInterrupt as stop:  # (deleting a large old run takes seconds)
            stop.raftlm_hint = (
                f"the new run had finished and was being swapped in: the next raftlm command of {out} "
                "completes the swap (its journal says how far it got)"
            )
            raise
    _barrier()
    if not cfg.training.keep_checkpoints:
        on_rank_zero(lambda: _drop_checkpoints(out))
    return Run(out, predictor, results)


def _interrupted_hint(build: Path, out: Path, finished: bool, discarded: bool, keep_checkpoints: bool) -> str:
    """What an interrupted train left and what to run next (said from what is on disk now)."""
    if finished and build != out:
        return (
            f"the new run had finished but was not swapped in: {out} is the old run; keep the new one with "
            f"`mv {out} {out}.old && mv {build} {out}`"
        )
    if finished:
        dropped = not keep_checkpoints and (out / "checkpoints").exists()
        left = " (delete its checkpoints/ folder: it was not dropped)" if dropped else ""
        return f"the run had finished: {out} is whole{left}"
    if build != out:
        gone = (
            "was discarded"
            if not build.exists()
            else f"stays in {build} (it holds files raftlm did not write)"
        )
        return f"the old run {out} is as it was and the unfinished new one {gone}: rerun with --overwrite"
    if discarded:
        kept = "removed" if not build.exists() else "emptied: it is your folder"
        return f"no checkpoint had been saved, so nothing was kept ({out} {kept}): run the command again"
    return "resume with --resume (from the last checkpoint)"


def _drop_checkpoints(out: Path) -> None:
    """A finished run's checkpoints, last (an interrupt here leaves a whole run and part of checkpoints/)."""
    folder = out / "checkpoints"
    try:
        if folder.is_dir() and not folder.is_symlink():
            for ckpt in folder.iterdir():  # Trainer's checkpoints only: a file of yours there stays, and so
                if CHECKPOINT_NAME.fullmatch(ckpt.name) and ckpt.is_dir() and not ckpt.is_symlink():
                    shutil.rmtree(ckpt, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # does the folder, then
    except KeyboardInterrupt as stop:
        stop.raftlm_hint = f"the run had finished: {out} is whole (delete what is left of {out}/checkpoints)"
        raise


def _clear_for(build: Path, out: Path) -> None:
    if build != out:
        discard_staged(build, out)  # a staged run of an earlier --overwrite that never finished
    elif out.exists():
        _clean_leftovers(out)


def _start_run_dir(build: Path) -> None:
    _make_dir(build)
    write_run_marker(build)  # first: from here on the directory is provably raftlm's


def _clean_leftovers(run_dir: Path) -> None:
    """What a kill (SIGKILL cannot be caught) left in a run directory: temp files of atomic writes and
    a half-saved final model; cleaned at the next start."""
    clean_stale_tmp(run_dir)
    for tmp in run_dir.glob(f"{FINAL_PREFIX}*"):
        if FINAL_NAME.fullmatch(tmp.name) and tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
    for cache in run_dir.glob(
        f"{HIDDEN_CACHE_PREFIX}*{HIDDEN_CACHE_SUFFIX}"
    ):  # the frozen-block cache's file
        if HIDDEN_CACHE_NAME.fullmatch(cache.name) and cache.is_file():
            cache.unlink(missing_ok=True)


def _make_dir(path: Path) -> None:
    make_folder(path, f"run directory {path}", "choose a writable --output-dir")


def _train_into(
    build: Path, cfg: Config, splits: Splits, resume: bool, evaluate_test: bool, callbacks=()
) -> tuple[Predictor, dict]:
    predictor = new_predictor(cfg, splits)
    make_trainable(predictor, cfg)
    on_rank_zero(lambda: write_text(build / "config.yaml", cfg.to_yaml()))
    validation = validation_subset(splits, cfg)
    summary = fit(
        predictor,
        both_orders(predictor, splits.train),
        validation,
        cfg,
        build,
        resume=resume,
        callbacks=callbacks,
    )
    results = {"train": summary, "n_train": len(splits.train)}
    if splits.validation:  # which validation examples chose the checkpoint (--val-size)
        results["validation"] = {
            "n": len(validation),
            "split_size": len(splits.validation),
            "chosen": cap_words(splits.in_file_order("validation"))
            if len(validation) < len(splits.validation)
            else "all",
        }
    if splits.source:  # e.g. STS-B from the Hub (id, revision) or from --data-dir
        results["data_source"] = splits.source
    on_rank_zero(lambda: _finish_run(predictor, build, cfg, splits, results, evaluate_test))
    return predictor, results


def _finish_run(
    predictor: Predictor, build: Path, cfg: Config, splits: Splits, results: dict, evaluate_test: bool
):
    """Rank 0's end of a run: the trained weights saved as trained (float32), then the model as every later
    command loads the run (``eval.device``, ``eval.dtype``: bfloat16 weights on a GPU by default) calibrates
    and measures the test split, so eval_results.json, the model card and calibration.json are what `raftlm
    evaluate`, `predict`, the server and ``RAFTRegressor.load`` get. ``predictor`` itself stays as trained
    (``fit``'s estimator saves it again)."""
    with _saved_weights(predictor, build, splits.train, cfg.eval.batch_size) as names:
        # the run's last files, claimed before any is written (a README.md of yours there is refused)
        last = [*(p.name for p in names), "calibration.json", "README.md", FINISHED_FILE]
        claim(build, last, RESUME_FIX)
        placed = placed_for_eval(predictor, cfg)
        calibration = None
        if cfg.training.calibrate and splits.validation:  # the whole split, not the val_size subset
            e = cfg.eval
            calibration = uncertainty.calibrate(
                placed,
                splits.validation,
                e.batch_size,
                e.bf16,
                desc="calibrate" if cfg.training.progress_bar else None,
            )
            calibration.save(build)
            results["calibration"] = {"source": calibration.source, "n": calibration.n}
        if splits.test and evaluate_test:  # callers that evaluate the test split themselves skip this
            results["test"], _ = evaluate_predictor(placed, splits.test, cfg, "test", calibration)
        _finalize(build, names, results)


def placed_for_eval(predictor: Predictor, cfg: Config) -> Predictor:
    """``predictor`` as ``load_for_eval`` places a run (``eval.device``, ``eval.dtype``): itself where that
    changes nothing (a CPU's float32), else a copy there, the trained weights left as they are. int8 (CPU
    only, from the saved float32 weights) is left to the commands that load the run: a quantization
    failing here would fail the run after all its training."""
    from raftlm.models import resolve_device, resolve_dtype

    device = resolve_device(cfg.eval.device)
    if cfg.eval.dtype == "int8" or (
        predictor.device == device and predictor.dtype == resolve_dtype(cfg.eval.dtype, device)
    ):
        return predictor
    return copy.deepcopy(predictor).to(cfg.eval.device, cfg.eval.dtype)


@contextlib.contextmanager
def _saved_weights(predictor: Predictor, out: Path, train, batch_size: int):
    """The model (LoRA merged: the layers --dtype int8 will see), SmoothQuant's activation maxima for
    ``--dtype int8`` (measured on training rows) and the tokenizer saved into a temporary folder in ``out``;
    yields their names (``_finalize`` moves them into place)."""
    predictor.model = unwrap_for_saving(predictor.model)
    try:
        predictor.record_int8_maxima(train, "train", batch_size=batch_size)  # (a batch lowered for memory)
    except RaftlmError as err:  # an optional file: the trained run is saved without it
        warn(f"no int8 activation maxima recorded ({err}); --dtype int8 will run plain int8")
    with tempfile.TemporaryDirectory(dir=out, prefix=FINAL_PREFIX) as tmp:
        save_run(predictor, tmp)
        yield [Path(tmp) / f.name for f in Path(tmp).iterdir()]


RESUME_FIX = "run `raftlm train --resume` with the same settings"


def _finalize(out: Path, saved: list[Path], results: dict) -> None:
    """The saved files moved into the run (listed in its marker first), the model card (README.md) beside
    them, eval_results.json last (it marks a finished run). The checkpoints stay until the run is in place
    (``_drop_checkpoints``): a failure before then can --resume."""
    move_into_run(out, saved, RESUME_FIX)
    write_model_card(out, results)
    write_json(out / FINISHED_FILE, results)


def entropy_change(
    run: Predictor, base_model: str, texts: list[str], cfg: Config
) -> tuple[np.ndarray, np.ndarray]:
    """Appendix E.8: per-example entropy of the grid distribution before (the base model, same grid,
    prompt and answer format) and after fine-tuning."""
    if not run.has_grid or run.fmt is None or run.extra.get("new_tokens"):
        raise RaftlmError(
            "entropy analysis needs a grid model (raft, raft-head, ce, mbr): other heads and new tokens have "
            "no base grid"
        )
    quiet = not cfg.training.progress_bar
    with no_load_bars(quiet):
        model, tok = load_model(base_model, seed=cfg.training.seed)
    base = Predictor(
        model,
        tok,
        run.grid,
        run.fmt,
        run.scaler,
        run.template,
        normalize_grid=run.normalize_grid,
        max_length=run.max_length,
    )
    base.to(cfg.eval.device, cfg.eval.dtype)
    e = cfg.eval
    bar = lambda what: None if quiet else f"entropy ({what})"  # noqa: E731
    before = base.predict(texts, "rail", e.batch_size, bf16=e.bf16, desc=bar("base")).entropy
    after = run.predict(texts, "rail", e.batch_size, bf16=e.bf16, desc=bar("fine-tuned")).entropy
    return before, after


def write_entropy_report(jsonl: Path, png: Path, before: np.ndarray, after: np.ndarray) -> dict:
    """Per-example entropies (JSONL) and the histogram of their change (PNG, figure 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raftlm.io import atomic_write, write_jsonl

    change = after - before
    rows = [
        {"index": i, "entropy_before": float(b), "entropy_after": float(a), "change": float(a - b)}
        for i, (b, a) in enumerate(zip(before, after, strict=True))
    ]
    write_jsonl(jsonl, rows)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(change, bins=40)
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("entropy after - before fine-tuning (nats)")
    ax.set_ylabel("examples")
    fig.tight_layout()
    atomic_write(png, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return {
        "mean_entropy_before": float(before.mean()),
        "mean_entropy_after": float(after.mean()),
        "entropy_decreased_fraction": float((change < 0).mean()),
    }


def load_for_eval(cfg: Config, splits: Splits | None) -> Predictor:
    """A trained run directory as saved, or (zero-shot) a pretrained model bound to the dataset's defaults,
    on ``eval.device`` with weights in ``eval.dtype``."""
    with no_load_bars(not cfg.training.progress_bar):
        predictor = _load_for_eval(cfg, splits).to(cfg.eval.device, cfg.eval.dtype)
    if is_int8(predictor.model):  # which int8 ran, said once (the server's /info says it too)
        if is_smoothed(predictor.model):
            how = predictor.int8_maxima.describe()
        elif is_run_dir(cfg.model.name):
            how = f"plain: the run has no {INT8_MAXIMA_FILE}; `raftlm calibrate {cfg.model.name}` measures it"
        else:
            how = "plain: a model that is not a run has no recorded activation maxima"
        logging.getLogger("raftlm").info(f"int8 weights ({how})")
    compile_for_eval(predictor, cfg)
    return predictor


def compile_for_eval(predictor: Predictor, cfg: Config | None) -> None:
    """``eval.compile``: the model torch.compile'd for prediction (every command that loads a run, and the
    Python API's fitted or loaded estimator)."""
    if cfg is not None and cfg.eval.compile:
        predictor.compile()


def _load_for_eval(cfg: Config, splits: Splits | None) -> Predictor:
    if is_run_dir(cfg.model.name):
        return load_run(cfg.model.name, cfg.eval.device, cfg.eval.dtype)
    if splits is None:
        raise RaftlmError(
            f"{cfg.model.name} is not a run directory: zero-shot prediction needs --dataset for its prompt and grid"
        )
    return new_predictor(cfg, splits)
