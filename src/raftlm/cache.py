"""Train the top N blocks from cached hidden states: the frozen blocks below run once per example.

With ``trainable: top-N`` (or ``none``: a head on a frozen backbone) the embeddings and the first
``L - N`` blocks never change, so every epoch recomputes the same activations for an example. Here they
are computed once, with the frozen part in eval mode (no dropout there), and training runs the model
with those blocks turned into identities and the cached states fed as ``inputs_embeds``: the rest of
the model (rotary positions, masks, the trained blocks, final norm, LM head or predictive head) runs
as usual, so every loss and head works unchanged.

Cost per step, in block-forwards (a backward is about two): uncached L + 2N + F, cached 3N + F, with
F the fixed cost of the LM head, loss and optimizer (``benchmarks/speed.py`` measures both).

Storage: float32 rows of the hidden size per token, in RAM, or in a memory-mapped file beside the run
when they would take more than ``RAM_FRACTION`` of the available memory (the page cache then keeps what
fits); a store that would not fit on the disk either is refused before any work.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from raftlm.config import top_blocks
from raftlm.core import RaftlmError
from raftlm.io import HIDDEN_CACHE_PREFIX, HIDDEN_CACHE_SUFFIX, local_launch_size
from raftlm.models import decoder_layers
from raftlm.scoring import PromptBatch, left_pad

log = logging.getLogger(__name__)

RAM_FRACTION = 0.25  # beyond this share of available memory the store goes to disk


def frozen_blocks(model, trainable: str) -> int:
    """How many bottom blocks never train under ``trainable`` (0: nothing to cache)."""
    n_layers = len(decoder_layers(model))
    if trainable == "none":
        return n_layers
    if (top := top_blocks(trainable)) is not None:
        return max(n_layers - top, 0)
    return 0  # full and lora train every block


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def pass_through(layers: list):
    """The given blocks return their input unchanged while inside (their weights are untouched)."""
    for layer in layers:
        layer.forward = _identity
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def skip_frozen(model, k: int):
    """Running from cached states: blocks ``0..k-1`` are identities (k = 0: the model as it is)."""
    return pass_through(list(decoder_layers(model))[:k])


def _base(model):
    """The transformer under the LM head (through peft and DDP wrappers)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return inner.get_decoder() if hasattr(inner, "get_decoder") else inner


@torch.no_grad()
def bottom_hidden(model, batch: PromptBatch, k: int) -> torch.Tensor:
    """Hidden states after block ``k - 1`` (before any later block), shape (B, T, D)."""
    layers = decoder_layers(model)
    captured = {}

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    hook = layers[k - 1].register_forward_hook(grab)
    try:
        with pass_through(list(layers)[k:]):  # building the cache needs only the bottom
            _base(model)(**batch.model_inputs())
    finally:
        hook.remove()
    return captured["h"]


def stack_states(store: HiddenStore, rows: list[int], width: int) -> torch.Tensor:
    """The stored states of ``rows`` as a left-padded (B, width, D) batch, zeros at the pads."""
    hidden = torch.zeros((len(rows), width, store.dim))
    for j, i in enumerate(rows):
        h = store.get(int(i))
        hidden[j, width - len(h) :] = h
    return hidden


@contextlib.contextmanager
def cached_prompts(predictor, texts: list[str], store: HiddenStore, k: int):
    """Inside, ``predictor`` scores exactly ``texts`` (any other list as usual) from ``store``, their
    states after the ``k`` frozen blocks (``build_store`` over ``predictor.encode(texts)``), running only
    the blocks above: validation during a cached run skips the frozen blocks as training does."""
    predictor.frozen_states = (list(texts), store, k)
    try:
        yield
    finally:
        predictor.frozen_states = None


