"""Fine-tuning on transformers' Trainer: a thin subclass whose ``compute_loss`` calls a raftlm loss.

Checkpointing, resume, schedules, gradient accumulation, bf16 autocast and multi-process training
(``accelerate launch``) all come from Trainer. Validation runs the RAIL predictor and reports RMSE in
data units; the checkpoint with the best validation RMSE is reloaded at the end (appendix D).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.optimization import Adafactor
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from raftlm import methods
from raftlm.cache import HiddenStore, build_store, cached_prompts, frozen_blocks, skip_frozen, stack_states
from raftlm.config import Config
from raftlm.core import Example, RaftlmError, StoppedClock, cpu_only, warn, warn_slow_bf16
from raftlm.decoders import GRID_DECODERS
from raftlm.io import (
    TRAINING_LOG,
    atomic_write,
    latest_complete_checkpoint,
    launch_size,
    main_rank,
    to_json,
    write_text,
)
from raftlm.metrics import DEAD_GRID, collapse, regression_metrics
from raftlm.models import decoder_layers
from raftlm.predictor import Predictor
from raftlm.scoring import PromptBatch, answer_ids, left_pad

log = logging.getLogger(__name__)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def build_features(
    predictor: Predictor, examples: list[Example], method: str, ce_decimals: int | None
) -> list[dict]:
    """Per example: prompt token ids, the grid-space target, and (ce) the answer's token ids + EOS."""
    texts = [e.text for e in examples]
    targets = predictor.scaler.to_grid([e.target for e in examples])
    prompts = predictor.encode(texts)
    feats = [
        {"index": i, "prompt_ids": p, "target": float(t), "answer_ids": []}
        for i, (p, t) in enumerate(zip(prompts, targets, strict=True))
    ]
    if methods.get(method).trains_on_answer:
        fmt, cache = predictor.fmt, {}
        # the answer ends with EOS, as in any SFT: a CE model learns to stop, so greedy decoding
        # yields '3', not '3333' (the EOS token is part of the loss; RAIL reads only str(y)'s tokens)
        eos_id = predictor.tokenizer.eos_token_id
        eos = [eos_id] if eos_id is not None else []
        for f in feats:
            s = (
                predictor.grid.nearest_string(f["target"])
                if ce_decimals is None
                else f"{f['target']:.{ce_decimals}f}"
            )
            if s not in cache:
                cache[s] = (
                    list(answer_ids(predictor.tokenizer, texts[:8], fmt.answer_prefix, fmt.fold_prefix, s))
                    + eos
                )
            f["answer_ids"] = cache[s]
    return feats


def make_collator(pad_id: int, bidirectional: bool = False, store: HiddenStore | None = None):
    """Left-padded batches; with a hidden-state ``store``, also the cached states (zeros at pads)."""

    def collate(features: list[dict]) -> dict:
        batch = left_pad([f["prompt_ids"] + f["answer_ids"] for f in features], pad_id, bidirectional)
        extra = {}
        if store is not None:
            extra["hidden"] = stack_states(store, [f["index"] for f in features], batch.input_ids.shape[1])
        return {
            **extra,
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids,
            "targets": torch.tensor([f["target"] for f in features], dtype=torch.float32),
            "answer_len": torch.tensor([len(f["answer_ids"]) for f in features], dtype=torch.long),
            "bidirectional": bidirectional,
        }

    return collate


def length_chunks(attention_mask: torch.Tensor, chunks: int) -> list[tuple[torch.Tensor, int]]:
    """A left-padded batch as up to ``chunks`` groups of rows of similar length, shortest first: (rows,
    width), width = the group's longest row, so that each group drops the pad columns it does not need.
    Random batches of real prompts waste a third of their tokens on padding (STS-B-1K, batch 16); two
    chunks cut the tokens run by a fifth (``benchmarks/length_chunks.py``), and cutting where the fewest
    tokens run (``cheapest_cuts``) rather than into equal halves by another 8 % (``benchmarks/speed.py``)."""
    lengths = attention_mask.sum(-1)
    if chunks == 1:
        return [(torch.arange(len(lengths)), attention_mask.shape[1])]
    order = torch.argsort(lengths, stable=True)
    ends = [*cheapest_cuts(tuple(lengths[order].tolist()), min(chunks, len(order))), len(order)]
    return [(order[a:b], int(lengths[order[b - 1]])) for a, b in zip([0, *ends[:-1]], ends, strict=True)]


