"""Training losses, one module per method; the docstrings give the paper's equation.

Each loss takes the (possibly wrapped) causal LM and a collated batch and returns a scalar: the mean
over the examples of the batch. (With gradient accumulation the Trainer divides by the number of
micro-batches, which equals the mean over the larger batch when micro-batches are equal-sized.)
"""

from __future__ import annotations

import torch
from torch import nn

from raftlm.core import CE_TARGETS
from raftlm.scoring import GridLogProbs, PromptBatch


def raft_predictor(
    log_probs: torch.Tensor, values: torch.Tensor, normalize_grid: bool = False
) -> torch.Tensor:
    """Eq. 5 on tensors: sum_y p(str(y)|x) * y, optionally renormalized over the grid (table 16)."""
    # renormalized in log space (softmax): a grid whose mass underflows to 0 keeps a value and a gradient
    probs = torch.softmax(log_probs, -1) if normalize_grid else log_probs.exp()
    return probs @ values.to(probs)


def ce_targets(targets: torch.Tensor, values: torch.Tensor, kind: str = "nearest") -> torch.Tensor:
    """The CE term's target distribution over the grid, (batch, grid): "nearest" is one-hot on the grid
    value nearest each target; "two-hot" puts (hi - y) / (hi - lo) on the grid value lo just below y and
    the rest on hi just above, so its mean is y (one-hot on a grid value or past either end). Example:
    grid (1, 2, 3), y 2.25 -> nearest (0, 1, 0), two-hot (0, 0.75, 0.25)."""
    if kind == "nearest" or len(values) < 2:
        nearest = (targets[:, None] - values[None, :]).abs().argmin(-1)
        return torch.nn.functional.one_hot(nearest, len(values)).to(targets)
    order = values.argsort()
    ordered = values[order]
    lo = (torch.searchsorted(ordered, targets.contiguous(), right=True) - 1).clamp(0, len(values) - 2)
    up = ((targets - ordered[lo]) / (ordered[lo + 1] - ordered[lo])).clamp(0, 1)
    out = torch.zeros(len(targets), len(values), dtype=targets.dtype, device=targets.device)
    out.scatter_(1, order[lo][:, None], (1 - up)[:, None])
    return out.scatter_add(1, order[lo + 1][:, None], up[:, None])


