"""The small types everything else uses: examples, a dataset's splits, decision rules, the user error."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import reprlib
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class RaftlmError(ValueError):
    """A user-facing error: one line that names the problem and the fix (CLI exit code 2)."""


class RaftlmWarning(UserWarning):
    """raftlm's own warnings (a collapsing run, truncated prompts, targets outside the grid, ...)."""


def warn(message: str, category: type[Warning] = RaftlmWarning) -> None:
    """Warn about ``message`` from raftlm's own line, however deep in a library raftlm was called from
    (a validation inside Trainer would otherwise be shown at transformers/trainer.py): the warning
    names the raftlm function that raised it, keeps Python's once-per-location rule, and can be filtered
    by its category or by module ``raftlm.*``. The command line prints it as one ``warning:`` line."""
    frame = sys._getframe(1)
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message, category, frame.f_code.co_filename, frame.f_lineno, frame.f_globals.get("__name__"), registry
    )


def _torchao_notice(record) -> bool:
    """False for two notices torchao's import gives on every machine (transformers imports it whenever it
    is installed, raftlm's ``--dtype int8`` extra): CUDA kernels it cannot load without a GPU, and torch's
    deprecation of how it registers its enums. Neither concerns anything raftlm runs."""
    text = str(record.msg)
    cuda_kernels = text.startswith("Failed to load ") and "torchao" in text and "/_C" in text
    return not (cuda_kernels or "is an Enum subclass and is now natively supported by torch.compile" in text)


for _name in ("torchao", "torch.utils._pytree"):  # before transformers (or anything) imports torchao
    logging.getLogger(_name).addFilter(_torchao_notice)


_SHORT = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 6, 6
_SHORT.maxtuple, _SHORT.maxset, _SHORT.maxlevel, _SHORT.maxlong = 6, 6, 2, 40


def short(value: object) -> str:
    """A bounded repr for messages: a user's value is echoed in at most ~80 characters, however big
    (a YAML alias bomb, a 750 KB text, a 5,000-digit number) and whatever it holds (lone surrogates
    come out escaped)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 80 else text[:76] + "...]"


@dataclass(frozen=True)
class Example:
    """One regression example: the rendered prompt text and its numeric target (None when unknown)."""

    text: str
    target: float | None = None
    fields: tuple | None = None  # ((name, text), ...) of the template's fields, when rendered from a row

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise RaftlmError(
                "empty text in an example: every input needs non-empty text (drop or fill the row)"
            )
        if self.target is not None and not math.isfinite(self.target):
            raise RaftlmError(
                f"non-finite target {self.target!r}: drop or fix rows whose target is NaN or inf"
            )


@dataclass
class Splits:
    """A dataset's splits plus the defaults that come with it (prompt, grid, target scaling)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    template: str
    grid: str = "1-5"
    target_range: object = None  # None | "auto" | [lo, hi]
    source: dict | None = None  # where the data came from when a run should record it (STS-B: Hub or files)
    pair_swap: str | None = None  # a symmetric pair of template fields (STS-B's two sentences)
    # the splits kept in their source's order (a file's split column, a Hub dataset, Python lists, STS-B's
    # official files, sorted by genre), which may be sorted: a size cap samples them (raftlm.data.cap); the
    # others raftlm shuffled (or are in no meaningful order), so their first rows are already a sample
    file_order: tuple[str, ...] = ()

    def in_file_order(self, name: str) -> bool:
        return name in self.file_order

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "validation", "test"):
            raise RaftlmError(f"unknown split {name!r}: use train, validation or test")
        return getattr(self, name)


class DecisionRule(Protocol):
    """A pure function from grid values and per-example grid probabilities to point predictions."""

    def __call__(self, values: np.ndarray, probs: np.ndarray) -> np.ndarray: ...


# The interval kinds of ``raftlm.uncertainty.KINDS`` and "auto", and the check of a confidence level, here
# so that the command line and the config do not import scikit-learn (uncertainty does);
# tests/test_uncertainty.py checks the names agree.
KIND_CHOICES = ("auto", "absolute", "std", "cqr", "grid")

