"""``raftlm`` under torchrun with rank 1 slow to reload the best checkpoint at the end of training (by
``RAFTLM_TEST_SLOW_RANK_S`` seconds): rank 0 must not remove checkpoints/ before every rank has loaded it.
(A real run meets this when the ranks' machines differ in load; tests/test_distributed.py makes it certain.)
Rank 1 also fails at once if it ever takes itself for the main process (on CPU a bare accelerate
``PartialState()`` did, until the Trainer set the state up: both ranks wrote the run's marker, and rank 0
cleaned rank 1's temp file as a kill's leftover, in a busy make test)."""

import os
import sys
import time

from transformers import Trainer

import raftlm.pipeline
from raftlm.cli import main

if os.environ.get("RANK") == "1":
    is_main = raftlm.pipeline.is_main_process

    def rank_one_is_not_main() -> bool:
        if is_main():
            raise SystemExit("raftlm test: rank 1 took itself for the main process")
        return False

    raftlm.pipeline.is_main_process = rank_one_is_not_main
    load_best = Trainer._load_best_model

    def slow_load_best(self) -> None:
        time.sleep(float(os.environ.get("RAFTLM_TEST_SLOW_RANK_S", "1")))
        load_best(self)

    Trainer._load_best_model = slow_load_best

sys.exit(main())
