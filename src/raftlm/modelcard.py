"""The model card (``README.md``) in every run directory: what the model is, how it was trained and
scored, and how to use it with plain transformers (no raftlm needed)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from raftlm.io import write_text
from raftlm.prompts import template_fields

METRICS = ("rmse", "mae", "pearson", "spearman", "r2", "n")


def write_model_card(run_dir: str | Path, results: dict | None = None) -> Path:
    """Write ``run_dir/README.md`` from its ``raftlm.json``, ``config.yaml`` (if any) and ``results``."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "raftlm.json").read_text())
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    return write_text(run_dir / "README.md", model_card(meta, config, results))


def model_card(meta: dict, config: dict | None, results: dict | None) -> str:
    sections = [_summary(meta, config), _answer_format(meta), _metrics(results), _usage(meta)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _summary(meta: dict, config: dict | None) -> str:
    base = config["model"]["name"] if config else "(not recorded: saved from the Python API)"
    rows = [("base model", f"`{base}`"), ("method", f"`{meta['method']}`")]
    if config:
        m, t = config["model"], config["training"]
        rows += [
            ("dataset", f"`{config['data']['dataset']}`"),
            ("trained weights", f"`{m['trainable']}`"),
            ("steps x batch", f"{t['max_steps']} x {t['batch_size']} (lr {t['lr']:g}, {t['optimizer']})"),
        ]
    if meta.get("head"):
        rows.append(("prediction", f"`{meta['head']['class']}` head (`head.safetensors`)"))
    else:
        decoder = config["eval"]["decoder"] if config else "rail"
        rule = "RAIL: y_hat = sum over the grid of p(str(y) \\| prompt) * y"
        rows.append(("prediction", rule if decoder == "rail" else f"decoder `{decoder}` (config.yaml)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "---\nlibrary_name: transformers\ntags: [raftlm, regression]\n---\n\n# raftlm run\n\n"
        "A causal LM fine-tuned for regression with raftlm (RAFT: regression-aware fine-tuning). The "
        "weights are an ordinary `AutoModelForCausalLM`; `raftlm.json` holds the answer format.\n\n"
        f"| | |\n|---|---|\n{table}"
    )


def _answer_format(meta: dict) -> str:
    grid = meta["grid"]
    pairs = list(zip(grid["values"], grid["strings"], strict=True))
    shown = ", ".join(f"{v:g} -> '{s}'" for v, s in pairs[:12]) + (" ..." if len(pairs) > 12 else "")
    s = meta["scaler"]
    lines = [
        "## Prompt and answer",
        "",
        "Prompt template (columns in braces):",
        "",
        "```text\n" + meta["template"] + "\n```",
        "",
        f"- grid ({len(pairs)} values, value -> string): {shown}",
        f"- answer prefix {meta.get('answer_prefix')!r}"
        + (", teacher-forced as the end of the prompt" if meta.get("fold_prefix") else ""),
        f"- grid token ids (per value): {meta.get('candidates')}" if not meta.get("encoder") else "- encoder",
        f"- grid probabilities renormalized to sum to 1: {'yes' if meta['normalize_grid'] else 'no'}",
        f"- target scaling: the model predicts g on the grid [{s['grid_low']:g}, {s['grid_high']:g}]; "
        f"y = {s['data_low']:g} + (g - {s['grid_low']:g}) * ({s['data_high']:g} - {s['data_low']:g}) / "
        f"({s['grid_high']:g} - {s['grid_low']:g})",
        f"- prompts longer than {meta['max_length']} tokens lose tokens on the left (after the leading "
        "special tokens)",
    ]
    return "\n".join(lines)


def _metrics(results: dict | None) -> str:
    if not results:
        return "## Metrics\n\nNot evaluated when saved: `raftlm evaluate --model RUN_DIR`."
    lines = ["## Metrics", ""]
    train = results.get("train") or {}
    if train.get("best_validation_rmse") is not None:
        lines.append(
            f"Validation RMSE {train['best_validation_rmse']:.4f} at step {train['best_step']} of "
            f"{train['global_step']} (the checkpoint kept)."
        )
    test = results.get("test")
    if test:
        lines += [
            "",
            "| split | " + " | ".join(METRICS) + " |",
            "|---" * (len(METRICS) + 1) + "|",
            "| test | " + " | ".join(_cell(test.get(k)) for k in METRICS) + " |",
        ]
    elif len(lines) == 2:
        lines.append("No test split was scored at training time: `raftlm evaluate --model RUN_DIR`.")
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _usage(meta: dict) -> str:
    common = (
        "## Use it\n\nWith raftlm: `raftlm predict --model RUN_DIR --input rows.csv --output preds.jsonl` "
        "(rows hold the template's columns), `raftlm serve RUN_DIR` (HTTP), or "
        "`RAFTRegressor.load(RUN_DIR).predict(rows)`."
    )
    if meta.get("head") or meta.get("encoder") or meta.get("bidirectional"):
        return (
            common + "\n\nThis run predicts with raftlm's own head or attention mask: use raftlm to score it."
        )
    row = ", ".join(f'"{f}": "..."' for f in template_fields(meta["template"]))
    snippet = f"""```python
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer

run = "RUN_DIR"
meta = json.load(open(f"{{run}}/raftlm.json"))
tok, model = AutoTokenizer.from_pretrained(run), AutoModelForCausalLM.from_pretrained(run).eval()
prompt = meta["template"].format(**{{{row}}})
if meta["fold_prefix"]:
    prompt += meta["answer_prefix"]
with torch.no_grad():
    logp = model(**tok(prompt, return_tensors="pt")).logits[0, -1].double().log_softmax(-1)
p = logp[[c[0] for c in meta["candidates"]]].exp()  # single-token grid strings
g = p @ torch.tensor(meta["grid"]["values"], dtype=p.dtype)
if meta["normalize_grid"]:
    g = g / p.sum()
s = meta["scaler"]
y = s["data_low"] + (g - s["grid_low"]) * (s["data_high"] - s["data_low"]) / (s["grid_high"] - s["grid_low"])
```"""
    single = all(len(c) == 1 for c in meta["candidates"])
    general = (
        "`examples/score_with_transformers.py` in the raftlm repository does the same for any grid "
        "(multi-token strings such as '2.5' are scored token by token), batch files and long prompts."
    )
    if not single:
        return common + "\n\nWith plain transformers: this grid has multi-token strings. " + general
    return common + "\n\nWith plain transformers only (RAIL for one row):\n\n" + snippet + "\n\n" + general
