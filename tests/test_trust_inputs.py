"""Red-team findings on inputs: seeds and numbers in settings, malformed Amazon / MovieLens files,
RAFTLM_CACHE, and messages that must show what the user wrote. Each bad input is one RaftlmError line
naming the problem and the fix (never a traceback), checked before any work."""

import gzip
import json
import re
import warnings

import numpy as np
import pytest
import yaml

from raftlm import models
from raftlm.cli import main
from raftlm.config import MAX_INT, Config, ServeSettings, convert_setting
from raftlm.core import RaftlmError, RaftlmWarning, check_level, to_number, to_whole
from raftlm.data import load_amazon, load_movielens_1m, load_movielens_100k
from raftlm.grid import TargetScaler
from raftlm.uncertainty import Calibration


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- 1. seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("training.seed", -1),
        ("training.seed", 2**32),
        ("training.seed", "-1"),
        ("training.seed", "4294967296"),
        ("data.split_seed", -1),
        ("data.split_seed", "-5"),
    ],
)
def test_out_of_range_seeds_are_one_line(key, value):
    with pytest.raises(RaftlmError) as err:
        Config.build(overrides={key: value})
    assert _one_line(err) == f"{key}={int(value)}: use a whole number in [0, 4294967295]"


def test_a_seed_read_elsewhere_gets_the_same_check():
    assert convert_setting("training.seed", "7") == 7
    with pytest.raises(RaftlmError, match=r"^sweep seeds=-1: use a whole number in \[0, 4294967295\]$"):
        convert_setting("training.seed", -1, "sweep seeds")


def test_seeds_at_the_ends_of_the_range_are_accepted():
    cfg = Config.build(overrides={"training.seed": 2**32 - 1, "data.split_seed": "0"})
    assert cfg.training.seed == 2**32 - 1 and cfg.data.split_seed == 0
    assert Config.build(overrides={"data.split_seed": None}).data.split_seed is None


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "csv:x.csv", "--seed", "-1"],
        ["train", "--dataset", "csv:x.csv", "--split-seed", "-1"],
        ["train", "--dataset", "csv:x.csv", "--set", "data.split_seed=-5"],
        ["evaluate", "--model", "RUN", "--seed", "-1"],
        ["predict", "--model", "RUN", "--input", "in.csv", "--output", "o.csv", "--seed", "4294967296"],
    ],
)
def test_the_command_line_refuses_bad_seeds_in_one_line_before_any_work(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "train":
        argv = [*argv, "--model", "tiny-random-llama", "--output-dir", "out", "--quiet"]
    assert main(argv) == 2  # the config is checked before the run (RUN does not exist) or the data
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed=" in err and "[0, 4294967295]" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_regressor_with_a_bad_seed_is_a_raftlm_error(tmp_path):
    from raftlm import RAFTRegressor

    reg = RAFTRegressor(model="tiny-random-llama", seed=-1, max_steps=1, output_dir=str(tmp_path / "r"))
    with pytest.raises(RaftlmError, match=r"^training\.seed=-1: use a whole number in \[0, 4294967295\]$"):
        reg.fit(["a b", "c d", "e f"], [1.0, 2.0, 3.0])
    assert not (tmp_path / "r").exists()


# --- 5. numbers in settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("training.lr", "1_0", "training.lr='1_0' is not a number"),
        ("training.lr", "1e-4_0", "is not a number"),
        ("training.lr", "\uff11", "is not a number"),  # a fullwidth digit
        ("training.max_steps", "1_0", "training.max_steps='1_0': use a whole number"),
        ("model.dropout", "0_1", "is not a number"),
        ("method.target_range", "1_0,20", "target_range="),
        (
            "training.max_steps",
            "99999999999999999999",
            "training.max_steps=99999999999999999999: use a whole",
        ),
        ("training.max_steps", 10**20, "up to 1,000,000,000"),
        ("training.batch_size", "1e12", "training.batch_size=1000000000000: use a whole number up to"),
        ("data.history", MAX_INT + 1, "up to 1,000,000,000"),
        ("eval.num_samples", "5_000", "use a whole number"),
    ],
)
def test_numbers_are_plain_and_bounded(key, value, message):
    with pytest.raises(RaftlmError) as err:
        Config.build(overrides={key: value})
    assert message in _one_line(err)


