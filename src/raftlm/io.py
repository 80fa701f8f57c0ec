"""Atomic file writes: every output appears whole or not at all."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftlm.core import RaftlmError

META_FILE = "raftlm.json"  # what makes a directory a saved raftlm model (raftlm.run writes it)


def is_run_dir(path: str | Path) -> bool:
    """A directory with a saved raftlm model (``raftlm.json``)."""
    return (Path(path) / META_FILE).exists()


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Before any work: refuse to clobber an existing output unless asked, and refuse a path that
    cannot be written (a directory, or a folder we may not create files in)."""
    path = Path(path)
    if path.is_dir():
        raise RaftlmError(f"output path {path} is a directory: give a file name")
    if path.exists() and not overwrite:
        raise RaftlmError(f"output path {path} already exists: pass --overwrite or choose another path")
    check_folder(path.parent, path)
    return path


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """``check_writable``, then clean what a kill left of an earlier atomic write of this output."""
    path = check_writable(path, overwrite)
    clean_stale_tmp(path.parent, path.name)
    return path


def check_folder(folder: str | Path, output: str | Path | None = None) -> None:
    """``folder``, or its nearest existing parent when it does not exist yet, accepts new files (tried
    with a temp file that is gone at once: nothing is created)."""
    folder = Path(folder).absolute()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise RaftlmError(
            f"cannot write {output or folder} ({err.strerror}: {existing}): choose a writable path"
        ) from None


TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_write's temp files: .NAME.XXXXXXXX.tmp


def clean_stale_tmp(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete temp files that a killed atomic write left in ``directory`` (a SIGKILL cannot be caught,
    so they are cleaned at the next start); only those of ``name`` when given. Returns what went."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    stale = [p for p in directory.glob(pattern) if p.is_file() and TMP_NAME.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory, so atomic)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RaftlmError(f"cannot create {path.parent} ({err.strerror}): choose a writable path") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN/Infinity tokens)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON: non-finite numbers become null (so every reader can parse raftlm's outputs)."""
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, to_json(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(to_json(r) + "\n" for r in rows))


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp directory onto its final name."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