class RAFTLoss(nn.Module):
    """Eq. 10: (y* - sum_y p(str(y)|x) y)^2, averaged over the batch; plus ``ce_weight`` x CE.

    Needs: prompt batch and grid-space targets. Example: grid {1..5}, p = (0,0,.5,.5,0) -> y_hat 3.5;
    target 4 -> loss 0.25. With ``ce_weight`` = lambda the loss adds lambda * -log p(str(y~)|x), y~ the
    grid value nearest the target (TRACT uses lambda 1, number-token-loss 0.3): the CE term keeps
    probability on the grid and its spread alive where the squared loss's gradient vanishes (a dead or
    saturated grid). With ``normalize_grid`` the CE is over the grid only. Example: as above with lambda 0.5,
    p('4') = 0.5 -> 0.25 + 0.5 * ln 2 = 0.597.

    ``ce_target`` "two-hot" spreads the CE target over the two grid values around the target, weighted so
    their mean is the target (target 3.25 on {1..5}: 0.75 on '3', 0.25 on '4'; one-hot on a grid value,
    the nearest end outside the grid): the CE term's optimum then predicts the target, as the squared
    loss's does, where the nearest value's one-hot pulls RAIL's mean onto the grid (a rounding error that
    off-grid targets cannot escape). Example: as above with target 3.5 -> 0 + 0.5 * ln 2 = 0.347.

    With a ``correction`` (``heads.RAILCorrectionHead``, method raft-head) the squared error is that of
    RAIL + the correction, both read from one forward pass; the CE term stays on the grid distribution.
    Example: as the first, with a correction of 0.3 -> (3.8 - 4)^2 = 0.04.

    Every call records the batch's grid mass and grid entropy in ``stats`` (the trainer logs their means).
    """

    def __init__(
        self,
        scorer: GridLogProbs,
        values: torch.Tensor,
        normalize_grid: bool = False,
        ce_weight: float = 0.0,
        ce_target: str = "nearest",
        correction: nn.Module | None = None,
    ):
        super().__init__()
        if ce_target not in CE_TARGETS:
            raise ValueError(f"ce_target={ce_target!r}: use one of {', '.join(CE_TARGETS)}")
        self.scorer, self.normalize_grid, self.ce_weight = scorer, normalize_grid, ce_weight
        self.ce_target, self.correction = ce_target, correction
        self.register_buffer("values", values.float(), persistent=False)
        self.stats: dict[str, list[float]] = {}

    def forward(self, model, batch: PromptBatch, targets: torch.Tensor, **_) -> torch.Tensor:
        if self.correction is None:
            log_probs, shift = self.scorer(model, batch), 0.0
        else:  # heads.RAILCorrectionHead: the squared error is the sum's, RAIL + the correction
            log_probs, shift = self.correction.parts(model, batch)
        targets = targets.to(log_probs)
        loss = ((raft_predictor(log_probs, self.values, self.normalize_grid) + shift - targets) ** 2).mean()
        if self.ce_weight:
            lp = torch.log_softmax(log_probs, -1) if self.normalize_grid else log_probs
            weights = ce_targets(targets, self.values.to(targets), self.ce_target)
            ce = torch.where(weights > 0, weights * lp, 0).sum(-1)  # a -inf off the target is not 0 x -inf
            loss = loss - self.ce_weight * ce.mean()
        self._record(log_probs.detach())
        return loss

    def _record(self, log_probs: torch.Tensor) -> None:
        grid = torch.softmax(log_probs, -1)
        entropy = -(grid * torch.log_softmax(log_probs, -1)).sum(-1)
        for key, v in (("grid_mass", log_probs.exp().sum(-1)), ("grid_entropy", entropy)):
            self.stats.setdefault(key, []).append(float(v.mean()))

    def pop_stats(self) -> dict[str, float]:
        """Means of the recorded statistics since the last call (then cleared)."""
        out = {f"train_{k}": sum(v) / len(v) for k, v in self.stats.items() if v}
        self.stats = {}
        return out


def answer_logits(model, batch: PromptBatch, answer_len: torch.Tensor):
    """Teacher-forced logits of the answer tokens: (logits (B, k, V) float32, labels (B, k), keep (B, k)),
    k the longest answer; ``keep`` marks each row's own answer tokens (the last ``answer_len[i]``)."""
    k = int(answer_len.max())
    out = model(**batch.model_inputs(), logits_to_keep=k + 1)
    logits = out.logits[:, :-1].float()  # position t predicts token t+1: the last k tokens
    labels = batch.input_ids[:, -k:]
    keep = torch.arange(k, device=labels.device)[None, :] >= (k - answer_len.to(labels.device))[:, None]
    return logits, labels, keep


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """-log p(answer | prompt) per example, (B,): the kept tokens' negative log-likelihoods summed."""
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    )
    return (nll.view(labels.shape) * keep).sum(-1)


class CELoss(nn.Module):
    """Eq. 8: -log p(str(y*) | x), the tokens of the answer only (prompt masked), mean over examples.

    Needs: a batch of left-padded prompt+answer sequences whose last ``answer_len[i]`` tokens are the
    answer; the LM head is applied to the answer positions only. Example: answer '3' at probability
    0.5 -> loss log 2 = 0.693.
    """

    def forward(self, model, batch: PromptBatch, answer_len: torch.Tensor, **_) -> torch.Tensor:
        return answer_nll(*answer_logits(model, batch, answer_len)).mean()


