"""``raftlm report RESULTS_DIR``: tables shaped like the paper's table 3 / table 8 and its figures,
from a sweep's ``results.json`` (one row per cell), plus one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from raftlm import methods
from raftlm.config import to_int
from raftlm.core import RaftlmError, short
from raftlm.io import (
    TMP_NAME,
    atomic_write,
    clean_stale_tmp,
    describe,
    is_sweep_dir,
    output_lock,
    write_json,
    write_text,
)

LOWER_IS_BETTER = {
    "rmse": True,
    "mae": True,
    "pearson": False,
    "spearman": False,
    "r2": False,
    "crps": True,  # of the grid distribution (uncertainty.grid_crps); absent for heads
    "nll": True,
}


def _options(text: str | None) -> dict[str, str]:
    """A cell's ``options`` string ("ce_target=two-hot,trainable=none") as a dict."""
    return dict(re.findall(r"(\w+)=(.*?)(?=,\w+=|$)", text or ""))  # values may hold commas


def label(row: dict, base: dict | None = None) -> str:
    """An entry's name in the words the README uses, saying what ran: the method with its settings as
    resolved from the cell's options over the sweep's ``base`` method section (e.g. RAFT's CE term and
    target), then the decoder where the paper compares decoders, then any other options."""
    # what ran: the cell's recorded settings (newer cells keep them), over the sweep's base (sweep.yaml,
    # which may be missing or edited since: today's defaults would name the arm otherwise)
    recorded = row.get("config") if isinstance(row.get("config"), dict) else {}
    ran = {
        k.removeprefix("method."): str(v)
        for k, v in recorded.items()
        if k.startswith("method.") and k.removeprefix("method.") in WORDED and v is not None
    }
    given = {k: str(v) for k, v in (base or {}).items() if v is not None}
    opts = {**given, **ran, **_options(row.get("options"))}
    name = _method_words(row["method"], opts)
    plain = row["decoder"] in ("rail", "head") and not methods.get(row["method"]).decoder_in_label
    name = name if plain else f"{name} + {DECODER_WORDS.get(row['decoder'], row['decoder'])}"
    # an option the method's words do not say (pooling for ce) shows: arms differing in it are two entries
    rest = {k: v for k, v in _options(row.get("options")).items() if k not in SAID.get(row["method"], ())}
    if rest.get("trainable") == "none":
        name, rest = f"{name}, frozen LM", {k: v for k, v in rest.items() if k != "trainable"}
    return f"{name} ({','.join(f'{k}={v}' for k, v in rest.items())})" if rest else name


DECODER_WORDS = {"rail": "RAIL"}
# the options each method's words say (``_method_words``): any other option of an arm shows in brackets
SAID = {
    "raft": ("ce_weight", "ce_target"),
    "raft-head": ("ce_weight", "ce_target", "pooling"),
    "ce-ntl": ("ntl_weight",),
    "head-pooled": ("pooling",),
}
WORDED = {k for keys in SAID.values() for k in keys}  # settings some method's words read


def _method_words(method: str, opts: dict) -> str:
    from raftlm.config import MethodConfig

    if method == "ce":
        return "CE"
    if method == "ce-ntl":
        return f"CE + {float(opts.get('ntl_weight', MethodConfig.ntl_weight)):g} x NTL"
    if method == "head-attn":
        return "attention-pooled head"
    if method == "raft":
        kind = methods.get("raft")
        weight = float(opts.get("ce_weight", kind.default_ce_weight))
        target = opts.get("ce_target", kind.default_ce_target)
        shown = f"{weight:.1f}" if weight == int(weight) else f"{weight:g}"
        return "RAFT (the paper's: no CE term)" if weight == 0 else f"RAFT + {shown} x CE ({target} target)"
    if method == "raft-head":
        return f"{_method_words('raft', opts)} + {opts.get('pooling', 'mean')}-pooled correction"
    if method == "head-pooled":
        return f"{opts.get('pooling', 'mean')}-pooled head"
    return methods.display_name(method)


def _mean_validation(cells: list[dict]) -> float:
    vals = [r["validation_rmse"] for r in cells if r.get("validation_rmse") is not None]
    return float(np.mean(vals)) if vals else np.inf


def best_lr(validation: dict):
    """Appendix D's choice: the learning rate with the lowest validation RMSE (ties: the smaller one).
    ``validation`` maps each learning rate (None for zero-shot) to its RMSE; ``experiment``'s
    ``lr_choice: first_seed`` and ``aggregate`` both choose with it."""
    return min(validation, key=lambda x: (validation[x], x or 0))


GROUP = ("dataset", "model", "method", "decoder", "train_fraction", "options")  # one table entry


def _group(row: dict) -> tuple:
    """A cell's or aggregate's entry key (older cells lack ``options`` and may lack ``train_fraction``)."""
    return tuple((row.get(k) or "") if k == "options" else row.get(k) for k in GROUP)


