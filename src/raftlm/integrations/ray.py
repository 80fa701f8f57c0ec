"""Batch prediction on Ray Data (``pip install 'raftlm[ray]'``).

``RaftlmPredictor`` is a callable class for ``ray.data.Dataset.map_batches``. Each actor loads the model
once, on the device and in the dtype ``raftlm predict`` would choose there (the GPU Ray gave the actor, in
bf16; else the CPU in float32), and turns a batch of rows into the columns ``raftlm predict`` writes
(prediction, target, probs and entropy, uncertainty fields) through the same functions
(``files.to_examples``, ``pipeline.predict_examples``, ``streaming.prediction_rows``,
``uncertainty.prediction_fields``), so the numbers are the same::

    ds = ray.data.read_parquet("s3://bucket/reviews/")
    preds = ds.map_batches(RaftlmPredictor, fn_constructor_kwargs={"model": "/shared/runs/raft"},
                           compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_format="pandas")

``predict_on_ray`` is ``raftlm predict --engine ray``: Ray Data reads the input (CSV/TSV/JSONL/Parquet, a
file or a folder, local or on any filesystem Ray Data reads), ``--actors`` actors predict, and this
process writes the rows in input order: one JSONL file byte for byte as ``raftlm predict`` writes it, or
with ``--shards ROWS`` a folder of Parquet files of ROWS rows each, every row with its input row id
(``index``). The run directory must be readable at the same path on every node. From a local input file
the JSONL rows go through ``raftlm predict``'s partial file and record (``streaming``), so ``--resume``
continues an interrupted prediction of either engine.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from raftlm.config import Config
from raftlm.core import RaftlmError, Splits
from raftlm.data import command_inputs, load_splits
from raftlm.files import FILE_KINDS, iter_rows, scan, to_examples
from raftlm.io import (
    META_FILE,
    SHARDS_FILE,
    SHARDS_MARKER,
    atomic_write,
    check_eval_model,
    check_folder,
    check_output,
    check_output_file,
    check_replaceable,
    is_run_dir,
    our_job,
    output_lock,
    registering,
    same_file,
    to_json,
)
from raftlm.pipeline import load_for_eval, predict_examples
from raftlm.prompts import template_fields
from raftlm.streaming import (
    appending,
    begin_job,
    fields_settings,
    finish_job,
    job_path,
    partial_path,
    prediction_job,
    prediction_rows,
)
from raftlm.uncertainty import Calibration, check_run_interval, prediction_fields

MISSING = "raftlm predict --engine ray needs ray: pip install 'raftlm[ray]'"
BATCH_ROWS = 256  # rows per actor call; each call runs forward passes of eval.batch_size rows
BLOCK_ROWS = 2048  # a local file is read as blocks of at most this many rows (at least 2 per actor)
READERS = {"csv": "csv", "tsv": "csv", "jsonl": "json", "json": "json", "parquet": "parquet"}
ROW_ERROR = "_raftlm_row_error"  # the column an actor answers with when a row is bad (CLI mode)


def _not_shards(output: Path) -> list[str]:
    """What a --shards output folder holds that --shards did not write (sorted names)."""
    return sorted(p.name for p in output.iterdir() if not SHARDS_FILE.fullmatch(p.name))


def stale_swap(name: str, output: str) -> bool:
    """Whether ``name`` is the folder a swap onto --shards output ``output`` parks the old output in
    (``_swap_in``'s mkdtemp: ``.OUTPUT.XXXXXXXX.shards``), left by a kill."""
    return re.fullmatch(re.escape(f".{output}.") + r"[a-z0-9_]{8}\.shards", name) is not None


def _shards_leftover(folder: Path, output: str) -> bool:
    """Whether ``folder`` (named as ``stale_swap`` says) holds only what a --shards write puts there: its
    shards (a staging folder), or an old output of them (a swap's parked one, whole or part deleted)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    inside = list(folder.iterdir())
    if [p.name for p in inside] == [output] and inside[0].is_dir() and not inside[0].is_symlink():
        folder = inside[0]
    return not _not_shards(folder) and not any(p.is_symlink() or not p.is_file() for p in folder.iterdir())


def require_ray():
    """The ``ray`` module with Ray Data, or the one-line error that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (pandas and pyarrow come with it)
    except ModuleNotFoundError:
        raise RaftlmError(MISSING) from None
    return ray


class RaftlmPredictor:
    """Predictions for a batch of rows, with the model loaded once per actor.

    ``model`` is a run directory (its ``config.yaml`` gives the settings, ``overrides`` change them:
    ``{"eval.decoder": "median"}``), or pass a whole ``config``. ``targets``: parse the target column
    (True), not (False), or where the batch has it (None). A bad row raises a RaftlmError naming its row
    in the batch; ``row_errors="column"`` answers with a one-row batch holding the message and the row
    instead, so a caller that knows where the batch starts can name the input row."""

    def __init__(
        self,
        model: str | None = None,
        config: Config | dict | None = None,
        overrides: dict | None = None,
        with_probs: bool = False,
        with_uncertainty: bool = False,
        with_prompts: bool = False,
        targets: bool | None = None,
        splits: Splits | None = None,
        row_errors: str = "raise",
    ):
        self.cfg = _config(model, config, overrides)
        name = self.cfg.model.name
        if not is_run_dir(name) and splits is None:  # zero-shot: the dataset gives prompt and grid
            splits = load_splits(self.cfg.data)
        self.predictor = load_for_eval(self.cfg, None if is_run_dir(name) else splits)
        wants_intervals = self.cfg.eval.interval and is_run_dir(name)
        self.calibration = Calibration.load(name) if wants_intervals else None
        self.with_probs, self.with_uncertainty, self.with_prompts = with_probs, with_uncertainty, with_prompts
        self.targets, self.row_errors = targets, row_errors

    def __call__(self, batch):
        rows = _rows(batch)
        column = self.cfg.data.target_column
        has_target = self.targets if self.targets is not None else bool(rows) and column in rows[0]
        target = column if has_target else None
        try:
            examples = to_examples(rows, self.predictor.template, target, "batch")
        except RaftlmError as err:
            if self.row_errors == "raise":
                raise
            return _like(batch, [_row_error(rows, self.predictor.template, target) or {ROW_ERROR: str(err)}])
        preds = predict_examples(self.predictor, examples, self.cfg, desc=None)
        e = self.cfg.eval
        extra = prediction_fields(
            self.predictor,
            preds,
            self.calibration,
            e.interval,
            e.interval_kind,
            e.decoder,
            self.with_uncertainty,
        )
        out = list(
            prediction_rows(self.predictor, preds, examples, 0, self.with_probs, extra, self.with_prompts)
        )
        for row in out:
            del row["index"]  # a batch does not know where it starts: the caller numbers the rows
        return _like(batch, out)


def _config(model: str | None, config: Config | dict | None, overrides: dict | None) -> Config:
    """``config``, or the run directory's own ``config.yaml``; ``model`` and ``overrides`` on top."""
    if config is None:
        if not model or not (Path(model) / "config.yaml").is_file():
            raise RaftlmError(
                f"RaftlmPredictor(model={model!r}) is not a run directory with a config.yaml: pass a run "
                "from `raftlm train`, or config="
            )
        config = Config.from_yaml(str(Path(model) / "config.yaml"))
    base = config.to_dict() if isinstance(config, Config) else config
    return Config.build(base, {**({"model.name": str(model)} if model else {}), **(overrides or {})})


def _rows(batch) -> list[dict]:
    """A Ray Data batch (pyarrow Table, pandas DataFrame, or dict of numpy arrays) as rows of plain
    Python values, as ``files.iter_rows`` gives them."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    if hasattr(batch, "to_dict"):
        return batch.to_dict("records")
    columns = {k: np.asarray(v).tolist() for k, v in batch.items()}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _like(batch, rows: list[dict]):
    """``rows`` in the format of ``batch``."""
    if isinstance(batch, pa.Table):
        return pa.Table.from_pylist(rows)
    if hasattr(batch, "to_dict"):
        return type(batch)(rows)  # a pandas DataFrame
    keys = list(rows[0]) if rows else []
    return {
        k: np.array([r.get(k) for r in rows], dtype=object if isinstance(rows[0][k], dict) else None)
        for k in keys
    }


def _row_error(rows: list[dict], template: str, target: str | None) -> dict | None:
    """The first bad row of a batch: its 0-based place and the message without the place."""
    try:
        to_examples(rows, template, target, "", 1)
    except RaftlmError as err:
        found = re.match(r" ?row (\d+): (.*)", str(err), re.S)
        if found:
            return {ROW_ERROR: found.group(2), "row": int(found.group(1)) - 1}
    return None


# --- raftlm predict --engine ray ------------------------------------------------------------------


def predict_on_ray(args, cfg: Config, dataset_given: bool) -> None:
    """``raftlm predict --engine ray``: the output is checked first, then the rows of a local CSV/JSONL
    file (as ``raftlm predict`` does), then Ray starts (or is joined: ``--ray-address``)."""
    ray = require_ray()
    if not args.input or not args.output:
        raise RaftlmError("predict needs --input (a file or folder Ray Data reads) and --output")
    if args.resume and not _local_file(args.input):
        raise RaftlmError(
            f"--resume needs a local CSV, TSV or JSONL input file (its content hash proves the rows are the "
            f"same), and {args.input} is not one: rerun without --resume"
        )
    if args.actors is not None and args.actors < 1:
        raise RaftlmError(f"--actors {args.actors}: give a positive number of model copies")
    inputs = command_inputs(cfg, args.input, args.config)  # (no output may be one: as `raftlm predict`)
    if args.shards:
        check_folder(Path(args.output).absolute().parent, args.output, create=False)
    else:
        check_output_file(args.output, True, inputs)  # the path first, then (locked) its state
    with output_lock(args.output):  # one writer per output, as `raftlm predict`
        output = check_destination(args.output, args.overwrite, args.shards, args.input, args.resume, inputs)
        _predict_on_ray(ray, args, cfg, dataset_given, output)


def _predict_on_ray(ray, args, cfg: Config, dataset_given: bool, output: Path) -> None:
    check_eval_model(cfg.model.name, dataset_given)
    if Path(cfg.model.name).exists():  # actors may start in another working directory
        cfg = Config.build(cfg.to_dict(), {"model.name": str(Path(cfg.model.name).absolute())})
    splits = None if is_run_dir(cfg.model.name) else load_splits(cfg.data)
    kind, columns = _source(args.input)
    n, has_target = _check_rows(args.input, _template(cfg, splits), cfg.data.target_column)
    check_run_interval(cfg)  # (as `raftlm predict`: before Ray starts and its actors load the model)
    with registering(output):  # written into a run: its marker lists it (as `raftlm predict`'s output)
        # rows already in the partial file or folder: an output from a local file goes through one
        done = None
        if n is not None:
            fields = fields_settings(cfg, args.with_uncertainty)
            job = prediction_job(cfg, args.input, n, args.with_probs, args.with_prompts, fields)
            if args.shards:
                done = begin_shards(output, {**job, "shard_rows": args.shards}, args.resume)
            else:
                done = begin_job(output, job, args.resume)
            if done == n:  # killed after its last row, before the rename
                finish_shards(output, n) if args.shards else finish_job(output)
                print(f"wrote {n} predictions to {output}")
                return
        started = _connect(ray, args.ray_address, args.quiet)
        try:
            actors = args.actors or _default_actors(ray)
            names = template_fields(_template(cfg, splits))
            ds = _read(ray, args.input, kind, columns, n, actors, names, cfg.data.target_column)
            if done:
                ds = ds.split_at_indices([done])[1]  # the rows the partial file lacks (reading is cheap)
            preds = ds.map_batches(
                RaftlmPredictor,
                fn_constructor_kwargs={
                    "config": cfg,
                    "with_probs": args.with_probs,
                    "with_uncertainty": args.with_uncertainty,
                    "with_prompts": args.with_prompts,
                    "targets": has_target,
                    "splits": splits,
                    "row_errors": "column",
                },
                batch_format="pyarrow",
                batch_size=BATCH_ROWS,
                compute=ray.data.ActorPoolStrategy(size=actors),
                **_actor_resources(ray, actors, cfg.eval.device),
            )
            preds.context.execution_options.preserve_order = True
            preds.context.enable_progress_bars = not args.quiet
            written = write_output(output, _ordered(preds, args.input, done or 0), args.shards, done)
        except (RaftlmError, KeyboardInterrupt):
            raise
        except Exception as err:
            one_line = _one_line(err, args.input)
            if one_line is None:
                raise
            raise one_line from None
        finally:
            if started:
                ray.shutdown()
        if n is not None and written != n:
            raise RaftlmError(
                f"Ray Data read {written} rows of {args.input}, raftlm's reader {n}: report this"
            )
        print(f"wrote {written} predictions to {output}")


def _template(cfg: Config, splits: Splits | None) -> str:
    """The prompt template the actors will use: the run's (raftlm.json) or, zero-shot, the dataset's."""
    if splits is not None:
        return splits.template
    return json.loads((Path(cfg.model.name) / META_FILE).read_text())["template"]


def _suffix(name: str) -> str:
    """The file type a name says (``.csv``, ``.csv.gz`` -> csv)."""
    return name.lower().removesuffix(".gz").rsplit(".", 1)[-1]


def _source(path: str) -> tuple[str, list[str] | None]:
    """The input's file type (of its first file, for a folder) and, for CSV/TSV, its header: columns are
    read as text, as raftlm's own reader reads them (Arrow would turn ``"007"`` into 7)."""
    from pyarrow import csv as pacsv
    from pyarrow import fs as pafs

    try:
        if "://" in path:
            filesystem, where = pafs.FileSystem.from_uri(path)
        else:
            filesystem, where = pafs.LocalFileSystem(), os.path.abspath(path)
        info = filesystem.get_file_info(where)
        files = [where] if info.type == pafs.FileType.File else []
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(where, recursive=True))
            files = sorted(i.path for i in found if i.is_file and not i.base_name.startswith((".", "_")))
        if not files:
            raise RaftlmError(f"input {path} does not exist or holds no files: check the path")
        files = [f for f in files if _suffix(f) in READERS] or files
        kind = _suffix(files[0])
        if kind not in READERS:
            raise RaftlmError(f"{files[0]}: unknown file type {kind!r}: use .csv, .tsv, .jsonl or .parquet")
        if kind not in ("csv", "tsv"):
            return kind, None
        compression = "gzip" if files[0].endswith(".gz") else None
        with filesystem.open_input_stream(files[0], compression=compression) as f:
            options = pacsv.ParseOptions(delimiter=FILE_KINDS[kind])
            return kind, pacsv.open_csv(f, parse_options=options).schema.names
    except (OSError, pa.ArrowException) as err:
        raise RaftlmError(f"cannot read {path} ({str(err).splitlines()[0]}): check the path") from None


