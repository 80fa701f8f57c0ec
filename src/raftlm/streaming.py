"""``raftlm predict`` over files of any size: rows in chunks, JSON lines out as they are predicted.

The output still appears whole or not at all: rows go to a partial file beside it
(``.NAME.partial``), flushed after every chunk and renamed onto NAME at the end. ``--resume``
continues an interrupted prediction from that file; ``.NAME.partial.json`` records what it belongs
to. Neither matches the ``.NAME.*.tmp`` files of ``io.atomic_write``, and only ``--overwrite``
deletes them. Under torchrun / accelerate every process predicts one contiguous block of rows into
``.NAME.RofW.partial`` and the main process concatenates the blocks in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from raftlm import methods
from raftlm.config import Config
from raftlm.core import Example, RaftlmError, launch_state, short
from raftlm.decoders import TEXT_DECODERS, one_number, text_decoded
from raftlm.files import CHUNK_ROWS, file_sha256, row_chunks, scan, to_examples
from raftlm.io import (  # (the partial-file rules import no torch: `raftlm predict` checks them first)
    REPLACED,
    REPLACES,
    atomic_write,
    disk_error,
    file_identity,
    is_run_dir,
    job_path,
    partial_files,
    partial_path,
    to_json,
)
from raftlm.pipeline import predict_examples
from raftlm.predictor import Predictions, Predictor, unparsed_said_once
from raftlm.run import model_fingerprint, read_metadata


def grid_probs(predictor: Predictor, probs: np.ndarray) -> dict[str, float]:
    """One row's grid probabilities keyed by grid string (rounded to 6 decimals, as in the output file)."""
    return dict(zip(predictor.grid.strings, np.round(probs, 6).tolist(), strict=True))


WITH_PROBS = '--with-probs ("with_probs", the grid probabilities)'


def check_with_probs(predictor: Predictor, has_probs: bool) -> None:
    """Grid probabilities asked of a model or decoder without them (``has_probs``: the decoder reads the
    grid's distribution; greedy and sample-rail decode text): refused, before or after the forward pass."""
    if predictor.head is not None and not predictor.has_grid:
        raise RaftlmError(one_number(WITH_PROBS, "it has none; drop them"))
    if not has_probs:  # greedy, sample-rail: the numbers come from decoded text
        raise RaftlmError(
            text_decoded(
                WITH_PROBS,
                f"a text decoder ({', '.join(TEXT_DECODERS)})",
                "drop them, or use decoder rail, mode or median",
            )
        )


def prediction_rows(
    predictor: Predictor,
    preds: Predictions,
    examples: list[Example],
    start: int,
    with_probs: bool,
    extra: list[dict] | None = None,
    with_prompts: bool = False,
) -> Iterator[dict]:
    """Output rows: index (0-based row of the input), prediction, target if known, probs + entropy,
    the prompt the row became (``with_prompts``), and ``extra``'s fields per row (uncertainty: std,
    quantiles, intervals)."""
    if with_probs:
        check_with_probs(predictor, preds.probs is not None)
    for j, x in enumerate(examples):
        row = {"index": start + j, "prediction": float(preds.values[j])}
        if x.target is not None:
            row["target"] = x.target
        if with_prompts:
            row["prompt"] = x.text
        if with_probs and preds.probs is not None:
            row["probs"] = grid_probs(predictor, preds.probs[j])
            row["entropy"] = float(preds.entropy[j])
            if preds.shift is not None:  # raft-head: prediction = the grid distribution's mean + this
                row["correction"] = float(preds.shift[j])
        if preds.unparsed is not None:  # text decoders: decoded texts that were not a number (count as 0.0)
            row["unparsed"] = int(preds.unparsed[j])
        yield {**row, **(extra[j] if extra else {})}


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block of rows [begin, end) that process ``rank`` of ``world`` predicts."""
    return n * rank // world, n * (rank + 1) // world


def complete_rows(part: Path) -> int:
    """Rows fully written to a partial file; a torn last line (killed mid-write) is cut off."""
    count = good = 0
    with open(part, "rb+") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            count, good = count + 1, good + len(line)
        f.truncate(good)
    return count


def prediction_job(
    cfg: Config,
    input: str | Path,
    rows: int,
    with_probs: bool,
    with_prompts: bool,
    fields_settings: dict | None = None,
    processes: int = 1,
) -> dict:
    """The record ``.NAME.partial.json`` keeps of a prediction, which a resume must match: the input file
    (path and content hash), the model, the decoder, every output setting. Both engines write it
    (``raftlm predict`` and ``--engine ray``), so either resumes the other's partial file."""
    return {
        "input": str(Path(input).resolve()),
        "input_sha256": file_sha256(input),
        "model": model_fingerprint(cfg.model.name),
        "decoder": job_decoder(cfg),
        "with_probs": with_probs,
        "with_prompts": with_prompts,
        "rows": rows,
        "processes": processes,
        **(fields_settings or {}),
    }


def fields_settings(cfg: Config, with_uncertainty: bool) -> dict:
    """The uncertainty fields' settings a resume must match (nothing when none are asked for)."""
    e = cfg.eval
    if not (e.interval or with_uncertainty):
        return {}
    return {"interval": e.interval, "interval_kind": e.interval_kind, "uncertainty": with_uncertainty}


def job_decoder(cfg: Config) -> str:
    """What the model of ``cfg`` decodes with, read without loading it (``Method.decoder_name``): a head
    run's head, else ``eval.decoder``."""
    name = cfg.model.name
    method = read_metadata(Path(name))["method"] if is_run_dir(name) else cfg.method.method
    return methods.get(method).decoder_name(cfg.eval.decoder, method)