class HiddenStore:
    """Per-example hidden states (ragged: one row per token), in RAM or memory-mapped on disk."""

    def __init__(self, lengths: list[int], dim: int, workdir: Path, ram_bytes: int | None = None):
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.dim = dim
        need = int(self.offsets[-1]) * dim * 4
        self.nbytes, self.path = need, None
        # every process of a launch on this machine builds its own copy: each gets its share of both
        copies = local_launch_size()
        budget = RAM_FRACTION * (ram_bytes if ram_bytes is not None else available_memory()) / copies
        if need <= budget:
            self.rows = np.zeros((int(self.offsets[-1]), dim), dtype=np.float32)
            return
        workdir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(workdir).free
        if need * copies > 0.9 * free:
            each = f", one for each of {copies} processes on this machine" if copies > 1 else ""
            raise RaftlmError(
                f"the hidden-state cache needs {need * copies / 2**30:.1f} GiB{each}, more than "
                f"{RAM_FRACTION:.0%} of the memory and than the free disk ({free / 2**30:.1f} GiB): set "
                "training.cache_frozen: false, or use fewer training examples"
            )
        fd, name = tempfile.mkstemp(prefix=HIDDEN_CACHE_PREFIX, suffix=HIDDEN_CACHE_SUFFIX, dir=workdir)
        os.close(fd)
        self.path = Path(name)
        self.rows = np.memmap(self.path, dtype=np.float32, mode="w+", shape=(int(self.offsets[-1]), dim))

    def put(self, i: int, hidden: torch.Tensor) -> None:
        self.rows[self.offsets[i] : self.offsets[i + 1]] = hidden.float().cpu().numpy()

    def get(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.rows[self.offsets[i] : self.offsets[i + 1]]))

    kept = False  # held by ``reuse_stores`` for the next run: its owner's close() leaves it

    def close(self) -> None:
        """Release the rows (and delete the disk file, if any); a store ``reuse_stores`` keeps stays."""
        if not self.kept:
            self.release()

    def release(self) -> None:
        self.rows = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# while ``reuse_stores`` runs: the stores built, by what determines their rows, most recently used last
_KEPT: dict[str, HiddenStore] | None = None
KEEP = 2  # a run's training and validation stores


@contextlib.contextmanager
def reuse_stores():
    """Within it, a store is built once for the same frozen weights, token sequences and settings, and
    later runs in this process get it back (``raftlm experiment``: cells that differ only in LR, seed or
    what trains above the frozen blocks, one after another, share their states: the frozen blocks' pass
    over the training set takes minutes of a cell on a CPU). The rows are the ones a fresh build gives
    (the same computation). The last ``KEEP`` stores used stay in RAM (one let go is freed with its last
    reference, never under a run using it); a store too large for RAM (on disk beside its run) is never
    kept."""
    global _KEPT
    outer, _KEPT = _KEPT, {}
    try:
        yield
    finally:
        for store in _KEPT.values():  # (a run still holding one closes it as usual)
            store.kept = False
        _KEPT = outer


def _store_key(model, seqs, k: int, pad_id: int, batch_size: int, bf16: bool, bidirectional: bool) -> str:
    """What a store's rows depend on: the embeddings' and the ``k`` frozen blocks' weights (their bytes),
    the model's configuration, the sequences and how they are batched."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((k, pad_id, batch_size, bf16, bidirectional, model.config.to_json_string())).encode())
    frozen = [_base(model).get_input_embeddings(), *list(decoder_layers(model))[:k]]
    for module in frozen:
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            h.update(name.encode())
            h.update(repr((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # (0-dim too)
    for seq in seqs:
        h.update(np.asarray(seq, dtype=np.int64).tobytes() + b";")
    return h.hexdigest()


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; total physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_store(
    model,
    seqs: list[list[int]],
    k: int,
    pad_id: int,
    workdir: Path,
    batch_size: int = 16,
    bf16: bool = False,
    bidirectional: bool = False,
) -> HiddenStore:
    """Run the frozen bottom (eval mode) once over every token sequence; length-bucketed batches. Inside
    ``reuse_stores``, a store built for the same inputs is returned instead."""
    key = None
    if _KEPT is not None:
        key = _store_key(model, seqs, k, pad_id, batch_size, bf16, bidirectional)
        if key in _KEPT:
            _KEPT[key] = _KEPT.pop(key)  # used last
            log.info(
                "frozen-block cache: the states of %d sequences, built for an earlier run, reused", len(seqs)
            )
            return _KEPT[key]
    store = _build(model, seqs, k, pad_id, workdir, batch_size, bf16, bidirectional)
    if key is not None and store.path is None:
        store.kept = True
        _KEPT[key] = store
        while len(_KEPT) > KEEP:  # the least recently used is let go: freed with its last reference
            _KEPT.pop(next(iter(_KEPT))).kept = False
    return store


def _build(model, seqs, k, pad_id, workdir, batch_size, bf16, bidirectional) -> HiddenStore:
    dim = model.config.get_text_config().hidden_size
    store = HiddenStore([len(s) for s in seqs], dim, workdir)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = left_pad([seqs[i] for i in chunk], pad_id, bidirectional).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hidden = bottom_hidden(model, batch, k)
            for j, i in enumerate(chunk):
                store.put(int(i), hidden[j, hidden.shape[1] - len(seqs[i]) :])
    finally:
        model.train(was_training)
    return store
