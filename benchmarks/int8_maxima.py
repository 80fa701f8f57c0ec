"""What measuring SmoothQuant's activation maxima costs at the end of ``raftlm train``, batched against one prompt
a batch (how it ran before pads were masked out), and whether the batched maxima are the same.

On a trained run: ``Predictor.record_int8_maxima`` over the run's training rows as train picks them (up to
``INT8_MAXIMA_ROWS`` spread evenly, each order of a symmetric pair), once with ``batch_size=1`` and once batched
(length-bucketed, pads masked out of the statistics), in interleaved rounds; the seconds of each (median over
rounds) and their ratio; the largest relative difference between the two sets of maxima; and, on ``--rows``
validation rows, how far the int8 model's predictions (SmoothQuant at ``SMOOTHQUANT_ALPHA``, eager) move between
the two sets of maxima.

    python benchmarks/int8_maxima.py RUN     # writes benchmarks/results/int8_maxima.json + .md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json, write_text
from raftlm.models import SMOOTHQUANT_ALPHA, quantize_int8
from raftlm.predictor import INT8_MAXIMA_ROWS
from raftlm.run import load_run

RESULTS = Path(__file__).parent / "results" / "int8_maxima"
BATCHED = 16  # record_int8_maxima's default batch_size


def measure(run: Path, rounds: int, rows: int) -> dict:
    cfg = Config.from_yaml(str(run / "config.yaml"))
    splits = load_splits(cfg.data)
    p = load_run(run, "cpu", "float32")
    seconds: dict[int, list[float]] = {1: [], BATCHED: []}
    maxima = {}
    for r in range(rounds):
        for batch in (1, BATCHED) if r % 2 == 0 else (BATCHED, 1):
            start = time.perf_counter()
            maxima[batch] = p.record_int8_maxima(splits.train, "train", batch_size=batch)
            seconds[batch].append(time.perf_counter() - start)
    one, batched = maxima[1].values, maxima[BATCHED].values
    rel = max(float(((batched[k] - one[k]).abs() / one[k].abs().clamp_min(1e-6)).max()) for k in one)
    val = splits.validation[:rows]
    preds = {}
    for batch, m in maxima.items():
        q = load_run(run, "cpu", "float32")
        quantize_int8(q.model, smooth=SMOOTHQUANT_ALPHA, maxima=m.values)
        preds[batch] = q.predict(q.texts_of(val), "rail").values
    median = {b: statistics.median(s) for b, s in seconds.items()}
    return {
        "run": str(run),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "prompts": maxima[1].prompts,
        "max_rows": INT8_MAXIMA_ROWS,
        "batch_size": BATCHED,
        "rounds": rounds,
        "seconds_one_a_batch": median[1],
        "seconds_batched": median[BATCHED],
        "seconds_all": {str(b): s for b, s in seconds.items()},
        "speedup": median[1] / median[BATCHED],
        "max_relative_maxima_diff": rel,
        "validation_rows": len(val),
        "int8_prediction_change_mean": float(np.abs(preds[1] - preds[BATCHED]).mean()),
        "int8_prediction_change_max": float(np.abs(preds[1] - preds[BATCHED]).max()),
    }


def markdown(r: dict) -> str:
    return "\n".join(
        [
            "# Measuring SmoothQuant's activation maxima: batched vs one prompt a batch",
            "",
            f"Written by `benchmarks/int8_maxima.py` from int8_maxima.json. Run `{r['run']}`, {r['machine']}.",
            "",
            f"- {r['prompts']} prompts (up to {r['max_rows']} training rows, each order of a pair), median of "
            f"{r['rounds']} interleaved rounds: one prompt a batch {r['seconds_one_a_batch']:.1f} s, batched "
            f"({r['batch_size']}, pads masked out) {r['seconds_batched']:.1f} s: **{r['speedup']:.1f}x** faster.",
            f"- Largest relative difference between the two sets of maxima: {r['max_relative_maxima_diff']:.1e} "
            "(floating-point order of the batched matmuls).",
            f"- int8 (SmoothQuant alpha {SMOOTHQUANT_ALPHA:g}) predictions on {r['validation_rows']} validation "
            f"rows, one set of maxima against the other: mean |change| {r['int8_prediction_change_mean']:.1e}, "
            f"max {r['int8_prediction_change_max']:.1e}.",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=100, help="validation rows for the int8 prediction check")
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    r = measure(a.run, a.rounds, a.rows)
    write_json(a.results.with_suffix(".json"), r)
    write_text(a.results.with_suffix(".md"), markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
