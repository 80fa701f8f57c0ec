"""``raftlm`` under torchrun with rank 1 slow to reload the best checkpoint at the end of training (by
``RAFTLM_TEST_SLOW_RANK_S`` seconds): rank 0 must not remove checkpoints/ before every rank has loaded it.
(A real run meets this when the ranks' machines differ in load; tests/test_distributed.py makes it certain.)"""

import os
import sys
import time

from transformers import Trainer

from raftlm.cli import main

if os.environ.get("RANK") == "1":
    load_best = Trainer._load_best_model

    def slow_load_best(self) -> None:
        time.sleep(float(os.environ.get("RAFTLM_TEST_SLOW_RANK_S", "1")))
        load_best(self)

    Trainer._load_best_model = slow_load_best

sys.exit(main())
