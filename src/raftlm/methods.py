"""Training methods: one literal dict from the CLI's --method names to their implementations.

Each entry says which loss trains the model, which predictive head (if any) sits on the backbone,
and whether the backbone is an encoder (``AutoModel``) rather than a causal LM. The factories import
torch, the losses and the heads when called: the CLI's parser reads this table, and `raftlm --help`
must not wait seconds for torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raftlm.core import RaftlmError, short
from raftlm.decoders import GRID_DECODERS

if TYPE_CHECKING:
    from torch import nn


def _raft_loss(predictor, mcfg) -> nn.Module:
    import torch

    from raftlm.losses import RAFTLoss

    values = torch.tensor(predictor.grid.values)
    method = METHODS[mcfg.method]
    weight = method.default_ce_weight if mcfg.ce_weight is None else mcfg.ce_weight
    target = method.default_ce_target if mcfg.ce_target is None else mcfg.ce_target
    correction = predictor.head if method.head is not None else None  # raft-head: RAIL + its correction
    return RAFTLoss(predictor.scorer, values, predictor.normalize_grid, weight, target, correction)


def _grid_loss(name: str):
    def build(predictor, mcfg) -> nn.Module:
        import torch

        from raftlm import losses

        return getattr(losses, name)(predictor.scorer, torch.tensor(predictor.grid.values))

    return build


def _ce_loss(predictor, mcfg) -> nn.Module:
    from raftlm.losses import CELoss

    return CELoss()


def _ce_ntl_loss(predictor, mcfg) -> nn.Module:
    """CE + ntl_weight x the number token loss of PyPI ``ntloss`` (its NTLoss, Wasserstein-1, defaults)."""
    import copy

    from ntloss import NTLoss

    from raftlm.losses import CENTLoss

    tok = predictor.tokenizer
    digits = [str(d) for d in range(10)]
    ids = tok.convert_tokens_to_ids(digits)
    if any(i is None or i == tok.unk_token_id for i in ids):
        raise RaftlmError(
            "ce-ntl needs the digits 0-9 as tokens of the vocabulary (the number token loss reads their "
            "probabilities), and this tokenizer lacks some: use ce"
        )
    # ntloss calls tokenizer.add_tokens(digits), which registers even in-vocabulary digits as added tokens
    # and so changes how text tokenizes (a GPT-2-style ' 3' splits): it gets a copy
    ntl = NTLoss(copy.deepcopy(tok), vocab_size=_vocab_size(predictor))
    if not any(c.isdigit() for s in predictor.grid.strings for c in s):
        raise RaftlmError("ce-ntl: the grid strings hold no digits, so the number token loss is 0: use ce")
    number_ids = set(ntl.number_token_ids.tolist())
    for s, cand in zip(predictor.grid.strings, predictor.fmt.candidates, strict=True):
        if sum(c.isdigit() for c in s) != sum(i in number_ids for i in cand):
            raise RaftlmError(
                f"ce-ntl: the answer {short(s)} is tokenized as {tok.convert_ids_to_tokens(list(cand))}, its digits "
                "not single digit tokens, so the number token loss cannot read them: use ce, or a model whose "
                "tokenizer splits digits"
            )
    return CENTLoss(ntl, mcfg.ntl_weight)


def _head_loss(predictor, mcfg) -> nn.Module:
    from raftlm.losses import HeadMSELoss

    return HeadMSELoss(predictor.head)


def special_token_head(predictor, mcfg, bias: float) -> nn.Module:
    tok = predictor.tokenizer
    name = mcfg.head_token or tok.eos_token
    ids = tok.convert_tokens_to_ids([name])
    if not ids or ids[0] is None or ids[0] == tok.unk_token_id:
        raise RaftlmError(
            f"head token {short(name)} is not in the vocabulary: pass --head-token with a single token"
        )
    from raftlm.heads import SpecialTokenHead

    return SpecialTokenHead(ids[0], bias)


def _hidden_size(predictor) -> int:
    return predictor.model.config.get_text_config().hidden_size


def _vocab_size(predictor) -> int:
    return predictor.model.get_output_embeddings().weight.shape[0]


def pooled_head(predictor, mcfg, bias: float) -> nn.Module:
    from raftlm.heads import PooledHead

    return PooledHead(_hidden_size(predictor), mcfg.pooling, bias)


def rail_correction_head(predictor, mcfg, bias: float) -> nn.Module:
    """RAIL + a pooled linear correction that starts at 0 (not at ``bias``): step 0 predicts RAIL."""
    from raftlm.heads import RAILCorrectionHead

    return RAILCorrectionHead(
        [list(c) for c in predictor.fmt.candidates],
        list(predictor.grid.values),
        predictor.pad_id,
        _hidden_size(predictor),
        mcfg.pooling,
        predictor.normalize_grid,
    )


def mlp_logits_head(predictor, mcfg, bias: float) -> nn.Module:
    from raftlm.heads import MLPLogitsHead

    return MLPLogitsHead(_vocab_size(predictor), mcfg.head_hidden, bias)


def prob_projection_head(predictor, mcfg, bias: float) -> nn.Module:
    from raftlm.heads import ProbProjectionHead

    return ProbProjectionHead(_vocab_size(predictor), bias)


def attention_pool_head(predictor, mcfg, bias: float) -> nn.Module:
    from raftlm.heads import AttentionPoolHead

    return AttentionPoolHead(_hidden_size(predictor), mcfg.attn_queries, mcfg.attn_hidden, bias=bias)


def learnable_raft_head(predictor, mcfg, bias: float) -> nn.Module:
    if not predictor.fmt.single_token:
        raise RaftlmError("learnable-raft needs a grid whose strings are single tokens (e.g. --grid 1-5)")
    ids = [c[0] for c in predictor.fmt.candidates]
    from raftlm.heads import LearnableRAFTHead

    return LearnableRAFTHead(
        ids, list(predictor.grid.values), _vocab_size(predictor), mcfg.learnable_scope, mcfg.head_init
    )


def encoder_head(pooling: str) -> Callable:
    def build(predictor, mcfg, bias: float) -> nn.Module:
        from raftlm.heads import PooledHead

        return PooledHead(_hidden_size(predictor), pooling, bias)

    return build


@dataclass(frozen=True)
class Method:
    """A training method and the traits the rest of raftlm asks of it (no code outside this module
    compares method names)."""

    loss: Callable | None  # (predictor, method config) -> loss module; None: zero-shot, nothing trains
    head: Callable | None = None  # (predictor, method config, initial bias) -> head module
    encoder: bool = False  # backbone is an AutoModel encoder, not a causal LM
    trains_on_answer: bool = False  # the batch appends the answer string + EOS (teacher forcing)
    causal_only: bool = False  # bidirectional attention would let the answer see itself
    fixed_grid: str | None = None  # the grid the method needs whatever the dataset's (table 15: "0,1")
    takes_ce_weight: bool = False  # accepts method.ce_weight (RAFT + lambda x CE)
    default_ce_weight: float = 0.0  # lambda when method.ce_weight is not set
    default_ce_target: str = "nearest"  # the CE term's target when method.ce_target is not set
    scores_grid: bool = False  # the loss reads log p(str(y)|x) over the grid through the scorer
    label: str | None = None  # the name in reports, when not the method's own
    decoder_in_label: bool = False  # report rows name the decoder (the paper compares decoders of it)
    raft: bool = False  # RAFT's squared error of RAIL trains it: reports weigh it against the others

    @property
    def trains(self) -> bool:
        return self.loss is not None

    @property
    def default_decoder(self) -> str:
        """What a sweep cell decodes with unless told: the head, or RAIL over the grid."""
        return "head" if self.head is not None else "rail"

    @property
    def shifted_grid(self) -> bool:
        """A head whose prediction is RAIL + its correction (raft-head): its distribution is the grid's
        shifted by the correction, so the grid decoders read it as they read a grid model's."""
        return self.head is not None and self.scores_grid

    def decoder_name(self, decoder: str, name: str) -> str:
        """What this method's predictions (method ``name``) decode with when the setting is ``decoder``:
        the setting for a model without a head; for a head, "head" at the default (rail), and for
        raft-head also mode or median of its shifted distribution. Any other is a one-line error (it
        would be ignored: a head predicts its number whatever the decoder)."""
        if self.head is None:
            return decoder
        if decoder in ("rail", "head"):
            return "head"
        if self.shifted_grid and decoder in GRID_DECODERS:
            return decoder
        if self.shifted_grid:
            raise RaftlmError(
                f"decoder {short(decoder)} does not apply to a {name} model: it predicts RAIL + its "
                f"head's correction and decodes no text; use decoder {', '.join(GRID_DECODERS)}"
            )
        raise RaftlmError(
            f"decoder {short(decoder)} does not apply to a {name} model: its head predicts the number "
            "directly; leave the decoder at rail (the default)"
        )

    @property
    def grid_model(self) -> bool:
        """Trains the LM's own distribution over the dataset's grid (entropy before/after is comparable)."""
        return self.trains and self.head is None and not self.encoder and self.fixed_grid is None


