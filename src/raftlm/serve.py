"""``raftlm serve RUN_DIR``: a run directory behind an HTTP JSON API, with dynamic micro-batching.

One worker thread owns the model (``MicroBatcher``). A request's rows join a bounded queue; the
worker takes every row that arrived within ``max_wait_ms`` of the oldest waiting one, up to
``max_batch`` rows, runs one ``Predictor`` call and hands each request its slice. FastAPI + uvicorn
serve it. SIGTERM (or Ctrl+C) stops accepting connections, lets in-flight requests finish, drains the
queue, and exits 0.

Endpoints: ``POST /predict`` ``{"inputs": [{column: value, ...}, ...], "with_probs": false}`` ->
``{"predictions": [...]}`` (plus ``probs`` and ``entropy`` per row when asked); ``GET /health``;
``GET /info``. Errors are ``{"error": "one line"}``: 400 bad JSON or rows (the CLI's message), 413
too large, 422 wrong shape, 503 queue full or shutting down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.exceptions import HTTPException

from raftlm.config import Config, ServeSettings
from raftlm.core import Example, RaftlmError
from raftlm.files import to_examples
from raftlm.pipeline import load_for_eval, predict_examples
from raftlm.predictor import Predictions, Predictor
from raftlm.prompts import template_fields
from raftlm.run import is_run_dir
from raftlm.streaming import grid_probs

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
    used concurrently. ``submit`` returns a ``concurrent.futures.Future`` of the request's slice.
    """

    def __init__(self, run_batch, max_batch: int, max_wait_s: float, max_queue: int):
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = (
            run_batch,
            max_batch,
            max_wait_s,
            max_queue,
        )
        self._jobs: deque[_Job] = deque()
        self._rows = 0  # rows queued, not yet taken by the worker
        self._closed = False
        self.batches_run = self.rows_run = 0  # forward passes and rows so far (GET /health)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="raftlm-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._rows

    def submit(self, texts: list[str]) -> Future:
        job = _Job(list(texts))
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down: retry on another instance")
            if self._rows + len(texts) > self.max_queue:
                raise Busy(f"the queue is full ({self._rows} rows waiting): retry shortly")
            self._jobs.append(job)
            self._rows += len(texts)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Stop taking requests; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _take(self) -> list[_Job] | None:
        """The next batch (None once closed and drained): whole requests, oldest first, up to
        ``max_batch`` rows (a larger request goes alone), after waiting for more rows."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._jobs[0].arrived + self.max_wait_s
            while self._rows < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, n = [], 0
            while self._jobs and (not jobs or n + len(self._jobs[0].texts) <= self.max_batch):
                jobs.append(self._jobs.popleft())
                n += len(jobs[-1].texts)
            self._rows -= n
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drop abandoned requests

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            preds = self.run_batch([t for j in jobs for t in j.texts])
        except Exception as err:  # every request of the batch gets the error; the worker lives on
            if not isinstance(err, RaftlmError):
                log.exception("prediction failed")
            for j in jobs:
                j.future.set_exception(err)
            return
        self.batches_run += 1
        self.rows_run += len(preds.values)
        start = 0
        for j in jobs:
            j.future.set_result(_rows(preds, start, start + len(j.texts)))
            start += len(j.texts)


def _rows(preds: Predictions, a: int, b: int) -> Predictions:
    cut = lambda x: None if x is None else x[a:b]  # noqa: E731
    return Predictions(
        preds.values[a:b], cut(preds.probs), cut(preds.entropy), truncated=cut(preds.truncated)
    )


# --- HTTP -----------------------------------------------------------------------------------------


class Reject(Exception):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PredictRequest(BaseModel):
    """``inputs``: rows of the prompt template's columns; ``with_probs``: grid probabilities + entropy."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[dict[str, Any]] = Field(min_length=1)
    with_probs: StrictBool = False
    with_prompts: StrictBool = False


def _predict_fn(predictor: Predictor, cfg: Config, max_batch: int):
    batch_cfg = replace(cfg, eval=replace(cfg.eval, batch_size=max_batch))
    return lambda texts: predict_examples(predictor, [Example(t) for t in texts], batch_cfg, desc=None)