def test_plain_numbers_still_read():
    cfg = Config.build(
        overrides={"training.lr": " 1e-4 ", "training.max_steps": "1e3", "training.eval_steps": "4.0"}
    )
    assert cfg.training.lr == 1e-4 and cfg.training.max_steps == 1000 and cfg.training.eval_steps == 4
    assert Config.build(overrides={"training.max_steps": MAX_INT}).training.max_steps == MAX_INT
    assert to_whole(" -12 ") == -12 and to_number("1.5e2") == 150.0
    for bad in ("1_0", "\uff11", "1.0"):
        with pytest.raises(ValueError):
            to_whole(bad)


def test_serve_settings_share_the_bound():
    with pytest.raises(RaftlmError, match=r"^--max-body-kb=10000000000: use a whole number up to"):
        ServeSettings(max_body_kb=10**10)
    with pytest.raises(RaftlmError, match="is not a number"):
        ServeSettings(max_wait_ms="1_0")


# --- 6. messages show the value -------------------------------------------------------------------


def test_a_level_close_to_one_is_shown_with_its_digits():
    r = np.linspace(-1, 1, 8)
    cal = Calibration(3.0 + r, np.full((r.size, 1), 3.0), None, TargetScaler(1.0, 5.0, 1.0, 5.0))
    with pytest.raises(RaftlmError) as err:
        cal.intervals(np.full((2, 1), 3.0), [0.9999999], kind="absolute")
    assert "cannot give a 0.9999999 interval" in _one_line(err)


@pytest.mark.parametrize("level", ["0.9_9", "\uff10.9", True])
def test_a_level_that_is_not_a_plain_number_is_refused(level):
    with pytest.raises(RaftlmError, match="is not a number strictly between 0 and 1"):
        check_level(level)
    with pytest.raises(RaftlmError, match="confidence level"):
        Config.build(overrides={"eval.interval": level})


# --- 2. Amazon reviews files ----------------------------------------------------------------------

REVIEW = {"overall": 4.0, "reviewText": "good", "summary": "ok", "reviewTime": "01 1, 2014"}


def _reviews(tmp_path, lines: list[str], name="reviews_Books_5.json"):
    path = tmp_path / name
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def _good(n: int) -> list[str]:
    return [json.dumps({**REVIEW, "overall": 1 + i % 5}) for i in range(n)]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not json at all", "line 4: not a JSON object"),
        ("{'overall': 5.0, 'reviewText': ", "line 4: not a JSON object"),
        ('{"overall": "x", "reviewText": "good"}', "line 4: target 'x' is not a number: fix or drop"),
        ('{"overall": true, "reviewText": "good"}', "line 4: target True is not a number"),
        ('{"overall": NaN, "reviewText": "good"}', "line 4: target nan is NaN or infinite"),
        ('{"overall": "1_0", "reviewText": "good"}', "line 4: target '1_0' is not a number"),
        ("[1, 2]", "line 4: a list, not an object"),
        ('{"overall": 3, "reviewText": ["good"]}', "line 4: reviewText ['good'] is not text"),
        ("[" * 100_000, "line 4: not a JSON object"),
    ],
)
def test_a_malformed_amazon_line_is_named(tmp_path, bad, message):
    path = _reviews(tmp_path, [*_good(3), bad, *_good(2)])
    with pytest.raises(RaftlmError) as err:
        load_amazon(str(path))
    assert _one_line(err).startswith(str(path)) and message in str(err.value)
    assert "fix" in str(err.value) or "one review object per line" in str(err.value)


