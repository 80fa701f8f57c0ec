"""--dtype int8 against float32 on a trained run, in one process: rows/s and test accuracy.

Three copies of the run are loaded (``load_run(run, "cpu", dtype)``): float32 weights; torchao's dynamic
int8 Linear layers with the LM head float32; and that int8 model torch.compile'd (``--compile``,
``Predictor.compile``: its first batch pays the compile, reported). Each predicts the run's whole test split
(RAIL, batch 16) in interleaved rounds (order rotated, after one untimed warm-up batch each): rows/s is the
median over rounds, a speed ratio the median of per-round ratios with their range. RMSE and Spearman of each
on that split, against the targets, and their differences (int8 - float32). Issue 40's target: >= 2x rows/s
with |delta RMSE| <= 0.005.

    raftlm train --dataset amazon-snippets --max-steps 150 --output-dir ../runs-int8/amazon
    python benchmarks/int8.py ../runs-int8/amazon          # writes benchmarks/results/int8.json + .md
    python benchmarks/int8.py --md-only                    # the .md again from the .json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json, write_text
from raftlm.metrics import regression_metrics
from raftlm.models import SMOOTHQUANT_ALPHA, quantize_int8
from raftlm.predictor import INT8_MAXIMA_ROWS
from raftlm.run import load_run

RESULTS = Path(__file__).parent / "results" / "int8"
INT8_PATH = "torchao Int8DynamicActivationInt8WeightConfig: int8 weights per channel, activations per token"
# what raftlm's int8 was before torchao (results files written then carry no int8_path)
OLD_PATH = "torch.ao quantize_dynamic: int8 weights per channel, activations per tensor, down_proj float32"
TARGET_SPEEDUP, TARGET_RMSE = 2.0, 0.005


def weight_mb(predictor) -> float:
    """Bytes of the model's weights: each parameter's storage, an int8 layer's int8 data and scales."""
    total = 0
    for p in predictor.model.parameters():
        parts = [getattr(p, n) for n in getattr(p, "tensor_data_names", ())] or [p]  # torchao's tensors
        total += sum(t.numel() * t.element_size() for t in parts)
    return total / 2**20


COMPILED = "int8 + --compile"  # the int8 model's forward torch.compile'd (eval.compile: Predictor.compile)
SMOOTHED = "int8 + SmoothQuant + --compile"  # --smooth: --dtype int8 as shipped (the run's maxima), compiled


def timed_rounds(predictors: dict, texts: list[str], rounds: int, batch: int) -> tuple[dict, dict]:
    """Each predictor predicts ``texts`` (RAIL) once a round, in an order rotated between rounds: the
    seconds of each round, and each predictor's predictions."""
    seconds = {d: [] for d in predictors}
    preds = {}
    names = list(predictors)
    for r in range(rounds):
        for d in names[r % len(names) :] + names[: r % len(names)]:  # order rotated
            start = time.perf_counter()
            preds[d] = predictors[d].predict(texts, "rail", batch_size=batch)
            seconds[d].append(time.perf_counter() - start)
    return seconds, preds


def compared(seconds: dict, preds: dict, metrics: dict, d: str) -> dict:
    """``d`` against "float32" from ``timed_rounds``' output and each one's metrics: the speed ratio (median
    of per-round ratios, and their range), the metric deltas and how far the predictions moved."""
    ratios = [f / i for f, i in zip(seconds["float32"], seconds[d], strict=True)]
    diff = np.abs(preds[d].values - preds["float32"].values)
    return {
        "speedup": statistics.median(ratios),
        "speedup_range": [min(ratios), max(ratios)],
        "delta_rmse": metrics[d]["rmse"] - metrics["float32"]["rmse"],
        "delta_spearman": metrics[d]["spearman"] - metrics["float32"]["spearman"],
        "max_abs_prediction_diff": float(diff.max()),
        "mean_abs_prediction_diff": float(diff.mean()),
    }


def int8_predictor(
    run: Path,
    keep: tuple[str, ...] = (),
    smooth: float | None = None,
    compile: bool = True,
    maxima_rows: int = INT8_MAXIMA_ROWS,
):
    """The run loaded in float32, then int8: plain (``smooth=None``), or SmoothQuant at alpha ``smooth`` with
    the run's recorded activation maxima (measured here as ``raftlm train`` measures them, on the run's training
    rows, when the run predates them); the layers ending with ``keep`` stay float32; torch.compile'd."""
    p = load_run(run, "cpu", "float32")
    if smooth is not None and (p.int8_maxima is None or maxima_rows != INT8_MAXIMA_ROWS):
        train = load_splits(Config.from_yaml(str(run / "config.yaml")).data).train
        p.record_int8_maxima(train, "train", maxima_rows)
    maxima = p.int8_maxima.values if smooth is not None else None
    quantize_int8(p.model, keep, smooth=smooth, maxima=maxima)
    if compile:
        p.compile()
    return p


