"""Peak memory of `raftlm predict` as the input grows: it streams, so RSS should not grow with the rows.

    python benchmarks/predict_memory.py                    # 10k and 200k rows, tiny-random-llama
    python benchmarks/predict_memory.py --rows 10000       # one size

Each size is one `raftlm predict` process on a zero-shot tiny-random-llama run directory (built once
under benchmarks/work/) over a CSV of random rows (--words words +-50 % each); its peak RSS is the
child's ru_maxrss (os.wait4). Results: benchmarks/results/predict_memory.md and .json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from serve import VOCAB, build_run  # noqa: E402  (the same zero-shot run directory as benchmarks/serve.py)


def write_rows(path: Path, n: int, words: int) -> Path:
    if path.exists():
        return path
    rng = random.Random(0)
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for _ in range(n):
            w.writerow([" ".join(rng.choice(VOCAB) for _ in range(rng.randint(words // 2, words * 3 // 2)))])
    os.replace(tmp, path)
    return path


def measure(run: Path, rows: Path, out: Path) -> dict:
    """Wall time and peak RSS of one `raftlm predict` process."""
    import raftlm

    env = {**os.environ, "PYTHONPATH": str(Path(raftlm.__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "raftlm", "predict", "--model", str(run), "--input", str(rows)]
    cmd += ["--output", str(out), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"raftlm predict failed (status {status}): {' '.join(cmd)}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}  # Linux: ru_maxrss in KiB


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000, 200_000])
    ap.add_argument("--words", type=int, default=20)
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--out", default=str(HERE / "results" / "predict_memory"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    run = build_run("tiny-random-llama", work)
    results = []
    for n in a.rows:
        rows = write_rows(work / f"predict-memory-{n}x{a.words}.csv", n, a.words)
        preds = work / f"predict-memory-{n}.jsonl"
        m = measure(run, rows, preds)
        row = {"rows": n, **m, "rows_per_s": n / m["seconds"]}
        row |= {"input_mb": rows.stat().st_size / 2**20, "output_mb": preds.stat().st_size / 2**20}
        preds.unlink()
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"Peak RSS of one `raftlm predict` process (tiny-random-llama, zero-shot, {a.words} words +-50 % per "
        "row, CPU) by input size; streaming reads and writes 2,048 rows at a time. Seconds and rows/s "
        "are the whole process, start-up (imports, model loading: ~6 s here) included.",
        "",
        "| rows | peak RSS MB | seconds | rows/s | input MB | output MB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rows']:,} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | "
        f"{r['input_mb']:.1f} | {r['output_mb']:.1f} |"
        for r in results
    ]
    lines += ["", "Reproduce: `python benchmarks/predict_memory.py " + " ".join(argv or sys.argv[1:]) + "`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