@functools.lru_cache(maxsize=4096)
def cheapest_cuts(lengths: tuple[int, ...], groups: int) -> tuple[int, ...]:
    """Where to cut ascending ``lengths`` into ``groups`` non-empty runs so that the fewest tokens run (each
    run's size x its last, longest, length; summed): dynamic programming over the last cut. Example:
    (3, 3, 3, 10) in 2 -> (3,): 3 x 3 + 1 x 10 = 19 tokens, where equal halves run 2 x 3 + 2 x 10 = 26."""
    if groups == 1:
        return ()

    def tokens(cut: int) -> int:
        ends = [*cheapest_cuts(lengths[:cut], groups - 1), cut, len(lengths)]
        return sum((b - a) * lengths[b - 1] for a, b in zip([0, *ends[:-1]], ends, strict=True))

    last = min(range(groups - 1, len(lengths)), key=tokens)
    return (*cheapest_cuts(lengths[:last], groups - 1), last)


class RealTokens:
    """An MLP's forward on the real tokens of the batch it is set to (``real``: the (B, T) mask, ``index``: its
    flat positions), zeros at the pads. One per MLP, kept on it (``mlp._real_tokens``): installing the same
    object for every batch keeps a compiled block's graph valid (``compiled_blocks``), where a new wrapper
    per batch would recompile it."""

    def __init__(self, forward):
        self.forward = forward
        self.real: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        real, index = self.real, self.index
        # no batch set, or not this batch's (B, T) layout (e.g. a KV-cached step): the plain MLP
        if real is None or x.shape[:2] != real.shape:
            return self.forward(x)
        y = self.forward(x.flatten(0, 1).index_select(0, index))
        return y.new_zeros(real.numel(), y.shape[-1]).index_copy(0, index, y).view(*real.shape, -1)


@contextlib.contextmanager
def mlps_on_real_tokens(model, attention_mask: torch.Tensor):
    """Inside, each block's MLP (``layer.mlp``, where the block has one) runs on the batch's real tokens
    only and returns zeros at the pads. An MLP mixes no positions and nothing reads a pad's state (the
    attention mask hides pads as keys, the losses read real positions), so the loss and gradients are the
    padded batch's while the pads' share of the MLP's matmuls (70 % of a Gemma 3 block's) is not run."""
    real = attention_mask.bool()
    mlps = [getattr(layer, "mlp", None) for layer in decoder_layers(model)]
    mlps = [m for m in mlps if isinstance(m, torch.nn.Module) and "forward" not in vars(m)]
    if real.all() or not mlps:
        yield
        return
    index = real.flatten().nonzero().squeeze(1)
    wrappers = []
    for mlp in mlps:
        wrapper = vars(mlp).get("_real_tokens")
        if wrapper is None:
            wrapper = mlp._real_tokens = RealTokens(mlp.forward)
        wrapper.real, wrapper.index = real, index
        mlp.forward = wrapper
        wrappers.append((mlp, wrapper))
    try:
        yield
    finally:
        for mlp, wrapper in wrappers:
            wrapper.real = wrapper.index = None
            del mlp.forward


@contextlib.contextmanager
def compiled_blocks(model, first: int, compiled: dict):
    """Inside, the decoder blocks from ``first`` up run torch.compile'd (``training.compile``): inductor
    fuses each block's norms, activation, rotary and the real-token gathers around its matmuls. Each block
    is compiled once (kept in ``compiled``, by block, for the trainer's life), with dynamic shapes (the
    chunks' lengths vary), on its first step; outside, the blocks are the plain modules again (validation
    and prediction run eager)."""
    blocks = list(decoder_layers(model))[first:]
    limit = 4 * len(blocks)  # one graph per block (each is its own module), and room for a shape change
    if torch._dynamo.config.recompile_limit < limit:
        torch._dynamo.config.recompile_limit = limit
    for block in blocks:
        if id(block) not in compiled:
            compiled[id(block)] = torch.compile(block._call_impl, dynamic=True)
        block._compiled_call_impl = compiled[id(block)]
    try:
        yield
    finally:
        for block in blocks:
            block._compiled_call_impl = None


