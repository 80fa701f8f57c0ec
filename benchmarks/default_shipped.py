"""Issue 40, item 2: what the shipped default's validation settings cost and bring (sweeps/default-shipped.yaml).

The sweep trains `raftlm train` as shipped (data flags only: validation on the whole validation split every
100 steps, prompts up to 512 tokens) and the same with the frontier's validation settings (``--val-size 300
--max-length 256``), same seed and LR, on STS-B-1K. STS-B's prompts are far shorter than 256 tokens and
validation draws no random numbers, so both arms train the same weights step for step (checked here: their
logged training losses must be equal); what differs is which checkpoint each validation keeps, and its
minutes. Both choices are then scored on the same footing, the shipped arm's whole-split validation curve
(that is what a default is chosen on), and the test split is read after. Minutes: a run's wall clock counts
the time a sweep spent paused (SIGSTOP, benchmarks/paused.sh) while something else was timed, so the cost
of validation is given by itself: the seconds of each validation pass from the sweep's log (tqdm's finished
"validation" bars in ../wt-default-shipped.log, written by benchmarks/background_sweep.sh; a pass is told
from the other arm's by its batch count), or where that log is missing, the prompts it scored priced at the
rate the same cell scored its test prompts (an upper bound: validation reads the frozen blocks' cached
states, the test runs them):

Seeds 1-2 (sweeps/default-shipped-seeds.yaml) run the shipped arm only: the other arm's training is the
same, and its 300-pair validation curve is sweeps/stsb-levers.yaml's cell at that seed (checked the same way,
by the logged losses); its choice among the shipped arm's validation steps is read from there.

    python benchmarks/default_shipped.py   # -> benchmarks/results/default_shipped.json
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FOLDER = RESULTS / "default-shipped"
SEEDS = RESULTS / "default-shipped-seeds"  # the shipped arm at seeds 1-2
LEVERS = RESULTS / "stsb-levers"  # the 300-pair arm's curves at every seed (both orders, LR 1e-4)
OUT = RESULTS / "default_shipped.json"
LOG = ROOT.parent / "wt-default-shipped.log"
CELL = re.compile(r"\[\d+/\d+ cells\] (\S+)")
BAR = re.compile(r"validation: 100%\|[^|]*\| (\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def validation_passes(batches: int, log: Path = LOG, cell_id: str | None = None) -> list[float]:
    """Seconds of each finished validation pass of ``batches`` batches in a sweep's log ([] without it); with
    ``cell_id``, only the passes printed after that cell's "[k/n cells] CELL" lines (a log holds every cell
    the sweep ran, and a resumed run's cell is announced again)."""
    if not log.exists():
        return []
    text = log.read_text(errors="replace").replace("\r", "\n")
    if cell_id is not None:
        parts = CELL.split(text)  # [before, id, its text, id, its text, ...]
        text = "".join(body for cid, body in zip(parts[1::2], parts[2::2], strict=True) if cid == cell_id)
    return [
        int(h or 0) * 3600 + int(m) * 60 + int(sec)
        for done, total, h, m, sec in BAR.findall(text)
        if int(done) == int(total) == batches
    ]


def curve(run_id: str, folder: Path = FOLDER) -> tuple[dict[int, float], dict[int, float]]:
    """({step: validation RMSE}, {step: training loss}) of one run."""
    evals, losses = {}, {}
    for line in (folder / "curves" / f"{run_id}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval_rmse" in row:
            evals[int(row["step"])] = float(row["eval_rmse"])
        if "loss" in row:
            losses[int(row["step"])] = float(row["loss"])
    return evals, losses


def equal_losses(a: dict[int, float], b: dict[int, float]) -> tuple[bool, int]:
    """Whether two runs logged the same training losses (so trained the same weights), and how many."""
    shared = sorted(set(a) & set(b))
    same = bool(shared) and all(abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(a[s])) for s in shared)
    return same, len(shared)


def kept_step(evals: dict[int, float], steps) -> int:
    """The checkpoint a validation curve keeps among ``steps``: the first lowest (as the Trainer does)."""
    return min(sorted(steps), key=lambda s: evals[s])


def seed_row(cell: dict, folder: Path, log: Path) -> dict:
    """One seed: the shipped arm's cell against the 300-pair arm's choice read from stsb-levers' curve."""
    whole, losses = curve(cell["run_id"], folder)
    run = f"stsb-1k--gemma-3-270m--raft_pair_swap_sentence1_sentence2--lr0.0001--s{cell['seed']}"
    val300, losses300 = curve(run, LEVERS) if (LEVERS / "curves" / f"{run}.jsonl").exists() else ({}, {})
    same, n = equal_losses(losses, losses300)
    steps = [s for s in whole if s in val300]
    step300 = kept_step(val300, steps) if steps else None
    passes = validation_passes(math.ceil(validation_size(cell) * 2 / 16), log, cell["cell_id"])
    return {
        "seed": cell["seed"],
        "same_training": same,
        "logged_losses_compared": n,
        "shipped_step": cell["best_step"],
        "shipped_whole_validation_rmse": whole[cell["best_step"]],
        "val300_step": step300,
        "val300_whole_validation_rmse": whole.get(step300),
        "validation_gain": whole[step300] - whole[cell["best_step"]] if same and step300 else None,
        "shipped_validation_minutes": sum(passes) / 60 if len(passes) == len(whole) else None,
        "test_rmse": cell["rmse"],
        "test_spearman": cell["spearman"],
    }


