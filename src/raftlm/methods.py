"""Training methods: one literal dict from the CLI's --method names to their implementations.

Each entry says which loss trains the model, which predictive head (if any) sits on the backbone,
and whether the backbone is an encoder (``AutoModel``) rather than a causal LM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from raftlm.core import RaftlmError
from raftlm.heads import LearnableRAFTHead, MLPLogitsHead, PooledHead, ProbProjectionHead, SpecialTokenHead
from raftlm.losses import CELoss, HeadMSELoss, MBRLoss, RAFTLogLoss, RAFTLoss


def _raft_loss(predictor, mcfg) -> nn.Module:
    values = torch.tensor(predictor.grid.values)
    return RAFTLoss(predictor.scorer, values, predictor.normalize, mcfg.ce_weight)


def _grid_loss(cls):
    def build(predictor, mcfg) -> nn.Module:
        return cls(predictor.scorer, torch.tensor(predictor.grid.values))

    return build


def _head_loss(predictor, mcfg) -> nn.Module:
    return HeadMSELoss(predictor.head)


def special_token_head(predictor, mcfg, bias: float) -> nn.Module:
    tok = predictor.tokenizer
    name = mcfg.head_token or tok.eos_token
    ids = tok.convert_tokens_to_ids([name])
    if not ids or ids[0] is None or ids[0] == tok.unk_token_id:
        raise RaftlmError(
            f"head token {name!r} is not in the vocabulary: pass --head-token with a single token"
        )
    return SpecialTokenHead(ids[0], bias)


def _hidden_size(predictor) -> int:
    return predictor.model.config.get_text_config().hidden_size


def _vocab_size(predictor) -> int:
    return predictor.model.get_output_embeddings().weight.shape[0]


def pooled_head(predictor, mcfg, bias: float) -> nn.Module:
    return PooledHead(_hidden_size(predictor), mcfg.pooling, bias)


def mlp_logits_head(predictor, mcfg, bias: float) -> nn.Module:
    return MLPLogitsHead(_vocab_size(predictor), mcfg.head_hidden, bias)


def prob_projection_head(predictor, mcfg, bias: float) -> nn.Module:
    return ProbProjectionHead(_vocab_size(predictor), bias)


def learnable_raft_head(predictor, mcfg, bias: float) -> nn.Module:
    if not predictor.fmt.single_token:
        raise RaftlmError("learnable-raft needs a grid whose strings are single tokens (e.g. --grid 1-5)")
    ids = [c[0] for c in predictor.fmt.candidates]
    return LearnableRAFTHead(
        ids, list(predictor.grid.values), _vocab_size(predictor), mcfg.learnable_scope, mcfg.head_init
    )


def encoder_head(pooling: str) -> Callable:
    def build(predictor, mcfg, bias: float) -> nn.Module:
        return PooledHead(_hidden_size(predictor), pooling, bias)

    return build


@dataclass(frozen=True)
class Method:
    loss: Callable  # (predictor, method config) -> loss module
    head: Callable | None = None  # (predictor, method config, initial bias) -> head module
    encoder: bool = False  # backbone is an AutoModel encoder, not a causal LM


METHODS = {
    "raft": Method(_raft_loss),
    "ce": Method(lambda predictor, mcfg: CELoss()),
    "mbr": Method(_grid_loss(MBRLoss)),
    "raft-logloss": Method(_grid_loss(RAFTLogLoss)),
    "head-special-token": Method(_head_loss, special_token_head),
    "head-pooled": Method(_head_loss, pooled_head),
    "head-mlp-logits": Method(_head_loss, mlp_logits_head),
    "head-prob-projection": Method(_head_loss, prob_projection_head),
    "learnable-raft": Method(_head_loss, learnable_raft_head),
    "encoder-cls": Method(_head_loss, encoder_head("cls"), encoder=True),
    "encoder-mean": Method(_head_loss, encoder_head("mean"), encoder=True),
}
