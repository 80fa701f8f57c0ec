"""`raftlm serve` at its edges: /info's dtype under --bf16, a lone ``interval_kind``, a ``dataframe_split``
whose index does not fit its data, HEAD on the GET routes. Real servers on 127.0.0.1 (a `raftlm serve`
child process, and uvicorn in a thread around ``create_app`` for the in-process settings), a real client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import test_serve
import uvicorn
from test_serve import SRC, get, post

from raftlm.config import Config, ServeSettings
from raftlm.pipeline import load_for_eval
from raftlm.serve import bind, create_app, load_calibration, run_info

run = test_serve.run  # the fixture: a tiny trained run, calibrated on its 40 rows (0.9 intervals)


@contextmanager
def cli_server(run_dir: Path, *flags: str):
    """`raftlm serve RUN --port 0 FLAGS` as a child process: yields (base URL, its startup line). (Not
    test_serve's ``server``: its check of the startup line knows no bf16 autocast.)"""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    log = run_dir.parent / f"edges-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run_dir), "--port", "0", *flags]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "http://127.0.0.1:" in line, log.read_text()[-2000:]
        yield line.split(" on ")[1].split()[0], line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@contextmanager
def app_server(app):
    """``app`` under uvicorn in a thread, on a free port of 127.0.0.1: yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def bf16(run):
    """`raftlm serve RUN --bf16`: (base URL, its startup line)."""
    with cli_server(run[0], "--bf16", "--max-wait-ms", "0") as started:
        yield started


@pytest.fixture(scope="module")
def loaded(run):
    cfg = Config.from_yaml(str(run[0] / "config.yaml"))
    return load_for_eval(replace(cfg, model=replace(cfg.model, name=str(run[0]))), None), cfg


def in_process(run_dir: Path, loaded, decoder: str | None = None, calibrated: bool = True):
    """``create_app`` as `raftlm serve` builds it (its /info from ``run_info``), under another decoder or
    without the run's calibration."""
    predictor, cfg = loaded
    if decoder:
        cfg = replace(cfg, eval=replace(cfg.eval, decoder=decoder))
    settings, cal = ServeSettings(max_wait_ms=0), load_calibration(run_dir) if calibrated else None
    info = run_info(run_dir, predictor, cfg, settings, cal)
    return app_server(create_app(predictor, cfg, settings, info, cal))


# --- 1. /info says bf16 autocast ------------------------------------------------------------------


def test_info_and_the_startup_line_name_bf16_autocast(bf16, run, loaded):
    """--bf16 runs the float32 weights under bf16 autocast: /info said "float32", as without it."""
    base, line = bf16
    info = get(f"{base}/info").json()
    assert info["dtype"] == "float32 + bf16 autocast" and info["bf16"] is True
    assert line.rstrip().endswith("(cpu, float32 + bf16 autocast, batches of up to 4 prompts within 0 ms)")
    assert post(base, {"inputs": ["fine. rating:"]}).status_code == 200
    with in_process(run[0], loaded) as plain:  # the run's own settings: no autocast
        info = get(f"{plain}/info").json()
        assert info["dtype"] == "float32" and info["bf16"] is False


# --- 2. a lone interval_kind ----------------------------------------------------------------------

LONE = '"interval_kind" chooses the kind of "interval"\'s intervals: ask for "interval" too (add '


@pytest.mark.parametrize("kind", ["auto", "cqr", "grid"])
def test_a_lone_interval_kind_is_told_the_interval_to_add_and_that_works(bf16, kind):
    """A lone "auto", like any kind alone and like the CLI's --interval-kind alone, chooses nothing (there
    is no interval to choose the kind of): 400, now with the field and a level the server can give."""
    base = bf16[0]
    r = post(base, {"inputs": ["x"], "interval_kind": kind})
    assert r.status_code == 400
    assert r.json()["error"] == LONE + '"interval": 0.9), or drop "interval_kind"'
    r = post(base, {"inputs": ["x"], "interval_kind": kind, "interval": 0.9})  # what it said to add
    assert r.status_code == 200 and len(r.json()["lower"]) == 1, r.text
    r = post(base, {"instances": ["x"], "params": {"interval_kind": kind}}, "/invocations")
    assert r.status_code == 400 and '"interval": 0.9' in r.json()["error"]


def test_a_lone_interval_kind_without_calibration_is_told_to_ask_for_grid(run, loaded):
    """Without a calibration only kind grid gives intervals: "interval" alone was advice that got a second
    400."""
    with in_process(run[0], loaded, calibrated=False) as base:
        r = post(base, {"inputs": ["x"], "interval_kind": "auto"})
        assert r.status_code == 400 and r.json()["error"] == (
            LONE + '"interval": 0.9 and "interval_kind": "grid": the run has no calibration), or drop '
            '"interval_kind"'
        )
        assert post(base, {"inputs": ["x"], "interval": 0.9, "interval_kind": "grid"}).status_code == 200


def test_a_lone_interval_kind_under_a_text_decoder_is_told_there_is_no_interval(run, loaded):
    """greedy gives no interval at all: the advice to add one got a second 400."""
    with in_process(run[0], loaded, decoder="greedy") as base:
        r = post(base, {"inputs": ["x"], "interval_kind": "auto"})
        assert r.status_code == 400 and r.json()["error"].startswith(
            "intervals and the uncertainty summary need the grid distribution: decode with rail"
        )


# --- 3. dataframe_split's index -------------------------------------------------------------------


def test_a_dataframe_split_index_must_have_a_label_per_row(bf16):
    """pandas refuses such a frame; the server took it and dropped the index unread. 422 with the other
    shape errors of dataframe_split (docs/serving.md: 422 is the request's shape)."""
    base = bf16[0]
    split = {"columns": ["text"], "data": [["fine. rating:"], ["bad. rating:"]]}
    for index in ([0], [0, 1, 2], []):
        r = post(base, {"dataframe_split": {**split, "index": index}}, "/invocations")
        assert r.status_code == 422 and r.json() == {
            "error": f"dataframe_split: {len(index)} index labels for 2 rows of data: one label per row, "
            "or no index"
        }
    for body in ({**split, "index": ["a", 7]}, split):
        r = post(base, {"dataframe_split": body}, "/invocations")
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2


# --- 4. HEAD --------------------------------------------------------------------------------------


def test_head_on_a_get_route_answers_as_get_without_a_body(bf16):
    """A load balancer's HEAD /health got 405. Now the GET's status and headers (its Content-Length too)
    and no body: the next request on the same connection reads its own answer."""
    base = bf16[0]
    with httpx.Client(base_url=base, timeout=60) as client:
        for route in ("/health", "/info", "/ping", "/", "/openapi.json"):
            want = client.get(route)
            got = client.head(route)
            assert got.status_code == want.status_code == 200, route
            assert got.content == b"" and got.headers["content-length"] == str(len(want.content)), route
            assert got.headers["content-type"] == want.headers["content-type"], route
        r = client.head("/metrics")  # (its body grows with each request: no length to compare)
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        r = client.head("/predict")  # a POST route: still 405, saying so
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""
        assert client.get("/ping").json() == {"status": "ok"}
    m = get(f"{base}/metrics").text  # counted under its own method
    assert 'raftlm_http_requests_total{method="HEAD",route="/health",status="200"} 1.0' in m