def first_pass(predictor, texts: list[str], batch: int) -> float:
    """An untimed pass over every prompt: first-call allocations, and for a compiled model the compile and a
    recompile for each new prompt shape (the timed rounds then measure the steady state). Its seconds."""
    start = time.perf_counter()
    predictor.predict(texts, "rail", batch_size=batch)
    return time.perf_counter() - start


def measure(run: Path, rounds: int, batch: int, limit: int | None, smooth: bool = False) -> dict:
    cfg = Config.from_yaml(str(run / "config.yaml"))
    splits = load_splits(cfg.data)
    test = splits.test[:limit]
    targets = [e.target for e in test]
    predictors = {
        "float32": load_run(run, "cpu", "float32"),
        "int8": int8_predictor(run, compile=False),
        COMPILED: int8_predictor(run),
    }
    if smooth:  # --dtype int8 as shipped: SmoothQuant with the run's maxima
        predictors[SMOOTHED] = int8_predictor(run, smooth=SMOOTHQUANT_ALPHA)
    texts = predictors["float32"].texts_of(test)  # with a symmetric pair, both orders (averaged below)
    warmup = {  # eager models: one batch; compiled ones: every prompt shape
        d: first_pass(p, texts if d in (COMPILED, SMOOTHED) else texts[:batch], batch)
        for d, p in predictors.items()
    }
    seconds, preds = timed_rounds(predictors, texts, rounds, batch)
    preds = {d: predictors["float32"].average_orders(v, "rail") for d, v in preds.items()}
    metrics = {d: regression_metrics(targets, preds[d].values) for d in predictors}

    def against_float32(d: str) -> dict:
        return compared(seconds, preds, metrics, d)

    return {
        "run": run.name,
        "model": cfg.model.name,
        "method": cfg.method.method,
        "dataset": cfg.data.dataset,
        "split": "test",
        "rows": len(test),
        "batch_size": batch,
        "rounds": rounds,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, quantized engine {torch.backends.quantized.engine}",
        "rows_per_s": {d: len(texts) / statistics.median(s) for d, s in seconds.items()},
        "seconds": seconds,
        **against_float32("int8"),
        "metrics": metrics,
        "weights_mb": {d: weight_mb(p) for d, p in predictors.items() if d != COMPILED},
        "int8_path": INT8_PATH,
        "compiled": {**against_float32(COMPILED), "first_pass_seconds": warmup[COMPILED]},
        **(
            {
                "smoothed": {
                    **against_float32(SMOOTHED),
                    "first_pass_seconds": warmup[SMOOTHED],
                    "alpha": SMOOTHQUANT_ALPHA,
                    "maxima_prompts": predictors[SMOOTHED].int8_maxima.prompts,
                }
            }
            if smooth is not None
            else {}
        ),
    }


def warmed(v: dict) -> str:
    """What a compiled predictor's untimed start cost: one batch (older results), or a pass over every prompt."""
    if "first_pass_seconds" in v:
        return f"after an untimed pass over every prompt of {v['first_pass_seconds']:.0f} s (the compiles)"
    return f"after a first batch of {v['first_batch_seconds']:.0f} s (the compile)"


