"""Why table3-converged's MovieLens two-hot cells are copies of its nearest-target cells (``same_run_as``):
the two runs are one computation. Checks, for every such cell, that (1) the two cells' configs differ in
``method.ce_target`` only, and (2) the nearest and two-hot CE targets of every training rating are
identical (each rating is a grid value), so the loss, its gradient and hence every step are the same.
Exits 1 when either fails (then the copies must be deleted and the cells run). No model runs.

    python benchmarks/two_hot_movielens.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from raftlm.experiment import cell_config, cells, load_sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from two_hot_compare import TABLE3, targets_agree  # noqa: E402


def main() -> int:
    sweep = load_sweep(TABLE3 / "sweep.yaml")
    by_run = {c.run_id: c for c in cells(sweep)}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((TABLE3 / "cells").glob("*.json")):
            row = json.loads(path.read_text())
            if not row.get("same_run_as"):
                continue
            a, b = by_run[row["run_id"]], by_run[row["same_run_as"]]
            ca = cell_config(sweep, a, Path(tmp)).to_dict()
            cb = cell_config(sweep, b, Path(tmp)).to_dict()
            diff = sorted(f"{s}.{k}" for s in ca for k in ca[s] if ca[s][k] != cb[s][k])
            same = diff == ["method.ce_target"]
            ok &= same
            print(
                f"{row['cell_id']}: configs differ in {diff} ({'ok' if same else 'NOT only the CE target'})"
            )
    agree, n = targets_agree("movielens-100k")
    ok &= agree
    print(f"movielens-100k: nearest and two-hot CE targets of its {n} training ratings identical: {agree}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