ZERO_SHOT_NAME = "none"
ZERO_SHOT = Method(None, label="zero-shot", decoder_in_label=True)

METHODS = {
    # RAFT + 1.0 x CE by default: the only arm of the stability study with no collapse at a high LR
    # (benchmarks/results/stability); ce_weight 0 is the paper's pure RAFT (eq. 10). The CE target is
    # two-hot by default: at table3-converged's budget the nearest value's one-hot cost Amazon 0.12 test
    # RMSE over three seeds (benchmarks/results/two-hot-probe/compare.md); on grid-valued targets they agree
    "raft": Method(
        _raft_loss,
        takes_ce_weight=True,
        default_ce_weight=1.0,
        default_ce_target="two-hot",
        scores_grid=True,
        raft=True,
    ),
    # issue 40's "RAFT + a small head correction": the prediction is RAIL + b + w^T mean-pool(e_out(x)) from
    # one forward pass, trained as raft (the squared error of that sum + 1.0 x CE, two-hot, on the grid)
    "raft-head": Method(
        _raft_loss,
        rail_correction_head,
        takes_ce_weight=True,
        default_ce_weight=1.0,
        default_ce_target="two-hot",
        scores_grid=True,
        raft=True,
    ),
    "ce": Method(_ce_loss, trains_on_answer=True, causal_only=True, decoder_in_label=True),
    # CE + 0.3 x the number token loss (Zausinger et al., ICML 2025; PyPI ntloss): digits near the target's
    # digit cost less than far ones
    "ce-ntl": Method(_ce_ntl_loss, trains_on_answer=True, causal_only=True, decoder_in_label=True),
    "mbr": Method(_grid_loss("MBRLoss"), scores_grid=True),
    "raft-logloss": Method(_grid_loss("RAFTLogLoss"), fixed_grid="0,1", scores_grid=True),
    "head-special-token": Method(_head_loss, special_token_head),
    "head-pooled": Method(_head_loss, pooled_head),
    "head-mlp-logits": Method(_head_loss, mlp_logits_head),
    "head-prob-projection": Method(_head_loss, prob_projection_head),
    "head-attn": Method(_head_loss, attention_pool_head),  # RELISH-style attention pooling, ~3.6M on Gemma
    "learnable-raft": Method(_head_loss, learnable_raft_head),
    "encoder-cls": Method(_head_loss, encoder_head("cls"), encoder=True),
    "encoder-mean": Method(_head_loss, encoder_head("mean"), encoder=True),
}
CHOICES = [*METHODS, ZERO_SHOT_NAME]  # what --method accepts