def test_the_2014_python_literal_lines_still_read(tmp_path):
    lines = [repr({**REVIEW, "overall": float(1 + i % 5)}) for i in range(30)]
    splits = load_amazon(str(_reviews(tmp_path, lines, "reviews_Books_5.json.gz")))
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 30
    assert {e.target for e in splits.train} <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_a_truncated_or_fake_gzip_is_one_line(tmp_path):
    import random

    rng = random.Random(0)
    lines = [
        json.dumps({**REVIEW, "reviewText": "".join(rng.choice("abcdefgh ") for _ in range(80))})
        for _ in range(2000)
    ]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    path = tmp_path / "reviews_Books_5.json.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RaftlmError) as err:
        load_amazon(str(path))
    text = _one_line(err)
    assert (
        text.startswith(f"{path} is truncated (its data break off in line ") and "download it again" in text
    )
    line = int(text.split("in line ")[1].split(")")[0])
    assert 500 < line < 1500
    path.write_bytes(b"plain text")
    with pytest.raises(RaftlmError, match="is not a valid gzip file .*drop .gz"):
        load_amazon(str(path))


def test_an_amazon_meta_file_with_odd_records_does_not_crash(tmp_path):
    path = _reviews(tmp_path, _good(20))
    (tmp_path / "meta_Books.json").write_text('{"asin": ["a"], "title": "x"}\n{"asin": "b", "title": 3}\n')
    assert len(load_amazon(str(path)).train) > 0
    (tmp_path / "meta_Books.json").write_text("oops\n")
    with pytest.raises(RaftlmError, match=r"meta_Books\.json line 1: not a JSON object"):
        load_amazon(str(path))


# --- 3. MovieLens ---------------------------------------------------------------------------------


def _ml1m(
    folder, ratings: str, movies: str | None = "1::Toy Story (1995)::Animation\n2::Heat (1995)::Action\n"
):
    folder.mkdir()
    (folder / "ratings.dat").write_text(ratings, encoding="latin-1")
    if movies is not None:
        (folder / "movies.dat").write_text(movies, encoding="latin-1")
    return str(folder)


GOOD_1M = "".join(f"{u}::{1 + t % 2}::{1 + t % 5}::{1000 + t}\n" for u in (1, 2) for t in range(20))


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        (
            "garbage\n",
            "ratings.dat line 1: 1 fields where 4 are expected (UserID::MovieID::Rating::Timestamp)",
        ),
        (GOOD_1M + "1::2::x::4\n", "ratings.dat line 41: target 'x' is not a number: fix or drop"),
        ("1::2::3\n", "line 1: 3 fields where 4"),
        ("1::2::3::4::5\n", "line 1: 5 fields where 4"),
        ("u::2::3::4\n", "line 1: UserID 'u' is not a whole number: fix or drop the line"),
        ("1::2::3::4.5\n", "line 1: Timestamp '4.5' is not a whole number"),
        ("1::2::inf::4\n", "line 1: target 'inf' is NaN or infinite"),
        ("1_0::2::3::4\n", "line 1: UserID '1_0' is not a whole number"),
    ],
)
def test_a_malformed_ratings_dat_line_is_named(tmp_path, ratings, message):
    with pytest.raises(RaftlmError) as err:
        load_movielens_1m(_ml1m(tmp_path / "m", ratings))
    assert message in _one_line(err) and str(tmp_path / "m" / "ratings.dat") in str(err.value)


