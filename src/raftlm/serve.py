"""``raftlm serve RUN_DIR``: a run directory behind an HTTP JSON API, with dynamic micro-batching.

One worker thread owns the model (``MicroBatcher``). A request's rows join a bounded queue; the
worker takes every row that arrived within ``max_wait_ms`` of the oldest waiting one, up to
``max_batch`` rows, runs one ``Predictor`` call and hands each request its slice. A request whose client
disconnected is cancelled before its batch is taken, so it is never computed. FastAPI + uvicorn serve it.
SIGTERM (or Ctrl+C) stops accepting connections, ends body reads still in progress (503), gives the
requests in flight ``graceful_timeout_s`` to finish, and exits 0.

Routes (docs/serving.md has the fields, examples and status codes; ``/openapi.json`` the schema):
``POST /predict`` ``{"inputs": [rows], ...}`` -> ``{"predictions": [...], ...}`` (columns, one entry per
row); ``POST /invocations`` (MLflow's scoring protocol) -> ``{"predictions": [...]}``; ``GET /`` a page
to try the model; ``GET /info``, ``/health``, ``/ping``, ``/metrics`` (Prometheus), ``/docs`` (each answers
HEAD too: the GET's headers, no body).
Errors are ``{"error": "one line"}``: 400 bad JSON or a bad row (the row contract's message, the same
as for files and the Python API), 408 body too slow, 413 too large, 422 wrong request shape, 503 queue
full or shutting down; 499 (logged, never seen) is a client that left.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import io
import itertools
import json
import logging
import signal
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from raftlm import __version__
from raftlm.config import Config, ServeSettings
from raftlm.core import KIND_CHOICES, RaftlmError, check_level, level_text, short
from raftlm.decoders import TEXT_DECODERS
from raftlm.files import csv_rows, to_examples
from raftlm.io import check_served_run, finite
from raftlm.pipeline import load_for_eval, predict_texts
from raftlm.predictor import Predictions, Predictor
from raftlm.prompts import template_fields
from raftlm.rows import check_columns, text_rows
from raftlm.streaming import check_with_probs, prediction_rows
from raftlm.uncertainty import KINDS, NO_DISTRIBUTION, Calibration, min_calibration_size, prediction_fields

log = logging.getLogger("raftlm.serve")


class Busy(Exception):
    """The queue is full or the server is stopping (HTTP 503)."""


@dataclass
class _Job:
    texts: list[str]
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Collects rows from concurrent requests into batches for one worker thread.

    ``run_batch(texts) -> Predictions`` is called on the worker thread only, so the model is never
    used concurrently. ``submit`` returns a ``concurrent.futures.Future`` of the request's slice; a
    future cancelled before its batch is taken (the client left) is dropped, its rows never computed.
    ``on_batch(rows, seconds)`` and ``on_drop(rows)`` report each forward pass and each drop (metrics).
    """

    def __init__(
        self,
        run_batch,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
        on_drop: Callable[[int], None] | None = None,
        per_row: int = 1,
    ):
        # ``per_row``: prompts a request row becomes (2: a symmetric pair's run scores both orders); the
        # queue holds ``max_queue`` rows, so max_queue x per_row prompts
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = (
            run_batch,
            max_batch,
            max_wait_s,
            max_queue * per_row,
        )
        self.per_row = per_row
        self.on_batch, self.on_drop = on_batch, on_drop
        self._jobs: deque[_Job] = deque()
        self._rows = 0  # rows queued, not yet taken by the worker
        self._closed = False
        self._flushing = False  # shutting down: what is queued runs now, without waiting for more
        self.batches_run = self.rows_run = self.rows_dropped = 0  # so far (GET /health)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="raftlm-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._rows // self.per_row  # (rows, not prompts: a symmetric pair's row queues 2)

    def submit(self, texts: list[str]) -> Future:
        job = _Job(list(texts))
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down: retry on another instance")
            if self._rows + len(texts) > self.max_queue:
                raise Busy(f"the queue is full ({self._rows // self.per_row} rows waiting): retry shortly")
            self._jobs.append(job)
            self._rows += len(texts)
            self._cond.notify()
        return job.future

    def flush(self) -> None:
        """A stop signal came: batches stop waiting (``max_wait``) for more rows, so the requests queued
        run within the graceful shutdown's time instead of being cut off by it."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def cancel_queued(self) -> None:
        """A second Ctrl+C: the requests still queued are refused (503) now; the batch running finishes."""
        with self._cond:
            while self._jobs:
                job = self._jobs.popleft()
                self._rows -= len(job.texts)
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Busy("the server is shutting down: retry on another instance"))
            self._cond.notify_all()

    def close(self) -> None:
        """Stop taking requests; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[_Job] | None:
        """The next batch (None once closed and drained): whole requests, oldest first, up to
        ``max_batch`` rows (a larger request goes alone), after waiting for more rows. Cancelled
        requests are dropped, not counted against the batch."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].arrived + self.max_wait_s
            while self._rows < self.max_batch and not self._closed and not self._flushing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, n, dropped = [], 0, 0
            while self._jobs and (not jobs or n + len(self._jobs[0].texts) <= self.max_batch):
                job = self._jobs.popleft()
                self._rows -= len(job.texts)
                if job.future.set_running_or_notify_cancel():
                    jobs.append(job)
                    n += len(job.texts)
                else:  # its client is gone: never computed
                    dropped += len(job.texts)
        if dropped:
            dropped //= self.per_row  # rows, as every count the server reports
            self.rows_dropped += dropped
            if self.on_drop:
                self.on_drop(dropped)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        texts = [t for j in jobs for t in j.texts]
        try:  # (all of it: a worker that died here would leave every later request waiting for ever)
            preds = self.run_batch(texts)
            if len(preds.values) != len(texts):
                raise RuntimeError(f"the model gave {len(preds.values)} predictions for {len(texts)} prompts")
            self.batches_run += 1
            self.rows_run += len(preds.values) // self.per_row
            if self.on_batch:
                self.on_batch(len(preds.values) // self.per_row, time.perf_counter() - t0)
            results, start = [], 0
            for j in jobs:
                results.append(_rows(preds, start, start + len(j.texts)))
                start += len(j.texts)
        except Exception as err:  # every request of the batch gets the error; the worker lives on
            if not isinstance(err, RaftlmError):
                log.exception("prediction failed")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        for j, rows in zip(jobs, results, strict=True):
            if not j.future.done():
                j.future.set_result(rows)


def _rows(preds: Predictions, a: int, b: int) -> Predictions:
    cut = lambda x: None if x is None else x[a:b]  # noqa: E731
    return Predictions(
        preds.values[a:b],
        cut(preds.probs),
        cut(preds.entropy),
        unparsed=cut(preds.unparsed),
        truncated=cut(preds.truncated),
        shift=cut(preds.shift),
    )


# --- request and response models -------------------------------------------------------------------
# The request's *shape* is typed here (a wrong shape is 422); each row's *content* is the row contract's
# (rows.render_row, via files.to_examples: 400 with the same message a file or the Python API gets).

MAX_LEVELS = 8


def _inputs(value):
    if isinstance(value, str) or (isinstance(value, list) and value):
        return value
    raise ValueError(
        "send a non-empty list of rows (objects of column: text; plain strings when the template has one "
        "field) or one string"
    )


def _levels(value):
    if value is None:
        return value
    levels = value if isinstance(value, list) else [value]
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise ValueError(f"give one confidence level or a list of 1-{MAX_LEVELS}, e.g. 0.9 or [0.8, 0.95]")
    for c in levels:
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c < 1:
            raise ValueError(
                f"confidence level {short(c)} is not a number strictly between 0 and 1: e.g. 0.9"
            )
        try:
            check_level(c)  # the rule files and the Python API follow, past the JSON types
        except RaftlmError as err:
            raise ValueError(str(err)) from None
    keys = [f"{c:g}" for c in levels]  # each level's key in "lower" and "upper" (at most MAX_LEVELS)
    if same := next((k for k in keys if keys.count(k) > 1), None):
        raise ValueError(
            f"two confidence levels are {same} to 6 digits (one answer key): give distinct levels"
        )
    return value


ROW_SCHEMA = {
    "anyOf": [
        {"type": "object", "additionalProperties": {"type": "string"}, "description": "column: text"},
        {"type": "string", "description": "the text of the template's one field"},
    ]
}
Rows = Annotated[
    list[Any] | str,
    BeforeValidator(_inputs),
    WithJsonSchema(
        {"anyOf": [{"type": "array", "items": ROW_SCHEMA, "minItems": 1}, {"type": "string"}]},
        mode="validation",
    ),
]
Level = Annotated[float, Field(gt=0, lt=1)]


class PredictOptions(BaseModel):
    """What to return besides the predictions (``/predict``'s fields, ``/invocations``' ``params``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    with_probs: bool = Field(False, description="grid probabilities (keyed by grid string) and entropy")
    with_prompts: bool = Field(False, description="the prompt each row became (the template filled in)")
    with_uncertainty: bool = Field(
        False, description="the grid distribution's mean, std, median, entropy and 5/25/75/95 % quantiles"
    )
    interval: Annotated[Level | list[Level] | None, BeforeValidator(_levels)] = Field(
        None, description="lower/upper at this confidence level (or each of a list); needs a calibrated run"
    )
    interval_kind: Literal[KIND_CHOICES] | None = Field(  # type: ignore[valid-type]
        None, description="absolute, std, cqr (conformal), grid (raw quantiles); default: the server's"
    )


class PredictRequest(PredictOptions):
    """``inputs``: the rows (objects of the template's columns; strings for a one-field template)."""

    inputs: Rows


class DataFrameSplit(BaseModel):
    """pandas ``DataFrame.to_dict(orient="split")``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None


INPUT_TYPES = [{"type": "array"}, {"type": "object"}, {"type": "string"}]  # (null: the default, absent)


class InvocationsRequest(BaseModel):
    """MLflow's scoring protocol: exactly one of the four inputs; ``params`` are ``/predict``'s switches."""

    model_config = ConfigDict(extra="forbid", strict=True)
    dataframe_split: DataFrameSplit | None = None
    dataframe_records: list[Any] | None = None
    instances: Annotated[Any, WithJsonSchema({"anyOf": [*INPUT_TYPES, {"type": "null"}]})] = None
    inputs: Annotated[Any, WithJsonSchema({"anyOf": [*INPUT_TYPES, {"type": "null"}]})] = None
    params: PredictOptions | None = None


Floats = list[float | None] | list[dict[str, float | None]]


Number = float | None  # null where the model gave NaN or infinity (strict JSON has neither)


class PredictResponse(BaseModel):
    """One entry per row in each list; fields appear when asked for (or, ``truncated``, when it happened).
    A number that is not finite (a diverged model's) is null, as in raftlm's JSON files."""

    predictions: list[Number]
    probs: list[dict[str, Number]] | None = None
    entropy: list[Number] | None = None
    correction: list[Number] | None = Field(
        None, description="raft-head, with probs: the head's correction (prediction = the grid mean + it)"
    )
    mean: list[Number] | None = None
    std: list[Number] | None = None
    median: list[Number] | None = None
    quantiles: list[dict[str, Number]] | None = None
    lower: Floats | None = Field(None, description="numbers for one level; objects keyed by level for a list")
    upper: Floats | None = None
    interval_kind: str | None = None
    prompts: list[str] | None = None
    unparsed: list[int] | None = Field(
        None,
        description="text decoders (greedy, sample-rail): how many of the row's decoded texts were not a number "
        "(each counts as 0.0)",
    )
    truncated: list[bool] | None = None
    warnings: list[str] | None = None


class InvocationsResponse(BaseModel):
    predictions: list[Number] | list[dict[str, Any]]
    warnings: list[str] | None = None


class ErrorResponse(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorResponse} for code in (400, 408, 413, 422, 503)}


# --- HTTP -----------------------------------------------------------------------------------------


class Reject(Exception):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ClientGone(Exception):
    """The client disconnected before its answer (HTTP 499 in the metrics; nobody reads it)."""


def _predict_fn(predictor: Predictor, cfg: Config, max_batch: int):
    batch_cfg = replace(cfg, eval=replace(cfg.eval, batch_size=max_batch))
    return lambda texts: predict_texts(predictor, texts, batch_cfg, desc=None)  # prompts, in pairs' orders


DRAIN_LIMIT = 16 << 20  # a refused body up to this size is read and dropped before the 413 is sent


async def _discard(request: Request, timeout_s: float) -> None:
    """Read and drop what the client is still sending (within ``timeout_s``; nothing is kept)."""

    async def read() -> None:
        async for _ in request.stream():
            pass

    with contextlib.suppress(Exception):
        await asyncio.wait_for(read(), timeout_s)


async def _read_body(request: Request, limit: int, timeout_s: float, stopping: asyncio.Event) -> bytes:
    """The body, refused (413) as soon as it exceeds ``limit`` bytes (never read whole first), 408 when
    it has not all arrived within ``timeout_s``, 503 when the server begins to stop meanwhile."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        # read and drop it: a client still uploading reads the 413; one that waits for "100 Continue"
        # (Expect) has sent nothing yet, and reading would invite the upload the 413 refuses
        waits = request.headers.get("expect", "").lower() == "100-continue"
        if int(declared) <= DRAIN_LIMIT and not waits:
            await _discard(request, timeout_s)  # (a reset connection instead, when answered mid-upload)
        raise Reject(413, f"request body of {declared} bytes exceeds the limit of {limit}: send fewer rows")

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Reject(413, f"request body exceeds the limit of {limit} bytes: send fewer rows")
        return bytes(body)

    reader, stop = asyncio.ensure_future(read()), asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({reader, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if reader.done():
        return reader.result()
    reader.cancel()
    if stopping.is_set():
        raise Busy("the server is shutting down: retry on another instance")
    raise Reject(408, f"the request body did not arrive within {timeout_s:g} s: send it whole")


def _validate(model: type[BaseModel], body: bytes, example: str):
    """The request as ``model``; bad JSON is 400, a wrong shape 422 (the first problem, in one line). A
    key written twice, NaN or Infinity are refused as in a JSONL file (pydantic keeps the last key). A
    UTF-8 byte-order mark before it is dropped (RFC 8259 lets a reader ignore it; the CSV body drops it too)."""
    from raftlm.files import not_json, unique_keys

    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        json.loads(body, object_pairs_hook=unique_keys, parse_constant=not_json)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError):
        pass  # pydantic's reader says what is wrong below
    except ValueError as err:
        if "int_max_str_digits" in str(
            err
        ):  # Python's own fix names the server's interpreter, not the client's
            raise Reject(
                400, "a number in the request body has over 4300 digits: send numbers of ordinary size"
            ) from None
        raise Reject(400, f"request body is not plain JSON ({err}): send a JSON object") from None
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        e = err.errors()[0]
        if e["type"] == "json_invalid":
            raise Reject(400, f"request body is not valid JSON ({e['msg']}): send a JSON object") from None
        # the field's path, without pydantic's union branch tags ("list[float]", "function-before[...]")
        path = [str(p) for p in e["loc"] if isinstance(p, int) or str(p).isidentifier()]
        if e["type"] == "extra_forbidden":  # (the unknown key itself, whatever its characters: "with-probs")
            parent = [str(p) for p in e["loc"][:-1] if isinstance(p, int) or str(p).isidentifier()]
            known = ", ".join(_fields_at(model, parent))
            raise Reject(
                422, f"unknown field {'.'.join([*parent, str(e['loc'][-1])])!r}: the fields are {known}"
            ) from None
        message = f"{'.'.join(path) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
        shape = not path or e["type"] == "missing"  # the body itself is off: show what one looks like
        raise Reject(422, f"{message}: send {example}" if shape else message) from None


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The fields of the (nested) model at ``path`` (list positions skipped): what an unknown field
    inside "params" or "dataframe_split" is told, not the request's top-level fields."""
    for name in path:
        field = model.model_fields.get(name)
        if field is None:
            continue  # a list position
        inner = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)]
        sub = next((a for a in inner if issubclass(a, BaseModel)), None)
        if sub is None:
            break
        model = sub
    return list(model.model_fields)


def _check_size(rows: list, max_rows: int) -> None:
    if len(rows) > max_rows:
        raise Reject(413, f"{len(rows)} rows in one request exceed the limit of {max_rows}: split it")


def _as_rows(inputs: list | str, template: str) -> list:
    """Bare strings become rows of the template's one field (``rows.text_rows``, as the Python API takes
    them); any other item goes to the row contract as it is, to be accepted or refused there."""
    items = [inputs] if isinstance(inputs, str) else inputs
    return text_rows(items, template, lambda i: f"request row {i + 1}")


def _records(value, key: str) -> list:
    """MLflow's ``instances`` / ``inputs``: a list of rows, one string, or columns (column: [texts])."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return value
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        sizes = {len(v) for v in value.values()}
        if len(sizes) == 1 and 0 not in sizes:
            return [dict(zip(value, cells, strict=True)) for cells in zip(*value.values(), strict=True)]
        raise Reject(
            422, f"{key}: columns of different or zero lengths ({sorted(sizes)}): give each the rows' values"
        )
    raise Reject(422, f"{key}: send a non-empty list of rows, one string, or columns ({{column: [texts]}})")


def _invocation_rows(req: InvocationsRequest) -> list:
    given = [
        k
        for k in ("dataframe_split", "dataframe_records", "instances", "inputs")
        if getattr(req, k) is not None
    ]
    if len(given) != 1:
        raise Reject(
            422,
            f"send exactly one of dataframe_split, dataframe_records, instances, inputs (got {given or 'none'})",
        )
    key = given[0]
    if key == "dataframe_split":
        split = req.dataframe_split
        try:
            check_columns(split.columns, "dataframe_split.columns")
        except RaftlmError as err:
            raise Reject(422, str(err)) from None
        if split.index is not None and len(split.index) != len(split.data):  # (it was dropped unread)
            raise Reject(
                422,
                f"dataframe_split: {len(split.index)} index labels for {len(split.data)} rows of data: one "
                "label per row, or no index",
            )
        for i, cells in enumerate(split.data):
            if len(cells) != len(split.columns):
                raise Reject(
                    422,
                    f"dataframe_split.data.{i}: {len(cells)} values for {len(split.columns)} columns: one value per column",
                )
        rows = [dict(zip(split.columns, cells, strict=True)) for cells in split.data]
    elif key == "dataframe_records":
        rows = req.dataframe_records
    else:
        rows = _records(getattr(req, key), key)
    if not rows:
        raise Reject(422, f"{key}: no rows: send at least one")
    return rows


def _csv_rows(body: bytes, max_rows: int) -> list[dict]:
    """``text/csv`` (MLflow's other content type): a header line, then rows, read as `raftlm predict` reads
    a CSV file (``files.csv_rows``: a byte-order mark dropped, a row with more or fewer fields than the
    header refused with its line). Reading stops past ``max_rows`` (a body of half a million short rows
    held the event loop, every other request waiting, for seconds before its 413)."""
    try:
        rows = list(
            itertools.islice(
                csv_rows(io.StringIO(body.decode("utf-8-sig"), newline=""), "the CSV body"), max_rows + 1
            )
        )
        if len(rows) > max_rows:
            raise Reject(413, f"over {max_rows} rows in one request exceed the limit of {max_rows}: split it")
    except RaftlmError as err:
        raise Reject(400, str(err)) from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise Reject(
            400, f"request body is not UTF-8 CSV ({short(str(err))}): send a header and rows"
        ) from None
    if not rows:
        raise Reject(422, "body: a CSV with a header and no rows: send at least one row")
    return rows


@dataclass
class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not clash)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "raftlm_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "raftlm_http_request_duration_seconds",
            "time from a request's arrival to its response, by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_rows = Histogram(
            "raftlm_batch_rows",
            "rows per micro-batch (its requests together: one or more forward passes of up to --max-batch prompts)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "raftlm_batch_duration_seconds",
            "time of one micro-batch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rows = Counter("raftlm_rows_predicted", "rows predicted", registry=r)
        self.dropped = Counter(
            "raftlm_rows_dropped", "rows not computed because their client disconnected first", registry=r
        )
        self.queue = Gauge("raftlm_queue_rows", "rows waiting for a forward pass", registry=r)

    def batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)
        self.rows.inc(rows)


class _Edge:
    """The outermost layer a request meets inside the app: counts it (route, method, status, latency) and,
    when uvicorn cancels it at the end of the graceful shutdown, answers 503 instead of a traceback."""

    def __init__(self, app, metrics: Metrics | None, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            if status is None:
                status = 503
                body = json.dumps(
                    {"error": "the server is shutting down: retry on another instance"}
                ).encode()
                headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
        except Exception:
            status = 500
            raise
        finally:
            if self.metrics is not None:
                route = scope["path"] if scope["path"] in self.routes else "other"
                self.metrics.requests.labels(route, scope["method"], str(status or 500)).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)


class _Head:
    """HEAD answered as GET without the body (RFC 9110: same status and headers, Content-Length of the GET
    body): FastAPI's GET routes answered 405, so a load balancer's ``HEAD /health`` saw a dead server."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


async def _error(request, exc: Exception) -> Response:
    """Every error as ``{"error": one line}``: never a traceback (that goes to the server log)."""
    headers = None
    if isinstance(exc, Reject):
        status, message = exc.status, str(exc)
        headers = {"connection": "close"} if status in (408, 413) else None
    elif isinstance(exc, RaftlmError):
        status, message = 400, str(exc)
    elif isinstance(exc, Busy):
        status, message = 503, str(exc)
    elif isinstance(exc, ClientGone | ClientDisconnect):
        return Response(status_code=499)  # nobody is listening; the metrics and the log count it
    elif isinstance(exc, HTTPException):  # (its headers kept: a 405's Allow)
        status, message, headers = exc.status_code, str(exc.detail), getattr(exc, "headers", None)
        allow = (headers or {}).get("Allow", "").split(", ")
        if status == 405 and "GET" in allow and "HEAD" not in allow:  # (_Head answers HEAD wherever GET is)
            headers = {**headers, "Allow": ", ".join([*allow, "HEAD"])}
    else:
        status, message = 500, f"internal error ({type(exc).__name__}): see the server log"
    return JSONResponse({"error": message.replace("\n", " ")}, status_code=status, headers=headers)


async def _result(request: Request, job: Future) -> Predictions:
    """The job's predictions; if the client disconnects first, the job is cancelled (dropped unless its
    forward pass already began) and ``ClientGone`` raised."""
    result = asyncio.wrap_future(job)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # uvicorn ends requests still running when the graceful shutdown ends
        job.cancel()
        raise
    finally:
        if not gone.done():
            gone.cancel()
    if gone.done() and not gone.cancelled():
        job.cancel()
        result.cancel()
        raise ClientGone()
    return result.result()


class Server:
    """What the routes share: the model, its calibration, settings, the batcher and the metrics."""

    def __init__(self, predictor: Predictor, cfg: Config, settings: ServeSettings, info: dict, calibration):
        self.predictor, self.cfg, self.settings, self.info = predictor, cfg, settings.for_run(cfg), info
        self.calibration = calibration
        self.metrics = Metrics() if settings.metrics else None
        self.batcher: MicroBatcher | None = None
        self.stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s, m = self.settings, self.metrics
        self.batcher = MicroBatcher(
            _predict_fn(self.predictor, self.cfg, s.max_batch),
            s.max_batch,
            s.max_wait_ms / 1000,
            s.max_queue,
            on_batch=m.batch if m else None,
            on_drop=m.dropped.inc if m else None,
            per_row=2 if self.predictor.pair else 1,  # (texts_of: both orders of a symmetric pair)
        )
        if m:
            m.queue.set_function(lambda: self.batcher.queued_rows)

    def hurry_shutdown(self) -> None:
        """A second Ctrl+C (uvicorn's forced exit skipped the app's shutdown and left the worker inside
        torch as the interpreter exited: an abort): the queued requests are refused now instead."""
        if self._loop is not None and self.batcher is not None:
            self._loop.call_soon_threadsafe(self.batcher.cancel_queued)

    def begin_shutdown(self) -> None:
        """From uvicorn's signal handler: body reads still in progress end now (503); the requests queued
        run at once (not after --max-wait-ms) and are answered."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)
            if self.batcher is not None:
                self._loop.call_soon_threadsafe(self.batcher.flush)

    async def body(self, request: Request) -> bytes:
        s = self.settings
        return await _read_body(request, s.max_body_kb * 1024, s.body_timeout_s, self.stopping)

    async def predict(
        self, request: Request, rows: list, opts: PredictOptions
    ) -> tuple[list[dict], list[bool]]:
        """Rows -> the rows `raftlm predict` would write for them (without ``index``), and which of them
        were truncated."""
        _check_size(rows, self.settings.max_rows)
        examples = to_examples(rows, self.predictor.template, None, "request")  # the row contract: 400
        self._check_interval(opts)
        # (a symmetric pair's run scores both orders of each row, in one forward pass, and averages them)
        preds = await _result(request, self.batcher.submit(self.predictor.texts_of(examples)))
        preds = self.predictor.average_orders(preds, self.cfg.eval.decoder)
        extra = None
        if opts.interval is not None or opts.with_uncertainty:
            extra = await asyncio.to_thread(self._fields, preds, opts)
        out = [
            finite({k: v for k, v in r.items() if k != "index"})  # NaN -> null, as in raftlm's files
            for r in prediction_rows(
                self.predictor, preds, examples, 0, opts.with_probs, extra, opts.with_prompts
            )
        ]
        return out, [bool(t) for t in preds.truncated] if preds.truncated is not None else []

    def _kind(self, opts: PredictOptions) -> str:
        return opts.interval_kind or self.cfg.eval.interval_kind

    def _check_interval(self, opts: PredictOptions) -> None:
        """Refuse what no forward pass can fix before running one: probabilities, an uncertainty summary
        or an interval under a text decoder (they were refused after every row was decoded), an interval
        from an uncalibrated run, a kind the model cannot give, a level its calibration is too small for."""
        text = self.cfg.eval.decoder in TEXT_DECODERS and self.predictor.head is None
        if opts.with_probs:
            check_with_probs(self.predictor, not text)
        if text and (opts.interval is not None or opts.interval_kind is not None or opts.with_uncertainty):
            raise RaftlmError(NO_DISTRIBUTION)
        if opts.interval is None:
            if opts.interval_kind is not None:  # it would be taken and do nothing ("auto" too, as in the CLI)
                raise RaftlmError(
                    '"interval_kind" chooses the kind of "interval"\'s intervals: ask for "interval" too (add '
                    f'{self._interval_example(opts.interval_kind)}), or drop "interval_kind"'
                )
            return
        kind, cal = self._kind(opts), self.calibration
        if cal is None:
            if kind != "grid":
                raise RaftlmError(
                    f"run {self.info['run']!r} has no calibration, so no conformal interval: run `raftlm calibrate "
                    f'RUN` on it and restart the server, or ask for "interval_kind": "grid" (raw grid quantiles, '
                    "uncalibrated)"
                )
            return
        kind = cal.kind(kind)
        levels = opts.interval if isinstance(opts.interval, list) else [opts.interval]
        if KINDS[kind].conformal and any(cal.n < min_calibration_size(c) for c in levels):
            worst = max(levels, key=min_calibration_size)  # (a low level needs many examples too: 0.01, 100)
            raise RaftlmError(
                f"the run's calibration has {cal.n} examples, too few for a {level_text(worst)} interval (split conformal "
                f"needs {min_calibration_size(worst)}): ask for a lower level or calibrate on more examples"
            )

    def _interval_example(self, kind: str) -> str:
        """What a lone ``interval_kind`` needs beside it: a level this server gives at that kind (a conformal
        kind's within the calibration's size; without a calibration, only kind grid gives any)."""
        grid = '"interval": 0.9 and "interval_kind": "grid"'
        cal = self.calibration
        if cal is None:
            return '"interval": 0.9' if kind == "grid" else f"{grid}: the run has no calibration"
        conformal = KINDS[cal.kind(kind)].conformal  # (a kind the model cannot give is refused here)
        level = next((c for c in (0.9, 0.8, 0.5) if not conformal or cal.n >= min_calibration_size(c)), None)
        return f'"interval": {level:g}' if level else f"{grid}: the run's calibration has {cal.n} examples"

    def _fields(self, preds: Predictions, opts: PredictOptions) -> list[dict]:
        """Exactly what `raftlm predict --interval L --with-uncertainty` adds per row (one call per level)."""
        p, cal, kind, decoder = self.predictor, self.calibration, self._kind(opts), self.cfg.eval.decoder
        if not isinstance(opts.interval, list):
            return prediction_fields(p, preds, cal, opts.interval, kind, decoder, opts.with_uncertainty)
        rows = prediction_fields(p, preds, cal, None, kind, decoder, opts.with_uncertainty)
        for c in opts.interval:
            for row, bounds in zip(rows, prediction_fields(p, preds, cal, c, kind, decoder), strict=True):
                row.setdefault("lower", {})[f"{c:g}"] = bounds["lower"]
                row.setdefault("upper", {})[f"{c:g}"] = bounds["upper"]
        return rows

    def warnings(self, truncated: list[bool], rows: list[dict]) -> list[str] | None:
        """A prompt cut to max_length, and a decoded text that was not a number (text decoders), said to
        the caller (not only in the server's log)."""
        notes = []
        if cut := [i for i, t in enumerate(truncated) if t]:
            notes.append(
                f"rows {cut} are longer than max_length={self.predictor.max_length} tokens and were cut on the "
                "left (their beginning was not read): shorten them"
            )
        if bad := [i for i, r in enumerate(rows) if r.get("unparsed")]:
            notes.append(
                f'rows {bad} decoded text that was not a number, counted as 0.0 (their "unparsed" says how many '
                "of their texts): decode with rail, which reads the grid's probabilities instead of text"
            )
        return notes or None

    def resolved_kind(self, opts: PredictOptions) -> str | None:
        if opts.interval is None:
            return None
        return self.calibration.kind(self._kind(opts)) if self.calibration else "grid"


PAGE_ROUTES = {
    "/",
    "/predict",
    "/invocations",
    "/info",
    "/health",
    "/ping",
    "/metrics",
    "/openapi.json",
    "/docs",
}
COLUMNS = {"prediction": "predictions", "prompt": "prompts"}  # predict's row keys -> /predict's columns
PREDICT_EXAMPLE = '{"inputs": [{column: text, ...}, ...]}'
INVOCATIONS_EXAMPLE = (
    '{"dataframe_records": [{column: text, ...}, ...]} (or dataframe_split, instances, inputs)'
)


def _fastapi():
    """FastAPI whose /docs page (Swagger UI) is served from the package (fastapi-offline), so that it works
    where the server cannot reach a CDN; plain FastAPI (the page from jsDelivr) where it is not installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI
    return FastAPIOffline


def create_app(
    predictor: Predictor,
    cfg: Config,
    settings: ServeSettings,
    info: dict,
    calibration: Calibration | None = None,
) -> FastAPI:
    """The FastAPI application; the micro-batcher lives from startup to shutdown. ``app.state.server``
    is the ``Server`` (``begin_shutdown`` is what a signal calls)."""
    server = Server(predictor, cfg, settings, info, calibration)
    page = resources.files("raftlm").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        yield
        server.batcher.close()

    app = _fastapi()(
        title="raftlm",
        version=__version__,
        description="Numbers from text with a raftlm run: RAFT fine-tuned decoder LLM, RAIL inference.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.server = server
    for exc in (Reject, RaftlmError, Busy, ClientGone, ClientDisconnect, HTTPException, Exception):
        app.add_exception_handler(exc, _error)
    app.add_middleware(_Head)
    app.add_middleware(_Edge, metrics=server.metrics, routes=PAGE_ROUTES)  # (outermost: counts HEAD as HEAD)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        b = server.batcher
        return {
            "status": "ok",
            "queued_rows": b.queued_rows,
            "batches": b.batches_run,
            "rows": b.rows_run,
            "rows_dropped": b.rows_dropped,
        }

    @app.get("/ping", summary="MLflow's liveness route")
    async def ping() -> dict:
        return {"status": "ok"}

    @app.get("/info", summary="the run: base model, method, grid, template, metrics, calibration, limits")
    async def get_info() -> dict:
        return info

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        if server.metrics is None:
            raise HTTPException(404, "metrics are off (--no-metrics)")
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": None}}}}

    def request_doc(model: type[BaseModel], extra: dict | None = None) -> dict:
        doc = copy.deepcopy(body_doc)
        doc["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{model.__name__}"
        }
        doc["requestBody"]["content"].update(extra or {})
        return doc

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=request_doc(PredictRequest),
        summary="predict a number per row",
    )
    async def predict(request: Request):
        req = _validate(PredictRequest, await server.body(request), PREDICT_EXAMPLE)
        rows, truncated = await server.predict(request, _as_rows(req.inputs, predictor.template), req)
        out: dict[str, Any] = {}
        for row in rows:  # the rows `raftlm predict` writes, as columns
            for k, v in row.items():
                out.setdefault(COLUMNS.get(k, k), []).append(v)
        out["interval_kind"] = server.resolved_kind(req)
        if notes := server.warnings(truncated, rows):
            out["warnings"] = notes
            if any(truncated):
                out["truncated"] = truncated
        return out

    @app.post(
        "/invocations",
        response_model=InvocationsResponse,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=request_doc(InvocationsRequest, {"text/csv": {"schema": {"type": "string"}}}),
        summary='MLflow\'s scoring route: {"predictions": [...]}',
    )
    async def invocations(request: Request):
        body = await server.body(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "text/csv":
            rows, opts = _csv_rows(body, server.settings.max_rows), PredictOptions()
        else:
            req = _validate(InvocationsRequest, body, INVOCATIONS_EXAMPLE)
            rows, opts = _invocation_rows(req), req.params or PredictOptions()
        out, truncated = await server.predict(request, _as_rows(rows, predictor.template), opts)
        plain = opts == PredictOptions()  # a number per row; with options, the rows `raftlm predict` writes
        return {
            "predictions": [r["prediction"] for r in out] if plain else out,
            "warnings": server.warnings(truncated, out),
        }

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the request models (the routes read their bodies themselves: bounded)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        models = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (PredictRequest, InvocationsRequest):
            s = model.model_json_schema(ref_template="#/components/schemas/{model}")
            models.update(s.pop("$defs", {}))
            models[model.__name__] = s
        app.openapi_schema = schema
    return app.openapi_schema


def run_info(
    run_dir: str | Path,
    predictor: Predictor,
    cfg: Config,
    settings: ServeSettings,
    calibration: Calibration | None = None,
) -> dict:
    """What ``GET /info`` says: the model, its grid, prompt template, metrics, calibration and limits."""
    run_dir = Path(run_dir)
    base = None
    if (run_dir / "config.yaml").exists():
        base = Config.from_yaml(str(run_dir / "config.yaml")).model.name
    return {
        "run": run_dir.resolve().name,  # its name: the server's paths are not the client's business
        "base_model": base,
        "method": predictor.method,
        "decoder": predictor.decoder_name(cfg.eval.decoder),
        # whether /predict can give grid probabilities ("with_probs"): every grid model and raft-head,
        # unless the server decodes text (greedy, sample-rail: no distribution behind the number)
        "grid_distribution": predictor.has_grid and cfg.eval.decoder not in TEXT_DECODERS,
        "grid": predictor.grid.to_dict(),
        "normalize_grid": predictor.normalize_grid,
        "target_scaling": predictor.scaler.to_dict(),
        "template": predictor.template,
        "columns": list(dict.fromkeys(template_fields(predictor.template))),
        "metrics": _results(run_dir / "eval_results.json"),
        "calibration": _calibration_info(calibration, cfg),
        "device": str(predictor.device),
        "dtype": served_dtype(predictor, cfg),
        "bf16": cfg.eval.bf16,  # bf16 autocast (--bf16), as the run's config and the flag name it
        "version": __version__,
        "serving": {k: v for k, v in vars(settings.for_run(cfg)).items() if k not in ("host", "port")},
    }


def served_dtype(predictor: Predictor, cfg: Config) -> str:
    """The precision the model computes in, as /info and the startup line name it: its weights' dtype, with
    ``+ bf16 autocast`` when --bf16 runs float weights under bf16 autocast (it said float32 alone)."""
    name = predictor.dtype_name
    return f"{name} + bf16 autocast" if cfg.eval.bf16 and name != "bfloat16" else name


def _results(path: Path) -> dict | None:
    """The run's evaluation results (strict JSON: NaN as null), or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        return finite(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        log.warning("raftlm serve: %s is unreadable (%s): /info shows no metrics", path.name, short(str(err)))
        return None


def _calibration_info(cal: Calibration | None, cfg: Config) -> dict | None:
    """What intervals this server can give: None without a calibration (only ``interval_kind`` grid)."""
    if cal is None:
        return None
    levels = [c for c in (0.5, 0.8, 0.9, 0.95, 0.99) if cal.n >= min_calibration_size(c)]
    if cfg.eval.decoder in TEXT_DECODERS:  # a decoded number has no distribution to build intervals on
        levels = []
    return {
        "n": cal.n,
        "source": Path(cal.source).name,  # a file's name, not the server's path to it
        "interval_kind": cal.kind(cfg.eval.interval_kind),
        "levels": levels,
    }


def load_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration, read once; a damaged one is a one-line warning in the log (plain predictions
    go on; intervals are refused with the `raftlm calibrate` command)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = Calibration.load(run_dir, required=False)
    for w in caught:
        log.warning("raftlm serve: %s", str(w.message).replace("\n", " "))
    return cal


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), or a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise RaftlmError(
            f"cannot listen on {host}:{port} ({err.strerror}): choose another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


_SERVING = threading.Event()  # uvicorn's own signal handlers are in place (set by _Uvicorn)


def _exit_quietly(signum, frame) -> None:
    """A stop signal before uvicorn took the signals over: exit now (nothing serves yet). After: uvicorn
    re-raises the signal it handled to this handler, which then does nothing more (raising there ran
    inside the still-running event loop: tracebacks, and a worker thread left inside torch)."""
    if not _SERVING.is_set():
        raise SystemExit(0)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling the app the moment a stop signal arrives (so body reads end at once)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], on_again: Callable[[], None]):
        super().__init__(config)
        self.on_exit, self.on_again = on_exit, on_again

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            _SERVING.set()
            yield

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit and sig == signal.SIGINT:  # a second Ctrl+C: no forced exit (see hurry_shutdown)
            self.on_again()
            return
        super().handle_exit(sig, frame)
        self.on_exit()


def log_config(access_log: bool) -> dict:
    """uvicorn's logging with its startup chatter hidden (raftlm prints its own line) and one access line
    per request, with a timestamp, on stderr."""
    cfg = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    cfg["loggers"]["uvicorn.error"]["level"] = "WARNING"
    cfg["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    cfg["formatters"]["access"]["fmt"] = '%(asctime)s %(client_addr)s "%(request_line)s" %(status_code)s'
    cfg["formatters"]["access"]["use_colors"] = False
    cfg["formatters"]["default"]["use_colors"] = False
    cfg["handlers"]["access"]["stream"] = "ext://sys.stderr"  # logs on stderr; stdout has the URL line
    return cfg


def serve(run_dir: str, cfg: Config, settings: ServeSettings) -> None:
    """Listen, load the run, serve until SIGTERM or Ctrl+C."""
    check_served_run(run_dir)
    settings = settings.for_run(cfg)
    sock = bind(settings.host, settings.port)  # a taken port fails now, not after loading the model
    try:
        predictor = load_for_eval(replace(cfg, model=replace(cfg.model, name=str(run_dir))), None)
        calibration = load_calibration(run_dir)
        info = run_info(run_dir, predictor, cfg, settings, calibration)
        app = create_app(predictor, cfg, settings, info, calibration)
        host, port = sock.getsockname()[:2]
        print(f"raftlm serve: {run_dir} on {url_of(host, port)} ({info_line(info, settings)})", flush=True)
        config = uvicorn.Config(
            app,
            log_config=log_config(settings.access_log),
            log_level=None,
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.graceful_timeout_s,
        )
        # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then re-raises the signal to the handler it
        # found: this one, so a clean stop exits 0 instead of dying from the signal it just handled
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_quietly)
        state = app.state.server
        _Uvicorn(config, state.begin_shutdown, state.hurry_shutdown).run(sockets=[sock])
    finally:
        sock.close()


def url_of(host: str, port: int) -> str:
    """The server's URL: an IPv6 address in brackets (``--host ::1`` printed ``http://::1:8000``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def info_line(info: dict, settings: ServeSettings) -> str:
    """The startup line's device, dtype and batching, from ``run_info``'s dict (what /info serves)."""
    return (
        f"{info['device']}, {info['dtype']}, batches of up to {settings.max_batch} prompts within "
        f"{settings.max_wait_ms:g} ms"
    )
