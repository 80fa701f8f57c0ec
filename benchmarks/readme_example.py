"""How long the README's Python example takes with the real default model, as a newcomer runs it.

Runs the README's ``## Python`` block verbatim (Gemma 3 270M and the defaults but the block's own settings:
100 steps of batch 16 on its 14 training reviews, validation on 6 every 25 steps, conformal calibration, a
prediction and an interval, a save) in a temporary folder, and writes the wall minutes (model loading included), the CPU and its thread count to
``benchmarks/results/readme_example.json``; ``benchmarks/docs.py`` puts the minutes into the README beside
the block. tests/test_readme.py runs the same block with the tiny model. Time it alone (on a shared machine
through ``benchmarks/paused.sh``): another torch process on the same cores slows it several times.

    python benchmarks/readme_example.py
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from raftlm.core import read_cpuinfo
from raftlm.io import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "readme_example.json"


def python_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python\n(.*?)(?=^## |\Z)", readme, re.S | re.M)[1]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return block


def main() -> None:
    code = python_block()
    printed = io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, "README.md", "exec"), {})
            seconds = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in read_cpuinfo().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    result = {
        "minutes": seconds / 60,
        "printed": printed.getvalue().strip(),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    write_json(RESULTS, result)
    print(
        f"README's Python example: {seconds / 60:.1f} min on {cpu} ({result['threads']} threads) -> {RESULTS}"
    )
    print(result["printed"])


if __name__ == "__main__":
    main()