def test_movielens_1m_needs_movies_dat_and_well_formed_titles(tmp_path):
    with pytest.raises(RaftlmError, match=r"movies\.dat not found: unpack the whole ml-1m\.zip"):
        load_movielens_1m(_ml1m(tmp_path / "a", GOOD_1M, movies=None))
    with pytest.raises(RaftlmError, match=r"movies\.dat line 2: 1 fields where 3 are expected"):
        load_movielens_1m(_ml1m(tmp_path / "b", GOOD_1M, movies="1::A::B\njunk\n"))
    with pytest.raises(RaftlmError, match=r"ratings\.dat holds no ratings"):
        load_movielens_1m(_ml1m(tmp_path / "c", "\n\n"))
    splits = load_movielens_1m(_ml1m(tmp_path / "d", GOOD_1M + "\n"))  # a blank last line is fine
    assert splits.train and "Toy Story (1995)" in splits.train[0].text


def _ml100k(folder, inter_rows: list[str], item_rows=("1\tToy Story\t1995\tAnimation",)):
    folder.mkdir()
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-100k.inter").write_text(head + "".join(r + "\n" for r in inter_rows))
    item_head = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    (folder / "ml-100k.item").write_text(item_head + "".join(r + "\n" for r in item_rows))
    return str(folder)


GOOD_100K = [f"{u}\t1\t{1 + t % 5}\t{881250949 + t}.0" for u in (1, 2) for t in range(20)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["1\t2\tx\t3"], "ml-100k.inter line 2: target 'x' is not a number: fix or drop the row"),
        ([*GOOD_100K, "1\t2\t3"], "ml-100k.inter line 42: 3 fields where 4 are expected"),
        (["1\tz\t3\t4"], "line 2: item_id 'z' is not a whole number"),
        (["1\t2\t3\tnan"], "line 2: timestamp 'nan' is not a number of seconds"),
    ],
)
def test_a_malformed_ml100k_inter_line_is_named(tmp_path, rows, message):
    with pytest.raises(RaftlmError) as err:
        load_movielens_100k(_ml100k(tmp_path / "m", rows))
    assert message in _one_line(err)


def test_ml100k_items_are_checked_and_good_files_still_read(tmp_path):
    with pytest.raises(RaftlmError, match=r"ml-100k\.item line 2: item_id 'x' is not a whole number"):
        load_movielens_100k(_ml100k(tmp_path / "a", GOOD_100K, item_rows=["x\tA\t1995\tB"]))
    with pytest.raises(RaftlmError, match=r"ml-100k\.item line 2: 1 fields where 2 are expected"):
        load_movielens_100k(_ml100k(tmp_path / "b", GOOD_100K, item_rows=["7"]))
    splits = load_movielens_100k(_ml100k(tmp_path / "c", GOOD_100K))
    assert splits.train and "Toy Story (1995)" in splits.train[0].text


