"""Every file raftlm writes for a user goes through here: the output contract.

- An output file (``check_output_file``) is a new path or an existing regular file (never a device, a
  FIFO or a directory), never the same file as one of the command's inputs (``os.path.samefile``:
  symlinks and hard links included), in a folder that exists and is writable; an existing one is
  replaced only with ``--overwrite``. All of it is checked before any model loads.
- While a command writes an output it holds an exclusive lock (``output_lock``: ``.NAME.lock`` beside
  it), so a second process writing the same output stops with one line instead of interleaving rows.
- Writes are atomic (``atomic_write``): a temp file beside the target, renamed onto it when complete.
- A run directory is recognised by its marker ``.raftlm-run`` (``RUN_MARKER``), which only raftlm writes
  and which lists the files raftlm put there; nothing else makes a directory a run, and a run directory
  holding files raftlm did not write is never replaced (``foreign_files``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raftlm.core import RaftlmError, launch_state

META_FILE = "raftlm.json"  # what makes a directory a saved raftlm model (raftlm.run writes it)
RUN_MARKER = ".raftlm-run"  # what makes a directory a raftlm run directory (only raftlm writes it)
RUN_MARKER_FORMAT = "raftlm-run"
RUN_MARKER_VERSION = 1
INT8_MAXIMA_FILE = (
    "int8_maxima.safetensors"  # a run's SmoothQuant statistics for --dtype int8 (models.Int8Maxima)
)
FINISHED_FILE = "eval_results.json"  # written last by `raftlm train`
TRAINING_LOG = "metrics.jsonl"  # every logged step (loss, lr, validation metrics)
# what raftlm writes into a run directory besides the files the marker lists (save_run's model files)
RUN_FILES = frozenset(
    {
        RUN_MARKER,
        META_FILE,
        "config.yaml",
        TRAINING_LOG,
        "checkpoints",
        "logs",
        FINISHED_FILE,
        "calibration.json",
        INT8_MAXIMA_FILE,
        "README.md",
        "head.safetensors",
    }
)


def is_run_dir(path: str | Path) -> bool:
    """A directory with a saved raftlm model (``raftlm.json``): what predict, evaluate and serve load.
    Loading never deletes anything; what may be replaced or deleted is decided by ``is_marked_run``."""
    return (Path(path) / META_FILE).is_file()


def read_run_marker(path: str | Path) -> dict | None:
    """The run marker of directory ``path``, or None when it has none (or a file of that name raftlm did
    not write: not JSON, or not raftlm's format)."""
    marker = Path(path) / RUN_MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RUN_MARKER_FORMAT:
        return None
    return data


def is_marked_run(path: str | Path) -> bool:
    """Whether raftlm made directory ``path`` a run directory (its ``.raftlm-run`` marker)."""
    return Path(path).is_dir() and read_run_marker(path) is not None


def write_run_marker(path: str | Path, files: Iterable[str] = (), outputs: Iterable[str] = ()) -> dict:
    """Mark directory ``path`` as a raftlm run (kept: its id and creation time; ``files`` are added to
    the names raftlm wrote there, ``outputs`` to those of them a command wrote into the run), in one
    atomic write."""
    from raftlm import __version__

    with _folder_lock(path):  # (two commands writing outputs into one run at once lost a listing)
        old = read_run_marker(path) or {}
        marker = {
            "format": RUN_MARKER_FORMAT,
            "version": RUN_MARKER_VERSION,
            "id": old.get("id") or uuid.uuid4().hex,
            "created": old.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "raftlm": __version__,
            "files": sorted(set(old.get("files", [])) | set(files)),
        }
        if every_output := sorted(set(old.get("outputs", [])) | set(outputs)):
            marker["outputs"] = every_output
        write_json(Path(path) / RUN_MARKER, marker)
    return marker


@contextlib.contextmanager
def _folder_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock on folder ``path`` itself (its open descriptor: no file is made) while the block
    runs, for a read-modify-write of a file in it; other raftlm processes wait (milliseconds)."""
    try:
        import fcntl
    except ImportError:  # (Windows: no advisory locks)
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # (not a folder yet, or unreadable: the write below says what is wrong)
        yield
        return
    try:
        # (a filesystem without locks, e.g. some FUSE or NFS mounts: unlocked, as before)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def register_output(path: str | Path) -> None:
    """A file raftlm writes into a run directory (e.g. ``evaluate --output RUN/test.json``) is recorded
    in its marker (before it is written: a kill or a full disk midway leaves no unlisted file), so
    replacing the run later does not take it for a user's file."""
    path = Path(path)
    if is_marked_run(path.parent) and path.name not in RUN_FILES:
        write_run_marker(path.parent, [path.name], [path.name])


@contextlib.contextmanager
def registering(path: str | Path) -> Iterator[None]:
    """The block writes output ``path``; written into a run directory, it is listed in the run's marker:
    first when it is new (a kill midway leaves no unlisted file), once the block is done when it replaces a
    file the marker does not list (a user's until then: an --overwrite killed midway kept it, and listing it
    first had made it raftlm's to delete with the run)."""
    path = Path(path)
    listed = path.name in _registered(path.parent)
    replacing = os.path.lexists(path) and not listed
    if not replacing:
        register_output(path)
    try:
        yield
    except BaseException:  # (an error, Ctrl+C, SIGTERM: a new output never written is unlisted again, so a
        # file of yours put at that name later is not raftlm's; a SIGKILL leaves it listed)
        if not replacing and not listed and not os.path.lexists(path):
            _unlist(path)
        raise
    if replacing:
        register_output(path)


def _unlist(path: Path) -> None:
    """Take output ``path``'s name out of its run's marker (``registering``: it was never written)."""
    if not is_marked_run(path.parent):
        return
    with _folder_lock(path.parent):
        marker = read_run_marker(path.parent) or {}
        for key in ("files", "outputs"):
            if path.name in marker.get(key, []):
                marker[key] = [n for n in marker[key] if n != path.name]
        write_json(path.parent / RUN_MARKER, marker)


def _ours(name: str, listed: set[str]) -> bool:
    """A name raftlm writes into a run directory: fixed names, listed ones, its own temp files (an older
    raftlm's only of a file it writes: a user's ``.notes.20240101.tmp`` has that shape too)."""
    old = OLD_TMP_NAME.fullmatch(name)
    return (
        name in RUN_FILES
        or name in listed
        or bool(TMP_NAME.fullmatch(name) or HIDDEN_CACHE_NAME.fullmatch(name) or FINAL_NAME.fullmatch(name))
        or bool(old and (old[1] in RUN_FILES or old[1] in listed or MODEL_FILE.fullmatch(old[1])))
    )


def foreign_files(path: str | Path) -> list[str]:
    """Entries of run directory ``path`` that raftlm did not write (sorted), and what its own folders hold
    that is not of their kind (``_foreign_inside``)."""
    marker = read_run_marker(path) or {}
    listed, outputs = set(marker.get("files", [])), set(marker.get("outputs", []))
    entries = list(Path(path).iterdir())
    return sorted(
        [
            p.name
            for p in entries
            # (an output's lock, e.g. evaluate --output RUN/test.json's .test.json.lock, a kill left behind;
            # one a live command holds is not: that command writes into the run now)
            if not (_ours(p.name, listed) or (LOCK_NAME.fullmatch(p.name) and _our_lock(p) and not _held(p)))
        ]
        + [name for p in entries for name in _foreign_inside(p, outputs)]
    )


SHARDS_MARKER = "_raftlm_shards.json"  # what makes a folder one that --shards wrote (and may replace)
SHARDS_FILE = re.compile(r"part-\d{5,}\.parquet|" + re.escape(SHARDS_MARKER))  # what --shards writes


CHECKPOINT_NAME = re.compile(r"(tmp-)?checkpoint-\d+")  # Trainer's checkpoint folders in a run's checkpoints/
TRACKER_LOG = "events.out.tfevents."  # what --report-to tensorboard writes under a run's logs/


def _foreign_inside(p: Path, outputs: set[str]) -> list[str]:
    """In a run's folders (deleted whole with the run), what raftlm did not write: in checkpoints/ a folder
    that is not a checkpoint, in logs/ a file that is not a TensorBoard event file (a scheduler's job log
    sent to RUN/logs/ went with a `train --overwrite`), in a --shards output (one of ``outputs``) a file
    that is not a shard or its marker."""
    if p.is_symlink() or not p.is_dir():
        return []
    if p.name in outputs:
        return [f"{p.name}/{c.name}" for c in p.iterdir() if not SHARDS_FILE.fullmatch(c.name)]
    if p.name not in ("checkpoints", "logs"):
        return []
    if p.name == "checkpoints":
        return [
            f"checkpoints/{c.name}"
            for c in p.iterdir()
            if not (CHECKPOINT_NAME.fullmatch(c.name) and c.is_dir())
        ]
    return [
        f"logs/{f.relative_to(p)}"
        for f in p.rglob("*")
        if not f.is_dir() and not f.name.startswith(TRACKER_LOG)
    ]


def claim(out: Path, names: Iterable[str], fix: str) -> None:
    """Files raftlm is about to write into run ``out`` (the model, its card, calibration, results: a run's
    last files) listed in its marker first (a kill midway leaves nothing unaccounted). One of those names
    that is there already but unlisted is not raftlm's (a user's ``config.json`` or ``README.md`` put into
    the run while it trained): never replaced, refused, naming it and ``fix``."""
    names = list(names)
    listed = set((read_run_marker(out) or {}).get("files", []))
    if clash := [n for n in names if os.path.lexists(out / n) and n not in listed]:
        raise RaftlmError(
            f"run directory {out} gained files raftlm did not write ({', '.join(sorted(clash)[:4])}), of the "
            f"names of the files it writes last: move them out of it, then {fix}"
        )
    write_run_marker(out, names)


def move_into_run(out: Path, saved: list[Path], fix: str) -> None:
    """Files saved in a temporary folder (the model, its tokenizer) moved into run ``out``, claimed first
    (``claim``)."""
    claim(out, [p.name for p in saved], fix)
    for path in saved:
        os.replace(path, out / path.name)


MODEL_FILE = re.compile(
    r".*\.safetensors|.*\.safetensors\.index\.json|config\.json|generation_config\.json|tokenizer.*|"
    r"special_tokens_map\.json|added_tokens\.json|chat_template.*|vocab\.json|merges\.txt"
)
# what an output may not be named in a run, in any case: on macOS and Windows Model.safetensors IS the model
# (MODEL_FILE itself stays exact: it also decides which of a failed run's files are raftlm's to delete)
ANY_CASE_MODEL_FILE = re.compile(MODEL_FILE.pattern, re.IGNORECASE)


def run_file(path: str | Path) -> bool:
    """Whether ``path`` is one of the files a raftlm run directory is made of (its weights, configs,
    tokenizer, marker, metrics...): no command's output may replace one."""
    path = Path(path)
    if not (is_marked_run(path.parent) or is_run_dir(path.parent)):
        return False
    fold = lambda names: {n.casefold() for n in names}  # noqa: E731
    listed, name = fold((read_run_marker(path.parent) or {}).get("files", [])), path.name.casefold()
    return (
        name in fold(RUN_FILES)
        or (name in listed and name not in fold(_registered(path.parent)))
        or bool(ANY_CASE_MODEL_FILE.fullmatch(path.name))
    )


def _registered(run: Path) -> set[str]:
    """Outputs of commands (``evaluate --output RUN/test.json``) that the marker lists: those may be replaced."""
    return set((read_run_marker(run) or {}).get("outputs", []))


def describe(path: Path) -> str:
    """What kind of thing is at ``path`` (for messages): a directory, a character device, ..."""
    mode = path.stat().st_mode
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two existing paths are one file (symlinks followed, hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(
    path: str | Path, overwrite: bool, inputs: Iterable[str | Path] = (), flag: str = "--output"
) -> Path:
    """The output contract, checked before any work: ``path`` is a new path or an existing regular file
    (replaced only with ``overwrite``), not one of ``inputs`` (nor their links), in an existing,
    writable folder."""
    check_no_tilde(path, flag)
    if str(path).endswith(("/", os.sep)):
        raise RaftlmError(f"{flag} {path} ends in a slash, so it names a folder: give a file name")
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise RaftlmError(f"{flag} {path} names a folder: give a file name")
    if run_file(path):
        raise RaftlmError(
            f"{flag} {path} is a file of the raftlm run {path.parent}: writing it would damage the run; "
            "write the output to another path"
        )
    for i in inputs:
        if i is not None and path.exists() and same_file(path, i):
            raise RaftlmError(
                f"{flag} {path} is the same file as the input {i}: write the output to another path"
            )
    if path.exists():
        if path.is_dir():
            raise RaftlmError(f"output path {path} is a directory: give a file name")
        if not path.is_file():
            raise RaftlmError(
                f"{flag} {path} is {describe(path)}, not a regular file: raftlm writes only to regular "
                "files or new paths; choose a file path"
            )
        if not overwrite:
            raise RaftlmError(f"output path {path} already exists: pass --overwrite or choose another path")
    elif path.is_symlink() and not overwrite:  # (a link to a missing file is an entry too: it was replaced)
        raise RaftlmError(
            f"output path {path} already exists (a link to the missing {os.readlink(path)}): pass --overwrite "
            "to replace the link, or choose another path"
        )
    check_folder(path.parent, path, create=False)
    return path


SWEEP_MARKER = ".raftlm-sweep"  # what makes a folder a sweep's output (only raftlm writes it)


def is_sweep_dir(root: str | Path) -> bool:
    """Whether a sweep wrote folder ``root``: its marker, or (before markers) its cells/ folder of cell
    results beside a sweep.yaml."""
    root = Path(root)
    if (root / SWEEP_MARKER).is_file():
        return True
    cells = sorted((root / "cells").glob("*.json")) if (root / "cells").is_dir() else []
    if not cells or not (root / "sweep.yaml").is_file():
        return False
    try:
        row = json.loads(cells[0].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and "run_id" in row


def check_no_tilde(path: str | Path, flag: str) -> None:
    """A path that starts with ``~`` reached raftlm unexpanded (quoted in the shell, or from YAML): it
    would create a folder named ``~`` here; refused in one line."""
    if str(path).startswith("~"):
        raise RaftlmError(
            f"{flag} {path} starts with ~, which was not expanded (quoted, or written in YAML): write the "
            "folder out, e.g. $HOME/..., or leave ~ unquoted in the shell"
        )


def prepare_output(path: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """``check_output_file``, then clean what a kill left of an earlier atomic write of this output."""
    path = check_output_file(path, overwrite, inputs)
    if main_rank():  # (the rank that holds the output's lock: another rank cleaned a writer's temp file)
        clean_stale_tmp(path.parent, path.name)
    return path


LOCK_NAME = re.compile(r"\..+\.lock")  # lock_path's names


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


# accelerate's, in its order
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def main_rank() -> bool:
    """Rank 0 of a torchrun / accelerate launch, an MPI one included (``accelerate launch`` on several CPUs:
    its ranks read as accelerate reads them), or a plain process: the one that takes output locks. Read
    from the environment, before accelerate has set a process group up (and without importing torch)."""
    rank, _ = _first_set(RANK_VARIABLES)
    return rank in (None, 0)


SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launch_size() -> int:
    """How many processes this launch runs (torchrun, accelerate launch, MPI), read as accelerate reads it;
    1 when launched plainly."""
    return launch_env()[0]


# the processes of a launch on this machine (torchrun, MPICH / Intel MPI, Open MPI, MVAPICH)
LOCAL_SIZE_VARIABLES = (
    "LOCAL_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)


def local_launch_size() -> int:
    """How many processes of this launch share this machine's memory and disk; the whole launch when the
    launcher does not say (a larger share only sends a cache to disk sooner); 1 when launched plainly."""
    size, _ = _first_set(LOCAL_SIZE_VARIABLES)
    return launch_size() if size is None else max(size, 1)


def on_rank_zero(work):
    """``work()`` once: under torchrun / accelerate launch rank 0 does it and every rank returns its result,
    or fails with its error (rank 0 raises its own, the others a RaftlmError with rank 0's line: they waited
    silent at the next collective until the launcher tore the group down); plainly, this process does it."""
    if launch_size() == 1:
        return work()
    import torch.distributed as dist

    outcome, error = [None, None], None
    if launch_state().is_main_process:
        try:
            outcome[0] = work()
        except BaseException as err:
            error = err
            said = str(err) if isinstance(err, RaftlmError) else f"{type(err).__name__}: {err}"
            outcome = [None, f"rank 0 failed: {said}"]
    try:
        dist.broadcast_object_list(outcome, src=0)
    except BaseException:
        if error is not None:  # (the others are gone: rank 0's own error is the one to tell)
            raise error from None
        raise
    if outcome[1] is not None:
        error = error or RaftlmError(outcome[1])
        with contextlib.suppress(AttributeError):  # every rank raises it here: they may wait for each
            error.every_rank = True  # other while they unwind
        raise error
    return outcome[0]


def every_rank_failed(err: BaseException) -> bool:
    """Whether ``err`` came out of ``on_rank_zero`` under a launch, raised on every rank at once."""
    return getattr(err, "every_rank", False)


def launch_env() -> tuple[int, str | None]:
    """``launch_size()`` and the environment variable that says it (None when launched plainly)."""
    size, name = _first_set(SIZE_VARIABLES)
    return (1, None) if size is None else (size, name)


def _first_set(names: tuple[str, ...]) -> tuple[int | None, str | None]:
    """The first of the environment variables ``names`` that is set, as a number, and its name."""
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name]), name
    return None, None


_HELD: dict[Path, int] = {}  # the output locks this process holds: lock file -> the thread holding it


def holds_lock(path: str | Path) -> bool:
    """Whether this thread holds ``output_lock(path)`` now."""
    return _HELD.get(lock_path(path).absolute()) == threading.get_ident()


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "output", wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (the file ``.NAME.lock`` beside it) while the block runs: a
    second raftlm process writing the same output fails at once with one line (after up to ``wait``
    seconds of trying). The lock file goes when the block ends; a kill leaves it unlocked (the kernel
    drops the lock), and the next run reuses it."""
    if not main_rank():
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    lock = lock_path(path)
    key = lock.absolute()
    deadline = time.monotonic() + wait
    # (a lock held now is another raftlm's, empty for the instant it takes it: said below, after the wait)
    if lock.is_symlink() or (lock.exists() and not _our_lock(lock) and not _held(lock)):
        raise RaftlmError(
            f"{lock} exists and is not a raftlm lock file: raftlm locks {what} {path} with that name; move it, "
            "or write to another path"
        )
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise RaftlmError(
                f"cannot write {path} ({err.strerror}: {lock.parent}): choose a writable path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip().removeprefix("raftlm ") or "?"
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RaftlmError(
                f"another raftlm process (pid {holder}) is writing {what} {path}: wait for it to finish, "
                "or write to another path"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a lock file unlinked meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD[key] = threading.get_ident()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"raftlm {os.getpid()}".encode(), 0)
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


LOCK_TEXT = re.compile(rb"raftlm \d+")  # what output_lock writes into its lock file: "raftlm PID"


def _held(lock: Path) -> bool:
    """Whether a process holds lock file ``lock`` now (a kill's leftover is held by none)."""
    try:
        import fcntl
    except ImportError:  # (Windows: no advisory locks)
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing releases a lock taken here)
    return False


def _our_lock(lock: Path) -> bool:
    """Whether an existing ``.NAME.lock`` is one raftlm left (a kill leaves it), not a user's file: it
    says ``raftlm PID`` (an empty one is not proof: a user's ``: > .out.json.lock`` was taken and deleted)."""
    try:
        return lock.is_file() and lock.stat().st_size <= 64 and bool(LOCK_TEXT.fullmatch(lock.read_bytes()))
    except OSError:
        return False


def check_folder(folder: str | Path, output: str | Path | None = None, create: bool = True) -> None:
    """``folder``, or its nearest existing parent when it does not exist yet and ``create`` (raftlm will
    make it), accepts new files (tried with a temp file that is gone at once: nothing is created)."""
    folder = Path(folder).absolute()
    if not create and not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise RaftlmError(
            f"cannot write {output or folder}: the folder {folder} {what}; create it first "
            f"(mkdir -p {folder}) or choose another path"
        )
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


TMP_NAME = re.compile(
    r"\..+\.raftlm-[a-z0-9_]{8}\.tmp"
)  # atomic_write's temp files: .NAME.raftlm-XXXXXXXX.tmp
OLD_TMP_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")  # before 2026-12 (inside a marked run only)
# the final model's temporary folder in a run (pipeline._saved_weights: a tempfile.mkdtemp name)
FINAL_PREFIX = ".final-"
FINAL_NAME = re.compile(re.escape(FINAL_PREFIX) + "[a-z0-9_]{8}")
# the frozen-block cache's file when it outgrows RAM (cache.HiddenStore: a tempfile.mkstemp name in the run)
HIDDEN_CACHE_PREFIX, HIDDEN_CACHE_SUFFIX = ".hidden-cache-", ".f32"
HIDDEN_CACHE_NAME = re.compile(
    re.escape(HIDDEN_CACHE_PREFIX) + "[a-z0-9_]{8}" + re.escape(HIDDEN_CACHE_SUFFIX)
)


def clean_stale_tmp(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete temp files that a killed atomic write left in ``directory`` (a SIGKILL cannot be caught,
    so they are cleaned at the next start); only those of ``name`` when given. Returns what went."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = f".{glob.escape(name)}.raftlm-*.tmp" if name else ".*.raftlm-*.tmp"
    stale = [p for p in directory.glob(pattern) if p.is_file() and TMP_NAME.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def make_folder(folder: Path, what: str, fix: str) -> None:
    """Create ``folder`` (and its parents), or say in one line why not: ``cannot create WHAT (why): FIX``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RaftlmError(f"cannot create {what} ({err.strerror or type(err).__name__}): {fix}") from None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory, so atomic); the
    bytes reach the disk before the rename (fsync, ~2 ms), so a power cut leaves the old file or the new
    one, never an empty one under the name."""
    path = Path(path)
    make_folder(path.parent, str(path.parent), "choose a writable path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.raftlm-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        normal_permissions(tmp)  # mkstemp creates 0600
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def normal_permissions(path: str | Path, directory: bool = False) -> None:
    """The permissions a new file (0666) or folder (0777) gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def normal_tree_permissions(folder: str | Path) -> None:
    """``normal_permissions`` for everything under ``folder`` (links left alone): what a library wrote there
    0600 (safetensors' weights) becomes readable as every file raftlm writes."""
    for path in Path(folder).rglob("*"):
        if not path.is_symlink():
            normal_permissions(path, directory=path.is_dir())


def disk_error(err: OSError, path: str | Path, then: str = "run the command again") -> Exception:
    """A full disk (or quota) as one line; any other OSError as it was."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return RaftlmError(
            f"disk full while writing {path} ({err.strerror}): free space on that disk and {then}"
        )
    return err


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file raftlm wrote, or one line naming it, why it cannot be read, and ``fix``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        why = (str(err)[:97] + "...") if len(str(err)) > 100 else str(err)
        raise RaftlmError(f"{path} is unreadable ({why}): {fix}") from None


FORMAT_VERSION = 1  # of a run's raftlm.json (raftlm.run writes it)
REQUIRED_META = ("grid", "scaler", "template", "normalize_grid", "max_length")


def read_metadata(directory: Path) -> dict:
    """``raftlm.json`` of a run, checked: a truncated or edited file is one line, not a KeyError later.
    (Here, not in raftlm.run, so the CLI reads a run's settings without importing torch.)"""
    path = Path(directory) / META_FILE
    meta = read_json(path, "the run is damaged; retrain it or restore it from a copy")
    absent = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if absent:
        raise RaftlmError(f"{path} lacks {absent}: the run is damaged; retrain it or restore it from a copy")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise RaftlmError(
            f"{path} is format {meta['format_version']}, newer than this raftlm reads ({FORMAT_VERSION}): "
            "upgrade raftlm"
        )
    return meta


# the names --model takes besides a path or a hub id (models.py holds how each loads, and checks this list)
MODEL_NAMES = ("gemma-3-270m", "minilm-l6", "smollm2-135m", "tiny-random-bert", "tiny-random-llama")


def check_model_name(name: str) -> None:
    """--model names a built-in model, a local model folder (with its config.json) or a hub id
    (``owner/name``); anything else is one line. Needs no torch: the CLI says it before importing it."""
    if name in MODEL_NAMES:
        return
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise RaftlmError(
                f"model directory {name} has no config.json: point --model at a saved model or run directory"
            )
        return
    if name.startswith((".", "/", "~")):
        raise RaftlmError(f"model path {name} does not exist: check --model")
    parent = Path(name).parent
    if parent != Path(".") and parent.is_dir():  # ``runs/typo`` beside a runs/ folder: a path's typo
        raise RaftlmError(
            f"model path {name} does not exist: check --model (its folder {parent}/ is here, so it is read as "
            "a path; a hub id whose owner is a folder here: run from another folder)"
        )
    if name.count("/") != 1:
        raise RaftlmError(
            f"unknown model {name!r}: use one of {list(MODEL_NAMES)}, a local directory or a hub id"
        )


MODEL_WEIGHTS = re.compile(r"model(-\d+-of-\d+)?\.safetensors")  # a run's weights, whole or sharded


def has_weights(run: str | Path) -> bool:
    """Whether run directory ``run`` still holds its model weights (a sweep drops them once its cells are
    written, unless keep_models: true)."""
    return any(MODEL_WEIGHTS.fullmatch(p.name) for p in Path(run).iterdir())


def check_eval_model(model: str, dataset_given: bool = True) -> None:
    """Before any data is read or torch imported: ``--model`` is a finished run, a saved model or a model
    name; one that is not a run predicts zero-shot, which needs a dataset for its prompt and grid."""
    path = Path(model)
    if is_run_dir(path):
        return
    if path.is_dir() and (path / "config.yaml").exists():
        raise RaftlmError(
            f"{path} holds an unfinished run (no raftlm.json yet): continue it with "
            f"`raftlm train --output-dir {path} --resume`, or pass a finished run"
        )
    if path.is_dir() and not (path / "config.json").exists():
        raise RaftlmError(
            f"{path} is not a raftlm run (no raftlm.json) nor a saved model (no config.json): "
            "pass a run directory from `raftlm train`"
        )
    if not path.exists():
        check_model_name(model)  # the rule train's --model obeys: a built-in name, a hub id, no missing path
    if not dataset_given:
        raise RaftlmError(
            f"{model} is not a run directory: zero-shot prediction needs --dataset (for its "
            "prompt and grid), or pass a run directory from `raftlm train`"
        )


def check_served_run(run_dir: str | Path) -> None:
    """``raftlm serve`` serves a finished run (its raftlm.json holds the prompt and grid)."""
    if not is_run_dir(run_dir):
        raise RaftlmError(
            f"{run_dir} is not a raftlm run (no raftlm.json): pass a run directory from `raftlm train`"
        )


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


# --- replacing a run directory (--overwrite): staged beside it, swapped in by a journalled rename ------


def is_finished(path: str | Path) -> bool:
    return (Path(path) / FINISHED_FILE).exists()


def _contents(out: Path, n: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _legacy_unfinished(out: Path) -> bool:
    """An unfinished run of a raftlm from before run markers: its config.yaml is a raftlm config whose
    ``training.output_dir`` is this very directory, and Trainer saved a whole checkpoint in its checkpoints/
    (a user's recipe folder naming itself as output_dir has the first: `train --config exp/config.yaml
    --resume` took it over and replaced the recipe). Only ``--resume`` accepts it; it is marked then."""
    import yaml  # (the YAML itself: raftlm.config imports this module through raftlm.methods)

    if latest_complete_checkpoint(out / "checkpoints") is None:
        return False
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))["training"]["output_dir"]
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError):
        return False
    return isinstance(saved, str) and bool(saved) and Path(saved).absolute() == out


KERNEL_FILESYSTEMS = ("/proc", "/sys")  # (not /dev: /dev/shm is a real scratch space)


def refuse_unsafe_place(out: Path, name: str = "--output-dir") -> None:
    """A run directory is replaced by renaming it: never the current folder, one of its parents, the
    filesystem root or the home folder; and never inside /proc or /sys (the kernel's views, which
    hold no files of ours). ``name``: what the caller calls it (``output_dir``, ``directory`` in the API)."""
    kernel = next((k for k in KERNEL_FILESYSTEMS if out == Path(k) or Path(k) in out.parents), None)
    if kernel and sys.platform.startswith("linux"):
        raise RaftlmError(
            f"{name} {out} is inside {kernel}, a file system the kernel makes up (it holds no run): "
            "choose a folder on disk, e.g. runs/my-run"
        )
    here = Path.cwd().resolve()
    if out == here or out in here.parents or out == Path(out.anchor) or out == Path.home().resolve():
        raise RaftlmError(
            f"{name} {out} is the current folder, one of its parents, / or your home folder: "
            "give a run directory of its own, e.g. runs/my-run"
        )


def check_run_dir(
    out: Path, overwrite: bool, resume: bool, name: str = "--output-dir", recover: bool = True
) -> Path:
    """Where to build the run: ``out`` itself, or (``--overwrite`` of an existing run) a staging
    directory beside it, so the old run survives until the new one has finished. Only a directory that
    raftlm marked as a run (``.raftlm-run``) and that holds nothing raftlm did not write is ever replaced;
    anything else is refused before any work. ``name``: what the caller calls it (``refuse_unsafe_place``)."""
    check_no_tilde(out, name)
    out = Path(out).resolve()  # a symlinked run is replaced where it really is; the link stays
    refuse_unsafe_place(out, name)
    if recover:  # (not in `train`'s early look: rank 0 finishes a swap, under the run's lock)
        recover_swap(out)
    if out.exists() and not out.is_dir():
        what = "a file" if out.is_file() else describe(out)
        raise RaftlmError(f"output path {out} is {what}: choose a directory for {name}")
    if overwrite and resume:
        raise RaftlmError("--overwrite starts the run afresh and --resume continues it: pass one of them")
    if not out.exists() or not any(out.iterdir()):
        return out
    if not is_marked_run(out):
        if resume and _legacy_unfinished(out):
            return out
        raise RaftlmError(
            f"output directory {out} is not a raftlm run (no {RUN_MARKER} marker; it holds {_contents(out)}) "
            f"and is never replaced or written into: choose another {name}"
        )
    if overwrite:
        if foreign := foreign_files(out):
            raise RaftlmError(
                f"run directory {out} holds files raftlm did not write ({', '.join(foreign[:4])}): "
                f"move them out of it before it is overwritten, or choose another {name}"
            )
        check_replaceable(out, name)
        check_swap_names(out)
        return staging_dir(out)
    finished = is_finished(out)
    if resume and not finished:
        return out
    if finished:
        raise RaftlmError(
            f"run directory {out} already holds a finished run: pass --overwrite (overwrite=True in "
            f"RAFTRegressor; it is replaced once the new run has finished) or choose another {name}"
        )
    if not name.startswith("--"):  # the Python API, which does not resume (its rows are in memory)
        raise RaftlmError(
            f"run directory {out} holds an unfinished run: pass overwrite=True to train it again, or choose "
            f"another {name}"
        )
    raise RaftlmError(
        f"run directory {out} holds an unfinished run: pass --resume to continue it or --overwrite to restart "
        "(overwrite=True in RAFTRegressor)"
    )


def staging_dir(out: Path) -> Path:
    """Where ``--overwrite`` builds the new run, beside the old one (hidden; swapped in when finished)."""
    return out.parent / f".{out.name}.raftlm-new"


def old_dir(out: Path) -> Path:
    """Where the replaced run waits, during the swap, until it is deleted."""
    return out.parent / f".{out.name}.raftlm-old"


def journal_path(out: Path) -> Path:
    """The swap's journal: written before the first rename, deleted after the last step."""
    return out.parent / f".{out.name}.raftlm-swap.json"


def remove_run(path: Path, keep_folder: bool = False) -> None:
    """Delete run directory ``path`` (raftlm's: the caller checked its marker) with its marker last, so a
    kill midway leaves a marked, partly deleted run that the next command deletes again, never an
    unmarked folder that raftlm must then refuse to touch as a user's; ``keep_folder``: empty it only."""
    for p in path.iterdir():
        if p.name != RUN_MARKER:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (path / RUN_MARKER).unlink(missing_ok=True)
    if not keep_folder:
        path.rmdir()


def check_replaceable(out: Path, flag: str) -> None:
    """Before an --overwrite that builds beside ``out`` and renames it into place: ``out`` is not a mount
    point (a container's volume: the new folder would be built on the other filesystem, and the rename of a
    mount point fails, EBUSY, after all the work)."""
    if os.path.ismount(out):  # (another device than its parent's, or the same inode as it)
        raise RaftlmError(
            f"{flag} {out} is a mount point (a filesystem of its own), which --overwrite cannot replace (it "
            f"builds the new one beside it, then renames): write into a folder inside it, e.g. {out / 'run'}"
        )


def discard_staged(staged: Path, out: Path) -> None:
    """Delete a staging directory of ours (a marked run) of an earlier --overwrite of ``out`` that never
    finished; one that finished (its swap was refused: the run had gained a user's files) is work raftlm
    keeps: refused."""
    if staged.exists() and is_marked_run(staged):
        if (staged / FINISHED_FILE).exists():
            raise RaftlmError(
                f"{staged} holds a finished run of an earlier --overwrite that could not replace {out}: "
                f"{_adopt_steps(staged, out)}, or delete {staged} to train afresh"
            )
        remove_run(staged)


def _adopt_steps(staged: Path, out: Path) -> str:
    return f"to keep it, put it in place yourself (mv {out} {out}.old && mv {staged} {out})"


def swap_in(staged: Path, out: Path) -> None:
    """Replace the run at ``out`` by the finished run at ``staged``: a journal, two renames, the old run
    deleted, the journal deleted. A kill at any point leaves the journal, and ``recover_swap`` (run by
    the next train, predict, evaluate or serve of ``out``) finishes the swap."""
    if foreign := foreign_files(out):
        raise RaftlmError(
            f"run directory {out} gained files raftlm did not write while training ({', '.join(foreign[:4])}), "
            f"so it was not replaced: the new run is in {staged}; {_adopt_steps(staged, out)}"
        )
    write_json(journal_path(out), _journal(out))
    _finish_swap(out)


def _journal(out: Path) -> dict:
    return {"format": "raftlm-swap", "out": out.name, "old": old_dir(out).name, "new": staging_dir(out).name}


def is_our_journal(out: Path) -> bool:
    """Whether ``out``'s swap journal is one raftlm wrote (a user's file of that name is not)."""
    try:
        data = json.loads(journal_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    ours = _journal(out)
    return isinstance(data, dict) and {k: data.get(k) for k in ("out", "old", "new")} == {
        k: ours[k] for k in ("out", "old", "new")
    }


def _emptied(path: Path) -> bool:
    """An empty directory (what a kill between ``remove_run``'s last two steps leaves)."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def check_swap_names(out: Path) -> None:
    """Before an ``--overwrite`` of run ``out``: the hidden names its swap uses (``.OUT.raftlm-new``,
    ``.OUT.raftlm-old``, ``.OUT.raftlm-swap.json``) hold nothing but raftlm's own, or it is refused (a
    user's folder of that name would be trained into, or deleted)."""
    for path in (staging_dir(out), old_dir(out)):
        if _emptied(path):  # a kill's leftover: rank 0 removes it (every rank of a launch looks)
            if main_rank():
                path.rmdir()
            continue
        if path.exists() and not is_marked_run(path):
            raise RaftlmError(
                f"{path} exists and is not a raftlm run: --overwrite of {out} uses that name while it "
                "builds the new run; move it, or choose another --output-dir"
            )
    if journal_path(out).exists() and not is_our_journal(out):
        raise RaftlmError(
            f"{journal_path(out)} exists and is not raftlm's: --overwrite of {out} uses that name; move it, "
            "or choose another --output-dir"
        )


def _finish_swap(out: Path) -> str:
    """The swap's remaining steps, whichever were done (each is idempotent); what it did, in words."""
    staged, old = staging_dir(out), old_dir(out)
    if _emptied(old):  # remove_run was killed between the marker and the folder: nothing is left in it
        old.rmdir()
    if old.exists() and not is_marked_run(old):
        raise RaftlmError(
            f"{old} is not a raftlm run, so the interrupted --overwrite of {out} cannot use that name: move it "
            "and run the command again"
        )
    did = "the new run is in place"
    try:
        if staged.exists() and is_marked_run(staged):
            if out.exists():
                if foreign := foreign_files(out):  # (gained since the swap was checked: a kill, then a user)
                    raise RaftlmError(
                        f"run directory {out} holds files raftlm did not write ({', '.join(foreign[:4])}), so "
                        f"its interrupted --overwrite did not replace it: the new run is in {staged}; move "
                        "those files out, and the next train, predict, evaluate or serve of it finishes the swap"
                    )
                if old.exists():
                    remove_run(old)
                os.replace(out, old)
            os.replace(staged, out)
        elif not out.exists() and old.exists():  # the new run is gone: put the old one back
            os.replace(old, out)
            did = "the new run was missing, so the old run is back in place"
    except OSError as err:  # (the journal stays: the next command of the run tries again)
        raise RaftlmError(
            f"the --overwrite of {out} could not put the new run in place ({err.strerror or err}): it is in "
            f"{staged} (the old run in {out if out.exists() else old}); the next train, predict, evaluate or "
            "serve of it tries again"
        ) from None
    if old.exists() and is_marked_run(old):
        remove_run(old)
    journal_path(out).unlink(missing_ok=True)
    return did


SWAP_WAIT = 120.0  # seconds a command waits for another process's swap of the same run (renames, a delete)


def recover_swap(out: str | Path) -> str | None:
    """Finish an ``--overwrite`` swap of run ``out`` that a kill interrupted (its journal is still there);
    says what it did on stderr. None when there was nothing to do. Under the run's lock: two commands
    that found the same journal (two ``predict`` of the run, every rank of a launch) took each other's
    renames for the swap's steps, and one order deleted the new run; now one finishes it, the others wait
    for it (another launch's ranks: for rank 0's). ``out`` where it really is (a symlinked run or parent
    resolved, as ``train`` resolves it): its journal and lock lie beside the real folder."""
    out = Path(out).resolve()
    if not is_our_journal(out):  # none, or a user's file of that name: not a swap of raftlm's
        return None
    if not main_rank():
        deadline = time.monotonic() + SWAP_WAIT
        while is_our_journal(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        return None
    # (``train`` and ``save`` hold the run's lock already when they finish a swap of it)
    held = (
        contextlib.nullcontext() if holds_lock(out) else output_lock(out, "the run directory", wait=SWAP_WAIT)
    )
    with held:
        if not is_our_journal(out):  # another process finished it while this one waited
            return None
        did = _finish_swap(out)
    message = f"raftlm: finished an interrupted --overwrite of {out}: {did}"
    print(message, file=sys.stderr)
    return message


# --- `raftlm predict`'s partial files (streaming.py writes them; these rules import no torch, so the CLI
# checks them before loading a model) ---


def partial_path(output: Path, rank: int = 0, world: int = 1) -> Path:
    tag = "" if world == 1 else f".{rank}of{world}"
    return output.parent / f".{output.name}{tag}.partial"


def job_path(output: Path) -> Path:
    return output.parent / f".{output.name}.partial.json"


def check_output(
    output: str | Path,
    overwrite: bool,
    resume: bool,
    input: str | Path | None = None,
    others: Iterable[str | Path] = (),
) -> Path:
    """Before loading a model: the output contract (``io.check_output_file``: not the input nor the
    command's ``others`` inputs, not a special file, an existing folder), never clobber a finished output,
    nor an interrupted one's partial file; clean what a kill left of an atomic write of this output (not the
    partial file: that resumes)."""
    job = _job(Path(output))
    ours = _is_job(job)
    if ours and _finished_leftover(Path(output), job):
        # a kill between the last rename (or a launch's concatenation) and the record's removal: finish that
        # step (the record and any parts are raftlm's; the output stays as written)
        if main_rank():
            for leftover in [*partial_files(Path(output)), job_path(Path(output))]:
                leftover.unlink(missing_ok=True)
            register_output(output)  # (an --overwrite's output is listed once it is in place)
        if resume:
            raise RaftlmError(
                f"the prediction into {output} had finished ({job['rows']} rows; a kill left its record, now "
                "removed): nothing to resume; pass --overwrite to predict again"
            )
        job, ours = None, False
    # an --overwrite interrupted midway kept the old output (replaced once the new one is whole): its
    # --resume goes on replacing it
    replacing = resume and ours and job.get(REPLACES) is True
    if (
        replacing
        and REPLACED in job
        and Path(output).is_file()
        and file_identity(Path(output)) != job[REPLACED]
    ):
        raise RaftlmError(  # (a file put there since: not the output the interrupted --overwrite replaces)
            f"{output} is not the file the interrupted --overwrite was replacing (it changed since): pass "
            "--overwrite to replace it too, or move it"
        )
    output = prepare_output(output, overwrite or replacing, [*([input] if input else []), *others])
    if input is not None and any(same_file(p, input) for p in (partial_path(output), job_path(output))):
        raise RaftlmError(f"--input {input} is the partial file of --output {output}: choose another output")
    if overwrite and resume:
        raise RaftlmError(
            "--overwrite starts the prediction afresh and --resume continues it: pass one of them"
        )
    if (parts := partial_files(output)) and not ours:
        raise RaftlmError(
            f"{parts[0]} exists but raftlm has no record of writing it ({job_path(output).name} is missing or "
            "not raftlm's): it may be a user's file; move it, or write to another path"
        )
    if job_path(output).exists() and not ours:
        raise RaftlmError(
            f"{job_path(output)} exists and is not a raftlm prediction record: move it, or write to another path"
        )
    if job_path(output).exists() and not (resume or overwrite):
        raise RaftlmError(
            f"an interrupted prediction into {output} left its partial file: pass --resume to continue "
            "it or --overwrite to start over"
        )
    return output


REPLACES = "replaces"  # a prediction record's flag: the job started with --overwrite of an existing output
REPLACED = "replaced"  # ... and that output's identity then (``file_identity``): what is not the new output


def file_identity(path: Path) -> list[int]:
    """A file's inode, size and modification time (ns): a rename keeps it, a rewrite changes it."""
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _finished_leftover(output: Path, job: dict) -> bool:
    """Whether ``output`` is the whole output of the prediction ``job`` records (written after its record,
    with its rows, every line complete): what a kill between finishing the output and deleting the record
    leaves. An --overwrite's old output predates the record."""
    try:
        if not output.is_file() or output.stat().st_mtime_ns < job_path(output).stat().st_mtime_ns:
            return False
        if job.get(REPLACED) == file_identity(output):  # the old output still (a coarse clock's same tick)
            return False
        lines, last = 0, b"\n"
        with open(output, "rb") as f:
            while block := f.read(1 << 20):
                lines, last = lines + block.count(b"\n"), block[-1:]
    except OSError:
        return False
    return last == b"\n" and lines == job.get("rows")


def our_job(output: Path) -> bool:
    """Whether ``output``'s prediction record (``.NAME.partial.json``) is one raftlm wrote."""
    return _is_job(_job(output))


def _is_job(job) -> bool:
    return isinstance(job, dict) and {"input_sha256", "model", "rows"} <= job.keys()


def _job(output: Path):
    try:
        return json.loads(job_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def partial_files(output: Path) -> list[Path]:
    """Partial files of ``output`` from any number of processes (and of no other output)."""
    pattern = re.compile(rf"\.{re.escape(output.name)}(\.\d+of\d+)?\.partial")
    return [p for p in output.parent.iterdir() if pattern.fullmatch(p.name)]


def latest_complete_checkpoint(ckpt_dir: Path, needs: tuple[str, ...] = ()) -> Path | None:
    """The newest checkpoint that was fully written (Trainer writes trainer_state.json last; ``needs``:
    files a callback writes after it, e.g. the weight average's); a checkpoint cut short by a kill is
    skipped, so resume falls back to the one before."""
    done = [
        p
        for p in ckpt_dir.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name)
        and all((p / name).exists() for name in needs)
        and _whole_json(p / "trainer_state.json")  # written in place: a full disk or a kill cuts it short
    ]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def _whole_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False
