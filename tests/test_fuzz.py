"""Property-based fuzzing (issue 37) of what users hand raftlm: input files (CSV / TSV / JSONL, any bytes,
any encoding, quoting, huge fields, numbers, nulls, surrogates) and settings (YAML recipes, --set values
of every type). The only outcomes allowed are a correct result or a RaftlmError with one line: never
another exception. A few dozen examples each inside `make test`; FUZZ_EXAMPLES=2000 (make test-slow runs
the `slow` variants) for a longer run."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftlm.config import Config, load_yaml
from raftlm.core import RaftlmError
from raftlm.files import iter_rows, to_examples

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# text with the awkward parts over-represented: separators, quotes, newlines, NUL, BOM, surrogates
AWKWARD = st.sampled_from(list(",\t\"'\n\r\x00\ufeff\\{}") + ["\ud800", "\udfff", "é", "😀", "null", "NaN"])
TEXT = st.lists(st.one_of(st.text(max_size=8), AWKWARD), max_size=12).map("".join)
VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(
        allow_nan=True, allow_infinity=True, allow_subnormal=False
    ),  # (a library may set flush-to-zero)
    TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def one_line(err: RaftlmError) -> None:
    text = str(err)
    assert text and "\n" not in text.strip() and "Traceback" not in text
    text.encode("utf-8", "backslashreplace")  # printable on any terminal


def read(path: Path, target: str | None) -> None:
    """Everything a file reader does for predict / train: rows, then examples, or one RaftlmError."""
    try:
        rows = list(iter_rows(path))
        if rows:
            to_examples(rows, "{text}", target, str(path))
    except RaftlmError as err:
        one_line(err)


def fuzz_bytes(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(data)
        for target in (None, "target"):
            read(path, target)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
@FAST
@given(data=st.binary(max_size=400))
def test_any_bytes_in_any_file_kind(suffix, data):
    fuzz_bytes(data, suffix)


@FAST
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(["text", "target", "x"]), VALUE, max_size=3), max_size=6)
)
def test_jsonl_rows_of_any_json_values(rows):
    body = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
    fuzz_bytes(body.encode("utf-8", "surrogatepass"), ".jsonl")


@FAST
@given(rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6), delimiter=st.sampled_from([",", "\t"]))
def test_csv_written_by_a_csv_writer_reads_back_or_fails_in_one_line(rows, delimiter):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(["text", "target"])
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("in.csv" if delimiter == "," else "in.tsv")
        path.write_bytes(data)
        try:
            got = [(r["text"], r["target"]) for r in iter_rows(path)]
        except RaftlmError as err:
            one_line(err)
            return
        assert got == [tuple(r) for r in rows]  # a file csv wrote reads back exactly
        read(path, "target")


def fuzz_yaml(text: str) -> None:
    try:
        load_yaml(text, "config file r.yaml")
    except RaftlmError as err:
        one_line(err)


@FAST
@given(text=st.text(max_size=300))
def test_any_yaml_text_loads_or_is_one_line(text):
    fuzz_yaml(text)


SECTIONS = {
    "model": ["name", "trainable", "lora_r", "dropout", "init", "attention"],
    "data": ["dataset", "template", "val_size", "max_length", "train_fraction"],
    "method": ["method", "grid", "ce_weight", "ce_target", "target_range", "pooling"],
    "training": ["max_steps", "batch_size", "lr", "optimizer", "bf16", "warmup_steps", "length_chunks"],
    "eval": ["decoder", "batch_size", "interval", "device", "dtype", "eval_size"],
}


@FAST
@given(
    section=st.sampled_from(sorted(SECTIONS)),
    data=st.data(),
    value=st.one_of(
        VALUE, st.text(max_size=20).map(lambda s: f"[{s}"), st.just("*x"), st.just("!!python/none")
    ),
)
def test_any_setting_value_builds_a_config_or_is_one_line(section, data, value):
    name = data.draw(st.sampled_from(SECTIONS[section]))
    try:
        Config.build({section: {name: value}})
    except RaftlmError as err:
        one_line(err)


@FAST
@given(value=st.text(max_size=40))
def test_any_set_flag_value_is_a_config_or_one_line(value):
    from raftlm.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--set", f"training.lr={value}"])
    try:
        config_from_args(args)
    except RaftlmError as err:
        one_line(err)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
@SLOW
@given(data=st.binary(max_size=2000))
def test_any_bytes_long_run(suffix, data):
    fuzz_bytes(data, suffix)


@pytest.mark.slow
@SLOW
@given(text=st.text(max_size=2000))
def test_any_yaml_long_run(text):
    fuzz_yaml(text)