def test_movielens_1m_from_the_command_line_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _ml1m(tmp_path / "m1", "garbage\n")
    argv = ["train", "--model", "tiny-random-llama", "--max-steps", "1", "--quiet", "--output-dir", "ml"]
    assert main([*argv, "--dataset", "movielens-1m:m1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "m1/ratings.dat line 1: 1 fields where 4 are expected" in err
    assert not (tmp_path / "ml").exists()


# --- 4. RAFTLM_CACHE ------------------------------------------------------------------------------


def test_an_empty_raftlm_cache_is_the_default_not_the_current_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for value in ("", "  "):
        monkeypatch.setenv("RAFTLM_CACHE", value)
        assert models.cache_dir() == tmp_path / ".cache" / "raftlm"
    monkeypatch.delenv("RAFTLM_CACHE")
    assert models.cache_dir() == tmp_path / ".cache" / "raftlm"
    monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("where", ["file", "/dev/null"])
def test_a_raftlm_cache_that_is_not_a_folder_is_one_line(monkeypatch, tmp_path, where):
    path = tmp_path / "file" if where == "file" else where
    if where == "file":
        path.write_text("x")
    monkeypatch.setenv("RAFTLM_CACHE", str(path))
    with pytest.raises(RaftlmError) as err:
        models.cache_dir()
    text = _one_line(err)  # the value is echoed bounded (core.short)
    assert text.startswith("RAFTLM_CACHE='") and "' is not a folder: point RAFTLM_CACHE at a folder" in text
    with pytest.raises(RaftlmError, match="RAFTLM_CACHE"):  # before any conversion starts
        models._convert_gguf("gemma-3-270m")


def test_a_raftlm_cache_under_a_file_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("RAFTLM_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(RaftlmError) as err:
        models._convert_gguf("gemma-3-270m")  # fails creating the folder, before loading anything
    assert "cannot create the model cache" in _one_line(err) and "(Not a directory)" in str(err.value)
    assert "RAFTLM_CACHE" in str(err.value)


def test_yaml_numbers_are_plain_decimals():
    """YAML 1.1 reads 1_0 as 10, 0x10 as 16, 1:30 as 90 and 017 as octal 15: raftlm's files mean none
    of these, so they stay text (and a numeric setting refuses them) or read as decimals."""
    from raftlm.config import Config, load_yaml

    values = load_yaml("a: 1_0\nb: 0x10\nc: 1:30\nd: 017\ne: 5\nf: 2.5\ng: -3", "test")
    assert values == {"a": "1_0", "b": "0x10", "c": "1:30", "d": 17, "e": 5, "f": 2.5, "g": -3}
    with pytest.raises(RaftlmError, match="training.lr='1_0' is not a number"):
        Config.build({"training": load_yaml("lr: 1_0", "test")})


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("0:1:0.35", "grid step 0.35 does not divide 0..1"),
        ("0:1:0.3", "grid step 0.3 does not divide 0..1"),
        ("0:1:1e-8", "has 100,000,001 values, more than 10,000"),
        ("0-1000000", "has more than 10,000 values"),
    ],
)
def test_a_range_grid_ends_where_it_says_and_stays_small(spec, fragment):
    from raftlm.grid import Grid

    with pytest.raises(RaftlmError, match=fragment):
        Grid.parse(spec)
    assert Grid.parse("0:1:0.25").strings == ("0.00", "0.25", "0.50", "0.75", "1.00")
    assert Grid.parse("0:1e-3:5e-4").strings == ("0.0000", "0.0005", "0.0010")


def test_a_dataframe_with_a_repeated_column_is_refused():
    import pandas as pd

    from raftlm.api import examples_from

    frame = pd.DataFrame([["good", "bad"]], columns=["text", "text"])
    with pytest.raises(RaftlmError, match="X: column 'text' appears 2 times"):
        examples_from(frame, None, "{text}")


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"lrs": [0]}, "lr=0.0: use a positive learning rate"),
        ({"train_fractions": [0.0]}, "train_fraction=0.0"),
        ({"methods": [{"method": "raft", "lr": 0.5}]}, "lr in a sweep's methods entry would be overridden"),
        ({"methods": [{"method": "raft", "seed": 7}]}, "list it under seeds:"),
        # a head predicts its number whatever the decoder: the cell would be labelled greedy and run as a head
        (
            {"methods": [{"method": "head-pooled", "decoder": "greedy"}]},
            "sweep cell .*head-pooled.*: decoder 'greedy' does not apply to a head-pooled model",
        ),
    ],
)
def test_sweep_values_that_would_be_recorded_but_not_used_are_refused(tmp_path, entry, fragment):
    from raftlm.experiment import run_sweep

    sweep = {
        "output_dir": str(tmp_path / "out"),
        "base": {"training": {"max_steps": 1, "batch_size": 4}, "data": {"template": "R: {text}"}},
        "datasets": [f"csv:{tmp_path / 'd.csv'}"],
        "models": ["tiny-random-llama"],
        "methods": ["raft"],
        "lrs": [1e-4],
        "seeds": [0],
        **entry,
    }
    (tmp_path / "d.csv").write_text("text,target\n" + "".join(f"w{i},{1 + i % 5}\n" for i in range(20)))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    with pytest.raises(RaftlmError, match=fragment):
        run_sweep(str(path), quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"pearson": "x"}, "pearson is 'x', not a number"),
        ({"lr": "abc"}, "lr is 'abc', not a number"),
        ({"options": 5}, "options is 5, not text"),
        ({"dataset": 3}, "dataset is 3, not text"),
        ({"intervals": "x"}, "intervals is 'x', not a list"),
        ({"intervals": [{"kind": 1}]}, "lacks kind/nominal/coverage/width/n"),
        ({"eval_seconds": "x"}, "eval_seconds is 'x', not a number"),
    ],
)
def test_a_damaged_result_is_one_line_in_report_and_sweep(tmp_path, change, fragment):
    from raftlm.experiment import read_cell
    from raftlm.report import write_report

    row = {"dataset": "d", "model": "m", "method": "raft", "decoder": "rail", "rmse": 1.0, "run_id": "r"}
    row = {**row, "cell_id": "c", "seed": 0, "lr": 1e-4, **change}
    (tmp_path / "results.json").write_text(json.dumps([row]))
    with pytest.raises(RaftlmError, match=f"entry 0 is not a cell's result \\(.*{re.escape(fragment)}"):
        write_report(str(tmp_path))
    (tmp_path / "c.json").write_text(json.dumps(row))
    with pytest.raises(RaftlmError, match=re.escape(fragment)):
        read_cell(tmp_path / "c.json")