def chunked_loss(
    loss_fn, model, batch: PromptBatch, targets, answer_len, chunks: int, real_tokens: bool = False
) -> torch.Tensor:
    """``loss_fn`` over the batch, its transformer run as ``length_chunks`` (``chunked_decoder``): the same
    loss and gradients with fewer pad tokens run. A loss that reads the model's KV cache (a grid of
    multi-token strings) runs once per chunk instead: every raftlm loss is a mean over its examples, so the
    chunks' losses weighted by their share of the rows are the batch's. ``real_tokens``: the MLPs skip the
    pad tokens (``mlps_on_real_tokens``), the same loss with fewer FLOPs."""
    groups = length_chunks(batch.attention_mask, chunks)
    if len(groups) == 1:  # the batch as it is: no row copies
        with skip_pads(model, batch.attention_mask, real_tokens):
            return loss_fn(model, batch, targets=targets, answer_len=answer_len)
    try:
        with chunked_decoder(model, batch, groups, real_tokens):
            return loss_fn(model, batch, targets=targets, answer_len=answer_len)
    except RunPerChunk:
        pass
    n, loss = len(batch.input_ids), 0.0
    for rows, width in groups:
        part = batch.select(rows, width)
        with skip_pads(model, part.attention_mask, real_tokens):
            part_loss = loss_fn(model, part, targets=targets[rows], answer_len=answer_len[rows])
        loss = loss + part_loss * (len(rows) / n)
    return loss


def skip_pads(model, attention_mask: torch.Tensor, on: bool):
    """``mlps_on_real_tokens`` for this mask when ``on``, else nothing."""
    return mlps_on_real_tokens(model, attention_mask) if on else contextlib.nullcontext()


class RunPerChunk(Exception):
    """``chunked_decoder``'s transformer was called in a way it cannot join (a KV cache asked for, or
    positional inputs): ``chunked_loss`` runs the loss once per chunk instead."""


SEQUENCE_OUTPUTS = ("last_hidden_state", "hidden_states")  # (B, T, ...) per position, or tuples of them
ROW_OUTPUTS = ("pooler_output",)  # (B, ...) per row
DROPPED_OUTPUTS = ("cache", "past_key_values")  # a per-chunk KV cache: a training step reads none


@contextlib.contextmanager
def chunked_decoder(model, batch: PromptBatch, groups: list[tuple[torch.Tensor, int]], real_tokens: bool):
    """Inside, the transformer under ``model``'s LM head runs ``batch``'s rows as ``groups`` (``length_chunks``:
    rows, width), each group without the pad columns it does not need, and returns the whole batch's
    states (zeros at the pad columns a group dropped: nothing reads a pad's state). The LM head and the
    loss then run once on the whole batch: Gemma 3's 262k-row head reads its 671 MB weight once per step,
    not once per group (part of the default CPU step's gain over the step before stop 49 in
    ``benchmarks/speed.py --cases train-efficiency``)."""
    from raftlm.cache import _base

    decoder = _base(model)
    run, patched = decoder.forward, vars(decoder).get("forward")
    rows_n, width_n = batch.attention_mask.shape
    order = torch.cat([rows for rows, _ in groups])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)

    def pick(value, rows: torch.Tensor, width: int):
        if not torch.is_tensor(value):
            return value
        if value.dim() == 4 and value.shape[0] == rows_n and value.shape[-2:] == (width_n, width_n):
            return value[rows][..., -width:, -width:]  # a 4-D (bidirectional) mask
        if value.dim() >= 2 and value.shape[:2] == (rows_n, width_n):
            return value[rows][:, -width:]
        raise RaftlmError(
            f"length chunks: no rule for a {tuple(value.shape)} model input: train with --length-chunks 1"
        )

    def join(parts: list[torch.Tensor], sequence: bool) -> torch.Tensor:
        if sequence:  # left-padded back to the batch's width
            parts = [
                torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (width_n - p.shape[1], 0)) for p in parts
            ]
        return torch.cat(parts).index_select(0, inverse)

    def forward(*args, **kwargs):
        if args or kwargs.get("use_cache"):
            raise RunPerChunk
        outs = []
        for rows, width in groups:
            with skip_pads(model, batch.attention_mask[rows][:, -width:], real_tokens):
                outs.append(run(**{k: pick(v, rows, width) for k, v in kwargs.items()}))
        out = outs[0]
        for key in list(out.keys()):
            values = [o[key] for o in outs]
            if key in DROPPED_OUTPUTS:
                out[key] = None
            elif key in SEQUENCE_OUTPUTS + ROW_OUTPUTS and isinstance(values[0], tuple):
                out[key] = tuple(join(list(v), key in SEQUENCE_OUTPUTS) for v in zip(*values, strict=True))
            elif key in SEQUENCE_OUTPUTS + ROW_OUTPUTS:
                out[key] = join(values, key in SEQUENCE_OUTPUTS)
            else:
                raise RaftlmError(
                    f"length chunks: no rule for the model's {key!r} output: train with --length-chunks 1"
                )
        return out

    decoder.forward = forward
    try:
        yield
    finally:
        if patched is None:
            del decoder.forward
        else:
            decoder.forward = patched


