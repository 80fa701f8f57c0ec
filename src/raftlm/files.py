"""Generic input files: CSV / TSV / JSON-lines rows (optionally gzipped) and rows -> Examples.

Rows are read one at a time (a file of any size in bounded memory) and remember their line, so every
error names the file's line; targets must be finite numbers.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path

from raftlm.core import Example, RaftlmError
from raftlm.prompts import render


class Row(dict):
    """A data row that remembers its line in the file, so errors name the line (not the row's place in
    a shuffled split)."""

    def __init__(self, fields, line: int | None = None):
        super().__init__(fields)
        self.line = line


def _where(where: str, row: dict, i: int) -> str:
    line = getattr(row, "line", None)
    return f"{where} line {line}" if line is not None else f"{where} row {i}"


def to_examples(
    rows: list[dict], template: str, target_column: str | None, where: str, start: int = 1
) -> list[Example]:
    """Render rows through a template; targets must be finite numbers. Errors name the file's line
    (rows from ``iter_rows``/``read_rows``) or the row number, counted from ``start`` (1-based)."""
    out = []
    for i, row in enumerate(rows, start=start):
        target = None
        if target_column is not None:
            if target_column not in row:
                raise RaftlmError(
                    f"{_where(where, row, i)}: target column {target_column!r} is missing "
                    f"(columns: {sorted(row)}): pass --target-column"
                )
            target = parse_target(row[target_column], _where(where, row, i))
        text = render(template, row)
        if not text.strip():
            raise RaftlmError(f"{_where(where, row, i)}: empty text: fill or drop the row")
        out.append(Example(text, target))
    return out


def parse_target(value, where: str) -> float:
    """A finite number; JSON ``true`` is not read as 1.0."""
    try:
        if isinstance(value, bool):
            raise TypeError
        y = float(value)
    except (TypeError, ValueError):
        raise RaftlmError(f"{where}: target {value!r} is not a number: fix or drop the row") from None
    if not math.isfinite(y):
        raise RaftlmError(f"{where}: target {value!r} is NaN or infinite: fix or drop the row")
    return y


FILE_KINDS = {"csv": ",", "tsv": "\t", "jsonl": None, "json": None}


def read_rows(path: str | Path) -> list[Row]:
    """Every row of ``iter_rows`` in a list; an empty file is an error."""
    rows = list(iter_rows(path))
    if not rows:
        raise RaftlmError(f"{path} has no rows: give a file with a header and data")
    return rows


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Rows of a CSV/TSV (header row) or JSON-lines file, optionally gzipped, read as UTF-8 one at a
    time (a file of any size in bounded memory; a leading byte-order mark is dropped). Each row knows
    its line; a row with more or fewer fields than the header, a repeated header name and a line that
    is not a JSON object are errors naming the line."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise RaftlmError(f"input file {path} {what}: check the path")
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    if kind not in FILE_KINDS:
        raise RaftlmError(f"{path}: unknown file type {kind!r}: use .csv, .tsv or .jsonl")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            yield from (_csv_rows(f, path, FILE_KINDS[kind]) if FILE_KINDS[kind] else _jsonl_rows(f, path))
    except UnicodeDecodeError:
        raise _not_utf8(path, opener) from None
    except (OSError, EOFError) as err:
        raise RaftlmError(f"cannot read {path} ({err}): check the file") from None


def _not_utf8(path: Path, opener) -> RaftlmError:
    """The first byte that is not UTF-8 and its line (read again in binary, on this error only)."""
    with opener(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8-sig")
        return RaftlmError(f"{path} is not UTF-8: save it as UTF-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return RaftlmError(
            f"{path} is not UTF-8 (byte 0x{data[err.start]:02x} on line {line}): save it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
        )


def _csv_rows(f, path: Path, delimiter: str) -> Iterator[Row]:
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, [])
    repeated = next((h for h in header if header.count(h) > 1), None)
    if repeated is not None:
        raise RaftlmError(
            f"{path}: column {repeated!r} appears {header.count(repeated)} times in the header: "
            "give every column its own name"
        )
    line = reader.line_num + 1
    for values in reader:
        if values:  # blank lines are skipped
            if len(values) != len(header):
                raise RaftlmError(
                    f"{path} line {line}: {len(values)} fields but the header has {len(header)}: "
                    f"quote fields that contain {delimiter!r}, or fix the row"
                )
            yield Row(zip(header, values, strict=True), line)
        line = reader.line_num + 1


def _jsonl_rows(f, path: Path) -> Iterator[Row]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise RaftlmError(
                f"{path} line {n}: invalid JSON ({err.msg}): one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise RaftlmError(
                f"{path} line {n}: a JSON {type(obj).__name__}, not an object: one object per line, "
                'e.g. {"text": "...", "target": 3}'
            )
        yield Row(obj, n)