CE_TARGETS = ("nearest", "two-hot")  # RAFTLoss's CE target over the grid (losses.ce_targets)


def to_number(value) -> float:
    """``float(value)`` without Python's extras, the one way raftlm reads a number a user wrote as text:
    ``"1_0"`` (digit grouping) and non-ASCII digits (``"１"``) are a ValueError, not 10 and 1; JSON
    ``true`` is a TypeError. Non-finite values pass (callers name them in their own words)."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, str) and ("_" in value or not value.isascii()):
        raise ValueError(f"not a plain number: {short(value)}")
    return float(value)


def to_whole(text: str) -> int:
    """An integer written as plain ASCII digits with an optional sign (no ``_``, no ``.``), else ValueError."""
    text = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f"not a whole number: {short(text)}")
    return int(text)


def level_text(level: float) -> str:
    """A confidence level as text for a message: every digit it has (0.9999999 is not "1")."""
    return repr(float(level))


def check_level(level) -> float:
    """A confidence level as a float strictly between 0 and 1, else a one-line error."""
    try:
        value = to_number(level)
    except (TypeError, ValueError, OverflowError):
        value = None
    shown = short(level.item() if hasattr(level, "item") else level)
    if value is None or not 0.0 < value < 1.0:  # also rejects nan
        what = "is not a number" if value is None else "must lie"
        raise RaftlmError(
            f"confidence level {shown} {what} strictly between 0 and 1: use e.g. 0.9 for a 90 % interval"
        )
    if 1.0 - value == 1.0:  # its miscoverage 1 - level rounds to 1: no interval arithmetic holds there
        raise RaftlmError(
            f"confidence level {shown} is too close to 0 to compute an interval at: use e.g. 0.5 or 0.9"
        )
    return value


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def launch_state():
    """The processes of this launch (torchrun / accelerate launch; one when launched plainly), as accelerate
    sees them. Without a GPU accelerate joins several processes only when told to use the CPU (gloo): a bare
    ``PartialState()`` there is one process on every rank, so every rank took itself for the main one (wrote
    the run's files) and its barriers waited for nobody."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def cpu_only() -> bool:
    """Whether this process trains and joins its launch on the CPU: no GPU, or ``accelerate launch --cpu``
    (ACCELERATE_USE_CPU), as TrainingArguments' ``use_cpu`` and accelerate's state must agree."""
    import torch

    return env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def env_flag(name: str) -> bool:
    """An environment variable set to a true value, as accelerate reads its flags (``str_to_bool``)."""
    return os.environ.get(name, "").strip().lower() in ("1", "y", "yes", "t", "true", "on")


@functools.cache
def read_cpuinfo() -> str:
    """Linux's /proc/cpuinfo ("" where there is none), read once per process: ``bf16: auto`` resolves per
    predict call (RAFTRegressor), and the CPU does not change under a running process."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo's ``flags`` lines; ``cpuinfo`` is its text, for tests."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU's flags name bf16 units (AVX512-BF16 or AMX); without them bf16 autocast slows it
    down (a Gemma RAFT step 3.3x slower measured, DEVELOPERS.md), and with them it may still
    (``cpu_bf16_speedup`` measures it). Reads Linux's
    /proc/cpuinfo (False where there is none); ``cpuinfo`` is its text, for tests."""
    flags = cpu_flags(cpuinfo)
    return any(flag in flags for flag in BF16_CPU_FLAGS)


BF16_MIN_SPEEDUP = 1.2  # a CPU's bf16 matmul counts as fast at this many times float32's throughput


@functools.cache
def cpu_bf16_speedup() -> float | None:
    """bf16 matmul throughput over float32's on this CPU, measured once per process (~0.2 s; None without
    bf16 flags: not measured). The flags alone do not decide it: an Intel Xeon with avx512_bf16 and no
    AMX ran a bf16 matmul at 0.6x float32's and Gemma's training step 1.5x slower under autocast, while
    an earlier machine's bf16 matmul peak was over twice float32's (benchmarks/bf16_cpu.py, speed.json)."""
    if not cpu_has_bf16():
        return None
    import time

    import torch

    a, b = torch.randn(1024, 640), torch.randn(640, 2048)  # a Gemma 3 270M MLP projection's shape
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    times = {dtype: [] for dtype in pairs}
    for round_ in range(6):  # interleaved, the first round a warm-up: a busy machine slows both alike
        for dtype, (x, y) in pairs.items():
            start = time.perf_counter()
            for _ in range(3):
                x @ y
            if round_:
                times[dtype].append(time.perf_counter() - start)
    return min(times[torch.float32]) / min(times[torch.bfloat16])


def cpu_bf16_is_fast() -> bool:
    """Whether bf16 autocast speeds this CPU up: bf16 flags, and a bf16 matmul measured at least
    ``BF16_MIN_SPEEDUP`` times as fast as float32's."""
    speedup = cpu_bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def bf16_is_fast(device: str = "auto") -> bool:
    """What ``bf16: auto`` resolves to: whether bf16 autocast speeds this machine up. On the GPU that will
    run (``device`` auto or cuda[:N] with one present): whether it supports bf16; on a CPU: whether its
    bf16 matmul measures faster than float32's (``cpu_bf16_is_fast``)."""
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
    return cpu_bf16_is_fast()


SLOW_BF16 = (
    "bf16 autocast on a CPU without bf16 units (no avx512_bf16 / amx_bf16 in /proc/cpuinfo) runs several"
    " times slower than float32 (a Gemma training step 36x on an AVX2-only EPYC, benchmarks/bf16_cpu.py):"
    " drop --bf16 on this machine"
)


def slow_bf16_message() -> str:
    speedup = cpu_bf16_speedup()
    if speedup is None:
        return SLOW_BF16
    return (
        f"bf16 autocast is slower than float32 on this CPU: its bf16 matmul measured {speedup:.2f}x float32's "
        "throughput (bf16 flags without fast bf16 units, e.g. avx512_bf16 without AMX; benchmarks/bf16_cpu.py): "
        "drop --bf16 on this machine"
    )


@functools.cache
def warn_slow_bf16() -> None:
    """Call before bf16 autocast runs on a CPU: asks the CPU once per process and warns (once) where
    bf16 is a slowdown; ``warn_slow_bf16.cache_clear()`` rearms it."""
    if not cpu_bf16_is_fast():
        warn(slow_bf16_message(), RuntimeWarning)


class StoppedClock:
    """Wall seconds this process did not run while the clock was open: stopped (SIGSTOP, Ctrl-Z, a
    benchmark queue pausing it) or, on clocks that count it, a suspended machine. Trainer's
    ``train_runtime`` counts those seconds; subtracting these makes a run's time its working time.

    A daemon thread waits ``tick`` seconds at a time; a wake more than ``slack`` seconds late means the
    process did not run, and the time past ``tick`` is counted. Lateness is read on ``CLOCK_BOOTTIME``
    (Linux; elsewhere ``time.monotonic``), which counts stops and a suspended machine as Trainer's
    ``time.time`` does but not a step of the wall clock (NTP, a changed time zone setting): a clock set
    forward by an hour is not an hour stopped. Torch
    ops release the GIL and Python threads switch every 5 ms, so a busy step delays a wake by
    milliseconds, far under ``slack``. Example: stopped for 10 s with tick 1 -> the wake after the stop
    comes ~11 s after the last -> 10 s counted (to within a tick).
    """

    def __init__(self, tick: float = 1.0, slack: float = 4.0):
        self.tick, self.slack = tick, slack
        self.stopped = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raftlm-stopped-clock", daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> float:
        boot = getattr(time, "CLOCK_BOOTTIME", None)
        return time.clock_gettime(boot) if boot is not None else time.monotonic()

    def _run(self) -> None:
        last = self._now()
        while not self._done.wait(self.tick):
            now = self._now()
            if now - last > self.tick + self.slack:
                self.stopped += now - last - self.tick
            last = now

    def close(self) -> float:
        """Stop the thread; the seconds counted."""
        self._done.set()
        self._thread.join()
        return self.stopped
