"""Training losses, one module per method; the docstrings give the paper's equation.

Each loss takes the (possibly wrapped) causal LM and a collated batch and returns a scalar: the mean
over the examples of the batch. (With gradient accumulation the Trainer divides by the number of
micro-batches, which equals the mean over the larger batch when micro-batches are equal-sized.)
"""

from __future__ import annotations

import torch
from torch import nn

from raftlm.scoring import GridLogProbs, PromptBatch


def raft_predictor(log_probs: torch.Tensor, values: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Eq. 5 on tensors: sum_y p(str(y)|x) * y, optionally renormalized over the grid (table 16)."""
    probs = log_probs.exp()
    pred = probs @ values.to(probs)
    return pred / probs.sum(-1) if normalize else pred


class RAFTLoss(nn.Module):
    """Eq. 10: (y* - sum_y p(str(y)|x) y)^2, averaged over the batch.

    Needs: prompt batch and grid-space targets. Example: grid {1..5}, p = (0,0,.5,.5,0) -> y_hat 3.5;
    target 4 -> loss 0.25.
    """

    def __init__(self, scorer: GridLogProbs, values: torch.Tensor, normalize: bool = False):
        super().__init__()
        self.scorer, self.normalize = scorer, normalize
        self.register_buffer("values", values.float(), persistent=False)

    def forward(self, model, batch: PromptBatch, targets: torch.Tensor, **_) -> torch.Tensor:
        pred = raft_predictor(self.scorer(model, batch), self.values, self.normalize)
        return ((pred - targets.to(pred)) ** 2).mean()


class CELoss(nn.Module):
    """Eq. 8: -log p(str(y*) | x), the tokens of the answer only (prompt masked), mean over examples.

    Needs: a batch of left-padded prompt+answer sequences whose last ``answer_len[i]`` tokens are the
    answer; the LM head is applied to the answer positions only. Example: answer '3' at probability
    0.5 -> loss log 2 = 0.693.
    """

    def forward(self, model, batch: PromptBatch, answer_len: torch.Tensor, **_) -> torch.Tensor:
        k = int(answer_len.max())
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            logits_to_keep=k + 1,
        )
        logits = out.logits[:, :-1].float()  # position t predicts token t+1: the last k tokens
        labels = batch.input_ids[:, -k:]
        keep = torch.arange(k, device=labels.device)[None, :] >= (k - answer_len.to(labels.device))[:, None]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
        )
        nll = (nll.view(labels.shape) * keep).sum(-1)
        return nll.mean()
