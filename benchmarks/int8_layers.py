"""Which int8 variant can take a trained run without moving its predictions: a probe on the run's validation
split (the choice is made there; int8.py reports the test split after it).

For each variant (the Linear layers kept float32 besides the LM head, or SmoothQuant's alpha: activation
outliers moved into the weights, with activation maxima measured on training rows as ``raftlm train`` records
them), the run is loaded in float32, quantized by ``int8.py``'s ``int8_predictor`` and torch.compile'd (``--compile``: the int8 path that
reaches issue 40's speed target), then predicts the first ``--rows`` validation rows beside the float32 model
in interleaved rounds: delta RMSE against float32, the mean |prediction change|, and rows/s against float32.
A run with a symmetric pair (STS-B) predicts both orders of each row and averages them, as it does in use.

    python benchmarks/int8_layers.py ../runs-int8/amazon     # writes benchmarks/results/int8_layers.json + .md
    python benchmarks/int8_layers.py RUN --variants "every Linear int8" "SmoothQuant alpha 0.5" \
        --results benchmarks/results/int8_smoothquant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json, write_text
from raftlm.metrics import regression_metrics
from raftlm.predictor import INT8_MAXIMA_ROWS
from raftlm.run import load_run

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from int8 import compared, first_pass, int8_predictor, timed_rounds  # noqa: E402  (benchmarks/int8.py's)

RESULTS = HERE / "results" / "int8_layers"
# name: (the Linear layers kept float32 (name endings) besides the LM head, SmoothQuant's alpha[, how many
# training rows its activation maxima are measured on: raftlm train's INT8_MAXIMA_ROWS unless given])
VARIANTS = {
    "every Linear int8": ((), None),
    "MLP down_proj float32": (("mlp.down_proj",), None),
    "attention o_proj float32": (("self_attn.o_proj",), None),
    "down_proj and o_proj float32": (("mlp.down_proj", "self_attn.o_proj"), None),
    "SmoothQuant alpha 0.5": ((), 0.5),
    "SmoothQuant alpha 0.75": ((), 0.75),
    "SmoothQuant alpha 0.9": ((), 0.9),
    "SmoothQuant alpha 0.75, maxima of 16 rows": ((), 0.75, 16),
    "SmoothQuant alpha 0.75, maxima of 64 rows": ((), 0.75, 64),
    "SmoothQuant alpha 0.75, maxima of 256 rows": ((), 0.75, 256),
}


def measure(run: Path, rows: int, rounds: int, batch: int, variants: list[str]) -> dict:
    cfg = Config.from_yaml(str(run / "config.yaml"))
    splits = load_splits(cfg.data)
    val = splits.validation[:rows]
    targets = [e.target for e in val]
    ref = load_run(run, "cpu", "float32")
    texts = ref.texts_of(val)  # with a symmetric pair, both orders (folded back by average_orders)
    first_pass(ref, texts[:batch], batch)  # warm-up
    out = {}
    for name in variants:
        keep, alpha, *maxima_rows = VARIANTS[name]
        # SmoothQuant: maxima as `raftlm train` records them (on its number of rows unless the variant says)
        model = int8_predictor(
            run, keep, alpha, maxima_rows=maxima_rows[0] if maxima_rows else INT8_MAXIMA_ROWS
        )
        compile_s = first_pass(model, texts, batch)  # the compile, and a recompile for any new shape
        predictors = {"float32": ref, name: model}
        seconds, preds = timed_rounds(predictors, texts, rounds, batch)
        preds = {d: ref.average_orders(p, "rail") for d, p in preds.items()}
        metrics = {d: regression_metrics(targets, preds[d].values) for d in predictors}
        out[name] = {
            "kept_float32": list(keep),
            "smoothquant_alpha": alpha,
            **({"maxima_prompts": model.int8_maxima.prompts} if alpha else {}),
            **compared(seconds, preds, metrics, name),
            "first_pass_seconds": compile_s,
            "rmse_float32": metrics["float32"]["rmse"],
        }
        print(name, out[name], flush=True)
        del model
    return {
        "run": str(run.name),
        "dataset": cfg.data.dataset,
        "split": "validation",
        "rows": len(val),
        "prompts": len(texts),
        "batch_size": batch,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "variants": out,
    }


def maxima_words(r: dict) -> str:
    """How many training prompts SmoothQuant's maxima came from: one count for all, or each variant's."""
    counts = sorted({v["maxima_prompts"] for v in r["variants"].values() if "maxima_prompts" in v})
    if len(counts) > 1:
        return f"; SmoothQuant's maxima measured on {'/'.join(map(str, counts))} training prompts (the variants' rows)"
    n = r.get("calibration_prompts") or (counts[0] if counts else None)
    return f"; SmoothQuant calibrated on {n} training prompts" if n else ""


def markdown(r: dict) -> str:
    lines = [
        f"int8 + --compile variants (Linear layers kept float32, or SmoothQuant): run `{r['run']}` "
        f"({r['dataset']}), the first {r['rows']} {r['split']} rows (RAIL"
        + (
            f", both orders of each pair: {r['prompts']} prompts"
            if r.get("prompts", r["rows"]) != r["rows"]
            else ""
        )
        + f", batch {r['batch_size']}, {r['rounds']} interleaved rounds, {r['threads']} threads"
        + maxima_words(r)
        + "). Written by `benchmarks/int8_layers.py`.",
        "",
        "| variant | rows/s vs float32 | delta RMSE | delta Spearman | mean abs prediction change | first pass (compile), s |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        lo, hi = v["speedup_range"]
        lines.append(
            f"| {name} | {v['speedup']:.2f}x ({lo:.2f}-{hi:.2f}) | {v['delta_rmse']:+.4f} | "
            f"{v['delta_spearman']:+.4f} | {v['mean_abs_prediction_diff']:.4f} | {v['first_pass_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--results", type=Path, default=RESULTS, help="path without suffix (.json and .md)")
    a = ap.parse_args()
    res = measure(a.run, a.rows, a.rounds, a.batch_size, a.variants)
    write_json(a.results.with_suffix(".json"), res)
    write_text(a.results.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
