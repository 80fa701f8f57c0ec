"""A causal LM plus its answer format: grid probabilities, decoding and the decision rules.

This is what a run directory loads back into: ``raftlm.json`` holds the grid, the target scaling,
the prompt template and the answer format; the weights are an ordinary causal LM.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.special import logsumexp
from tqdm.auto import tqdm

from raftlm import decoders
from raftlm.config import INT8_BF16
from raftlm.core import RaftlmError, warn, warn_slow_bf16
from raftlm.grid import Grid, TargetScaler
from raftlm.rows import swapped
from raftlm.scoring import AnswerFormat, GridLogProbs, PromptBatch, bind_answer, encode_prompts, left_pad

if TYPE_CHECKING:
    from raftlm.models import Int8Maxima

# rows whose prompts SmoothQuant's maxima are measured on: of 16, 64 and 256 (alpha 0.75), 256 moved the
# validation predictions least (benchmarks/int8_layers.py, results/int8_maxima_rows.md)
INT8_MAXIMA_ROWS = 256


@dataclass
class Predictions:
    """Point predictions in data units; grid probabilities (N, G) and their entropy when a grid rule ran."""

    values: np.ndarray
    probs: np.ndarray | None = None
    entropy: np.ndarray | None = None
    # per row, text decoders (greedy, sample-rail): how many of its decoded texts were not a number (each
    # counts as 0.0, the paper's eq. 1); None when no text was decoded
    unparsed: np.ndarray | None = None
    truncated: np.ndarray | None = None  # per row: the prompt was longer than max_length (cut on the left)
    # per row (data units): a head correction added to the grid distribution's mean (raft-head); the
    # prediction's distribution is the grid distribution shifted by it
    shift: np.ndarray | None = None

    @property
    def n_unparsed(self) -> int:
        """Decoded texts, over all rows, that were not a number."""
        return 0 if self.unparsed is None else int(self.unparsed.sum())

    @property
    def grid_alone(self) -> np.ndarray | None:
        """The grid probabilities when they alone make the prediction (what ``metrics.collapse`` judges):
        None without a grid, and for raft-head, whose correction may carry the signal where its grid died."""
        return self.probs if self.shift is None else None


# while ``unparsed_said_once`` runs: [unparsed, decoded, max_new_tokens] summed over its predict calls
_HELD: contextvars.ContextVar[list | None] = contextvars.ContextVar("raftlm_unparsed_held", default=None)


@contextlib.contextmanager
def unparsed_said_once():
    """Within it, the predict calls' "N of M decoded texts were not a number" warnings are summed and said
    once, as one total, when it ends (a streamed prediction decodes its file chunk by chunk: one line per
    chunk would repeat itself)."""
    held = [0, 0, 0]
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
        if held[0]:
            warn_unparsed(*held)


def warn_unparsed(n: int, total: int, max_new_tokens: int) -> None:
    """Decoded texts that were not a number, said (they count as 0.0, which moves the prediction); nothing
    when ``n`` is 0."""
    if (held := _HELD.get()) is not None:
        held[0], held[1], held[2] = held[0] + n, held[1] + total, max_new_tokens
        return
    if n:
        warn(
            f"{n} of {total} decoded texts were not a number and count as 0.0 (the paper's eq. 1; each row's "
            f'"unparsed" says how many of its own): raise max_new_tokens ({max_new_tokens}) if numbers were cut '
            "off, or decode with rail, which reads the grid's probabilities instead of text"
        )


def autocast(bf16: bool, device: str = "cpu"):
    if not bf16:
        return contextlib.nullcontext()
    if device == "cpu":
        warn_slow_bf16()
    return torch.autocast(device, dtype=torch.bfloat16)


def row_seed(seed: int, text: str) -> int:
    """The sampling seed of one prompt: a function of ``seed`` and the prompt alone (not of its position or
    its batch-mates), below 2**63."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Predictor:
    """Model + tokenizer + grid + answer format: scores and decodes. ``Predictor.create`` binds a model
    to a grid; ``run.load_run`` reads one back from a run directory."""

    # speed switches (benchmarks/speed.py measures them against their baselines)
    bucket: bool = True  # sort prompts by length into batches (less padding)
    pad_to: int | None = None  # pad every batch to this many tokens (the fixed-padding baseline)
    frozen_states = None  # (texts, HiddenStore, k) inside cache.cached_prompts: those texts' cached states

    def __init__(
        self,
        model,
        tokenizer,
        grid: Grid,
        fmt: AnswerFormat | None,
        scaler: TargetScaler,
        template: str,
        *,
        normalize_grid: bool = False,
        max_length: int = 512,
        method: str = "none",
        head=None,
        bidirectional: bool = False,
        extra: dict | None = None,
    ):
        from raftlm.models import lm_head_in_float32

        lm_head_in_float32(model)
        self.head, self.bidirectional, self.extra = head, bidirectional, dict(extra or {})
        self.model, self.tokenizer, self.grid, self.fmt = model, tokenizer, grid, fmt
        self.scaler, self.template, self.normalize_grid, self.max_length, self.method = (
            scaler,
            template,
            normalize_grid,
            max_length,
            method,
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # SmoothQuant's per-layer input maxima (``record_int8_maxima``): `to(dtype="int8")` smooths with them
        self.int8_maxima: Int8Maxima | None = None
        # normalized RAIL over single-token strings needs only the grid rows of the LM head
        self.use_grid_rows(normalize_grid and fmt is not None)

    def compile(self) -> None:
        """torch.compile the model's forward for inference (a switch: same numbers within float
        tolerance; worth it for long prediction jobs, the first batches pay the compile time)."""
        self.model.forward = torch.compile(self.model.forward, dynamic=True)

    def __getstate__(self) -> dict:
        """A compiled model pickles without its compiled forward (a function pickle cannot take: a fitted
        estimator with eval.compile did not pickle), and is compiled again when unpickled."""
        state = dict(self.__dict__)
        model = state.get("model")
        if model is not None and "forward" in vars(model):
            plain = copy.copy(model)  # (its __dict__ only: the weights are shared, not copied)
            del plain.__dict__["forward"]
            state.update(model=plain, _recompile=True)
        return state

    def __setstate__(self, state: dict) -> None:
        recompile = state.pop("_recompile", False)
        self.__dict__.update(state)
        if recompile:
            self.compile()

    def use_grid_rows(self, on: bool) -> None:
        """Switch grid-normalized scoring (on for normalized grids): the same predictions; single-token
        grids then read G instead of V head rows."""
        self.scorer = GridLogProbs(self.fmt, self.pad_id, normalize_grid=on) if self.fmt is not None else None

    @classmethod
    def create(
        cls,
        model,
        tokenizer,
        grid: Grid,
        scaler: TargetScaler,
        probes: list[str],
        template: str = "{text}",
        *,
        answer_prefix: str = " ",
        normalize_grid: bool = False,
        max_length: int = 512,
        method: str = "none",
        bind: bool = True,
        bidirectional: bool = False,
    ) -> Predictor:
        """``bind=False`` for encoders, which never emit an answer (no answer format)."""
        fmt = bind_answer(tokenizer, grid, probes[:8], answer_prefix) if bind else None
        context = getattr(model.config, "max_position_embeddings", None)
        if context and max_length > context:
            warn(
                f"max_length={max_length} exceeds the model's context ({context}); using {context}",
            )
            max_length = context
        return cls(
            model,
            tokenizer,
            grid,
            fmt,
            scaler,
            template,
            normalize_grid=normalize_grid,
            max_length=max_length,
            method=method,
            bidirectional=bidirectional,
        )

    # --- batching -------------------------------------------------------------------------------

    def encode(self, texts: list[str]) -> list[list[int]]:
        cut: list[bool] = []
        ids = encode_prompts(self.tokenizer, self.fmt, texts, self.max_length, cut)
        self.last_truncated = np.asarray(cut, dtype=bool)  # read by predict() right after (one thread)
        return ids

    def truncated(self, texts: list[str]) -> np.ndarray:
        """Which texts' prompts are longer than ``max_length`` (and would be cut on the left)."""
        self.encode(texts)
        return self.last_truncated

    def _batches(self, texts: list[str], batch_size: int, desc: str | None):
        """Batches with their indices: length-bucketed (sorted by token count, so padding is minimal)
        when ``self.bucket``; otherwise in input order, padded to ``self.pad_to`` tokens if set."""
        from raftlm.cache import stack_states

        ids = self.encode(texts)
        order = np.argsort([len(s) for s in ids], kind="stable") if self.bucket else np.arange(len(ids))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        cached = self.frozen_states is not None and self.frozen_states[0] == list(texts)
        for chunk in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
            batch = left_pad([ids[i] for i in chunk], self.pad_id, self.bidirectional, self.pad_to)
            if cached:
                batch.hidden = stack_states(self.frozen_states[1], chunk, batch.input_ids.shape[1])
            yield chunk, batch

    def to(self, device: str = "auto", dtype: str = "auto") -> Predictor:
        """Move the model to ``device`` with its weights stored in ``dtype`` (``--device``/``--dtype``
        names: auto is the GPU and bfloat16 when there is one, else the CPU and float32; int8 quantizes
        the Linear layers, CPU only, with SmoothQuant when the predictor has ``int8_maxima``). A predictive
        head stays float32, and the LM head computes in float32 either way."""
        from raftlm.models import attach_head, cast_weights, detach_head, resolve_device, resolve_dtype

        dev = resolve_device(device)
        head = detach_head(self.model)
        maxima = self.int8_maxima.values if self.int8_maxima is not None else None
        cast_weights(self.model, resolve_dtype(dtype, dev), maxima).to(dev)
        if head is not None:
            attach_head(self.model, head.to(dev))
        return self

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (``to()`` moves them)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (float32 unless loaded otherwise; bf16 autocast
        at inference does not change it); ``torch.int8`` for int8 Linear layers (``--dtype int8``)."""
        from raftlm.models import is_int8

        return torch.int8 if is_int8(self.model) else next(self.model.parameters()).dtype

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as the CLI, the server's /info and its startup line name it: ``int8`` says which
        int8 ran (``int8 + SmoothQuant`` with the run's recorded maxima, else plain ``int8``)."""
        from raftlm.models import is_smoothed

        name = str(self.dtype).removeprefix("torch.")
        return f"{name} + SmoothQuant" if name == "int8" and is_smoothed(self.model) else name

    def record_int8_maxima(
        self, examples, source: str, rows: int = INT8_MAXIMA_ROWS, batch_size: int = 16
    ) -> Int8Maxima:
        """SmoothQuant's statistics for ``--dtype int8``, kept as ``self.int8_maxima``: each int8 layer's
        per-channel input maxima over up to ``rows`` of ``examples`` spread evenly through them (each order
        of a symmetric pair), in length-bucketed batches of ``batch_size`` (pad positions do not count).
        Needs float weights."""
        from raftlm.models import Int8Maxima, activation_maxima

        if self.dtype == torch.int8:
            raise RaftlmError(
                "int8 activation maxima are measured on float weights: load the run without --dtype int8"
            )
        examples = list(examples)
        picked = examples[:: max(1, len(examples) // rows)][:rows]
        texts = self.texts_of(picked)
        # (a predictive head stays float32: activation_maxima leaves its layers out)
        values = activation_maxima(self.model, lambda m: self.predict(texts, batch_size=batch_size))
        self.int8_maxima = Int8Maxima(values, source, len(texts))
        return self.int8_maxima

    def _to(self, batch: PromptBatch) -> PromptBatch:
        return batch.to(self.device)

    # --- grid scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def _map_batches(
        self, fn, shape: tuple, texts: list[str], batch_size: int, bf16: bool, desc: str | None
    ) -> np.ndarray:
        """Run ``fn(model, batch)`` over length-bucketed batches in eval mode; rows back in input order."""
        was_training = self.model.training
        self.model.eval()
        out = np.zeros((len(texts), *shape), dtype=np.float64)
        try:
            for chunk, batch in self._batches(texts, batch_size, desc):
                with autocast(bf16, self.device.type), self._skip_frozen(batch):
                    out[chunk] = fn(self.model, self._to(batch)).double().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def _skip_frozen(self, batch: PromptBatch):
        """With cached states in the batch, the frozen blocks they stand for are identities."""
        from raftlm.cache import skip_frozen

        return skip_frozen(self.model, self.frozen_states[2] if batch.hidden is not None else 0)

    def grid_log_probs(
        self, texts: list[str], batch_size: int = 16, bf16: bool = False, desc: str | None = None
    ) -> np.ndarray:
        """log p(str(y) | x) for every text and grid value, shape (N, G); renormalized over the grid (in
        log space) when ``normalize_grid``: the grid-rows scorer already is, and a multi-token grid whose
        mass underflows to 0 still has a distribution (not 0/0 = NaN)."""
        logp = self._map_batches(self.scorer, (len(self.grid.values),), texts, batch_size, bf16, desc)
        return logp - logsumexp(logp, axis=-1, keepdims=True) if self.normalize_grid else logp

    def head_values(
        self, texts: list[str], batch_size: int = 16, bf16: bool = False, desc: str | None = None
    ) -> np.ndarray:
        """Predictive-head outputs (grid units), no decoding."""
        return self._map_batches(self.head, (), texts, batch_size, bf16, desc)

    # --- decoding ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        texts: list[str],
        num_return_sequences: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        max_new_tokens: int = 6,
        batch_size: int = 16,
        bf16: bool = False,
        seed: int = 0,
        desc: str | None = None,
    ) -> list[list[str]]:
        """Decoded continuations per text (greedy, or ancestral sampling at ``temperature``). Sampling
        draws each prompt's sequences from a seed of its own (``row_seed``: ``seed`` and the prompt), one
        prompt at a time, so a row gets the same samples whatever rows it is predicted with: in a file,
        alone through the Python API, or in one of the server's micro-batches."""
        torch.manual_seed(seed)
        if do_sample:
            batch_size = 1
        was_training = self.model.training
        self.model.eval()
        out: list[list[str]] = [[] for _ in texts]
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if do_sample
            else {"do_sample": False}
        )
        try:
            for chunk, batch in self._batches(texts, batch_size, desc):
                batch = self._to(batch)
                if do_sample:
                    torch.manual_seed(row_seed(seed, texts[chunk[0]]))
                with autocast(bf16, self.device.type):
                    gen = self.model.generate(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=num_return_sequences,
                        pad_token_id=self.pad_id,
                        **sampling,
                    )
                decoded = self.tokenizer.batch_decode(
                    gen[:, batch.input_ids.shape[1] :], skip_special_tokens=True
                )
                for j, i in enumerate(chunk):
                    out[i] = decoded[j * num_return_sequences : (j + 1) * num_return_sequences]
        finally:
            self.model.train(was_training)
        return out

    def predict(
        self,
        texts: list[str],
        decoder: str = "rail",
        batch_size: int = 16,
        num_samples: int = 32,
        temperature: float = 1.0,
        max_new_tokens: int = 6,
        bf16: bool = False,
        seed: int = 0,
        desc: str | None = None,
    ) -> Predictions:
        """Point predictions in data units with any decoder of ``decoders.DECODERS`` (a head model
        predicts with its head: ``decoder_name``); ``truncated`` says which prompts were cut to
        ``max_length``."""
        if bf16 and self.dtype == torch.int8:
            raise RaftlmError(INT8_BF16)
        preds = self._predict(
            texts,
            self.decoder_name(decoder),
            batch_size,
            num_samples,
            temperature,
            max_new_tokens,
            bf16,
            seed,
            desc,
        )
        preds.truncated = getattr(self, "last_truncated", None)
        if preds.truncated is None or len(preds.truncated) != len(texts):
            preds.truncated = np.zeros(len(texts), dtype=bool)
        return preds

    def decoder_name(self, decoder: str) -> str:
        """What predictions decode with when the setting is ``decoder`` (``Method.decoder_name``): the
        setting, or for a head run "head" (raft-head: also mode or median of its shifted distribution);
        a decoder a head would ignore is refused."""
        if self.head is None:
            return decoder
        from raftlm import methods

        return methods.get(self.method).decoder_name(decoder, self.method)

    def _decode(self, decoder: str, probs: np.ndarray) -> np.ndarray:
        """Grid decoder ``decoder`` ("head": RAIL) over ``probs``, in grid units."""
        return decoders.decode(
            "rail" if decoder == "head" else decoder, self.grid.array, probs, self.normalize_grid
        )

    @property
    def has_grid(self) -> bool:
        """Whether predictions carry a grid distribution (grid probabilities, uncertainty summary, grid
        intervals): every grid model, and of the heads the correction head (raft-head: RAIL + a correction),
        whose distribution is the grid's shifted by it; not the other heads nor an encoder."""
        return (self.head is None and self.fmt is not None) or hasattr(self.head, "scores")

    @property
    def pair(self) -> tuple[str, str] | None:
        """The template's symmetric pair (``data.pair_swap``), whose two orders predictions average."""
        pair = self.extra.get("pair_swap")
        return tuple(pair) if pair else None

    def texts_of(self, examples) -> list[str]:
        """The prompts to score for ``examples``: each one's, and with a symmetric pair then each one's
        other order (``average_orders`` folds them back)."""
        texts = [e.text for e in examples]
        if self.pair is None:
            return texts
        if any(e.fields is None for e in examples):
            raise RaftlmError(
                f"this run averages both orders of the pair {list(self.pair)}: give rows with those fields "
                "(a file, dicts or a DataFrame), not finished prompts"
            )
        return texts + [swapped(self.template, e.fields, self.pair) for e in examples]

    def average_orders(self, preds: Predictions, decoder: str) -> Predictions:
        """Predictions of ``texts_of``'s 2N prompts folded into N: the mean of each example's two grid
        distributions decoded by ``decoder`` (for RAIL: the mean of the two predictions), or the mean of
        the two numbers for heads and text decoders."""
        if self.pair is None:
            return preds
        n = len(preds.values) // 2
        cut = None if preds.truncated is None else preds.truncated[:n] | preds.truncated[n:]
        decoder = self.decoder_name(decoder)
        if preds.shift is not None:  # a shifted grid distribution: both orders' probabilities and shifts
            probs, shift = (preds.probs[:n] + preds.probs[n:]) / 2, (preds.shift[:n] + preds.shift[n:]) / 2
            values = (  # RAIL is linear: the mean of the two predictions
                (preds.values[:n] + preds.values[n:]) / 2
                if decoder == "head"
                else self.scaler.to_data(self._decode(decoder, probs)) + shift
            )
            return Predictions(values, probs, decoders.entropy(probs), truncated=cut, shift=shift)
        if preds.probs is None or decoder not in decoders.GRID_DECODERS:
            values = (preds.values[:n] + preds.values[n:]) / 2
            unparsed = None if preds.unparsed is None else preds.unparsed[:n] + preds.unparsed[n:]
            return Predictions(values, unparsed=unparsed, truncated=cut)
        probs = (preds.probs[:n] + preds.probs[n:]) / 2
        g = self._decode(decoder, probs)
        return Predictions(self.scaler.to_data(g), probs, decoders.entropy(probs), truncated=cut)

    def _predict(
        self, texts, decoder, batch_size, num_samples, temperature, max_new_tokens, bf16, seed, desc
    ):
        if self.head is not None and self.has_grid:  # raft-head: RAIL + a correction
            return self._shifted_grid(texts, decoder, batch_size, bf16, desc)
        if self.head is not None:
            return Predictions(self.scaler.to_data(self.head_values(texts, batch_size, bf16, desc)))
        if self.fmt is None:
            raise RaftlmError(
                "this encoder model has no head to predict with: train it with an encoder-* method"
            )
        if self.bidirectional and decoder in decoders.TEXT_DECODERS:
            raise RaftlmError(
                "decoding text needs causal attention: use --decoder rail with --attention bidirectional"
            )
        if decoder in decoders.GRID_DECODERS:
            probs = np.exp(self.grid_log_probs(texts, batch_size, bf16, desc))
            g = self._decode(decoder, probs)
            return Predictions(self.scaler.to_data(g), probs, decoders.entropy(probs))
        if decoder not in decoders.TEXT_DECODERS:
            raise RaftlmError(f"unknown decoder {decoder!r}: use one of {list(decoders.DECODERS)}")
        sample = decoder == "sample-rail"
        k = num_samples if sample else 1
        texts_out = self.generate(
            texts,
            k,
            sample,
            temperature,
            max_new_tokens,
            batch_size,  # (sampling runs one prompt, its k sequences, at a time)
            bf16,
            seed,
            desc,
        )
        parsed = [[self._parse(s) for s in row] for row in texts_out]
        unparsed = np.array([int(np.isnan(row).sum()) for row in parsed], dtype=np.int64)
        warn_unparsed(int(unparsed.sum()), k * len(texts), max_new_tokens)
        # eq. 1: a non-numeric decode counts as 0.0 (in the model's output units, then mapped back)
        g = np.array([np.mean(np.nan_to_num(row, nan=0.0)) for row in parsed])
        return Predictions(self.scaler.to_data(g), unparsed=unparsed)

    def _shifted_grid(self, texts, decoder, batch_size, bf16, desc) -> Predictions:
        """A correction head's predictions with their distribution: the grid probabilities and the
        correction from one pass (``RAILCorrectionHead.scores``); the prediction ("head") is RAIL + the
        correction, the head's own output (mode, median: the grid's + the correction), and ``shift`` the
        correction in data units."""
        out = self._map_batches(self.head.scores, (len(self.grid.values) + 1,), texts, batch_size, bf16, desc)
        logp, correction = out[:, :-1], out[:, -1]
        if self.normalize_grid:
            logp = logp - logsumexp(logp, axis=-1, keepdims=True)
        probs = np.exp(logp)
        g = self._decode(decoder, probs) + correction
        shift = self.scaler.to_data(correction) - self.scaler.to_data(0.0)  # affine: the slope's share
        return Predictions(self.scaler.to_data(g), probs, decoders.entropy(probs), shift=shift)

    def _parse(self, text: str) -> float:
        """A decoded answer as a number: a non-numeric grid string ('b', 'March', '<3.5>') maps to its
        value; otherwise eq. 1's float parsing (NaN when nothing numeric, counted as 0.0)."""
        head = text.strip()
        for s, v in zip(self.grid.strings, self.grid.values, strict=True):
            if head.startswith(s) and np.isnan(decoders.parse_float(s, np.nan)):
                return v
        return decoders.parse_float(text, np.nan)
