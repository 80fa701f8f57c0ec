"""`raftlm predict --engine ray --actors 2` against `raftlm predict` on this machine, same run, same rows.

    python benchmarks/ray_predict.py                     # Gemma 3 270M (zero-shot run), 300 Amazon snippets
    python benchmarks/ray_predict.py --model tiny-random-llama --rows 3000

Each command is timed on N rows and on 1 row, in its own process, the two engines interleaved (--rounds):
- end to end: N / t(N), what a user waits for (start-up, Ray, model loading included);
- steady: (N - 1) / (t(N) - t(1)), the rows/s once running (loading and start-up cancel out);
- overhead: t(1), start-up to the first written row (Ray: starting a local Ray, --actors processes that
  each import torch and load the model).
The outputs are compared row by row (largest prediction difference). On a 2-core machine Ray cannot be
faster: its 2 actors run one thread each where `raftlm predict` runs one process on both cores; the rows say
what Ray costs. Results: benchmarks/results/ray_predict.json and .md (written from the JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = "Review: {text}\nRating (1-5):"


def build_run(model: str, work: Path) -> Path:
    """A zero-shot run directory of ``model`` (grid 1-5; built once): speed does not depend on the weights."""
    from raftlm.config import Config
    from raftlm.core import Example
    from raftlm.io import write_text
    from raftlm.pipeline import new_predictor
    from raftlm.run import save_run

    run = work / f"ray-{model}"
    if not (run / "raftlm.json").exists():
        cfg = Config.build(
            {"model": {"name": model}, "method": {"method": "none", "grid": "1-5", "target_range": "none"}}
        )
        probes = [Example(TEMPLATE.format(text=f"review {i}")) for i in range(8)]
        save_run(new_predictor(cfg, probes, TEMPLATE), run)
        write_text(run / "config.yaml", cfg.to_yaml())
    return run


def write_input(path: Path, n: int) -> Path:
    """The first ``n`` Amazon review snippets (the test split, then validation and train)."""
    from raftlm.config import Config
    from raftlm.data import load_splits

    s = load_splits(Config.build({"data": {"dataset": "amazon-snippets"}}).data)
    texts = [x.text for x in (*s.test, *s.validation, *s.train)][:n]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t.removeprefix("Review: ").split("\n")[0]] for t in texts)
    return path


def timed_predict(run: Path, data: Path, out: Path, engine: list[str]) -> float:
    cmd = [sys.executable, "-m", "raftlm", "predict", "--model", str(run), "--input", str(data)]
    cmd += ["--output", str(out), "--overwrite", "--quiet", *engine]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def predictions(path: Path) -> list[float]:
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


def measure(run: Path, work: Path, n: int, actors: int, rounds: int) -> dict:
    big, one = write_input(work / f"rows{n}.csv", n), write_input(work / "rows1.csv", 1)
    engines = {"local": [], "ray": ["--engine", "ray", "--actors", str(actors)]}
    times: dict[str, dict[str, list[float]]] = {e: {"N": [], "1": []} for e in engines}
    for r in range(rounds):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for engine in order:
            for key, data in (("1", one), ("N", big)):
                out = work / f"{engine}-{key}.jsonl"
                times[engine][key].append(timed_predict(run, data, out, engines[engine]))
                print(f"round {r}: {engine} {key}: {times[engine][key][-1]:.1f} s", flush=True)
    local, ray = predictions(work / "local-N.jsonl"), predictions(work / "ray-N.jsonl")
    return {
        "rows": [
            {
                "engine": "local" if e == "local" else f"ray, {actors} actors",
                "seconds_N": t["N"],
                "seconds_1": t["1"],
            }
            for e, t in times.items()
        ],
        "n": n,
        "rounds": rounds,
        "max_abs_prediction_diff": max(abs(a - b) for a, b in zip(local, ray, strict=True)),
        "same_order_and_length": len(local) == len(ray) == n,
    }


def summarize(result: dict) -> None:
    """Rates from the fastest of the rounds: other work on a shared machine only ever adds time."""
    n = result["n"]
    for r in result["rows"]:
        tn, t1 = min(r["seconds_N"]), min(r["seconds_1"])
        r.update(end_to_end_rows_s=n / tn, steady_rows_s=(n - 1) / (tn - t1), overhead_s=t1, fastest_N_s=tn)


def write_results(out: Path, result: dict) -> None:
    summarize(result)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    local, ray = result["rows"]
    lines = [
        f"`raftlm predict --engine ray` vs `raftlm predict` ({result['model']}, {result['n']} rows of Amazon review "
        f"snippets, {result['machine']}; the fastest of {result['rounds']} interleaved rounds, each command its own "
        "process: other work on the machine only adds time). End to end: N / t(N); steady: (N - 1) / (t(N) - t(1)); overhead: t(1), start-up to the "
        "first row written. Reproduce: `python benchmarks/ray_predict.py`.",
        "",
        "| engine | end to end rows/s | steady rows/s | overhead s (1 row) | t(N) s | all rounds t(N), t(1) s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['engine']} | {r['end_to_end_rows_s']:.1f} | {r['steady_rows_s']:.1f} | {r['overhead_s']:.1f} | "
            f"{r['fastest_N_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['seconds_N'])}; "
            f"{', '.join(f'{x:.1f}' for x in r['seconds_1'])} |"
            for r in result["rows"]
        ),
        "",
        f"Ray / local: end to end {ray['end_to_end_rows_s'] / local['end_to_end_rows_s']:.2f}x, steady "
        f"{ray['steady_rows_s'] / local['steady_rows_s']:.2f}x, overhead +{ray['overhead_s'] - local['overhead_s']:.1f} s. "
        f"Outputs: same rows in the same order: {result['same_order_and_length']}, largest prediction difference "
        f"{result['max_abs_prediction_diff']:.1e}. The machine's 1-minute load average before and after: "
        f"{result['load_average_1min'][0]:.1f}, {result['load_average_1min'][1]:.1f} (2 means both cores "
        "busy: other sessions' tests ran beside the benchmark).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m", help="the zero-shot run of this model (built once)")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results" / "ray_predict"))
    ap.add_argument("--rewrite", action="store_true", help="only rewrite OUT.md from OUT.json (no timing)")
    a = ap.parse_args()
    if a.rewrite:
        write_results(Path(a.out), json.loads(Path(a.out).with_suffix(".json").read_text()))
        return print(Path(a.out).with_suffix(".md").read_text())
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run = build_run(a.model, work)
    load_before = os.getloadavg()[0]
    result = measure(run, work, a.rows, a.actors, a.rounds)
    result["load_average_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine meanwhile
    result["model"] = a.model
    result["machine"] = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    write_results(Path(a.out), result)
    print(Path(a.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
