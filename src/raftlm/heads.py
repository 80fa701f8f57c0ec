"""Predictive heads (paper section 2.5, table 2, eq. 11-12): a small module on top of the backbone,
trained with the squared error, predicting without any decoding.

Every head has the same call: ``head(model, batch) -> (B,)`` predictions in grid units, and
``head.config()`` returns the keyword arguments that rebuild it (saved in ``raftlm.json``).
The head is registered on the backbone as the submodule ``raftlm_head`` while training, so Trainer's
checkpoints and optimizer include it; it is saved separately as ``head.safetensors``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raftlm.losses import raft_predictor
from raftlm.scoring import AnswerFormat, GridLogProbs, PromptBatch, full_precision  # float32 arithmetic


def _last_logits(model, batch: PromptBatch) -> torch.Tensor:
    """f_out(x)[:, L]: the LM head applied at the final position only (left padding puts it last)."""
    return model(**batch.model_inputs(), logits_to_keep=1).logits[:, -1].float()


def _last_hidden(model, batch: PromptBatch) -> torch.Tensor:
    """e_out(x): final hidden states (after the final norm), without materializing vocabulary logits."""
    kwargs = batch.model_inputs()
    base = getattr(
        model, "module", model
    )  # (under DDP: the wrapped model's attributes; its forward, the wrapper's)
    if base.get_output_embeddings() is not None:  # a causal LM (an encoder AutoModel has none)
        return model(**kwargs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1].float()
    return model(**kwargs).last_hidden_state.float()


class SpecialTokenHead(nn.Module):
    """b + f_out(x)[v*, L] (Fernandes et al. 2023): the final-position logit of one token v*.

    Example: logit 2.5 for v*, b = 1.0 -> 3.5.
    """

    def __init__(self, token_id: int, bias: float = 0.0):
        super().__init__()
        self.token_id = token_id
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        return self.bias + _last_logits(model, batch)[:, self.token_id]

    def config(self) -> dict:
        return {"token_id": self.token_id}


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Mean / min / max over non-pad positions, or the first real token ('cls') of each row."""
    m = mask.bool()[..., None]
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "min":
        return hidden.masked_fill(~m, float("inf")).amin(1)
    if how == "max":
        return hidden.masked_fill(~m, float("-inf")).amax(1)
    if how == "cls":
        first = mask.long().argmax(1)  # first non-pad position (left padding)
        return hidden[torch.arange(hidden.shape[0]), first]
    raise ValueError(f"unknown pooling {how!r}")