class CENTLoss(nn.Module):
    """Eq. 8 + ``ntl_weight`` x NTL: CE on the answer tokens plus the number token loss (Zausinger et al.,
    ICML 2025), here the Wasserstein-1 distance between the predicted distribution over the digit tokens
    and the target digit at each digit of the answer (``ntl`` is PyPI ntloss's ``NTLoss``, its defaults:
    the distance is scaled by the probability mass on digits, and the mass elsewhere costs 1.01 x the
    largest distance, 9).

    Needs: the CE batch (``answer_len``). Each example's NTL is the mean over its answer's digits (0
    without digits), then the mean over examples, so the loss stays a mean over examples (length chunks;
    ntloss's own "mean" averages over all digits of the batch). Example: answer '3', p('3') = 0.5 and
    p('5') = 0.5, nothing else: CE ln 2 = 0.693, NTL 0.5 * |5 - 3| = 1 -> 0.693 + 0.3 * 1 = 0.993.
    """

    def __init__(self, ntl, ntl_weight: float = 0.3):
        super().__init__()
        self.ntl, self.ntl_weight = ntl, ntl_weight

    def forward(self, model, batch: PromptBatch, answer_len: torch.Tensor, **_) -> torch.Tensor:
        logits, labels, keep = answer_logits(model, batch, answer_len)
        loss = answer_nll(logits, labels, keep).mean()
        if not self.ntl_weight:
            return loss
        per_token = self.ntl(logits, labels.masked_fill(~keep, -100), reduction="none")  # 0 off digits
        digits = torch.isin(labels, self.ntl.number_token_ids.to(labels.device)) & keep
        per_example = per_token.sum(-1) / digits.sum(-1).clamp(min=1)
        return loss + self.ntl_weight * per_example.mean()


class MBRLoss(nn.Module):
    """Eq. 14 (appendix C): sum_y p(str(y)|x) (y* - y)^2, the sampled regression-aware loss on the grid.

    Its minimizer is one-hot on the grid value nearest E[y] (lemma 4). The expectation is over the
    grid distribution, so p is renormalized over the grid: with raw LM probabilities the loss is
    zeroed by moving all mass off the grid (measured: grid mass 4e-11 after 100 steps on STS-B).
    Example: grid {1..5}, p = (0,0,.25,.25,0) -> normalized (0,0,.5,.5,0); target 4 -> .5*1 + .5*0 = 0.5.
    """

    def __init__(self, scorer: GridLogProbs, values: torch.Tensor):
        super().__init__()
        self.scorer = scorer
        self.register_buffer("values", values.float(), persistent=False)

    def forward(self, model, batch: PromptBatch, targets: torch.Tensor, **_) -> torch.Tensor:
        probs = torch.softmax(self.scorer(model, batch), dim=-1)  # p(str(y)|x) / sum over the grid
        sq = (targets.to(probs)[:, None] - self.values.to(probs)[None, :]) ** 2
        return (probs * sq).sum(-1).mean()


class RAFTLogLoss(nn.Module):
    """Table 15: targets scaled to [0, 1]; -y* log p1 - (1 - y*) log(1 - p1), p1 = p('1' | x).

    Needs the grid {0, 1} (RAIL is then p1). Example: p1 = 0.8, y* = 0.5 -> -(.5 ln .8 + .5 ln .2) = 0.916.
    """

    def __init__(self, scorer: GridLogProbs, values: torch.Tensor):
        super().__init__()
        if sorted(values.tolist()) != [0.0, 1.0]:
            raise ValueError("raft-logloss needs the grid 0,1")
        self.scorer, self.one = scorer, int(values.tolist().index(1.0))

    def forward(self, model, batch: PromptBatch, targets: torch.Tensor, **_) -> torch.Tensor:
        log_p1 = self.scorer(model, batch)[:, self.one].clamp(max=-1e-7)
        log_p0 = torch.log(-torch.expm1(log_p1))  # log(1 - p1), stable near p1 = 1
        y = targets.to(log_p1)
        return -(y * log_p1 + (1 - y) * log_p0).mean()


class HeadMSELoss(nn.Module):
    """Squared error of a predictive head (section 2.5): (y* - head(x))^2, averaged over the batch."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, model, batch: PromptBatch, targets: torch.Tensor, **_) -> torch.Tensor:
        pred = self.head(model, batch)
        return ((pred - targets.to(pred)) ** 2).mean()
