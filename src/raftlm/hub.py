"""Publish a run on the Hugging Face Hub: ``raftlm push RUN REPO_ID`` and ``RAFTRegressor.push_to_hub``.

A run directory is already a model repository (an ordinary causal LM with its tokenizer, ``raftlm.json``
and a model card whose metadata the Hub reads), so pushing is ``create_repo`` + ``upload_folder`` of
the files raftlm wrote as the run (``push_files``): never ``checkpoints/`` or ``logs/``, the run marker,
lock, temporary or partial files, nor a file raftlm did not write there. Offline, or when the Hub
refuses, it fails in one line.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from raftlm.core import RaftlmError, short
from raftlm.io import MODEL_WEIGHTS, RUN_FILES, is_marked_run, is_run_dir, read_run_marker

NOT_UPLOADED = ("checkpoints", "logs")  # resume state and tracker logs: the run's, not the model's
TRUE = ("1", "ON", "YES", "TRUE")


def push_files(run_dir: str | Path) -> list[str]:
    """The names ``raftlm push`` uploads from ``run_dir``: the regular files raftlm wrote as the run
    (listed in its marker, or its fixed names), hidden ones and folders left out."""
    run = Path(run_dir)
    if not is_run_dir(run):
        raise RaftlmError(
            f"{short(str(run))} is not a raftlm run (no raftlm.json): pass a run directory from `raftlm "
            "train` or RAFTRegressor.save"
        )
    if not is_marked_run(run):
        raise RaftlmError(
            f"{short(str(run))} has no .raftlm-run marker (made before raftlm marked its runs), so which "
            "files are the run's is unknown: re-save it with RAFTRegressor.load(RUN).save(NEW) and push NEW"
        )
    listed = read_run_marker(run).get("files", [])
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        raise RaftlmError(
            f"{short(str(run))}'s .raftlm-run marker is damaged (its files are not a list of names)"
        )
    ours = RUN_FILES | set(listed)
    names = sorted(
        p.name
        for p in run.iterdir()
        if p.name in ours
        and p.is_file()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and p.name not in NOT_UPLOADED
    )
    # (a sweep drops its runs' weights: keep_models false)
    if not any(MODEL_WEIGHTS.fullmatch(n) for n in names):
        raise RaftlmError(
            f"{short(str(run))} holds no model weights (model.safetensors), so it would push a model that "
            "cannot load: push a run that has them (a sweep keeps them with keep_models: true)"
        )
    return names


def offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in TRUE


def check_online(repo_id: str) -> None:
    if offline():
        raise RaftlmError(
            f"cannot push to {short(repo_id)}: HF_HUB_OFFLINE is set; unset it, go online and push again"
        )


def push(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``push_files(run_dir)`` to the model repository ``repo_id`` (created if missing, private
    if asked; on branch ``revision``, created if missing). Returns the commit's URL."""
    from huggingface_hub import HfApi

    run = Path(run_dir)
    files = push_files(run)
    check_online(repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(run),
            allow_patterns=[glob.escape(name) for name in files],
            revision=revision,
            commit_message=commit_message or f"raftlm push {run.name}",
        )
    except Exception as err:  # noqa: BLE001 - the network boundary: every failure is one line
        raise RaftlmError(push_error(repo_id, err)) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def push_error(repo_id: str, err: Exception) -> str:
    """One line for a failed push: offline, unreachable, not allowed, a bad id, or the Hub's own words."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    first = (str(err).splitlines() or [""])[0][:160]
    where = f"cannot push to {short(repo_id)}"
    if isinstance(err, OfflineModeIsEnabled):
        return f"{where}: HF_HUB_OFFLINE is set; unset it, go online and push again"
    if isinstance(err, HFValidationError):
        return f"{where}: not a valid repository id ({first}): use NAMESPACE/NAME"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        return (
            f"{where}: the Hub refused ({status}): log in with a token that can write there "
            "(`hf auth login`, or set HF_TOKEN)"
        )
    if (
        isinstance(err, OSError)
        or "connect" in type(err).__name__.lower()
        or "timeout" in type(err).__name__.lower()
    ):
        return f"{where}: cannot reach the Hugging Face Hub ({type(err).__name__}: {first}): go online and push again"
    return f"{where} ({type(err).__name__}: {first})"
