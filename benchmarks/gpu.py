"""The GPU check of issue 41, run by benchmarks/gpu.sh on a lent CUDA machine (about 8 minutes there):

1. the default recipe's train step (top 9 of 18 blocks from cached states, and all blocks), bf16 autocast:
   seconds per step from two runs of different lengths (the difference cancels loading and caching);
2. one table-3 cell end to end: `raftlm experiment` on table3-converged's protocol (500 steps of batch 16,
   validation every 50 on 300 rows, the whole test split) for the default (RAFT + 1.0 x CE, two-hot) on
   Amazon snippets, LR 1e-4, seed 0, bf16: wall seconds of the whole cell;
3. `raftlm predict` rows/s of that run (bf16 weights on the GPU): (N - 1) rows over the wall-time
   difference of an N-row and a 1-row prediction, so loading is not counted;
4. `raftlm serve` rows/s (benchmarks/serve.py: 16 closed-loop clients, micro-batched);
5. FSDP: `raftlm train` under accelerate's FSDP2 plugin (torchrun, one process: the GPU machine has one
   GPU) equals the same run without it (accelerate picks FSDP only for GPU processes; docs/scale.md).

The device machine reaches no network, so the Gemma 3 270M used here has the real architecture and tokenizer
but random weights (speed does not depend on them; the cell's RMSE means nothing), and Amazon snippets come
as a CSV of the same splits: `--prepare` makes both here (gpu_carry/). `--dry-run` runs every step on
this machine's CPU with the tiny random model and tiny sizes, to check the script. Results: OUT/gpu.json
and OUT/gpu.md (the Markdown is written from the JSON).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {  # (short, long) train steps for the step time; predict rows; cell steps; serve requests per client
    "gpu": {"steps": (20, 120), "rows": 20000, "cell_steps": 500, "requests": 25},
    "dry": {"steps": (2, 6), "rows": 200, "cell_steps": 4, "requests": 2},
}


def raftlm(args: list[str], log: Path, timeout: float, launcher: list[str] | None = None, env=None) -> float:
    """Wall seconds of one `raftlm` command (its output in ``log``); a failure stops the check."""
    cmd = [*(launcher or [sys.executable, "-m"]), "raftlm", *args]
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return seconds


def prepare(carry: Path) -> None:
    """Here, before the call: Gemma 3 270M's config + tokenizer (gzipped; no weights) and Amazon snippets'
    splits as one CSV with a split column (text = the rendered prompt)."""
    from raftlm.config import Config
    from raftlm.data import load_splits
    from raftlm.models import model_path

    carry.mkdir(exist_ok=True)
    src, dst = Path(model_path("gemma-3-270m")), carry / "gemma-3-270m"
    dst.mkdir(exist_ok=True)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    with open(src / "tokenizer.json", "rb") as f, gzip.open(dst / "tokenizer.json.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    export_amazon(
        load_splits(Config.build({"data": {"dataset": "amazon-snippets"}}).data), carry / "amazon.csv"
    )
    print(f"prepared {carry}: carry it (run(..., carry=['{carry.name}']))")


def export_amazon(splits, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "target", "split"])
        for name in ("train", "validation", "test"):
            w.writerows([x.text, x.target, name] for x in getattr(splits, name))


def random_gemma(carry: Path, cache: Path) -> None:
    """Gemma 3 270M with random weights where raftlm looks for the converted model ($RAFTLM_CACHE)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = cache / "gemma-3-270m"
    if (target / "model.safetensors").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    for f in (carry / "gemma-3-270m").iterdir():
        if f.suffix == ".gz":
            with gzip.open(f, "rb") as g, open(target / f.stem, "wb") as out:
                shutil.copyfileobj(g, out)
        else:
            shutil.copy(f, target / f.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(target), dtype=torch.float32)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(target)  # the tokenizer loads


def train_args(data: Path, out: Path, model: str, steps: int, *extra: str) -> list[str]:
    return [
        *("train", "--model", model, "--dataset", f"csv:{data}", "--output-dir", str(out)),
        *("--max-steps", str(steps), "--eval-steps", "100000", "--no-calibrate", "--overwrite", *extra),
    ]


def step_rows(work: Path, data: Path, model: str, size: dict, bf16: list[str]) -> list[dict]:
    rows = []
    for trainable in ("top-9", "full"):
        runtime = {}
        for steps in size["steps"]:
            out = work / f"step-{trainable}-{steps}"
            args = train_args(data, out, model, steps, "--trainable", trainable, *bf16)
            raftlm(args, work / f"{out.name}.log", 900)
            runtime[steps] = json.loads((out / "eval_results.json").read_text())["train"]["train_runtime_s"]
            shutil.rmtree(out)
        short, long = size["steps"]
        rows.append(
            {
                "name": f"train step, trainable {trainable}"
                + (" (cached frozen blocks)" if trainable != "full" else ""),
                "value": (runtime[long] - runtime[short]) / (long - short),
                "unit": "s/step",
                "setup": f"batch 16, {'bf16 autocast' if bf16 else 'float32'}, Amazon snippets, "
                f"(train time of {long} steps - of {short}) / {long - short}",
            }
        )
    return rows


