"""Throughput and latency of `raftlm serve` with micro-batching, against batch size 1 and offline predict.

    python benchmarks/serve.py                                   # Gemma 3 270M, 16 clients x 25 requests
    python benchmarks/serve.py --run RUN_DIR --input rows.csv    # a trained run, your rows
    python benchmarks/serve.py --device cuda --dtype bfloat16    # on a GPU

Five measurements in one run, on the same rows, one row per request:
1. offline: `raftlm predict`'s Predictor in this process at batch size --max-batch, in input order
   (no length bucketing), timed after loading and a warm-up batch: the bound a server can approach;
2. server, micro-batched: `raftlm serve --max-batch B --max-wait-ms W` as it ships (pydantic request and
   response models, Prometheus metrics, access log on); --clients closed-loop clients each send
   --requests requests back to back (throughput = rows / wall time; latency p50 / p95);
3. the same with --no-access-log --no-metrics: what the access log and the metrics cost;
4. the same as 2 with "interval": 0.9 in every request (split-conformal CQR from the run's calibration):
   what the intervals path costs;
5. server, batch 1: the same as 2 with --max-batch 1.
Each server is its own process, started after the previous one stopped (one model at a time), and gets
one warm-up request per client first. --rounds N repeats 1-5 and reports median ratios with their range.
The per-request cost of the pydantic models and the metrics is also timed in this process (``overhead``):
microseconds, next to the model's milliseconds.
Without --run, a zero-shot run directory of --model (grid 1-5, template "Review: {text}\\nRating (1-5):")
is built once under benchmarks/work/ (weights do not change the speed), with a calibration of
--calibration-n examples whose grid probabilities and targets are random (a calibration's numbers do not
change the speed either; its size does). Rows are --words random words (+-50 %) per template column
unless --input gives a CSV/JSONL file. The clients run in this process and share the machine with the
server, as a co-located client would. Results: benchmarks/results/serve.md and serve.json (rows with
name, ratio, clients); --out elsewhere for smoke runs.
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
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).parent
TEMPLATE = "Review: {text}\nRating (1-5):"
VOCAB = "the a product works well badly arrived late early broken great cheap price quality box".split()


def build_run(model: str, work: Path, calibration_n: int) -> Path:
    """A zero-shot run directory of ``model`` (built once), calibrated on ``calibration_n`` random grid
    distributions and targets: speed depends on neither the weights nor the calibration's numbers."""
    from raftlm.config import Config
    from raftlm.core import Example
    from raftlm.io import write_text
    from raftlm.pipeline import new_predictor
    from raftlm.run import save_run
    from raftlm.uncertainty import Calibration

    run = work / f"serve-{model}"
    if not (run / "raftlm.json").exists():
        cfg = Config.build(
            {"model": {"name": model}, "method": {"method": "none", "grid": "1-5", "target_range": "none"}}
        )
        probes = [Example(TEMPLATE.format(text=" ".join(VOCAB[i:] + VOCAB[:i]))) for i in range(8)]
        predictor = new_predictor(cfg, probes, TEMPLATE)
        save_run(predictor, run)
        write_text(run / "config.yaml", cfg.to_yaml())
    saved = run / "calibration.json"
    if not saved.exists() or json.loads(saved.read_text())["n"] != calibration_n:
        from raftlm.grid import Grid, TargetScaler

        rng = np.random.default_rng(0)
        grid = Grid.from_dict(json.loads((run / "raftlm.json").read_text())["grid"])
        features = rng.dirichlet(np.ones(len(grid.values)), calibration_n)
        targets = rng.integers(1, 6, calibration_n).astype(float)
        Calibration(targets, features, tuple(grid.values), TargetScaler.identity(grid), source="random").save(
            run
        )
    return run


