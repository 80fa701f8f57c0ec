"""`raftlm serve`: a real server process on 127.0.0.1, a real HTTP client, the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import train_args, write_csv

import raftlm
from raftlm.cli import main
from raftlm.predictor import Predictions
from raftlm.serve import Busy, MicroBatcher

SRC = str(Path(raftlm.__file__).resolve().parents[1])  # the checkout under test, for the server process
WORDS = ["awful", "bad", "fine", "good", "great"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run and its data (40 rows of `text`, `target`)."""
    d = tmp_path_factory.mktemp("serve")
    rows = [
        {
            "text": f"review {i}: the product was {WORDS[i % 5]}{' really' * (i % 7)}. rating:",
            "target": i % 5 + 1,
        }
        for i in range(40)
    ]
    data = write_csv(d / "toy.csv", rows)
    assert main(train_args(data, d / "run")) == 0
    return d / "run", data, rows


@contextmanager
def server(run_dir: Path, *flags: str):
    """`raftlm serve RUN --port 0 ...` as a child process; yields (base URL, process); SIGTERM at exit."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run_dir), "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "http://127.0.0.1:" in line, proc.stderr.read()[-2000:]
        # device and dtype as /info reports them, then the batching
        assert re.search(
            r"\((cpu|cuda:\d+), (float32|bfloat16), batches of up to \d+ rows within \d+ ms\)$", line
        ), line
        yield line.split(" on ")[1].split()[0], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def url(run):
    with server(run[0], "--max-wait-ms", "200") as (base, _):
        yield base


def post(base: str, body, **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base}/predict", content=data, timeout=60, **kw)


def test_predictions_equal_raftlm_predict_under_concurrent_clients(run, url, tmp_path):
    run_dir, data, rows = run
    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), "--with-probs"])
        == 0
    )
    offline = [json.loads(line) for line in out.read_text().splitlines()]

    # 8 clients at once, each its own connection, requests of 1-3 rows
    requests = [list(range(i, min(i + 1 + i % 3, 40))) for i in range(0, 40, 2)]
    requests = [r for r in requests if r]
    covered = sorted({i for r in requests for i in r})

    def ask(idx):
        with httpx.Client(timeout=60) as client:
            body = {"inputs": [{"text": rows[i]["text"]} for i in idx], "with_probs": True}
            return idx, client.post(f"{url}/predict", json=body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, requests))
    got = {}
    for idx, r in answers:
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == len(idx) == len(body["probs"]) == len(body["entropy"])
        for k, i in enumerate(idx):
            got[i] = (body["predictions"][k], body["probs"][k], body["entropy"][k])
    assert sorted(got) == covered
    for i in covered:
        pred, probs, ent = got[i]
        assert pred == pytest.approx(offline[i]["prediction"], abs=1e-6)
        assert probs == pytest.approx(offline[i]["probs"], abs=2e-6)
        assert ent == pytest.approx(offline[i]["entropy"], abs=1e-6)
    health = httpx.get(f"{url}/health").json()
    # requests that arrive within the wait share one forward pass: far fewer passes than requests
    assert health["status"] == "ok" and health["rows"] >= len(covered)
    assert health["batches"] < len(requests)


def test_health_and_info_describe_the_run(url, run):
    info = httpx.get(f"{url}/info").json()
    assert info["base_model"] == "tiny-random-llama" and info["method"] == "raft"
    assert info["grid"]["strings"] == ["1", "2", "3", "4", "5"] and info["columns"] == ["text"]
    assert info["template"] == "{text}" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["metrics"]["test"]["n"] == 4 and info["serving"]["max_batch"] == 16
    assert info["run"] == run[0].resolve().name and "run_dir" not in info


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ('{"inputs": [', 400, "not valid JSON"),
        ({"rows": [{"text": "x"}]}, 422, "inputs: Field required"),
        ({"inputs": []}, 422, "at least 1 item"),
        ({"inputs": ["just a string"]}, 422, "inputs.0: Input should be an object"),
        ({"inputs": [{"txt": "x"}]}, 400, "column 'text' needed by the prompt template is missing"),
        ({"inputs": [{"text": "  "}]}, 400, "request row 1: field 'text' is empty"),
        ({"inputs": [{"text": "x"}] * 257}, 413, "257 rows in one request exceed the limit of 256"),
        ({"inputs": [{"text": "x" * 2_000_000}]}, 413, "exceeds the limit of 1048576"),
    ],
)
def test_bad_requests_get_a_one_line_error_and_the_server_lives_on(url, body, status, fragment):
    r = post(url, body)
    assert r.status_code == status and fragment in r.json()["error"]
    assert "\n" not in r.json()["error"] and "Traceback" not in r.text
    assert post(url, {"inputs": [{"text": "fine. rating:"}]}).status_code == 200


def test_unknown_routes_and_methods_are_json_errors(url):
    assert httpx.get(f"{url}/nope").json() == {"error": "Not Found"}
    assert httpx.get(f"{url}/predict").status_code == 405


def test_full_queue_is_503_and_sigterm_finishes_in_flight_requests(run):
    run_dir, _, rows = run
    # a 4-row queue and a long wait for a 64-row batch: the first request sits in the queue
    flags = ("--max-wait-ms", "1500", "--max-batch", "64", "--max-queue", "4", "--max-rows", "4")
    with server(run_dir, *flags) as (base, proc):
        body = {"inputs": [{"text": r["text"]} for r in rows[:4]]}
        first = {}
        waiting = threading.Thread(target=lambda: first.update(r=post(base, body)))
        waiting.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health").json()["queued_rows"] < 4:
            assert time.monotonic() < deadline and waiting.is_alive(), first
            time.sleep(0.01)
        busy = post(base, {"inputs": [{"text": "one more. rating:"}]})
        assert busy.status_code == 503 and "queue is full" in busy.json()["error"]
        proc.send_signal(signal.SIGTERM)  # while the first request is still queued
        waiting.join(timeout=60)
        assert first["r"].status_code == 200 and len(first["r"].json()["predictions"]) == 4
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health")


def test_serve_errors_exit_2_with_one_line(tmp_path, capsys, run, url):
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a raftlm run (no raftlm.json)" in capsys.readouterr().err
    assert main(["serve", str(run[0]), "--max-rows", "10", "--max-queue", "5"]) == 2
    assert "raise --max-queue or lower --max-rows" in capsys.readouterr().err
    port = url.rsplit(":", 1)[1]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    taken = subprocess.run(
        [sys.executable, "-m", "raftlm", "serve", str(run[0]), "--port", port],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert taken.returncode == 2
    assert (
        taken.stderr.strip()
        .splitlines()[-1]
        .startswith(f"raftlm serve: error: cannot listen on 127.0.0.1:{port}")
    )


# --- the micro-batcher alone -------------------------------------------------------------------


def _echo(batches):
    """run_batch that predicts float(text) and records each batch's size."""

    def run_batch(texts):
        batches.append(len(texts))
        return Predictions(np.array([float(t) for t in texts]))

    return run_batch


