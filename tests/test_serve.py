"""`raftlm serve`: a real server process on 127.0.0.1, a real HTTP client (and raw sockets), the tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import train_args, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import raftlm
from raftlm.cli import main
from raftlm.config import Config, ServeSettings
from raftlm.core import KIND_CHOICES
from raftlm.pipeline import load_for_eval
from raftlm.predictor import Predictions
from raftlm.serve import Busy, MicroBatcher, create_app, load_calibration, run_info

SRC = str(Path(raftlm.__file__).resolve().parents[1])  # the checkout under test, for the server process
WORDS = ["awful", "bad", "fine", "good", "great"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run, calibrated on its 40 rows (enough for 0.9 intervals), and its data."""
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
    assert main(["calibrate", str(d / "run"), "--input", str(data)]) == 0
    return d / "run", data, rows


@contextmanager
def servers(*specs: tuple[Path, tuple[str, ...]]):
    """`raftlm serve RUN --port 0 FLAGS` for each (RUN, FLAGS), as child processes started together (each
    spends seconds importing torch: side by side they overlap); yields [(base URL, process, its stderr
    file)] in the order given; SIGTERM to each at exit. stderr goes to a file: a pipe nobody reads would
    fill with the access log and block the server."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    started = []
    try:
        for run_dir, flags in specs:
            cmd = [sys.executable, "-m", "raftlm", "serve", str(run_dir), "--port", "0", *flags]
            log = run_dir.parent / f"serve-{time.monotonic_ns()}.log"
            with open(log, "w") as err:
                started.append(
                    (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env), log)
                )
        ready = []
        for proc, log in started:
            line = proc.stdout.readline()  # printed once the socket listens
            assert "http://127.0.0.1:" in line, log.read_text()[-2000:]
            # device and dtype as /info reports them, then the batching
            assert re.search(
                r"\((cpu|cuda:\d+), (float32|bfloat16), batches of up to \d+ prompts within \d+ ms\)$", line
            ), line
            ready.append((line.split(" on ")[1].split()[0], proc, log))
        yield ready
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in started:
            proc.wait(timeout=60)


@contextmanager
def server(run_dir: Path, *flags: str):
    """One `raftlm serve` child process (see `servers`): yields (base URL, process, its stderr file)."""
    with servers((run_dir, flags)) as [one]:
        yield one


@pytest.fixture(scope="module")
def served(run):
    with server(run[0], "--max-wait-ms", "100", "--body-timeout-s", "1") as (base, _, log):
        yield base, log


@pytest.fixture(scope="module")
def url(served):
    return served[0]


def post(base: str, body, route: str = "/predict", **kw) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base}{route}", content=data, timeout=60, **kw)


def get(url: str, **kw) -> httpx.Response:
    """GET with post()'s 60 s timeout (httpx's default 5 s is a loaded machine's forward pass)."""
    return httpx.get(url, timeout=60, **kw)


def metrics(base: str) -> dict[tuple, float]:
    """/metrics as {(sample name, sorted labels...): value}."""
    text = get(f"{base}/metrics").text
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_with(m: dict, route: str, status: int) -> float:
    key = ("raftlm_http_requests_total", ("method", "POST"), ("route", route), ("status", str(status)))
    return m.get(key, 0.0)