class StderrProgress(ProgressCallback):
    """Trainer's progress bar, with its loss lines on stderr: stdout carries results only."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            shown = {
                k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"
            }
            tqdm.write(str(shown), file=sys.stderr)


class RunTotals(TrainerCallback, ExportableState):
    """The loss sum, steps and seconds of a run, saved in every checkpoint's trainer_state.json, so that
    after a resume train_loss and train_runtime_s cover the whole run, not only the part after it.
    A checkpoint step is always a logging step, so its totals count every step up to it. The seconds
    are working seconds: time the process was stopped (``core.StoppedClock``: Ctrl-Z, a benchmark queue
    pausing it) is not counted, so a paused run's time is the time its steps took."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0, seconds: float = 0.0):
        self.loss_sum, self.steps = loss_sum, steps
        self.before = (loss_sum, steps, seconds)  # the totals at the checkpoint resumed from
        self.logged_at, self.started, self.clock = 0, time.time(), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.logged_at, self.started = state.global_step, time.time()
        self.close()
        self.clock = StoppedClock()
        # a checkpoint written before RunTotals existed lacks its entry, which Trainer's save expects
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_step_end(self, args, state, control, **kwargs):
        control.should_log = control.should_log or control.should_save

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss_sum += logs["loss"] * (state.global_step - self.logged_at)
            self.steps += state.global_step - self.logged_at
            self.logged_at = state.global_step

    def stopped(self) -> float:
        """Seconds this session was stopped so far."""
        return self.clock.stopped if self.clock is not None else 0.0

    def close(self) -> None:
        if self.clock is not None:
            self.clock.close()

    def state(self) -> dict:
        seconds = self.before[2] + time.time() - self.started - self.stopped()
        return {
            "args": {"loss_sum": self.loss_sum, "steps": self.steps, "seconds": seconds},
            "attributes": {},
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | None) -> RunTotals:
        if checkpoint is None:
            return cls()
        saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("stateful_callbacks", {})
        return cls(**saved.get(cls.__name__, {}).get("args", {}))

    def whole_run(self, global_step: int, session_loss: float, session_runtime: float) -> tuple[float, float]:
        """(mean training loss, working seconds) over every step of the run, given this session's (its
        stopped seconds are taken out of Trainer's ``session_runtime``)."""
        loss_before, steps_before, seconds_before = self.before
        loss = (loss_before + session_loss * (global_step - steps_before)) / max(global_step, 1)
        return loss, seconds_before + session_runtime - self.stopped()


