"""Length chunks (``training.length_chunks``): the same loss and gradient with fewer pad tokens.

A training batch is left-padded to its longest row; random batches of real prompts are a third padding
on STS-B-1K. ``length_chunks: k`` runs each batch as k length-sorted chunks, each padded to its own
longest row, and weights the chunks' mean losses by their share of the rows: the batch's loss exactly.

Measured here, on raftlm's default training (Gemma 3 270M, RAFT + 1.0 x CE, top 9 blocks trained from
cached states, AdamW, batch 16, float32) over real prompts of each dataset:
- tokens run per batch, as a share of k = 1, over 200 random batches of each dataset's training set;
- the loss and gradient of k = 2 and 4 against k = 1 on the same batch and weights (max abs differences);
- seconds per training step (chunked loss, backward, AdamW step; Trainer's own per-step work excluded:
  the same for every k) for each k on the same batches, in interleaved rounds: medians, and the
  ratios to k = 1 round by round.

    python benchmarks/length_chunks.py --data-dir ../shared/data/stsb
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from raftlm.cache import build_store, skip_frozen
from raftlm.config import Config
from raftlm.data import load_splits
from raftlm.io import write_json, write_text
from raftlm.methods import METHODS
from raftlm.pipeline import make_trainable, new_predictor
from raftlm.scoring import PromptBatch
from raftlm.tables import format_table
from raftlm.training import build_features, chunked_loss, frozen_blocks_to_cache, length_chunks, make_collator

RESULTS = Path(__file__).parent / "results" / "length_chunks"
DATASETS = ("stsb-1k", "amazon-snippets", "movielens-100k")


def setup(dataset: str, data_dir: str | None, model: str, seed: int = 0):
    data = {"dataset": dataset, "train_size": 1000, "val_size": 300, "max_length": 192, "history": 5}
    if dataset.startswith("stsb"):
        data["data_dir"] = data_dir
    cfg = Config.build(
        {"model": {"name": model}, "data": data, "training": {"seed": seed}}
    )  # defaults otherwise
    splits = load_splits(cfg.data)
    predictor = new_predictor(cfg, splits)
    feats = build_features(predictor, splits.train, cfg.method.method, cfg.method.ce_decimals)
    return cfg, predictor, feats


def token_shares(feats: list[dict], batch: int, ks, batches: int = 200, seed: int = 0) -> dict[int, float]:
    """Tokens run per batch (rows x padded width, summed over chunks) as a share of one padded batch."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(f["prompt_ids"]) + len(f["answer_ids"]) for f in feats])
    totals = dict.fromkeys(ks, 0)
    for _ in range(batches):
        rows = lengths[rng.choice(len(lengths), batch, replace=False)]
        mask = torch.arange(rows.max())[None, :] >= torch.tensor(rows.max() - rows)[:, None]
        for k in ks:
            totals[k] += sum(len(r) * w for r, w in length_chunks(mask.long(), k))
    return {k: totals[k] / totals[1] for k in ks}


def timing(cfg, predictor, feats, ks, steps: int, rounds: int, batch: int) -> dict:
    make_trainable(predictor, cfg)
    model = predictor.model
    model.train()
    loss_fn = METHODS[cfg.method.method].loss(predictor, cfg.method)
    frozen = frozen_blocks_to_cache(predictor, cfg, len(feats))
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(feats), batch, replace=False) for _ in range(steps)]
    used = sorted({int(i) for p in picks for i in p})
    sub = [feats[i] | {"index": j} for j, i in enumerate(used)]  # the store holds the used rows only
    where = {i: j for j, i in enumerate(used)}
    seqs = [f["prompt_ids"] + f["answer_ids"] for f in sub]
    store = (
        build_store(model, seqs, frozen, predictor.pad_id, Path(tempfile.gettempdir())) if frozen else None
    )
    collate = make_collator(predictor.pad_id, store=store)
    batches = [collate([sub[where[int(i)]] for i in p]) for p in picks]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def loss_of(inputs, k):
        b = PromptBatch(
            inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False, inputs.get("hidden")
        )
        with skip_frozen(model, frozen):
            return chunked_loss(loss_fn, model, b, inputs["targets"], inputs["answer_len"], k)

    def grads_at(k):
        opt.zero_grad()
        loss = loss_of(batches[0], k)
        loss.backward()
        return float(loss), [p.grad.clone() for p in params]

    loss1, g1 = grads_at(1)
    equal = {}
    for k in ks[1:]:
        loss_k, gk = grads_at(k)
        equal[k] = {
            "loss_diff": abs(loss_k - loss1),
            "grad_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(gk, g1, strict=True)),
            "grad_max_abs": max(float(a.abs().max()) for a in g1),
        }
    seconds = {k: [] for k in ks}
    for _ in range(rounds):
        for k in ks:
            start = time.perf_counter()
            for inputs in batches:
                opt.zero_grad()
                loss_of(inputs, k).backward()
                opt.step()
            seconds[k].append((time.perf_counter() - start) / steps)
    if store is not None:
        store.close()
    return {"equal": equal, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default="../shared/data/stsb")
    ap.add_argument("--chunks", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--time-on", default="stsb-1k", help="the dataset whose steps are timed")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    ks = sorted(set(args.chunks) | {1})
    out = {
        "model": args.model,
        "batch": args.batch,
        "chunks": ks,
        "tokens": {},
        "settings": "raftlm train defaults",
    }
    for dataset in DATASETS:
        cfg, predictor, feats = setup(dataset, args.data_dir, args.model)
        out["tokens"][dataset] = token_shares(feats, args.batch, ks)
        print(
            dataset, "tokens per batch vs k=1:", {k: round(v, 3) for k, v in out["tokens"][dataset].items()}
        )
        if dataset == args.time_on:
            t = timing(cfg, predictor, feats, ks, args.steps, args.rounds, args.batch)
            out["timed_on"], out["steps"], out["rounds"] = dataset, args.steps, args.rounds
            out["equal"] = t["equal"]
            out["seconds_per_step"] = {k: float(np.median(v)) for k, v in t["seconds"].items()}
            out["seconds_rounds"] = t["seconds"]
            out["speedup_vs_1"] = {
                k: {
                    "median": float(np.median(np.array(t["seconds"][1]) / np.array(v))),
                    "range": [
                        float(min(np.array(t["seconds"][1]) / np.array(v))),
                        float(max(np.array(t["seconds"][1]) / np.array(v))),
                    ],
                }
                for k, v in t["seconds"].items()
            }
            print(json.dumps({k: out[k] for k in ("equal", "seconds_per_step", "speedup_vs_1")}, indent=1))
        del predictor
    write_json(args.out / "length_chunks.json", out)
    rows = [
        {
            "chunks": str(k),
            **{f"tokens {d}": round(out["tokens"][d][k], 3) for d in DATASETS},
            "s/step": round(out["seconds_per_step"][k], 2),
            "speedup": round(out["speedup_vs_1"][k]["median"], 2),
        }
        for k in ks
    ]
    table = format_table(rows, columns=tuple(rows[0])[1:])
    write_text(args.out / "length_chunks.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