def markdown(r: dict, source: str = "int8.json") -> str:
    fast = r["speedup"] >= TARGET_SPEEDUP
    close = abs(r["delta_rmse"]) <= TARGET_RMSE
    f32, i8 = r["metrics"]["float32"], r["metrics"]["int8"]
    lo, hi = r["speedup_range"]
    return "\n".join(
        [
            f"`--dtype int8` against float32: run `{r['run']}` ({r['model']}, {r['method']}, {r['dataset']}), "
            f"its whole {r['split']} split ({r['rows']} rows, RAIL, batch {r['batch_size']}), all loaded in one "
            f"process and timed in {r['rounds']} interleaved rounds ({r['machine']}). Written by "
            f"`benchmarks/int8.py` from `{source}`.",
            "",
            "| weights | rows/s | RMSE | Spearman | weights MB |",
            "|---|---|---|---|---|",
            f"| float32 | {r['rows_per_s']['float32']:.2f} | {f32['rmse']:.4f} | {f32['spearman']:.4f} | "
            f"{r['weights_mb']['float32']:.0f} |",
            f"| int8 | {r['rows_per_s']['int8']:.2f} | {i8['rmse']:.4f} | {i8['spearman']:.4f} | "
            f"{r['weights_mb']['int8']:.0f} |",
            *(
                [
                    f"| {COMPILED} | {r['rows_per_s'][COMPILED]:.2f} | {r['metrics'][COMPILED]['rmse']:.4f} | "
                    f"{r['metrics'][COMPILED]['spearman']:.4f} | {r['weights_mb']['int8']:.0f} |"
                ]
                if (c := r.get("compiled"))
                else []
            ),
            *(
                [
                    f"| {SMOOTHED} (alpha {sm['alpha']:g}) | {r['rows_per_s'][SMOOTHED]:.2f} | "
                    f"{r['metrics'][SMOOTHED]['rmse']:.4f} | {r['metrics'][SMOOTHED]['spearman']:.4f} | "
                    f"{r['weights_mb']['int8']:.0f} |"
                ]
                if (sm := r.get("smoothed"))
                else []
            ),
            "",
            f"- speed: {r['speedup']:.2f}x rows/s (rounds {lo:.2f}-{hi:.2f}); target >= {TARGET_SPEEDUP:.0f}x: "
            f"{'met' if fast else 'missed'}",
            f"- accuracy: delta RMSE {r['delta_rmse']:+.4f}, delta Spearman {r['delta_spearman']:+.4f}; target "
            f"|delta RMSE| <= {TARGET_RMSE}: {'met' if close else 'missed'}; predictions differ by "
            f"{r['mean_abs_prediction_diff']:.4f} on average, {r['max_abs_prediction_diff']:.4f} at most",
            *(
                [
                    f"- {COMPILED}: {c['speedup']:.2f}x rows/s (rounds {c['speedup_range'][0]:.2f}-"
                    f"{c['speedup_range'][1]:.2f}) {warmed(c)}, delta RMSE {c['delta_rmse']:+.4f}, delta Spearman {c['delta_spearman']:+.4f}; "
                    f"predictions differ from float32's by {c['mean_abs_prediction_diff']:.4f} on average "
                    "(inductor's int8 kernels round otherwise than eager's); both targets "
                    f"{'not met' if missed_targets(c) else 'met'}"
                ]
                if c
                else []
            ),
            *(
                [
                    f"- {SMOOTHED} (alpha {sm['alpha']:g}, "
                    + (
                        f"maxima of {sm['maxima_prompts']} training prompts as `raftlm train` records them): "
                        if "maxima_prompts" in sm
                        else "calibrated on the first training prompts): "
                    )
                    + f"{sm['speedup']:.2f}x rows/s (rounds {sm['speedup_range'][0]:.2f}-{sm['speedup_range'][1]:.2f}) "
                    f"{warmed(sm)}, delta RMSE {sm['delta_rmse']:+.4f}, "
                    f"delta Spearman {sm['delta_spearman']:+.4f}; predictions differ from float32's by "
                    f"{sm['mean_abs_prediction_diff']:.4f} on average; both targets "
                    f"{'not met' if missed_targets(sm) else 'met'}"
                ]
                if sm
                else []
            ),
            f"- int8 path: {r.get('int8_path', OLD_PATH)}",
            *(
                [
                    f"- before, {b['int8_path']}: {b['speedup']:.2f}x rows/s, delta RMSE {b['delta_rmse']:+.4f}, "
                    f"delta Spearman {b['delta_spearman']:+.4f} ({b['rows']} test rows)"
                ]
                if (b := r.get("before"))
                else []
            ),
            f"- verdict: {verdict(r)}",
        ]
    )


def missed_targets(v: dict) -> list[str]:
    """Which of issue 40's int8 targets a measured int8 path (``speedup``, ``delta_rmse``) misses."""
    checks = (("speed", v["speedup"] >= TARGET_SPEEDUP), ("accuracy", abs(v["delta_rmse"]) <= TARGET_RMSE))
    return [name for name, ok in checks if not ok]


def verdict(r: dict) -> str:
    """Which int8 meets issue 40's targets: eager int8 and, when measured, --dtype int8 --compile as shipped."""

    def says(missed: list[str]) -> str:
        return (
            f"misses the {' and '.join(missed)} target{'s' * (len(missed) > 1)}"
            if missed
            else "meets both targets"
        )

    missed = missed_targets(r)
    eager = f"eager int8 {says(missed)}"
    if not (sm := r.get("smoothed")):
        return eager + (": int8 stays opt-in (--dtype int8)" if missed else "")
    return (
        f"`--dtype int8 --compile` as shipped (SmoothQuant) {says(missed_targets(sm))}; {eager}; int8 stays "
        "opt-in (--dtype int8)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", type=Path, help="a trained run directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, help="the first N test rows only (a quick check)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--md-only", action="store_true", help="rewrite the .md from the .json")
    ap.add_argument(
        "--smooth",
        action="store_true",
        help="also --dtype int8 as shipped (SmoothQuant with the run's maxima), compiled",
    )
    a = ap.parse_args()
    if a.md_only:
        result = json.loads(a.out.with_suffix(".json").read_text())
    else:
        result = measure(a.run, a.rounds, a.batch_size, a.limit, a.smooth)
        old = a.out.with_suffix(".json")
        if old.exists():  # the int8 path this one replaced, as that run measured it: before and after
            prev = json.loads(old.read_text())
            keys = ("speedup", "delta_rmse", "delta_spearman", "mean_abs_prediction_diff", "rows")
            if prev.get("int8_path", OLD_PATH) == INT8_PATH:  # a rerun of this path: keep what it replaced
                before = prev.get("before")
            else:
                before = {"int8_path": prev.get("int8_path", OLD_PATH), **{k: prev[k] for k in keys}}
            if before:
                result["before"] = before
        write_json(a.out.with_suffix(".json"), result)
    text = markdown(result, a.out.with_suffix(".json").name)
    write_text(a.out.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