def aggregate(rows: list[dict], base: dict | None = None, first_seed: int | None = None) -> list[dict]:
    """Per (dataset, model, method, decoder, train fraction): the learning rate with the lowest mean
    validation RMSE (appendix D) over the seeds every learning rate has (all of them in a full sweep), or
    on ``first_seed`` alone (``lr_choice: first_seed``: as the sweep chooses the lr its later seeds run
    at, also when an lr added to the file since has later seeds of its own), and test metrics as mean
    and std (ddof=1) over its seeds, beside its seeds' validation RMSE (``validation_rmse``: what every
    choice is made on). Under
    ``first_seed``, ``other_lrs`` lists later seeds that also ran at an lr the first seed does not choose:
    left out of the entry, and named by the report (``other_lrs_note``)."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[_group(r)][r.get("lr")].append(r)
    out = []
    for key, by_lr in groups.items():
        compared = set.intersection(*({r["seed"] for r in v} for v in by_lr.values()))
        if first_seed is not None and all(any(r["seed"] == first_seed for r in v) for v in by_lr.values()):
            compared = {first_seed}
        on_common = {x: [r for r in v if r["seed"] in compared] or v for x, v in by_lr.items()}
        lr = best_lr({x: _mean_validation(on_common[x]) for x in by_lr})
        cells = by_lr[lr]
        agg = {
            **dict(zip(GROUP, key, strict=True)),
            "lr": lr,
            "seeds": sorted(r["seed"] for r in cells),
            "label": label(cells[0], base),
            "collapsed_seeds": sorted(r["seed"] for r in cells if r.get("collapsed")),
        }
        if first_seed is not None:
            later = {x: sorted(r["seed"] for r in v if r["seed"] != first_seed) for x, v in by_lr.items()}
            agg["other_lrs"] = [{"lr": x, "seeds": s} for x, s in later.items() if x != lr and s]
        for m in (*LOWER_IS_BETTER, "best_step", "validation_rmse"):
            vals = np.array([r[m] for r in cells if r.get(m) is not None], dtype=float)
            agg[m] = float(vals.mean()) if vals.size else None
            agg[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        agg["intervals"] = _mean_intervals(cells)
        out.append(agg)
    return _distinct_labels(out)


def _distinct_labels(aggs: list[dict]) -> list[dict]:
    """Arms the words name alike (an option at the method's default: raft and raft with ce_weight 1.0)
    each keep a row: the label gains the arm's options (a table keyed by label kept only one of them)."""
    arms = defaultdict(set)
    for a in aggs:
        arms[a["label"]].add((a["method"], a["decoder"], a["options"]))
    for a in aggs:
        if len(arms[a["label"]]) > 1 and a["options"]:
            a["label"] = f"{a['label']} [{a['options']}]"
    return aggs


def _mean_intervals(cells: list[dict]) -> list[dict]:
    """Coverage and width per (kind, nominal) averaged over the seeds that have them."""
    groups = defaultdict(list)
    for r in cells:
        for row in r.get("intervals") or []:
            groups[(row["kind"], row["nominal"])].append(row)
    return [
        {
            "kind": kind,
            "nominal": nominal,
            "coverage": float(np.mean([r["coverage"] for r in rs])),
            "width": float(np.mean([r["width"] for r in rs])),
            "n": int(sum(r["n"] for r in rs)),
            "seeds": len(rs),
        }
        for (kind, nominal), rs in groups.items()
    ]


def interval_table(aggs: list[dict], nominal: float = 0.9) -> str:
    """Coverage / mean width of each interval kind at ``nominal`` (mean over seeds): rows method x kind,
    columns datasets. Conformal kinds are calibrated on the run's whole validation split; grid = the raw
    grid quantiles."""
    entries = {
        (f"{a['label']} [{r['kind']}]", a["dataset"]): r
        for a in aggs
        for r in a.get("intervals") or []
        if abs(r["nominal"] - nominal) < 1e-9
    }
    if not entries:
        return ""
    rows = list(dict.fromkeys(k for k, _ in entries))
    cols = list(dict.fromkeys(c for _, c in entries))
    title = f"**Interval coverage / mean width at {nominal:.0%} nominal (test; conformal kinds calibrated on validation)**"
    lines = [title, "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        vals = [entries.get((r, c)) for c in cols]
        lines.append(
            f"| {r} | "
            + " | ".join(f"{v['coverage']:.3f} / {v['width']:.3f}" if v else "-" for v in vals)
            + " |"
        )
    return "\n".join(lines) + "\n"


def format_entry(a: dict, metric: str) -> str:
    """One table entry: mean ± std over seeds (the mean alone for one seed), † when a seed collapsed."""
    if a.get(metric) is None:
        return "-"
    f = ".0f" if metric == "best_step" else ".3f"
    text = f"{a[metric]:{f}} ± {a[f'{metric}_std']:{f}}" if len(a["seeds"]) > 1 else f"{a[metric]:{f}}"
    return text + (" †" if a.get("collapsed_seeds") else "")


def table(
    aggs: list[dict], metric: str, rows_key: str, cols_key: str, title: str, best_per: str = "column"
) -> str:
    """Markdown table of ``metric`` (mean ± std); the best entry of each column (table 3: the best method
    per dataset) or of each row (``best_per="row"``, table 8: the best method per model) in bold
    (``best_per=None``: none), among the entries there with the most seeds (``_full``): one seed's
    lucky draw does not take the bold from three seeds' mean."""
    rows = list(dict.fromkeys(a[rows_key] for a in aggs))
    cols = list(dict.fromkeys(a[cols_key] for a in aggs))
    cell = {(a[rows_key], a[cols_key]): a for a in aggs}
    groups = (
        {c: [(r, c) for r in rows] for c in cols}
        if best_per == "column"
        else {r: [(r, c) for c in cols] for r in rows}
        if best_per == "row"
        else {}
    )
    best = set()  # (row, col) of each winner
    for keys in groups.values():
        pick = min if LOWER_IS_BETTER[metric] else max
        # (a diverged entry's NaN mean is no candidate: min() with a NaN first returned NaN, no bold at all)
        present = _full([k for k in keys if k in cell and _finite(cell[k].get(metric))], cell)
        if present:
            top = pick(cell[k][metric] for k in present)
            best.update(k for k in present if cell[k][metric] == top)
    lines = [f"**{title}**", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        vals = []
        for c in cols:
            a = cell.get((r, c))
            text = format_entry(a, metric) if a else "-"
            vals.append(f"**{text}**" if (r, c) in best else text)
        lines.append(f"| {r} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def _full(keys: list, cell: dict) -> list:
    """The ``keys`` whose entries rest on as many seeds as the most-seeded trained entry among them; a
    zero-shot entry (no lr: no seed to add) always counts."""
    most = max((len(cell[k]["seeds"]) for k in keys if cell[k].get("lr") is not None), default=0)
    return [k for k in keys if cell[k].get("lr") is None or len(cell[k]["seeds"]) >= most]


def _lr(row: dict) -> str:
    text = f"lr {row['lr']:g}" if row.get("lr") else "zero-shot"  # zero-shot cells have no lr
    fraction = row.get("train_fraction")
    return text if not fraction or fraction == 1.0 else f"{text}, {fraction:g} of the training data"


def collapsed_note(rows: list[dict], names: dict | None = None) -> str:
    """Every cell whose test predictions collapsed (``metrics.collapse``), at any learning rate; ``names``:
    each entry's label by its group (``_group``), as the tables name it."""
    dead = [r for r in rows if r.get("collapsed")]
    if not dead:
        return ""
    name = lambda r: (names or {}).get(_group(r)) or r.get("label") or label(r)  # noqa: E731
    items = [
        f"- {name(r)} on {r['dataset']}, {_lr(r)}, seed {r['seed']}: {r['collapsed']}"
        for r in sorted(dead, key=lambda r: (r["dataset"], name(r), r["lr"] or 0, r["seed"]))
    ]
    return "† some seeds of the chosen learning rate collapsed. Collapsed cells (test predictions):\n\n" + (
        "\n".join(items) + "\n"
    )


def lr_table(aggs: list[dict]) -> str:
    """The learning rate each trained entry's numbers come from (chosen on validation), per dataset."""
    trained = [a for a in aggs if a["lr"] is not None]
    if not trained:
        return ""
    datasets = list(dict.fromkeys(a["dataset"] for a in trained))
    lines = [
        "**Learning rate chosen on validation**",
        "",
        "| entry | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    several = len({a["model"] for a in trained}) > 1
    for name in dict.fromkeys(_entry(a, several) for a in trained):
        lrs = {a["dataset"]: a["lr"] for a in trained if _entry(a, several) == name}
        lines.append(f"| {name} | " + " | ".join(_lr_text(lrs.get(d)) for d in datasets) + " |")
    return "\n".join(lines) + "\n"


def _entry(a: dict, several_models: bool) -> str:
    """An entry's name in a table across models: its label, and its model where there are several."""
    return f"{a['label']} ({a['model']})" if several_models else a["label"]


def _lr_text(lr) -> str:
    return "-" if lr is None else f"{lr:g}"


def welch_p(a: dict, b: dict) -> str:
    """Welch's t-test p over seeds between two aggregates' mean test RMSE, formatted; "-" when either has
    fewer than 2 seeds or the test is undefined (both stds 0)."""
    from scipy import stats

    if len(a["seeds"]) < 2 or len(b["seeds"]) < 2:
        return "-"
    t = stats.ttest_ind_from_stats(
        a["rmse"], a["rmse_std"], len(a["seeds"]), b["rmse"], b["rmse_std"], len(b["seeds"]), equal_var=False
    )
    return f"{t.pvalue:.2f}" if np.isfinite(t.pvalue) else "-"


def raft_vs_best(aggs: list[dict]) -> str:
    """Per model and dataset, each RAFT entry against the other method with the lowest mean test RMSE (on
    any number of seeds: a strong method with one seed so far is RAFT's comparison, not left out):
    the gap and Welch's t-test p over seeds (both need 2+ seeds), so that "RAFT wins" or "it does not"
    is read in numbers, noise included."""
    lines = []
    for model, dataset in dict.fromkeys((a["model"], a["dataset"]) for a in aggs):
        sub = [
            a for a in aggs if (a["model"], a["dataset"]) == (model, dataset) and a.get("rmse") is not None
        ]
        others = [a for a in sub if not methods.get(a["method"]).raft]
        if not others:
            continue
        best = min(others, key=lambda a: a["rmse"])
        for a in (a for a in sub if methods.get(a["method"]).raft):
            gap = a["rmse"] - best["rmse"]
            p = welch_p(a, best)
            verdict = "RAFT lower" if gap < 0 else "RAFT not lower"
            lines.append(
                f"| {dataset} | {model} | {a['label']}: {format_entry(a, 'rmse')} | {best['label']}: {format_entry(best, 'rmse')} "
                f"| {gap:+.3f} | {p} | {verdict} |"
            )
    if not lines:
        return ""
    head = [
        "**RAFT against the best other method (mean test RMSE; p: Welch's t-test over seeds, - under 2 seeds; "
        "the best other on any number of seeds, unlike the bold: a method still running is not left out)**",
        "",
        "| dataset | model | RAFT | best other | RAFT - other | p | |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def full_data(aggs: list[dict]) -> list[dict]:
    """The entries trained on all their data (table 3); train_fraction < 1 is the data-scaling study."""
    return [a for a in aggs if not a["train_fraction"] or a["train_fraction"] == 1.0]


def tables(
    aggs: list[dict],
    rows: list[dict] | None = None,
    planned_seeds: int | None = None,
    first_seed: int | None = None,
) -> str:
    """The report's markdown. ``planned_seeds``: how many seeds the sweep runs (its sweep.yaml), so that
    entries resting on fewer are named while it is still running; ``first_seed``: the seed its LRs were
    chosen on (``lr_choice: first_seed``; ``aggregate``'s)."""
    full = full_data(aggs)
    chosen_on = (
        f"the lowest validation RMSE on the first seed (seed {first_seed}, lr_choice: first_seed: the LR the "
        "sweep ran its later seeds at)"
        if first_seed is not None
        else "the lowest mean validation RMSE on the seeds every LR has"
    )
    parts = [
        f"Each trained entry: the mean ± sample std (ddof 1) over its seeds, at the learning rate with {chosen_on} "
        "(appendix D; the LR table below); p: Welch's two-sided t-test over seeds. Bold: the best entry of "
        "each column (table 8 shape: of each row) among those there on the most seeds (a zero-shot entry "
        "has one and always competes): an entry on fewer seeds is never bold.\n"
    ]
    for model in dict.fromkeys(a["model"] for a in full):
        sub = [a for a in full if a["model"] == model]
        for metric in ("rmse", "pearson", "spearman"):
            parts.append(
                table(sub, metric, "label", "dataset", f"{metric.upper()} on test, {model} (table 3 shape)")
            )
    for dataset in dict.fromkeys(a["dataset"] for a in full):
        sub = [a for a in full if a["dataset"] == dataset]
        parts.append(
            table(
                sub, "rmse", "model", "label", f"RMSE on {dataset} by model (table 8 shape)", best_per="row"
            )
        )
    if versus := raft_vs_best(full):
        parts.append(versus)
    counts = sorted({len(a["seeds"]) for a in full if a["lr"] is not None})
    planned = planned_seeds or (counts[-1] if counts else 0)
    if counts and counts[0] < planned:  # a sweep still running (or stopped early): name who rests on fewer
        few = [
            f"{a['label']} on {a['dataset']}: {len(a['seeds'])}"
            for a in full
            if a["lr"] is not None and len(a["seeds"]) < planned
        ]
        head = (
            f"Seeds behind trained entries: {planned}, except "
            if counts[-1] == planned
            else f"Seeds behind trained entries (the sweep runs {planned}; still running or stopped early): "
        )
        parts.insert(0, head + "; ".join(few) + ".\n")
    for model in dict.fromkeys(a["model"] for a in full):
        sub = [
            a for a in full if a["model"] == model and a["lr"] is not None and a.get("best_step") is not None
        ]
        if sub:  # where each method's validation RMSE bottomed out: a budget past convergence shows it
            parts.append(
                table(
                    sub,
                    "best_step",
                    "label",
                    "dataset",
                    f"Step of the lowest validation RMSE (the checkpoint tested), {model}",
                    best_per=None,
                )
            )
    for model in dict.fromkeys(a["model"] for a in full):
        sub = [a for a in full if a["model"] == model]
        if any(a.get("crps") is not None for a in sub):
            parts.append(
                table(sub, "crps", "label", "dataset", f"CRPS of the grid distribution on test, {model}")
            )
    if chosen := lr_table(full):
        parts.append(chosen)
    scaling = [a for a in aggs if a not in full]  # the data-scaling study (figure 4): its own table
    several = len({a["model"] for a in aggs}) > 1
    for dataset in dict.fromkeys(a["dataset"] for a in scaling):
        sub = [
            {**a, "fraction": f"{a['train_fraction'] or 1.0:g}", "entry": _entry(a, several)}
            for a in aggs
            if a["dataset"] == dataset and a["lr"] is not None
        ]
        title = f"RMSE on test of {dataset} by fraction of the training data (figure 4)"
        parts.append(table(sub, "rmse", "entry", "fraction", title))
    if intervals := interval_table(full):
        parts.append(intervals)
    if note := other_lrs_note(full):
        parts.append(note)
    if note := collapsed_note(rows or [], {_group(a): a["label"] for a in aggs}):
        parts.append(note)
    return "\n".join(parts)


def other_lrs_note(aggs: list[dict]) -> str:
    """``lr_choice: first_seed``: the later seeds that also ran at an LR the first seed does not choose (run
    before the LR that wins there was added to the sweep file, or copied in from another sweep), which the
    entries leave out: an entry's numbers are those of the LR its first seed chose, as the sweep runs it."""
    items = [
        f"- {a['label']} on {a['dataset']}: seeds {', '.join(map(str, o['seeds']))} also ran at lr {o['lr']:g}"
        for a in aggs
        for o in a.get("other_lrs") or []
    ]
    if not items:
        return ""
    return (
        "Later seeds that also ran at an LR the first seed does not choose (run before the LR that wins there "
        "was added to the sweep file, or copied in): left out of the entries, which use the first seed's LR "
        "(run the sweep again for any seed it lacks):\n\n" + "\n".join(items) + "\n"
    )


# --- figures --------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    _plt().close(fig)
    return path


def _read_jsonl(path: Path) -> list[dict]:
    """A JSONL file's objects (blank lines skipped); a damaged one is one line naming it."""
    if not path.exists():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RaftlmError(f"{path} is not JSON lines ({err}): rerun the cell, or delete the file") from None
    if not all(isinstance(r, dict) for r in rows):
        raise RaftlmError(
            f"{path} holds a line that is not a JSON object: rerun the cell, or delete the file"
        )
    return rows


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


CURVES = "curves"  # a sweep's copies of each run's metrics.jsonl (committed; runs/ holds weights)


def run_log(root: Path, run_id: str) -> list[dict]:
    """A trained run's metrics.jsonl lines: the sweep's committed copy, else the run directory's."""
    copy = root / CURVES / f"{run_id}.jsonl"
    return _read_jsonl(copy if copy.exists() else root / "runs" / run_id / "metrics.jsonl")


def eval_curve(root: Path, run_id: str) -> list[tuple[int, float]]:
    """A trained run's validation curve, (step, eval_rmse) per check: what the convergence table and the
    RMSE-vs-step figure both read."""
    return [  # (a diverged check logs its RMSE as null: no point, as a NaN draws none)
        (x["step"], x["eval_rmse"])
        for x in run_log(root, run_id)
        if _finite(x.get("eval_rmse")) and _finite(x.get("step"))
    ]


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _chosen(root: Path, aggs: list[dict], rows: list[dict]):
    """The cell of seed min(seeds) at the selected learning rate, per aggregate."""
    for a in aggs:
        for r in rows:
            if _group(r) + (r.get("lr"), r["seed"]) == _group(a) + (a["lr"], a["seeds"][0]):
                yield a, r


def curve_groups(aggs: list[dict], rows: list[dict]) -> list[tuple[list[str], dict, list[dict]]]:
    """(labels, first aggregate, seed rows) per set of trained runs behind the chosen entries: entries
    that decode the same runs (ce + rail and ce + greedy) share one validation curve, drawn once."""
    groups: dict[tuple, tuple[list[str], dict, list[dict]]] = {}
    for a in aggs:
        seeds = [r for r in rows if _group(r) + (r.get("lr"),) == _group(a) + (a["lr"],)]
        seeds.sort(key=lambda r: r["seed"])
        key = tuple(r["run_id"] for r in seeds)
        if key in groups:
            groups[key][0].append(a["label"])
        else:
            groups[key] = ([a["label"]], a, seeds)
    return list(groups.values())


FLAT = 0.01  # validation RMSE: a change under this is no change (curve_state)


def curve_state(points: list[tuple[int, float]], window: int = 100) -> tuple[str, float]:
    """Where a validation curve ended: ("still falling", drop over the last ``window`` steps) when its
    lowest point is the last and it fell more than FLAT there (the budget was too short); ("past best",
    rise of the end over the lowest) when it ended more than FLAT above its lowest (overfitting: the
    best checkpoint is the one tested); else ("flat", range over the last ``window`` steps)."""
    steps, vals = [s for s, _ in points], [v for _, v in points]
    tail = [v for s, v in points if s >= steps[-1] - window]
    low = min(vals)
    if vals[-1] == low and tail[0] - low > FLAT:
        return "still falling", tail[0] - low
    if vals[-1] - low > FLAT:
        return "past best", vals[-1] - low
    return "flat", max(tail) - min(tail)


def convergence_table(root: Path, aggs: list[dict], rows: list[dict]) -> str:
    """Per chosen entry and dataset, how each seed's validation curve ended (``curve_state``): the issue
    a budget must answer is whether any method was still improving when training stopped."""
    cells: dict[tuple[str, str], str] = {}
    several = len({a["model"] for a in aggs}) > 1
    for model in dict.fromkeys(a["model"] for a in aggs):
        for dataset in dict.fromkeys(a["dataset"] for a in aggs if a["model"] == model):
            here = [a for a in aggs if (a["model"], a["dataset"]) == (model, dataset) and a["lr"] is not None]
            for labels, _, seeds in curve_groups(here, rows):
                states: dict[str, list[float]] = {}
                for r in seeds:
                    log = eval_curve(root, r["run_id"])
                    if log:
                        state, size = curve_state(log)
                        states.setdefault(state, []).append(size)
                text = ", ".join(f"{k} x{len(v)} ({max(v):.3f})" for k, v in sorted(states.items()))
                for name in labels:
                    cells[(f"{name} ({model})" if several else name, dataset)] = text
    if not any(cells.values()):
        return ""
    names = list(dict.fromkeys(k[0] for k in cells))
    datasets = list(dict.fromkeys(k[1] for k in cells))
    lines = [
        "**How each seed's validation curve ended, chosen LRs** (still falling: lowest at the last check and "
        f"{FLAT}+ below 100 steps before, in brackets that drop; past best: ended {FLAT}+ above its lowest, in "
        "brackets the rise; flat: neither, in brackets the range over the last 100 steps; the largest over seeds)",
        "",
        "| | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    lines += [f"| {n} | " + " | ".join(cells.get((n, d)) or "-" for d in datasets) + " |" for n in names]
    return "\n".join(lines) + "\n"


def figures(root: Path, aggs: list[dict], rows: list[dict], figdir: Path | None = None) -> list[Path]:
    """The report's figures, saved into ``figdir`` (default: root/figures); their paths."""
    plt, out = _plt(), []
    figdir = figdir or root / "figures"
    chosen = list(_chosen(root, full_data(aggs), rows))
    for dataset in dict.fromkeys(a["dataset"] for a, _ in chosen):
        here = [(a, r) for a, r in chosen if a["dataset"] == dataset]
        slug = dataset.replace(":", "_").replace("/", "_")
        fig, ax = plt.subplots(figsize=(6, 4))  # figure 5: validation RMSE vs step, every seed
        for i, (labels, a, seeds) in enumerate(curve_groups([a for a, _ in here], rows)):
            for j, r in enumerate(seeds):
                log = eval_curve(root, r["run_id"])
                if log:
                    ax.plot(
                        *zip(*log, strict=True),
                        marker="o" if j == 0 else None,
                        markersize=3,
                        lw=1.2 if j == 0 else 0.7,
                        alpha=1.0 if j == 0 else 0.5,
                        color=f"C{i}",
                        label=f"{' / '.join(labels)} ({a['model']}, lr {a['lr']:g}, {_seeds(len(seeds))})"
                        if j == 0
                        else None,
                    )
        if ax.lines:
            ax.set_xlabel("training step")
            ax.set_ylabel("validation RMSE")
            ax.set_title(f"{dataset}: RMSE vs step")
            ax.legend(fontsize=7)
            out.append(_save(fig, figdir / f"rmse_vs_step_{slug}.png"))
        else:
            plt.close(fig)
        preds = {
            a["label"] + f" ({a['model']})": _read_jsonl(root / "predictions" / f"{r['cell_id']}.jsonl")
            for a, r in here
        }
        preds = {k: v for k, v in preds.items() if v}
        if preds:  # predicted vs true per method
            fig, axes = plt.subplots(1, len(preds), figsize=(3.2 * len(preds), 3.2), squeeze=False)
            for ax, (name, p) in zip(axes[0], preds.items(), strict=True):
                y, yh = [x["target"] for x in p], [x["prediction"] for x in p]
                ax.scatter(y, yh, s=4, alpha=0.4)
                ax.plot([min(y), max(y)], [min(y), max(y)], "k--", lw=1)
                ax.set_title(name, fontsize=8)
                ax.set_xlabel("true")
            axes[0][0].set_ylabel("predicted")
            fig.tight_layout()
            out.append(_save(fig, figdir / f"scatter_{slug}.png"))
        out += _entropy_figures(root, here, figdir, slug)
        out += _calibration_figure(root, here, figdir, dataset, slug)
    out += _convergence_figure(aggs, figdir)
    return out


def _entropy_figures(root: Path, here, figdir: Path, slug: str) -> list[Path]:
    """Figure 6 (entropy change vs the zero-shot model) and figure 7 (grid probabilities)."""
    plt, out = _plt(), []
    rail = [(a, r) for a, r in here if a["decoder"] == "rail"]
    zero = next((r for a, r in rail if not methods.get(a["method"]).trains), None)
    tuned = [(a, r) for a, r in rail if methods.get(a["method"]).grid_model]
    if zero is None or not tuned:
        return out
    before = _read_jsonl(root / "predictions" / f"{zero['cell_id']}.jsonl")
    if not before or "entropy" not in before[0]:
        return out
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for a, r in tuned:
        after = _read_jsonl(root / "predictions" / f"{r['cell_id']}.jsonl")
        change = [x["entropy"] - b["entropy"] for x, b in zip(after, before, strict=True) if "entropy" in x]
        ax.hist(change, bins=40, alpha=0.5, label=a["label"])
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("grid entropy after - before fine-tuning (nats)")
    ax.legend(fontsize=7)
    out.append(_save(fig, figdir / f"entropy_change_{slug}.png"))
    a, r = tuned[-1]
    after = _read_jsonl(root / "predictions" / f"{r['cell_id']}.jsonl")[:4]
    if not after or "probs" not in after[0]:
        return out
    grid = r.get("grid") or [str(i) for i in range(len(after[0]["probs"]))]
    fig, axes = plt.subplots(1, len(after), figsize=(3 * len(after), 2.8), squeeze=False)
    for ax, x, b in zip(axes[0], after, before, strict=False):
        pos = np.arange(len(grid))
        ax.bar(pos - 0.2, b["probs"], width=0.4, label="zero-shot")
        ax.bar(pos + 0.2, x["probs"], width=0.4, label=a["label"])
        ax.set_xticks(pos, grid)
        ax.set_title(f"target {x['target']:.2f}", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.append(_save(fig, figdir / f"grid_probs_{slug}.png"))
    return out


def _calibration_figure(root: Path, here, figdir: Path, dataset: str, slug: str) -> list[Path]:
    """Observed vs nominal coverage: the grid distribution's own central intervals (lines, from the PIT
    F(target) of each test example: covered at level c when |PIT - 1/2| <= c/2) and the conformal
    kinds (markers); on the diagonal is calibrated."""
    plt = _plt()
    levels = np.linspace(0.05, 0.95, 19)
    fig, ax = plt.subplots(figsize=(5, 4))
    markers = {"absolute": "s", "std": "^", "cqr": "o"}
    drawn: set[str] = set()  # the conformal kinds that have a marker on the figure
    for a, r in here:
        pit = [x["pit"] for x in _read_jsonl(root / "predictions" / f"{r['cell_id']}.jsonl") if "pit" in x]
        color = None
        if pit:
            pit = np.asarray(pit)
            cov = [(np.abs(pit - 0.5) <= c / 2).mean() for c in levels]
            color = ax.plot(levels, cov, label=f"{a['label']} (grid)")[0].get_color()
        for row in a.get("intervals") or []:
            if row["kind"] in markers:
                ax.scatter(row["nominal"], row["coverage"], marker=markers[row["kind"]], color=color, s=22)
                drawn.add(row["kind"])
    if not ax.lines and not ax.collections:
        plt.close(fig)
        return []
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage (test)")
    ax.set_title(f"{dataset}: calibration of the grid distribution (lines)", fontsize=8)
    for kind in (k for k in markers if k in drawn):  # the legend names only markers that are drawn
        ax.scatter([], [], marker=markers[kind], color="gray", s=22, label=f"conformal {kind}")
    ax.legend(fontsize=7)
    return [_save(fig, figdir / f"calibration_{slug}.png")]


def _convergence_figure(aggs: list[dict], figdir: Path) -> list[Path]:
    """Figure 4: steps to convergence (best validation step) vs training-set fraction."""
    fracs = [a for a in aggs if a["train_fraction"] and a.get("best_step") is not None]
    if len({a["train_fraction"] for a in fracs}) < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in dict.fromkeys(f"{a['dataset']} {a['label']}" for a in fracs):
        pts = sorted(
            (a["train_fraction"], a["best_step"]) for a in fracs if f"{a['dataset']} {a['label']}" == name
        )
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("fraction of the training set")
    ax.set_ylabel("steps to best validation RMSE")
    ax.legend(fontsize=7)
    return [_save(fig, figdir / "steps_to_convergence.png")]


def _md_to_html(md: str) -> str:
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            row = "".join(f"<{tag}>{_bold(html.escape(c))}</{tag}>" for c in cells)
            out.append(("<table>" if not in_table else "") + f"<tr>{row}</tr>")
            in_table = True
        else:
            if in_table:
                out.append("</table>")
                in_table = False
            if line.strip():
                out.append(f"<p>{_bold(html.escape(line))}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def _bold(text: str) -> str:
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def sweep_seeds(sweep: dict) -> list[int]:
    """A sweep's seeds, in its order (default: seed 0)."""
    return [to_int(s, "sweep seeds") for s in sweep.get("seeds", [0])]


def saved_sweep(root: Path) -> dict | None:
    """The copy of the sweep file that wrote ``root`` (its sweep.yaml), if readable."""
    import yaml

    path = root / "sweep.yaml"
    try:
        sweep = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    except (
        yaml.YAMLError,
        OSError,
        UnicodeDecodeError,
    ):  # not a readable sweep: the report goes on without it
        return None
    return sweep if isinstance(sweep, dict) else None


def planned_seeds(root: Path) -> int | None:
    """How many seeds the sweep that wrote ``root`` runs, if known."""
    sweep = saved_sweep(root)
    try:
        return len(sweep_seeds(sweep)) if sweep else None
    except (RaftlmError, TypeError, ValueError):  # (seeds: 5, or other damage: the count is not known)
        return None


def lr_choice_seed(root: Path) -> int | None:
    """The seed the sweep that wrote ``root`` chose its LRs on (``lr_choice: first_seed``), else None."""
    sweep = saved_sweep(root)
    if not sweep or sweep.get("lr_choice") != "first_seed":
        return None
    try:
        return sweep_seeds(sweep)[0]
    except (RaftlmError, TypeError, ValueError, IndexError):  # (damage: chosen as without it)
        return None


def base_method(root: Path) -> dict:
    """The sweep's ``base.method`` settings (what every cell's options add to), for the labels."""
    base = (saved_sweep(root) or {}).get("base") or {}
    method = (base.get("method") or {}) if isinstance(base, dict) else {}
    return method if isinstance(method, dict) else {}


CELL_TEXT = ("dataset", "model", "method", "decoder", "run_id", "cell_id")
CELL_NUMBERS = (
    "rmse", "mae", "pearson", "spearman", "r2", "n", "seed", "lr", "train_fraction", "best_step",
    "validation_rmse", "train_runtime_s", "eval_seconds", "crps", "nll", "mean_std", "calibration_n",
    "rail_only_rmse",
)  # fmt: skip
INTERVAL_FIELDS = {
    "kind": str,
    "nominal": (int, float),
    "coverage": (int, float),
    "width": (int, float),
    "n": int,
}


def cell_problem(row) -> str | None:
    """What makes ``row`` not a cell's result (a field missing or of the wrong type), or None: the one check
    of a cell file (experiment) and of results.json's entries (report)."""
    if not isinstance(row, dict):
        return "not an object"
    for key in (*CELL_TEXT, "rmse", "seed", "lr"):  # (lr null: a zero-shot cell's)
        if key not in row:
            return f"no {key}"
    if isinstance(row["seed"], bool) or not isinstance(row["seed"], int):
        return f"seed is {short(row['seed'])}, not a whole number"
    for key in CELL_TEXT:
        if not isinstance(row[key], str):
            return f"{key} is {short(row[key])}, not text"
    for key in CELL_NUMBERS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key} is {short(value)}, not a number"
    if row.get("options") is not None and not isinstance(row["options"], str):
        return f"options is {short(row['options'])}, not text"
    intervals = row.get("intervals")
    if intervals is not None:
        if not isinstance(intervals, list):
            return f"intervals is {short(intervals)}, not a list"
        for item in intervals:
            if not isinstance(item, dict) or any(
                not isinstance(item.get(k), t) or isinstance(item.get(k), bool)
                for k, t in INTERVAL_FIELDS.items()
            ):
                return f"an interval entry {short(item)} lacks kind/nominal/coverage/width/n"
    return None


REPORT_FILES = ("report.md", "report.html", "summary.json", "figures")
REPORT_MARKER = ".raftlm-report"  # written beside them: the next report may replace them
# how report.html begins, in every raftlm version: a report written before the marker is known by it
PAGE_HEAD = "<!doctype html><html><head><meta charset='utf-8'><title>raftlm report</title>"


def _our_report_marker(root: Path) -> bool:
    """Whether ``root`` holds the marker ``report`` writes (its content, not just a file of that name)."""
    try:
        marker = json.loads((root / REPORT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == "raftlm-report"


def _older_report(root: Path) -> bool:
    """A report an older raftlm wrote before reports were marked: its page says so in its title (the other
    files beside it are the same report's)."""
    try:
        with open(root / "report.html", encoding="utf-8") as f:
            head = f.read(300)
    except (OSError, ValueError):
        return False
    return head.startswith(PAGE_HEAD)


def check_report_dir(root: Path) -> None:
    """``report`` writes report.md, report.html, summary.json and figures/ beside results.json: into a
    folder a sweep wrote (``experiment.check_sweep_dir``), or where none of those exist yet; it replaces
    them only beside its own marker (a user's file of those names, in a sweep's folder too, stays)."""
    there = [name for name in REPORT_FILES if (root / name).exists()]
    if there and not _our_report_marker(root) and not is_sweep_dir(root):
        raise RaftlmError(
            f"{root} is not a sweep's output_dir (no .raftlm-sweep marker, no cells/ beside sweep.yaml) and "
            f"already holds {', '.join(there)}, which raftlm report would replace: move them, or report a "
            "sweep's output_dir"
        )
    if there and not _our_report_marker(root) and not _older_report(root):  # (a sweep writes none of them)
        raise RaftlmError(
            f"{root} holds {', '.join(there)} that no raftlm report wrote (no {REPORT_MARKER} marker beside "
            "them), which this report would replace: move them out of the sweep's folder, then report"
        )


# what tells a sweep's cells apart: a row twice in results.json (a hand-merged file) would count its seed
# twice in the means and the Welch test
CELL_IDENTITY = (
    "cell_id",
    "dataset",
    "model",
    "method",
    "decoder",
    "options",
    "lr",
    "seed",
    "train_fraction",
)
REPORT_WAIT = 300.0  # seconds a report waits for another report of the same folder to finish


def write_report(results_dir: str) -> Path:
    root = Path(results_dir)
    path = root / "results.json"
    if not path.exists():
        raise RaftlmError(
            f"{path} not found: run `raftlm experiment SWEEP.yaml` first (it writes results.json)"
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RaftlmError(
            f"{path} is not valid JSON ({err.msg}, line {err.lineno}): rerun `raftlm experiment` to rewrite it"
        ) from None
    except UnicodeDecodeError:
        raise RaftlmError(f"{path} is not UTF-8 text: rerun `raftlm experiment` to rewrite it") from None
    # one report at a time: a second one's clean-up took the first's drawing folder for a killed report's
    with output_lock(root / "report.md", "the report", wait=REPORT_WAIT):
        check_report_dir(root)  # (first: a folder that is no sweep's nor a report's is never cleaned)
        _clean_leftovers(root)
        if not isinstance(rows, list):
            raise RaftlmError(f"{path} is not a list of cells: rerun `raftlm experiment` to rewrite it")
        if not rows:
            raise RaftlmError(f"{path} has no finished cells yet: let the sweep run")
        bad = next(((i, why) for i, r in enumerate(rows) if (why := cell_problem(r))), None)
        if bad is not None:
            raise RaftlmError(
                f"{path}: entry {bad[0]} is not a cell's result ({bad[1]}): rerun `raftlm experiment` to rewrite it"
            )
        seen = Counter(tuple(str(r.get(k)) for k in CELL_IDENTITY) for r in rows)
        if twice := sorted(c for c, n in seen.items() if n > 1):  # (its seeds would count twice in the means)
            raise RaftlmError(
                f"{path} holds cell {twice[0][0]} {seen[twice[0]]} times: rerun `raftlm experiment` to rewrite it"
            )
        _write_report(root, rows)
    return root / "report.html"


def _clean_leftovers(root: Path) -> None:
    try:  # a kill's leftover temp files go, unless a sweep writes here now (its lock): not leftovers then
        with output_lock(root, "the sweep's results"):
            clean_stale_tmp(root)
            clean_stale_tmp(root / "figures")
            for drawn in root.glob(".report-*"):  # a killed report's figures, drawn but never moved in
                if (
                    re.fullmatch(r"\.report-[a-z0-9_]{8}", drawn.name)
                    and drawn.is_dir()
                    and not drawn.is_symlink()
                    and all(p.suffix == ".png" or TMP_NAME.fullmatch(p.name) for p in drawn.iterdir())
                ):  # (only PNGs and atomic_write's temp files: ours)
                    shutil.rmtree(drawn, ignore_errors=True)
    except RaftlmError:
        pass


def _write_report(root: Path, rows: list[dict]) -> None:
    figdir = root / "figures"
    if figdir.is_symlink():  # (the figures went wherever it pointed, over the files there)
        raise RaftlmError(f"{figdir} is a link, where the report's figures go: replace it with a folder")
    if figdir.exists() and not figdir.is_dir():
        raise RaftlmError(f"{figdir} is {describe(figdir)}, where the report's figures go: move it")
    # everything computed and drawn first (a damaged cell, curve or sweep.yaml fails here), then written:
    # never a new summary.json beside an old report.md
    first = lr_choice_seed(root)
    aggs = aggregate(rows, base_method(root), first)
    md = tables(aggs, rows, planned_seeds(root), first)
    if ended := convergence_table(root, full_data(aggs), rows):
        md = f"{md}\n{ended}"
    with tempfile.TemporaryDirectory(dir=root, prefix=".report-") as drawn:
        pngs = figures(root, aggs, rows, Path(drawn))
        images = "".join(
            f'<h3>{p.stem}</h3><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"/>'
            for p in pngs
        )
        write_json(
            root / REPORT_MARKER, {"format": "raftlm-report", "version": 1, "files": list(REPORT_FILES)}
        )
        page = (
            f"{PAGE_HEAD}<style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}</style></head><body>"
            f"<h1>raftlm report: {html.escape(str(root))}</h1>{_md_to_html(md)}{images}</body></html>"
        )
        # the files one after another, the page (the whole report) among them, each whole (atomic writes)
        write_json(root / "summary.json", aggs)
        write_text(root / "report.md", md)
        write_text(root / "report.html", page)
        if pngs:
            figdir.mkdir(exist_ok=True)
        for png in pngs:
            os.replace(png, figdir / png.name)
        pngs = [figdir / png.name for png in pngs]
    print(md)
    print(f"report: {root / 'report.md'}, {root / 'report.html'} ({len(pngs)} figures)")
