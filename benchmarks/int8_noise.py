"""How much of int8's accuracy change is rounding chance: the same run quantized with SmoothQuant maxima that
differ only in the fifth significant digit.

int8 rounds every weight (and each token's activations) to 255 levels; which way a value near a rounding boundary
goes decides the int8 model's small errors, and a change of SmoothQuant's per-channel scales as small as a
relative 1e-5 moves some of those boundaries. On a trained run, the maxima are measured once as ``raftlm train``
measures them (``record_int8_maxima``); then each of ``--draws`` draws multiplies every channel's maximum by
(1 + 1e-5 u), u uniform in [-1, 1] (seeded by the draw; draw 0 unperturbed), quantizes the float32 run with them
(``quantize_int8`` at ``SMOOTHQUANT_ALPHA``, eager: the rounding question is the same compiled, which costs a
compile per draw) and predicts the split (RAIL, both orders of a symmetric pair, averaged). For each draw: delta
RMSE / Spearman against float32 and the mean |prediction change|; then their mean, sd and range over draws, and
how many draws meet issue 40's |delta RMSE| <= 0.005. A single int8 figure (int8.py's) is one such draw.

    python benchmarks/int8_noise.py RUN --split test     # writes benchmarks/results/int8_noise.json + .md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json, write_text
from raftlm.metrics import regression_metrics
from raftlm.models import SMOOTHQUANT_ALPHA, quantize_int8
from raftlm.run import load_run

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from int8 import TARGET_RMSE  # noqa: E402  (benchmarks/int8.py's)

RESULTS = HERE / "results" / "int8_noise"
RELATIVE = 1e-5


def perturbed(maxima: dict[str, torch.Tensor], draw: int) -> dict[str, torch.Tensor]:
    if draw == 0:
        return maxima
    g = torch.Generator().manual_seed(draw)
    return {
        k: v * (1 + RELATIVE * (2 * torch.rand(v.shape, generator=g) - 1)) for k, v in sorted(maxima.items())
    }


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def measure(run: Path, split: str, draws: int, rows: int | None, batch: int) -> dict:
    cfg = Config.from_yaml(str(run / "config.yaml"))
    splits = load_splits(cfg.data)
    examples = getattr(splits, split)[:rows]
    targets = [e.target for e in examples]
    fp32 = load_run(run, "cpu", "float32")
    maxima = fp32.int8_maxima or fp32.record_int8_maxima(splits.train, "train")
    texts = fp32.texts_of(examples)

    def predict(p):  # both orders of a symmetric pair, averaged as in use
        return p.average_orders(p.predict(texts, "rail", batch_size=batch), "rail").values

    ref = predict(fp32)
    ref_m = regression_metrics(ref, targets)
    out = []
    for d in range(draws):
        q = load_run(run, "cpu", "float32")
        quantize_int8(q.model, smooth=SMOOTHQUANT_ALPHA, maxima=perturbed(maxima.values, d))
        pred = predict(q)
        m = regression_metrics(pred, targets)
        out.append(
            {
                "draw": d,
                "delta_rmse": m["rmse"] - ref_m["rmse"],
                "delta_spearman": m["spearman"] - ref_m["spearman"],
                "mean_abs_prediction_diff": float(np.abs(pred - ref).mean()),
            }
        )
        print(out[-1], flush=True)
    return {
        "run": str(run),
        "split": split,
        "rows": len(examples),
        "prompts": len(texts),
        "maxima": maxima.describe(),
        "relative_perturbation": RELATIVE,
        "float32": {"rmse": ref_m["rmse"], "spearman": ref_m["spearman"]},
        "draws": out,
        **{
            k: summary([o[k] for o in out])
            for k in ("delta_rmse", "delta_spearman", "mean_abs_prediction_diff")
        },
        "within_target": sum(abs(o["delta_rmse"]) <= TARGET_RMSE for o in out),
    }


def markdown(r: dict) -> str:
    def s(k, sign="+", digits=4):
        v, f = r[k], f"{sign}.{digits}f"
        return f"{v['mean']:{f}} ± {v['sd']:.{digits}f} (range {v['min']:{f}} to {v['max']:{f}})"

    lines = [
        "# int8's accuracy change across SmoothQuant maxima that differ by 1e-5",
        "",
        f"Written by `benchmarks/int8_noise.py` from int8_noise.json. Run `{r['run']}`, {r['split']} split, "
        f"{r['rows']} rows ({r['prompts']} prompts: both orders of a pair, averaged), eager int8 with "
        f"{r['maxima']}, each draw's maxima multiplied per channel by 1 + {r['relative_perturbation']:g} u, "
        f"u uniform in [-1, 1] (draw 0 unperturbed). float32: RMSE {r['float32']['rmse']:.4f}, Spearman "
        f"{r['float32']['spearman']:.4f}.",
        "",
        "| draw | delta RMSE | delta Spearman | mean abs prediction change |",
        "|---|---|---|---|",
        *(
            f"| {o['draw']} | {o['delta_rmse']:+.4f} | {o['delta_spearman']:+.4f} | {o['mean_abs_prediction_diff']:.4f} |"
            for o in r["draws"]
        ),
        "",
        f"- delta RMSE {s('delta_rmse')}; {r['within_target']} of {len(r['draws'])} draws within |{TARGET_RMSE}|.",
        f"- delta Spearman {s('delta_spearman')}.",
        f"- mean |prediction change| {s('mean_abs_prediction_diff', '')}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--rows", type=int, default=None, help="the split's first ROWS rows (default: all)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--results", type=Path, default=RESULTS)
    a = ap.parse_args()
    r = measure(a.run, a.split, a.draws, a.rows, a.batch)
    write_json(a.results.with_suffix(".json"), r)
    write_text(a.results.with_suffix(".md"), markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