def trim_metrics(path: Path, step: int) -> None:
    """Resuming from checkpoint ``step`` (0: none): drop what was logged after it (those steps run again),
    any end-of-training summary and a line a kill cut short, so metrics.jsonl holds each step once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill is dropped
            record = json.loads(line)
            if record.get("step", 0) <= step and "train_runtime" not in record:
                keep.append(line + "\n")
    write_text(path, "".join(keep))


def reporting(report_to: str) -> list[str]:
    """``training.report_to`` as Trainer's list of trackers; a tracker that is not installed is an error."""
    if report_to.strip() in ("none", ""):  # (the default: no seconds of importing the integrations)
        return []
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if report_to.strip() == "all":
        return get_available_reporting_integrations()
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise RaftlmError(
                f"report_to {name!r}: use none, all or some of {sorted(INTEGRATION_TO_CALLBACK)}"
            )
        if name not in get_available_reporting_integrations():
            raise RaftlmError(
                f"report_to {name}: it is not installed here: pip install {name}, or report_to none"
            )
    return names


EMA_FILE = "ema.safetensors"  # in each checkpoint: the average at that step (training.ema)


class WeightAverage(TrainerCallback):
    """An exponential moving average of the trained weights (``training.ema``): after every optimizer step
    ``avg = decay * avg + (1 - decay) * weights``. Validation measures the average (``swapped``), each
    checkpoint stores it beside the weights (``ema.safetensors``; a resume continues it), and after training
    the model takes the average of the best checkpoint, the one validation chose (``load_into_model``)."""

    def __init__(self, model: torch.nn.Module, decay: float, resume_from: Path | None = None):
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        if resume_from is not None and (resume_from / EMA_FILE).is_file():
            self._copy(load_file(resume_from / EMA_FILE), self.shadow)

    @staticmethod
    def _copy(source: dict, target: dict) -> None:
        with torch.no_grad():
            for n, t in target.items():
                t.copy_(source[n])

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.shadow.values()), [p.detach() for p in self.params.values()], 1 - self.decay
            )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            # whole or not at all (Trainer has written the checkpoint's trainer_state.json already: a
            # resume takes a checkpoint as complete only with this file, latest_complete_checkpoint's needs)
            shadow = {n: t.contiguous() for n, t in self.shadow.items()}
            atomic_write(checkpoint / EMA_FILE, lambda tmp: save_file(shadow, tmp))

    @contextlib.contextmanager
    def swapped(self):
        """The model holds the average while the block runs (and its own weights again after)."""
        own = {n: p.detach().clone() for n, p in self.params.items()}
        self._copy(self.shadow, self.params)
        try:
            yield
        finally:
            self._copy(own, self.params)

    def load_into_model(self, checkpoint: Path | None) -> None:
        """The average stored with ``checkpoint`` (the best one), or without one the final average."""
        saved = checkpoint is not None and (checkpoint / EMA_FILE).is_file()
        self._copy(load_file(checkpoint / EMA_FILE) if saved else self.shadow, self.params)


class MetricsLogger(TrainerCallback):
    """Appends every logged dict (loss, lr, validation metrics) to ``metrics.jsonl`` on rank 0."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as f:
                f.write(to_json({"step": state.global_step, **logs}) + "\n")  # NaN -> null


def tied_parameter_names(model) -> set[str]:
    """Names of parameters that share their tensor with another parameter (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n for group in names.values() if len(group) > 1 for n in group}


