"""A run directory: what a finished run is, and saving / loading the model it holds.

A run directory holds config.yaml (the resolved config), the model (an ordinary causal LM in
safetensors, LoRA merged) and its tokenizer, ``raftlm.json`` (grid, target scaling, template, answer
format, method, head), ``head.safetensors`` for predictive heads, metrics.jsonl, calibration.json, a
model card README.md, and eval_results.json, written last: its presence marks a finished run.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from raftlm.core import RaftlmError, warn
from raftlm.grid import Grid, TargetScaler
from raftlm.heads import HEAD_CLASSES
from raftlm.io import (  # noqa: F401  (the swap's and the run folder's functions are raftlm.run's API too)
    FINISHED_FILE,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    RUN_MARKER,
    check_no_tilde,
    check_replaceable,
    check_run_dir,
    check_swap_names,
    describe,
    discard_staged,
    foreign_files,
    is_finished,
    is_marked_run,
    is_run_dir,
    journal_path,
    make_folder,
    normal_tree_permissions,
    old_dir,
    read_json,
    read_metadata,
    read_run_marker,
    recover_swap,
    refuse_unsafe_place,
    remove_run,
    staging_dir,
    swap_in,
    write_json,
)
from raftlm.models import (
    Int8Maxima,
    attach_head,
    detach_head,
    load_model,
    resolve_device,
    resolve_dtype,
    unwrap_for_saving,
)
from raftlm.predictor import Predictor
from raftlm.scoring import AnswerFormat

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


def writable_place(out: Path, name: str = "--output-dir") -> Path:
    """Before any work: ``out`` where it really is (a symlinked run directory resolved), not an unsafe
    place (``refuse_unsafe_place``, which ``name`` is for), its parent made and writable; else one line
    naming the fix."""
    out = Path(out).resolve()
    refuse_unsafe_place(out, name)
    make_folder(out.parent, f"run directory {out}", f"choose a writable {name}")
    try:
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise RaftlmError(
            f"cannot create run directory {out} ({err.strerror}): choose a writable {name}"
        ) from None
    return out


def discard_failed(build: Path, out: Path, created: bool) -> None:
    """What a build that failed leaves goes: a staged run (``build`` beside ``out``) or a run directory
    this command created is deleted; an empty folder the user made is emptied again and kept; a folder that
    gained files raftlm did not write is left as it is. (Called while an error propagates: a failure here
    must not hide that error.)"""
    with contextlib.suppress(OSError):
        # (the model's files are listed in the marker before they land: io.move_into_run)
        if not build.is_dir() or foreign_files(build):
            return
        remove_run(build, keep_folder=not created and build == out)


FINGERPRINTED = (META_FILE, "config.json", "config.yaml", "tokenizer.json", "model.safetensors.index.json")


def model_fingerprint(name: str) -> str:
    """What identifies a model for ``predict --resume``: for a local directory, its run marker's id and
    the name, size and modification time of its config and weight files (a retrained or replaced run
    differs); for a model name or hub id, the name."""
    path = Path(name)
    if not path.is_dir():
        return name
    h = hashlib.sha256(str((read_run_marker(path) or {}).get("id")).encode())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name in FINGERPRINTED):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{path.resolve()}#{h.hexdigest()[:16]}"


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
    if p.int8_maxima is not None:
        p.int8_maxima.save(directory)
    write_json(directory / META_FILE, metadata(p))
    # (safetensors writes the weights 0600: a colleague could not load them)
    normal_tree_permissions(directory)
    return directory


def load_run(directory: str | Path, device: str = "auto", dtype: str = "auto") -> Predictor:
    """A run directory on ``device`` in ``dtype`` (see ``Predictor.to``); the weights are read in
    that dtype, so a bf16 load never holds a float32 copy. ``int8`` smooths with the run's recorded
    activation maxima (``int8_maxima.safetensors``: SmoothQuant) when it has them, else is plain int8."""
    directory = Path(directory)
    if not is_run_dir(directory):
        raise RaftlmError(
            f"{directory} is not a raftlm model (no {META_FILE}): pass a run directory from `raftlm train`"
        )
    recover_swap(directory)
    meta = read_metadata(directory)
    encoder = meta.get("encoder", False)
    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    try:
        maxima = Int8Maxima.load(directory)
    except RaftlmError as err:  # needed only by int8: other dtypes go on without it
        if torch_dtype == torch.int8:
            raise
        warn(str(err))
        maxima = None
    # int8 is read in float32 either way: Predictor.to quantizes it, smoothed when the run has maxima
    read = torch.float32 if torch_dtype == torch.int8 else torch_dtype
    model, tok = load_model(str(directory), encoder=encoder, dtype=read)
    fmt = None
    if not encoder:
        fmt = AnswerFormat(
            meta["answer_prefix"], meta["fold_prefix"], tuple(tuple(c) for c in meta["candidates"])
        )
    head = None
    if meta.get("head"):
        head = HEAD_CLASSES[meta["head"]["class"]](**meta["head"]["kwargs"])
        try:
            head.load_state_dict(load_file(str(directory / "head.safetensors")))
        except Exception as err:  # missing, truncated or not this head's
            raise RaftlmError(
                f"{directory}/head.safetensors cannot be read ({str(err)[:120]}): retrain the run, or "
                "restore it from a copy"
            ) from None
        attach_head(model, head)
        model.eval()
    predictor = Predictor(
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
    )
    predictor.int8_maxima = maxima
    return predictor.to(device, dtype)