def _check_rows(path: str, template: str, target_column: str) -> tuple[int | None, bool | None]:
    """A local CSV/TSV/JSONL file is checked whole by raftlm's reader before Ray starts: a bad row fails
    with its file line, exactly as in ``raftlm predict``. Other inputs are checked by the actors (a bad
    row is named by its 1-based row number in read order). Returns (rows, whether they carry targets)."""
    return scan(path, template, target_column) if _local_file(path) else (None, None)


def _local_file(path: str) -> bool:
    """A local file raftlm's own reader reads (CSV, TSV, JSON lines)."""
    return "://" not in path and Path(path).is_file() and _suffix(path) in FILE_KINDS


def _connect(ray, address: str | None, quiet: bool) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray on this machine.
    False when this process had joined one already (it is left running)."""
    if ray.is_initialized():
        return False
    local = address is None and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(
            address=address,
            logging_level="WARNING" if quiet else "INFO",
            **({"include_dashboard": False} if local else {}),
        )
    except ConnectionError as err:
        raise RaftlmError(
            f"cannot reach the Ray cluster at {address or os.environ.get('RAY_ADDRESS')} ({err}): start it "
            "with `ray start --head`, or check --ray-address"
        ) from None
    return True


def _default_actors(ray) -> int:
    """One actor per GPU of the cluster; one without GPUs."""
    return max(1, int(ray.cluster_resources().get("GPU", 0)))


def _actor_resources(ray, actors: int, device: str) -> dict:
    """A GPU per actor where the cluster has GPUs (unless --device cpu). CPUs: an equal share of the
    cluster's, one left for Ray Data's readers (with every CPU held by an actor, reading waits forever);
    Ray runs an actor's torch on floor(share) threads (1 below one CPU)."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if device != "cpu" else 0
    if gpus and actors > gpus:
        raise RaftlmError(
            f"--actors {actors} but the cluster has {gpus} GPU(s): use at most one actor per GPU"
        )
    share = max(0.0, (total.get("CPU", 1.0) - 1) / actors)
    if share >= 1:
        biggest = max(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
        share = float(min(math.floor(share), max(1, math.floor(biggest))))
    return {"num_cpus": share, **({"num_gpus": 1} if gpus else {})}


def _read(
    ray,
    path: str,
    kind: str,
    columns: list[str] | None,
    n: int | None,
    actors: int,
    fields: list[str] = (),
    target: str | None = None,
):
    """The input as a Ray dataset; a local file of ``n`` rows in enough blocks for every actor. A JSONL
    line's values keep their JSON types (Arrow's reader, which reads one object per line): Ray's
    ``lines=True`` went through pandas, which made a column of "1999" or "007" numbers and a column named
    like a date timestamps; the template's ``fields`` are text, as `raftlm predict` reads them. A local
    file's other columns are not read but its ``target`` column (Arrow wants one type per column: a
    metadata column of 1 and "x" failed, where `raftlm predict` ignores it)."""
    blocks = max(2 * actors, math.ceil(n / BLOCK_ROWS)) if n else None
    if READERS[kind] == "parquet":
        return ray.data.read_parquet(path, override_num_blocks=blocks)
    if READERS[kind] == "json":
        from pyarrow import json as pajson

        extensions = [f"{k}{gz}" for k in ("jsonl", "json") for gz in ("", ".gz")]
        # (a field a template names twice is one column: a schema naming it twice read every column as text)
        schema = [(f, pa.string()) for f in dict.fromkeys(fields)]
        if n is not None and target and target not in fields:
            schema.append((target, _json_type(path, target)))
        text = pajson.ParseOptions(
            explicit_schema=pa.schema(schema), unexpected_field_behavior="infer" if n is None else "ignore"
        )
        return ray.data.read_json(
            path, file_extensions=extensions, override_num_blocks=blocks, parse_options=text
        )
    from pyarrow import csv as pacsv

    return ray.data.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=FILE_KINDS[kind], newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns or []}),
        file_extensions=[kind, f"{kind}.gz"],
        override_num_blocks=blocks,
    )