def raw(base: str, data: bytes) -> socket.socket:
    """A socket that sent ``data`` to the server (an HTTP request written by hand)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(data)
    return sock


def request_bytes(body: bytes, length: int | None = None, route: str = "/predict") -> bytes:
    head = f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body) if length is None else length}\r\n\r\n".encode() + body


def read_all(sock: socket.socket) -> str:
    """What the server answered, up to its closing the connection."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def wait_for(check, seconds: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def offline(run_dir: Path, data: Path, out: Path, *flags: str) -> list[dict]:
    """`raftlm predict` over the file: its output rows."""
    assert main(["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), *flags]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_predictions_equal_raftlm_predict_under_concurrent_clients(run, url, tmp_path):
    run_dir, data, rows = run
    expected = offline(run_dir, data, tmp_path / "preds.jsonl", "--with-probs")

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
        assert pred == pytest.approx(expected[i]["prediction"], abs=1e-6)
        assert probs == pytest.approx(expected[i]["probs"], abs=2e-6)
        assert ent == pytest.approx(expected[i]["entropy"], abs=1e-6)
    health = get(f"{url}/health").json()
    # requests that arrive within the wait share one forward pass: far fewer passes than requests
    assert health["status"] == "ok" and health["rows"] >= len(covered)
    assert health["batches"] < len(requests)


def test_intervals_and_uncertainty_equal_raftlm_predict(run, url, tmp_path):
    """The same rows in one request (so the same batches as `raftlm predict`'s): every number identical."""
    run_dir, data, rows = run
    flags = ("--interval", "0.9", "--with-uncertainty", "--with-probs", "--with-prompts")
    expected = offline(run_dir, data, tmp_path / "preds.jsonl", *flags)
    options = {"interval": 0.9, "with_uncertainty": True, "with_probs": True, "with_prompts": True}
    r = post(url, {"inputs": [{"text": row["text"]} for row in rows], **options})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["interval_kind"] == "cqr"
    names = {"prediction": "predictions", "prompt": "prompts"}
    keys = [k for k in expected[0] if k not in ("index", "target")]
    assert {"lower", "upper", "std", "median", "quantiles", "mean"} <= set(keys)
    for i, row in enumerate(expected):
        assert {k: got[names.get(k, k)][i] for k in keys} == {k: row[k] for k in keys}  # exactly equal

    # MLflow's route with the same switches as params: the rows `raftlm predict` writes, less index
    split = {"columns": ["text"], "data": [[row["text"]] for row in rows]}
    r = post(url, {"dataframe_split": split, "params": options}, "/invocations")
    assert r.json()["predictions"] == [
        {k: v for k, v in row.items() if k not in ("index", "target")} for row in expected
    ]

    # a list of levels: bounds keyed by level, each the single level's
    r = post(url, {"inputs": [rows[0]["text"]], "interval": [0.8, 0.9]}).json()
    assert r["lower"][0]["0.9"] == expected[0]["lower"] and r["upper"][0]["0.9"] == expected[0]["upper"]
    assert r["lower"][0]["0.8"] >= r["lower"][0]["0.9"] and r["upper"][0]["0.8"] <= r["upper"][0]["0.9"]


def test_health_and_info_describe_the_run(url, run):
    info = get(f"{url}/info").json()
    assert info["base_model"] == "tiny-random-llama" and info["method"] == "raft"
    assert info["grid_distribution"] is True  # with_probs applies
    assert info["grid"]["strings"] == ["1", "2", "3", "4", "5"] and info["columns"] == ["text"]
    assert info["template"] == "{text}" and info["device"] == "cpu" and info["dtype"] == "float32"
    # no --max-batch: the run's eval.batch_size (4, its training batch), the batches `raftlm predict` runs
    assert info["metrics"]["test"]["n"] == 4 and info["serving"]["max_batch"] == 4
    assert info["run"] == run[0].resolve().name and "run_dir" not in info
    # calibrated on toy.csv: its name, not the server's path to it
    assert info["calibration"] == {
        "n": 40,
        "source": "toy.csv",
        "interval_kind": "cqr",
        "levels": [0.5, 0.8, 0.9, 0.95],
    }
    assert get(f"{url}/ping").status_code == 200


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ('{"inputs": [', 400, "not valid JSON"),
        ('{"inputs": [{"text": "a", "text": "b"}]}', 400, "the key 'text' appears twice"),
        ('{"inputs": ["x"], "interval": NaN}', 400, "NaN is not a JSON number"),
        ("[" * 5000 + "]" * 5000, 400, "recursion limit exceeded"),
        ({"rows": [{"text": "x"}]}, 422, "inputs: Field required"),
        ({"inputs": ["x"], "rows": 1}, 422, "unknown field 'rows': the fields are with_probs"),
        ({"with_probs": True}, 422, "inputs: Field required"),
        ({"inputs": []}, 422, "inputs: send a non-empty list of rows"),
        (
            {"inputs": [5]},
            400,
            "request row 1: field 'text' is 5 (a int), not text: give text (quote numbers",
        ),
        ({"inputs": [[5]]}, 400, "request row 1: field 'text' is [5] (a list), not text"),
        (  # the fix a client can make (it cannot change the run's template)
            {"inputs": [{"txt": "x"}]},
            400,
            "column 'text' needed by the prompt template is missing (columns: ['txt']): give each row the "
            "template's columns (text)",
        ),
        ({"inputs": [{"text": "  "}]}, 400, "request row 1: field 'text' is empty"),
        # the row contract, as for files and the Python API: no number, null or bool for a text field
        (
            {"inputs": [{"text": "ok"}, {"text": 5}]},
            400,
            "request row 2: field 'text' is 5 (a int), not text",
        ),
        ({"inputs": [{"text": None}]}, 400, "request row 1: field 'text' is missing (null)"),
        ({"inputs": [{"text": True}]}, 400, "field 'text' is True (a boolean), not text"),
        # strict switches: "yes" is not true, "0.9" not a level
        ({"inputs": ["x"], "with_probs": "yes"}, 422, "with_probs: Input should be a valid boolean"),
        ({"inputs": ["x"], "with_prompts": 1}, 422, "with_prompts: Input should be a valid boolean"),
        ({"inputs": ["x"], "interval": "0.9"}, 422, "interval: confidence level '0.9' is not a number"),
        (
            {"inputs": ["x"], "interval": [0.9, 1.5]},
            422,
            "confidence level 1.5 is not a number strictly between",
        ),
        ({"inputs": ["x"], "interval_kind": "wide"}, 422, "interval_kind: Input should be 'auto'"),
        (  # it was taken and did nothing
            {"inputs": ["x"], "interval_kind": "std"},
            400,
            '"interval_kind" chooses the kind of "interval"\'s intervals: ask for "interval" too',
        ),
        ({"inputs": ["x"], "interval": 0.99}, 400, "40 examples, too few for a 0.99 interval"),
        # a low level needs many examples too (0.01: 100): the level that fails is named, not the highest
        (
            {"inputs": ["x"], "interval": [0.01, 0.9]},
            400,
            "too few for a 0.01 interval (split conformal needs 100)",
        ),
        # (1 - 1e-17 rounds to 1: a ZeroDivisionError, a 500 with a traceback)
        ({"inputs": ["x"], "interval": 1e-17}, 422, "confidence level 1e-17 is too close to 0 to compute"),
        ({"inputs": ["x"], "interval": [0.9, 0.9000001]}, 422, "two confidence levels are 0.9 to 6 digits"),
        (
            '{"inputs": ["x"], "interval": 1' + "0" * 5000 + "}",
            400,
            "a number in the request body has over 4300",
        ),
        ({"inputs": [{"text": "x"}] * 257}, 413, "257 rows in one request exceed the limit of 256"),
        ({"inputs": [{"text": "x" * 2_000_000}]}, 413, "exceeds the limit of 1048576"),
    ],
)
def test_bad_requests_get_a_one_line_error_and_the_server_lives_on(url, body, status, fragment):
    r = post(url, body)
    assert r.status_code == status and fragment in r.json()["error"], r.text
    assert "\n" not in r.json()["error"] and "Traceback" not in r.text
    assert post(url, {"inputs": [{"text": "fine. rating:"}]}).status_code == 200


