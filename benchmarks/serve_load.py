"""A mixed load test of `raftlm serve`: 32 clients for 60 s sending good, malformed, oversized and
disconnecting requests; then the server's own account (GET /metrics) against the clients'.

    python benchmarks/serve_load.py                          # Gemma 3 270M zero-shot run, 32 clients, 60 s
    python benchmarks/serve_load.py --run RUN --seconds 20   # a run of yours, shorter

Every client loops until the time is up, drawing each request's kind at random (seeded per client):
- good (60 %): 1-3 rows from a pool of --pool distinct rows, with their prompts asked back; the answer must
  be 200, each prompt the one its row renders to (no row gets another's answer) and each prediction
  within --tolerance of `raftlm predict`'s Predictor on the same row (batches differ, so floats may too);
- malformed (15 %): bad JSON, a number or null for a text field, "yes" for a bool, an unknown field, a
  missing column, no rows: the documented 400 or 422 and a one-line {"error": ...};
- oversized (10 %): more rows than --max-rows, or a body over --max-body-kb: 413;
- disconnecting (15 %): a raw socket sends a good request (whole, or half its body) and closes at once:
  the server counts a 499 and drops the rows if their forward pass has not begun.
The test passes when no response is 5xx, no prediction is wrong, and /metrics' counters by route and status
equal what the clients sent, with rows predicted + rows dropped = the rows of good and wholly sent
disconnecting requests. Writes benchmarks/results/serve_load.json and .md (the .md from the .json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from serve import build_run, make_rows, run_config  # noqa: E402  (benchmarks/serve.py, beside this)

KINDS = {"good": 0.60, "malformed": 0.15, "oversized": 0.10, "disconnect": 0.15}


def malformed(field: str) -> list[tuple[bytes, int]]:
    """Bad bodies and the status each must get."""
    ok = {field: "fine"}
    return [
        (b'{"inputs": [', 400),
        (json.dumps({"inputs": [{field: 5}]}).encode(), 400),
        (json.dumps({"inputs": [{field: None}]}).encode(), 400),
        (json.dumps({"inputs": [{"nope": "x"}]}).encode(), 400),
        (json.dumps({"inputs": [ok], "with_probs": "yes"}).encode(), 422),
        (json.dumps({"inputs": [ok], "rows": 1}).encode(), 422),
        (json.dumps({"inputs": []}).encode(), 422),
    ]


class Tally:
    """What the clients sent and saw."""

    def __init__(self):
        self.sent = Counter()  # (route, expected status) -> requests
        self.seen = Counter()  # status (or exception name) -> responses
        self.good_rows = self.disconnect_rows = self.checked = 0
        self.wrong: list[str] = []
        self.max_diff = 0.0
        self.latencies: list[float] = []


async def good(http, url, pool, expected, rng, tally: Tally) -> None:
    idx = [rng.randrange(len(pool)) for _ in range(rng.randint(1, 3))]
    tally.sent[("/predict", 200)] += 1
    tally.good_rows += len(idx)
    t0 = time.perf_counter()
    r = await http.post(f"{url}/predict", json={"inputs": [pool[i] for i in idx], "with_prompts": True})
    tally.latencies.append(time.perf_counter() - t0)
    tally.seen[r.status_code] += 1
    if r.status_code != 200:
        tally.wrong.append(f"good request got {r.status_code}: {r.text[:200]}")
        return
    body = r.json()
    for k, i in enumerate(idx):
        prompt, value = expected[i]
        diff = abs(body["predictions"][k] - value)
        tally.max_diff = max(tally.max_diff, diff)
        tally.checked += 1
        if body["prompts"][k] != prompt or diff > tally.tolerance:
            tally.wrong.append(f"row {i}: got {body['predictions'][k]} for {body['prompts'][k][:40]!r}")


async def bad(http, url, bodies, rng, tally: Tally) -> None:
    body, status = rng.choice(bodies)
    tally.sent[("/predict", status)] += 1
    r = await http.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
    tally.seen[r.status_code] += 1
    error = (
        r.json().get("error", "") if r.headers.get("content-type", "").startswith("application/json") else ""
    )
    if r.status_code != status or not error or "\n" in error:
        tally.wrong.append(f"malformed {body[:40]!r} got {r.status_code}: {r.text[:200]}")


async def oversized(http, url, pool, a, rng, tally: Tally) -> None:
    tally.sent[("/predict", 413)] += 1
    if rng.random() < 0.7:
        rows = [pool[0]] * (a.max_rows + 1)
    else:
        rows = [{k: "x" * (a.max_body_kb * 1024 + 10) for k in pool[0]}]
    try:
        r = await http.post(f"{url}/predict", json={"inputs": rows})
    except httpx.TransportError as err:  # the server answered 413 and closed while the body was still going
        tally.seen[type(err).__name__] += 1
        return
    tally.seen[r.status_code] += 1
    if r.status_code != 413:
        tally.wrong.append(f"oversized got {r.status_code}: {r.text[:200]}")


async def disconnect(url, pool, rng, tally: Tally) -> None:
    """A whole request (or half its body) on a raw socket, closed at once."""
    rows = [pool[rng.randrange(len(pool))] for _ in range(rng.randint(1, 3))]
    body = json.dumps({"inputs": rows}).encode()
    whole = rng.random() < 0.7
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + (body if whole else body[: len(body) // 2]))
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    tally.sent[("/predict", 499)] += 1
    tally.disconnect_rows += len(rows) if whole else 0


async def client(url, pool, expected, bodies, a, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    async with httpx.AsyncClient(timeout=120) as http:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            if kind == "good":
                await good(http, url, pool, expected, rng, tally)
            elif kind == "malformed":
                await bad(http, url, bodies, rng, tally)
            elif kind == "oversized":
                await oversized(http, url, pool, a, rng, tally)
            else:
                await disconnect(url, pool, rng, tally)


def scrape(url: str) -> dict:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "raftlm_http_requests_total" and s.labels["route"] == "/predict":
                out[("/predict", int(s.labels["status"]))] = s.value
            elif s.name in ("raftlm_rows_predicted_total", "raftlm_rows_dropped_total"):
                out[s.name] = s.value
    return out


def offline(run: Path, pool: list[dict], a) -> list[tuple[str, float]]:
    """(prompt, prediction) of each pool row by the Predictor in this process (what `raftlm predict` runs)."""
    from raftlm.config import Config
    from raftlm.files import to_examples
    from raftlm.pipeline import load_for_eval, predict_examples

    cfg = run_config(run, a)
    predictor = load_for_eval(cfg, None)
    examples = to_examples(pool, predictor.template, None, "pool")
    cfg = Config.build(cfg.to_dict(), {"eval.batch_size": a.max_batch})
    preds = predict_examples(predictor, examples, cfg, desc=None)
    return [(e.text, float(v)) for e, v in zip(examples, preds.values, strict=True)]


def start_server(run: Path, a) -> tuple[subprocess.Popen, str, Path]:
    import raftlm

    env = {**os.environ, "PYTHONPATH": str(Path(raftlm.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run), "--port", "0", "--device", a.device]
    cmd += ["--dtype", a.dtype, "--max-batch", str(a.max_batch), "--max-rows", str(a.max_rows)]
    cmd += ["--max-body-kb", str(a.max_body_kb), "--max-wait-ms", str(a.max_wait_ms)]
    log = Path(a.work) / "serve-load.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    line = proc.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
    return proc, line.split(" on ")[1].split()[0], log


def load(run: Path, pool: list[dict], expected, a) -> dict:
    proc, url, log = start_server(run, a)
    tally = Tally()
    tally.tolerance = a.tolerance
    field = next(iter(pool[0]))
    try:
        httpx.post(f"{url}/predict", json={"inputs": pool[:4]}, timeout=120)  # warm-up
        before = scrape(url)
        t0 = time.monotonic()

        async def everyone():
            deadline = time.monotonic() + a.seconds
            await asyncio.gather(
                *(
                    client(url, pool, expected, malformed(field), a, s, deadline, tally)
                    for s in range(a.clients)
                )
            )

        asyncio.run(everyone())
        seconds = time.monotonic() - t0
        time.sleep(1.0)  # the last disconnects reach the server's counters
        after = scrape(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    stderr = log.read_text()
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    statuses = sorted({k for k in counted if isinstance(k, tuple)} | set(tally.sent))
    by_status = [
        {
            "route": r,
            "status": s,
            "clients_sent": tally.sent.get((r, s), 0),
            "server_counted": int(counted.get((r, s), 0)),
        }
        for r, s in statuses
    ]
    predicted = int(counted.get("raftlm_rows_predicted_total", 0))
    dropped = int(counted.get("raftlm_rows_dropped_total", 0))
    ms = sorted(1000 * t for t in tally.latencies)
    return {
        "seconds": seconds,
        "clients": a.clients,
        "requests": sum(tally.sent.values()),
        "by_status": by_status,
        "responses_5xx": sum(n for k, n in tally.seen.items() if isinstance(k, int) and k >= 500)
        + sum(row["server_counted"] for row in by_status if row["status"] >= 500),
        "client_transport_errors": {k: n for k, n in tally.seen.items() if not isinstance(k, int)},
        "good_rows": tally.good_rows,
        "rows_checked": tally.checked,
        "wrong": len(tally.wrong),
        "wrong_examples": tally.wrong[:5],
        "max_abs_diff_vs_offline": tally.max_diff,
        "tolerance": a.tolerance,
        "disconnect_rows_sent_whole": tally.disconnect_rows,
        "rows_predicted": predicted,
        "rows_dropped": dropped,
        "good_p50_ms": statistics.median(ms) if ms else None,
        "good_p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else None,
        "good_rows_per_s": tally.good_rows / seconds,
        "exit_code": code,
        "tracebacks_in_log": stderr.count("Traceback"),
    }


def verdict(r: dict) -> dict:
    counts_equal = all(row["clients_sent"] == row["server_counted"] for row in r["by_status"])
    rows_add_up = r["rows_predicted"] + r["rows_dropped"] == r["good_rows"] + r["disconnect_rows_sent_whole"]
    checks = {
        "no 5xx": r["responses_5xx"] == 0,
        "no wrong prediction": r["wrong"] == 0 and r["rows_checked"] == r["good_rows"],
        "metrics equal the clients' counts": counts_equal,
        "rows predicted + dropped = rows sent whole": rows_add_up,
        "clean exit, no traceback": r["exit_code"] == 0 and r["tracebacks_in_log"] == 0,
    }
    return {"checks": checks, "passed": all(checks.values())}


def write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


def markdown(result: dict) -> str:
    r, s = result["result"], result["setup"]
    lines = [
        f"`raftlm serve` under mixed load: {s['model']} ({s['device']}, {s['dtype']}), {r['clients']} clients for "
        f"{r['seconds']:.0f} s, {r['requests']} requests (good {KINDS['good']:.0%}, malformed {KINDS['malformed']:.0%}, "
        f"oversized {KINDS['oversized']:.0%}, disconnecting {KINDS['disconnect']:.0%}); batch cap {s['max_batch']}, "
        f"wait {s['max_wait_ms']} ms, --max-rows {s['max_rows']}, --max-body-kb {s['max_body_kb']}. "
        f"Verdict: **{'passed' if result['verdict']['passed'] else 'FAILED'}**.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in result["verdict"]["checks"].items()),
        "",
        "| route | status | clients sent | server counted (/metrics) |",
        "|---|---|---|---|",
        *(
            f"| {row['route']} | {row['status']} | {row['clients_sent']} | {row['server_counted']} |"
            for row in r["by_status"]
        ),
        "",
        f"Good requests: {r['good_rows']} rows, every one checked against the offline Predictor (max |diff| "
        f"{r['max_abs_diff_vs_offline']:.2e}, tolerance {r['tolerance']:g}; prompts equal), {r['wrong']} wrong; "
        f"{r['good_rows_per_s']:.2f} good rows/s, latency p50 {r['good_p50_ms']:.0f} ms, p95 {r['good_p95_ms']:.0f} ms. "
        f"Rows predicted {r['rows_predicted']} + dropped {r['rows_dropped']} = good {r['good_rows']} + sent whole by "
        f"clients that disconnected {r['disconnect_rows_sent_whole']}. Oversized bodies the server refused before "
        f"the client finished sending: {r['client_transport_errors'] or 'none'} (counted as sent). "
        f"Server exit code {r['exit_code']}, tracebacks in its log: {r['tracebacks_in_log']}.",
        "",
        f"Reproduce: `{s['command']}`",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="gemma-3-270m", help="base model of the zero-shot run built without --run"
    )
    ap.add_argument("--run", help="a run directory to serve instead")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--pool", type=int, default=64, help="distinct good rows")
    ap.add_argument("--words", type=int, default=20, help="words per template column")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--max-rows", type=int, default=8)
    ap.add_argument("--max-body-kb", type=int, default=64)
    ap.add_argument("--tolerance", type=float, default=1e-4, help="|served - offline| allowed (batching)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results" / "serve_load"))
    return ap.parse_args(argv)


def main(argv=None) -> None:
    from raftlm.models import resolve_device, resolve_dtype

    a = parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    run = Path(a.run) if a.run else build_run(a.model, Path(a.work), 200)
    template = json.loads((run / "raftlm.json").read_text())["template"]
    pool = make_rows(template, a.pool, a.words, seed=1)
    expected = offline(run, pool, a)
    cfg = run_config(run, a)
    device = resolve_device(cfg.eval.device)
    setup = {
        "model": a.run or a.model,
        "device": str(device),
        "dtype": str(resolve_dtype(cfg.eval.dtype, device)).removeprefix("torch."),
        **{k: getattr(a, k) for k in ("max_batch", "max_wait_ms", "max_rows", "max_body_kb")},
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"serve load test: {setup['model']}, {a.clients} clients for {a.seconds:g} s", flush=True)
    result = load(run, pool, expected, a)
    out = {"setup": setup, "result": result, "verdict": verdict(result)}
    write(Path(a.out), out)
    print(markdown(out))
    if not out["verdict"]["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