def _json_type(path: str, column: str) -> pa.DataType:
    """How Arrow reads a local JSONL file's ``column``: numbers when its first row's value is a number (an
    integer among floats too), else text (``rows.parse_target`` reads "3.5" as `raftlm predict` does)."""
    value = next(iter_rows(path), {}).get(column)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return pa.float64() if number or value is None else pa.string()


def _ordered(preds, input: str, start: int = 0) -> Iterator[pa.Table]:
    """The predicted batches in input order (from row ``start``); a bad row reported by an actor is raised
    with its row number (1-based, in read order)."""
    n = start
    for table in preds.iter_batches(batch_format="pyarrow", batch_size=None):
        if ROW_ERROR in table.column_names:
            error = table.slice(0, 1).to_pylist()[0]
            raise RaftlmError(f"{input} row {n + (error.get('row') or 0) + 1}: {error[ROW_ERROR]}")
        n += table.num_rows
        yield table


def _one_line(err: Exception, input: str) -> RaftlmError | None:
    """Ray ships an actor's or reader's exception as text (its cause is dropped on the way): a
    RaftlmError's line, or Arrow's complaint about the input, is found in it."""
    text = str(err)
    found = re.search(r"RaftlmError: (.+)", text)
    if found:
        return RaftlmError(found.group(1))
    found = re.search(r"Arrow(?:Invalid|TypeError): (.+)", text)
    if found:
        return RaftlmError(f"Ray Data cannot read {input} ({found.group(1)}): fix the file")
    if "JSONDecodeError" in text:  # (Arrow refused the file, and Ray's fallback read it as one JSON value)
        return RaftlmError(
            f"Ray Data cannot read {input}: Arrow's JSON reader wants one type per column, and a column it "
            'reads changes type between rows (e.g. 4 and "4"): give the column one type, or drop --engine ray'
        )
    return None


