from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

SHARED_STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def train_args(data, out, *extra) -> list[str]:
    """`raftlm train` on the tiny model: 4 steps, validation (and a checkpoint) every 2."""
    return [
        "train",
        "--model",
        "tiny-random-llama",
        "--dataset",
        f"csv:{data}",
        "--output-dir",
        str(out),
        "--max-steps",
        "4",
        "--eval-steps",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        *extra,
    ]


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def benchmark_module(name: str):
    """benchmarks/NAME.py loaded as a fresh module (benchmarks/ is not a package; its scripts import each
    other by name, so the folder goes on sys.path)."""
    import sys

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
