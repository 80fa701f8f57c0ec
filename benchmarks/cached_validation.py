"""Validation from cached states: a cached run (``trainable: top-N``) scores its validation prompts with
the frozen blocks skipped, as it trains (``cache.cached_prompts``).

Measured here on raftlm's default (Gemma 3 270M, top 9 of 18 blocks trained, grid 0-5, float32) and
STS-B-1K's 300 validation prompts: the seconds of one validation, plain and cached, in interleaved
rounds (medians and per-round ratios), the one-off cost of caching the prompts, and the largest
difference between the two paths' predictions.

    python benchmarks/cached_validation.py --data-dir ../shared/data/stsb
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from raftlm.cache import build_store, cached_prompts
from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json
from raftlm.pipeline import make_trainable, new_predictor, validation_subset
from raftlm.training import frozen_blocks_to_cache

RESULTS = Path(__file__).parent / "results" / "cached_validation.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data/stsb")
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    data = {"dataset": "stsb-1k", "data_dir": args.data_dir, "val_size": 300}
    cfg = Config.build({"model": {"name": args.model}, "data": data})  # raftlm's defaults otherwise
    splits = load_splits(cfg.data)
    predictor = new_predictor(cfg, splits)
    make_trainable(predictor, cfg)
    k = frozen_blocks_to_cache(predictor, cfg)
    texts = [e.text for e in validation_subset(splits, cfg)]
    start = time.perf_counter()
    store = build_store(
        predictor.model, predictor.encode(texts), k, predictor.pad_id, Path(tempfile.gettempdir())
    )
    build_s = time.perf_counter() - start
    seconds = {"plain": [], "cached": []}
    preds = {}
    for _ in range(args.rounds):
        for name in seconds:
            start = time.perf_counter()
            if name == "cached":
                with cached_prompts(predictor, texts, store, k):
                    preds[name] = predictor.predict(texts, batch_size=cfg.eval.batch_size).values
            else:
                preds[name] = predictor.predict(texts, batch_size=cfg.eval.batch_size).values
            seconds[name].append(time.perf_counter() - start)
    store.close()
    ratios = np.array(seconds["plain"]) / np.array(seconds["cached"])
    out = {
        "model": args.model,
        "frozen_blocks": k,
        "n_validation": len(texts),
        "batch_size": cfg.eval.batch_size,
        "seconds_plain": float(np.median(seconds["plain"])),
        "seconds_cached": float(np.median(seconds["cached"])),
        "speedup_median": float(np.median(ratios)),
        "speedup_range": [float(ratios.min()), float(ratios.max())],
        "cache_build_seconds": build_s,
        "max_abs_prediction_diff": float(np.abs(preds["plain"] - preds["cached"]).max()),
        "rounds": seconds,
    }
    write_json(args.out, out)
    print({k: v for k, v in out.items() if k != "rounds"})


if __name__ == "__main__":
    main()
