"""``RAFTRegressor`` under torchrun (tests/test_distributed.py): every process fits into one run directory
(``output_dir``), then ``save`` writes the copy from rank 0 while the others wait (rank 1 fails if it writes
it too); each rank prints the path it was given back. Then a second fit whose final save fails on rank 0
(a full disk): each rank prints the error it raised (rank 1 waited silent at a barrier before)."""

import os
import sys

import raftlm.api
import raftlm.pipeline
from raftlm import RAFTRegressor
from raftlm.core import RaftlmError

if os.environ.get("RANK") == "1":  # rank 0 writes the saved copy; rank 1 failing to is a failed test

    def rank_one_saves(*args, **kwargs):
        raise SystemExit("raftlm test: rank 1 saved the model too")

    raftlm.api.save_run = rank_one_saves

words = ["awful", "bad", "fine", "good", "great"]
X = [f"review {i}: it was {words[i % 5]}. rating:" for i in range(8)]
y = [1.0 + (i % 5) for i in range(8)]
reg = RAFTRegressor(
    model="tiny-random-llama",
    max_steps=2,
    eval_steps=1,
    batch_size=4,
    lr=1e-2,
    output_dir=sys.argv[1],
    progress_bar=False,
)
reg.fit(X, y, eval_set=(X[:2], y[:2]))
print(f"rank {os.environ['RANK']} saved {reg.save(sys.argv[2])}", flush=True)


def disk_full(*args, **kwargs):
    raise RaftlmError("no space left on device writing model.safetensors: free some space")


if os.environ.get("RANK") == "0":
    raftlm.pipeline.save_run = disk_full
try:
    RAFTRegressor(**{**reg.get_params(), "output_dir": sys.argv[3]}).fit(X, y, eval_set=(X[:2], y[:2]))
except RaftlmError as err:
    print(f"rank {os.environ['RANK']} failed: {err}", flush=True)

# an --overwrite of the first run that a kill interrupted, and a user's file put in the run since: rank 0
# refuses to finish the swap; every rank says so at once (the others waited 120 s, then sat at a barrier)
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch.distributed as dist  # noqa: E402

run = Path(sys.argv[1])
if os.environ["RANK"] == "0":
    shutil.copytree(run, run.parent / f".{run.name}.raftlm-new")
    (run / "notes.md").write_text("mine")
    journal = {"format": "raftlm-swap", "out": run.name, "old": f".{run.name}.raftlm-old"}
    (run.parent / f".{run.name}.raftlm-swap.json").write_text(
        json.dumps({**journal, "new": f".{run.name}.raftlm-new"})
    )
dist.barrier()
try:
    RAFTRegressor(**{**reg.get_params(), "overwrite": True}).fit(X, y, eval_set=(X[:2], y[:2]))
except RaftlmError as err:
    print(f"rank {os.environ['RANK']} refused: {err}", flush=True)