def test_plain_strings_and_mlflow_routes_give_the_same_numbers(url, run):
    texts = [row["text"] for row in run[2][:3]]
    want = post(url, {"inputs": [{"text": t} for t in texts]}).json()["predictions"]
    assert post(url, {"inputs": texts}).json()["predictions"] == want  # TEI's shape
    assert post(url, {"inputs": texts[0]}).json()["predictions"] == want[:1]
    for body in (
        {"dataframe_records": [{"text": t} for t in texts]},
        {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts], "index": [0, 1, 2]}},
        {"instances": texts},
        {"inputs": {"text": texts}},
    ):
        r = post(url, body, "/invocations")
        assert r.status_code == 200 and r.json() == {"predictions": want}, (body, r.text)
    csv_body = "text\n" + "\n".join(f'"{t}"' for t in texts) + "\n"
    r = post(url, csv_body, "/invocations", headers={"content-type": "text/csv"})
    assert r.json() == {"predictions": want}
    r = post(url, "\ufeff" + csv_body, "/invocations", headers={"content-type": "text/csv"})
    assert r.json() == {"predictions": want}  # a byte-order mark (Excel's) is dropped, as from a file
    r = post(url, "text,text\na,b\n", "/invocations", headers={"content-type": "text/csv"})
    assert r.status_code == 400 and "header: column 'text' appears 2 times" in r.json()["error"]
    # an unquoted comma: refused with its line as `raftlm predict` refuses the file (it was cut at the comma)
    r = post(url, "text\nfine\ngreat, really\n", "/invocations", headers={"content-type": "text/csv"})
    assert r.status_code == 400 and r.json()["error"] == (
        "the CSV body line 3: 2 fields but the header has 1: quote fields that contain ',', or fix the row"
    )
    for body, fragment in (
        ({"instances": texts, "inputs": texts}, "send exactly one of dataframe_split"),
        ({"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}, "2 values for 1 columns"),
        ({"dataframe_split": {"columns": ["text", "text"], "data": [["a", "b"]]}}, "'text' appears 2 times"),
        ({"inputs": {"text": ["a"], "other": []}}, "columns of different or zero lengths"),
        ({"dataframe_records": [{"text": 3}]}, "request row 1: field 'text' is 3 (a int), not text"),
        (
            {"instances": texts, "params": {"with_probs": "yes"}},
            "params.with_probs: Input should be a valid boolean",
        ),
    ):
        r = post(url, body, "/invocations")
        assert r.status_code in (400, 422) and fragment in r.json()["error"], r.text


def test_openapi_docs_page_and_json_errors(url):
    spec = get(f"{url}/openapi.json").json()
    assert {"/predict", "/invocations", "/info", "/health", "/ping"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert {"400", "413", "422", "503"} <= set(predict["responses"])
    schemas = spec["components"]["schemas"]
    assert {"inputs", "with_probs", "interval", "with_uncertainty"} <= set(
        schemas["PredictRequest"]["properties"]
    )
    assert {"dataframe_split", "dataframe_records", "instances", "inputs", "params"} <= set(
        schemas["InvocationsRequest"]["properties"]
    )
    assert "swagger" in get(f"{url}/docs").text.lower()
    page = get(f"{url}/")
    assert page.status_code == 200 and "<svg" in page.text and "//cdn" not in page.text
    assert get(f"{url}/nope").json() == {"error": "Not Found"}
    assert get(f"{url}/predict").status_code == 405


def test_a_truncated_prompt_is_reported_to_the_caller(url):
    long = " ".join(["very"] * 1500) + " long. rating:"  # > max_length=512 tokens
    r = post(url, {"inputs": ["short. rating:", long]}).json()
    assert r["truncated"] == [False, True]
    assert "rows [1] are longer than max_length=512 tokens" in r["warnings"][0]
    assert "truncated" not in post(url, {"inputs": ["short. rating:"]}).json()


def test_half_a_body_gets_408_and_the_access_log_has_a_line_per_request(served):
    url, log = served
    start = time.monotonic()
    sock = raw(url, request_bytes(b'{"inputs": [', length=100))  # 12 of 100 bytes, then nothing
    answer = read_all(sock)
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer
    assert time.monotonic() - start < 10
    post(url, {"inputs": ["logged. rating:"]})
    wait_for(lambda: '"POST /predict HTTP/1.1" 200' in log.read_text(), what="an access log line")
    assert '"POST /predict HTTP/1.1" 408' in log.read_text() and "Traceback" not in log.read_text()


def test_metrics_count_what_clients_saw(url):
    before = metrics(url)
    assert post(url, {"inputs": ["a. rating:", "b. rating:"]}).status_code == 200
    assert post(url, {"inputs": [5]}).status_code == 400
    assert post(url, {"inputs": "x", "with_probs": "yes"}).status_code == 422
    assert post(url, {"dataframe_records": [{"text": "c"}]}, "/invocations").status_code == 200
    after = metrics(url)
    for route, status, n in (
        ("/predict", 200, 1),
        ("/predict", 400, 1),
        ("/predict", 422, 1),
        ("/invocations", 200, 1),
    ):
        assert requests_with(after, route, status) - requests_with(before, route, status) == n
    rows = ("raftlm_rows_predicted_total",)
    assert after[rows] - before[rows] == 3
    batches = ("raftlm_batch_rows_count",)
    assert after[batches] - before[batches] == 2  # one forward pass per request here (sequential)
    assert ("raftlm_queue_rows",) in after and ("raftlm_rows_dropped_total",) in after
    assert after[("raftlm_http_request_duration_seconds_count", ("route", "/predict"))] >= 3


# --- a patient server: long batching waits, a tiny queue; the last test stops it -----------------


@pytest.fixture(scope="module")
def patient(run):
    """A 4-row queue and a 5 s wait for a 64-row batch: a request sits in the queue long enough to
    watch it (and to act while it waits, on a loaded machine too). No access log; a 30 s body timeout (so
    only shutdown ends a half body) and a 30 s graceful timeout (a prompt exit is not that timeout's)."""
    flags = ("--max-wait-ms", "5000", "--max-batch", "64", "--max-queue", "4", "--max-rows", "4")
    with server(
        run[0], *flags, "--no-access-log", "--body-timeout-s", "30", "--graceful-timeout-s", "30"
    ) as started:
        yield started


def test_a_disconnected_client_is_dropped_before_its_forward_pass(patient):
    base, _, _ = patient
    before = metrics(base)
    body = json.dumps({"inputs": ["gone. rating:"] * 4}).encode()
    sock = raw(base, request_bytes(body))
    wait_for(lambda: get(f"{base}/health").json()["queued_rows"] == 4, what="the request queued")
    sock.close()  # the client leaves while its rows wait for the batch
    wait_for(lambda: requests_with(metrics(base), "/predict", 499) == 1, what="a 499")
    wait_for(lambda: get(f"{base}/health").json()["queued_rows"] == 0, what="the queue to empty")
    after = metrics(base)
    assert after[("raftlm_rows_dropped_total",)] - before[("raftlm_rows_dropped_total",)] == 4
    health = get(f"{base}/health").json()
    assert health["rows"] == 0 and health["batches"] == 0 and health["rows_dropped"] == 4  # never computed


def test_full_queue_is_503_and_sigterm_finishes_in_flight_requests_within_seconds(patient, run):
    base, proc, log = patient
    rows = run[2]
    body = {"inputs": [{"text": r["text"]} for r in rows[:4]]}
    first = {}
    waiting = threading.Thread(target=lambda: first.update(r=post(base, body)))
    waiting.start()
    wait_for(lambda: get(f"{base}/health").json()["queued_rows"] == 4 or not waiting.is_alive())
    busy = post(base, {"inputs": [{"text": "one more. rating:"}]})
    assert busy.status_code == 503 and "queue is full" in busy.json()["error"]
    half = raw(base, request_bytes(b'{"inputs": ["half', length=1000))  # a body that never ends
    time.sleep(0.2)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # while the first request is still queued, the half body open
    waiting.join(timeout=60)
    assert first["r"].status_code == 200 and len(first["r"].json()["predictions"]) == 4
    assert read_all(half).startswith("HTTP/1.1 503")  # ended at once, not at its timeout
    assert proc.wait(timeout=60) == 0
    assert time.monotonic() - start < 15  # the queued batch and the exit, not the 30 s graceful timeout
    stderr = log.read_text()
    assert "Traceback" not in stderr and "HTTP/1.1" not in stderr, stderr  # --no-access-log
    with pytest.raises(httpx.ConnectError):
        get(f"{base}/health")


def test_serve_errors_exit_2_with_one_line(tmp_path, capsys, run, url):
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a raftlm run (no raftlm.json)" in capsys.readouterr().err
    assert main(["serve", str(run[0]), "--max-rows", "10", "--max-queue", "5"]) == 2
    assert "raise --max-queue or lower --max-rows" in capsys.readouterr().err
    for flag, value, message in (
        ("--max-wait-ms", "nan", "--max-wait-ms='nan': use a finite number"),
        ("--body-timeout-s", "0", "body_timeout_s=0: use a time in (0, 3600] seconds"),
        ("--graceful-timeout-s", "inf", "--graceful-timeout-s='inf': use a finite number"),
        ("--max-batch", "2.5", "--max-batch='2.5': use a whole number"),
    ):
        assert main(["serve", str(run[0]), flag, value]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    # a damaged run (truncated weights or metadata): one line, exit 2, no traceback
    for name in ("model.safetensors", "raftlm.json"):
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(run[0], broken)
        (broken / name).write_bytes((broken / name).read_bytes()[:100])
        assert main(["serve", str(broken), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert name in err and len(err.strip().splitlines()) == 1, err
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
    assert taken.stderr.strip().splitlines() == [
        f"raftlm serve: error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
        "--port or --host"
    ]


# --- in process (fastapi's TestClient): calibrations missing or damaged --------------------------


@pytest.fixture(scope="module")
def loaded(run):
    cfg = Config.from_yaml(str(run[0] / "config.yaml"))
    cfg = replace(cfg, model=replace(cfg.model, name=str(run[0])))
    return load_for_eval(cfg, None), cfg


def test_grid_probabilities_of_a_text_decoder_are_refused_as_raftlm_predict_refuses_them(
    run, loaded, tmp_path, capsys
):
    """greedy reads no grid distribution: with_probs used to give rows without probs, silently (the CLI
    too); now both refuse in one line, and the CLI writes nothing."""
    run_dir, data, _ = run
    out = tmp_path / "p.jsonl"
    argv = ["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out)]
    for flag in ("--with-probs", "--with-uncertainty"):  # refused before the model loads
        assert main([*argv, "--decoder", "greedy", flag]) == 2
        err = capsys.readouterr().err
        assert (
            f"{flag} reads the grid distribution, which --decoder greedy does not give (it decodes text)"
            in err
        )
        assert not out.exists()
    assert main(["serve", str(run_dir), "--decoder", "greedy", "--interval-kind", "cqr", "--port", "0"]) == 2
    assert "--interval-kind reads the grid distribution, which --decoder greedy does not give" in (
        capsys.readouterr().err
    )
    # the server's rows go through the same streaming.prediction_rows, which says it in its words
    said = (
        '--with-probs ("with_probs", the grid probabilities) reads the grid distribution, which a text decoder '
        "(greedy, sample-rail) does not give (it decodes text)"
    )
    predictor, cfg = loaded
    cfg = replace(cfg, eval=replace(cfg.eval, decoder="greedy"))
    settings = ServeSettings(max_wait_ms=0)
    cal = load_calibration(run_dir)
    app = create_app(predictor, cfg, settings, run_info(run_dir, predictor, cfg, settings, cal), cal)
    with TestClient(app) as client:
        info = client.get(
            "/info"
        ).json()  # the page asks for probabilities and intervals only where they exist
        assert info["decoder"] == "greedy" and info["grid_distribution"] is False
        assert info["calibration"]["n"] == 40 and info["calibration"]["levels"] == []
        r = client.post("/predict", json={"inputs": ["x"], "interval": 0.8})
        assert (
            r.status_code == 400
            and "intervals and the uncertainty summary need the grid" in r.json()["error"]
        )
        assert client.post("/predict", json={"inputs": ["x"]}).status_code == 200
        r = client.post("/predict", json={"inputs": ["x"], "with_probs": True})
        assert r.status_code == 400 and said in r.json()["error"]


def test_sampled_predictions_are_the_same_in_a_file_the_api_and_the_server(run, loaded, tmp_path):
    """sample-rail through every interface, at the run's own sampling settings: a file of rows, the Python
    API on two of them in another order, and server requests of one row each give each row the same
    number (each prompt samples from its own seed)."""
    from raftlm import RAFTRegressor

    run_dir, data, rows = run
    written = offline(run_dir, data, tmp_path / "p.jsonl", "--decoder", "sample-rail")
    want = [r["prediction"] for r in written]
    texts = [r["text"] for r in rows]
    api = RAFTRegressor.load(str(run_dir)).predict([texts[5], texts[4]], decoder="sample-rail")
    assert list(api) == [want[5], want[4]]
    predictor, cfg = loaded
    cfg = replace(cfg, eval=replace(cfg.eval, decoder="sample-rail"))
    settings = ServeSettings(max_wait_ms=0)
    app = create_app(predictor, cfg, settings, run_info(run_dir, predictor, cfg, settings, None), None)
    with TestClient(app) as client:
        got = [client.post("/predict", json={"inputs": [t]}).json()["predictions"][0] for t in texts[:6]]
        # each row says how many of its sampled texts were not a number (counted as 0.0), as the file does
        r = client.post("/predict", json={"inputs": texts[:6]}).json()
    assert got == want[:6] and len(set(want)) > 1
    unparsed = [w["unparsed"] for w in written[:6]]
    assert r["unparsed"] == unparsed and r["predictions"] == want[:6] and any(unparsed)
    bad = [i for i, n in enumerate(unparsed) if n]
    assert r["warnings"] == [
        f'rows {bad} decoded text that was not a number, counted as 0.0 (their "unparsed" says how many of '
        "their texts): decode with rail, which reads the grid's probabilities instead of text"
    ]
    assert "truncated" not in r
    # another seed: the command line's --seed and the estimator's seed parameter (the run's own by default)
    seeded = offline(run_dir, data, tmp_path / "s.jsonl", "--decoder", "sample-rail", "--seed", "3")
    reg = RAFTRegressor.load(str(run_dir)).set_params(seed=3)
    assert list(reg.predict(texts[:4], decoder="sample-rail")) == [r["prediction"] for r in seeded[:4]]
    assert [r["prediction"] for r in seeded] != want


def test_an_uncalibrated_or_damaged_calibration_refuses_intervals_not_predictions(
    run, loaded, tmp_path, caplog
):
    damaged = tmp_path / "run"
    shutil.copytree(run[0], damaged)
    (damaged / "calibration.json").write_text('{"targets": [1, 2')
    cal = load_calibration(damaged)
    assert cal is None and "calibration.json is damaged" in caplog.text and "raftlm calibrate" in caplog.text
    predictor, cfg = loaded
    settings = ServeSettings(max_wait_ms=0)
    app = create_app(predictor, cfg, settings, run_info(damaged, predictor, cfg, settings, cal), cal)
    with TestClient(app) as client:
        assert client.get("/info").json()["calibration"] is None
        assert client.post("/predict", json={"inputs": ["x"]}).status_code == 200
        r = client.post("/predict", json={"inputs": ["x"], "interval": 0.9})
        assert r.status_code == 400 and "has no calibration" in r.json()["error"]
        assert "`raftlm calibrate RUN`" in r.json()["error"]
        r = client.post("/predict", json={"inputs": ["x"], "interval": 0.9, "interval_kind": "grid"})
        assert r.status_code == 200 and r.json()["interval_kind"] == "grid"
        assert r.json()["lower"][0] <= r.json()["predictions"][0] <= r.json()["upper"][0]


# --- fuzzing the request body: a correct result or one line of 4xx, never a 5xx ------------------

FAST = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
AWKWARD = st.sampled_from(["", " ", "\ud800", "😀", "null", "NaN", "{text}", "\x00", "é" * 3])
TEXT = st.one_of(st.text(max_size=12), AWKWARD)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_subnormal=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def mostly(valid, junk):
    """``valid`` three times in four: enough bodies get through to the model to check their answers."""
    return st.one_of(valid, valid, valid, junk)


WORDS_TEXT = st.lists(st.sampled_from(WORDS + ["rating:", "😀", "é"]), min_size=1, max_size=6).map(" ".join)
ROW = mostly(
    st.fixed_dictionaries({"text": WORDS_TEXT}) | WORDS_TEXT,
    st.dictionaries(st.sampled_from(["text", "txt", ""]), JSON | TEXT, max_size=2) | TEXT | JSON,
)
ROWS = mostly(st.lists(ROW, min_size=1, max_size=4), st.lists(ROW, max_size=4) | TEXT | JSON)
OPTIONS = {
    "with_probs": mostly(st.booleans(), JSON),
    "with_prompts": mostly(st.booleans(), JSON),
    "with_uncertainty": mostly(st.booleans(), JSON),
    "interval": mostly(st.floats(0.5, 0.95) | st.lists(st.floats(0.5, 0.95), min_size=1, max_size=3), JSON),
    "interval_kind": mostly(st.sampled_from(KIND_CHOICES), TEXT),
}
PREDICT = st.fixed_dictionaries({"inputs": ROWS}, optional=OPTIONS)
SPLIT = st.fixed_dictionaries(
    {"columns": st.just(["text"]), "data": st.lists(st.tuples(WORDS_TEXT).map(list), min_size=1, max_size=3)}
)
INVOCATION_INPUTS = {
    "dataframe_records": ROWS,
    "dataframe_split": mostly(
        SPLIT,
        st.fixed_dictionaries(
            {
                "columns": st.lists(TEXT, max_size=2) | JSON,
                "data": st.lists(st.lists(TEXT | JSON, max_size=2), max_size=3),
            }
        )
        | JSON,
    ),
    "instances": ROWS,
    "inputs": mostly(
        st.fixed_dictionaries({"text": st.lists(WORDS_TEXT, min_size=1, max_size=3)}),
        st.dictionaries(st.sampled_from(["text", "x"]), st.lists(TEXT, max_size=3), max_size=2) | JSON,
    ),
}
INVOCATIONS = mostly(
    st.sampled_from(list(INVOCATION_INPUTS)).flatmap(
        lambda key: st.fixed_dictionaries(
            {key: INVOCATION_INPUTS[key]}, optional={"params": st.fixed_dictionaries({}, optional=OPTIONS)}
        )
    ),
    st.fixed_dictionaries(
        {}, optional={**INVOCATION_INPUTS, "params": st.fixed_dictionaries({}, optional=OPTIONS) | JSON}
    ),
)
BODY = st.one_of(
    st.tuples(st.just("/predict"), PREDICT.map(lambda b: json.dumps(b).encode())),
    st.tuples(st.just("/invocations"), INVOCATIONS.map(lambda b: json.dumps(b).encode())),
    st.tuples(
        st.sampled_from(["/predict", "/invocations"]),
        JSON.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=64),
    ),
)


def check_answer(url: str, route: str, body: bytes) -> None:
    r = httpx.post(f"{url}{route}", content=body, timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code == 200:
        predictions = r.json()["predictions"]
        assert predictions
        for p in predictions:
            value = p if isinstance(p, float) else p["prediction"]
            assert np.isfinite(value) and 0 <= value <= 5  # RAIL over the grid 1..5 (off-grid mass at 0)
    else:
        assert r.status_code in (400, 413, 422), r.text
        error = r.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error


@FAST
@given(BODY)
def test_fuzzed_request_bodies_get_a_result_or_one_line_of_4xx(url, route_body):
    check_answer(url, *route_body)


@pytest.mark.slow
@SLOW
@given(BODY)
def test_fuzzed_request_bodies_long(url, route_body):
    check_answer(url, *route_body)


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


def test_a_pair_runs_queue_holds_max_queue_rows_of_two_prompts_each():
    """A symmetric pair's run queues both orders of each row: with max_queue rows counted as prompts, a
    request of more than half max_queue rows got a 503 that no retry could fix; its counts are rows."""
    seen = []
    b = MicroBatcher(
        _echo([]),
        100,
        5.0,
        4,
        on_batch=lambda n, s: seen.append(("batch", n)),
        on_drop=lambda n: seen.append(("drop", n)),
        per_row=2,
    )
    whole = b.submit([str(i) for i in range(6)])  # 3 rows, both orders
    gone = b.submit(["6", "7"])  # 1 row whose client leaves
    assert b.queued_rows == 4  # rows, as /health and the metrics say, not prompts
    with pytest.raises(Busy, match=r"queue is full \(4 rows waiting\)"):
        b.submit(["8", "9"])
    assert gone.cancel()
    b.close()
    assert whole.result(0).values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert (b.rows_run, b.rows_dropped) == (3, 1) and sorted(seen) == [("batch", 3), ("drop", 1)]


def test_micro_batcher_drops_cancelled_requests_and_says_so():
    batches: list[int] = []
    seen: list[tuple] = []
    b = MicroBatcher(
        _echo(batches),
        100,
        5.0,
        10,
        on_batch=lambda n, s: seen.append(("batch", n)),
        on_drop=lambda n: seen.append(("drop", n)),
    )
    gone, kept = b.submit(["1", "2", "3"]), b.submit(["4"])
    assert gone.cancel()  # its client left before the batch was taken
    b.close()
    assert batches == [1] and kept.result(0).values.tolist() == [4.0]
    assert b.rows_dropped == 3 and sorted(seen) == [("batch", 1), ("drop", 3)]


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
    # what follows the forward pass fails too (a metrics callback, a model giving too few rows): the
    # worker used to die there, and every later request waited for ever
    reports = []

    def on_batch(n, seconds):
        reports.append(n)
        if len(reports) == 1:
            raise ValueError("a metrics backend is down")

    b = MicroBatcher(lambda texts: Predictions(np.zeros(len(texts))), 4, 0.0, 10, on_batch=on_batch)
    with pytest.raises(ValueError, match="metrics backend"):
        b.submit(["a"]).result(timeout=10)
    assert b.submit(["b"]).result(timeout=10).values.tolist() == [0.0]
    b.close()
    b = MicroBatcher(lambda texts: Predictions(np.zeros(1)), 4, 0.0, 10)
    with pytest.raises(RuntimeError, match="the model gave 1 predictions for 2 prompts"):
        b.submit(["a", "b"]).result(timeout=10)
    b.close()


def test_an_unknown_nested_field_is_told_its_own_models_fields_and_many_columns_cost_linear_time(url):
    """A typo inside "params" was told the request's top-level fields; a dataframe_split of 100,000
    column names took quadratic time in the request handler (minutes, every route blocked)."""
    import time

    r = post(url, {"instances": ["x"], "params": {"with_prob": True}}, route="/invocations")
    assert r.status_code == 422
    assert r.json()["error"].startswith(
        "unknown field 'params.with_prob': the fields are with_probs, with_prompts"
    )
    columns = [f"c{i}" for i in range(100_000)]
    start = time.monotonic()
    r = post(url, {"dataframe_split": {"columns": columns, "data": []}}, route="/invocations")
    assert r.status_code in (400, 413, 422) and time.monotonic() - start < 10
    assert post(url, {"inputs": ["x"]}).status_code == 200  # the server lives on


def test_a_stop_runs_the_queued_requests_at_once_and_a_second_ctrl_c_exits_cleanly(run):
    """SIGTERM while a request waited for its batch (--max-wait-ms longer than --graceful-timeout-s): the
    batch kept waiting for rows, the graceful time ran out and the request got 503 though the docs say
    the queue is drained. And two Ctrl+C with a request inside the model: uvicorn's forced exit skipped
    the app's shutdown: two tracebacks, and in 2 of 3 runs an abort (exit 134, "terminate called without
    an active exception"), the worker thread left inside torch as the interpreter exited. Now a second
    Ctrl+C refuses what is queued and the shutdown stays graceful."""
    rows = run[2]
    waiting = ("--max-wait-ms", "20000", "--max-batch", "64", "--graceful-timeout-s", "3", "--no-access-log")
    busy = ("--max-batch", "1", "--no-access-log", "--graceful-timeout-s", "2")
    with servers((run[0], waiting), (run[0], busy)) as [(base, proc, log), (base2, proc2, log2)]:
        answer, long = {}, {}
        asked = threading.Thread(target=lambda: answer.update(r=post(base, {"inputs": [rows[0]["text"]]})))
        asked.start()
        wait_for(lambda: get(f"{base}/health").json()["queued_rows"] == 1, what="the request queued")
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        asked.join(timeout=60)
        assert answer["r"].status_code == 200 and time.monotonic() - start < 3, answer["r"].text
        assert proc.wait(timeout=60) == 0

        texts = [("many words " * 200) + r["text"] for r in rows] * 6  # 240 rows: one job each request
        many = [
            threading.Thread(target=lambda i=i: long.update({i: _quietly(post, base2, {"inputs": texts})}))
            for i in range(4)
        ]
        for t in many:
            t.start()
        wait_for(lambda: get(f"{base2}/health").json()["queued_rows"] > 0, what="requests queued")
        proc2.send_signal(signal.SIGINT)  # (one request inside the model, others queued)
        time.sleep(0.3)
        proc2.send_signal(signal.SIGINT)
        assert proc2.wait(timeout=60) == 0
        for t in many:
            t.join(timeout=60)
        codes = [getattr(r, "status_code", None) for r in long.values()]
        assert 503 in codes, codes  # the queued ones, refused at the second Ctrl+C
    for said in (log.read_text(), log2.read_text()):
        assert "Traceback" not in said and "terminate called" not in said, said


def _quietly(call, *a):
    try:
        return call(*a)
    except httpx.HTTPError as err:  # (a forced exit may close the connection unanswered)
        return err


def test_requests_the_model_cannot_answer_are_refused_before_its_forward_pass(run, loaded):
    """Under a text decoder with_probs, with_uncertainty and an interval were refused after every row of
    the request had been decoded (/health's rows grew by the request's size each time); an unknown field
    with a dash was named '' ("with-probs"), and one inside params blamed "params"; a CSV body of more
    rows than --max-rows was read whole (seconds, the event loop held) before its 413; a 405 had no Allow
    header; /openapi.json's instances and inputs had a null default their schema did not allow."""
    run_dir = run[0]
    predictor, cfg = loaded
    settings = ServeSettings(max_wait_ms=0, max_rows=5)
    greedy = replace(cfg, eval=replace(cfg.eval, decoder="greedy"))
    app = create_app(predictor, greedy, settings, run_info(run_dir, predictor, greedy, settings, None), None)
    with TestClient(app) as client:
        for extra in ({"with_probs": True}, {"with_uncertainty": True}, {"interval": 0.9}):
            r = client.post("/predict", json={"inputs": ["x", "y"], **extra})
            assert r.status_code == 400, r.text
        assert client.get("/health").json()["rows"] == 0  # nothing was decoded for them
        r = client.post("/predict", json={"inputs": ["x"], "with-probs": True})
        assert r.status_code == 422 and "unknown field 'with-probs': the fields are" in r.json()["error"]
        r = client.post("/invocations", json={"instances": ["x"], "params": {"with-probs": True}})
        assert "unknown field 'params.with-probs': the fields are with_probs" in r.json()["error"]
        body = "text\n" + "a\n" * 6
        r = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
        assert (
            r.status_code == 413 and "over 5 rows in one request exceed the limit of 5" in r.json()["error"]
        )
        r = client.get("/predict")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = client.post("/health")  # (a GET route answers HEAD too: its Allow says so)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        assert client.head("/health").status_code == 200
        schema = client.get("/openapi.json").json()["components"]["schemas"]["InvocationsRequest"]
        for name in ("instances", "inputs"):
            assert {"type": "null"} in schema["properties"][name]["anyOf"]


def test_the_startup_url_brackets_an_ipv6_host():
    from raftlm.serve import url_of

    assert url_of("::1", 8000) == "http://[::1]:8000" and url_of("::", 1) == "http://[::]:1"
    assert url_of("127.0.0.1", 8000) == "http://127.0.0.1:8000"


def test_a_json_body_may_start_with_a_bom_and_an_oversized_expect_100_is_not_invited(url):
    """A UTF-8 BOM before JSON was "expected value at line 1 column 1" (the CSV body drops it); a body
    declared over the limit with "Expect: 100-continue" got "100 Continue", inviting the 2 MB upload the
    413 then refused (the docs: refused before it is read)."""
    r = post(url, b'\xef\xbb\xbf{"inputs": ["fine. rating:"]}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n"
    assert read_all(raw(url, head)).startswith("HTTP/1.1 413")


def test_sigterm_while_the_server_loads_is_one_line_and_exit_143(run):
    """A scheduler's stop while `raftlm serve` loaded its model killed it by the signal, without a word
    (commands other than serve turned SIGTERM into their one line; serve had no handler until it listened)."""
    script = (
        "import os, signal, sys, time\n"
        "import raftlm.serve as serve\n"
        "from raftlm.cli import main\n"
        "def loading(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "serve.load_for_eval = loading\n"
        f"sys.exit(main(['serve', {str(run[0])!r}, '--port', '0']))\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "raftlm serve: error: terminated; nothing half-written was left"
    )


def test_a_stop_signal_before_uvicorn_takes_the_signals_exits_and_after_only_is_noted():
    """The handler uvicorn re-raises a handled signal to did nothing at all, so a SIGTERM that came between
    its install and uvicorn's (the event loop starting) was lost and the server came up; it raised
    SystemExit inside the running loop before that (tracebacks)."""
    import raftlm.serve as serve

    was = serve._SERVING.is_set()
    serve._SERVING.clear()
    try:
        with pytest.raises(SystemExit):
            serve._exit_quietly(signal.SIGTERM, None)
        serve._SERVING.set()
        assert serve._exit_quietly(signal.SIGTERM, None) is None
    finally:
        serve._SERVING.set() if was else serve._SERVING.clear()
