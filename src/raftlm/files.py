"""Generic input files: CSV / TSV / JSON-lines rows (optionally gzipped) and rows -> Examples.

Rows are read one at a time (a file of any size in bounded memory) and remember their line, so every
error names the file's line; targets must be finite numbers.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from raftlm.core import Example, RaftlmError, short
from raftlm.io import describe
from raftlm.prompts import render, template_fields
from raftlm.rows import TargetsIn, check_columns, parse_target, row_fields

# csv's default field limit is 131,072 characters: a longer text (a whole article) is a valid field,
# and prompts that long are truncated with a warning where they are tokenized, not refused here
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


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
    """Render rows through a template (the row contract, ``rows.render_row``); targets must be finite
    numbers. Errors name the file's line (rows from ``iter_rows``/``read_rows``) or the row number,
    counted from ``start`` (1-based)."""
    if target_column is not None and target_column in template_fields(template):
        raise RaftlmError(
            f"the prompt template {short(template)} puts the target column {target_column!r} into the prompt, "
            f"so every example would show its own answer: remove {{{target_column}}} from --template"
        )
    out = []
    for i, row in enumerate(rows, start=start):
        target = None
        if target_column is not None:
            if target_column not in row:
                # (missing from every row, a CSV's header: no row's line is to blame, and the rows of a
                # dataset reach here shuffled into splits)
                missing = all(target_column not in r for r in rows)
                raise RaftlmError(
                    f"{where if missing else _where(where, row, i)}: target column {target_column!r} is missing "
                    f"{'from every row ' if missing else ''}(columns: {short(sorted(map(str, row)))}): "
                    "pass --target-column"
                )
            target = parse_target(row[target_column], _where(where, row, i))
        fields = row_fields(template, row, _where(where, row, i))
        out.append(Example(render(template, dict(fields)), target, fields))
    return out


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
        what = "does not exist" if not path.exists() else f"is {describe(path)}, not a regular file"
        raise RaftlmError(f"input file {path} {what}: check the path")
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1]
    if kind not in FILE_KINDS:
        raise RaftlmError(f"{path}: unknown file type {kind!r}: use .csv, .tsv or .jsonl")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            yield from (csv_rows(f, path, FILE_KINDS[kind]) if FILE_KINDS[kind] else _jsonl_rows(f, path))
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


def csv_rows(f, path: Path | str, delimiter: str = ",") -> Iterator[Row]:
    """Rows of CSV text ``f`` (opened with ``newline=""``) under its header, each knowing its line; errors
    name ``path`` and the line. `raftlm predict`'s files and the server's ``text/csv`` bodies both read this
    way (a row with a field too many is refused in both, never cut)."""
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, [])
    check_columns(header, f"{path} header")
    line = reader.line_num + 1
    for values in _checked(reader, path):
        if values:  # blank lines are skipped
            if len(values) != len(header):
                raise RaftlmError(
                    f"{path} line {line}: {len(values)} fields but the header has {len(header)}: "
                    f"quote fields that contain {delimiter!r}, or fix the row"
                )
            yield Row(zip(header, values, strict=True), line)
        line = reader.line_num + 1


def _checked(reader, path: Path) -> Iterator[list[str]]:
    """csv's own errors (a NUL byte, a field past the limit) as one line naming the line."""
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise RaftlmError(f"{path} line {reader.line_num}: malformed CSV ({err}): fix the row") from None
        yield values


def not_json(token: str):
    """JSON has no NaN or Infinity (Python's json reads them): the row fails like any invalid JSON."""
    raise ValueError(f"{token} is not a JSON number: write null or a number")


def unique_keys(pairs: list[tuple]) -> dict:
    """A JSON object whose keys are unique (a repeated key silently kept its last value)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {short(key)} appears twice: keep one")
        seen.add(key)
    return dict(pairs)


def _jsonl_rows(f, path: Path) -> Iterator[Row]:
    for n, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=not_json, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise RaftlmError(
                f"{path} line {n}: invalid JSON ({err.msg}): one JSON object per line"
            ) from None
        except (ValueError, RecursionError) as err:  # a number of over 4,300 digits; nesting too deep
            why = "nested too deeply" if isinstance(err, RecursionError) else short(str(err))
            raise RaftlmError(f"{path} line {n}: unreadable JSON ({why}): fix the row") from None
        if not isinstance(obj, dict):
            raise RaftlmError(
                f"{path} line {n}: a JSON {type(obj).__name__}, not an object: one object per line, "
                'e.g. {"text": "...", "target": 3}'
            )
        yield Row(obj, n)


# --- a file read in chunks (`raftlm predict` streams it; no torch: the CLI scans it before loading a model) ---

CHUNK_ROWS = 2048  # rows read, predicted and written at a time: memory is bounded by this, not the file


def row_chunks(path: str | Path, size: int, begin: int = 0, end: int | None = None):
    """(index of the first row, rows) for rows [begin, end) of a CSV/JSONL file, ``size`` at a time."""
    rows = itertools.islice(iter_rows(path), begin, end)
    start = begin
    while chunk := list(itertools.islice(rows, size)):
        yield start, chunk
        start += len(chunk)


def scan(path: str | Path, template: str, target_column: str) -> tuple[int, bool]:
    """Rows in the input and whether they carry targets (decided over all rows: a file with targets in
    some rows only is refused, naming the first row that differs). Every row is rendered, so bad input
    fails with its row number before anything is predicted or written."""
    n, targets = 0, TargetsIn(target_column, str(path))
    for start, rows in row_chunks(path, CHUNK_ROWS):
        for i, row in enumerate(rows, start=start + 1):
            targets.see(row, f"line {row.line}" if getattr(row, "line", None) else f"row {i}")
        to_examples(rows, template, target_column if targets.present else None, str(path), start + 1)
        n += len(rows)
    if n == 0:
        raise RaftlmError(f"{path} has no rows: give a file with a header and data")
    return n, targets.present


def file_sha256(path: str | Path) -> str:
    """The content hash of a file (what a resume checks the input against)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
