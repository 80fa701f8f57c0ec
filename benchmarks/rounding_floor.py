"""How close a sweep's grid models sit to a one-hot grid, and what a one-hot grid costs.

A grid distribution with all its mass on one value predicts that value: its RMSE cannot go below
the targets' own rounding error to the nearest grid value (the "floor" below; 0 where targets are
grid values, as MovieLens ratings are). Per dataset, that floor on the test targets; per RAIL cell,
the mean probability of the most likely grid value, the RMSE of RAIL and that of the most likely
value (the mode), from the cell's saved test predictions. No model runs: it reads the sweep's
predictions/ and rebuilds each dataset's grid and target scaling from its sweep.yaml, as training did.

    python benchmarks/rounding_floor.py                                # table3-converged
    python benchmarks/rounding_floor.py benchmarks/results/stability   # any sweep with predictions/
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from raftlm.data import load_splits
from raftlm.experiment import cell_config, cells, load_sweep
from raftlm.metrics import regression_metrics
from raftlm.pipeline import grid_and_scaler
from raftlm.report import base_method, label

DEFAULT = Path(__file__).parent / "results" / "table3-converged"


def nearest(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return grid[np.abs(values[:, None] - grid[None, :]).argmin(1)]


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return regression_metrics(y, pred)["rmse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default=str(DEFAULT), help="a sweep's output directory")
    root = Path(ap.parse_args().root)
    sweep = load_sweep(str(root / "sweep.yaml"))
    lines = [
        "| dataset | entry | lr | seed | RAIL RMSE | mode RMSE | mean top grid prob |",
        "|---|---|---|---|---|---|---|",
    ]
    floors: dict[str, tuple[float, int]] = {}
    out = {"floors": floors, "cells": []}
    by_dataset: dict[str, list] = {}
    for c in cells(sweep):
        by_dataset.setdefault(c.dataset["dataset"], []).append(c)
    for name, todo in by_dataset.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = cell_config(sweep, todo[0], Path(tmp))
        splits = load_splits(cfg.data)
        grid, scaler = grid_and_scaler(cfg, splits.train, splits.grid, splits.target_range)
        grid_data = scaler.to_data(np.array(grid.values))
        for c in todo:
            path = root / "predictions" / f"{c.cell_id}.jsonl"
            rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
            if c.decoder != "rail" or not rows or "probs" not in rows[0]:
                continue
            y = np.array([r["target"] for r in rows], dtype=np.float64)
            probs = np.array([r["probs"] for r in rows], dtype=np.float64)
            floors.setdefault(name, (rmse(y, nearest(y, grid_data)), len(y)))
            entry = label(
                {"method": c.method, "decoder": c.decoder, "options": c.options_label}, base_method(root)
            )
            cell = {
                "dataset": name,
                "entry": entry,
                "lr": c.lr,
                "seed": c.seed,
                "rail_rmse": rmse(y, np.array([r["prediction"] for r in rows])),
                "mode_rmse": rmse(y, grid_data[probs.argmax(1)]),
                "top_prob": float(probs.max(1).mean()),
            }
            out["cells"].append(cell)
            lr = f"{c.lr:g}" if c.lr else "-"
            lines.append(
                f"| {name} | {entry} | {lr} | {c.seed} | {cell['rail_rmse']:.3f} | {cell['mode_rmse']:.3f} "
                f"| {cell['top_prob']:.2f} |"
            )
    head = ["Floor: RMSE of the test targets rounded to the nearest grid value (a one-hot grid's best)", ""]
    head += [f"- {name}: {f:.3f} (n = {n})" for name, (f, n) in floors.items()]
    text = "\n".join(head + ["", *lines]) + "\n"
    print(text)
    (root / "rounding_floor.md").write_text(text)
    (root / "rounding_floor.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
