"""Training method names -> loss modules (the CLI's --method choices come from this dict)."""

from __future__ import annotations

from raftlm.losses import CELoss, RAFTLoss

METHODS = {"raft": RAFTLoss, "ce": CELoss}