def begin_job(output: Path, job: dict, resume: bool) -> int:
    """Rows this process already wrote (``--resume``); otherwise stale partial files go (main process)
    and ``job`` is recorded."""
    state, saved = launch_state(), job_path(output)
    resuming = resume and saved.exists()
    state.wait_for_everyone()  # every rank has looked (here and in check_output) before rank 0 writes the record
    if resuming:
        try:
            old = json.loads(saved.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise RaftlmError(
                f"cannot resume the prediction into {output}: its record {saved} is unreadable; pass "
                "--overwrite to start over"
            )
        for key in (REPLACES, REPLACED):  # (what the record adds for an --overwrite, not the job's own)
            old.pop(key, None)
        if old != job:
            raise RaftlmError(
                f"cannot resume the prediction into {output}: {_changes(old, job)} since it started; "
                "pass --overwrite to start over (or restore what changed)"
            )
        part = partial_path(output, state.process_index, state.num_processes)
        return complete_rows(part) if part.exists() else 0
    if state.is_main_process:
        for stale in partial_files(output):
            stale.unlink()
        # an --overwrite's: the old output stays until the new one is whole, and is told from it by its identity
        replaced = {REPLACES: True, REPLACED: file_identity(output)} if output.exists() else {}
        record = {**job, **replaced}
        atomic_write(saved, lambda p: p.write_text(json.dumps(record) + "\n"))
    state.wait_for_everyone()
    return 0


CHANGED = {  # how a resume's mismatch is said, per key of the job record
    "input_sha256": "the input file's content changed",
    "model": "the model changed (retrained, replaced or another one)",
    "input": "the input is another file",
}


def _changes(old: dict, job: dict) -> str:
    said = []
    for k, v in job.items():
        if old.get(k) != v:
            said.append(CHANGED.get(k, f"{k} changed ({short(old.get(k))} -> {short(v)})"))
    return "; ".join(said) or "its settings changed"


def finish_job(output: Path, world: int = 1) -> None:
    """Partial file(s) -> the output, atomically; then the job record goes."""
    parts = [partial_path(output, r, world) for r in range(world)]
    if world == 1:
        os.replace(parts[0], output)
    else:
        atomic_write(output, lambda p: _concat(parts, p))
        for part in parts:
            part.unlink()
    job_path(output).unlink(missing_ok=True)


def _concat(parts: list[Path], target: Path) -> None:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)


def predict_file(
    predictor: Predictor,
    cfg: Config,
    input: str | Path,
    output: str | Path,
    with_probs: bool = False,
    resume: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    fields: Callable[[Predictions], list[dict]] | None = None,
    fields_settings: dict | None = None,
    with_prompts: bool = False,
    scanned: tuple[int, bool] | None = None,
) -> int:
    """Predict every row of ``input`` into the JSON-lines file ``output`` in bounded memory; returns
    the number of rows. Call ``check_output`` first (before loading the model). ``fields(preds)`` adds
    per-row fields (described by ``fields_settings``, which a resume must match)."""
    output, state = Path(output), launch_state()
    n, has_target = scanned or scan(input, predictor.template, cfg.data.target_column)
    job = prediction_job(cfg, input, n, with_probs, with_prompts, fields_settings, state.num_processes)
    done = begin_job(output, job, resume)
    begin, end = shard(n, state.process_index, state.num_processes)
    part = partial_path(output, state.process_index, state.num_processes)
    target = cfg.data.target_column if has_target else None
    quiet = not cfg.training.progress_bar or not state.is_main_process
    bar = tqdm(total=end - begin, initial=done, desc="predict", disable=quiet)
    try:
        with unparsed_said_once(), appending(output, part, done, state.num_processes) as write:
            for start, rows in row_chunks(input, chunk_rows, begin + done, end):
                examples = to_examples(rows, predictor.template, target, str(input), start + 1)
                preds = predict_examples(predictor, examples, cfg, desc=None)
                write(
                    to_json(r) + "\n"  # strict JSON: a non-finite number is null, as the server writes it
                    for r in prediction_rows(
                        predictor,
                        preds,
                        examples,
                        start,
                        with_probs,
                        fields(preds) if fields else None,
                        with_prompts,
                    )
                )
                bar.update(len(rows))
    finally:
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        finish_job(output, state.num_processes)
    state.wait_for_everyone()
    return n


@contextlib.contextmanager
def appending(
    output: Path, part: Path, done: int, world: int = 1
) -> Iterator[Callable[[Iterable[str]], None]]:
    """``write(lines)`` appending to the partial file ``part`` after its ``done`` rows, each call flushed to
    disk (a chunk written is a chunk a resume keeps). A failure leaves the file for ``--resume``; one that
    came before any row leaves nothing (``_discard_if_empty``). Both engines write through it."""
    try:
        with open(part, "a" if done else "w") as f:

            def write(lines: Iterable[str]) -> None:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())

            yield write
    except OSError as err:
        _discard_if_empty(output, part, world)
        raise disk_error(err, output, "rerun with --resume (the rows written so far are kept)") from None
    except BaseException:
        _discard_if_empty(output, part, world)
        raise


def _discard_if_empty(output: Path, part: Path, world: int) -> None:
    """A prediction that failed before writing a row (e.g. a decoder this model cannot run) leaves
    nothing to resume, so nothing behind."""
    if part.exists() and part.stat().st_size == 0:
        part.unlink()
        if world == 1:
            job_path(output).unlink(missing_ok=True)
