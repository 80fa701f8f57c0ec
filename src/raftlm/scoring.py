"""Scoring log p(str(y) | x) for every grid value in one batched forward pass.

Two facts shape this module:

* Tokenizer boundaries. In Gemma and SmolLM2 the answer ' 3' is two tokens ('▁', '3'); in GPT-2
  style BPEs it is one ('Ġ3'). :func:`bind_answer` finds how the model really emits
  ``answer_prefix + str(y)`` after the prompt: if the prefix tokenizes on its own, it is folded into
  the prompt (teacher-forced) and the candidates are the remaining tokens; otherwise the prefix stays
  part of every candidate. Any other boundary merge is a clear error.
* Cost. Prompts are left-padded so every answer position is the last column; the LM head is applied
  there only (``logits_to_keep``), never to every position of a 262k vocabulary. Multi-token grids
  encode the prompt once and reuse its KV cache for the distinct candidate prefixes (a trie: the
  51 strings '0.0'..'5.0' need only the 6 paths '0.'..'5.').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raftlm.core import RaftlmError, warn
from raftlm.grid import Grid


@dataclass(frozen=True)
class AnswerFormat:
    """How grid strings are emitted after a prompt: ``fold_prefix`` and token ids per grid value."""

    answer_prefix: str
    fold_prefix: bool
    candidates: tuple[tuple[int, ...], ...]

    @property
    def single_token(self) -> bool:
        return all(len(c) == 1 for c in self.candidates)

    @property
    def max_len(self) -> int:
        return max(len(c) for c in self.candidates)

    def prompt_text(self, text: str) -> str:
        return text + self.answer_prefix if self.fold_prefix else text


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _split(tokenizer, probe: str, head_text: str, answer: str) -> tuple[int, ...] | None:
    head = _encode(tokenizer, head_text)
    full = _encode(tokenizer, probe + answer)
    if full[: len(head)] != head or len(full) == len(head):
        return None
    return tuple(full[len(head) :])


def answer_ids(tokenizer, probes: list[str], prefix: str, fold: bool, text: str) -> tuple[int, ...]:
    """Token ids of ``text`` emitted after each probe prompt; they must agree across probes."""
    found = {_split(tokenizer, p, p + prefix if fold else p, prefix + text) for p in probes}
    if len(found) != 1 or None in found:
        raise RaftlmError(
            f"answer {text!r} tokenizes differently depending on the prompt ending (boundary merge): "
            "end the prompt template with a fixed cue such as 'Answer:' or change --answer-prefix"
        )
    ids = found.pop()
    unk = getattr(tokenizer, "unk_token_id", None)
    decoded = tokenizer.decode(list(ids))
    expected = text if fold else prefix + text
    if (unk is not None and unk in ids) or decoded.strip() != expected.strip():
        raise RaftlmError(
            f"grid string {text!r} cannot be produced by this tokenizer (it decodes to {decoded!r}): "
            "choose grid strings made of tokens in the model's vocabulary"
        )
    return ids


def bind_answer(tokenizer, grid: Grid, probes: list[str], answer_prefix: str = " ") -> AnswerFormat:
    """Decide how the model emits ``answer_prefix + str(y)`` after prompts like ``probes``."""
    probes = [p for p in probes if p] or ["Answer:"]
    errors = []
    for fold in (True, False) if answer_prefix else (False,):
        try:
            cands = tuple(answer_ids(tokenizer, probes, answer_prefix, fold, s) for s in grid.strings)
        except RaftlmError as err:
            errors.append(str(err))
            continue
        if len(set(cands)) != len(cands):
            raise RaftlmError(
                f"grid strings {list(grid.strings)} map to identical token ids: use distinct strings"
            )
        return AnswerFormat(answer_prefix, fold, cands)
    raise RaftlmError(errors[-1])


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # (B, T), left-padded
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    bidirectional: bool = False  # let every prompt token attend to every other (figure 3 ablation)
    hidden: torch.Tensor | None = None  # (B, T, D) cached states below the trained blocks (cache.py)

    def model_mask(self) -> torch.Tensor:
        """The mask to hand the model: 2D padding mask (causal), or a 4D boolean mask in which each
        token sees every non-pad token of its row (transformers uses a 4D mask as given)."""
        if not self.bidirectional:
            return self.attention_mask
        b, t = self.attention_mask.shape
        return self.attention_mask.bool()[:, None, None, :].expand(b, 1, t, t)

    def model_inputs(self) -> dict:
        """Keyword arguments of a model call: token ids, or the cached states as ``inputs_embeds``."""
        tokens = {"input_ids": self.input_ids} if self.hidden is None else {"inputs_embeds": self.hidden}
        return {**tokens, "attention_mask": self.model_mask(), "position_ids": self.position_ids}

    def select(self, rows: torch.Tensor, width: int) -> PromptBatch:
        """Rows ``rows`` and the last ``width`` columns: with left padding, the same prompts with fewer
        pad columns when ``width`` covers the longest selected row."""
        pick = lambda t: None if t is None else t[rows][:, -width:]  # noqa: E731
        return PromptBatch(
            pick(self.input_ids),
            pick(self.attention_mask),
            pick(self.position_ids),
            self.bidirectional,
            pick(self.hidden),
        )

    def to(self, device) -> PromptBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.position_ids),
            self.bidirectional,
            move(self.hidden),
        )


def _leading_special(tokenizer) -> int:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    special = set(tokenizer.all_special_ids)
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def encode_prompts(
    tokenizer, fmt: AnswerFormat | None, texts: list[str], max_length: int, truncated: list | None = None
) -> list[list[int]]:
    """Token ids of each prompt (special tokens included). Over-long prompts lose tokens on the left,
    after the leading special tokens, so the answer cue at the end survives; a warning says so, and
    ``truncated`` (a list, when given) gets one bool per prompt. ``fmt=None`` (encoders) encodes the
    bare text."""
    keep = max_length - (fmt.max_len if fmt is not None else 0)
    n_special = _leading_special(tokenizer)
    out, cut = [], 0
    for text in texts:
        ids = list(
            tokenizer(fmt.prompt_text(text) if fmt is not None else text, add_special_tokens=True)[
                "input_ids"
            ]
        )
        long = len(ids) > keep
        if long:
            ids = ids[:n_special] + ids[len(ids) - (keep - n_special) :]
            cut += 1
        out.append(ids)
        if truncated is not None:
            truncated.append(long)
    if cut:
        warn(
            f"{cut} prompt(s) longer than max_length={max_length} were truncated from the left "
            "(the answer cue is kept): raise --max-length to keep all context",
        )
    return out


def left_pad(
    seqs: list[list[int]], pad_id: int, bidirectional: bool = False, width: int | None = None
) -> PromptBatch:
    """Left-pad to a batch (to ``width`` tokens if given); position ids count real tokens only, so
    padding cannot shift results."""
    width = max(max(len(s) for s in seqs), width or 0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(ids, mask, pos, bidirectional)


def full_precision(x: torch.Tensor):
    """Autocast off (for ``x``'s device): under bf16 autocast a Linear's output is rounded to bf16
    (8 mantissa bits: steps of 1/64 between 2 and 4, of 1/8 near 20)."""
    return torch.autocast(x.device.type, enabled=False)


def linear_in_weight_dtype(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``F.linear`` in the weight's dtype even under autocast: no bf16 copy of the weight, no rounding.

    Always one 2-D matmul: on a non-contiguous (B, k, D) view, such as HF's ``logits_to_keep`` slice,
    with a weight that needs no gradient, ``F.linear`` runs a batched matmul against the broadcast
    weight (Gemma's 262k x 640 head, batch 8: 629 ms vs 191 ms forward + backward)."""
    flat = x.reshape(-1, x.shape[-1])
    with full_precision(x):
        flat = flat.to(weight.dtype)
        if bias is None and weight.device.type == "cpu" and weight.shape[0] > TALL:
            out = TallWeightLinear.apply(flat, weight)
        else:
            out = torch.nn.functional.linear(flat, weight, bias)
    return out.view(*x.shape[:-1], -1)


TALL = 16_384  # output rows (vocabulary) from which a CPU head runs as ``TallWeightLinear``


class TallWeightLinear(torch.autograd.Function):
    """``x @ W.T`` for a tall weight (an LM head: V x D, V >> D) and few rows of ``x``, on a CPU.

    MKL runs ``F.linear``'s ``x @ W.T`` for a few rows on a slow path; ``W @ x.T`` reads the weight in its
    stored order. Both matmuls have rows that MKL runs slowly (3, 7, 11, 13-15 ...), so rows are padded
    with zeros: the forward's past 8 rows to a multiple of 8, the backward's (``grad @ W``) past 1 row to a
    multiple of 4. If the weight trains, its gradient is ``grad.T @ x``. ``benchmarks/head_matmul.py``
    times it against ``F.linear`` for 1-32 rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        rows = len(x)
        return torch.mm(weight, _zero_rows(x, 8 if rows > 8 else 1).t()).t()[:rows].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        rows = len(grad)
        grad_x = (_zero_rows(grad, 4 if rows > 1 else 1) @ weight)[:rows] if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ x if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def _zero_rows(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """``t`` with rows of zeros appended up to a multiple of ``multiple`` rows."""
    pad = -len(t) % multiple
    return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


class GridLogProbs:
    """Computes log p(str(y) | x) for all grid values; differentiable (used by the RAFT loss)."""

    def __init__(self, fmt: AnswerFormat, pad_id: int, normalize_grid: bool = False):
        """``normalize_grid``: return log-probabilities normalized over the grid (table 16); with
        single-token grid strings only the grid rows of the LM head are applied."""
        self.fmt = fmt
        self.pad_id = pad_id
        self.normalize_grid = normalize_grid
        self.first_ids = torch.tensor([c[0] for c in fmt.candidates])
        self._build_trie()

    def _build_trie(self) -> None:
        """Distinct candidate prefixes c[:-1] (the 'paths') and, per candidate, which path scores it."""
        cands = self.fmt.candidates
        paths = sorted({c[:-1] for c in cands if len(c) > 1})
        self.paths = paths
        width = max((len(p) for p in paths), default=0)
        n = len(cands)
        self.path_of = torch.zeros(n, dtype=torch.long)
        self.tail_ids = torch.zeros((n, max(width, 1)), dtype=torch.long)
        self.tail_mask = torch.zeros((n, max(width, 1)), dtype=torch.bool)
        for g, c in enumerate(cands):
            if len(c) > 1:
                self.path_of[g] = paths.index(c[:-1])
                self.tail_ids[g, : len(c) - 1] = torch.tensor(c[1:])
                self.tail_mask[g, : len(c) - 1] = True

    def __call__(self, model, batch: PromptBatch, hidden: bool = False):
        """(B, G) log-probabilities; with ``hidden`` also the final hidden states (B, T, D), after the final
        norm, of the same forward pass (a head correction reads both: ``heads.RAILCorrectionHead``)."""
        dev = batch.input_ids.device
        if not hidden and self.normalize_grid and self.fmt.single_token and hasattr(model, "get_decoder"):
            return self._grid_rows(model, batch)
        # (a wrapper such as DDP must be called as a whole so it syncs gradients: full head, then the grid)
        multi = bool(self.paths)
        states = {"output_hidden_states": True} if hidden else {}
        out = model(**batch.model_inputs(), use_cache=multi, logits_to_keep=1, **states)
        last = out.logits[:, -1].float()
        lp = last[:, self.first_ids.to(dev)] - torch.logsumexp(last, dim=-1, keepdim=True)
        if multi:
            lp = lp + self._tails(model, batch, out.past_key_values)
        lp = torch.log_softmax(lp, dim=-1) if self.normalize_grid else lp
        return (lp, out.hidden_states[-1].float()) if hidden else lp

    def _grid_rows(self, model, batch: PromptBatch) -> torch.Tensor:
        """log softmax over the grid of h_L @ E_out[grid]^T: G rows of the LM head instead of V."""
        out = model.get_decoder()(**batch.model_inputs())
        hidden = out.last_hidden_state[:, -1]
        weight = model.get_output_embeddings().weight[self.first_ids.to(hidden.device)].float()
        logits = linear_in_weight_dtype(hidden, weight)  # float32, as lm_head_in_float32
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)

    def _tails(self, model, batch: PromptBatch, cache) -> torch.Tensor:
        """Sum of log-probs of candidate tokens 2..k, reading every path in one cached forward."""
        dev = batch.input_ids.device
        B, P = batch.input_ids.shape[0], len(self.paths)
        width = max(len(p) for p in self.paths)
        path_ids = torch.full((P, width), self.pad_id, dtype=torch.long, device=dev)
        path_mask = torch.zeros((P, width), dtype=torch.long, device=dev)
        for i, p in enumerate(self.paths):
            path_ids[i, : len(p)] = torch.tensor(p, device=dev)
            path_mask[i, : len(p)] = 1
        cache.batch_repeat_interleave(P)
        mask = torch.cat([batch.attention_mask.repeat_interleave(P, 0), path_mask.repeat(B, 1)], dim=1)
        start = batch.attention_mask.sum(-1).repeat_interleave(P)[:, None]
        pos = start + torch.arange(width, device=dev)[None]
        out = model(
            input_ids=path_ids.repeat(B, 1),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=False,
        )
        logits = out.logits.float().view(B, P, width, -1)
        lse = torch.logsumexp(logits, dim=-1)  # (B, P, width)
        path_of, tail_ids = self.path_of.to(dev)[:, None], self.tail_ids.to(dev)
        steps = torch.arange(tail_ids.shape[1], device=dev)[None, :]
        # picked[b, g, i] = log p(tail_ids[g, i] | prompt_b, path_of[g][:i+1]), without a (B, G, W, V) copy
        picked = logits[:, path_of, steps, tail_ids] - lse[:, path_of, steps]
        return (picked * self.tail_mask.to(dev)).sum(-1)


def naive_log_probs(
    model, tokenizer, fmt: AnswerFormat, texts: list[str], max_length: int = 4096
) -> torch.Tensor:
    """Reference: re-encode prompt+candidate for every (text, grid value) pair, one at a time."""
    rows = []
    for ids in encode_prompts(tokenizer, fmt, texts, max_length):
        row = []
        for cand in fmt.candidates:
            seq = torch.tensor([ids + list(cand)])
            logits = model(input_ids=seq).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            n = len(ids)
            row.append(sum(logp[n - 1 + i, tok] for i, tok in enumerate(cand)))
        rows.append(torch.stack(row))
    return torch.stack(rows)