# --- the output: whole or not at all --------------------------------------------------------------


def check_destination(
    output: str | Path,
    overwrite: bool,
    shard_rows: int | None,
    input: str,
    resume: bool = False,
    others: Iterable[str | Path] = (),
) -> Path:
    """Before Ray starts or a model loads: a JSONL output goes through ``io.check_output`` (the
    output contract of ``raftlm predict``, its partial file's included); a --shards folder must be new, or
    one --shards wrote (its marker) with --overwrite, and not the input; an interrupted one's partial
    folder is continued (--resume) or replaced (--overwrite), never silently. An old output that an
    interrupted swap left parked (the output itself missing) is put back first; then a killed --shards
    write's staging folder is cleaned."""
    if not shard_rows:
        return check_output(output, overwrite, resume, input, others)
    if shard_rows < 1:
        raise RaftlmError(f"--shards {shard_rows}: give the rows per Parquet file, a positive number")
    output = Path(output)
    if output.exists() and same_file(output, input):
        raise RaftlmError(f"--output {output} is the input: write the shards to another folder")
    if overwrite and resume:
        raise RaftlmError(
            "--overwrite starts the prediction afresh and --resume continues it: pass one of them"
        )
    restore_parked(output)  # before the stale-folder cleanup below, which would delete it
    part, record, ours = shards_partial(output), job_path(output), our_job(output)
    if ours and not part.exists() and (rows := _finished_shards(output)) is not None:
        # a kill between the swap and the record's removal: that last step is finished here
        record.unlink(missing_ok=True)
        if resume:
            raise RaftlmError(
                f"the --shards prediction into {output} had finished ({rows} rows; a kill left its record, now "
                "removed): nothing to resume; pass --overwrite to predict again"
            )
        ours = False
    if part.exists() and not (ours and (part / SHARDS_MARKER).is_file()):
        raise RaftlmError(
            f"{part} exists but raftlm has no record of writing it: it may be a user's folder; move it, or "
            "write to another path"
        )
    if record.exists() and not ours:
        raise RaftlmError(
            f"{record} exists and is not a raftlm prediction record: move it, or write to another path"
        )
    if record.exists() and not (resume or overwrite):
        raise RaftlmError(
            f"an interrupted --shards prediction into {output} left its partial folder: pass --resume to "
            "continue it or --overwrite to start over"
        )
    if output.parent.is_dir():  # (this output's own: .preds.v2.*.shards is another output's, in use maybe)
        for stale in output.parent.glob(f".{glob.escape(output.name)}.*.shards"):
            if stale_swap(stale.name, output.name) and _shards_leftover(stale, output.name):
                shutil.rmtree(stale)
    if output.is_dir():
        if not (output / SHARDS_MARKER).is_file():
            raise RaftlmError(
                f"output folder {output} was not written by --shards (no {SHARDS_MARKER}): it is never "
                "replaced; choose another path"
            )
        # (a resumed job replaces it: that job started with --overwrite, or the folder would have stopped it)
        if not overwrite and not (resume and record.exists()):
            raise RaftlmError(
                f"output folder {output} already exists: pass --overwrite or choose another path"
            )
        if foreign := _not_shards(output):
            raise RaftlmError(
                f"output folder {output} holds files --shards did not write ({', '.join(foreign[:4])}), and "
                "replacing it would delete them: move them out of it, or choose another path"
            )
        check_replaceable(output, "--output")
    elif output.exists():
        raise RaftlmError(f"--shards writes a folder, and {output} is a file: choose another path")
    check_folder(output.parent, output)
    return output


