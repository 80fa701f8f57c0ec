"""raftlm: natural-language regression with decoder LLMs (RAFT fine-tuning, RAIL inference)."""

from raftlm.core import Example, RaftlmError
from raftlm.grid import Grid, TargetScaler

__all__ = ["RAFTRegressor", "Example", "Grid", "TargetScaler", "RaftlmError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # RAFTRegressor pulls in torch and transformers (seconds): load it on first use, so that
    # `raftlm --help` and `import raftlm.config` stay fast
    if name == "RAFTRegressor":
        from raftlm.api import RAFTRegressor

        return RAFTRegressor
    raise AttributeError(f"module 'raftlm' has no attribute {name!r}")
