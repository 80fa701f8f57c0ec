"""`raftlm predict --engine ray` and `integrations.ray.RaftlmPredictor`: the numbers of `raftlm predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import train_args, write_csv

from raftlm.cli import main
from raftlm.integrations.ray import MISSING, RaftlmPredictor

WORDS = ["awful", "bad", "fine", "good", "great"]


def review_rows(n: int) -> list[dict]:
    return [
        {"text": f"review {i}: it was {WORDS[i % 5]}{' quite' * (i % 7)}. rating:", "target": 1 + i % 5}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ray")
    data = write_csv(d / "toy.csv", review_rows(40))
    assert main(train_args(data, d / "run", "--lr", "1e-3")) == 0
    return d / "run"


def predict(run_dir, data, out, *extra) -> int:
    return main(["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), *extra])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stopped_after_one_batch(monkeypatch, run_dir, data, out, *extra) -> int:
    """`raftlm predict --engine ray` interrupted (Ctrl+C) once its first batch of predictions is written."""
    import raftlm.integrations.ray as ray_engine

    real_ordered = ray_engine._ordered

    def stops(preds, input, start=0):
        tables = real_ordered(preds, input, start)
        yield next(tables)
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(ray_engine, "_ordered", stops)
        return predict(run_dir, data, out, "--engine", "ray", *extra)


def same_rows(a: list[dict], b: list[dict]) -> None:
    """Same rows in the same order, same fields, predictions within 1e-6, probabilities (6 decimals) within
    one rounding step of that."""
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(len(b)))
    for x, y in zip(a, b, strict=True):
        assert list(x) == list(y) and x.get("target") == y.get("target")
        assert x["prediction"] == pytest.approx(y["prediction"], abs=1e-6)
        if "probs" in y:
            assert list(x["probs"]) == list(y["probs"])
            # written rounded to 6 decimals: values 1e-9 apart may round one step (1e-6) apart
            assert list(x["probs"].values()) == pytest.approx(list(y["probs"].values()), abs=2e-6)
        for key in ("entropy", "std", "mean", "median"):
            if key in y:
                assert x[key] == pytest.approx(y[key], abs=1e-6)


def test_the_callable_on_pandas_and_arrow_batches_gives_predicts_columns(run, tmp_path):
    """What each Ray actor does, without a cluster: a batch in, `raftlm predict`'s columns out."""
    data = write_csv(tmp_path / "d.csv", review_rows(30))
    assert (
        predict(run, data, tmp_path / "p.jsonl", "--with-probs", "--with-uncertainty", "--with-prompts") == 0
    )
    want = read(tmp_path / "p.jsonl")
    assert want[0]["prompt"]
    model = RaftlmPredictor(model=str(run), with_probs=True, with_uncertainty=True, with_prompts=True)
    frame = pd.read_csv(data, dtype=str, keep_default_na=False)  # CSV fields are text, as raftlm reads them
    got = model(frame)
    assert isinstance(got, pd.DataFrame) and len(got) == 30
    same_rows([{"index": i, **r} for i, r in enumerate(got.to_dict("records"))], want)
    table = model(pa.Table.from_pandas(frame, preserve_index=False))
    same_rows([{"index": i, **r} for i, r in enumerate(table.to_pylist())], want)
    frame.loc[3, "target"] = "three"
    with pytest.raises(Exception, match="batch row 4: target 'three' is not a number"):
        model(frame)