def write_output(
    output: Path, tables: Iterable[pa.Table], shard_rows: int | None, done: int | None = None
) -> int:
    """The one place --engine ray writes (rows numbered in input order): Parquet shards in a staging
    folder renamed onto ``output``; or a JSONL file, appended to the partial file that ``done`` rows are
    already in (``streaming.begin_job`` recorded it), or with ``done`` None (an input that is not a local
    file) through ``io.atomic_write``. Returns the rows of the whole output."""
    if shard_rows:
        if done is not None:
            return _write_partial_shards(output, tables, shard_rows, done)
        return _write_shards(output, tables, shard_rows)
    return _write_jsonl(output, tables) if done is None else _write_partial(output, tables, done)


def _jsonl(tables: Iterable[pa.Table], start: int) -> Iterator[list[str]]:
    """Each table's rows as the lines ``streaming.predict_file`` writes, numbered from ``start``."""
    for table in tables:
        yield [to_json({"index": i, **row}) + "\n" for i, row in enumerate(table.to_pylist(), start)]
        start += table.num_rows


def _write_partial(output: Path, tables: Iterable[pa.Table], done: int) -> int:
    n = done
    with appending(output, partial_path(output), done) as write:  # as streaming.predict_file appends
        for lines in _jsonl(tables, done):
            write(lines)
            n += len(lines)
    finish_job(output)
    return n


