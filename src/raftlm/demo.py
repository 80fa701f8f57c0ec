"""``raftlm demo``: zero-shot greedy vs zero-shot RAIL vs RAFT with the embedded Gemma 3 270M on real
Amazon review snippets (mean human sentiment on [-4, 4], scaled onto the star grid 1..5)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from raftlm.config import Config
from raftlm.core import RaftlmError, cpu_bf16_is_fast, cpu_bf16_speedup, cpu_has_bf16
from raftlm.data import load_splits
from raftlm.io import (
    atomic_write,
    check_folder,
    check_no_tilde,
    is_marked_run,
    register_output,
    write_json,
    write_text,
)
from raftlm.tables import format_table

# bf16 autocast where the CPU has bf16 units (the published demo ran so), float32 elsewhere: without them
# bf16 is slower, not faster (--bf16 turns it on, --set training.bf16=false --set eval.bf16=false off).
# Not "auto": `raftlm --help` builds this config, and asking a GPU for bf16 imports torch (seconds); a CPU
# whose flags say bf16 but whose bf16 matmul measures slow is turned to float32 when the demo runs.
BF16 = cpu_has_bf16()
DEMO_DEFAULTS = {
    "model": {"name": "gemma-3-270m", "trainable": "top-6", "dropout": 0.1},
    "data": {"dataset": "amazon-snippets", "train_size": 1200, "val_size": 200, "max_length": 192},
    "method": {"method": "raft", "ce_weight": 0.0},  # the paper's RAFT, as the published demo ran
    "training": {
        "max_steps": 150,
        "batch_size": 16,
        "lr": 1e-4,
        "optimizer": "adafactor",
        "scheduler": "constant",
        "warmup_steps": 0,
        "eval_steps": 50,
        "bf16": BF16,
        "output_dir": "demo_out",
    },
    "eval": {"bf16": BF16, "max_new_tokens": 4, "batch_size": 32},
}


def scatter(path: Path, y_true: np.ndarray, preds: dict[str, np.ndarray], scores: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(preds), figsize=(4.2 * len(preds), 4), sharex=True, sharey=True)
    lo, hi = float(y_true.min()), float(y_true.max())
    pad = 0.15 * (hi - lo)
    for ax, (name, p) in zip(np.atleast_1d(axes), preds.items(), strict=True):
        off = int(((p < lo - pad) | (p > hi + pad)).sum())  # e.g. a greedy decode of '100'
        ax.scatter(y_true, np.clip(p, lo - pad, hi + pad), s=6, alpha=0.5)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_ylim(lo - pad * 1.1, hi + pad * 1.1)
        note = f"  ({off} off-scale, drawn at the edge)" if off else ""
        ax.set_title(
            f"{name}\nRMSE {scores[name]['rmse']:.2f}  Spearman {scores[name]['spearman']:.2f}{note}",
            fontsize=9,
        )
        ax.set_xlabel("human sentiment (true)")
    np.atleast_1d(axes)[0].set_ylabel("predicted")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def bf16_measured(cfg: Config) -> str | None:
    """The demo's bf16 default comes from the CPU's flags (read without torch, for ``--help``); where a
    CPU's bf16 matmul then measures slower than float32's (avx512_bf16 without AMX), the demo runs
    float32: turned off in ``cfg`` and said (returned). A GPU machine keeps what it was given."""
    import torch

    if not (cfg.training.bf16 or cfg.eval.bf16) or torch.cuda.is_available() or cpu_bf16_is_fast():
        return None
    cfg.training.bf16 = cfg.eval.bf16 = False
    return (
        f"raftlm demo: this CPU's bf16 matmul measured {cpu_bf16_speedup():.2f}x float32's throughput, so the "
        "demo runs float32 (--bf16 runs it in bf16 anyway)"
    )


def run_demo(cfg: Config, overwrite: bool = True, bf16_given: bool = False) -> dict:
    """The demo with ``cfg``: build it over ``DEMO_DEFAULTS`` (``raftlm demo`` does), so a flag the
    user gives wins even when it equals a default of ``Config``; without ``bf16_given``, bf16 where it
    measures fast (``bf16_measured``)."""
    out = Path(cfg.training.output_dir)
    check_no_tilde(out, "--output-dir")  # these and the data before seconds of importing torch
    if out.exists() and not out.is_dir():
        raise RaftlmError(f"demo output {out} is not a folder: choose a folder for --output-dir")
    if out.exists() and any(out.iterdir()) and not overwrite:
        if not is_marked_run(out):  # (--overwrite would refuse it too: not a folder raftlm made)
            raise RaftlmError(
                f"demo output {out} holds files raftlm did not write and is never replaced: choose another "
                "--output-dir"
            )
        raise RaftlmError(f"demo output {out} exists: pass --overwrite or another --output-dir")
    check_folder(out)  # before minutes of zero-shot scoring: writable, and a run raftlm may replace
    from raftlm import methods

    if not methods.get(cfg.method.method).trains:  # (fit_run refused it after the zero-shot scoring)
        raise RaftlmError(
            f"the demo compares zero-shot decoding with a trained run, and --method {cfg.method.method} trains "
            "nothing: pick a trained method (raft, the default)"
        )
    # the trained run's row: its method and the decoder asked for (--decoder; rail by default), named so
    decoder = cfg.eval.decoder
    trained = f"{'RAFT' if cfg.method.method == 'raft' else cfg.method.method} + {decoder}"
    splits = load_splits(cfg.data)
    from raftlm.pipeline import evaluate_predictor, load_for_eval, train_run  # torch: only when it runs
    from raftlm.run import check_run_dir, is_finished

    check_run_dir(out, overwrite=True, resume=False)
    if not bf16_given and (said := bf16_measured(cfg)):
        print(said, file=sys.stderr)
    test = splits.test
    y = np.array([e.target for e in test])
    rows, preds = [], {}
    start = time.time()
    zero = load_for_eval(cfg, splits)
    for zero_shot in ("greedy", "rail"):
        cfg.eval.decoder = zero_shot
        m, p = evaluate_predictor(zero, test, cfg, desc=f"zero-shot {zero_shot}")
        rows.append({"method": f"zero-shot {zero_shot}", **m})
        preds[f"zero-shot {zero_shot}"] = p.values
    del zero
    cfg.eval.decoder = decoder
    try:
        run = train_run(cfg, overwrite=True)
    except KeyboardInterrupt as stop:  # the demo has no --resume: it starts over
        if out.is_dir() and is_marked_run(out) and not is_finished(out):
            stop.raftlm_hint = (
                f"{out} holds the unfinished run: rerun with --overwrite (the demo starts over)"
            )
        raise
    raft = load_for_eval(
        Config.build({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name": str(run)}}), splits
    )
    m, p = evaluate_predictor(raft, test, cfg, desc=trained)
    rows.append({"method": trained, **m})
    preds[trained] = p.values
    scores = {r["method"]: r for r in rows}
    for name in ("scatter.png", "demo_results.json", "demo_results.md"):  # listed first: the next
        register_output(out / name)  # --overwrite may replace them, even after a kill midway
    scatter(out / "scatter.png", y, preds, scores)
    summary = {
        "rows": rows,
        "minutes": round((time.time() - start) / 60, 1),
        "n_test": len(test),
        "n_train": len(splits.train),
        "settings": cfg.to_dict(),
    }
    write_json(out / "demo_results.json", summary)
    table = format_table(rows, columns=("rmse", "pearson", "spearman", "n"))
    write_text(out / "demo_results.md", table + "\n")
    print(f"\n{cfg.data.dataset}, {cfg.model.name}, held-out test split:\n" + table)
    print(f"\nscatter plot: {out / 'scatter.png'}   run directory: {run}   ({summary['minutes']} min)")
    return json.loads(json.dumps(summary))
