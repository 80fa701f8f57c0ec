"""Issue 4 loaders on small fixtures written here (no dependence on ../shared)."""

import gzip
import json

import numpy as np
import pytest

from raftlm.config import DataConfig
from raftlm.core import RaftlmError
from raftlm.data import amazon_category, load_splits, movielens_rows


def test_amazon_ni_format_with_metadata_titles(tmp_path):
    reviews = tmp_path / "reviews_Cell_Phones_and_Accessories_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        for i in range(30):
            f.write(
                json.dumps(
                    {
                        "overall": 1 + i % 5,
                        "summary": f"headline {i}",
                        "reviewText": f"body {i}",
                        "reviewTime": "01 2, 2014",
                        "asin": f"A{i % 3}",
                    }
                )
                + "\n"
            )
    with open(tmp_path / "meta_Cell_Phones_and_Accessories.json", "w") as f:
        for k in range(3):
            f.write(
                str({"asin": f"A{k}", "title": f"Phone case {k}"}) + "\n"
            )  # 2014 release: Python literals
    s = load_splits(DataConfig(dataset=f"amazon:{reviews}"))
    assert (len(s.train), len(s.validation), len(s.test)) == (24, 3, 3)
    text = s.train[0].text
    assert text.startswith("product_category: Cell Phones and Accessories product_title: Phone case")
    assert "review_date: 01 2, 2014 review_headline: headline" in text and text.endswith(
        "need any explanations."
    )
    assert {e.target for e in s.train} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert amazon_category(reviews) == "Cell Phones and Accessories"
    with pytest.raises(RaftlmError, match="not found"):
        load_splits(DataConfig(dataset=f"amazon:{tmp_path / 'missing.json.gz'}"))


def _ratings(n_users=6, per_user=12, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for u in range(1, n_users + 1):
        stamps = sorted(rng.randint(0, 10_000, size=per_user))
        out += [(u, int(rng.randint(1, 40)), float(rng.randint(1, 6)), int(t)) for t in stamps]
    return out


def test_movielens_prompts_only_hold_earlier_ratings_and_no_test_rating_leaks():
    ratings = _ratings()
    titles = {m: f"Movie {m}" for m in range(1, 40)}
    rows = movielens_rows(ratings, titles, history=5)
    assert rows and all(max(r["history_timestamps"]) < r["timestamp"] for r in rows)
    assert all(len(r["history_items"]) <= 5 for r in rows)
    assert all(r["history_timestamps"] == sorted(r["history_timestamps"]) for r in rows)  # time order
    cut = {"train": max(r["timestamp"] for r in rows if r["split"] == "train")}
    later = {(r["user"], r["item"], r["timestamp"]) for r in rows if r["split"] != "train"}
    for r in rows:
        if r["split"] == "train":
            assert r["timestamp"] <= cut["train"]
            held = {
                (r["user"], i, t) for i, t in zip(r["history_items"], r["history_timestamps"], strict=True)
            }
            assert not held & later  # no validation/test rating inside a training prompt
    assert min(r["timestamp"] for r in rows if r["split"] == "test") >= cut["train"]


def test_movielens_1m_files(tmp_path):
    lines = [f"{u}::{m}::{int(r)}::{t}" for u, m, r, t in _ratings()]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (tmp_path / "movies.dat").write_text(
        "\n".join(f"{m}::Movie {m} (1999)::Drama" for m in range(1, 40)) + "\n"
    )
    s = load_splits(DataConfig(dataset=f"movielens-1m:{tmp_path}", history=3))
    assert s.train and s.validation and s.test and s.grid == "1-5"
    assert s.test[0].text.startswith("Instruction: Predict the rating") and s.test[0].text.endswith("Output:")
    assert s.test[0].text.count("; ") <= 2  # at most 3 history items


def test_movielens_100k_from_the_recbole_package():
    s = load_splits(DataConfig(dataset="movielens-100k"))
    assert (len(s.train), len(s.validation), len(s.test)) == (10_000, 1_000, 1_000)
    assert "Rating History: " in s.test[0].text and "Candidate Item: " in s.test[0].text


def test_movielens_100k_from_a_folder_without_its_files_is_a_clear_error(tmp_path):
    with pytest.raises(RaftlmError, match="ml-100k.inter not found: .*drop --data-dir"):
        load_splits(DataConfig(dataset="movielens-100k", data_dir=str(tmp_path)))


def test_train_fraction_keeps_a_prefix_of_the_training_split(tmp_path):
    from helpers import write_csv

    rows = [{"text": f"row {i}", "target": i % 5} for i in range(100)]
    path = write_csv(tmp_path / "a.csv", rows)
    full = load_splits(DataConfig(dataset=f"csv:{path}"))
    quarter = load_splits(DataConfig(dataset=f"csv:{path}", train_fraction=0.25))
    assert quarter.train == full.train[:20] and quarter.test == full.test
    with pytest.raises(RaftlmError, match="train_fraction"):
        DataConfig(train_fraction=1.5)