def test_grid_probabilities_of_a_head_are_refused_not_empty(tmp_path, capsys):
    """A head predicts one number: --with-probs gave rows without probs, predict_proba the LM's unused
    grid probabilities."""
    from raftlm import RAFTRegressor
    from raftlm.cli import main

    texts = [f"review {i}: {w}" for i, w in enumerate(["bad", "fine", "good", "great"] * 5)]
    reg = RAFTRegressor(model="tiny-random-llama", method="head-pooled", max_steps=1, batch_size=4)
    reg.fit(texts, [1, 2, 3, 4] * 5)
    with pytest.raises(RaftlmError, match="predict_proba reads the grid distribution"):
        reg.predict_proba(texts[:2])
    run = reg.save(str(tmp_path / "run"))
    data = tmp_path / "in.csv"
    data.write_text("text\n" + "\n".join(texts) + "\n")
    out = tmp_path / "p.jsonl"
    assert (
        main(["predict", "--model", str(run), "--input", str(data), "--output", str(out), "--with-probs"])
        == 2
    )
    assert "this model predicts one number (a head)" in capsys.readouterr().err and not out.exists()
    for extra, said in (
        (  # (the rule the server and the API apply: they took --decoder rail, predict refused it)
            ["--decoder", "greedy"],
            "decoder 'greedy' does not apply to a head-pooled model: its head predicts the number directly",
        ),
        (
            ["--with-uncertainty"],
            'the uncertainty summary (--with-uncertainty, "with_uncertainty") reads the grid',
        ),
        (["--interval-kind", "absolute"], "--interval-kind chooses the kind of --interval's intervals"),
    ):
        argv = ["predict", "--model", str(run), "--input", str(data), "--output", str(out), *extra]
        assert main(argv) == 2
        assert said in capsys.readouterr().err and not out.exists()
    argv = ["predict", "--model", str(run), "--input", str(data), "--output", str(out), "--quiet"]
    assert main([*argv, "--decoder", "rail"]) == 0  # the head's number, as the default
    got = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    np.testing.assert_allclose(got, reg.predict(texts, decoder="rail"), rtol=1e-6)