def get(name: str) -> Method:
    """The method named ``name`` (``none``: zero-shot)."""
    if name == ZERO_SHOT_NAME:
        return ZERO_SHOT
    if name not in METHODS:
        raise RaftlmError(f"unknown method {short(name)}: use one of {sorted(METHODS)} or {ZERO_SHOT_NAME}")
    return METHODS[name]


def display_name(name: str) -> str:
    return get(name).label or name


def check_train(
    method: str,
    decoder: str,
    output_dir: str | None,
    trainable: str | None = None,
    output_name: str = "--output-dir",
) -> None:
    """What ``raftlm train`` and ``RAFTRegressor.fit`` refuse from their settings alone (imports no torch,
    so the command line says it before loading anything): a method that does not train, a frozen LM with
    no head to train, a decoder this method's predictions cannot use, no run directory, an unexpanded ``~``
    in it. ``output_name``: what the caller calls the run directory (``output_dir`` in RAFTRegressor)."""
    from raftlm.io import check_no_tilde

    if not get(method).trains:
        raise RaftlmError("method none is zero-shot: use `raftlm evaluate --model NAME` instead of train")
    if trainable == "none" and get(method).head is None:  # (nothing would train: a traceback at step 1)
        heads = sorted(n for n, m in METHODS.items() if m.head is not None)
        raise RaftlmError(
            f"trainable none freezes the whole LM, and {method} has no head to train: train some of the LM "
            f"(top-N, lora, full) or use a head method ({', '.join(heads)})"
        )
    get(method).decoder_name(decoder, method)  # one a head reads
    if not output_dir:
        raise RaftlmError("train needs --output-dir for the run directory")
    check_no_tilde(output_dir, output_name)
