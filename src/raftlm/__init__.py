"""raftlm: natural-language regression with decoder LLMs (RAFT fine-tuning, RAIL inference)."""

from raftlm.api import RAFTRegressor
from raftlm.core import Example, RaftlmError
from raftlm.grid import Grid, TargetScaler

__all__ = ["RAFTRegressor", "Example", "Grid", "TargetScaler", "RaftlmError"]
__version__ = "0.1.0"
