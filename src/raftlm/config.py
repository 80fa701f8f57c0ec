"""Typed configuration, grouped by concern. YAML recipes use exactly these section and field names.

Each field's metadata is also its command-line flag (``cli`` builds the parser from it, so help, defaults
and choices cannot drift from the config): ``help``; ``flag``, the flag's name when it is not
``--field-name`` (None: no flag, e.g. ``progress_bar`` is ``--quiet``); ``group``, ``basic`` for the
everyday flags listed first in ``--help``, ``ablation`` for the paper's ablations, listed last. A bool that
is on by default gets a ``--no-`` flag."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from raftlm.core import CE_TARGETS, RaftlmError, short, to_number, to_whole, warn

TRAINABLE = re.compile(r"full|lora|none|top-\d+")


def top_blocks(trainable: str) -> int | None:
    """N of ``top-N`` (None for full, lora and none): the one place "top-N" is parsed."""
    return int(trainable.split("-", 1)[1]) if trainable.startswith("top-") else None


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def to_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip().lower() in TRUE + FALSE:
        return str(value).strip().lower() in TRUE
    raise RaftlmError(f"{where}={short(value)}: use true or false")


def to_bf16(value, where: str, device: str = "auto") -> bool:
    """A bf16 switch: true, false, or auto (on where the hardware runs bf16 fast: core.bf16_is_fast). auto
    is resolved here, so a run's saved config records what it really ran."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        from raftlm.core import bf16_is_fast

        return bf16_is_fast(device)
    if value is None:
        return value  # typed() says the field is empty
    try:
        return to_bool(value, where)
    except RaftlmError:
        raise RaftlmError(f"{where}={short(value)}: use true, false or auto") from None


def to_int(value, where: str) -> int:
    number = value.strip() if isinstance(value, str) else value
    if isinstance(number, str):  # '4' (exactly, however long), '4.0' and '1e3' are whole numbers
        with contextlib.suppress(ValueError):
            number = to_whole(number)
    if isinstance(number, str):  # 'four', '1_0' and '4.7' are not
        with contextlib.suppress(ValueError, OverflowError):
            number = to_number(number)
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise RaftlmError(f"{where}={short(value)}: use a whole number (e.g. 4)")


