"""Would early stopping (`--patience N`) have bought steps without changing a run's chosen checkpoint?

Replays transformers' EarlyStoppingCallback (as `raftlm train --patience N` adds it: after N validations in
a row without a lower validation RMSE, training stops and the best checkpoint so far is kept) on the
validation curves the sweeps saved (benchmarks/results/*/curves/*.jsonl: every 50 steps of 500, on the
same 300 validation examples), and counts per N: the runs whose kept checkpoint would be the one the
whole run kept (its test numbers then identical), the share of training steps saved, and what the others
would have lost in validation RMSE. Nothing trains: it reads finished curves.

    python benchmarks/patience.py   # -> benchmarks/results/patience.json
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "patience.json"
PATIENCES = (2, 3, 4, 5)
MIN_VALIDATIONS = 8  # curves of the 500-step protocols (10 validations); shorter runs say little


def curves() -> dict[str, list[tuple[int, float]]]:
    """Each finished run's (step, validation RMSE) pairs, by results folder / run name; a run copied into
    a second folder (the two-hot probe's cells in table3-converged) counts once."""
    out, seen = {}, set()
    for path in sorted(RESULTS.glob("*/curves/*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        points = [(r["step"], r["eval_rmse"]) for r in rows if "eval_rmse" in r]
        if len(points) >= MIN_VALIDATIONS and tuple(points) not in seen:
            seen.add(tuple(points))
            out[f"{path.parent.parent.name}/{path.stem}"] = points
    return out


def stopped(points: list[tuple[int, float]], patience: int) -> tuple[int, tuple[int, float]]:
    """(the step training would stop at, the (step, RMSE) it would keep) under ``patience``."""
    best, bad = (points[0][0], float("inf")), 0
    for step, rmse in points:
        if rmse < best[1]:
            best, bad = (step, rmse), 0
        else:
            bad += 1
            if bad >= patience:
                return step, best
    return points[-1][0], best


def replay(runs: dict[str, list[tuple[int, float]]], patience: int) -> dict:
    same, saved, total, lost = 0, 0, 0, []
    for points in runs.values():
        full = min(points, key=lambda p: p[1])
        stop, kept = stopped(points, patience)
        same += kept[0] == full[0]
        saved, total = saved + points[-1][0] - stop, total + points[-1][0]
        if kept[0] != full[0]:
            lost.append(kept[1] - full[1])
    return {
        "patience": patience,
        "runs": len(runs),
        "same_checkpoint": same,
        "steps_saved": saved / total,
        "max_validation_rmse_lost": max(lost, default=0.0),
    }


def main() -> None:
    runs = curves()
    rows = [replay(runs, n) for n in PATIENCES]
    OUT.write_text(
        json.dumps({"rows": rows, "folders": sorted({r.split("/")[0] for r in runs})}, indent=1) + "\n"
    )
    for r in rows:
        print(
            f"patience {r['patience']}: same checkpoint in {r['same_checkpoint']}/{r['runs']} runs, "
            f"{r['steps_saved']:.0%} of steps saved, validation RMSE lost at most {r['max_validation_rmse_lost']:.3f}"
        )


if __name__ == "__main__":
    main()