def _write_jsonl(output: Path, tables: Iterable[pa.Table]) -> int:
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w") as f:
            for lines in _jsonl(tables, 0):
                f.writelines(lines)
                n += len(lines)

    atomic_write(output, write)
    return n


def _write_shards(output: Path, tables: Iterable[pa.Table], shard_rows: int) -> int:
    from pyarrow import parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".shards", dir=output.parent))
    n, shards = 0, 0
    try:
        for shards, shard in enumerate(_shards(tables, shard_rows, 0), start=1):
            pq.write_table(shard, staging / _shard_name(shards - 1))
            n += shard.num_rows
        marker = {"rows": n, "shards": shards, "shard_rows": shard_rows}
        (staging / SHARDS_MARKER).write_text(json.dumps(marker) + "\n")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
        _swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return n


def shards_partial(output: Path) -> Path:
    """The folder a resumable --shards prediction (from a local input file) writes its shards into."""
    return output.parent / f".{output.name}.partial.shards"


def _shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _shards(tables: Iterable[pa.Table], shard_rows: int, start: int) -> Iterator[pa.Table]:
    """The rows of ``tables``, numbered from ``start`` (column ``index``), cut into tables of ``shard_rows``
    rows (the last one shorter)."""
    n, pending = start, None
    for table in tables:
        table = table.add_column(0, "index", pa.array(range(n, n + table.num_rows), pa.int64()))
        n += table.num_rows
        pending = table if pending is None else pa.concat_tables([pending, table], promote_options="default")
        while pending.num_rows >= shard_rows:
            yield pending.slice(0, shard_rows)
            pending = pending.slice(shard_rows)
    if pending is not None and pending.num_rows:
        yield pending


