"""RAIL predictions for a raftlm run directory with transformers and its raftlm.json only: no raftlm.

    python examples/score_with_transformers.py RUN_DIR rows.csv > preds.jsonl   # or rows.jsonl

Each row fills the run's prompt template; every output line is {"index": i, "prediction": y}, the
same numbers as `raftlm predict --model RUN_DIR --input rows.csv` (decoder rail). The recipe:
1. prompt = template.format(row), plus the answer prefix when raftlm.json says it is folded into the
   prompt (Gemma, SmolLM2: the space before a digit is its own token);
2. log p(str(y) | prompt) for every grid value y: the sum of the log-probabilities of the grid
   string's token ids ("candidates"), teacher-forced one after the other;
3. RAIL: g = sum_y p(str(y) | prompt) * y (divided by the grid mass when normalize_grid);
4. map g from the grid range back to data units (the affine "scaler").
Runs that predict with a trained head, an encoder or bidirectional attention need raftlm itself.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


def prompt_ids(tok, meta: dict, row: dict) -> list[int]:
    """The prompt's token ids; an over-long prompt loses tokens on the left after its leading special
    tokens (so the answer cue at the end survives), leaving room for the longest grid string."""
    text = meta["template"].format_map({k: "" if v is None else str(v).strip() for k, v in row.items()})
    if meta["fold_prefix"]:
        text += meta["answer_prefix"]
    ids = tok(text)["input_ids"]
    keep = meta["max_length"] - max(len(c) for c in meta["candidates"])
    if len(ids) > keep:
        probe, special = tok("x")["input_ids"], set(tok.all_special_ids)
        n = next((i for i, t in enumerate(probe) if t not in special), len(probe))
        ids = ids[:n] + ids[len(ids) - (keep - n) :]
    return ids


@torch.no_grad()
def grid_log_probs(model, ids: list[int], candidates: list[list[int]], pad_id: int) -> torch.Tensor:
    """log p(candidate | prompt) for every grid value: one forward over prompt + each candidate."""
    width = len(ids) + max(len(c) for c in candidates)
    batch = torch.full((len(candidates), width), pad_id)
    mask = torch.zeros_like(batch)
    for g, c in enumerate(candidates):  # right-padded: the prompt's positions are the same in every row
        batch[g, : len(ids) + len(c)] = torch.tensor(ids + c)
        mask[g, : len(ids) + len(c)] = 1
    logp = model(input_ids=batch, attention_mask=mask).logits.float().log_softmax(-1)
    return torch.stack(
        [sum(logp[g, len(ids) - 1 + i, t] for i, t in enumerate(c)) for g, c in enumerate(candidates)]
    ).double()


def rail(meta: dict, logp: torch.Tensor) -> float:
    p = logp.exp()
    g = p @ torch.tensor(meta["grid"]["values"], dtype=torch.float64)
    if meta["normalize_grid"]:
        g = g / p.sum()
    s = meta["scaler"]
    slope = (s["grid_high"] - s["grid_low"]) / (s["data_high"] - s["data_low"])
    return float(s["data_low"] + (g - s["grid_low"]) / slope)


def main(run: str, rows_path: str) -> None:
    meta = json.loads((Path(run) / "raftlm.json").read_text())
    if meta.get("head") or meta.get("encoder") or meta.get("bidirectional"):
        sys.exit("this run predicts with a head, an encoder or bidirectional attention: score it with raftlm")
    tok = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32).eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i, row in enumerate(read_rows(Path(rows_path))):
        logp = grid_log_probs(model, prompt_ids(tok, meta, row), meta["candidates"], pad_id)
        print(json.dumps({"index": i, "prediction": rail(meta, logp)}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1], sys.argv[2])