def to_float(value, where: str) -> float:
    try:
        number = to_number(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise RaftlmError(f"{where}={short(value)} is not a number: use e.g. 1e-4 or 0.5") from None
    if not math.isfinite(number):
        raise RaftlmError(f"{where}={short(value)}: use a finite number")
    return number


def to_str(value, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RaftlmError(f"{where}={short(value)}: use a text value (quote it in YAML)")
    return str(value)  # YAML reads `grid: 5` as a number


CONVERT = {"bool": to_bool, "int": to_int, "float": to_float, "str": to_str}

MAX_INT = 10**9  # the largest whole-number setting (steps, sizes, units...) unless its field says otherwise
SEED = (0, 2**32 - 1)  # the seeds numpy's RandomState takes
# validation examples used while training (--val-size; all = the whole split): on STS-B-1K the whole split
# kept the same checkpoints as 300 pairs at every seed measured, for ~5 more minutes of ~30 (docs/defaults.md)
VAL_SIZE = 300


def convert(f, value, where: str):
    """A field's value converted to its annotated type (``CONVERT``); a whole number also within the
    field's ``range`` metadata ((lo, hi), either None for no bound; default: at most ``MAX_INT``), the one
    bound every int setting has (lower bounds that depend on the setting are checked by its section)."""
    kind = f.type.removesuffix(" | None")
    if kind not in CONVERT:
        return value
    value = CONVERT[kind](value, where)
    if kind == "int":
        lo, hi = f.metadata.get("range", (None, MAX_INT))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"in [{lo}, {hi}]" if lo is not None else f"up to {hi:,}"
            raise RaftlmError(f"{where}={short(value)}: use a whole number {bounds}")
    return value


def typed(section) -> None:
    """Convert every field of a config section to its annotated type, in place: YAML recipes,
    ``--set``, flags and the Python API all pass through here. ``"1e-4"`` becomes 0.0001 and
    ``"false"`` False; a value that cannot be converted (4.7 for an int, "four", nan) is a RaftlmError."""
    name = next(k for k, v in SECTIONS.items() if isinstance(section, v))
    for f in fields(section):
        value, kind = getattr(section, f.name), f.type.removesuffix(" | None")
        if value is None and f.type.endswith("| None"):
            continue
        if value is None and kind in CONVERT:
            raise RaftlmError(f"{name}.{f.name} is empty (null): give a value or drop the line")
        setattr(section, f.name, convert(f, value, f"{name}.{f.name}"))


@dataclass
class ModelConfig:
    name: str = field(
        default="gemma-3-270m",
        metadata={
            "flag": "--model",
            "group": "basic",
            "help": "gemma-3-270m, smollm2-135m, tiny-random-llama (tests), a path or a hub id",
        },
    )
    trainable: str = field(
        default="top-9",
        metadata={
            "group": "basic",
            "help": "full, lora, top-N (last N blocks; embeddings frozen), none (train a head only)",
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    dropout: float = field(
        default=0.0, metadata={"help": "dropout rate set in the model config (paper: 0.1)"}
    )
    init: str = field(
        default="pretrained",
        metadata={
            "group": "ablation",
            "help": "pretrained, or random (same architecture, fresh weights; fig. 3)",
        },
    )
    attention: str = field(
        default="causal",
        metadata={"group": "ablation", "help": "causal, or bidirectional over the prompt (fig. 3)"},
    )

    def __post_init__(self) -> None:
        typed(self)
        if not TRAINABLE.fullmatch(self.trainable):
            raise RaftlmError(
                f"trainable={short(self.trainable)}: use full, lora, none or top-N (e.g. top-6)"
            )
        if self.init not in ("pretrained", "random"):
            raise RaftlmError(f"init={short(self.init)}: use pretrained or random")
        if self.attention not in ("causal", "bidirectional"):
            raise RaftlmError(f"attention={short(self.attention)}: use causal or bidirectional")
        if not 0.0 <= self.dropout < 1.0:
            raise RaftlmError(f"dropout={self.dropout}: use a rate in [0, 1)")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise RaftlmError(f"lora_r={self.lora_r}, lora_alpha={self.lora_alpha}: use positive integers")
        if top_blocks(self.trainable) == 0:
            raise RaftlmError(f"trainable={self.trainable}: top-N needs N >= 1 (none: train a head only)")


@dataclass
class DataConfig:
    dataset: str = field(
        default="stsb-1k",
        metadata={
            "flag": "--dataset",
            "group": "basic",
            "help": "a dataset: {datasets}",
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "group": "basic",
            "help": "folder of the dataset's files: STS-B's stsbenchmark CSVs (default: the Hub's copy when "
            "reachable), MovieLens-100K's ml-100k (default: the recbole package's)",
        },
    )
    template: str | None = field(
        default=None,
        metadata={"group": "basic", "help": "prompt template name or format string (csv/jsonl/hf)"},
    )
    text_column: str = field(
        default="text", metadata={"group": "basic", "help": "text column when no template is given"}
    )
    target_column: str = field(
        default="target", metadata={"group": "basic", "help": "target column (csv/jsonl/hf)"}
    )
    train_size: int | None = field(
        default=None,
        metadata={
            "help": "train on N examples: the first N of a split raftlm shuffled, a seeded random sample of "
            "a split in your file's order (its split column, a Hub dataset)"
        },
    )
    val_size: int | None = field(
        default=VAL_SIZE,
        metadata={
            "group": "basic",
            "help": "validate on N validation examples while training, chosen as --train-size's; all: the "
            "whole split (docs/defaults.md measures what it costs and brings on STS-B-1K)",
        },
    )
    train_fraction: float | None = field(
        default=None,
        metadata={
            "group": "ablation",
            "help": "use only this fraction of the training split (figure 4 curves)",
        },
    )
    history: int = field(
        default=10, metadata={"help": "movielens: most recent earlier ratings in the prompt"}
    )
    max_length: int = field(
        default=512,
        metadata={"group": "basic", "help": "max prompt tokens; longer prompts are cut on the left"},
    )
    split_seed: int | None = field(
        default=None, metadata={"help": "seed of the random train/validation/test split", "range": SEED}
    )
    pair_swap: str | None = field(
        default="dataset",
        metadata={
            "help": "two template fields that form a symmetric pair (e.g. sentence1,sentence2): train on both "
            "orders and predict the mean of both orders' distributions; dataset: the dataset's own pair "
            "(STS-B's sentences; no other dataset has one); none: off",
        },
    )
    stsb_test: str = field(
        default="dev",
        metadata={
            "help": "stsb: the split scored as test: dev (the paper's, 1,500 pairs) or test (the official "
            "STS-B test split, 1,379 pairs, where cross-encoders report)"
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.val_size, str) and self.val_size.strip().lower() == "all":
            self.val_size = None  # the whole validation split (null in a saved config)
        typed(self)
        if self.stsb_test not in ("dev", "test"):
            raise RaftlmError(f"stsb_test={short(self.stsb_test)}: use dev (the paper's test set) or test")
        for name in ("train_size", "val_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RaftlmError(f"{name}={v}: use a positive number of examples")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise RaftlmError(f"train_fraction={self.train_fraction}: use a fraction in (0, 1]")
        if self.max_length < 8:
            raise RaftlmError(f"max_length={self.max_length}: use at least 8 tokens")
        if self.pair_swap in ("none", ""):
            self.pair_swap = None
        if self.pair_swap not in (None, "dataset"):
            names = [n.strip() for n in self.pair_swap.split(",")]
            if len(names) != 2 or not all(names) or names[0] == names[1]:
                raise RaftlmError(
                    f"pair_swap={short(self.pair_swap)}: name two template fields (e.g. sentence1,sentence2), "
                    "dataset or none"
                )
            self.pair_swap = ",".join(names)
        if self.history < 0:
            raise RaftlmError(f"history={self.history}: use a number of earlier ratings >= 0")
        for name in ("text_column", "target_column"):
            if not getattr(self, name).strip():
                raise RaftlmError(f"{name} is empty: name a column of the data")


@dataclass
class MethodConfig:
    method: str = field(
        default="raft",
        metadata={
            "flag": "--method",
            "group": "basic",
            "help": "training method (a name of methods.METHODS), or none (zero-shot)",
        },
    )
    grid: str | None = field(
        default=None,
        metadata={
            "group": "basic",
            "help": "grid spec: 1-5, 0:5:0.1, 1,2,3 or 1=a,2=b (default: the dataset's)",
        },
    )
    ce_weight: float | None = field(
        default=None,
        metadata={
            "help": "raft: add this weight x CE on the grid around the target (--ce-target) (default: the method's, "
            "1.0 for raft; 0 = the paper's pure RAFT)"
        },
    )
    ce_target: str | None = field(
        default=None,
        metadata={
            "help": "raft: the CE term's target, two-hot (the two grid values around the target, weighted so "
            "their mean is the target: no pull onto the grid for targets between its values) or nearest (one-hot "
            "on the grid value nearest the target; the default before 2026-12) (default: two-hot for raft)"
        },
    )
    answer_prefix: str = field(
        default=" ", metadata={"group": "ablation", "help": "text between the prompt and the answer"}
    )
    normalize_grid: bool = field(
        default=False,
        metadata={"group": "ablation", "help": "renormalize grid probabilities to sum to 1 (table 16)"},
    )
    target_range: object = field(
        default="dataset",
        metadata={"help": "map targets onto the grid: none, auto, LO,HI (e.g. 1,5), or dataset"},
    )
    ce_decimals: int | None = field(
        default=None,
        metadata={
            "group": "ablation",
            "help": "ce: round targets to N decimals (default: nearest grid string)",
        },
    )
    head_token: str | None = field(
        default=None,
        metadata={"group": "ablation", "help": "head-special-token: the token v* (default: the EOS token)"},
    )
    pooling: str = field(
        default="mean", metadata={"group": "ablation", "help": "head-pooled, raft-head: mean, min or max"}
    )
    single_value_grid: bool = field(
        default=False, metadata={"group": "ablation", "help": "allow a one-value grid (table 13 ablation)"}
    )
    head_hidden: int = field(
        default=64, metadata={"group": "ablation", "help": "head-mlp-logits: hidden units of the 2-layer MLP"}
    )
    learnable_scope: str = field(
        default="grid",
        metadata={"group": "ablation", "help": "learnable-raft: weights over the grid tokens or all tokens"},
    )
    attn_queries: int = field(
        default=4, metadata={"help": "head-attn: learned query vectors attending over the prompt's tokens"}
    )
    attn_hidden: int = field(
        default=768,
        metadata={
            "help": "head-attn: hidden units of the MLP on the attended vectors (3.6M head on Gemma 3)"
        },
    )
    ntl_weight: float = field(
        default=0.3, metadata={"help": "ce-ntl: weight of the number token loss added to CE (0: plain ce)"}
    )
    head_init: str = field(
        default="raft",
        metadata={"group": "ablation", "help": "learnable-raft: raft (w_y = y) or random init"},
    )
    new_tokens: str | None = field(
        default=None,
        metadata={
            "group": "ablation",
            "help": "add one new token per grid value, initialized zero, first, average or random",
        },
    )

    def __post_init__(self) -> None:
        typed(self)
        from raftlm import methods  # here, not at import: `raftlm --help` must not wait for torch

        method = methods.get(self.method)  # unknown names are a one-line error
        if self.pooling not in ("mean", "min", "max"):
            raise RaftlmError(f"pooling={short(self.pooling)}: use mean, min or max")
        if self.learnable_scope not in ("grid", "all") or self.head_init not in ("raft", "random"):
            raise RaftlmError("learnable-raft: learnable_scope is grid or all, head_init is raft or random")
        if self.new_tokens not in (None, "zero", "first", "average", "random"):
            raise RaftlmError(f"new_tokens={short(self.new_tokens)}: use zero, first, average or random")
        if self.attn_queries < 1 or self.attn_hidden < 1:
            raise RaftlmError(
                "head-attn: attn_queries and attn_hidden are positive integers (e.g. 4 and 768)"
            )
        if not (self.ntl_weight >= 0 and math.isfinite(self.ntl_weight)):
            raise RaftlmError(f"ntl_weight={self.ntl_weight}: use a finite weight >= 0 (e.g. 0.3)")
        if self.head_hidden < 1:
            raise RaftlmError(f"head_hidden={self.head_hidden}: use a positive number of hidden units")
        if self.ce_decimals is not None and not 0 <= self.ce_decimals <= 10:
            raise RaftlmError(f"ce_decimals={self.ce_decimals}: use 0 to 10 decimals")
        if self.ce_weight is not None and not (self.ce_weight >= 0 and math.isfinite(self.ce_weight)):
            raise RaftlmError(f"ce_weight={self.ce_weight}: use a finite weight >= 0 (e.g. 0.3)")
        if self.ce_weight and not method.takes_ce_weight:
            raise RaftlmError(f"ce_weight is a raft option: drop it for method {self.method}")
        if self.ce_target is not None and self.ce_target not in CE_TARGETS:
            raise RaftlmError(f"ce_target={short(self.ce_target)}: use {' or '.join(CE_TARGETS)}")
        if self.ce_target not in (None, "nearest") and not method.takes_ce_weight:
            raise RaftlmError(f"ce_target is a raft option: drop it for method {self.method}")
        if self.grid is not None and not self.grid.strip():
            raise RaftlmError(
                "grid is empty: give a grid spec such as 1-5, or drop it for the dataset's grid"
            )
        self.target_range = _target_range(self.target_range)


def _target_range(value):
    """none / auto / dataset, or [LO, HI] from "LO,HI" or a two-number list."""
    if value is None or value in ("none", "auto", "dataset"):
        return value
    # "1,5", or "[1, 5]" as YAML and the help of earlier versions wrote it
    parts = value.strip().removeprefix("[").removesuffix("]").split(",") if isinstance(value, str) else value
    if isinstance(parts, list | tuple) and len(parts) == 2:
        with contextlib.suppress(RaftlmError):
            lo, hi = (to_float(p, "method.target_range") for p in parts)
            if lo < hi:
                return [lo, hi]
    raise RaftlmError(
        f"target_range={short(value)}: use none, auto, dataset or LO,HI with LO < HI (e.g. 1,5)"
    )


@dataclass
class TrainConfig:
    output_dir: str | None = field(default=None, metadata={"group": "basic", "help": "run directory"})
    max_steps: int = field(default=500, metadata={"group": "basic", "help": "optimizer steps"})
    batch_size: int = field(
        default=16,
        metadata={
            "group": "basic",
            "help": "examples per device per step (validation's and the run's predictions' batch too, unless "
            "eval.batch_size is given)",
        },
    )
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(
        default=1e-4, metadata={"group": "basic", "help": "learning rate (paper sweeps 1e-4, 1e-5, 1e-6)"}
    )
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw, or adafactor (the paper's: eps 1e-30/1e-3, decay 0.8, constant)"},
    )
    scheduler: str = field(default="cosine", metadata={"help": "constant, cosine or linear"})
    warmup_steps: int | None = field(
        default=None, metadata={"help": "learning-rate warmup steps (default: 10 % of max_steps)"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    ema: float | None = field(
        default=None,
        metadata={
            "help": "keep an exponential moving average of the trained weights with this decay (e.g. 0.99): "
            "validation, the best checkpoint and the saved model use the average"
        },
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "clip the gradient norm to this (0 = no clipping; Trainer's default 1)"},
    )
    bf16: bool = field(
        default=False,
        metadata={
            "group": "basic",
            "help": "bf16 autocast: faster on a GPU with bf16 or a CPU with fast bf16 units (AMX; docs/speed.md), "
            "slower on other CPUs (--set training.bf16=auto: on only where a bf16 matmul measures fast)",
        },
    )
    seed: int = field(default=0, metadata={"group": "basic", "help": "training seed", "range": SEED})
    eval_steps: int = field(default=100, metadata={"help": "validate (and checkpoint) every N steps"})
    patience: int | None = field(
        default=None, metadata={"help": "early stopping after N evaluations without improvement"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N steps"})
    cache_frozen: bool = field(
        default=True,
        metadata={
            "help": "top-N/none: run the frozen blocks once per example (eval mode) and train from "
            "their cached states"
        },
    )
    length_chunks: int | None = field(
        default=None,
        metadata={
            "help": "run each batch as this many length-sorted chunks, each padded to its own longest "
            "row: the same loss and gradient with fewer pad tokens (default: 2 on a CPU, 1 = the batch "
            "as one tensor on a GPU, whose small-model steps are bound by kernel launches)"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the trained blocks for training steps (fuses their elementwise ops: "
            "benchmarks/speed.py measures the step; needs a C++ compiler on a CPU; the first steps "
            "pay the compile)"
        },
    )
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoints/ after a finished run"})
    calibrate: bool = field(
        default=True,
        metadata={
            "help": "calibrate conformal intervals on the whole validation split after training "
            "(calibration.json in the run); --no-calibrate skips it"
        },
    )
    progress_bar: bool = field(
        default=True,
        metadata={"flag": None, "help": "progress bars and loss lines on stderr (--quiet turns them off)"},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "Trainer's trackers: none, all, or names such as tensorboard (logs in RUN/logs)"},
    )

    def __post_init__(self) -> None:
        self.bf16 = to_bf16(self.bf16, "training.bf16")
        typed(self)
        if self.optimizer not in ("adafactor", "adamw"):
            raise RaftlmError(f"optimizer={short(self.optimizer)}: use adafactor or adamw")
        if self.scheduler not in ("constant", "cosine", "linear"):
            raise RaftlmError(f"scheduler={short(self.scheduler)}: use constant, cosine or linear")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise RaftlmError(f"{name}={getattr(self, name)}: use a positive integer")
        if self.weight_decay < 0:
            raise RaftlmError(f"weight_decay={self.weight_decay:g}: use a decay >= 0")
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise RaftlmError(f"max_grad_norm={self.max_grad_norm}: use a finite norm >= 0 (0 = no clipping)")
        if not self.lr > 0:
            raise RaftlmError(f"lr={self.lr}: use a positive learning rate (e.g. 1e-4)")
        if self.ema is not None and not 0 < self.ema < 1:
            raise RaftlmError(
                f"ema={self.ema}: use a decay strictly between 0 and 1 (e.g. 0.99), or leave it unset"
            )
        if self.length_chunks is not None and self.length_chunks < 1:
            raise RaftlmError(f"length_chunks={self.length_chunks}: use a positive integer (1: no chunks)")
        for name in ("warmup_steps", "patience"):
            if (getattr(self, name) or 0) < 0:
                raise RaftlmError(f"{name}={getattr(self, name)}: use a number >= 0")

    @property
    def warmup(self) -> int:
        """Warmup steps: as set, or 10 % of max_steps (TRACT's schedule) when unset."""
        return round(0.1 * self.max_steps) if self.warmup_steps is None else self.warmup_steps


INT8_BF16 = "dtype=int8 feeds float32 activations to its int8 layers: drop --bf16 (bf16 autocast)"


@dataclass
class EvalConfig:
    decoder: str = field(
        default="rail", metadata={"group": "basic", "help": "rail, mode, median, greedy or sample-rail"}
    )
    split: str = field(default="test", metadata={"group": "basic", "help": "train, validation or test"})
    batch_size: int = field(default=16, metadata={"group": "basic", "help": "prediction batch size"})
    num_samples: int = field(default=32, metadata={"help": "sample-rail: samples per example (eq. 4)"})
    temperature: float = field(default=1.0, metadata={"help": "sample-rail: sampling temperature"})
    max_new_tokens: int = field(default=6, metadata={"help": "greedy/sample-rail: tokens to decode"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast at inference (true, false or auto)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model for prediction"})
    device: str = field(
        default="auto",
        metadata={
            "group": "basic",
            "help": "predict/evaluate/serve: auto (the GPU if there is one), cpu, cuda or cuda:N",
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "group": "basic",
            "help": "predict/evaluate/serve: weights in auto (bfloat16 on a GPU, else float32), float32, "
            "bfloat16, or int8 (CPU, raftlm[int8]: torchao's dynamic int8 Linear layers, the LM head float32; "
            "SmoothQuant with the activation maxima a run records when trained or calibrated) "
            "(--bf16 is autocast, a separate switch)",
        },
    )
    eval_size: int | None = field(
        default=None,
        metadata={
            "help": "evaluate: score only N examples, chosen as --train-size's; an --input file is in your "
            "order (default: the whole split)"
        },
    )
    interval: float | None = field(
        default=None,
        metadata={
            "group": "basic",
            "help": "predict: interval at this confidence level (e.g. 0.9); evaluate: only this level",
        },
    )
    interval_kind: str = field(
        default="auto",
        metadata={
            "help": "absolute, std, cqr (conformal), grid (raw quantiles); auto: cqr, absolute for a head "
            "without a grid distribution"
        },
    )

    def __post_init__(self) -> None:
        from raftlm.core import KIND_CHOICES, check_level
        from raftlm.decoders import DECODERS

        if self.interval is not None:
            self.interval = check_level(self.interval)
        if self.interval_kind not in KIND_CHOICES:
            raise RaftlmError(
                f"unknown interval kind {short(self.interval_kind)}: use one of {list(KIND_CHOICES)}"
            )

        self.bf16 = to_bf16(self.bf16, "eval.bf16", str(self.device))
        typed(self)
        if self.decoder not in DECODERS:
            raise RaftlmError(f"unknown decoder {short(self.decoder)}: use one of {list(DECODERS)}")
        if self.eval_size is not None and self.eval_size < 1:
            raise RaftlmError(f"eval_size={self.eval_size}: use a positive number of examples")
        for name in ("batch_size", "num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise RaftlmError(f"{name}={getattr(self, name)}: use a positive integer")
        if not self.temperature > 0:
            raise RaftlmError(
                f"temperature={self.temperature:g}: use a temperature > 0 (1.0: the model's own)"
            )
        if self.split not in ("train", "validation", "test"):
            raise RaftlmError(f"unknown split {short(self.split)}: use train, validation or test")
        if not DEVICE.fullmatch(self.device):
            raise RaftlmError(f"device={short(self.device)}: use auto, cpu, cuda or cuda:N")
        if self.dtype not in ("auto", "float32", "bfloat16", "int8"):
            raise RaftlmError(
                f"dtype={short(self.dtype)}: use auto, float32 or bfloat16 weights, or int8 (CPU only)"
            )
        if self.dtype == "int8" and self.device.startswith("cuda"):
            raise RaftlmError(
                "dtype=int8 runs on the CPU only: use device cpu, or dtype bfloat16 on a GPU (--device, --dtype; "
                "device=, dtype= in Python)"
            )
        if self.dtype == "int8" and self.bf16:
            raise RaftlmError(INT8_BF16)


def _rename_eval_size(data: dict | None) -> None:
    """``data.eval_size`` (raftlm 0.1) was the validation subset: read it as ``data.val_size``."""
    if data and "eval_size" in data:
        value = data.pop("eval_size")
        warn(
            "data.eval_size is deprecated: it set the validation subset, now data.val_size "
            "(--val-size); eval.eval_size (--eval-size) limits what evaluate scores",
            FutureWarning,
        )
        data.setdefault("val_size", value)


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "training": TrainConfig,
    "eval": EvalConfig,
}


def convert_setting(key: str, value, where: str | None = None):
    """``value`` converted and bounded as the setting ``key`` (SECTION.FIELD) is in a config, for values
    read elsewhere (a sweep's seeds and lrs): one check per setting, wherever it is written."""
    section, _, name = key.partition(".")
    f = next(f for f in fields(SECTIONS[section]) if f.name == name)
    return convert(f, value, where or key)


# eval settings a run takes from its training's unless given: a bf16 run evaluates, predicts and is served in
# bf16; a batch lowered for memory is lowered at validation, calibration and prediction too (the Python
# API's one batch_size always set both)
EVAL_FOLLOWS_TRAINING = ("bf16", "batch_size")


def follow_training(written: dict, training: Iterable[str], evaluation: Iterable[str]) -> None:
    """Settings ``written`` ({section: {field: value}}, e.g. a run's config.yaml, which writes the eval
    value that followed its training one) about to take the ``training`` fields given now (a flag, a
    --config recipe's or --set's): a written eval value equal to its training one keeps following, so it is
    dropped, unless ``evaluation`` gives that eval field too."""
    written_t, written_e = written.get("training") or {}, written.get("eval") or {}
    for name in set(EVAL_FOLLOWS_TRAINING) & set(training) - set(evaluation):
        if name in written_e and name in written_t and written_t[name] == written_e[name]:
            del written["eval"][name]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def build(cls, recipe: dict | None = None, overrides: dict | None = None) -> Config:
        """Merge a recipe dict ({section: {field: value}}) with overrides ({"section.field": value})."""
        for section, values in (recipe or {}).items():
            if values is not None and not isinstance(values, dict):
                raise RaftlmError(
                    f"config section {short(section)} must be a mapping of settings, got {short(values)}"
                )
        merged: dict[str, dict] = {k: dict(v or {}) for k, v in (recipe or {}).items()}
        given = [key.partition(".") for key in overrides or {}]
        follow_training(
            merged, [n for s, _, n in given if s == "training"], [n for s, _, n in given if s == "eval"]
        )
        for key, value in (overrides or {}).items():
            section, _, name = key.partition(".")
            merged.setdefault(section, {})[name] = value
        _rename_eval_size(merged.get("data"))
        training, evaluation = merged.get("training") or {}, merged.get("eval") or {}
        for name in EVAL_FOLLOWS_TRAINING:  # from a flag, a recipe, a sweep or the API alike
            if name in training and name not in evaluation:
                merged.setdefault("eval", {})[name] = training[name]
        kwargs = {}
        for section, values in merged.items():
            if section not in SECTIONS:
                raise RaftlmError(f"unknown config section {short(section)}: use {sorted(SECTIONS)}")
            known = {f.name for f in fields(SECTIONS[section])}
            for name in values:
                if name not in known:
                    raise RaftlmError(f"unknown setting {section}.{name}: known settings are {sorted(known)}")
            kwargs[section] = SECTIONS[section](**values)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str, overrides: dict | None = None) -> Config:
        return cls.build(read_recipe(path), overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass
class ServeSettings:
    """How the server listens and batches (``raftlm serve`` flags of the same names)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port; the URL is printed)"})
    max_batch: int | None = field(
        default=None,
        metadata={
            "help": "prompts per forward pass at most (a symmetric pair's row is two, both orders; the "
            "batch cap; default: the run's eval.batch_size, as predict batches)"
        },
    )
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "wait this long after the oldest queued row for more rows"}
    )
    max_queue: int = field(default=1024, metadata={"help": "rows waiting at most; more get 503"})
    max_rows: int = field(default=256, metadata={"help": "rows per request at most; more get 413"})
    max_body_kb: int = field(default=1024, metadata={"help": "request body size limit in KiB (413)"})
    body_timeout_s: float = field(
        default=10.0,
        metadata={"help": "seconds a request's body may take to arrive once its headers did (408)"},
    )
    graceful_timeout_s: float = field(
        default=5.0,
        metadata={"help": "on SIGTERM: seconds requests in flight get to finish; the rest get 503"},
    )
    access_log: bool = field(
        default=True, metadata={"help": "one access log line per request on stderr (--no-access-log: none)"}
    )
    metrics: bool = field(
        default=True, metadata={"help": "Prometheus metrics at GET /metrics (--no-metrics: off)"}
    )

    def __post_init__(self) -> None:
        for f in fields(self):  # finite numbers of the right type, whatever the caller passed
            if getattr(self, f.name) is not None or not f.type.endswith("| None"):
                setattr(self, f.name, convert(f, getattr(self, f.name), f"--{f.name.replace('_', '-')}"))
        for name in ("max_batch", "max_queue", "max_rows", "max_body_kb"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RaftlmError(f"{name}={getattr(self, name)}: use a positive integer")
        if self.max_wait_ms > 60_000:
            raise RaftlmError(f"max_wait_ms={self.max_wait_ms:g}: use a wait of at most 60000 ms")
        if not 0 <= self.port <= 65535:
            raise RaftlmError(f"port={self.port}: use a TCP port in 0..65535")
        if self.max_wait_ms < 0:
            raise RaftlmError(f"max_wait_ms={self.max_wait_ms}: use a wait >= 0")
        if not 0 < self.body_timeout_s <= 3600:
            raise RaftlmError(f"body_timeout_s={self.body_timeout_s:g}: use a time in (0, 3600] seconds")
        if not 0 <= self.graceful_timeout_s <= 600:
            raise RaftlmError(
                f"graceful_timeout_s={self.graceful_timeout_s:g}: use a time in [0, 600] seconds"
            )
        if self.max_rows > self.max_queue:
            raise RaftlmError(
                f"max_rows={self.max_rows} exceeds max_queue={self.max_queue}: such a request could never "
                "be queued; raise --max-queue or lower --max-rows"
            )

    def for_run(self, cfg: Config) -> ServeSettings:
        """These settings with --max-batch, when not given, at the run's eval.batch_size: the batches
        `raftlm predict` runs, so a request of up to that many rows gets predict's numbers to the last bit."""
        return self if self.max_batch is not None else replace(self, max_batch=cfg.eval.batch_size)


MAX_YAML_NODES = 100_000  # values a YAML document may expand to through aliases (recipes hold ~100)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently), naming the key and both lines."""

    where = "YAML"

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise RaftlmError(
                    f"{self.where}: key {short(key_node.value)} appears twice in one mapping (lines "
                    f"{seen[key]} and {line}): keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _number_without_underscores(loader, node):
    """YAML 1.1 reads 1_000 as the number 1000 (and 0x10 as 16, 1:30 as 90): a number in a raftlm file is
    plain decimal digits, so such a value stays text and the setting refuses it as not a number."""
    text = node.value
    if "_" in text or ":" in text or text.lower().lstrip("+-").startswith(("0x", "0o", "0b")):
        return text
    if node.tag.endswith(":int"):
        if text.lstrip("+-").startswith("0") and text.lstrip("+-").isdigit():
            return int(text, 10)  # 017 is seventeen (YAML 1.1 reads it as octal 15)
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    return yaml.SafeLoader.construct_yaml_float(loader, node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _number_without_underscores)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _number_without_underscores)


def _expanded_size(node, memo: dict) -> int:
    """Values a YAML node stands for once every alias is expanded (counted without expanding)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_NODES + 1  # a cycle counts as too big
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def load_yaml(text: str, where: str):
    """Parse YAML the one way raftlm reads every recipe, sweep, saved config and --set value: safe tags
    only, no duplicate keys, aliases bounded (a "billion laughs" document is refused before it expands).
    Any problem is a RaftlmError naming ``where``."""
    try:
        loader = _StrictLoader(text)  # (its reader already refuses control characters)
    except yaml.YAMLError as err:
        raise RaftlmError(
            f"{where} is not valid YAML ({short(getattr(err, 'reason', None) or err)}): fix it"
        ) from None
    loader.where = where
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise RaftlmError(
                f"{where}: its aliases expand to over {MAX_YAML_NODES:,} values: write the values out"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RaftlmError(f"{where} is not valid YAML ({short(problem)}{at}): fix its syntax") from None
    except RecursionError:
        raise RaftlmError(f"{where}: nested too deeply: flatten it") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str) -> object:
    """``load_yaml`` of a file (``what``: "config file", "sweep file"...), with one line when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise RaftlmError(f"{what} {path} is a folder: give the YAML file's path") from None
    except (FileNotFoundError, NotADirectoryError):
        raise RaftlmError(f"{what} {path} not found: check the path") from None
    except UnicodeDecodeError:
        raise RaftlmError(f"{what} {path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as err:
        raise RaftlmError(f"cannot read {what} {path} ({err.strerror}): check the path") from None
    return load_yaml(text, f"{what} {path}")


def read_recipe(path: str) -> dict:
    """A YAML recipe as {section: {field: value}}, values as written (``Config.build`` converts them)."""
    recipe = read_yaml_file(path, "config file") or {}
    if not isinstance(recipe, dict):
        raise RaftlmError(f"config file {path} must be a mapping of sections: see recipes/")
    for section, values in recipe.items():
        if values is not None and not isinstance(values, dict):
            raise RaftlmError(f"config file {path}: section {short(section)} must be a mapping of settings")
    return recipe
