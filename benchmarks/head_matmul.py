"""The LM head's matmul for the few rows raftlm reads: ``F.linear`` against raftlm's ``TallWeightLinear``.

raftlm applies the LM head at the answer position of each prompt only (``logits_to_keep``), so a batch
multiplies a few rows by the whole V x D head (Gemma 3 270M: 262,144 x 640, 671 MB in float32). On a CPU,
MKL runs ``F.linear``'s ``x @ W.T`` for such shapes on a slow path; ``TallWeightLinear`` computes ``W @ x.T``
(and pads the backward's rows to a multiple of 4). This times both, forward alone and forward + backward of
a logsumexp (what RAFT's loss needs of the head), for 1-32 rows, interleaved in rounds (order rotated):
median milliseconds per shape, and the ratio of the medians.

    python benchmarks/head_matmul.py            # writes benchmarks/results/head_matmul.json + .md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from raftlm.io import write_json, write_text
from raftlm.scoring import TallWeightLinear

RESULTS = Path(__file__).parent / "results" / "head_matmul"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(vocab: int, dim: int, rows: list[int], rounds: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    weight = torch.randn(vocab, dim) * 0.02
    paths = {
        "F.linear": lambda x: torch.nn.functional.linear(x, weight),
        "TallWeightLinear": lambda x: TallWeightLinear.apply(x, weight),
    }
    out = []
    for n in rows:
        x = torch.randn(n, dim)
        xg = x.clone().requires_grad_(True)
        runs = {name: {"forward": [], "forward+backward": []} for name in paths}
        for r in range(rounds):
            names = list(paths)[r % 2 :] + list(paths)[: r % 2]
            for name in names:
                f = paths[name]
                runs[name]["forward"].append(timed(lambda f=f, x=x: f(x), repeats))
                train = lambda f=f, xg=xg: f(xg).logsumexp(-1).sum().backward()  # noqa: E731
                runs[name]["forward+backward"].append(timed(train, repeats))
        row = {"rows": n}
        for part in ("forward", "forward+backward"):
            plain = statistics.median(runs["F.linear"][part])
            tall = statistics.median(runs["TallWeightLinear"][part])
            row[part] = {"F.linear_ms": plain, "TallWeightLinear_ms": tall, "speedup": plain / tall}
        out.append(row)
    return out


def markdown(res: dict) -> str:
    lines = [
        "# The LM head's matmul for a few rows (`benchmarks/head_matmul.py`)",
        "",
        f"{res['vocab']:,} x {res['dim']} float32 weight (Gemma 3 270M's head), {res['threads']} threads, "
        f"{res['machine']}; median ms over {res['rounds']} rounds of {res['repeats']} calls each.",
        "",
        "| rows | forward: F.linear | TallWeightLinear | speedup | fwd+bwd: F.linear | TallWeightLinear | speedup |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["shapes"]:
        f, t = r["forward"], r["forward+backward"]
        lines.append(
            f"| {r['rows']} | {f['F.linear_ms']:.0f} | {f['TallWeightLinear_ms']:.0f} | {f['speedup']:.2f}x "
            f"| {t['F.linear_ms']:.0f} | {t['TallWeightLinear_ms']:.0f} | {t['speedup']:.2f}x |"
        )
    s = res["summary"]
    lines += [
        "",
        f"Forward + backward, 2 rows or more: median speedup {s['median_speedup']:.2f}x "
        f"(range {s['min_speedup']:.2f}-{s['max_speedup']:.2f}x).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--rows", type=int, nargs="*", default=[*range(1, 17), 20, 24, 31, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    shapes = measure(a.vocab, a.dim, a.rows, a.rounds, a.repeats)
    several = [r["forward+backward"]["speedup"] for r in shapes if r["rows"] >= 2]
    res = {
        "vocab": a.vocab,
        "dim": a.dim,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "rounds": a.rounds,
        "repeats": a.repeats,
        "shapes": shapes,
        "summary": {
            "median_speedup": statistics.median(several),
            "min_speedup": min(several),
            "max_speedup": max(several),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS.with_suffix(".json"), res)
    write_text(RESULTS.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
