"""A run directory: what a finished run is, and saving / loading the model it holds.

A run directory holds config.yaml (the resolved config), the model (an ordinary causal LM in
safetensors, LoRA merged) and its tokenizer, ``raftlm.json`` (grid, target scaling, template, answer
format, method, head), ``head.safetensors`` for predictive heads, metrics.jsonl, calibration.json, a
model card README.md, and eval_results.json, written last: its presence marks a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from raftlm.core import RaftlmError
from raftlm.grid import Grid, TargetScaler
from raftlm.heads import HEAD_CLASSES
from raftlm.io import META_FILE, is_run_dir, write_json
from raftlm.models import (
    attach_head,
    detach_head,
    load_model,
    resolve_device,
    resolve_dtype,
    unwrap_for_saving,
)
from raftlm.predictor import Predictor
from raftlm.scoring import AnswerFormat

FORMAT_VERSION = 1
FINISHED_FILE = "eval_results.json"  # written last by `raftlm train`
KNOWN = {
    "format_version",
    "method",
    "grid",
    "scaler",
    "template",
    "answer_prefix",
    "fold_prefix",
    "candidates",
    "normalize_grid",
    "max_length",
    "bidirectional",
    "head",
    "encoder",
}


def is_finished(path: str | Path) -> bool:
    return (Path(path) / FINISHED_FILE).exists()


RUN_MARKERS = ("config.yaml", META_FILE)  # what raftlm writes first into a run directory


def staging_dir(out: Path) -> Path:
    """Where ``--overwrite`` builds the new run, beside the old one (hidden; swapped in when finished)."""
    return out.parent / f".{out.name}.raftlm-new"


def _contents(out: Path, n: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_run_dir(out: Path, overwrite: bool, resume: bool) -> Path:
    """Where to build the run: ``out`` itself, or (``--overwrite`` of an existing run) a staging
    directory beside it, so the old run survives until the new one has finished. A directory that is
    not a raftlm run is never touched."""
    if out.exists() and not out.is_dir():
        raise RaftlmError(f"output path {out} is a file: choose a directory for --output-dir")
    if not out.exists() or not any(out.iterdir()):
        return out
    if not any((out / m).exists() for m in RUN_MARKERS):
        raise RaftlmError(
            f"output directory {out} is not a raftlm run (it holds {_contents(out)}) and is never "
            "replaced: choose another --output-dir"
        )
    if overwrite and resume:
        raise RaftlmError("--overwrite starts the run afresh and --resume continues it: pass one of them")
    if overwrite:
        return staging_dir(out)
    finished = is_finished(out)
    if resume and not finished and (out / "config.yaml").exists():
        return out
    if finished:
        raise RaftlmError(
            f"run directory {out} already holds a finished run: pass --overwrite (overwrite=True in "
            "RAFTRegressor; it is replaced once the new run has finished) or choose another --output-dir"
        )
    raise RaftlmError(
        f"run directory {out} holds an unfinished run: pass --resume to continue it or --overwrite to restart"
    )


def swap_in(staged: Path, out: Path) -> None:
    """Replace the run at ``out`` by the finished run at ``staged`` (two renames, then delete the old)."""
    old = out.parent / f".{out.name}.raftlm-old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)


def metadata(p: Predictor) -> dict:
    """``raftlm.json``: everything besides the weights that scoring needs."""
    return {
        "format_version": FORMAT_VERSION,
        "method": p.method,
        "grid": p.grid.to_dict(),
        "scaler": p.scaler.to_dict(),
        "template": p.template,
        "answer_prefix": None if p.fmt is None else p.fmt.answer_prefix,
        "fold_prefix": None if p.fmt is None else p.fmt.fold_prefix,
        "candidates": None if p.fmt is None else [list(c) for c in p.fmt.candidates],
        "normalize_grid": p.normalize_grid,
        "max_length": p.max_length,
        "bidirectional": p.bidirectional,
        "head": None if p.head is None else {"class": type(p.head).__name__, "kwargs": p.head.config()},
        "encoder": p.fmt is None,
        **p.extra,
    }


def save_run(p: Predictor, directory: str | Path) -> Path:
    """Write an ordinary causal LM (safetensors), its tokenizer and ``raftlm.json`` into ``directory``
    (LoRA adapters are merged into ``p.model`` first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    p.model = unwrap_for_saving(p.model)
    head = detach_head(p.model)  # the backbone is saved as a plain model; the head beside it
    try:
        p.model.save_pretrained(directory, safe_serialization=True)
    finally:
        if head is not None:
            attach_head(p.model, head)
    if p.head is not None:
        save_file(
            {k: v.contiguous() for k, v in p.head.state_dict().items()}, str(directory / "head.safetensors")
        )
    p.tokenizer.save_pretrained(directory)
    write_json(directory / META_FILE, metadata(p))
    return directory


def load_run(directory: str | Path, device: str = "auto", dtype: str = "auto") -> Predictor:
    """A run directory on ``device`` in ``dtype`` (see ``Predictor.to``); the weights are read in
    that dtype, so a bf16 load never holds a float32 copy."""
    directory = Path(directory)
    if not is_run_dir(directory):
        raise RaftlmError(
            f"{directory} is not a raftlm model (no {META_FILE}): pass a run directory from `raftlm train`"
        )
    meta = json.loads((directory / META_FILE).read_text())
    encoder = meta.get("encoder", False)
    model, tok = load_model(
        str(directory), encoder=encoder, dtype=resolve_dtype(dtype, resolve_device(device))
    )
    fmt = None
    if not encoder:
        fmt = AnswerFormat(
            meta["answer_prefix"], meta["fold_prefix"], tuple(tuple(c) for c in meta["candidates"])
        )
    head = None
    if meta.get("head"):
        head = HEAD_CLASSES[meta["head"]["class"]](**meta["head"]["kwargs"])
        head.load_state_dict(load_file(str(directory / "head.safetensors")))
        attach_head(model, head)
        model.eval()
    return Predictor(
        model,
        tok,
        Grid.from_dict(meta["grid"]),
        fmt,
        TargetScaler.from_dict(meta["scaler"]),
        meta["template"],
        normalize_grid=meta["normalize_grid"],
        max_length=meta["max_length"],
        method=meta.get("method", "none"),
        head=head,
        bidirectional=meta.get("bidirectional", False),
        extra={k: v for k, v in meta.items() if k not in KNOWN},
    ).to(device, dtype)