def test_micro_batcher_routes_each_request_its_own_rows_within_the_cap():
    batches: list[int] = []
    b = MicroBatcher(_echo(batches), max_batch=8, max_wait_s=0.05, max_queue=1000)
    requests = [[str(10 * i + k) for k in range(1 + i % 3)] for i in range(40)]
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(b.submit, requests))
    results = [f.result(timeout=10).values.tolist() for f in futures]
    b.close()
    assert results == [[float(t) for t in r] for r in requests]
    assert max(batches) <= 8 and sum(batches) == sum(map(len, requests)) and len(batches) < len(requests)


def test_micro_batcher_bounds_its_queue_and_drains_on_close():
    batches: list[int] = []
    b = MicroBatcher(_echo(batches), max_batch=100, max_wait_s=5.0, max_queue=3)
    first = b.submit(["1", "2"])
    with pytest.raises(Busy, match="queue is full"):
        b.submit(["3", "4"])
    second = b.submit(["3"])
    b.close()  # does not wait the 5 s: closing flushes what is queued
    assert first.result(0).values.tolist() == [1.0, 2.0] and second.result(0).values.tolist() == [3.0]
    with pytest.raises(Busy, match="shutting down"):
        b.submit(["5"])


def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on():
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return Predictions(np.zeros(len(texts)))

    b = MicroBatcher(flaky, max_batch=4, max_wait_s=0.0, max_queue=10)
    with pytest.raises(RuntimeError, match="boom"):
        b.submit(["a"]).result(timeout=10)
    assert b.submit(["b"]).result(timeout=10).values.tolist() == [0.0]
    b.close()