async def _read_body(request, limit: int) -> bytes:
    """The body, refused (413) as soon as it exceeds ``limit`` bytes: never read whole first."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Reject(413, f"request body of {declared} bytes exceeds the limit of {limit}: send fewer rows")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Reject(413, f"request body exceeds the limit of {limit} bytes: send fewer rows")
    return bytes(body)


def _parse(body: bytes, max_rows: int) -> PredictRequest:
    """The request (rows, switches); a wrong shape is 422, bad JSON 400."""
    try:
        req = PredictRequest.model_validate_json(body)
    except ValidationError as err:
        e = err.errors()[0]
        if e["type"] == "json_invalid":
            raise Reject(400, f"request body is not valid JSON ({e['msg']}): send a JSON object") from None
        where = ".".join(str(p) for p in e["loc"]) or "body"
        raise Reject(422, f'{where}: {e["msg"]}: send {{"inputs": [{{column: value, ...}}, ...]}}') from None
    if len(req.inputs) > max_rows:
        raise Reject(413, f"{len(req.inputs)} rows in one request exceed the limit of {max_rows}: split it")
    return req


def _response(predictor: Predictor, preds: Predictions, req: PredictRequest, texts: list[str]) -> dict:
    out: dict[str, Any] = {"predictions": [float(v) for v in preds.values]}
    if req.with_probs and preds.probs is not None:
        out["probs"] = [grid_probs(predictor, p) for p in preds.probs]
        out["entropy"] = [float(e) for e in preds.entropy]
    if req.with_prompts:
        out["prompts"] = texts
    if preds.truncated is not None and preds.truncated.any():
        cut = [int(i) for i in np.flatnonzero(preds.truncated)]
        out["truncated"] = [bool(t) for t in preds.truncated]
        out["warnings"] = [
            f"rows {cut} are longer than max_length={predictor.max_length} tokens and were cut on the left "
            "(their beginning was not read): shorten them"
        ]
    return out


def run_info(run_dir: str | Path, predictor: Predictor, cfg: Config, settings: ServeSettings) -> dict:
    """What ``GET /info`` says: the model, its grid, prompt template, metrics and serving limits."""
    run_dir = Path(run_dir)
    results = run_dir / "eval_results.json"
    base = None
    if (run_dir / "config.yaml").exists():
        base = Config.from_yaml(str(run_dir / "config.yaml")).model.name
    return {
        "run": run_dir.resolve().name,  # its name: the server's paths are not the client's business
        "base_model": base,
        "method": predictor.method,
        "decoder": "head" if predictor.head is not None else cfg.eval.decoder,
        "grid": predictor.grid.to_dict(),
        "normalize_grid": predictor.normalize_grid,
        "target_scaling": predictor.scaler.to_dict(),
        "template": predictor.template,
        "columns": template_fields(predictor.template),
        "metrics": json.loads(results.read_text()) if results.exists() else None,
        "device": str(predictor.device),
        "dtype": str(predictor.dtype).removeprefix("torch."),
        "serving": {k: v for k, v in vars(settings).items() if k not in ("host", "port")},
    }


async def _error(request, exc: Exception) -> JSONResponse:
    """Every error as ``{"error": one line}``: never a traceback (that goes to the server log)."""
    if isinstance(exc, Reject):
        status, message = exc.status, str(exc)
    elif isinstance(exc, RaftlmError):
        status, message = 400, str(exc)
    elif isinstance(exc, Busy):
        status, message = 503, str(exc)
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    else:
        status, message = 500, f"internal error ({type(exc).__name__}): see the server log"
    return JSONResponse({"error": message}, status_code=status)


def create_app(predictor: Predictor, cfg: Config, settings: ServeSettings, info: dict) -> FastAPI:
    """The FastAPI application; the micro-batcher lives from startup to shutdown."""
    state: dict[str, MicroBatcher] = {}

    @asynccontextmanager
    async def lifespan(app):
        run = _predict_fn(predictor, cfg, settings.max_batch)
        state["batcher"] = MicroBatcher(
            run, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue
        )
        yield
        state["batcher"].close()

    app = FastAPI(title="raftlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    for exc in (Reject, RaftlmError, Busy, HTTPException, Exception):
        app.add_exception_handler(exc, _error)

    @app.get("/health")
    async def health():
        b = state["batcher"]
        return {"status": "ok", "queued_rows": b.queued_rows, "batches": b.batches_run, "rows": b.rows_run}

    @app.get("/info")
    async def get_info():
        return info

    @app.post("/predict")
    async def predict(request: Request):
        req = _parse(await _read_body(request, settings.max_body_kb * 1024), settings.max_rows)
        texts = [e.text for e in to_examples(req.inputs, predictor.template, None, "request")]
        future = state["batcher"].submit(texts)
        return _response(predictor, await asyncio.wrap_future(future), req, texts)

    return app


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


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)


def serve(run_dir: str, cfg: Config, settings: ServeSettings) -> None:
    """Load the run, listen, serve until SIGTERM or Ctrl+C."""
    if not is_run_dir(run_dir):
        raise RaftlmError(
            f"{run_dir} is not a raftlm run (no raftlm.json): pass a run directory from `raftlm train`"
        )
    predictor = load_for_eval(replace(cfg, model=replace(cfg.model, name=str(run_dir))), None)
    info = run_info(run_dir, predictor, cfg, settings)
    app = create_app(predictor, cfg, settings, info)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    print(f"raftlm serve: {run_dir} on http://{host}:{port} ({info_line(info, settings)})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=60)
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then re-raises the signal to the handler it
    # found: this one, so a clean stop exits 0 instead of dying from the signal it just handled
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def info_line(info: dict, settings: ServeSettings) -> str:
    """The startup line's device, dtype and batching, from ``run_info``'s dict (what /info serves)."""
    return (
        f"{info['device']}, {info['dtype']}, batches of up to {settings.max_batch} rows within "
        f"{settings.max_wait_ms:g} ms"
    )