def begin_shards(output: Path, job: dict, resume: bool) -> int:
    """Rows the partial folder already holds (``--resume``, after ``streaming.begin_job`` checked the record:
    its shards 0..k-1, each written whole); otherwise a fresh partial folder, with the record."""
    from pyarrow import parquet as pq

    part = shards_partial(output)
    resuming = resume and job_path(output).exists()
    begin_job(output, job, resume)  # the record: checked against this job, or written
    if not resuming and part.exists():
        shutil.rmtree(part)  # an interrupted one of ours (check_destination proved it), started afresh
    part.mkdir(exist_ok=True)
    (part / SHARDS_MARKER).write_text(json.dumps({"partial": True, "shard_rows": job["shard_rows"]}) + "\n")
    for torn in part.glob(".part-*.tmp"):  # a shard being written when the run was killed
        torn.unlink()
    rows, i = 0, 0
    while (part / _shard_name(i)).is_file():
        rows, i = rows + pq.ParquetFile(part / _shard_name(i)).metadata.num_rows, i + 1
    return rows


def _finished_shards(output: Path) -> int | None:
    """The rows of the finished --shards output folder ``output`` when it is the one its prediction record
    is for (its marker, written by ``finish_shards`` after the record, counts the record's rows), else None:
    an --overwrite's old folder predates the record."""
    record = job_path(output)
    try:
        marker = json.loads((output / SHARDS_MARKER).read_text(encoding="utf-8"))
        job = json.loads(record.read_text(encoding="utf-8"))
        newer = (output / SHARDS_MARKER).stat().st_mtime_ns >= record.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    if not (isinstance(marker, dict) and isinstance(job, dict)) or "shards" not in marker:
        return None
    return marker["rows"] if newer and marker.get("rows") == job.get("rows") else None


