"""Conformal intervals and how well-calibrated the grid distribution is: RAFT (+ CE), CE and paper RAFT on Gemma 3 270M
on STS-B-1K, the Amazon review snippets and MovieLens-100K (seed 0), every test example scored.

Per (dataset, method): train fresh with the table-3 CPU budget in float32 (sweeps/table3-cpu.yaml: top 4
blocks, dropout 0.1, 80 steps of batch 8, Adafactor at LR 1e-4, constant; checkpoint of steps 40/80 picked
on the first 200 validation examples); `raftlm train` then calibrates on the *whole* validation split;
score the whole test split once. Every row is computed from those stored scores (no model needed):

- calibration ``validation``: the conformal kinds (absolute, std, cqr) calibrated on validation, measured on
  the whole test split -- what a user gets -- and ``grid``, the model's own quantiles (no calibration);
- calibration ``test-half``: calibrated on a random half of the test split and measured on the other half,
  mean over ``--halvings`` random halvings: exchangeable by construction, so the gap to ``validation`` is
  what the validation/test shift costs (STS-B-1K validates on the official train split and tests on dev,
  another genre mix; MovieLens is split by time).

Resumable: a (dataset, method) whose test scores exist under --work is not retrained; weights are deleted
once the scores are stored (``--keep-models`` keeps them). Writes ``--results``.json and .md.

    python benchmarks/uncertainty.py --data-dir ../shared/data/stsb          # ~30 min on 2 CPU cores
    python benchmarks/uncertainty.py --model tiny-random-llama --max-steps 2 \\
        --results /tmp/unc/uncertainty --work /tmp/unc/work                   # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.experiment import drop_weights
from raftlm.io import write_json, write_text
from raftlm.metrics import collapse, regression_metrics
from raftlm.pipeline import load_for_eval, train_run
from raftlm.uncertainty import (
    LEVELS,
    Calibration,
    calibrate,
    features,
    grid_cdf,
    grid_crps,
    grid_nll,
    grid_std,
    interval_rows,
)

HERE = Path(__file__).parent
DATASETS = {
    "stsb-1k": {"dataset": "stsb-1k"},  # data_dir from --data-dir; grid 1-5 as run (the loader now says 0-5)
    "amazon-snippets": {"dataset": "amazon-snippets"},
    "movielens-100k": {"dataset": "movielens-100k"},
}
# name -> method fields. "raft" is RAFT + 1.0 x CE on the nearest grid string (issue 11; raftlm's default
# then, pinned here: the default CE target is two-hot now);
# "raft-paper" is the paper's pure squared loss (ce_weight 0), whose spread nothing trains.
METHODS = {
    "raft": {"method": "raft", "ce_target": "nearest"},
    "ce": {"method": "ce"},
    "raft-paper": {"method": "raft", "ce_weight": 0.0},
}
CONFORMAL = ("absolute", "std", "cqr")
LR = 1e-4
SEED = 0


def config(dataset: str, method: str, args, run_dir: Path) -> Config:
    data = {**DATASETS[dataset], "val_size": 200, "max_length": 192, "train_size": 1000, "history": 5}
    data["pair_swap"] = "dataset"  # pinned: STS-B-1K in both orders of its pair (the default)
    if dataset == "stsb-1k":
        data["data_dir"] = args.data_dir
    return Config.build(
        {
            "model": {"name": args.model, "trainable": "top-4", "dropout": 0.1},
            "data": data,
            "method": {**METHODS[method], "grid": "1-5"},  # every dataset's grid when this was run
            "training": {
                "output_dir": str(run_dir),
                "max_steps": args.max_steps,
                "batch_size": 8,
                "eval_steps": min(40, args.max_steps),
                "optimizer": "adafactor",
                "scheduler": "constant",
                "lr": LR,
                "seed": SEED,
                "bf16": False,  # this CPU has no fast bf16 matmul
                "calibrate": True,  # on the whole validation split
            },
            "eval": {"batch_size": 16, "bf16": False, "decoder": "rail"},
        }
    )


def scores(dataset: str, method: str, args) -> tuple[Calibration, Calibration, dict]:
    """(validation calibration, test scores, training info) of one run, training and scoring it first
    unless its scores are stored."""
    work = Path(args.work) / f"{dataset}--{method}"
    test_path, run_dir = work / "test_scores.json", work / "run"
    if not test_path.exists():
        cfg = config(dataset, method, args, run_dir)
        splits = load_splits(cfg.data)
        if not (run_dir / "eval_results.json").exists():
            fresh = run_dir.exists() and not (run_dir / "config.yaml").exists()
            train_run(cfg, overwrite=fresh, resume=not fresh, evaluate_test=False)
        cfg.model.name = str(run_dir)
        predictor = load_for_eval(cfg, splits)
        if Calibration.load(run_dir) is None:  # a run trained with calibrate off
            calibrate(predictor, splits.validation, 16).save(run_dir)
        start = time.time()
        preds = predictor.predict([e.text for e in splits.test], "rail", 16, desc=f"{dataset} {method} test")
        test = Calibration(
            np.asarray([e.target for e in splits.test]),
            features(predictor, preds),
            tuple(predictor.grid.values),
            predictor.scaler,
            predictor.normalize_grid,
            "test",
            {"score_seconds": round(time.time() - start, 1)},
        )
        write_json(test_path, test.to_dict())
        if not args.keep_models:
            drop_weights(run_dir)
    train = json.loads((run_dir / "eval_results.json").read_text())["train"]
    return Calibration.load(run_dir), Calibration.from_dict(json.loads(test_path.read_text())), train


def distribution(val: Calibration, test: Calibration) -> dict:
    """Point and distribution metrics of a run on test (data units), and the validation/test shift."""
    point = test.point_estimator("rail").predict(test.features)
    values = test.scaler.to_data(np.asarray(test.grid))
    pit = grid_cdf(values, test.features, test.targets)
    central = np.linspace(0.1, 0.9, 9)
    observed = np.array([(np.abs(pit - 0.5) <= c / 2).mean() for c in central])
    val_point = val.point_estimator("rail").predict(val.features)
    return {
        **{
            k: v
            for k, v in regression_metrics(test.targets, point).items()
            if k in ("rmse", "mae", "pearson")
        },
        "crps": float(grid_crps(values, test.features, test.targets).mean()),
        "nll": float(grid_nll(values, test.features, test.targets).mean()),
        "mean_std": float(grid_std(values, test.features).mean()),
        "grid_mass": float(test.features.sum(-1).mean()),
        # mean |observed - nominal| of the raw central intervals at 10..90 %: 0 = calibrated distribution
        "pit_calibration_error": float(np.abs(observed - central).mean()),
        "pit_coverage_90": float(observed[-1]),
        "validation_rmse_all": regression_metrics(val.targets, val_point)["rmse"],
        "validation_n": val.n,
        "test_n": test.n,
        "collapsed": collapse(test.targets, point, test.features),
    }


def rows_of(dataset: str, method: str, val: Calibration, test: Calibration, halvings: int) -> list[dict]:
    base = {"dataset": dataset, "method": method}
    rows = [
        {**base, **r, "calibration": "validation" if r["kind"] != "grid" else "none"}
        for r in interval_rows(val, test.features, test.targets, LEVELS, [*CONFORMAL, "grid"])
    ]
    rng = np.random.default_rng(SEED)
    per = {}
    for _ in range(halvings):
        idx = rng.permutation(test.n)
        a, b = idx[: test.n // 2], idx[test.n // 2 :]
        half = Calibration(
            test.targets[a], test.features[a], test.grid, test.scaler, test.normalize_grid, "test-half"
        )
        for r in interval_rows(half, test.features[b], test.targets[b], LEVELS, CONFORMAL):
            per.setdefault((r["kind"], r["nominal"]), []).append(r)
    for (kind, nominal), rs in per.items():
        rows.append(
            {
                **base,
                "kind": kind,
                "nominal": nominal,
                "coverage": float(np.mean([r["coverage"] for r in rs])),
                "width": float(np.mean([r["width"] for r in rs])),
                "n": rs[0]["n"],
                "calibration": "test-half",
                "halvings": len(rs),
            }
        )
    return rows


# --- the Markdown ------------------------------------------------------------------------------------


def _at(rows, calibration: str, nominal: float = 0.9, kinds=CONFORMAL) -> list[dict]:
    return [
        r
        for r in rows
        if r["calibration"] == calibration and abs(r["nominal"] - nominal) < 1e-9 and r["kind"] in kinds
    ]


def _gap_line(rows, calibration: str) -> str:
    sel = _at(rows, calibration)
    if not sel:
        return f"- calibration {calibration}: no rows"
    gaps = np.array([abs(r["coverage"] - r["nominal"]) * 100 for r in sel])
    worst = sel[int(gaps.argmax())]
    ok = "meets" if gaps.mean() <= 2 and gaps.max() <= 5 else "misses"
    return (
        f"- calibration **{calibration}**: mean |coverage - 90 %| = {gaps.mean():.1f} points over {len(sel)} "
        f"rows, worst {gaps.max():.1f} ({worst['dataset']} {worst['method']} {worst['kind']}: "
        f"{worst['coverage']:.3f}) -- {ok} the targets (mean <= 2, every row <= 5)"
    )


def _shift_lines(rows) -> list[str]:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        val = {
            (r["method"], r["kind"]): r["coverage"]
            for r in _at(rows, "validation")
            if r["dataset"] == dataset
        }
        half = {
            (r["method"], r["kind"]): r["coverage"] for r in _at(rows, "test-half") if r["dataset"] == dataset
        }
        d = [100 * (val[k] - half[k]) for k in val if k in half]
        if d:
            out.append(
                f"- {dataset}: validation-calibrated coverage minus test-half-calibrated coverage at 90 % = "
                f"{np.mean(d):+.1f} points on average (range {min(d):+.1f} to {max(d):+.1f}, "
                f"{len(d)} method x kind pairs)"
            )
    return out


def _adaptive_lines(rows) -> list[str]:
    out = []
    for calibration in ("validation", "test-half"):
        sel = _at(rows, calibration)
        keyed = {(r["dataset"], r["method"], r["kind"]): r for r in sel}
        for kind in ("std", "cqr"):
            pairs = [
                (keyed[(d, m, kind)], r)
                for (d, m, k), r in keyed.items()
                if k == "absolute" and (d, m, kind) in keyed
            ]
            if not pairs:
                continue
            ratio = [a["width"] / c["width"] for a, c in pairs]
            narrower = sum(x < 1 for x in ratio)
            dcov = np.mean([100 * (a["coverage"] - c["coverage"]) for a, c in pairs])
            out.append(
                f"- {kind} vs absolute ({calibration} calibration, 90 %): width ratio "
                f"{np.mean(ratio):.3f} on average ({min(ratio):.3f}-{max(ratio):.3f}); narrower in {narrower} "
                f"of {len(pairs)} runs, coverage {dcov:+.1f} points"
            )
    return out


def _method_lines(runs) -> list[str]:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        by = {r["method"]: r for r in runs if r["dataset"] == dataset}
        for raft in ("raft", "raft-paper"):
            if not {raft, "ce"} <= set(by):
                continue
            a, b = by[raft], by["ce"]
            diff = b["pit_calibration_error"] - a["pit_calibration_error"]
            better = "no clear difference" if abs(diff) < 0.005 else ("ce" if diff < 0 else raft)
            out.append(
                f"- {dataset}: raw grid 90 % intervals cover {a['pit_coverage_90']:.3f} ({raft}) vs "
                f"{b['pit_coverage_90']:.3f} (ce); PIT calibration error {a['pit_calibration_error']:.3f} vs "
                f"{b['pit_calibration_error']:.3f}; CRPS {a['crps']:.3f} vs {b['crps']:.3f}; NLL "
                f"{a['nll']:.2f} vs {b['nll']:.2f} -> better-calibrated distribution: {better}"
            )
    return out


ARM_WORDS = {
    "raft": "RAFT + 1.0 x CE (nearest target: raftlm's default then)",
    "ce": "CE",
    "raft-paper": "the paper's RAFT (ce_weight 0)",
}


def _arms(rows: list[dict]) -> str:
    """The arms that ran (the header names no arm without rows)."""
    ran = [m for m in METHODS if any(r["method"] == m for r in rows)]
    return ", ".join(ARM_WORDS[m] for m in ran)


def markdown(rows: list[dict], runs: list[dict], args) -> str:
    lines = [
        "# Prediction intervals and the calibration of the grid distribution",
        "",
        f"{args.model}, {_arms(rows)}, seed {SEED}; STS-B-1K trains and predicts in both orders of its "
        "pair (`--pair-swap dataset`); targets at 90 % nominal: mean |coverage - "
        "nominal| <= 2 points, no row off by more than 5. Coverage and nominal are fractions; width is the mean "
        "interval width in the dataset's units.",
        "",
        "## Summary (computed from the rows below)",
        "",
        "Coverage at 90 %, conformal kinds:",
        _gap_line(rows, "validation"),
        _gap_line(rows, "test-half"),
        "",
        "Exchangeability cost (validation vs test-half calibration):",
        *_shift_lines(rows),
        "",
        "Adaptive vs constant width:",
        *_adaptive_lines(rows),
        "",
        "Which training method gives the better-calibrated grid distribution (raw, uncalibrated):",
        *_method_lines(runs),
        "",
        "## Runs",
        "",
        "| dataset | method | RMSE | CRPS | NLL | mean std | grid mass | PIT cal. error | raw 90 % cover | val RMSE (all) | n val | n test | collapsed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['rmse']:.3f} | {r['crps']:.3f} | {r['nll']:.3f} | "
            f"{r['mean_std']:.3f} | {r['grid_mass']:.3f} | {r['pit_calibration_error']:.3f} | "
            f"{r['pit_coverage_90']:.3f} | {r['validation_rmse_all']:.3f} | {r['validation_n']} | {r['test_n']} | "
            f"{r['collapsed'] or ''} |"
        )
    lines += [
        "",
        "## Coverage / width",
        "",
        "| dataset | method | kind | calibration | nominal | coverage | width | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['kind']} | {r['calibration']} | {r['nominal']:.2f} | "
            f"{r['coverage']:.3f} | {r['width']:.3f} | {r['n']} |"
        )
    lines += [
        "",
        "## How to read it",
        "",
        "- Kinds: `absolute` = RAIL +- the conformal quantile of |y - RAIL| (constant width); `std` = RAIL +- "
        "q x std of the grid distribution; `cqr` = the grid's own [Q(a/2), Q(1-a/2)] widened (or narrowed) "
        "by one conformal margin; `grid` = those raw quantiles, not calibrated. The grid distribution is a "
        "histogram: each grid value's probability spread uniformly over its cell (midpoints between values), "
        "which gives quantiles, NLL (nats per data unit) and CRPS (data units) for a continuous target.",
        "- Split conformal guarantees coverage >= nominal only when calibration and test examples are "
        "exchangeable. `test-half` rows are (by random halving); `validation` rows are what `raftlm train` "
        "gives. A user whose data differ from the validation split (another genre, later ratings) should "
        "recalibrate on a labelled sample of the data they will predict on -- `raftlm calibrate RUN --input "
        "sample.csv` -- and check coverage on another labelled sample with `raftlm evaluate --input`.",
        "- PIT calibration error: mean |observed - nominal| coverage of the raw central intervals at 10..90 % "
        "(0 = a calibrated distribution). RAFT's squared loss trains only the mean of the distribution, CE "
        "trains the whole of it (a log-likelihood).",
        "",
        f"Settings: top 4 of 18 blocks, dropout 0.1, Adafactor LR {LR:g} constant, {args.max_steps} steps of "
        "batch 8, float32, checkpoint picked on the first 200 validation examples, calibration on the whole "
        f"validation split, test = the whole test split, {args.halvings} random test halvings. Reproduce: "
        "`python benchmarks/uncertainty.py --data-dir ../shared/data/stsb` (resumable).",
    ]
    return "\n".join(lines) + "\n"


def _order(r: dict) -> tuple:
    return list(DATASETS).index(r["dataset"]), list(METHODS).index(r["method"])


def _others(items: list[dict], dataset: str, method: str) -> list[dict]:
    return [r for r in items if (r["dataset"], r["method"]) != (dataset, method)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/stsb", help="stsbenchmark folder (STS-B-1K)")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--max-steps", type=int, default=80)
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--halvings", type=int, default=20, help="random test halvings for test-half rows")
    ap.add_argument("--results", default=str(HERE / "results" / "uncertainty"), help="path without suffix")
    ap.add_argument("--work", default=str(HERE / "work" / "uncertainty"), help="runs and stored scores")
    ap.add_argument("--keep-models", action="store_true", help="keep each run's weights after scoring")
    ap.add_argument(
        "--markdown-only", action="store_true", help="rewrite the .md from the .json; nothing runs"
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.results)
    old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows, runs = old.get("rows", []), old.get("runs", [])  # other datasets / methods stay
    if args.markdown_only:
        args.model = old.get("settings", {}).get("model", args.model)
        write_text(out.with_suffix(".md"), markdown(rows, runs, args))
        return
    pairs = [(d, m) for d in args.datasets for m in args.methods]
    pairs.sort(key=lambda p: p[1] == "raft-paper")  # stable: the optional paper arm last, the rest in order
    for dataset, method in pairs:
        print(f"{dataset} {method}", flush=True)
        val, test, train = scores(dataset, method, args)
        runs = _others(runs, dataset, method)
        runs.append(
            {
                "dataset": dataset,
                "method": method,
                **distribution(val, test),
                "best_step": train["best_step"],
            }
        )
        rows = _others(rows, dataset, method) + rows_of(dataset, method, val, test, args.halvings)
        runs, rows = sorted(runs, key=_order), sorted(rows, key=_order)  # stable: kinds keep their order
        write_json(out.with_suffix(".json"), {"rows": rows, "runs": runs, "settings": vars(args)})
        write_text(out.with_suffix(".md"), markdown(rows, runs, args))
    print(markdown(rows, runs, args))


if __name__ == "__main__":
    main()