class RegressionTrainer(Trainer):
    """Trainer with a raftlm loss, paper-style Adafactor, and RMSE validation through the predictor."""

    def __init__(
        self,
        *args,
        loss_fn,
        predictor: Predictor,
        val_examples: list[Example],
        eval_decoder: str,
        optimizer_name: str,
        eval_batch_size: int,
        frozen: int = 0,
        length_chunks: int | None = 1,
        val_store: HiddenStore | None = None,
        compile: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.loss_fn, self.predictor, self.val_examples = loss_fn, predictor, val_examples
        self.eval_decoder, self.optimizer_name, self.eval_bs = eval_decoder, optimizer_name, eval_batch_size
        self.loss_is_scaled_for_ga = False  # our losses are per-batch means
        self.warned_collapse = False
        self.frozen = frozen  # blocks below the trained ones, read from cached states (0: none)
        self.length_chunks = length_chunks
        self.compile = compile  # the trained blocks torch.compile'd for training steps (compiled_blocks)
        self.compiled: dict[int, object] = {}  # id(block) -> its compiled call
        self.val_store = val_store  # the validation prompts' states after the frozen blocks (None: uncached)
        self.ema: WeightAverage | None = None  # training.ema's average, when set

    def _run_epoch(self, *args, **kwargs):
        # a run resumed from a checkpoint at max_steps (killed after its last step, e.g. while testing) has
        # no step left, but Trainer would take one more when max_steps is not a whole number of epochs
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = PromptBatch(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["position_ids"],
            inputs.get("bidirectional", False),
            inputs.get("hidden"),
        )
        frozen = self.frozen if batch.hidden is not None else 0
        compiled = compiled_blocks(model, frozen, self.compiled) if self.compile else contextlib.nullcontext()
        with skip_frozen(model, frozen), compiled:
            loss = chunked_loss(
                self.loss_fn,
                model,
                batch,
                inputs["targets"],
                inputs["answer_len"],
                self.chunks(batch),
                self.real_tokens(batch),
            )
        return (loss, None) if return_outputs else loss

    def real_tokens(self, batch: PromptBatch) -> bool:
        """MLPs on the real tokens only (``mlps_on_real_tokens``) on a CPU, where a step is bound by its
        matmuls (1.07x faster steps, ``benchmarks/speed.py``); elsewhere the batch as it is (a GPU step of a
        small model is bound by kernel launches, and the row selection adds a device sync)."""
        return batch.input_ids.device.type == "cpu"

    def chunks(self, batch: PromptBatch) -> int:
        """``length_chunks`` as set, else 2 on a CPU (1.18x faster steps, benchmarks/length_chunks.py)
        and 1 elsewhere: a GPU step of a small model is bound by kernel launches, which chunks multiply."""
        if self.length_chunks is not None:
            return self.length_chunks
        return 2 if batch.input_ids.device.type == "cpu" else 1

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Training-loss lines also carry the loss's own statistics (RAFT: grid mass and entropy)."""
        if "loss" in logs and hasattr(self.loss_fn, "pop_stats"):
            logs = {**logs, **self.loss_fn.pop_stats()}
        super().log(logs, *args, **kwargs)

    def _issue_warnings_after_load(self, load_result) -> None:
        """Restoring the best checkpoint: a tied LM head (Gemma's is the input embedding) is not saved
        apart, so it comes back "missing"; it is the embedding, tied again here, and not reported as a
        broken model. Any other missing key is reported as Trainer does."""
        tied = tied_parameter_names(self.model)
        if any(k in tied for k in load_result.missing_keys):
            self.model.tie_weights()
            load_result = load_result._replace(
                missing_keys=[k for k in load_result.missing_keys if k not in tied]
            )
        super()._issue_warnings_after_load(load_result)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_name == "adafactor":
            params = [p for p in (model or self.model).parameters() if p.requires_grad]
            # appendix D: eps1 1e-30, eps2 1e-3, decay rate 0.8 (HF spells it -0.8), no relative step
            self.optimizer = Adafactor(
                params,
                lr=self.args.learning_rate,
                eps=(1e-30, 1e-3),
                decay_rate=-0.8,
                clip_threshold=1.0,
                scale_parameter=False,
                relative_step=False,
                warmup_init=False,
            )
            return self.optimizer
        return super().create_optimizer(model)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        if self.ema is None:
            return self._validate(metric_key_prefix)
        with self.ema.swapped():  # validation measures the weights a run would keep: the average
            return self._validate(metric_key_prefix)

    def _validate(self, metric_key_prefix: str) -> dict:
        texts = self.predictor.texts_of(self.val_examples)  # (both orders of a symmetric pair)
        cached = self.val_store is not None
        with (
            cached_prompts(self.predictor, texts, self.val_store, self.frozen)
            if cached
            else contextlib.nullcontext()
        ):
            preds = self.predictor.predict(
                texts,
                self.eval_decoder,
                batch_size=self.eval_bs,
                bf16=self.args.bf16,
                desc=None if self.args.disable_tqdm else "validation",
            )
        preds = self.predictor.average_orders(preds, self.eval_decoder)
        targets = [e.target for e in self.val_examples]
        m = regression_metrics(targets, preds.values)
        m["prediction_std"] = float(np.std(preds.values))
        if preds.probs is not None:
            m["grid_mass"] = float(preds.probs.sum(-1).mean())
            m["grid_entropy"] = float(preds.entropy.mean())
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in m.items() if k != "n"}
        why = collapse(targets, preds.values, preds.grid_alone)
        if why and not self.warned_collapse:
            self.warned_collapse = True
            fix = (
                "set normalize_grid: true, or lower the learning rate"
                if why.startswith(DEAD_GRID)
                else "lower the learning rate, or add warmup_steps"
            )
            grid = (
                " (and RAFT's gradient vanishes there, so it seldom recovers)"
                if preds.grid_alone is not None
                else ""
            )
            warn(
                f"validation at step {self.state.global_step}: {why}; the predictions carry no signal{grid}: {fix}"
            )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def training_arguments(cfg: Config, checkpoint_dir: Path, has_validation: bool) -> TrainingArguments:
    t = cfg.training
    schedule = {
        "constant": "constant_with_warmup" if t.warmup else "constant",
        "cosine": "cosine",
        "linear": "linear",
    }
    eval_every = min(t.eval_steps, t.max_steps)
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=schedule[t.scheduler],
        warmup_steps=t.warmup,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch_fused",  # transformers' default on torch >= 2.8: one kernel, 6x the for-loop's speed on a CPU
        bf16=t.bf16,
        use_cpu=cpu_only(),  # (as the launch joined its processes: core.launch_state)
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=2,
        load_best_model_at_end=has_validation,
        metric_for_best_model="rmse" if has_validation else None,
        greater_is_better=False,
        logging_steps=t.logging_steps,
        report_to=reporting(t.report_to),
        disable_tqdm=not t.progress_bar,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # a predictive head runs on the backbone's hidden states outside DDP's forward: the unused-parameter
        # search marked its parameters ready (unused) in the forward, then again in backward, and failed
        ddp_find_unused_parameters=False if methods.get(cfg.method.method).head is not None else None,
    )