def test_without_the_extra_one_line_names_the_pip_command(run, tmp_path, monkeypatch, capsys):
    data = write_csv(tmp_path / "d.csv", review_rows(5))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    assert predict(run, data, tmp_path / "p.jsonl", "--engine", "ray") == 2
    err = capsys.readouterr().err
    assert err == f"raftlm predict: error: {MISSING}\n" and "pip install 'raftlm[ray]'" in err
    assert not (tmp_path / "p.jsonl").exists()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray on 2 CPUs for this module; `--engine ray` joins it (and leaves it running)."""
    ray = pytest.importorskip("ray")
    # a new local Ray even where RAY_ADDRESS names a cluster (joining one refuses num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_engine_equals_predict_row_for_row(run, local_ray, tmp_path, capsys):
    """1,200 rows over 2 actors (4 blocks): the same rows in the same order as `raftlm predict`, then Parquet
    shards with the row id; bad rows fail with the row number, a local file's as `raftlm predict` says it."""
    data = write_csv(tmp_path / "big.csv", review_rows(1200))
    assert predict(run, data, tmp_path / "local.jsonl", "--with-probs") == 0
    want = read(tmp_path / "local.jsonl")
    capsys.readouterr()
    out = tmp_path / "ray.jsonl"
    assert predict(run, data, out, "--with-probs", "--engine", "ray", "--actors", "2") == 0
    assert capsys.readouterr().out == f"wrote 1200 predictions to {out}\n"
    same_rows(read(out), want)
    assert predict(run, data, out, "--engine", "ray") == 2  # an existing output needs --overwrite
    assert "already exists" in capsys.readouterr().err

    shards, head = tmp_path / "shards", write_csv(tmp_path / "head.csv", review_rows(250))
    assert predict(run, head, shards, "--engine", "ray", "--actors", "2", "--shards", "100") == 0
    parts = sorted(p.name for p in shards.iterdir())
    assert parts == ["_raftlm_shards.json", *(f"part-0000{i}.parquet" for i in range(3))]
    table = pq.read_table(shards)
    assert table.column("index").to_pylist() == list(range(250))
    got = table.column("prediction").to_pylist()
    assert got == pytest.approx([r["prediction"] for r in want[:250]], abs=1e-6)

    bad = review_rows(50)
    bad[41]["target"] = "n/a"
    bad_csv = write_csv(tmp_path / "bad.csv", bad)
    capsys.readouterr()
    assert predict(run, bad_csv, tmp_path / "b.jsonl") == 2
    local_error = capsys.readouterr().err.splitlines()[-1]
    assert "bad.csv line 43: target 'n/a' is not a number" in local_error
    assert predict(run, bad_csv, tmp_path / "b.jsonl", "--engine", "ray", "--actors", "2") == 2
    assert capsys.readouterr().err == local_error + "\n"  # checked by raftlm's reader before Ray runs
    pq.write_table(
        pa.Table.from_pylist([{**r, "target": str(r["target"])} for r in bad]), tmp_path / "bad.parquet"
    )
    assert predict(run, tmp_path / "bad.parquet", tmp_path / "b.jsonl", "--engine", "ray") == 2
    assert "bad.parquet row 42: target 'n/a' is not a number" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv",
        "bad.parquet",
        "big.csv",
        "head.csv",
        "local.jsonl",
        "ray.jsonl",
        "shards",
    ]
    # written into a run, the output is listed in its marker, as `raftlm predict`'s (an --overwrite of the
    # run took it for a user's file and refused)
    import shutil

    from raftlm.io import foreign_files, read_run_marker

    mine = shutil.copytree(run, tmp_path / "mine")
    assert predict(mine, head, mine / "preds.jsonl", "--engine", "ray", "--actors", "2") == 0
    assert "preds.jsonl" in read_run_marker(mine)["outputs"] and foreign_files(mine) == []
    # JSONL text that looks like numbers stays text, as `raftlm predict` reads it (Ray's pandas reader made
    # the column numbers, and every row was refused: "field 'text' is 1999 (a int), not text")
    lines = [{"text": f"{1990 + i}", "target": 1 + i % 5, "created_at": "2026-12-07"} for i in range(40)]
    digits = tmp_path / "digits.jsonl"
    digits.write_text("".join(json.dumps(r) + "\n" for r in [{**lines[0], "text": "007"}, *lines[1:]]))
    assert predict(run, digits, tmp_path / "d-local.jsonl") == 0
    assert predict(run, digits, tmp_path / "d-ray.jsonl", "--engine", "ray", "--actors", "2") == 0
    same_rows(read(tmp_path / "d-ray.jsonl"), read(tmp_path / "d-local.jsonl"))
    # a column the template does not read may change type between rows, as `raftlm predict` allows (Arrow
    # refused the file, and Ray's fallback ended in a JSONDecodeError traceback); integer and float targets
    # mix; a target of 4 then "4" is one line
    mixed = [
        {**r, "meta": i if i % 2 else f"x{i}", "target": r["target"] + 0.5 * (i % 2)}
        for i, r in enumerate(lines)
    ]
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in mixed))
    assert predict(run, meta, tmp_path / "m-local.jsonl") == 0
    assert predict(run, meta, tmp_path / "m-ray.jsonl", "--engine", "ray", "--actors", "2") == 0
    same_rows(read(tmp_path / "m-ray.jsonl"), read(tmp_path / "m-local.jsonl"))
    meta.write_text(
        "".join(
            json.dumps({**r, "target": str(r["target"]) if i else r["target"]}) + "\n"
            for i, r in enumerate(lines)
        )
    )
    capsys.readouterr()
    assert predict(run, meta, tmp_path / "m2.jsonl", "--engine", "ray", "--actors", "2") == 2
    last = capsys.readouterr().err.splitlines()[-1]  # (above it: Ray's own log of its reader's failure)
    assert last.startswith("raftlm predict: error: Ray Data cannot read") and "one type per column" in last


