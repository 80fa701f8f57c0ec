"""bf16 autocast against float32 on this CPU: does ``--bf16`` speed raftlm up here, or slow it down?

bf16 autocast halves a step's time on CPUs with bf16 units (AVX512-BF16 or AMX) and multiplies it on
CPUs without them; raftlm warns when ``--bf16`` runs on such a CPU (``core.warn_slow_bf16``). This
measures both on the CPU it runs on, with no download: Gemma 3 270M decoder blocks (random weights,
the model's own sizes: 640 dims, MLP 2048, 4 heads of 256; two of them) forward + backward on a batch
of 16 x 128 tokens, one of its MLP's linear layers alone, and the two blocks frozen, forward only (as in
inference and the frozen-block cache; also with the weights stored in bf16, ``--dtype bfloat16``); float32 and bf16 autocast in interleaved rounds,
medians and the bf16 / float32 ratio. Each machine's figures are kept in the results file under its
CPU's name and bf16 flags, beside the other machines'.

    python benchmarks/bf16_cpu.py
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from raftlm.core import BF16_CPU_FLAGS, cpu_flags, cpu_has_bf16, read_cpuinfo
from raftlm.io import write_json

RESULTS = Path(__file__).parent / "results" / "bf16_cpu.json"


def cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gemma_blocks(layers: int = 2):
    """Gemma 3 270M's decoder blocks at their real size (a small vocabulary: the LM head is not timed
    here; raftlm runs it in float32 either way)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        hidden_size=640,
        intermediate_size=2048,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        num_hidden_layers=layers,
        vocab_size=256,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return cfg, Gemma3ForCausalLM(cfg)


def timer(fn, bf16: bool):
    def run() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fn()
        return time.perf_counter() - start

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()

    cfg, model = gemma_blocks()
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.tokens))
    linear = model.model.layers[0].mlp.up_proj
    flat = torch.randn(a.batch * a.tokens, cfg.hidden_size)

    def block_step():
        model(input_ids=ids, labels=ids).loss.backward()

    def linear_forward():
        with torch.no_grad():
            linear(flat)

    # inference and the frozen-block cache: weights that do not train. autocast caches its bf16 copy of a
    # weight only for weights that require grad, so a frozen weight is cast again at every op; weights
    # stored in bf16 (--dtype bfloat16) are not cast at all
    _, frozen = gemma_blocks()
    frozen.requires_grad_(False).eval()
    stored = copy.deepcopy(frozen).to(torch.bfloat16)

    def frozen_forward(model=frozen):
        with torch.no_grad():
            model(input_ids=ids)

    cases = {
        "2 decoder blocks forward + backward": (block_step, None),
        "MLP linear forward": (linear_forward, None),
        "2 frozen decoder blocks forward (inference, the frozen-block cache)": (
            frozen_forward,
            lambda: frozen_forward(stored),
        ),
    }
    rows = {}
    for name, (fn, bf16_fn) in cases.items():
        times = {False: [], True: []}
        runs = {False: timer(fn, False), True: timer(fn, True)}
        if bf16_fn is not None:
            times["stored"], runs["stored"] = [], timer(bf16_fn, False)
        for run in runs.values():  # warm-up
            run()
        for _ in range(a.rounds):
            for key, run in runs.items():
                times[key].append(run())
        f32, b16 = statistics.median(times[False]), statistics.median(times[True])
        rows[name] = {
            "float32_ms": round(1000 * f32, 1),
            "bf16_autocast_ms": round(1000 * b16, 1),
            "bf16_over_float32": round(b16 / f32, 2),
        }
        said = f"{name}: float32 {1000 * f32:.1f} ms, bf16 autocast {1000 * b16:.1f} ms: x{b16 / f32:.2f}"
        if "stored" in times:
            st = statistics.median(times["stored"])
            rows[name] |= {
                "bf16_weights_ms": round(1000 * st, 1),
                "bf16_weights_over_float32": round(st / f32, 2),
            }
            said += f"; weights stored in bf16 {1000 * st:.1f} ms: x{st / f32:.2f}"
        print(said)

    cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo)  # those that decide bf16 speed
    simd = [flag for flag in ("avx2", "avx512f", *BF16_CPU_FLAGS, "amx_tile") if flag in flags]
    name = cpu_name(cpuinfo)
    machine = f"{name} [{' '.join(simd)}]"
    entry = {
        "cpu": name,
        "flags": simd,
        "cpu_has_bf16": cpu_has_bf16(cpuinfo),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": [a.batch, a.tokens],
        "rounds": a.rounds,
        "cases": rows,
    }
    results = json.loads(a.out.read_text()) if a.out.exists() else {}
    results[machine] = entry
    write_json(a.out, results)
    print(f"{machine}: cpu_has_bf16 {entry['cpu_has_bf16']} -> {a.out}")


if __name__ == "__main__":
    main()