def test_patience_without_a_validation_split_is_said(tmp_path):
    from raftlm.cli import main

    rows = [f"w{i},{1 + i % 5},train" for i in range(20)] + [f"t{i},3,test" for i in range(4)]
    data = tmp_path / "split.csv"
    data.write_text("text,target,split\n" + "\n".join(rows) + "\n")
    argv = ["train", "--model", "tiny-random-llama", "--dataset", f"csv:{data}", "--max-steps", "2"]
    with pytest.warns(Warning, match="patience does nothing: the data have no validation split"):
        assert main([*argv, "--batch-size", "4", "--patience", "1", "--output-dir", str(tmp_path / "r")]) == 0
    # --val-size set by the user is said too; its default (300) on data without validation says nothing
    with pytest.warns(Warning, match="val_size does nothing: the data have no validation split"):
        assert main([*argv, "--batch-size", "4", "--val-size", "5", "--output-dir", str(tmp_path / "v")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RaftlmWarning)
        assert main([*argv, "--batch-size", "4", "--output-dir", str(tmp_path / "d")]) == 0


def test_a_folder_given_for_a_sweep_or_recipe_file_says_it_is_a_folder(tmp_path, capsys):
    """`raftlm experiment FOLDER` said "not found: check the path" of a folder that is there."""
    from raftlm.cli import main

    for argv in (["experiment", str(tmp_path), "--dry-run"], ["train", "--config", str(tmp_path)]):
        assert main(argv) == 2
        assert f"{tmp_path} is a folder: give the YAML file's path" in capsys.readouterr().err


def test_a_frozen_lm_without_a_head_is_refused_before_anything_loads(tmp_path, toy_csv, capsys, monkeypatch):
    """`trainable: none` (a head-attn sweep entry copied to ce-ntl, or --freeze-backbone with raft) left
    nothing to train: the frozen blocks were cached, then the optimizer or backward failed in a traceback."""
    import raftlm.pipeline
    from raftlm.cli import main
    from raftlm.experiment import plan_sweep

    monkeypatch.setattr(raftlm.pipeline, "new_predictor", lambda *a, **k: pytest.fail("loaded a model"))
    for argv in (["--method", "ce-ntl", "--trainable", "none"], ["--freeze-backbone"]):
        out = tmp_path / "run"
        assert (
            main(
                [
                    "train",
                    "--model",
                    "tiny-random-llama",
                    "--dataset",
                    f"csv:{toy_csv}",
                    "--output-dir",
                    str(out),
                    *argv,
                ]
            )
            == 2
        )
        assert (
            "has no head to train: train some of the LM (top-N, lora, full) or use a head method"
            in capsys.readouterr().err
        )
        assert not out.exists()
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"output_dir: {tmp_path / 'out'}\ndatasets: ['csv:{toy_csv}']\nmodels: [tiny-random-llama]\n"
        "methods: [{method: ce-ntl, trainable: none}]\nlrs: [1e-4]\nseeds: [0]\n"
    )
    with pytest.raises(RaftlmError, match=r"sweep cell .*ce-ntl.*: trainable none freezes the whole LM"):
        plan_sweep(str(sweep))


def test_evaluate_refuses_intervals_a_head_cannot_give_as_predict_does(tmp_path, toy_csv, capsys):
    """`evaluate --interval-kind cqr` of a head run (no grid distribution), or `--interval 0.9` of an
    uncalibrated one, gave results without intervals and no word; predict and the server refuse them."""
    from helpers import train_args

    from raftlm.cli import main

    run = tmp_path / "head"
    # (train itself reports what it can on its test split: the refusal is evaluate's, after no training)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eval: {interval: 0.9, interval_kind: cqr}\n")
    args = train_args(toy_csv, run, "--method", "head-pooled", "--max-steps", "2", "--config", str(recipe))
    assert main([*args, "--no-calibrate"]) == 0
    capsys.readouterr()
    for argv, said in (
        (["--interval", "0.9", "--interval-kind", "cqr"], "interval kind cqr needs a grid distribution"),
        (["--interval", "0.9", "--interval-kind", "auto"], "this model has no calibration"),
    ):
        assert main(["evaluate", "--model", str(run), "--output", str(tmp_path / "e.json"), *argv]) == 2
        assert said in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run), "--output", str(tmp_path / "e.json")]) == 0  # none asked