def test_a_stopped_prediction_resumes_on_either_engine(run, local_ray, tmp_path, monkeypatch, capsys):
    """Both engines write the same partial file and record: a local prediction stopped after its first
    chunk finishes on Ray (which predicts only the rows it lacks), and a Ray prediction stopped after its
    first batch finishes locally, each equal to one uninterrupted `raftlm predict`."""
    import raftlm.streaming as streaming

    data = write_csv(tmp_path / "rows.csv", review_rows(600))
    assert predict(run, data, tmp_path / "whole.jsonl", "--with-probs") == 0
    want = read(tmp_path / "whole.jsonl")
    out, partial = tmp_path / "preds.jsonl", streaming.partial_path(tmp_path / "preds.jsonl")

    from raftlm.config import Config
    from raftlm.pipeline import load_for_eval

    cfg = Config.from_yaml(str(run / "config.yaml"), {"model.name": str(run)})
    predictor, real, calls = load_for_eval(cfg, None), streaming.predict_examples, []

    def dies_on_second_chunk(p, examples, *a, **k):
        calls.append(len(examples))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(p, examples, *a, **k)

    monkeypatch.setattr(streaming, "predict_examples", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        streaming.predict_file(predictor, cfg, data, out, with_probs=True, chunk_rows=200)
    monkeypatch.undo()
    first = partial.read_text()
    assert not out.exists() and len(first.splitlines()) == 200
    capsys.readouterr()
    assert predict(run, data, out, "--engine", "ray", "--resume") == 2  # a setting differs: one line
    assert "with_probs changed (True -> False)" in capsys.readouterr().err
    assert predict(run, data, out, "--with-probs", "--engine", "ray", "--actors", "2", "--resume") == 0
    assert capsys.readouterr().out.endswith(f"wrote 600 predictions to {out}\n")
    assert out.read_text().startswith(first)  # appended to, not rewritten
    same_rows(read(out), want)

    out2 = tmp_path / "ray.jsonl"
    assert stopped_after_one_batch(monkeypatch, run, data, out2, "--with-probs", "--actors", "2") == 130
    kept = len(streaming.partial_path(out2).read_text().splitlines())
    assert not out2.exists() and 0 < kept < 600
    assert predict(run, data, out2, "--with-probs") == 2  # the partial file is never silently replaced
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert predict(run, data, out2, "--with-probs", "--resume") == 0
    same_rows(read(out2), want)

    capsys.readouterr()
    pq.write_table(pa.Table.from_pylist(review_rows(10)), tmp_path / "rows.parquet")
    assert predict(run, tmp_path / "rows.parquet", tmp_path / "p.jsonl", "--engine", "ray", "--resume") == 2
    assert "--resume needs a local CSV, TSV or JSONL input file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "preds.jsonl",
        "ray.jsonl",
        "rows.csv",
        "rows.parquet",
        "whole.jsonl",
    ]


