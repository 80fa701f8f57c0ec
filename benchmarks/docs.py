"""Every number the README and docs/ quote from a results file is written here, from that file.

A page marks each generated value in place, so the page stays plain Markdown:

    grid RAIL predicts <!-- docs:speed.rail_vs_sample -->40.8-58.6x<!-- /docs --> faster than sampling

``--write`` fills every marker from ``benchmarks/results/`` (and the CLI's help), ``--check`` (run by
``make test``) exits 1 naming each marker whose text differs from what the files say now. A number in the
docs is therefore never typed by hand: change the results, run ``--write``, commit both.

    python benchmarks/docs.py --write     # after a benchmark or sweep wrote new results
    python benchmarks/docs.py --check     # in make test
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# (a body never spans another opening marker: one whose closing tag is mistyped is left alone, and said)
MARKER = re.compile(r"<!-- docs:(?P<key>[\w.:-]+) -->(?P<body>(?:(?!<!-- docs:).)*?)<!-- /docs -->", re.S)
OPENING = re.compile(r"<!-- docs:(?P<key>[\w.:-]+) -->")


@functools.cache
def load(name: str):
    return json.loads((RESULTS / name).read_text())


def folder_cells(folder: str) -> list[dict]:
    """Every cell result a sweep wrote into ``folder`` (its cells/, in results.json's order). Not its
    results.json, which holds only the cells its sweep file lists now: a row named here by folder,
    method and options keeps a cell its sweep file no longer lists (lr-default's Amazon seed 0, the
    evidence for Amazon's LR choice, after Amazon left that sweep). A folder without cells/ (a results file
    alone): its results.json; no folder: none."""
    if (RESULTS / folder / "cells").is_dir():
        return [json.loads(p.read_text()) for p in sorted((RESULTS / folder / "cells").glob("*.json"))]
    return load(f"{folder}/results.json") if (RESULTS / folder / "results.json").is_file() else []


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def span(values: list[float], unit: str = "x", digits: int = 1) -> str:
    """ "lo-hi" of a list of ratios (one value: itself)."""
    lo, hi = min(values), max(values)
    return (
        f"{lo:.{digits}f}{unit}"
        if f"{lo:.{digits}f}" == f"{hi:.{digits}f}"
        else f"{lo:.{digits}f}-{hi:.{digits}f}{unit}"
    )


# --- table 3 at convergence ------------------------------------------------------------------------

TABLE3 = "table3-converged"
DATASETS = {"stsb-1k": "STS-B-1K", "amazon-snippets": "Amazon snippets", "movielens-100k": "MovieLens-100K"}
ZERO_SHOT = "zero-shot + RAIL"
DEFAULT = "RAFT + 1.0 x CE (two-hot target)"
SHIPPED = "raftlm's default as shipped (STS-B in both orders)"
HEAD_PAIRS = "mean-pooled head, STS-B in both orders"  # sweeps/stsb-head-pairs.yaml: the peer as shipped
# sweeps/raft-head-lever.yaml: RAIL + a pooled head correction on one backbone (STS-B in both orders)
RAFT_HEAD = "RAFT + mean-pooled correction (raft-head; STS-B in both orders)"
ONLY_ON = {HEAD_PAIRS: ("stsb-1k",)}  # rows that exist on some datasets only (the others have no pair)
# the rows of the docs' table 3, in the report's words (summary.json "label"), in this order
TABLE3_ROWS = [
    ZERO_SHOT,
    "CE + greedy",
    "CE + RAIL",
    "CE + 0.3 x NTL + greedy",
    "CE + 0.3 x NTL + RAIL",
    "mean-pooled head",
    HEAD_PAIRS,
    "attention-pooled head",
    "attention-pooled head, frozen LM",
    "RAFT (the paper's: no CE term)",
    "RAFT + 1.0 x CE (nearest target)",
    DEFAULT,
    SHIPPED,
    RAFT_HEAD,
]
README_ROWS = [
    ZERO_SHOT,
    "CE + RAIL",
    "mean-pooled head",
    HEAD_PAIRS,
    "attention-pooled head",
    "RAFT (the paper's: no CE term)",
    SHIPPED,
    RAFT_HEAD,
]
# Where today's default (RAFT + 1.0 x CE, two-hot target; STS-B's pair in both orders) has cells run under
# table3-converged's protocol, per dataset: (results folder, method, options). On Amazon and MovieLens it is
# table3's two-hot row (no pair to swap; lr-default's Amazon cells are the same config at 5e-5); STS-B's
# both-orders cells are stsb-levers' (LR 1e-4) and lr-default's (5e-5). A (LR, seed) found twice is taken
# from the first folder listed.
SHIPPED_ARMS = {
    "stsb-1k": [
        ("stsb-levers", "raft", "pair_swap=sentence1,sentence2"),
        ("lr-default", "raft", ""),
        ("stsb-seeds", "raft", ""),
    ],
    "amazon-snippets": [(TABLE3, "raft", "ce_target=two-hot"), ("lr-default", "raft", "")],
    "movielens-100k": [(TABLE3, "raft", "ce_target=two-hot")],
}
# Other table-3 rows with seeds beyond table3-converged's, per (dataset, label): the same kind of arms.
# sweeps/stsb-seeds.yaml added seeds 3-4 to STS-B-1K's two closest rows (the default and the mean-pooled
# head, in one order as table3-converged ran it); sweeps/stsb-head-pairs.yaml runs the mean-pooled head as
# `raftlm train` ships it for STS-B (both orders of the pair, as the default's row), 5 seeds planned.
FIRST_SEEDS = (0, 1, 2)  # every table-3 row's seeds (sweeps/table3-converged.yaml)
EXTRA_ARMS = {
    ("stsb-1k", "mean-pooled head"): [
        (TABLE3, "head-pooled", ""),
        ("stsb-seeds", "head-pooled", "pair_swap=none"),
    ],
    ("stsb-1k", HEAD_PAIRS): [("stsb-head-pairs", "head-pooled", "")],
    **{(ds, RAFT_HEAD): [("raft-head-lever", "raft-head", "")] for ds in DATASETS},
}
# sweeps/bf16-lever.yaml: the default trained under bf16 autocast (a speed lever, not a table-3 row)
BF16 = "raftlm's default, bf16 training"
BF16_ARMS = [("bf16-lever", "raft", "bf16=True")]
# rows whose seeds past FIRST_SEEDS were added after a first p-value (a sequential design)
SEQUENTIAL = {("stsb-1k", SHIPPED): "the default", ("stsb-1k", "mean-pooled head"): "the mean-pooled head"}


def arm_cells(dataset: str, arms: list[tuple[str, str, str]]) -> dict[tuple[float, int], dict]:
    """One row's cells on one dataset by (LR, seed), from every (folder, method, options) of ``arms``."""
    cells: dict[tuple[float, int], dict] = {}
    for folder, method, options in arms:
        for r in folder_cells(folder):
            if r["dataset"] == dataset and r["method"] == method and (r.get("options") or "") == options:
                cells.setdefault((r["lr"], r["seed"]), {**r, "options": ""})  # one entry, whatever its folder
    return cells


def arm_entry(
    dataset: str, arms: list[tuple[str, str, str]], label: str, seeds: tuple[int, ...] | None = None
) -> dict | None:
    """One row's table-3 entry on one dataset from its cells in several folders (``arm_cells``), as one
    entry of raftlm's own ``report.aggregate`` (table3-converged's rule: the LR whose seed 0 has the lower
    validation RMSE, mean ± std of every seed at that LR). The LR is chosen here, on seed 0, before
    ``aggregate`` sees the cells: an LR that another sweep ran at more seeds (STS-B's 1e-4, three in
    stsb-levers) would otherwise be chosen on the mean over the seeds both LRs have, a rule no other row
    follows. ``seeds``: only those seeds' cells."""
    sys.path.insert(0, str(ROOT / "src"))
    from raftlm.report import aggregate, best_lr

    cells = {k: c for k, c in arm_cells(dataset, arms).items() if seeds is None or k[1] in seeds}
    seed0 = {lr: c["validation_rmse"] for (lr, seed), c in cells.items() if seed == 0}
    if not seed0:
        return None
    lr = best_lr(seed0)
    (entry,) = aggregate([c for (x, _), c in cells.items() if x == lr])
    return {**entry, "label": label}


def shipped_cells(dataset: str) -> dict[tuple[float, int], dict]:
    """The shipped default's cells on one dataset by (LR, seed), from every folder of SHIPPED_ARMS."""
    return arm_cells(dataset, SHIPPED_ARMS[dataset])


def shipped_entry(dataset: str) -> dict | None:
    """The shipped default's table-3 entry on one dataset (``arm_entry`` over SHIPPED_ARMS)."""
    return arm_entry(dataset, SHIPPED_ARMS[dataset], SHIPPED)


def correction_bound(kind: str = "") -> str:
    """benchmarks/correction_bound.py: the most a linear correction of the default's predictions (``kind``
    "temperature_": a temperature of its grid distribution) could lower its test RMSE (fitted on the test
    rows themselves), per dataset."""
    d = load("correction_bound.json")
    return "; ".join(
        f"{name} {d[ds]['rmse']:.3f} -> {d[ds][kind + 'oracle_rmse']:.3f} (fitted on held-out halves: "
        f"{d[ds][kind + 'two_fold_rmse']:.3f})"
        for ds, name in (
            ("stsb-1k", "STS-B-1K"),
            ("amazon-snippets", "Amazon"),
            ("movielens-100k", "MovieLens"),
        )
        if ds in d
    )


def patience() -> str:
    """benchmarks/patience.py: early stopping replayed on the sweeps' validation curves, per patience."""
    parts = []
    for r in load("patience.json")["rows"]:
        n, same = r["runs"], r["same_checkpoint"]
        kept = (
            f"the same checkpoint in all {n} runs"
            if same == n
            else f"another checkpoint in {n - same} of {n} runs (validation RMSE up to "
            f"{r['max_validation_rmse_lost']:.3f} higher)"
        )
        parts.append(f"patience {r['patience']}: {r['steps_saved']:.0%} of the steps saved, {kept}")
    return "; ".join(parts)


def lr_text(lr: float) -> str:
    """1e-4, 5e-5: an LR as the sweeps and docs write it."""
    return f"{lr:.0e}".replace("e-0", "e-")


def lr_default_table() -> str:
    """The default's LR per dataset, chosen on seed 0's validation RMSE (sweeps/lr-default.yaml against the
    cells at 1e-4): each LR's seed-0 validation RMSE, the one chosen, and how many seeds it has."""
    lines = [
        "| dataset | seed 0 validation RMSE at 5e-5 | at 1e-4 | chosen | seeds at the chosen LR |",
        "|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        cells = shipped_cells(dataset)
        val = {lr: c["validation_rmse"] for (lr, seed), c in cells.items() if seed == 0}
        entry = shipped_entry(dataset)
        if entry is None or len(val) < 2:
            chosen = "-" if entry is None else f"{lr_text(entry['lr'])} (the other LR not run yet)"
        else:
            chosen = lr_text(entry["lr"])
        at = {lr: f"{v:.4f}" for lr, v in val.items()}
        lines.append(
            f"| {dataset} | {at.get(5e-5, '-')} | {at.get(1e-4, '-')} | {chosen} | "
            f"{len(entry['seeds']) if entry else 0} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def summary(folder: str = TABLE3) -> dict:
    entries = {(a["dataset"], a["label"]): a for a in load(f"{folder}/summary.json")}
    if folder == TABLE3:
        for dataset in DATASETS:
            if (shipped := shipped_entry(dataset)) is not None:
                entries[dataset, SHIPPED] = shipped
        for (dataset, label), arms in EXTRA_ARMS.items():
            if (merged := arm_entry(dataset, arms, label)) is not None:
                entries[dataset, label] = merged
    return entries


def entry_text(a: dict, digits: int = 3) -> str:
    text = f"{a['rmse']:.{digits}f}"
    if len(a["seeds"]) > 1:
        text += f" ± {a['rmse_std']:.{digits}f}"
    return text + (" †" if a.get("collapsed_seeds") else "")


def table3(rows: list[str]) -> str:
    """Test RMSE, mean ± std over seeds (in brackets), the lowest trained entry per dataset in bold among
    those with every table-3 seed (an entry on fewer seeds is not yet a finding: never bold); an entry not
    run yet is a dash, one that cannot exist (a pair's orders without a pair) n/a."""
    entry = summary()
    trained = [r for r in rows if r != ZERO_SHOT]
    full = lambda a: len(a["seeds"]) >= len(FIRST_SEEDS)  # noqa: E731
    best = {
        ds: min(
            (entry[ds, r]["rmse"] for r in trained if (ds, r) in entry and full(entry[ds, r])), default=None
        )
        for ds in DATASETS
    }
    lines = [
        "| test RMSE (seeds) | " + " | ".join(DATASETS.values()) + " |",
        "|---" * (len(DATASETS) + 1) + "|",
    ]
    for name in rows:
        cells = []
        for ds in DATASETS:
            a = entry.get((ds, name))
            if ds not in ONLY_ON.get(name, DATASETS):
                cells.append("n/a")
                continue
            if a is None:
                cells.append("—")
                continue
            text = entry_text(a)
            if name != ZERO_SHOT:
                text = (
                    f"**{text}**" if full(a) and a["rmse"] == best[ds] else text
                ) + f" ({len(a['seeds'])})"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


def n_seeds(a: dict) -> str:
    """ "1 seed", "3 seeds": how many seeds an entry's mean is over."""
    return f"{len(a['seeds'])} seed{'s' if len(a['seeds']) > 1 else ''}"


def table3_goal(metric: str = "rmse") -> str:
    """Per dataset: whether the shipped default has the lowest mean test RMSE of every trained entry, and
    if not, each entry below it (issue 40's goal, said in numbers). ``metric="validation_rmse"``: the same
    ranking by the mean validation RMSE of each entry's seeds, what every choice is made on."""
    entry = summary()
    out = []
    for ds, name in DATASETS.items():
        mine = entry.get((ds, SHIPPED))
        if mine is None or mine.get(metric) is None:
            continue
        lower = sorted(
            (
                a
                for (d, lab), a in entry.items()
                if d == ds
                and lab not in (SHIPPED, ZERO_SHOT)
                and a.get(metric) is not None
                and a[metric] < mine[metric]
            ),
            key=lambda a: a[metric],
        )
        seeds = f"{n_seeds(mine)} at LR {lr_text(mine['lr'])}"
        said = f"{fmt(mine[metric])}, {seeds}"
        if not lower:
            out.append(f"{name}: lowest ({said})")
        else:
            # each entry's own seed count: a row below the default on fewer seeds is not yet a finding
            below = ", ".join(f"{a['label']} {fmt(a[metric])} ({n_seeds(a)})" for a in lower)
            out.append(f"{name}: not lowest ({said}; below it: {below})")
    return "; ".join(out)


def raft_head_rail_part() -> str:
    """What raft-head's correction adds on test: per dataset, over its cells at its chosen LR that record
    ``rail_only_rmse`` (cells from 1c7697a on), the mean test RMSE with the correction and of its RAIL part
    alone (the prediction less the correction, from the same test pass)."""
    out = []
    for ds, name in DATASETS.items():
        mine = arm_entry(ds, EXTRA_ARMS[ds, RAFT_HEAD], RAFT_HEAD)
        cells = arm_cells(ds, EXTRA_ARMS[ds, RAFT_HEAD])
        have = [] if mine is None else [c for (lr, _), c in cells.items() if lr == mine["lr"]]
        have = [c for c in have if c.get("rail_only_rmse") is not None]
        if not have:
            out.append(f"{name}: not recorded yet")
            continue
        sums = sum(c["rmse"] for c in have) / len(have)
        rail = sum(c["rail_only_rmse"] for c in have) / len(have)
        out.append(f"{name}: {fmt(sums)} with it, {fmt(rail)} without ({n_seeds({'seeds': have})})")
    return "; ".join(out)


def lever_decision(arms: dict[str, list], label: str, adopts, said: str, adopt: str, keep: str) -> str:
    """A lever sweep's pre-registered rule, said in numbers: per dataset the lever's mean validation RMSE
    (its LR chosen on seed 0) against the shipped default's on the same seeds; the lever is adopted only if
    ``adopts(lever's, default's)`` holds on all three datasets once each has seeds 0-2, so one dataset
    with seeds 0-2 where it does not decides it (the others pending or not). ``said`` names that test
    ("lower"), ``adopt`` and ``keep`` the two outcomes."""
    out, judged = [], []
    for ds, name in DATASETS.items():
        mine = arm_entry(ds, arms[ds], label)
        if mine is None:
            out.append(f"{name}: not run yet")
            continue
        seeds = tuple(mine["seeds"])  # seed 0 among them: the default's LR is its own seed-0 choice
        base = arm_entry(ds, SHIPPED_ARMS[ds], SHIPPED, seeds)
        if base is None or len(base["seeds"]) < len(seeds):
            out.append(f"{name}: the default lacks seeds {seeds} at its LR")
            continue
        theirs = base["validation_rmse"]
        n = n_seeds(mine)
        out.append(
            f"{name}: {fmt(mine['validation_rmse'])} against {fmt(theirs)} ({n}, LR {lr_text(mine['lr'])})"
        )
        judged.append((name, set(seeds) >= set(FIRST_SEEDS), bool(adopts(mine["validation_rmse"], theirs))))
    return "; ".join(out) + f" ({rule_verdict(judged, said, adopt, keep)})"


def rule_verdict(judged: list[tuple[str, bool, bool]], said: str, adopt: str, keep: str) -> str:
    """A lever's verdict from (dataset name, has seeds 0-2, the rule holds) per dataset run so far: adopted
    only if the rule holds on all three once each has seeds 0-2; one complete dataset where it does not
    decides it."""
    done = sum(complete for _, complete, _ in judged)
    passed = sum(holds for _, _, holds in judged)
    failed = [name for name, complete, holds in judged if complete and not holds]
    if failed and done < len(DATASETS):
        return f"not {said} on {', '.join(failed)} at seeds 0-2, which decides it: {keep}"
    if done < len(DATASETS):
        return f"decision pending: {done} of {len(DATASETS)} datasets have seeds 0-2"
    if passed == len(DATASETS):
        return f"{said} on all three: {adopt}"
    return f"{said} on {passed} of {len(DATASETS)}: {keep}"


def raft_head_decision() -> str:
    """sweeps/raft-head-lever.yaml's rule: raft-head becomes the default only if its mean validation RMSE
    is lower than the default's on all three datasets at seeds 0-2."""
    arms = {ds: EXTRA_ARMS[ds, RAFT_HEAD] for ds in DATASETS}
    return lever_decision(
        arms,
        RAFT_HEAD,
        lambda mine, theirs: mine < theirs,
        "lower",
        "raft-head becomes the default",
        "the default stays, raft-head is an option",
    )


BF16_MARGIN = 0.005  # sweeps/bf16-lever.yaml: how much higher bf16's validation RMSE may be


def bf16_decision() -> str:
    """sweeps/bf16-lever.yaml's rule: training.bf16 defaults to auto only if bf16's mean validation RMSE is
    at most the float32 default's + BF16_MARGIN on all three datasets at seeds 0-2."""
    return lever_decision(
        {ds: BF16_ARMS for ds in DATASETS},
        BF16,
        lambda mine, theirs: mine <= theirs + BF16_MARGIN,
        f"within +{BF16_MARGIN}",
        "training.bf16 defaults to auto",
        "bf16 training stays opt-in",
    )


def table3_cells() -> str:
    return str(len(load(f"{TABLE3}/results.json")))


def table3_minutes() -> str:
    """The training minutes of table 3's trained cells: the middle 80 % and the median."""
    import statistics

    minutes = sorted(
        r["train_runtime_s"] / 60
        for r in load(f"{TABLE3}/results.json")
        if r["method"] != "none" and r.get("train_runtime_s")
    )
    lo, hi = minutes[len(minutes) // 10], minutes[(9 * len(minutes)) // 10]
    return (
        f"{lo:.0f}-{hi:.0f} minutes (8 in 10 of its trained cells; median {statistics.median(minutes):.0f})"
    )


def raft_vs_best() -> str:
    """Per dataset: the default's gap to the best non-RAFT entry and Welch's p over seeds."""
    sys.path.insert(0, str(ROOT / "src"))
    from raftlm.report import welch_p

    entry = summary()
    out = []
    for ds, name in DATASETS.items():
        others = [
            a
            for (d, lab), a in entry.items()
            if d == ds and not lab.startswith(("RAFT", "zero-shot", "raftlm"))
        ]
        if (ds, SHIPPED) not in entry or not others:
            continue
        best = min(others, key=lambda a: a["rmse"])
        mine = entry[ds, SHIPPED]
        text = (
            f"{name}: {fmt(mine['rmse'])} against {fmt(best['rmse'])} ({best['label']}; "
            f"{mine['rmse'] - best['rmse']:+.3f}, p {welch_p(mine, best)}"
        )
        added = [
            SEQUENTIAL[ds, a["label"]]
            for a in (mine, best)
            if (ds, a["label"]) in SEQUENTIAL and len(a["seeds"]) > len(FIRST_SEEDS)
        ]
        if added and (ds, best["label"]) in EXTRA_ARMS and len(best["seeds"]) > 1:
            # a sequential design: say so, with the p the first seeds gave before more were added
            first = [
                arm_entry(ds, arms, label, FIRST_SEEDS)
                for arms, label in (
                    (SHIPPED_ARMS[ds], SHIPPED),
                    (EXTRA_ARMS[ds, best["label"]], best["label"]),
                )
            ]
            text += (
                f" over {len(mine['seeds'])} and {len(best['seeds'])} seeds; {' and '.join(added)}'s seeds "
                f"past the first {len(FIRST_SEEDS)} were added after p {welch_p(*first)} over those"
            )
        out.append(text + ")")
    return "; ".join(out)


# --- the other results -----------------------------------------------------------------------------


def headline(split: int, metric: str) -> str:
    return fmt(load("stsb-headline.json")["results"][split][metric])


def headline_table() -> str:
    h = load("stsb-headline.json")
    anchors = {
        0: "GPT-2 124M + regression head ~0.84",
        1: "cross-encoders stsb-TinyBERT-L4 0.855, stsb-distilroberta-base 0.879",
    }
    lines = ["| split | RMSE | Pearson | Spearman | anchor (Spearman) |", "|---|---|---|---|---|"]
    for i, r in enumerate(h["results"]):
        lines.append(
            f"| {r['split']} | {fmt(r['rmse'])} | {fmt(r['pearson'])} | **{fmt(r['spearman'])}** | {anchors.get(i, '')} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def headline_verdict() -> str:
    """Where each split's Spearman stands against the published anchors measured on that split."""
    h = load("stsb-headline.json")
    parts = []
    for result, split, name in (
        (h["results"][0], "STS-B dev", "the paper's test split, STS-B dev"),
        (h["results"][1], "STS-B test", "the official test split"),
    ):
        ours = 100 * result["spearman"]
        anchors = {k.split(" (")[0]: v for k, v in h["anchors_spearman_x100"].items() if f"({split}" in k}
        above = [k for k, v in anchors.items() if ours >= v]
        below = [k for k, v in anchors.items() if ours < v]
        said = ([f"at or above {' and '.join(above)}"] if above else []) + (
            [f"below {' and '.join(below)}"] if below else []
        )
        parts.append(f"on {name} ({ours / 100:.3f}) it is {', '.join(said)}")
    text = "; ".join(parts) + " (published figures)"
    return text[0].upper() + text[1:]


def frontier(setting: str, key: str) -> str:
    row = next(r for r in load("frontier.json") if r["setting"] == setting)
    return f"{row[key]:.1f}" if key == "train_minutes" else fmt(row[key])


def speed_rows(name: str, results: str = "speed.json") -> list[dict]:
    return [r for r in load(results) if r["name"] == name]


def speed_span(name: str, results: str = "speed.json", digits: int = 1) -> str:
    return span([r["ratio"] for r in speed_rows(name, results)], digits=digits)


def speed_value(name: str, model: str, dtype: str, results: str = "speed.json") -> str:
    row = next(r for r in speed_rows(name, results) if r["model"] == model and r["dtype"] == dtype)
    return f"{row['ratio']:.2f}x"


def memory(rows: int) -> str:
    return f"{next(r for r in load('predict_memory.json') if r['rows'] == rows)['peak_rss_mb']:.0f} MB"


def serve_value(name: str, key: str) -> str:
    row = next(r for r in load("serve.json") if r["name"] == name)
    value = row[key]
    return f"{value:.2f}x" if key == "ratio" else f"{value:.1f}"


def serve_load_summary() -> str:
    r = load("serve_load.json")
    res, checks = r["result"], r["verdict"]["checks"]
    counts = "equal to" if checks["metrics equal the clients' counts"] else "NOT equal to"
    return (
        f"{res['clients']} clients for {res['seconds']:.0f} s, {res['requests']:,} good, malformed, oversized and "
        f"disconnecting requests: {res['responses_5xx']} responses 5xx, {res['wrong']} wrong predictions of "
        f"{res['rows_checked']:,} checked, /metrics counters {counts} the clients' counts"
    )


def coverage_span() -> str:
    """The 90 % conformal coverage range over uncertainty.json's rows calibrated on data exchangeable with
    the test data (half of the test split, scored on the other half)."""
    rows = [
        r
        for r in load("uncertainty.json")["rows"]
        if r.get("nominal") == 0.9 and r.get("calibration") == "test-half" and r.get("kind") != "grid"
    ]
    return span([100 * r["coverage"] for r in rows], unit=" %", digits=1) if rows else "—"


def demo(method: str, key: str = "rmse") -> str:
    d = load("demo/demo_results.json")
    return f"{next(r for r in d['rows'] if r['method'] == method)[key]:.2f}"


def stability(dataset: str, arm: str, what: str = "collapsed") -> str:
    row = next(r for r in load("stability/summary.json") if r["dataset"] == dataset and r["arm"] == arm)
    if what == "collapsed":
        return f"{len(row['collapsed_seeds'])} of {len(row['seeds'])}"
    return row[f"{what}_mean_std"]


def stability_table() -> str:
    lines = ["| dataset | arm | collapsed | test RMSE |", "|---|---|---|---|"]
    for r in load("stability/summary.json"):
        lines.append(
            f"| {r['dataset']} | {r['arm']} | {len(r['collapsed_seeds'])} of {len(r['seeds'])} | {r['test_rmse_mean_std']} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def two_hot(dataset: str, key: str = "rmse") -> str:
    a = summary("two-hot-probe")[dataset, DEFAULT]
    return entry_text(a) if key == "rmse" else fmt(a[key])


# --- the symmetric-pair lever on STS-B-1K (issue 40) ---------------------------------------------------

LEVER_ARMS = [  # (label, results folder, method, options), every cell at LR 1e-4 on STS-B-1K
    ("RAFT + 1.0 x CE (two-hot), one order", TABLE3, "raft", "ce_target=two-hot"),
    ("the same, both orders (pair_swap)", "stsb-levers", "raft", "pair_swap=sentence1,sentence2"),
    ("mean-pooled head", TABLE3, "head-pooled", ""),
    ("mean-pooled head, both orders", "stsb-head-pairs", "head-pooled", ""),  # the peer as shipped
]


def lever_cells(folder: str, method: str, options: str, dataset: str = "stsb-1k") -> list[dict]:
    return [
        r
        for r in folder_cells(folder)
        if r["dataset"] == dataset
        and r["method"] == method
        and r["lr"] == 1e-4
        and (r.get("options") or "") == options
    ]


def mean_std(values: list[float]) -> str:
    import numpy as np

    return fmt(float(np.mean(values))) + (
        f" ± {fmt(float(np.std(values, ddof=1)))}" if len(values) > 1 else ""
    )


def pair_swap_table() -> str:
    """Validation and test RMSE (mean ± std over seeds) of the default with and without both orders, and
    of the best non-RAFT method, all at LR 1e-4 under table3-converged's protocol; Welch p of the test RMSE
    against the one-order default and against the head."""
    from scipy import stats

    lines = [
        "| STS-B-1K, LR 1e-4 | seeds | validation RMSE | test RMSE | Spearman | Welch p (test RMSE) vs both orders |",
        "|---|---|---|---|---|---|",
    ]
    swap = [r["rmse"] for r in lever_cells(*LEVER_ARMS[1][1:])]
    for label, *where in LEVER_ARMS:
        rows = lever_cells(*where)
        if not rows:
            continue
        test = [r["rmse"] for r in rows]
        p = "-"
        if where[0] != "stsb-levers" and len(test) > 1 and len(swap) > 1:
            p = f"{stats.ttest_ind(test, swap, equal_var=False).pvalue:.3f}"
        lines.append(
            f"| {label} | {len(rows)} | {mean_std([r['validation_rmse'] for r in rows])} | {mean_std(test)} | "
            f"{mean_std([r['spearman'] for r in rows])} | {p} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def lr_probe_table() -> str:
    """Whether a short LR probe picks the LR whose run ends best (benchmarks/lr_probe.py), against
    always training at one LR."""
    r = load("lr_probe.json")
    lines = [
        "| choice of LR | picks the run's best LR | mean regret (validation RMSE) | extra training per other LR |",
        "|---|---|---|---|",
    ]
    for f in r["fixed_lr"]:
        lines.append(f"| always {f['lr']:g} | {f['wins']} of {f['n']} | {f['mean_regret']:.4f} | none |")
    for b in r["by_step"]:
        lines.append(
            f"| probe each LR to step {b['step']} | {b['agree']} of {b['n']} | {b['mean_regret']:.4f} | "
            f"{b['extra_cost_per_candidate']:.0%} of a run |"
        )
    return "\n" + "\n".join(lines) + "\n"


def pair_swap_readme() -> str:
    """One sentence: validation and test RMSE with both orders against one order, and the mean-pooled head's
    in one order and (where run) in both."""
    one, both, head, head_both = ([r for r in lever_cells(*arm[1:])] for arm in LEVER_ARMS)
    if not (one and both and head):
        return "not measured yet"

    def m(rows, key="rmse"):
        return mean_std([r[key] for r in rows])

    text = (
        f"validation RMSE {m(both, 'validation_rmse')} against {m(one, 'validation_rmse')} in one order "
        f"({len(both)} and {len(one)} seeds, LR 1e-4); test {m(both)} against {m(one)}, and the mean-pooled "
        f"head's {m(head)} in one order"
    )
    if head_both:
        text += f" and {m(head_both)} in both ({len(head_both)} seed{'s' if len(head_both) > 1 else ''})"
    return text


# --- the weight average (--ema) on the default (issue 40) ---------------------------------------------------

EMA_BASE = {  # the default without the average, each dataset's cells at LR 1e-4 under table3-converged's protocol
    "stsb-1k": [LEVER_ARMS[1][1:]],  # both orders of the pair: STS-B's default
    "amazon-snippets": [(TABLE3, "raft", "ce_target=two-hot")],
    # table 3 ran MovieLens's seeds 1-2 at 5e-5 (its LR chosen on seed 0): sweeps/ema-base.yaml runs them at 1e-4
    "movielens-100k": [(TABLE3, "raft", "ce_target=two-hot"), ("ema-base", "raft", "ce_target=two-hot")],
}


def ema_arms(dataset: str) -> tuple[list[dict], list[dict]]:
    """The average's cells and the default's without it on ``dataset``, at the seeds both arms have."""
    ema = lever_cells("ema-lever", "raft", "ema=0.99", dataset)
    plain = {}
    for folder, method, options in EMA_BASE[dataset]:
        for r in lever_cells(folder, method, options, dataset):
            plain.setdefault(r["seed"], r)  # a seed found twice: the first source listed
    both = {r["seed"] for r in ema} & set(plain)
    return [r for r in ema if r["seed"] in both], [plain[s] for s in sorted(both)]


def ema_table() -> str:
    """Validation and test RMSE (mean ± std over seeds) of the default with and without --ema 0.99 per
    dataset; Welch p on validation RMSE (the column a default is chosen on)."""
    from scipy import stats

    lines = [
        "| dataset, LR 1e-4 | arm | seeds | validation RMSE | test RMSE | Spearman | Welch p (validation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in EMA_BASE:
        ema, plain = ema_arms(dataset)  # the same seeds on both arms
        if not ema:
            continue
        p = "-"
        if len(ema) > 1 and len(plain) > 1:
            va, vb = ([r["validation_rmse"] for r in rows] for rows in (ema, plain))
            p = f"{stats.ttest_ind(va, vb, equal_var=False).pvalue:.3f}"
        for arm, rows in (("default", plain), ("default + --ema 0.99", ema)):
            lines.append(
                f"| {dataset} | {arm} | {len(rows)} | {mean_std([r['validation_rmse'] for r in rows])} | "
                f"{mean_std([r['rmse'] for r in rows])} | {mean_std([r['spearman'] for r in rows])} | "
                f"{p if rows is ema else ''} |"
            )
    return "\n" + "\n".join(lines) + "\n"


def ema_decision() -> str:
    """sweeps/ema-lever.yaml's rule, fixed before its seeds 1-2 ran: --ema 0.99 becomes the default only if
    its mean validation RMSE is lower than the default's without it (LR 1e-4, the same seeds) on all three
    datasets at seeds 0-2."""
    out, judged = [], []
    for dataset in EMA_BASE:
        ema, plain = ema_arms(dataset)
        name = DATASETS[dataset]
        if not ema:
            out.append(f"{name}: not run yet")
            continue
        seeds = {r["seed"] for r in ema}
        mine, theirs = (sum(r["validation_rmse"] for r in rows) / len(rows) for rows in (ema, plain))
        out.append(f"{name}: {fmt(mine)} against {fmt(theirs)} ({n_seeds({'seeds': sorted(seeds)})})")
        judged.append((name, seeds >= set(FIRST_SEEDS), mine < theirs))
    verdict = rule_verdict(judged, "lower", "--ema 0.99 becomes the default", "the average stays an option")
    return "; ".join(out) + f" ({verdict})"


def default_shipped_table() -> str:
    """benchmarks/default_shipped.py: the shipped default's validation settings against the frontier's, one
    seed on STS-B-1K: minutes, the checkpoint each validation kept, both scored on the whole validation
    split, and the test split read after."""
    if not (RESULTS / "default_shipped.json").exists():
        return "not measured yet"
    d = load("default_shipped.json")
    lines = [
        "| validation settings | validations x prompts (their minutes) | train minutes (wall, with pauses) | "
        "step kept | validation RMSE (whole split) at that step | test RMSE | Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "shipped": "the default then (whole split, max length 512)",
        "frontier": "`--val-size 300 --max-length 256` (300: the default since)",
    }
    for key, arm in d["arms"].items():
        whole = arm["whole_validation_rmse_at_best_step"]
        lines.append(
            f"| {names[key]} | {arm['validations']} x {arm['validation_prompts'] // arm['validations']:,} "
            f"({arm.get('validation_minutes') or arm['validation_minutes_at_test_rate']:.1f}) | "
            f"{arm['train_minutes']:.1f} | {arm['best_step']} | "
            f"{fmt(whole) if whole is not None else '-'} | {fmt(arm['test_rmse'])} | {fmt(arm['test_spearman'])} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def default_shipped_seeds() -> str:
    """Every seed of item 2: the checkpoint each validation keeps, both scored on the whole split."""
    if not (RESULTS / "default_shipped.json").exists():
        return "not measured yet"
    lines = [
        "| seed | step kept: whole split | its validation RMSE (whole split) | step kept: 300 pairs | "
        "its validation RMSE (whole split) | gain of the whole split | whole-split validation minutes | "
        "test RMSE | Spearman |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in load("default_shipped.json").get("seeds", []):
        gain = r["validation_gain"]
        minutes = r["shipped_validation_minutes"]
        lines.append(
            f"| {r['seed']} | {r['shipped_step']} | {fmt(r['shipped_whole_validation_rmse'])} | "
            f"{r['val300_step'] if r['val300_step'] is not None else '-'} | "
            f"{fmt(r['val300_whole_validation_rmse']) if r['val300_whole_validation_rmse'] is not None else '-'} | "
            f"{f'{gain:+.3f}' if gain is not None else '-'} | {f'{minutes:.1f}' if minutes else '-'} | "
            f"{fmt(r['test_rmse'])} | {fmt(r['test_spearman'])} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def default_shipped_extra() -> str:
    """What validating on the whole split added to the 300-pair run's training minutes."""
    d = load("default_shipped.json")
    base = d["arms"]["frontier"]["train_minutes"]
    return f"{d['extra_minutes']:.1f} minutes more than {base:.0f} (+{d['extra_minutes'] / base:.0%})"


def default_shipped_verdict() -> str:
    if not (RESULTS / "default_shipped.json").exists():
        return "not measured yet"
    d = load("default_shipped.json")
    if d.get("validation_gain_mean") is None:
        return "the two arms trained different weights, so their validation choices do not compare"
    n = d["seeds_compared"]
    return (
        f"validating on the whole split costs {d['extra_minutes']:+.1f} minutes of `raftlm train` ("
        + (
            "its validation passes, timed"
            if d.get("extra_minutes_from") == "validation_minutes"
            else "its prompts at the test's scoring rate"
        )
        + ", seed 0) and "
        f"brings {d['validation_gain_mean']:+.3f} whole-split validation RMSE through the checkpoint it keeps, "
        f"{'on seed 0' if n == 1 else f'the mean over {n} seeds'} (the same training as the 300-pair arm's: "
        "logged losses equal)"
    )


def frontier_table() -> str:
    lines = [
        "| setting | minutes | steps | best step | validation RMSE | test RMSE | Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in load("frontier.json"):
        lines.append(
            f"| `{r['flags']}` | {r['train_minutes']:.1f} | {r['steps']} | {r['best_step']} | "
            f"{fmt(r['validation_rmse'])} | {fmt(r['test_rmse'])} | {fmt(r['spearman'])} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def chunk_tokens(dataset: str) -> str:
    return f"{load('length_chunks/length_chunks.json')['tokens'][dataset]['2']:.2f}"


def chunk_speedup(n: str) -> str:
    return f"{load('length_chunks/length_chunks.json')['speedup_vs_1'][n]['median']:.2f}x"


BEFORE_STOP49 = "before stop 49 (head per chunk, F.linear, AdamW loop)"


def efficiency(variant: str, key: str = "fraction_of_peak", inverse: bool = False) -> str:
    """A train-efficiency row's figure; ``inverse``: a speed ratio as the default's against the variant."""
    row = next(r for r in load("speed.json") if r["name"] == f"train step vs matmul peak: {variant}")
    if key in ("fraction_of_peak", "head_share"):
        return f"{100 * row[key]:.0f} %"
    return f"{1 / row[key] if inverse else row[key]:.2f}x"


def readme_printed() -> tuple[str, str]:
    """The README Python example's printed line (``[p1 p2 ...] r2``) as "p1, p2, ..." and "r2"."""
    inside, after = load("readme_example.json")["printed"].split("]")
    predictions = ", ".join(f"{float(v):.2f}" for v in inside.strip("[ ").split())
    return predictions, f"{float(after):.2f}"


def bf16_peak_ratio() -> str:
    """The bf16 over float32 matmul peak of the machine that measured speed.json's train-step rows."""
    row = next(r for r in load("speed.json") if r["name"] == "train step vs matmul peak: default")
    return f"{row['bf16_peak_flops_per_s'] / row['peak_flops_per_s']:.1f}x"


def bf16_without_fast_units(case: str) -> str:
    """bf16 autocast's slowdown on bf16_cpu.json's machine whose flags say avx512_bf16 but have no AMX."""
    (entry,) = [
        e for e in load("bf16_cpu.json").values() if e["cpu_has_bf16"] and "amx_bf16" not in e["flags"]
    ]
    return f"{entry['cases'][case]['bf16_over_float32']:.1f}x"


def int8_layer(variant: str) -> str:
    v = load("int8_layers.json")["variants"][variant]
    return f"{v['speedup']:.2f}x at {'delta RMSE ' if not v['kept_float32'] else ''}{v['delta_rmse']:+.3f}"


def int8_variant(results: str, variant: str) -> str:
    """One int8_layers.py variant as the docs say it: speed, delta RMSE and how far predictions moved."""
    v = load(results)["variants"][variant]
    return (
        f"{v['speedup']:.2f}x float32's rows/s, delta RMSE {v['delta_rmse']:+.4f}, predictions moved by "
        f"{v['mean_abs_prediction_diff']:.3f} on average"
    )


def smallest_change(results: str, setting) -> tuple[float, dict[float, float]]:
    """A probe's SmoothQuant variants (``setting(name, variant)`` the value each tried, None for the others) with
    their mean |prediction change|, and the value with the smallest (the rule the choice followed)."""
    changes = {}
    for name, v in load(results)["variants"].items():
        if (value := setting(name, v)) is not None:
            changes[value] = v["mean_abs_prediction_diff"]
    return min(changes, key=changes.get), changes


def smoothquant_alphas() -> tuple[float, dict[float, float]]:
    """int8_smoothquant.json's alphas: the chosen one and each one's mean change."""
    return smallest_change("int8_smoothquant.json", lambda name, v: v["smoothquant_alpha"] or None)


def maxima_rows() -> tuple[int, dict[int, float]]:
    """int8_maxima_rows.json's numbers of training rows the maxima came from: the chosen one and each one's."""
    return smallest_change("int8_maxima_rows.json", lambda name, v: int(name.split(" of ")[1].split()[0]))


def choice_words(chosen: tuple, label: str) -> str:
    """The chosen value (``label``, e.g. "alpha {:g}"), said with the others' mean change."""
    best, changes = chosen
    others = ", ".join(f"{a:g}: {d:.3f}" for a, d in sorted(changes.items()) if a != best)
    return f"{label.format(best)} ({changes[best]:.3f}; {others})"


def maxima_cost() -> str:
    """int8_maxima.json (benchmarks/int8_maxima.py): what measuring the maxima costs, batched."""
    r = load("int8_maxima.json")
    return (
        f"{r['prompts']} prompts in {r['seconds_batched']:.0f} s on Gemma 3 270M here, {r['speedup']:.1f}x faster "
        f"than one prompt a batch, with maxima equal to {r['max_relative_maxima_diff']:.0e} relative"
    )


def int8_noise(key: str) -> str:
    """int8_noise.json (benchmarks/int8_noise.py): int8's change over draws of maxima that differ by 1e-5."""
    r = load("int8_noise.json")
    if key == "draws":
        return str(len(r["draws"]))
    if key == "diff":
        v = r["mean_abs_prediction_diff"]
        return f"{v['mean']:.3f} ± {v['sd']:.3f}"
    v = r["delta_rmse"]
    return (
        f"{v['mean']:+.4f} ± {v['sd']:.4f} (range {v['min']:+.4f} to {v['max']:+.4f}; {r['within_target']} of "
        f"{len(r['draws'])} draws within 0.005)"
    )


def int8_test(key: str, results: str = "int8_stsb.json") -> str:
    """A figure of int8_stsb.json (benchmarks/int8.py --smooth on the STS-B-1K run; ``results``: another such
    file): plain int8 + --compile ("compiled") against --dtype int8 as shipped, SmoothQuant + --compile
    ("smoothed"), on the test split."""
    d = load(results)
    if key == "rows":
        return str(d["rows"])
    part, field = key.split(".")
    v = d[part]
    if field == "speedup":
        return f"{v['speedup']:.2f}x"
    if field == "range":
        return "-".join(f"{x:.2f}" for x in v["speedup_range"])
    if field == "mean_diff":
        return f"{v['mean_abs_prediction_diff']:.3f}"
    if field == "first_pass":
        return f"{v['first_pass_seconds']:.0f} s"
    if field == "verdict":  # issue 40's int8 targets, both at once
        sys.path.insert(0, str(Path(__file__).parent))
        from int8 import missed_targets  # benchmarks/int8.py's

        missed = missed_targets(v)
        if not missed:
            return "meets both of issue 40's int8 targets"
        return f"misses issue 40's {' and '.join(missed)} target{'s' if len(missed) > 1 else ''}"
    return f"{v[field]:+.4f}"


def span_of(summary: dict) -> str:
    return f"{summary['min_speedup']:.1f}-{summary['max_speedup']:.1f}x"


def compile_seconds() -> str:
    """What compiling costs once: the compiled variant's first two steps against the default's."""
    rows = {r["name"]: r for r in load("speed.json")}
    compiled, default = (
        rows[f"train step vs matmul peak: {v}"] for v in ("compiled blocks (opt-in)", "default")
    )
    return f"{compiled['warmup_seconds'] - default['warmup_seconds']:.0f} s"


def int8(key: str, part: str | None = None) -> str:
    """A figure of benchmarks/results/int8.json: eager int8's, or ``part``'s ("compiled", "before")."""
    d = load("int8.json")
    d = d[part] if part else d
    if key == "speedup":
        return f"{d['speedup']:.2f}x"
    if key == "delta_rmse":
        return f"{d['delta_rmse']:+.3f}"
    return f"{d['delta_spearman']:+.3f}"


def ray_ratio(key: str) -> str:
    """--engine ray (2 actors) against raftlm predict, from ray_predict.json: end-to-end rows/s ratio, or the
    start-up overhead in seconds."""
    rows = {r["engine"].split(",")[0]: r for r in load("ray_predict.json")["rows"]}
    ray, local = rows["ray"], rows["local"]
    if key == "overhead":
        return f"+{ray['overhead_s'] - local['overhead_s']:.1f} s"
    return f"{ray['end_to_end_rows_s'] / local['end_to_end_rows_s']:.2f}x"


def cli_help(command: str) -> str:
    """``raftlm COMMAND --help`` as the parser prints it at 100 columns (the reference of every flag)."""
    env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "raftlm", *([command] if command != "raftlm" else []), "--help"]
    text = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    return "\n```text\n" + text.rstrip() + "\n```\n"


# key -> the text that stands between its markers
VALUES: dict[str, Callable[[], str]] = {
    "table3.readme": lambda: table3(README_ROWS),
    "table3.full": lambda: table3(TABLE3_ROWS),
    "table3.cells": table3_cells,
    "table3.minutes": table3_minutes,
    "table3.raft_vs_best": raft_vs_best,
    "table3.goal": table3_goal,
    "table3.goal_validation": lambda: table3_goal("validation_rmse"),
    "levers.raft_head_decision": raft_head_decision,
    "levers.raft_head_rail_part": raft_head_rail_part,
    "levers.bf16_decision": bf16_decision,
    "headline.table": headline_table,
    "headline.minutes": lambda: f"{load('stsb-headline.json')['train_minutes']:.1f}",
    "headline.verdict": headline_verdict,
    "headline.command": lambda: f"`{load('stsb-headline.json')['commands'][0]}`",
    "headline.dev_spearman": lambda: headline(0, "spearman"),
    "headline.test_spearman": lambda: headline(1, "spearman"),
    "frontier.default_minutes": lambda: frontier("top9-cached-adamw-1e-4-500-grid0-5", "train_minutes"),
    "frontier.default_rmse": lambda: frontier("top9-cached-adamw-1e-4-500-grid0-5", "test_rmse"),
    "frontier.default_spearman": lambda: frontier("top9-cached-adamw-1e-4-500-grid0-5", "spearman"),
    "frontier.grid15_rmse": lambda: frontier("top9-cached-adamw-1e-4-500", "test_rmse"),
    "frontier.all18_rmse": lambda: frontier("all18-adamw-5e-5-300", "test_rmse"),
    "speed.rail_vs_sample": lambda: speed_span("inference: grid rail vs sample-rail"),
    "speed.rail_vs_greedy": lambda: speed_span("inference: grid rail vs greedy", digits=2),
    "speed.shared_prefix": lambda: speed_span("51-string grid: shared prefix vs naive re-encoding"),
    "speed.bucketing": lambda: speed_span("mixed lengths: bucketing vs fixed padding", digits=2),
    "speed.raft_vs_ce_frozen": lambda: speed_span("train step, embeddings frozen: raft vs ce", digits=2),
    "speed.cache_top6": lambda: speed_value(
        "train step: uncached vs cached top-6", "gemma-3-270m", "float32"
    ),
    "speed.cache_top4": lambda: speed_value(
        "train step: uncached vs cached top-4", "gemma-3-270m", "float32"
    ),
    "cuda.train_ratios": lambda: speed_span("train step: raft vs ce", "speed_cuda.json", digits=2),
    "cuda.rail_vs_sample": lambda: speed_span(
        "inference: grid rail vs sample-rail", "speed_cuda.json", digits=0
    ),
    "memory.10k": lambda: memory(10_000),
    "memory.200k": lambda: memory(200_000),
    "serve.rows_s": lambda: serve_value("serve micro-batched", "throughput_rows_s"),
    "serve.vs_offline": lambda: serve_value("serve micro-batched vs offline predict", "ratio"),
    "serve.vs_batch1": lambda: serve_value("serve micro-batched vs batch-1", "ratio"),
    "serve.logging_vs_bare": lambda: serve_value("serve with metrics and access log vs without", "ratio"),
    "serve.interval_vs_plain": lambda: serve_value('serve with "interval": 0.9 vs without', "ratio"),
    "serve_load.summary": serve_load_summary,
    "uncertainty.coverage90": coverage_span,
    "stability.table": stability_table,
    "stability.paper_amazon": lambda: stability("amazon-snippets", "paper (Adafactor, LR 0.0003)"),
    "stability.ce_amazon": lambda: stability("amazon-snippets", "RAFT + 1.0 CE (LR 0.0003)"),
    "stability.ce_amazon_rmse": lambda: stability(
        "amazon-snippets", "RAFT + 1.0 CE (LR 0.0003)", "test_rmse"
    ),
    "stability.low_lr_amazon_rmse": lambda: stability(
        "amazon-snippets", "240 steps (LR 0.0001)", "test_rmse"
    ),
    "twohot.amazon": lambda: two_hot("amazon-snippets"),
    "twohot.stsb": lambda: two_hot("stsb-1k"),
    "frontier.table": frontier_table,
    "default_shipped.table": default_shipped_table,
    "default_shipped.verdict": default_shipped_verdict,
    "default_shipped.extra": default_shipped_extra,
    "default_shipped.seeds": default_shipped_seeds,
    "levers.pair_swap_table": pair_swap_table,
    "levers.pair_swap_readme": pair_swap_readme,
    "levers.lr_probe_table": lr_probe_table,
    "levers.lr_default_table": lr_default_table,
    "levers.correction_bound": correction_bound,
    "levers.temperature_bound": lambda: correction_bound("temperature_"),
    "levers.patience": patience,
    "levers.ema_table": ema_table,
    "levers.ema_decision": ema_decision,
    "levers.lr_probe_runs": lambda: str(load("lr_probe.json")["runs"]),
    "levers.lr_probe_gap": lambda: f"{load('lr_probe.json')['mean_gap_between_lrs']:.3f}",
    "chunks.tokens_stsb": lambda: chunk_tokens("stsb-1k"),
    "chunks.tokens_amazon": lambda: chunk_tokens("amazon-snippets"),
    "chunks.tokens_movielens": lambda: chunk_tokens("movielens-100k"),
    "chunks.speedup2": lambda: chunk_speedup("2"),
    "chunks.speedup4": lambda: chunk_speedup("4"),
    "efficiency.default": lambda: efficiency("default"),
    "speed.default_step": lambda: (
        f"{next(r for r in load('speed.json') if r['name'] == 'train step vs matmul peak: default')['seconds']:.1f} s"
    ),
    "efficiency.before": lambda: efficiency("before issue 40"),
    "efficiency.before_stop49": lambda: efficiency(BEFORE_STOP49),
    "int8_layers.all": lambda: int8_layer("every Linear int8"),
    "int8_layers.down": lambda: int8_layer("MLP down_proj float32"),
    "int8_layers.down_o": lambda: int8_layer("down_proj and o_proj float32"),
    "efficiency.head_share": lambda: efficiency("default", "head_share"),
    "efficiency.stop49_speedup": lambda: efficiency(BEFORE_STOP49, "speedup_vs_default", inverse=True),
    "head.speedup": lambda: f"{load('head_matmul.json')['summary']['median_speedup']:.1f}x",
    "head.range": lambda: span_of(load("head_matmul.json")["summary"]),
    "efficiency.bf16_speedup": lambda: efficiency("bf16 autocast (opt-in)", "speedup_vs_default"),
    "efficiency.bf16_peak_ratio": bf16_peak_ratio,
    "readme.python_minutes": lambda: f"{load('readme_example.json')['minutes']:.1f}",
    "readme.python_predictions": lambda: readme_printed()[0],
    "readme.python_r2": lambda: readme_printed()[1],
    "bf16_cpu.slow_step": lambda: bf16_without_fast_units("2 decoder blocks forward + backward"),
    "bf16_cpu.slow_frozen": lambda: bf16_without_fast_units(
        "2 frozen decoder blocks forward (inference, the frozen-block cache)"
    ),
    "efficiency.compiled": lambda: efficiency("compiled blocks (opt-in)"),
    "efficiency.compiled_speedup": lambda: efficiency("compiled blocks (opt-in)", "speedup_vs_default"),
    "efficiency.compile_seconds": compile_seconds,
    "int8.speedup": lambda: int8("speedup"),
    "int8.delta_rmse": lambda: int8("delta_rmse"),
    "int8.delta_spearman": lambda: int8("delta_spearman"),
    "int8.before_delta_rmse": lambda: int8("delta_rmse", "before"),
    "int8.compiled_speedup": lambda: int8("speedup", "compiled"),
    "int8.compiled_delta_rmse": lambda: int8("delta_rmse", "compiled"),
    "int8.compiled_delta_spearman": lambda: int8("delta_spearman", "compiled"),
    "int8.mean_diffs": lambda: (
        f"{load('int8.json')['mean_abs_prediction_diff']:.3f} (eager) and "
        f"{load('int8.json')['compiled']['mean_abs_prediction_diff']:.3f} (compiled)"
    ),
    "int8.compile_seconds": lambda: f"{load('int8.json')['compiled']['first_batch_seconds']:.0f} s",
    "int8_smoothquant.plain": lambda: int8_variant("int8_smoothquant.json", "every Linear int8"),
    "int8_smoothquant.chosen": lambda: int8_variant(
        "int8_smoothquant.json", f"SmoothQuant alpha {smoothquant_alphas()[0]:g}"
    ),
    "int8_smoothquant.choice": lambda: choice_words(smoothquant_alphas(), "alpha {:g}"),
    "int8_maxima_rows.choice": lambda: choice_words(maxima_rows(), "{} rows"),
    "int8_maxima.cost": maxima_cost,
    "int8_maxima.int8_change": lambda: (
        f"{load('int8_maxima.json')['int8_prediction_change_mean']:.3f} apart on average on "
        f"{load('int8_maxima.json')['validation_rows']} validation rows"
    ),
    "int8_noise.draws": lambda: int8_noise("draws"),
    "int8_noise.delta_rmse": lambda: int8_noise("delta_rmse"),
    "int8_noise.diff": lambda: int8_noise("diff"),
    "int8_stsb.rows": lambda: str(load("int8_stsb.json")["rows"]),
    "int8_stsb.compiled_speedup": lambda: int8_test("compiled.speedup"),
    "int8_stsb.compiled_delta_rmse": lambda: int8_test("compiled.delta_rmse"),
    "int8_stsb.compiled_diff": lambda: int8_test("compiled.mean_diff"),
    "int8_stsb.smoothed_speedup": lambda: int8_test("smoothed.speedup"),
    "int8_stsb.smoothed_delta_rmse": lambda: int8_test("smoothed.delta_rmse"),
    "int8_stsb.smoothed_delta_spearman": lambda: int8_test("smoothed.delta_spearman"),
    "int8_stsb.smoothed_diff": lambda: int8_test("smoothed.mean_diff"),
    "int8_stsb.smoothed_range": lambda: int8_test("smoothed.range"),
    "int8_stsb.smoothed_first_pass": lambda: int8_test("smoothed.first_pass"),
    "int8_stsb.smoothed_verdict": lambda: int8_test("smoothed.verdict"),
    "int8_stsb.compiled_delta_spearman": lambda: int8_test("compiled.delta_spearman"),
    "int8_stsb.rounds": lambda: str(load("int8_stsb.json")["rounds"]),
    **{  # the same figures of int8.py --smooth on a fresh Amazon run of the default (int8_amazon.json)
        f"int8_amazon.{k}": (lambda k=k: int8_test(k, "int8_amazon.json"))
        for k in (
            *(
                "rows",
                "smoothed.speedup",
                "smoothed.delta_rmse",
                "smoothed.delta_spearman",
                "smoothed.mean_diff",
            ),
            *("smoothed.verdict", "compiled.speedup", "compiled.delta_rmse", "compiled.mean_diff"),
        )
    },
    "ray.end_to_end": lambda: ray_ratio("end_to_end"),
    "ray.overhead": lambda: ray_ratio("overhead"),
    "cached_validation.speedup": lambda: f"{load('cached_validation.json')['speedup_median']:.2f}x",
    "demo.minutes": lambda: f"{load('demo/demo_results.json')['minutes']:.1f}",
    "demo.greedy": lambda: demo("zero-shot greedy"),
    "demo.rail": lambda: demo("zero-shot rail"),
    "demo.raft": lambda: demo("RAFT + rail"),
    "demo.raft_spearman": lambda: demo("RAFT + rail", "spearman"),
    "cli.raftlm": lambda: cli_help("raftlm"),
    "cli.train": lambda: cli_help("train"),
    "cli.predict": lambda: cli_help("predict"),
    "cli.evaluate": lambda: cli_help("evaluate"),
    "cli.calibrate": lambda: cli_help("calibrate"),
    "cli.serve": lambda: cli_help("serve"),
    "cli.experiment": lambda: cli_help("experiment"),
    "cli.report": lambda: cli_help("report"),
    "cli.demo": lambda: cli_help("demo"),
    "cli.fetch": lambda: cli_help("fetch"),
    "cli.push": lambda: cli_help("push"),
}


def unclosed(text: str) -> list[str]:
    """The keys of opening markers with no closing ``<!-- /docs -->`` before the next one (a mistyped
    close): --write would otherwise replace the prose up to some later marker's close."""
    closed = {m.start() for m in MARKER.finditer(text)}
    return [m["key"] for m in OPENING.finditer(text) if m.start() not in closed]


def render(text: str, page: Path, problems: list[str]) -> str:
    def fill(m: re.Match) -> str:
        key = m["key"]
        if key not in VALUES:
            problems.append(f"{page.relative_to(ROOT)}: unknown docs key {key!r}")
            return m[0]
        try:
            value = VALUES[key]()
        except (OSError, KeyError, StopIteration, ValueError, subprocess.CalledProcessError) as err:
            problems.append(f"{page.relative_to(ROOT)}: {key}: cannot compute ({type(err).__name__}: {err})")
            return m[0]
        return f"<!-- docs:{key} -->{value}<!-- /docs -->"

    return MARKER.sub(fill, text)


def main(argv: list[str]) -> int:
    if argv not in (["--write"], ["--check"]):
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        print("usage: python benchmarks/docs.py --write | --check", file=sys.stderr)
        return 2
    problems: list[str] = []
    stale = []
    for page in PAGES:
        old = page.read_text(encoding="utf-8")
        if keys := unclosed(old):  # the page is left as it is until its markers are whole
            problems.append(
                f"{page.relative_to(ROOT)}: marker {keys[0]} has no <!-- /docs --> before the next one"
            )
            continue
        new = render(old, page, problems)
        if new != old:
            stale.append(page)
            if argv == ["--write"]:  # (whole or not at all: a temporary file renamed over the page)
                tmp = page.with_name(f".{page.name}.docs-tmp")
                tmp.write_text(new, encoding="utf-8")
                os.replace(tmp, page)
    for p in problems:
        print(f"docs: {p}", file=sys.stderr)
    if argv == ["--check"] and stale:
        for page in stale:
            old = {m["key"]: m["body"] for m in MARKER.finditer(page.read_text(encoding="utf-8"))}
            new = {
                m["key"]: m["body"]
                for m in MARKER.finditer(render(page.read_text(encoding="utf-8"), page, []))
            }
            keys = [k for k in new if old.get(k) != new[k]]
            print(f"docs: {page.relative_to(ROOT)} differs from its results in {keys}", file=sys.stderr)
        print("docs: run `python benchmarks/docs.py --write` and commit the pages", file=sys.stderr)
        return 1
    if argv == ["--write"]:
        print(
            f"docs: {len(stale)} page(s) rewritten"
            + (f": {', '.join(p.name for p in stale)}" if stale else "")
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