def finish_shards(output: Path, rows: int) -> None:
    """The partial folder, every row in it, becomes the output (replacing an old --shards folder that
    --overwrite let through); then the record goes."""
    part = shards_partial(output)
    shards = len(list(part.glob("part-*.parquet")))
    marker = {
        "rows": rows,
        "shards": shards,
        "shard_rows": json.loads((part / SHARDS_MARKER).read_text())["shard_rows"],
    }
    (part / SHARDS_MARKER).write_text(json.dumps(marker) + "\n")
    _swap_in(part, output)
    job_path(output).unlink(missing_ok=True)


def _write_partial_shards(output: Path, tables: Iterable[pa.Table], shard_rows: int, done: int) -> int:
    """Shards into the partial folder after its ``done`` rows, each written whole (a temporary name, then
    renamed): a kill keeps every shard written, for ``--resume``; a failure before the first leaves
    nothing. Then ``finish_shards``."""
    from pyarrow import parquet as pq

    part, n = shards_partial(output), done
    try:
        for i, shard in enumerate(_shards(tables, shard_rows, done), start=done // shard_rows):
            tmp = part / f".{_shard_name(i)}.tmp"
            pq.write_table(shard, tmp)
            os.replace(tmp, part / _shard_name(i))
            n += shard.num_rows
    except BaseException:
        if not any(part.glob("part-*.parquet")):  # nothing to resume: nothing left behind
            shutil.rmtree(part, ignore_errors=True)
            job_path(output).unlink(missing_ok=True)
        raise
    finish_shards(output, n)
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(staging: Path, output: Path) -> None:
    """``staging`` onto ``output``; an old --shards folder there (checked before) goes after the swap."""
    if not output.exists():
        os.replace(staging, output)
        return
    if foreign := _not_shards(output):
        raise RaftlmError(  # (checked before the job too: these came while it ran)
            f"output folder {output} gained files --shards did not write while it predicted "
            f"({', '.join(foreign[:4])}), so it was not replaced: the predictions wait in {staging}; move "
            "those files out, then rerun with --resume"
        )
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".shards", dir=output.parent))
    try:
        os.replace(output, old / output.name)
        os.replace(staging, output)
    except BaseException:  # (Ctrl+C, SIGTERM, a failed rename) between the two renames: the old one back
        if not os.path.lexists(output) and (old / output.name).is_dir():
            os.replace(old / output.name, output)
        with contextlib.suppress(OSError):
            old.rmdir()
        raise
    shutil.rmtree(old)


def _whole_shards(folder: Path) -> bool:
    """Whether ``folder`` is a finished --shards output, whole: its marker's shard count of part files,
    nothing else (a parked old output that a kill left mid-deletion is not)."""
    if folder.is_symlink() or not folder.is_dir() or _not_shards(folder):
        return False
    try:
        shards = json.loads((folder / SHARDS_MARKER).read_text())["shards"]
    except (OSError, ValueError, TypeError, KeyError):
        return False
    names = {p.name for p in folder.glob("part-*.parquet")}
    return isinstance(shards, int) and names == {_shard_name(i) for i in range(shards)}


def restore_parked(output: Path) -> Path | None:
    """Put back an old --shards output that an interrupted ``_swap_in`` had parked
    (``.OUTPUT.XXXXXXXX.shards/OUTPUT``) when ``output`` is missing: an interrupt between its two renames
    left neither there, and the stale-folder cleanup then deleted the old one. The newest whole one, said on
    stderr; None when there was none. Under the output's lock (``check_destination``)."""
    if os.path.lexists(output) or not output.parent.is_dir():
        return None
    parked = [
        stale / output.name
        for stale in output.parent.glob(f".{glob.escape(output.name)}.*.shards")
        if stale_swap(stale.name, output.name)
        and stale.is_dir()
        and not stale.is_symlink()
        and [p.name for p in stale.iterdir()] == [output.name]
        and _whole_shards(stale / output.name)
    ]
    if not parked:
        return None
    newest = max(parked, key=lambda p: p.parent.stat().st_mtime)
    os.replace(newest, output)
    newest.parent.rmdir()
    print(
        f"raftlm: put back {output}, the old --shards output an interrupted --overwrite had moved to "
        f"{newest.parent} (the new one was never in place)",
        file=sys.stderr,
    )
    return output