def test_a_stopped_shards_prediction_resumes_where_it_stopped(run, local_ray, tmp_path, monkeypatch, capsys):
    """--shards from a local file writes each shard whole into a partial folder: stopped after its first
    batch, a rerun is refused (never silently replaced), a changed setting is one line, and --resume writes
    only the shards it lacks (those written stay untouched): the folder equals an uninterrupted one."""
    import raftlm.integrations.ray as ray_engine
    from raftlm.streaming import job_path

    data = write_csv(tmp_path / "rows.csv", review_rows(450))
    assert predict(run, data, tmp_path / "whole.jsonl") == 0  # (Ray = raftlm predict: the test above)
    want = read(tmp_path / "whole.jsonl")

    out = tmp_path / "out"
    assert stopped_after_one_batch(monkeypatch, run, data, out, "--shards", "100") == 130
    part = ray_engine.shards_partial(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in part.glob("part-*")}
    assert not out.exists() and 0 < len(stamps) < 5
    assert sorted(stamps) == [f"part-0000{i}.parquet" for i in range(len(stamps))]
    capsys.readouterr()
    assert predict(run, data, out, "--engine", "ray", "--shards", "100") == 2
    assert "left its partial folder: pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert predict(run, data, out, "--engine", "ray", "--shards", "50", "--resume") == 2
    assert "shard_rows changed (100 -> 50)" in capsys.readouterr().err
    assert predict(run, data, out, "--engine", "ray", "--shards", "100", "--resume") == 0
    assert capsys.readouterr().out.endswith(f"wrote 450 predictions to {out}\n")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_raftlm_shards.json", *(f"part-0000{i}.parquet" for i in range(5))]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*") if p.name in stamps} == stamps
    got = pq.read_table(out).to_pylist()
    assert [r["index"] for r in got] == list(range(450))
    assert [r["prediction"] for r in got] == pytest.approx([r["prediction"] for r in want], abs=1e-6)
    marker = json.loads((out / "_raftlm_shards.json").read_text())
    assert marker == {"rows": 450, "shards": 5, "shard_rows": 100}
    assert not part.exists() and not job_path(out).exists()

    # --overwrite of a finished folder, stopped: the old folder stays until a resume finishes the new one
    assert stopped_after_one_batch(monkeypatch, run, data, out, "--shards", "150", "--overwrite") == 130
    assert sorted(p.name for p in out.iterdir()) == names and part.is_dir()
    assert predict(run, data, out, "--engine", "ray", "--shards", "150", "--resume") == 0
    assert json.loads((out / "_raftlm_shards.json").read_text()) == {
        "rows": 450,
        "shards": 3,
        "shard_rows": 150,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rows.csv", "whole.jsonl"]


def test_a_users_folder_or_record_of_the_partial_names_is_never_taken(tmp_path):
    """check_destination, before Ray or a model: a folder named like the --shards partial folder but not
    raftlm's (no record, no marker), or a record that is not raftlm's, stops the command with its name."""
    from raftlm.core import RaftlmError
    from raftlm.integrations.ray import check_destination, shards_partial
    from raftlm.streaming import job_path

    data = write_csv(tmp_path / "rows.csv", review_rows(5))
    out = tmp_path / "out"
    part = shards_partial(out)
    part.mkdir()
    (part / "notes.txt").write_text("mine")
    with pytest.raises(RaftlmError, match="partial.shards exists but raftlm has no record of writing it"):
        check_destination(out, True, 100, str(data), False)
    part.rename(tmp_path / "kept")
    job_path(out).write_text('{"mine": 1}')
    with pytest.raises(RaftlmError, match="is not a raftlm prediction record"):
        check_destination(out, False, 100, str(data), True)
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine" and job_path(out).exists()
