"""--dtype int8: torch's dynamic int8 Linear layers (CPU), the LM head float32; prediction only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import train_args, write_csv

import raftlm
from raftlm.cli import main
from raftlm.config import Config
from raftlm.core import RaftlmError
from raftlm.models import cast_weights, is_int8, resolve_dtype
from raftlm.run import load_run
from raftlm.training import fit

TEXTS = [f"review {i}: the product was {w}. rating:" for i, w in enumerate(["bad", "fine", "great", "awful"])]
SRC = str(Path(raftlm.__file__).resolve().parents[1])  # the checkout under test, for the server process


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    rows = [{"text": t, "target": 1 + i % 5} for i, t in enumerate(TEXTS * 10)]
    data = write_csv(d / "toy.csv", rows)
    assert main(train_args(data, d / "run", "--lr", "1e-3")) == 0
    return d / "run", data


def test_int8_quantizes_every_linear_but_the_lm_head_and_predicts_close_to_float32(run):
    run_dir, _ = run
    fp32, int8 = load_run(run_dir, "cpu", "float32"), load_run(run_dir, "cpu", "int8")
    assert int8.dtype == torch.int8 and fp32.dtype == torch.float32
    float32 = [name for name, m in int8.model.named_modules() if isinstance(m, torch.nn.Linear)]
    head = int8.model.get_output_embeddings()
    # left float32: the LM head and the MLPs' down projections (models.INT8_SKIP)
    assert float32 == [f"model.layers.{i}.mlp.down_proj" for i in range(2)] + ["lm_head"]
    assert head.weight.dtype == torch.float32 and is_int8(int8.model)
    tied = lambda p: p.model.get_output_embeddings().weight is p.model.get_input_embeddings().weight  # noqa: E731
    assert tied(int8) == tied(fp32)
    a, b = fp32.predict(TEXTS), int8.predict(TEXTS)
    # measured here: log-probabilities of the grid 3e-3 apart, predictions 7e-5 (int8 weights per output
    # channel, activations per tensor); the bounds leave about 3x that
    np.testing.assert_allclose(np.log(b.probs), np.log(a.probs), atol=0.01)
    np.testing.assert_allclose(b.values, a.values, atol=2e-4)
    assert not np.array_equal(b.probs, a.probs)  # int8 really ran


def test_predict_and_evaluate_take_dtype_int8(run, tmp_path, capsys):
    run_dir, data = run
    out32, out8 = tmp_path / "fp32.jsonl", tmp_path / "int8.jsonl"
    base = ["predict", "--model", str(run_dir), "--input", str(data)]
    assert main([*base, "--output", str(out32)]) == 0
    assert main([*base, "--output", str(out8), "--dtype", "int8"]) == 0
    a = [json.loads(line)["prediction"] for line in out32.read_text().splitlines()]
    b = [json.loads(line)["prediction"] for line in out8.read_text().splitlines()]
    np.testing.assert_allclose(b, a, atol=2e-4)
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--dtype", "int8"]) == 0


def test_serve_takes_dtype_int8_and_says_so(run):
    run_dir, _ = run
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run_dir), "--port", "0", "--dtype", "int8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "(cpu, int8, batches of up to" in line, line
        url = line.split(" on ")[1].split()[0]
        assert httpx.get(f"{url}/info").json()["dtype"] == "int8"
        served = httpx.post(f"{url}/predict", json={"inputs": TEXTS}).json()["predictions"]
        expected = load_run(run_dir, "cpu", "int8").predict(TEXTS).values
        np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_training_refuses_int8_weights_in_one_line(run, tmp_path, capsys):
    run_dir, data = run
    predictor = load_run(run_dir, "cpu", "int8")
    cfg = Config.build({"model": {"name": "tiny-random-llama"}, "data": {"dataset": f"csv:{data}"}})
    with pytest.raises(RaftlmError, match="int8 weights are for prediction only"):
        fit(predictor, [], [], cfg, tmp_path)
    capsys.readouterr()
    assert main(train_args(data, tmp_path / "run", "--dtype", "int8")) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bad_combinations_are_refused_in_one_line(run, tmp_path, capsys):
    run_dir, data = run
    base = ["predict", "--model", str(run_dir), "--input", str(data), "--output", str(tmp_path / "x.jsonl")]
    for flags, message in (
        (["--device", "cuda"], "dtype=int8 runs on the CPU only: use --device cpu"),
        (["--bf16"], "dtype=int8 feeds float32 activations to its int8 layers: drop --bf16"),
    ):
        assert main([*base, "--dtype", "int8", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(RaftlmError, match="dtype=int8 runs on the CPU only"):
        resolve_dtype("int8", torch.device("cuda", 0))
    predictor = load_run(run_dir, "cpu", "int8")
    with pytest.raises(RaftlmError, match="drop --bf16"):
        predictor.predict(TEXTS, bf16=True)
    with pytest.raises(RaftlmError, match="int8 weights cannot be cast to torch.bfloat16"):
        predictor.to("cpu", "bfloat16")
    assert is_int8(cast_weights(predictor.model, torch.int8))  # quantizing again changes nothing