class PooledHead(nn.Module):
    """b + w^T pool(e_out(x)) (Zhuang et al. 2023; table 4 mean/min/max). Also the encoder heads
    of appendix E.4 (``cls`` or ``mean`` pooling of an encoder's output)."""

    # the final hidden states only: an LM head (when not the input embeddings) gets no gradient
    reads_logits = False

    def __init__(self, hidden_size: int, pooling: str = "mean", bias: float = 0.0):
        super().__init__()
        if pooling not in ("mean", "min", "max", "cls"):
            raise ValueError(f"pooling={pooling!r}: use mean, min, max or cls")
        self.pooling = pooling
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, bias)

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        return self.from_hidden(_last_hidden(model, batch), batch.attention_mask)

    def from_hidden(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """b + w^T pool(hidden) for final hidden states already computed, (B, T, D) -> (B,)."""
        pooled = pool(hidden, mask, self.pooling)
        with full_precision(pooled):
            return self.linear(pooled.float()).squeeze(-1)

    def config(self) -> dict:
        return {"hidden_size": self.linear.in_features, "pooling": self.pooling}


class RAILCorrectionHead(nn.Module):
    """RAIL plus a pooled linear correction: sum_y p(str(y)|x) y + b + w^T pool(e_out(x)), both read from
    one forward pass (issue 40's "RAFT + a small head correction"; ``losses.RAFTLoss`` trains it with
    the squared error of the sum, and its CE term keeps the grid distribution on the target).

    w and b start at 0, so an untrained correction head predicts exactly RAIL. ``candidates`` are the
    grid strings' token ids (``AnswerFormat.candidates``), ``values`` the grid values (grid units).
    Example: grid (1, 2, 3), p = (0.2, 0.3, 0.5) -> RAIL 2.3; pooled state (1, -1), w = (0.5, 0.25),
    b = 0.1 -> 2.3 + 0.1 + 0.25 = 2.65.
    """

    def __init__(
        self,
        candidates: list[list[int]],
        values: list[float],
        pad_id: int,
        hidden_size: int,
        pooling: str = "mean",
        normalize_grid: bool = False,
    ):
        super().__init__()
        self.values = [float(v) for v in values]
        self.register_buffer("grid_values", torch.tensor(self.values), persistent=False)
        self.pad_id, self.normalize_grid = pad_id, normalize_grid
        fmt = AnswerFormat("", True, tuple(tuple(int(i) for i in c) for c in candidates))
        self.scorer = GridLogProbs(fmt, pad_id, normalize_grid)
        self.correction = PooledHead(hidden_size, pooling, 0.0)

    def parts(self, model, batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(str(y)|x) over the grid (B, G), the correction (B,)) from one forward pass."""
        log_probs, hidden = self.scorer(model, batch, hidden=True)
        return log_probs, self.correction.from_hidden(hidden, batch.attention_mask)

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        log_probs, correction = self.parts(model, batch)
        return raft_predictor(log_probs, self.grid_values, self.normalize_grid) + correction

    def scores(self, model, batch: PromptBatch) -> torch.Tensor:
        """``parts`` as one (B, G + 1) tensor: the grid log-probs, then the correction (grid units). The
        predictor reads its grid distribution from it: the prediction's distribution is the grid
        distribution shifted by the correction (``Predictions.shift``)."""
        log_probs, correction = self.parts(model, batch)
        return torch.cat([log_probs, correction[:, None].to(log_probs)], -1)

    def config(self) -> dict:
        return {
            "candidates": [list(c) for c in self.scorer.fmt.candidates],
            "values": self.values,
            "pad_id": self.pad_id,
            "hidden_size": self.correction.linear.in_features,
            "pooling": self.correction.pooling,
            "normalize_grid": self.normalize_grid,
        }


class MLPLogitsHead(nn.Module):
    """Eq. 11: b + MLP(f_out(x)[:, L]), a 2-layer MLP with sigmoid over the whole final-position logits.

    Eq. 11 leaves the input scale open; two choices keep the V-wide first layer (Gemma: 262,144 inputs)
    trainable. The logit vector is standardized per example (a parameter-free layer norm: Gemma's
    logits share an offset near -5 that every unit would otherwise see), and the first layer is
    ``W / sqrt(V)`` with W ~ N(0, 1): Adafactor and Adam move each weight by about the learning rate,
    so with a plain V-wide Linear one step moves a pre-activation by lr x ||z||_1 (~20 at lr 1e-4);
    measured on STS-B, every sigmoid saturated at 0 or 1 within 50 steps and the head predicted one
    constant. With the 1/sqrt(V) scale a step moves it by ~lr x ||z||_1 / sqrt(V) (~0.04).
    Example (V=4, hidden 1): logits (0, 2, 0, 2) -> z = (-1, 1, -1, 1) (biased std); W = (0, 2, 0, 0),
    first bias -1 -> sigmoid(2 * 1 / 2 - 1) = 0.5; output weight 4, bias 1 -> 1 + 4 * 0.5 = 3.
    """

    def __init__(self, vocab_size: int, hidden: int = 64, bias: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.inp = nn.Linear(vocab_size, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.normal_(self.inp.weight)
        nn.init.zeros_(self.inp.bias)
        nn.init.zeros_(self.out.weight)  # starts at the bias (the training mean)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        logits = _last_logits(model, batch)
        with full_precision(logits):
            z = F.layer_norm(logits, (self.vocab_size,))
            pre = F.linear(z, self.inp.weight) * self.vocab_size**-0.5 + self.inp.bias
            return self.out(torch.sigmoid(pre)).squeeze(-1)

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "hidden": self.inp.out_features}


class ProbProjectionHead(nn.Module):
    """b + w^T p_out(x)[:, L] (table 2): a linear map of the final-position probability vector."""

    def __init__(self, vocab_size: int, bias: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        logits = _last_logits(model, batch)
        with full_precision(logits):
            return self.bias + torch.softmax(logits, -1) @ self.weight

    def config(self) -> dict:
        return {"vocab_size": self.weight.numel()}


class LearnableRAFTHead(nn.Module):
    """Eq. 12: sum_y w_y p_out(x)[str(y), L] with learnable w, over all tokens or the grid tokens.

    Initialized at the RAFT solution w_y = float(y) (0 for other tokens): at step 0 it equals RAIL
    (the paper found random initialization does not train). ``init="random"`` is there to show it.
    """

    def __init__(
        self,
        grid_token_ids: list[int],
        grid_values: list[float],
        vocab_size: int,
        scope: str = "grid",
        init: str = "raft",
    ):
        super().__init__()
        if scope not in ("grid", "all"):
            raise ValueError(f"scope={scope!r}: use grid or all")
        self.scope, self.vocab_size, self.init, self.grid_values = scope, vocab_size, init, list(grid_values)
        self.register_buffer("grid_ids", torch.tensor(grid_token_ids), persistent=False)
        values = torch.tensor(grid_values, dtype=torch.float32)
        w = torch.zeros(vocab_size) if scope == "all" else torch.zeros(len(grid_values))
        if init == "raft":
            if scope == "all":
                w[self.grid_ids] = values
            else:
                w = values.clone()
        else:
            w = torch.randn_like(w) * float(values.abs().max())
        self.weight = nn.Parameter(w)

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        logits = _last_logits(model, batch)
        with full_precision(logits):
            probs = torch.softmax(logits, -1)
            return probs @ self.weight if self.scope == "all" else probs[:, self.grid_ids] @ self.weight

    def config(self) -> dict:
        return {
            "grid_token_ids": self.grid_ids.tolist(),
            "grid_values": self.grid_values,
            "vocab_size": self.vocab_size,
            "scope": self.scope,
            "init": self.init,
        }


class AttentionPoolHead(nn.Module):
    """b + MLP(MHA(q, LN(e_out(x)))): learned queries cross-attend over every prompt token (RELISH,
    Su & Lease 2026, arXiv 2604.01206, in one attention step instead of its iterated latent state).

    ``queries`` vectors q_1..q_Q attend (multi-head, ``num_heads``) over the layer-normed final hidden
    states of the non-pad tokens (a pad is masked out, so left padding cannot change a prediction); the
    Q attended vectors, concatenated, go through Linear(Q*D, hidden), GELU, Linear(hidden, 1). The output
    layer starts at zero, so the head starts at ``bias`` (the training mean). The layer norm keeps the
    attention logits at unit scale whatever the backbone's final norm leaves (Gemma 3 270M: token RMS 2-5,
    single channels up to 50). Parameters: Q*D + 2D (norm) + 4D^2 + 4D (attention) + Q*D*hidden + hidden
    (first layer) + hidden + 1 (output); Gemma 3 270M (D 640) with the defaults Q 4, hidden 768:
    2,560 + 1,280 + 1,640,960 + 1,966,848 + 769 = 3,612,417 (RELISH: 3.4-3.7M).
    """

    reads_logits = False

    def __init__(
        self, hidden_size: int, queries: int = 4, hidden: int = 768, num_heads: int = 0, bias: float = 0.0
    ):
        super().__init__()
        num_heads = num_heads or math.gcd(hidden_size, 8)  # 8 heads where D allows (Gemma: 8 x 80)
        self.norm = nn.LayerNorm(hidden_size)
        self.queries = nn.Parameter(torch.randn(queries, hidden_size))
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.inp = nn.Linear(queries * hidden_size, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)  # starts at the bias (the training mean)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, model, batch: PromptBatch) -> torch.Tensor:
        hidden = _last_hidden(model, batch)
        pad = ~batch.attention_mask.bool()
        with full_precision(hidden):
            keys = self.norm(hidden).masked_fill(pad[..., None], 0.0)  # masked, and 0: no 0 x nan from a pad
            q = self.queries[None].expand(len(hidden), -1, -1)
            pooled, _ = self.attn(q, keys, keys, key_padding_mask=pad, need_weights=False)
            return self.out(F.gelu(self.inp(pooled.flatten(1)))).squeeze(-1)

    def config(self) -> dict:
        return {
            "hidden_size": self.queries.shape[1],
            "queries": self.queries.shape[0],
            "hidden": self.inp.out_features,
            "num_heads": self.attn.num_heads,
        }


HEAD_CLASSES = {
    c.__name__: c
    for c in (
        SpecialTokenHead,
        PooledHead,
        RAILCorrectionHead,
        MLPLogitsHead,
        ProbProjectionHead,
        LearnableRAFTHead,
        AttentionPoolHead,
    )
}
