"""Named prompt templates (paper appendix D, table 6). Fields in braces come from the data."""

from __future__ import annotations

import functools
import re
import string

from raftlm.core import RaftlmError, short

PROMPTS = {
    "stsb": (
        "What is the sentence similarity between the following two sentences measured on a scale of 0 to 5: "
        "{sentence1}, {sentence2}. The similarity measured on a scale of 0 to 5 with 0 being unrelated and "
        "5 being related is equal to"
    ),
    "amazon": (
        "product_category: {category} product_title: {title} review_date: {date} review_headline: {headline} "
        "review_body: {body} Question: In a star rating of 1, 2, 3, 4, 5, the higher the better, what would be "
        "the star rating of the above review? Please only give me the final rating and I do not need any explanations."
    ),
    # The Amazon prompt of table 6 for inputs that only have a review text (amazon-snippets).
    "amazon-body": (
        "review_body: {text} Question: In a star rating of 1, 2, 3, 4, 5, the higher the better, what would be "
        "the star rating of the above review? Please only give me the final rating and I do not need any explanations."
    ),
    "movielens": (
        "Instruction: Predict the rating of a target movie based on the user's historical movie ratings. "
        "Rating History: {history} Candidate Item: {candidate}. Output:"
    ),
    "synthetic": (
        "The task is to provide your best estimate for 'output score' based on 'input score'. Please provide "
        "that and only that, without any additional text. Input score: {x}. Output score:"
    ),
    "text": "{text}",
}


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
ESCAPE = re.compile(r"\\([ntr\\])")


def unescape(template: str) -> str:
    r"""The escapes ``\n``, ``\t``, ``\r`` and ``\\`` of a template as a newline, a tab, a carriage return
    and one backslash; any other backslash stays. Every template passes here, wherever it was written
    (a shell flag, YAML in any quoting, ``--set``, Python), so ``--template "A: {a}\nB: {b}"`` and
    Python's ``"A: {a}\nB: {b}"`` are the same prompt. A literal backslash before n is written ``\\n``."""
    return ESCAPE.sub(lambda m: ESCAPES[m.group(1)], template)


def escape(template: str) -> str:
    """A resolved template written back as a user writes one (each backslash doubled, a newline, tab or
    carriage return as its escape): ``unescape(escape(t)) == t``, so a template a run saved resolved
    resolves to itself again."""
    for char, name in (("\\", "\\\\"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        template = template.replace(char, name)
    return template


def resolve_template(template: str) -> str:
    """A template name from PROMPTS, or a format string with {field} placeholders (escapes read by
    ``unescape``)."""
    if not isinstance(template, str) or not template.strip():
        raise RaftlmError(
            f"prompt template {short(template)} is empty: give a format string such as '{{text}}'"
        )
    if template in PROMPTS:
        return PROMPTS[template]
    template = unescape(template)
    if "{" not in template:
        raise RaftlmError(
            f"unknown prompt template {short(template)}: use one of {sorted(PROMPTS)} or a format string with {{column}} fields"
        )
    check_template(template)
    if not template_fields(template):
        raise RaftlmError(
            f"prompt template {short(template)} has no {{column}} field, so every prompt would be the same "
            "text: name a column, e.g. 'Review: {text}' ({{ }} is a literal brace)"
        )
    return template


def _malformed(template: str, why: str) -> RaftlmError:
    return RaftlmError(
        f"prompt template {short(template)} is malformed ({why}): use plain {{column}} fields, "
        "and {{ }} for literal braces"
    )


@functools.lru_cache(maxsize=256)
def _parse(template: str) -> tuple[tuple, ...]:
    """The template's (literal, field, spec, conversion) parts, parsed once per template (every row of a
    file or request asks)."""
    try:
        return tuple(string.Formatter().parse(template))
    except ValueError as err:  # '{text' or a lone '}'
        raise _malformed(template, str(err)) from None


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in _parse(template) if name]


def check_template(template: str) -> None:
    """Fields are plain column names: no positional '{}', format specs ('{text:d}') or attributes
    (every value is a string, so these fail, or silently change, at the first row)."""
    for _, name, spec, conversion in _parse(template):
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[") or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise _malformed(template, f"field {shown}")


def missing_column(template: str, row: dict, where: str = "") -> RaftlmError | None:
    """The one-line error for a row that lacks a column the template names (None when it has them all):
    the file's line or the request's row first, when ``where`` says it."""
    fields = list(dict.fromkeys(template_fields(template)))
    absent = [f for f in fields if f not in row]
    if not absent:
        return None
    return RaftlmError(
        f"{where + ': ' if where else ''}column {short(absent[0])} needed by the prompt template is missing "
        f"(columns: {short(sorted(map(str, row)))}): give each row the template's columns ({', '.join(fields)}); "
        "when training, the template (--template; prompt_template= in Python) can name yours instead"
    )


def render(template: str, row: dict) -> str:
    """Fill a template from a data row; a missing column is a clear error."""
    check_template(template)
    if err := missing_column(template, row):
        raise err
    return template.format_map({k: ("" if v is None else str(v).strip()) for k, v in row.items()})
