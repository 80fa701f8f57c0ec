"""RAFT stability study (issue 11, section 1): per arm, collapsed seeds and validation / test RMSE;
per run, the training curves that explain a collapse (gradient norm, grid mass, grid entropy).

Reads the sweep's cells and each run's metrics.jsonl (runs/ is not committed: the curves are copied
into curves.json here), writes summary.md / summary.json and curves.png beside them.

    raftlm experiment sweeps/raft-stability.yaml     # the runs (resumable)
    python benchmarks/stability.py                    # this summary (any time, from what has finished)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).parent / "results" / "stability"
CURVE_KEYS = ("loss", "grad_norm", "train_grid_mass", "train_grid_entropy")


def arm_name(cell: dict) -> str:
    """A readable arm label from the cell's options and learning rate."""
    opts = dict(kv.split("=", 1) for kv in cell["options"].split(",")) if cell["options"] else {}
    lr = f"LR {cell['lr']:g}"
    if not opts:
        return f"paper (Adafactor, {lr})"
    if "ce_weight" in opts:
        two_hot = " two-hot" if opts.get("ce_target") == "two-hot" else ""
        return f"RAFT + {opts['ce_weight']}{two_hot} CE ({lr})"
    if "normalize_grid" in opts:
        return f"grid renormalized ({lr})"
    if "optimizer" in opts:
        return f"{opts['optimizer']} ({lr})"
    if "warmup_steps" in opts:
        return f"warmup {opts['warmup_steps']} + clip {opts.get('max_grad_norm', 1.0)} ({lr})"
    if "max_steps" in opts:
        return f"{opts['max_steps']} steps ({lr})"
    return f"{cell['options']} ({lr})"


def curves(root: Path, run_id: str) -> list[dict]:
    path = root / "runs" / run_id / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r}} for r in rows if "loss" in r]


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def summarize(cells: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], arm_name(c)), []).append(c)
    out = []
    for (dataset, arm), cs in groups.items():
        cs = sorted(cs, key=lambda c: c["seed"])
        out.append(
            {
                "dataset": dataset,
                "arm": arm,
                "seeds": [c["seed"] for c in cs],
                "collapsed_seeds": [c["seed"] for c in cs if c.get("collapsed")],
                "validation_rmse": [c["validation_rmse"] for c in cs],
                "test_rmse": [c["rmse"] for c in cs],
                "test_pearson": [c["pearson"] for c in cs],
                "validation_rmse_mean_std": _mean_std([c["validation_rmse"] for c in cs]),
                "test_rmse_mean_std": _mean_std([c["rmse"] for c in cs]),
                "train_seconds": [c.get("train_runtime_s") for c in cs],
            }
        )
    order = {a: i for i, a in enumerate(dict.fromkeys(arm_name(c) for c in cells))}
    return sorted(out, key=lambda r: (r["dataset"], order[r["arm"]]))  # arms in the order they first ran


def markdown(rows: list[dict], n_cells: int, n_planned: int | None) -> str:
    done = f"{n_cells} of {n_planned} cells" if n_planned else f"{n_cells} cells"
    lines = [
        f"RAFT stability study (issue 11), `sweeps/raft-stability.yaml`, {done} finished. Gemma 3 270M, "
        "top 4 of 18 blocks (frozen blocks cached), 80 steps of batch 8 unless the arm says otherwise, "
        "float32, validation = first 200 validation examples (best of steps 40/80), test = first 200 test "
        "examples. A seed is collapsed when its test predictions carry no signal (`metrics.collapse`: grid "
        "mass < 1 % or prediction std < 0.001 x the targets'). Reproduce: `raftlm experiment "
        "sweeps/raft-stability.yaml && python benchmarks/stability.py`.",
        "",
        "| dataset | arm | seeds | collapsed | validation RMSE | test RMSE | test Pearson per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        collapsed = f"{len(r['collapsed_seeds'])}/{len(r['seeds'])}" + (
            f" (seed {', '.join(map(str, r['collapsed_seeds']))})" if r["collapsed_seeds"] else ""
        )
        pearson = " / ".join(f"{p:.2f}" for p in r["test_pearson"])
        lines.append(
            f"| {r['dataset']} | {r['arm']} | {len(r['seeds'])} | {collapsed} | {r['validation_rmse_mean_std']} "
            f"| {r['test_rmse_mean_std']} | {pearson} |"
        )
    return "\n".join(lines) + "\n"


def plot(curve_sets: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("grad_norm", "train_grid_entropy", "train_grid_mass", "loss")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for label, pts in curve_sets.items():
        for ax, k in zip(axes, keys, strict=True):
            xs = [p["step"] for p in pts if k in p]
            ys = [p[k] for p in pts if k in p]
            ax.plot(xs, ys, label=label, lw=1.2)
    for ax, k in zip(axes, keys, strict=True):
        ax.set_title(k)
        ax.set_xlabel("step")
        if k in ("grad_norm", "train_grid_entropy"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--planned", type=int, default=None, help="cells the sweep plans (for the header)")
    a = ap.parse_args()
    root = Path(a.root)
    paths = sorted((root / "cells").glob("*.json"), key=lambda p: p.stat().st_mtime)  # the sweep's order
    cells = [json.loads(p.read_text()) for p in paths]
    saved = json.loads((root / "curves.json").read_text()) if (root / "curves.json").exists() else {}
    for c in cells:  # runs/ is not committed: keep the curves once read
        fresh = curves(root, c["run_id"])
        if fresh:
            saved[c["run_id"]] = fresh
    (root / "curves.json").write_text(json.dumps(saved))
    rows = summarize(cells)
    (root / "summary.json").write_text(json.dumps(rows, indent=1))
    notes = root / "notes.md"
    md = markdown(rows, len(cells), a.planned)
    if notes.exists():
        md += "\n" + notes.read_text()
    (root / "summary.md").write_text(md)
    for dataset in sorted({c["dataset"] for c in cells}):  # every arm's seed-0 run, one figure a dataset
        chosen = {
            arm_name(c): saved.get(c["run_id"], [])
            for c in cells
            if c["seed"] == 0 and c["dataset"] == dataset
        }
        plot(chosen, root / f"curves_{dataset}.png")
    print(md)


if __name__ == "__main__":
    main()
