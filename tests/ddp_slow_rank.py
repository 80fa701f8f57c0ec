"""``raftlm`` under torchrun with rank 1 slow (by ``RAFTLM_TEST_SLOW_RANK_S`` seconds) to reload the best
checkpoint at the end of training, and to look at ``predict``'s output: rank 0 must not remove checkpoints/
before every rank has loaded it, nor write the prediction's record before every rank has checked the output
(a slow rank 1 found it and failed alone: "pass --resume").
(A real run meets this when the ranks' machines differ in load; tests/test_distributed.py makes it certain.)
Rank 1 also fails at once if it ever takes itself for the main process (on CPU a bare accelerate
``PartialState()`` did, until the Trainer set the state up: both ranks wrote the run's marker, and rank 0
cleaned rank 1's temp file as a kill's leftover, in a busy make test)."""

import os
import sys
import time

from transformers import Trainer

import raftlm.io
import raftlm.pipeline
from raftlm.cli import main

if os.environ.get("RANK") == "1":
    is_main = raftlm.pipeline.is_main_process

    def rank_one_is_not_main() -> bool:
        if is_main():
            raise SystemExit("raftlm test: rank 1 took itself for the main process")
        return False

    raftlm.pipeline.is_main_process = rank_one_is_not_main
    pause = float(os.environ.get("RAFTLM_TEST_SLOW_RANK_S", "1"))
    check_output = raftlm.io.check_output

    def slow_check_output(*args, **kwargs):  # `predict`: rank 0 must not write its record before this look
        time.sleep(pause)
        return check_output(*args, **kwargs)

    raftlm.io.check_output = slow_check_output
    load_best = Trainer._load_best_model

    def slow_load_best(self) -> None:
        time.sleep(pause)
        load_best(self)

    Trainer._load_best_model = slow_load_best

if sys.argv[1:2] == ["predict"]:
    # the process group up before the command's checks, as NCCL's lazy start leaves it (on CPU, gloo's start
    # is itself a barrier: the first rank waits there for the other, which hid a missing barrier)
    from raftlm.core import launch_state

    launch_state()

sys.exit(main())
