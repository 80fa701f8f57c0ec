"""`raftlm predict` streams: chunked reading and writing, atomic output, --resume, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import train_args, write_csv

import raftlm
import raftlm.streaming
from raftlm.cli import main

WORDS = ["awful", "bad", "fine", "good", "great"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    rows = [
        {"text": f"review {i}: it was {WORDS[i % 5]}{' quite' * (i % 6)}. rating:", "target": 1 + i % 5}
        for i in range(40)
    ]
    data = write_csv(d / "toy.csv", rows)
    assert main(train_args(data, d / "run", "--lr", "1e-3")) == 0
    return d / "run", data


def predict(run_dir, data, out, *extra) -> int:
    return main(["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), *extra])


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["index"] for r in a] == [r["index"] for r in b] == list(range(len(a)))
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y) and x.get("target") == y.get("target")
        assert x["prediction"] == pytest.approx(y["prediction"], abs=1e-6)


def test_small_chunks_write_the_same_rows_in_input_order(run, tmp_path, monkeypatch):
    run_dir, data = run
    assert predict(run_dir, data, tmp_path / "whole.jsonl", "--with-probs") == 0
    seen = []
    real = raftlm.streaming.predict_examples
    monkeypatch.setattr(
        raftlm.streaming,
        "predict_examples",
        lambda p, ex, *a, **k: seen.append(len(ex)) or real(p, ex, *a, **k),
    )
    out = tmp_path / "chunked.jsonl"
    n = raftlm.streaming.predict_file(*_loaded(run_dir), data, out, with_probs=True, chunk_rows=7)
    assert n == 40 and seen == [7, 7, 7, 7, 7, 5]
    same_rows(read(out), read(tmp_path / "whole.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.jsonl", "whole.jsonl"]


def test_a_streamed_text_decode_says_its_unparsed_texts_once(run, tmp_path):
    """A file predicted chunk by chunk gives one "not a number" warning with the file's total, not one
    per chunk; it equals the rows' own counts."""
    run_dir, data = run
    predictor, cfg = _loaded(run_dir)
    cfg.eval.decoder = "greedy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raftlm.streaming.predict_file(predictor, cfg, data, tmp_path / "greedy.jsonl", chunk_rows=7)
    said = [str(w.message) for w in caught if "decoded texts were not a number" in str(w.message)]
    total = sum(r["unparsed"] for r in read(tmp_path / "greedy.jsonl"))
    assert total > 0 and len(said) == 1 and said[0].startswith(f"{total} of 40 decoded texts"), said


def _loaded(run_dir):
    from raftlm.config import Config
    from raftlm.pipeline import load_for_eval

    cfg = Config.from_yaml(str(run_dir / "config.yaml"), {"model.name": str(run_dir)})
    return load_for_eval(cfg, None), cfg


def test_resume_continues_an_interrupted_prediction(run, tmp_path, monkeypatch, capsys):
    run_dir, data = run
    assert predict(run_dir, data, tmp_path / "full.jsonl") == 0
    out = tmp_path / "preds.jsonl"
    real = raftlm.streaming.predict_examples
    calls = []

    def dies_on_third_chunk(p, ex, *a, **k):
        calls.append(len(ex))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(p, ex, *a, **k)

    monkeypatch.setattr(raftlm.streaming, "predict_examples", dies_on_third_chunk)
    predictor, cfg = _loaded(run_dir)
    with pytest.raises(KeyboardInterrupt):
        raftlm.streaming.predict_file(predictor, cfg, data, out, chunk_rows=16)
    partial = raftlm.streaming.partial_path(out)
    assert not out.exists() and len(read(partial)) == 32
    with open(partial, "a") as f:
        f.write('{"index": 32, "predic')  # killed mid-line
    # stale-file cleanup elsewhere must leave it alone: it is not an atomic_write temporary
    assert not partial.name.endswith(".tmp")

    code = predict(run_dir, data, out)
    assert code == 2 and "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    code = predict(run_dir, data, out, "--resume", "--with-probs")
    assert code == 2 and "with_probs changed (False -> True)" in capsys.readouterr().err

    calls.clear()
    monkeypatch.setattr(
        raftlm.streaming,
        "predict_examples",
        lambda p, ex, *a, **k: calls.append(len(ex)) or real(p, ex, *a, **k),
    )
    assert predict(run_dir, data, out, "--resume") == 0
    assert calls == [8]  # only rows 32..39 were predicted again
    same_rows(read(out), read(tmp_path / "full.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.jsonl", "preds.jsonl"]


def test_overwrite_discards_a_partial_and_bad_rows_fail_before_anything_is_written(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "preds.jsonl"
    raftlm.streaming.partial_path(out).write_text('{"index": 0, "prediction": 99.0}\n')
    job = {"input": "old.csv", "input_sha256": "0" * 64, "model": "an older model", "rows": 1}
    raftlm.streaming.job_path(out).write_text(json.dumps(job) + "\n")  # an earlier raftlm prediction's
    assert predict(run_dir, data, out, "--overwrite") == 0
    assert len(read(out)) == 40 and read(out)[0]["prediction"] != 99.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"]

    rows = [{"text": f"ok {i}. rating:", "target": i % 5} for i in range(30)] + [{"text": " ", "target": 1}]
    bad = write_csv(tmp_path / "bad.csv", rows)
    assert predict(run_dir, bad, tmp_path / "p2.jsonl") == 2
    assert "bad.csv line 32: field 'text' is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "preds.jsonl"]


def test_a_decoder_the_model_cannot_run_leaves_nothing_behind(tmp_path, capsys):
    """A bidirectional run cannot decode text: the error comes from the first chunk, and no partial
    file remains to demand --resume."""
    rows = [{"text": f"review {i}: {WORDS[i % 5]}. rating:", "target": 1 + i % 5} for i in range(20)]
    data = write_csv(tmp_path / "d.csv", rows)
    run_dir = tmp_path / "run"
    assert main(train_args(data, run_dir, "--attention", "bidirectional")) == 0
    out = tmp_path / "p.jsonl"
    assert predict(run_dir, data, out, "--decoder", "greedy") == 2
    assert "decoding text needs causal attention" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "run"]


def test_two_processes_shard_the_rows_and_write_the_same_file_as_one(run, tmp_path):
    run_dir, data = run
    assert predict(run_dir, data, tmp_path / "one.jsonl", "--with-probs") == 0
    out = tmp_path / "two.jsonl"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--standalone", str(Path(__file__).with_name("ddp_slow_rank.py"))),
        *("predict", "--model", str(run_dir), "--input", str(data), "--output", str(out), "--with-probs"),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(raftlm.__file__).resolve().parents[1]),
        "RAFTLM_TEST_SLOW_RANK_S": "3",  # rank 1 checks the output 3 s late (tests/ddp_slow_rank.py)
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote 40 predictions") == 1  # the main process reports once
    same_rows(read(out), read(tmp_path / "one.jsonl"))
    for a, b in zip(read(out), read(tmp_path / "one.jsonl"), strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=2e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]