def cell_row(work: Path, data: Path, model: str, size: dict, dry: bool) -> tuple[dict, Path]:
    """table3-converged's protocol for one cell of the default method (one seed, one LR)."""
    sweep = {
        "output_dir": str(work / "table3-cell"),
        "base": {
            "model": {"trainable": "top-9", "dropout": 0.0},
            "data": {"val_size": 300, "max_length": 192, "train_size": 1000},
            "training": {
                **{"max_steps": size["cell_steps"], "batch_size": 16, "eval_steps": 50 if not dry else 2},
                **{"optimizer": "adamw", "scheduler": "cosine", "calibrate": False, "bf16": not dry},
            },
            "eval": {"batch_size": 16, **({"device": "cpu"} if dry else {})},
        },
        "datasets": [{"dataset": f"csv:{data}"}],
        "models": [model],
        "methods": [{"method": "raft", "ce_target": "two-hot"}],
        "lrs": [1.0e-4],
        "seeds": [0],
        "keep_models": True,
    }
    path = work / "table3-cell.yaml"
    path.write_text(json.dumps(sweep))  # JSON is YAML
    if (work / "table3-cell").exists():  # an earlier run's sweep folder goes; anything else is the user's
        from raftlm.io import is_sweep_dir

        if not is_sweep_dir(work / "table3-cell"):
            sys.exit(
                f"gpu.py: {work / 'table3-cell'} is not a sweep folder raftlm wrote: choose another --work"
            )
        shutil.rmtree(work / "table3-cell")
    seconds = raftlm(["experiment", str(path)], work / "table3-cell.log", 1200)
    cell = json.loads(next((work / "table3-cell" / "cells").glob("*.json")).read_text())
    row = {
        "name": "table-3 cell end to end (raft + 1.0 x ce, two-hot, Amazon snippets, LR 1e-4, seed 0)",
        "value": seconds,
        "unit": "s",
        "setup": f"{size['cell_steps']} steps of batch 16, top 9 blocks cached, validation every 50 on 300 rows, "
        f"the whole test split, {'float32 on the CPU (dry run)' if dry else 'bf16 autocast'}; random weights: "
        f"test RMSE {cell['rmse']:.3f} means nothing",
        "train_runtime_s": cell.get("train_runtime_s"),
    }
    return row, work / "table3-cell" / "runs" / cell["run_id"]


def predict_row(work: Path, run: Path, data: Path, size: dict, device_args: list[str]) -> dict:
    texts = [r["text"] for r in csv.DictReader(open(data))]
    big, one = work / "predict-big.csv", work / "predict-one.csv"
    for path, n in ((big, size["rows"]), (one, 1)):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            w.writerows([texts[i % len(texts)]] for i in range(n))
    seconds = {}
    for path in (one, big):
        args = [
            "predict",
            "--model",
            str(run),
            "--input",
            str(path),
            "--output",
            str(path.with_suffix(".jsonl")),
        ]
        seconds[path] = raftlm([*args, "--overwrite", *device_args], work / f"{path.stem}.log", 900)
    rate = (size["rows"] - 1) / (seconds[big] - seconds[one])
    return {
        "name": "raftlm predict",
        "value": rate,
        "unit": "rows/s",
        "setup": f"{size['rows']} Amazon snippets, (N - 1) / (t(N) - t(1)): loading not counted",
    }


def serve_row(work: Path, run: Path, size: dict, dry: bool) -> dict:
    out = work / "serve"
    device = ["--device", "cpu", "--dtype", "float32"] if dry else ["--device", "cuda", "--dtype", "bfloat16"]
    cmd = [sys.executable, str(HERE / "serve.py"), "--run", str(run), "--out", str(out), *device]
    with open(work / "serve.log", "w") as f:
        proc = subprocess.run(
            [*cmd, "--requests", str(size["requests"])], stdout=f, stderr=subprocess.STDOUT, timeout=600
        )
    if proc.returncode != 0:
        raise SystemExit("serve.py failed:\n" + (work / "serve.log").read_text()[-3000:])
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    served = rows["serve micro-batched"]
    return {
        "name": "raftlm serve (micro-batched)",
        "value": served["throughput_rows_s"],
        "unit": "rows/s",
        "setup": f"16 closed-loop clients x {size['requests']} one-row requests, max batch 16; p50 "
        f"{served['p50_ms']:.0f} ms, p95 {served['p95_ms']:.0f} ms; offline predict at batch 16: "
        f"{rows['offline predict']['throughput_rows_s']:.0f} rows/s",
    }


FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}
STATE_PRINTER = """import sys
from raftlm.cli import main
code = main(sys.argv[2:])  # argv[1] is "raftlm"
from accelerate.state import PartialState
print("distributed_type:", PartialState().distributed_type)
sys.exit(code)
"""


def fsdp_row(work: Path) -> dict:
    """tests/test_distributed.py's equality, under FSDP2 with one GPU process (the machine has one)."""
    import torch
    from safetensors.torch import load_file

    words = ["awful", "bad", "fine", "good", "great"]
    splits = ["train"] * 8 + ["validation"] * 2 + ["test"] * 2
    data = work / "eight.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "target", "split"])
        w.writerows(
            [f"review {i}: it was {words[i % 5]}. rating:", 1 + i % 5, s] for i, s in enumerate(splits)
        )
    args = ["--eval-steps", "2", "--batch-size", "8", "--lr", "1e-2"]
    raftlm([*train_args(data, work / "plain", "tiny-random-llama", 4), *args], work / "plain.log", 300)
    script = work / "state_printer.py"
    script.write_text(STATE_PRINTER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", str(script)]
    fsdp_args = [*train_args(data, work / "fsdp", "tiny-random-llama", 4), *args]
    raftlm(fsdp_args, work / "fsdp.log", 300, launcher, {**os.environ, **FSDP_ENV})
    said = (work / "fsdp.log").read_text().splitlines()
    kind = next((line for line in said if line.startswith("distributed_type:")), "distributed_type: ?")
    a, b = load_file(work / "plain" / "model.safetensors"), load_file(work / "fsdp" / "model.safetensors")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    equal = all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4) for k in a)
    return {
        "name": "FSDP2 (accelerate plugin, 1 GPU process) equals no FSDP",
        "value": diff,
        "unit": "max abs weight difference",
        "setup": f"tiny-random-llama, 4 steps of batch 8; {kind}; equal at atol 1e-5: {equal}",
        "equal": equal,
    }


def write(out: Path, rows: list[dict], machine: str, model: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(
        json.dumps({"machine": machine, "model": model, "rows": rows}, indent=1) + "\n"
    )
    lines = [
        f"GPU check of the default recipe (issue 41; `benchmarks/gpu.sh`), on {machine}: {model}"
        + (
            " with random weights (the machine reaches no network; speed does not depend on them)."
            if model == "gemma-3-270m"
            else "."
        ),
        "",
        "| measurement | value | unit | setup |",
        "|---|---|---|---|",
        *(f"| {r['name']} | {r['value']:.4g} | {r['unit']} | {r['setup']} |" for r in rows),
    ]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="make gpu_carry/ here (before the device call)")
    ap.add_argument("--dry-run", action="store_true", help="every step on this CPU, tiny model and sizes")
    ap.add_argument("--carry", default=str(ROOT / "gpu_carry"))
    ap.add_argument("--work", default="/tmp/raftlm-gpu")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results"))
    ap.add_argument("--only", nargs="*", default=["steps", "cell", "predict", "serve", "fsdp"])
    a = ap.parse_args()
    carry, work, out = Path(a.carry), Path(a.work), Path(a.out)
    if a.prepare:
        return prepare(carry)
    work.mkdir(parents=True, exist_ok=True)
    size = SIZES["dry" if a.dry_run else "gpu"]
    if a.dry_run:
        model, machine = "tiny-random-llama", "this CPU (dry run: sizes are tiny)"
        data = work / "amazon.csv"
        if not data.exists():
            from raftlm.config import Config
            from raftlm.data import load_splits

            export_amazon(load_splits(Config.build({"data": {"dataset": "amazon-snippets"}}).data), data)
    else:
        import torch

        os.environ["RAFTLM_CACHE"] = str(work / "cache")
        random_gemma(carry, work / "cache")
        model, machine = "gemma-3-270m", torch.cuda.get_device_name()
        data = carry / "amazon.csv"
    rows: list[dict] = []
    if "steps" in a.only:
        rows += step_rows(work, data, model, size, [] if a.dry_run else ["--bf16"])
        write(out, rows, machine, model)
    run = None
    if {"cell", "predict", "serve"} & set(a.only):
        row, run = cell_row(work, data, model, size, a.dry_run)
        rows.append(row)
        write(out, rows, machine, model)
    if "predict" in a.only:
        rows.append(
            predict_row(work, run, data, size, ["--device", "cpu"] if a.dry_run else ["--device", "cuda"])
        )
        write(out, rows, machine, model)
    if "serve" in a.only:
        rows.append(serve_row(work, run, size, a.dry_run))
        write(out, rows, machine, model)
    if "fsdp" in a.only:  # a dry run shows the plumbing: on CPUs accelerate runs it as DDP (MULTI_CPU)
        rows.append(fsdp_row(work))
        write(out, rows, machine, model)
    print((out / "gpu.md").read_text())


if __name__ == "__main__":
    main()
