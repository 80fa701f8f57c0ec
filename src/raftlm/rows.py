"""The row contract: one set of rules for a data row, whatever brings it (a CSV/TSV/JSONL line, a dict or
a DataFrame row in Python, a JSON object in an HTTP request).

- Every field the prompt template names must be present and hold **text**: a string with something
  besides whitespace in it. ``null`` / None / NaN / pandas NA is *missing*, ``""`` is *empty*, a number
  or a boolean is *not text* (write ``"1999"``, not ``1999``: CSV fields are text already), and text with
  a lone UTF-16 surrogate (``"\\ud800"``) is not valid Unicode. Each is refused in one line that names the
  row and the field; nothing is guessed.
- Fields the template does not name are ignored.
- A target is a finite number (or a string that is one, as CSV gives it); ``true`` is not 1.0.
- A file either has a target in every row or in none (``targets_in``): a mixed file is refused with the
  first row that differs, instead of silently dropping the targets.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from raftlm.core import RaftlmError, short, to_number
from raftlm.prompts import missing_column, render, template_fields

SURROGATE = re.compile("[\ud800-\udfff]")


def check_columns(columns, where: str) -> None:
    """Column names are unique (a table with two columns of one name would fill the template from
    whichever came last)."""
    counts = Counter(str(c) for c in columns)  # (linear: a request may name 100,000 columns)
    repeated = next((c for c, n in counts.items() if n > 1), None)
    if repeated is not None:
        raise RaftlmError(
            f"{where}: column {short(repeated)} appears {counts[repeated]} times: give every column its own name"
        )


def missing(value) -> bool:
    """None, NaN, or pandas' NA / NaT."""
    is_nan = isinstance(value, float) and math.isnan(value)
    return value is None or is_nan or type(value).__name__ in ("NAType", "NaTType")


def check_text(value, where: str, name: str) -> str:
    """``value`` of template field ``name`` if it is text, else a RaftlmError naming ``where``."""
    if missing(value):
        raise RaftlmError(f"{where}: field {name!r} is missing (null): fill or drop the row")
    if not isinstance(value, str):
        kind = "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"
        raise RaftlmError(
            f"{where}: field {name!r} is {short(value)} ({kind}), not text: give text (quote numbers, "
            f'e.g. "1999"; in pandas .astype(str))'
        )
    if SURROGATE.search(value):
        raise RaftlmError(
            f"{where}: field {name!r} holds a lone surrogate ({short(SURROGATE.search(value).group())}), "
            "not valid Unicode text: fix how the text was encoded"
        )
    if not value.strip():
        raise RaftlmError(f"{where}: field {name!r} is empty: fill or drop the row")
    return value


def text_rows(items: list, template: str, where) -> list:
    """Items that are not rows (a text) become rows of the template's one field, whatever its name
    (``{"review": s}`` for ``Review: {review}``), as the Python API and the server both take them (TEI's
    ``/predict`` shape); the row contract then checks the value (a number or None is refused there). A
    dict is a row already. ``where(i)`` names item ``i`` (0-based) in errors."""
    fields = list(dict.fromkeys(template_fields(template)))
    rows = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            if len(fields) != 1:
                raise RaftlmError(
                    f"{where(i)}: a text alone is a row only when the prompt template has one field; this one "
                    f"has {len(fields)} ({', '.join(fields)}): give rows with those fields (dicts or a DataFrame)"
                )
            item = {fields[0]: item}
        rows.append(item)
    return rows


def row_fields(template: str, row: dict, where: str) -> tuple:
    """The template's fields of one row, each checked by ``check_text``: ((name, text), ...)."""
    if not isinstance(row, dict):
        raise RaftlmError(f"{where}: a row is an object of column: text pairs, got {short(row)}")
    if err := missing_column(template, row, where):
        raise err
    fields = template_fields(template)
    return tuple((f, check_text(row[f], where, f)) for f in dict.fromkeys(fields))


def swapped(template: str, fields: tuple, pair: tuple[str, str]) -> str:
    """The prompt with the two fields of ``pair`` exchanged (a symmetric pair's other order)."""
    values = dict(fields)
    a, b = pair
    return render(template, {**values, a: values[b], b: values[a]})


def render_row(template: str, row: dict, where: str) -> str:
    """The prompt of one row: every template field checked by ``check_text``, then filled in."""
    return render(template, dict(row_fields(template, row, where)))


def has_target(row: dict, column: str) -> bool:
    """Whether ``row`` carries a target: the column is there and not null / empty."""
    value = row.get(column)
    return not (missing(value) or (isinstance(value, str) and not value.strip()))


def parse_target(value, where: str) -> float:
    """A finite number; JSON ``true`` is not read as 1.0, nor text that is not plainly a number."""
    try:
        y = to_number(value)  # the one rule: no booleans, no "1_000", no non-ASCII digits
    except (TypeError, ValueError, OverflowError):
        raise RaftlmError(f"{where}: target {short(value)} is not a number: fix or drop the row") from None
    if not math.isfinite(y):
        raise RaftlmError(f"{where}: target {short(value)} is NaN or infinite: fix or drop the row")
    return y


class TargetsIn:
    """Whether a file's rows carry targets, decided over all of them: feed rows in order (``see``);
    the first row that differs from the first row is an error naming both."""

    def __init__(self, column: str, where: str):
        self.column, self.where = column, where
        self.first: tuple[str, bool] | None = None

    def see(self, row: dict, row_where: str) -> None:
        has = has_target(row, self.column)
        if self.first is None:
            self.first = (row_where, has)
        elif has != self.first[1]:
            with_, without = (row_where, self.first[0]) if has else (self.first[0], row_where)
            raise RaftlmError(
                f"{self.where}: {with_} has a target ({self.column!r}) but {without} has none: give "
                "every row a target, or none (a file is scored with targets only when all rows have them)"
            )

    @property
    def present(self) -> bool:
        return bool(self.first and self.first[1])
