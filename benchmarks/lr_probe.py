"""Would a short learning-rate probe (issue 40's `--lr auto`) pick the LR that wins at the end of the run?

Reads the validation curves a sweep already wrote (each cell's ``curves/*.jsonl``: eval_rmse every
eval_steps) and, for every (dataset, model, method, seed) run at two or more learning rates, compares the
LR with the lowest validation RMSE at step k (what a probe stopped at step k would choose) with the LR whose
run reached the lowest validation RMSE over all its steps (what the run's best checkpoint keeps). Per k it
reports how often they agree, the mean regret (best validation RMSE of the chosen LR minus that of the best
LR) and the probe's cost (each extra candidate trains k more steps, as a fraction of the run).

    python benchmarks/lr_probe.py [benchmarks/results/table3-converged]  # -> benchmarks/results/lr_probe.json
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"(?P<group>.*)--lr(?P<lr>[0-9.e+-]+)--s(?P<seed>\d+)$")


def curves(folder: Path) -> dict[tuple[str, str], dict[float, dict[int, float]]]:
    """{(group, seed): {lr: {step: validation RMSE}}} from a results folder's curves."""
    runs: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(dict)
    for path in sorted((folder / "curves").glob("*.jsonl")):
        m = NAME.match(path.stem)
        if not m:
            continue
        evals = {}
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "eval_rmse" in row:
                evals[int(row["step"])] = float(row["eval_rmse"])
        if evals:
            runs[m["group"], m["seed"]][float(m["lr"])] = evals
    return {key: lrs for key, lrs in runs.items() if len(lrs) > 1}


def probe(runs: dict) -> dict:
    by_step: dict[int, list[tuple[bool, float]]] = defaultdict(list)
    gaps, max_steps = [], 0
    fixed: dict[float, list[float]] = defaultdict(list)  # regret of always training at one LR
    for lrs in runs.values():
        best = {lr: min(ev.values()) for lr, ev in lrs.items()}
        winner = min(best, key=best.get)
        gaps.append(max(best.values()) - best[winner])
        for lr in best:
            fixed[lr].append(best[lr] - best[winner])
        common = set.intersection(*(set(ev) for ev in lrs.values()))
        max_steps = max(max_steps, *(max(ev) for ev in lrs.values()))
        for k in sorted(common):
            chosen = min(lrs, key=lambda lr: lrs[lr][k])
            by_step[k].append((chosen == winner, best[chosen] - best[winner]))
    return {
        "runs": len(runs),
        "mean_gap_between_lrs": sum(gaps) / len(gaps) if gaps else None,
        "fixed_lr": [
            {"lr": lr, "n": len(r), "wins": sum(x == 0 for x in r), "mean_regret": sum(r) / len(r)}
            for lr, r in sorted(fixed.items())
        ],
        "by_step": [
            {
                "step": k,
                "n": len(rows),
                "agree": sum(a for a, _ in rows),
                "mean_regret": sum(r for _, r in rows) / len(rows),
                "extra_cost_per_candidate": k / max_steps,
            }
            for k, rows in sorted(by_step.items())
        ],
    }


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks/results/table3-converged"
    runs = curves(folder)
    out = {"source": str(folder.resolve().relative_to(ROOT)), **probe(runs)}
    for row in out["by_step"]:
        print(
            f"probe to step {row['step']:4d}: picks the final winner in {row['agree']}/{row['n']} runs, "
            f"mean regret {row['mean_regret']:.4f} validation RMSE, +{row['extra_cost_per_candidate']:.0%} "
            "of a run per extra candidate"
        )
    for row in out["fixed_lr"]:
        print(
            f"always LR {row['lr']:g}: the final winner in {row['wins']}/{row['n']} runs, "
            f"mean regret {row['mean_regret']:.4f} validation RMSE"
        )
    print(f"mean validation-RMSE gap between the LRs of one run: {out['mean_gap_between_lrs']:.4f}")
    (ROOT / "benchmarks/results/lr_probe.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