def validation_size(cell: dict) -> int:
    """Pairs a cell validated on: its val_size option, else the dataset's whole validation split."""
    sys.path.insert(0, str(ROOT / "src"))
    from raftlm.config import Config
    from raftlm.data import load_splits

    options = dict(kv.split("=", 1) for kv in (cell.get("options") or "").split(",") if "=" in kv)
    if "val_size" in options:
        return int(options["val_size"])
    cfg = Config.build(
        {"data": {"dataset": cell["dataset"], "data_dir": str(ROOT.parent / "shared/data/stsb")}}
    )
    return len(load_splits(cfg.data).validation)


def main() -> int:
    cells = [json.loads(p.read_text()) for p in sorted((FOLDER / "cells").glob("*.json"))]
    shipped = [c for c in cells if not c.get("options")]
    other = [c for c in cells if c.get("options")]
    if len(shipped) != 1 or len(other) != 1:
        print(
            f"default_shipped: need the sweep's 2 cells in {FOLDER}/cells (have {len(cells)})",
            file=sys.stderr,
        )
        return 1
    arms = {"shipped": shipped[0], "frontier": other[0]}
    curves = {name: curve(c["run_id"]) for name, c in arms.items()}
    same_training, n_shared = equal_losses(curves["shipped"][1], curves["frontier"][1])
    whole = curves["shipped"][0]  # the whole validation split, every eval step
    out = {
        "dataset": arms["shipped"]["dataset"],
        "seed": arms["shipped"]["seed"],
        "lr": arms["shipped"]["lr"],
        "same_training": same_training,
        "logged_losses_compared": n_shared,
        "arms": {},
    }
    orders = 2  # STS-B's pair, in both orders at validation and test
    for name, c in arms.items():
        n_val = validation_size(c)
        evals = len(curves[name][0])
        seconds_per_prompt = c["eval_seconds"] / (c["n"] * orders)
        passes = validation_passes(math.ceil(n_val * orders / 16))  # the sweeps' eval batch: 16 prompts
        out["arms"][name] = {
            "validation_pass_seconds": passes,
            "validation_minutes": sum(passes) / 60 if len(passes) == evals else None,
            "validation_pairs": n_val,
            "validations": evals,
            "validation_prompts": evals * n_val * orders,
            "validation_minutes_at_test_rate": evals * n_val * orders * seconds_per_prompt / 60,
            "options": c.get("options") or "(data flags only)",
            "train_minutes": c["train_runtime_s"] / 60,
            "test_minutes": c["eval_seconds"] / 60,
            "best_step": c["best_step"],
            "own_validation_rmse": c["validation_rmse"],
            "whole_validation_rmse_at_best_step": whole.get(c["best_step"]),
            "test_rmse": c["rmse"],
            "test_spearman": c["spearman"],
            "test_pearson": c["pearson"],
        }
    a, b = out["arms"]["shipped"], out["arms"]["frontier"]
    key = "validation_minutes" if None not in (a["validation_minutes"], b["validation_minutes"]) else None
    key = key or "validation_minutes_at_test_rate"
    out["extra_minutes"] = a[key] - b[key]
    out["extra_minutes_from"] = key
    out["extra_wall_minutes"] = a["train_minutes"] - b["train_minutes"]
    if same_training and a["whole_validation_rmse_at_best_step"] is not None:
        out["validation_gain"] = (
            b["whole_validation_rmse_at_best_step"] - a["whole_validation_rmse_at_best_step"]
        )
    else:
        out["validation_gain"] = None  # the arms trained different weights: their choices do not compare
    # every seed: seed 0's arms as above, seeds 1-2 their shipped arm against stsb-levers' 300-pair curve
    seeds = [seed_row(arms["shipped"], FOLDER, LOG)]
    seeds[0]["val300_step_ran"] = arms["frontier"]["best_step"]  # the frontier arm really ran at seed 0
    more = sorted((SEEDS / "cells").glob("*.json")) if (SEEDS / "cells").exists() else []
    seeds += [
        seed_row(json.loads(p.read_text()), SEEDS, ROOT.parent / "wt-default-shipped-seeds.log") for p in more
    ]
    out["seeds"] = seeds
    gains = [r["validation_gain"] for r in seeds if r["validation_gain"] is not None]
    out["validation_gain_mean"] = sum(gains) / len(gains) if gains else None
    out["seeds_compared"] = len(gains)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