def frozen_blocks_to_cache(predictor: Predictor, cfg: Config, n_train: int | None = None) -> int:
    """Blocks to run once and cache (0: train uncached): a causal LM trained top-N or head-only, with a
    scorer that reads one position (single-token grids; multi-token grids score paths through every block).

    The cache runs the frozen blocks once over all ``n_train`` examples and saves that run at every
    visit of an example, so it pays off only when training visits at least as many examples as there
    are (max_steps x batch x accumulation >= n_train); a short run over a large set trains uncached."""
    if not cfg.training.cache_frozen or predictor.fmt is None:
        return 0
    if methods.get(cfg.method.method).scores_grid and not predictor.fmt.single_token:
        return 0
    frozen = frozen_blocks(predictor.model, cfg.model.trainable)
    t = cfg.training
    visits = t.max_steps * t.batch_size * t.grad_accum * launch_size()
    if frozen and n_train is not None and visits < n_train:
        log.info(
            "training uncached: %d steps x %d examples visit %d examples, fewer than the %d the frozen-block "
            "cache would run through the frozen blocks first",
            t.max_steps,
            t.batch_size * t.grad_accum,
            visits,
            n_train,
        )
        return 0
    return frozen


def fit(
    predictor: Predictor,
    train: list[Example],
    validation: list[Example],
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    callbacks: list | tuple = (),
) -> dict:
    """Fine-tune ``predictor.model`` in place; returns a summary (best step, best validation RMSE).
    ``callbacks``: more Trainer callbacks (classes or instances)."""
    if predictor.dtype == torch.int8:
        raise RaftlmError(
            "int8 weights are for prediction only (--dtype int8 of predict, evaluate and serve): train from "
            "float32 weights"
        )
    # subnormal floats (a collapsed grid's probabilities and gradients reach 1e-34 and below) take the
    # CPU's slow path: one collapsed RAFT step measured 25 s instead of 0.75 s; flushed, they are 0
    torch.set_flush_denormal(True)
    if cfg.training.bf16 and next(predictor.model.parameters()).device.type == "cpu":
        warn_slow_bf16()
    method = cfg.method.method
    loss_fn = methods.get(method).loss(predictor, cfg.method)
    feats = build_features(predictor, train, method, cfg.method.ce_decimals)
    frozen = frozen_blocks_to_cache(predictor, cfg, len(feats))
    store = val_store = None
    if frozen:
        cache = lambda seqs: build_store(  # noqa: E731
            predictor.model,
            seqs,
            frozen,
            predictor.pad_id,
            run_dir,
            cfg.eval.batch_size,
            cfg.training.bf16,
            predictor.bidirectional,
        )
        store = cache([f["prompt_ids"] + f["answer_ids"] for f in feats])
        if validation:  # every validation scores these prompts: their frozen blocks run once too
            try:
                val_store = cache(predictor.encode(predictor.texts_of(validation)))
            except BaseException:
                store.close()  # (its file on disk, if it outgrew RAM, goes with it)
                raise
    ckpt_dir = run_dir / "checkpoints"
    decoder = cfg.eval.decoder if cfg.eval.decoder in GRID_DECODERS else "rail"
    needs = (EMA_FILE,) if cfg.training.ema is not None else ()
    last = latest_complete_checkpoint(ckpt_dir, needs) if resume else None
    if main_rank():  # (rank 0 writes metrics.jsonl): a resume without a checkpoint starts it again
        trim_metrics(run_dir / TRAINING_LOG, 0 if last is None else int(last.name.rsplit("-", 1)[1]))
    totals = RunTotals.from_checkpoint(last)
    callbacks = [MetricsLogger(run_dir / TRAINING_LOG), totals, *callbacks]
    if cfg.training.patience and validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.patience))
    trainer = RegressionTrainer(
        model=predictor.model,
        args=training_arguments(cfg, ckpt_dir, bool(validation)),
        train_dataset=ListDataset(feats),
        eval_dataset=ListDataset(validation) if validation else None,  # evaluate() reads val_examples
        data_collator=make_collator(predictor.pad_id, predictor.bidirectional, store),
        callbacks=callbacks,
        loss_fn=loss_fn,
        predictor=predictor,
        val_examples=validation,
        eval_decoder=decoder,
        optimizer_name=cfg.training.optimizer,
        eval_batch_size=cfg.eval.batch_size,
        frozen=frozen,
        length_chunks=cfg.training.length_chunks,
        val_store=val_store,
        compile=cfg.training.compile,
    )
    if cfg.training.ema is not None:
        trainer.ema = WeightAverage(predictor.model, cfg.training.ema, last)
        trainer.add_callback(trainer.ema)
    _log_lines_to_stderr(trainer, run_dir, cfg.training.progress_bar)
    try:
        result = trainer.train(resume_from_checkpoint=str(last) if last else None)
        if trainer.ema is not None:  # the average validation measured at the best step
            best = trainer.state.best_model_checkpoint
            trainer.ema.load_into_model(Path(best) if best else None)
        # every rank has reloaded the best checkpoint before rank 0 goes on to remove checkpoints/ (a
        # slower rank 1 found it gone: kept its last weights, or failed reading it)
        trainer.accelerator.wait_for_everyone()
    finally:
        totals.close()  # what it counted stays readable
        for s in (store, val_store):
            if s is not None:
                s.close()
    predictor.model = trainer.model
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    train_loss, runtime = totals.whole_run(
        state.global_step, float(result.training_loss), float(result.metrics.get("train_runtime", np.nan))
    )
    return {
        "global_step": state.global_step,
        "best_step": state.best_global_step,
        "best_validation_rmse": state.best_metric,
        "train_loss": train_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "train_runtime_s": runtime,
        "train_stopped_s": totals.stopped(),  # this session's seconds stopped, not in train_runtime_s
    }


def _log_lines_to_stderr(trainer: Trainer, run_dir: Path, progress_bar: bool) -> None:
    """Trainer prints its loss lines to stdout; ours go to stderr (or nowhere without progress bars).
    TensorBoard logs go to RUN/logs (Trainer's default is inside checkpoints/, deleted at the end)."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress_bar:
        trainer.add_callback(StderrProgress)
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback" and cb.logging_dir is None:
            cb.logging_dir = str(run_dir / "logs")