def make_rows(template: str, n: int, words: int, seed: int = 0) -> list[dict]:
    from raftlm.prompts import template_fields

    rng = random.Random(seed)
    fill = lambda: " ".join(rng.choice(VOCAB) for _ in range(rng.randint(words // 2, words * 3 // 2)))  # noqa: E731
    return [{f: fill() for f in template_fields(template)} for _ in range(n)]


def offline(run: Path, rows: list[dict], a) -> dict:
    """Rows/s of the Predictor alone at the server's batch cap, in input order, loading not timed."""
    import gc

    from raftlm.config import Config
    from raftlm.core import Example
    from raftlm.pipeline import load_for_eval, predict_examples
    from raftlm.prompts import render

    cfg = run_config(run, a)
    predictor = load_for_eval(cfg, None)
    predictor.bucket = False
    examples = [Example(render(predictor.template, r)) for r in rows]
    cfg = Config.build(cfg.to_dict(), {"eval.batch_size": a.max_batch})
    predict_examples(predictor, examples[: a.max_batch], cfg, desc=None)  # warm-up
    t0 = time.perf_counter()
    predict_examples(predictor, examples, cfg, desc=None)
    seconds = time.perf_counter() - t0
    del predictor
    gc.collect()
    return {"throughput": len(rows) / seconds, "seconds": seconds}


def run_config(run: Path, a):
    from raftlm.config import Config

    saved = run / "config.yaml"
    base = Config.from_yaml(str(saved)).to_dict() if saved.exists() else {}
    return Config.build(base, {"model.name": str(run), "eval.device": a.device, "eval.dtype": a.dtype})


def start_server(run: Path, max_batch: int, a, flags: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    import raftlm

    env = {**os.environ, "PYTHONPATH": str(Path(raftlm.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run), "--port", "0", "--max-batch", str(max_batch)]
    cmd += ["--max-wait-ms", str(a.max_wait_ms), "--device", a.device, "--dtype", a.dtype, *flags]
    log = Path(a.work) / "serve-benchmark.log"  # the access log: a pipe nobody reads would fill and block
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    line = proc.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
    return proc, line.split(" on ")[1].split()[0]


async def _client(
    http: httpx.AsyncClient, url: str, rows: list[dict], latencies: list[float], extra: dict
) -> None:
    for row in rows:
        t0 = time.perf_counter()
        r = await http.post(f"{url}/predict", json={"inputs": [row], **extra})
        r.raise_for_status()
        latencies.append(time.perf_counter() - t0)


async def _load(url: str, rows: list[dict], clients: int, extra: dict) -> tuple[float, list[float]]:
    """Wall time and per-request latencies of ``clients`` closed-loop clients sharing ``rows``."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_client(http, url, rows[i::clients], latencies, extra) for i in range(clients))
        )
        return time.perf_counter() - t0, latencies


def served(run: Path, rows: list[dict], max_batch: int, a, flags=(), extra: dict | None = None) -> dict:
    extra = extra or {}
    proc, url = start_server(run, max_batch, a, flags)
    try:
        asyncio.run(_load(url, rows[: a.clients], a.clients, extra))  # warm-up: one request per client
        before = httpx.get(f"{url}/health").json()
        seconds, latencies = asyncio.run(_load(url, rows, a.clients, extra))
        after = httpx.get(f"{url}/health").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    ms = sorted(1000 * t for t in latencies)
    return {
        "throughput": len(rows) / seconds,
        "seconds": seconds,
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        "rows_per_forward": (after["rows"] - before["rows"]) / (after["batches"] - before["batches"]),
    }


MEASURED = {  # kind: (name, --max-batch: the cap or 1, flags, request fields)
    "micro": ("serve micro-batched", None, (), {}),  # as it ships: metrics and access log on
    "bare": (
        "serve micro-batched, --no-access-log --no-metrics",
        None,
        ("--no-access-log", "--no-metrics"),
        {},
    ),
    "interval": ('serve micro-batched, "interval": 0.9', None, (), {"interval": 0.9}),
    "batch1": ("serve batch-1", 1, (), {}),
}


def one_round(run: Path, rows: list[dict], a) -> dict:
    out = {"offline": offline(run, rows, a)}
    for kind, (_, cap, flags, extra) in MEASURED.items():
        out[kind] = served(run, rows, cap or a.max_batch, a, flags, extra)
    print(json.dumps({k: round(v["throughput"], 2) for k, v in out.items()}), flush=True)
    return out


def overhead(n: int = 2000) -> dict:
    """Microseconds per request of what the HTTP layer adds in Python: the pydantic request and response
    models (a one-row body, probabilities included) and the metrics' counter and histograms."""
    from raftlm.serve import Metrics, PredictRequest, PredictResponse

    body = json.dumps({"inputs": [{"text": " ".join(VOCAB)}], "with_probs": True}).encode()
    answer = {"predictions": [3.2], "probs": [{str(k): 0.2 for k in range(1, 6)}], "entropy": [1.6]}
    metrics = Metrics()

    def per_call(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return 1e6 * (time.perf_counter() - t0) / n

    def record():
        metrics.requests.labels("/predict", "POST", "200").inc()
        metrics.latency.labels("/predict").observe(0.1)
        metrics.batch(8, 0.5)

    def models():
        PredictRequest.model_validate_json(body)
        PredictResponse.model_validate(answer).model_dump_json(exclude_none=True)

    return {"pydantic_us": per_call(models), "metrics_us": per_call(record)}


def summarize(rounds: list[dict], a, setup: dict) -> list[dict]:
    def ratio(kind: str, base: str) -> dict:
        rs = [r[kind]["throughput"] / r[base]["throughput"] for r in rounds]
        return {"ratio": statistics.median(rs), "range": [min(rs), max(rs)]}

    def median(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in rounds)

    rows = [
        {
            "name": "serve micro-batched vs batch-1",
            "clients": a.clients,
            **ratio("micro", "batch1"),
            "target": "report",
        },
        {
            "name": "serve micro-batched vs offline predict",
            "clients": a.clients,
            **ratio("micro", "offline"),
            "target": ">= 0.80",
        },
        {
            "name": "serve with metrics and access log vs without",
            "clients": a.clients,
            **ratio("micro", "bare"),
            "target": "report",
        },
        {
            "name": 'serve with "interval": 0.9 vs without',
            "clients": a.clients,
            **ratio("interval", "micro"),
            "target": "report",
        },
    ]
    rows[1]["met"] = rows[1]["ratio"] >= 0.80
    for kind, (name, *_) in [*MEASURED.items(), ("offline", ("offline predict",))]:
        row = {"name": name, "clients": a.clients if kind != "offline" else None}
        row["throughput_rows_s"] = median(kind, "throughput")
        if kind != "offline":
            row |= {k: median(kind, k) for k in ("p50_ms", "p95_ms", "rows_per_forward")}
        rows.append(row)
    return [{**r, **setup} for r in rows]


def write_results(out: Path, rows: list[dict], setup: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = [
        f"`raftlm serve` on {setup['model']} ({setup['device']}, {setup['dtype']}), {setup['clients']} "
        f"closed-loop clients x {setup['requests']} requests of one row ({setup['rows']} rows, "
        f"{setup['words']} words per row +-50 %), batch cap {setup['max_batch']}, wait {setup['max_wait_ms']} ms, "
        f"{setup['rounds']} round(s) (median; range in brackets). Offline = the Predictor at the same batch "
        "cap in input order without length bucketing, model loading not timed. " + setup["note"],
        "",
        "| measurement | ratio | target | throughput rows/s | p50 ms | p95 ms | rows per forward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if "pydantic_us" not in r):
        ratio = f"{r['ratio']:.2f}x ({r['range'][0]:.2f}-{r['range'][1]:.2f})" if "ratio" in r else "-"
        target = r.get("target", "-") + ("" if "met" not in r else (": met" if r["met"] else ": missed"))
        cells = [r.get(k) for k in ("throughput_rows_s", "p50_ms", "p95_ms", "rows_per_forward")]
        lines.append(f"| {r['name']} | {ratio} | {target} | " + " | ".join(fmt(c) for c in cells) + " |")
    o = setup["overhead"]
    per_row_ms = 1000 / next(r["throughput_rows_s"] for r in rows if r["name"] == "offline predict")
    lines += [
        "",
        f"Timed in one process: the pydantic request and response models cost {o['pydantic_us']:.0f} us per "
        f"one-row request and the metrics {o['metrics_us']:.0f} us, next to {per_row_ms:.0f} ms of model time "
        "per row offline; the access log is one line per request. Intervals: split-conformal CQR at 0.9 from a "
        f"calibration of {setup['calibration_n']} examples, computed per request (MAPIE) off the event loop.",
        "",
        f"Reproduce: `{setup['command']}`",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="gemma-3-270m", help="base model of the zero-shot run built without --run"
    )
    ap.add_argument("--run", help="a run directory to serve instead")
    ap.add_argument("--input", help="CSV/JSONL rows (the template's columns); default: random words")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=25, help="requests per client (one row each)")
    ap.add_argument("--words", type=int, default=40, help="words per template column (random rows)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--calibration-n", type=int, default=200, help="examples in the zero-shot run's random calibration"
    )
    ap.add_argument("--work", default=str(HERE / "work"), help="where the zero-shot run is built")
    ap.add_argument("--out", default=str(HERE / "results" / "serve"))
    return ap.parse_args(argv)


def main(argv=None) -> None:
    from raftlm.models import resolve_device, resolve_dtype

    a = parse_args(argv)
    run = Path(a.run) if a.run else build_run(a.model, Path(a.work), a.calibration_n)
    if not (run / "calibration.json").exists():
        raise SystemExit(
            f"{run} has no calibration (the interval measurement needs one): raftlm calibrate {run}"
        )
    cfg = run_config(run, a)
    n = a.clients * a.requests
    if a.input:
        from raftlm.files import read_rows

        source = read_rows(a.input)
        rows = [source[i % len(source)] for i in range(n)]
    else:
        template = json.loads((run / "raftlm.json").read_text())["template"]
        rows = make_rows(template, n, a.words)
    device = resolve_device(cfg.eval.device)
    dtype = str(resolve_dtype(cfg.eval.dtype, device)).removeprefix("torch.")
    note = (
        "This CPU has no fast bf16 (bf16 matmuls measured 4.5x slower than float32), so CPU runs use float32."
        if device.type == "cpu" and dtype == "float32"
        else ""
    )
    setup = {
        "model": a.run or a.model,
        "device": str(device),
        "dtype": dtype,
        "requests": a.requests,
        "rows": n,
        "words": a.words if not a.input else None,
        "max_batch": a.max_batch,
        "max_wait_ms": a.max_wait_ms,
        "rounds": a.rounds,
        "note": note,
        "calibration_n": json.loads((run / "calibration.json").read_text())["n"],
        "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"serve benchmark: {setup['model']} on {device}, {dtype}; {a.clients} clients x {a.requests} requests"
    )
    if note:
        print(note)
    rounds = [one_round(run, rows, a) for _ in range(a.rounds)]
    results = summarize(rounds, a, {k: setup[k] for k in ("model", "device", "dtype", "max_batch")})
    setup["overhead"] = overhead()
    results.append({"name": "per-request Python overhead (us)", **setup["overhead"]})
    write_results(Path(a.out), results, {**setup, "clients": a.clients})
    for r in results[:4]:
        print(f"{r['name']}: {r['ratio']:.2f}x")
    print(f"wrote {Path(a.out).with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
