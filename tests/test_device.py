"""--device / --dtype for predict, evaluate, serve and the Python API (CPU here; CUDA when present)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import train_args

from raftlm.api import RAFTRegressor
from raftlm.cli import main
from raftlm.config import Config
from raftlm.core import RaftlmError
from raftlm.models import resolve_device, resolve_dtype
from raftlm.pipeline import train_run
from raftlm.run import load_run

TEXTS = [f"review {i}: the product was {w}. rating:" for i, w in enumerate(["bad", "fine", "great", "awful"])]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("device")
    from helpers import write_csv

    rows = [{"text": t, "target": 1 + i % 5} for i, t in enumerate(TEXTS * 10)]
    data = write_csv(d / "toy.csv", rows)
    assert main(train_args(data, d / "run", "--lr", "1e-3")) == 0
    return d / "run", data


def test_auto_is_the_cpu_in_float32_without_a_gpu():
    if CUDA:
        pytest.skip("a GPU is visible")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(
        RaftlmError, match=r"no CUDA GPU is visible: use cpu or auto \(--device cpu; device='cpu' in Python\)"
    ):
        resolve_device("cuda:0")
    with pytest.raises(RaftlmError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_bfloat16_weights_predict_close_to_float32_with_float32_logits(run):
    run_dir, _ = run
    fp32 = load_run(run_dir, "cpu", "float32")
    bf16 = load_run(run_dir, "cpu", "bfloat16")
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    # buffers keep their precision (rotary frequencies), and the LM head returns float32 logits
    assert bf16.model.model.rotary_emb.inv_freq.dtype == torch.float32
    hidden = torch.randn(2, 3, bf16.model.config.hidden_size, dtype=torch.bfloat16)
    assert bf16.model.get_output_embeddings()(hidden).dtype == torch.float32
    a, b = fp32.predict(TEXTS), bf16.predict(TEXTS)
    np.testing.assert_allclose(b.values, a.values, atol=0.05)
    np.testing.assert_allclose(b.probs, a.probs, atol=0.01)


def test_a_head_stays_float32_when_the_backbone_goes_bfloat16(tmp_path, run):
    _, data = run
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "trainable": "full"},
            "data": {"dataset": f"csv:{data}"},
            "method": {"method": "head-pooled"},
            "training": {
                "output_dir": str(tmp_path / "head"),
                "max_steps": 2,
                "batch_size": 8,
                "eval_steps": 2,
            },
        }
    )
    head_run = train_run(cfg)
    p = load_run(head_run, "cpu", "bfloat16")
    assert {q.dtype for q in p.head.parameters()} == {torch.float32}
    assert p.model.model.embed_tokens.weight.dtype == torch.bfloat16
    ref = load_run(head_run, "cpu", "float32").predict(TEXTS).values
    np.testing.assert_allclose(p.predict(TEXTS).values, ref, atol=0.05)


def test_cli_and_api_take_device_and_dtype(run, tmp_path, capsys):
    run_dir, data = run
    out32, out16 = tmp_path / "fp32.jsonl", tmp_path / "bf16.jsonl"
    base = ["predict", "--model", str(run_dir), "--input", str(data)]
    assert main([*base, "--output", str(out32), "--device", "cpu", "--dtype", "float32"]) == 0
    assert main([*base, "--output", str(out16), "--device", "cpu", "--dtype", "bfloat16"]) == 0
    a = [json.loads(line)["prediction"] for line in out32.read_text().splitlines()]
    b = [json.loads(line)["prediction"] for line in out16.read_text().splitlines()]
    np.testing.assert_allclose(b, a, atol=0.05)
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--dtype", "bfloat16"]) == 0
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--dtype", "float16"]) == 2
    assert "dtype='float16': use auto, float32 or bfloat16" in capsys.readouterr().err
    if not CUDA:
        assert main([*base, "--output", str(tmp_path / "x.jsonl"), "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err
    reg = RAFTRegressor.load(str(run_dir), device="cpu", dtype="bfloat16")
    assert reg.predictor_.device == torch.device("cpu")
    assert reg.predictor_.dtype == torch.bfloat16
    np.testing.assert_allclose(reg.predict(TEXTS), load_run(run_dir, "cpu").predict(TEXTS).values, atol=0.05)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_on_a_gpu_auto_is_cuda_bfloat16_and_predicts_like_the_cpu(run):
    run_dir, _ = run
    gpu = load_run(run_dir)  # auto
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).dtype == torch.bfloat16
    cpu = load_run(run_dir, "cpu", "float32")
    np.testing.assert_allclose(gpu.predict(TEXTS).values, cpu.predict(TEXTS).values, atol=0.05)
    fp32 = load_run(run_dir, "cuda", "float32")
    np.testing.assert_allclose(fp32.predict(TEXTS).values, cpu.predict(TEXTS).values, atol=1e-4)


def test_a_fresh_fit_measures_and_predicts_as_its_run_is_loaded_in_eval_dtype(run, tmp_path, capsys):
    """eval.dtype bfloat16 (a GPU's auto): `train` calibrated and measured the test split on the float32
    weights in memory, while `raftlm evaluate`, `predict`, the server and `RAFTRegressor.load` run the saved
    run in bfloat16: eval_results.json and the model card disagreed with `raftlm evaluate` of the same run.
    Now a copy placed as the run is loaded measures it; the trained weights stay (fit(...).save() writes
    them as trained, float32)."""
    from safetensors.torch import load_file

    _, data = run
    recipe = tmp_path / "bf16.yaml"
    recipe.write_text("eval: {dtype: bfloat16}\n")
    out = tmp_path / "run"
    assert main([*train_args(data, out, "--lr", "1e-3"), "--config", str(recipe)]) == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}  # as trained
    trained = json.loads((out / "eval_results.json").read_text())["test"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--output", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["rmse"] == trained["rmse"] and again["spearman"] == trained["spearman"]
    fit_dir = tmp_path / "fit"
    reg = RAFTRegressor(
        model="tiny-random-llama", max_steps=2, batch_size=4, lr=1e-3, output_dir=str(fit_dir),
        settings={"eval": {"dtype": "bfloat16"}}, progress_bar=False,
    )  # fmt: skip
    fitted = reg.fit(TEXTS * 5, [1.0, 2.0, 3.0, 4.0] * 5, eval_set=(TEXTS, [1.0, 2.0, 3.0, 4.0]))
    # the estimator keeps the weights as trained: save() writes float32, as the run's own copy
    assert fitted.predictor_.dtype == torch.float32
    saved = fitted.save(str(tmp_path / "saved"))
    a, b = load_file(saved / "model.safetensors"), load_file(fit_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
