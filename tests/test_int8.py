"""--dtype int8: torchao's dynamic int8 Linear layers (CPU; per-token activations), the LM head float32;
prediction only."""

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
    linear = [(name, m) for name, m in int8.model.named_modules() if isinstance(m, torch.nn.Linear)]
    float32 = [name for name, m in linear if type(m.weight) is torch.nn.Parameter]
    head = int8.model.get_output_embeddings()
    assert float32 == ["lm_head"] and len(linear) == 2 * 7 + 1  # every block's 7 projections int8
    int8_weights = {type(m.weight).__name__ for name, m in linear if name != "lm_head"}
    assert int8_weights == {"Int8Tensor"} and all(m.weight.qdata.dtype == torch.int8 for _, m in linear[:-1])
    assert head.weight.dtype == torch.float32 and is_int8(int8.model) and not is_int8(fp32.model)
    tied = lambda p: p.model.get_output_embeddings().weight is p.model.get_input_embeddings().weight  # noqa: E731
    assert tied(int8) == tied(fp32)
    a, b = fp32.predict(TEXTS), int8.predict(TEXTS)
    # measured here: log-probabilities of the grid 7e-4 apart, predictions 4e-6 (int8 weights per output
    # channel, activations per token; torch.ao's per-tensor activations gave 3e-3 and 7e-5): the bounds
    # leave about 3x that
    np.testing.assert_allclose(np.log(b.probs), np.log(a.probs), atol=2e-3)
    np.testing.assert_allclose(b.values, a.values, atol=1.5e-5)
    assert not np.array_equal(b.probs, a.probs)  # int8 really ran


def test_smoothquant_scales_each_input_channel_by_its_measured_maxima_and_predicts_close_to_float32(run):
    """quantize_int8(smooth=alpha, maxima=...): each int8 Linear divides its input channel j by
    s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), max|x_j| as activation_maxima measured it (pinned here
    against a hook of the test's own on the float32 model over the same prompts), its weight columns carry s_j."""
    from raftlm.models import activation_maxima, int8_layer_names, is_smoothed, quantize_int8

    run_dir, _ = run
    fp32, sq = load_run(run_dir, "cpu", "float32"), load_run(run_dir, "cpu", "float32")
    layer = fp32.model.model.layers[1].mlp.down_proj
    seen = []
    hook = layer.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().flatten(0, -2)))
    for t in TEXTS:
        fp32.predict([t], batch_size=1)
    hook.remove()
    x_max = torch.cat(seen).abs().amax(0)
    w_max = layer.weight.detach().abs().amax(0)
    eps = torch.finfo(torch.float32).eps
    s = (x_max + eps) ** 0.5 / (w_max + eps) ** 0.5
    maxima = activation_maxima(sq.model, lambda m: [sq.predict([t], batch_size=1) for t in TEXTS])
    assert sorted(maxima) == sorted(int8_layer_names(sq.model)) and "lm_head" not in maxima
    torch.testing.assert_close(maxima["model.layers.1.mlp.down_proj"], x_max)
    # batched prompts of different lengths: the pad positions (which reach the layers: made loud here through
    # the pad token's embedding, one-hot, which no prompt token uses) do not count
    loud = load_run(run_dir, "cpu", "float32")
    assert len({len(ids) for ids in loud.encode(TEXTS)}) > 1
    with torch.no_grad():
        row = loud.model.get_input_embeddings().weight[loud.pad_id]
        row.zero_()
        row[0] = 1.0
    seen.clear()
    q_proj = "model.layers.0.self_attn.q_proj"
    hook = loud.model.get_submodule(q_proj).register_forward_hook(
        lambda m, args, out: seen.append(args[0].detach().flatten(0, -2))
    )
    batched = activation_maxima(loud.model, lambda m: loud.predict(TEXTS, batch_size=len(TEXTS)))
    hook.remove()
    assert torch.cat(seen).abs().amax(0)[0] > 2 * maxima[q_proj][0]  # the pads' positions: another maximum
    for k in maxima:
        torch.testing.assert_close(batched[k], maxima[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(RaftlmError, match="needs maxima="):
        quantize_int8(load_run(run_dir, "cpu", "float32").model, smooth=0.5)
    for bad, message in (
        ({"x": maxima["model.layers.0.self_attn.q_proj"]}, "name none of this model's layers"),
        (
            {**maxima, "model.layers.0.mlp.down_proj": torch.ones(3)},
            r"do not fit layer .*down_proj .*shape \(3,\)",
        ),
    ):
        with pytest.raises(RaftlmError, match=message):
            quantize_int8(load_run(run_dir, "cpu", "float32").model, smooth=0.5, maxima=bad)
    # a layer the measuring passes never ran has no maxima: it is plain int8, the others smoothed
    partial = load_run(run_dir, "cpu", "float32").model
    quantize_int8(
        partial, smooth=0.5, maxima={k: v for k, v in maxima.items() if "layers.0.self_attn.q_proj" not in k}
    )
    assert partial.model.layers[0].self_attn.q_proj.weight.act_pre_scale is None
    assert partial.model.layers[0].self_attn.k_proj.weight.act_pre_scale is not None
    quantize_int8(sq.model, smooth=0.5, maxima=maxima)
    weight = sq.model.model.layers[1].mlp.down_proj.weight
    assert type(weight).__name__ == "Int8Tensor" and is_int8(sq.model) and is_smoothed(sq.model)
    torch.testing.assert_close(weight.act_pre_scale, 1 / s)
    assert type(sq.model.get_output_embeddings().weight) is torch.nn.Parameter  # the LM head stays float32
    np.testing.assert_allclose(sq.predict(TEXTS).values, fp32.predict(TEXTS).values, atol=1.5e-5)


def test_the_maxima_see_which_positions_are_prompt_tokens_through_any_attention_mask_raftlm_hands_the_model():
    """A 2D padding mask, the 4D boolean one of the bidirectional ablation (PromptBatch.model_mask), and an
    additive 4D one (0 where attended) all give the same token positions; anything else counts every position."""
    from raftlm.models import _token_mask
    from raftlm.scoring import PromptBatch

    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    batch = PromptBatch(torch.zeros_like(mask), mask, torch.zeros_like(mask), bidirectional=True)
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
    additive = torch.where(causal, 0.0, torch.finfo(torch.float32).min)
    for given in (mask, batch.model_mask(), causal, additive):
        assert torch.equal(_token_mask({"attention_mask": given}), mask.bool())
    assert _token_mask({}) is None and _token_mask({"attention_mask": torch.ones(2, 1, 4)}) is None


def test_a_trained_run_keeps_its_int8_maxima_and_dtype_int8_smooths_with_them(run, tmp_path, caplog):
    """train measures SmoothQuant's maxima on its training rows (up to 256, spread evenly; batched, pads left out)
    into RUN/int8_maxima.safetensors; --dtype int8 smooths with them at alpha 0.75 and says so; a run without
    the file runs plain int8 and says how to get it."""
    import logging
    import shutil

    from raftlm.data import load_splits
    from raftlm.io import foreign_files
    from raftlm.models import SMOOTHQUANT_ALPHA, Int8Maxima, activation_maxima, is_smoothed

    run_dir, data = run
    examples = load_splits(Config.from_yaml(str(run_dir / "config.yaml")).data).train
    train = [e.text for e in examples]
    saved = Int8Maxima.load(run_dir)
    assert saved.source == "train" and saved.prompts == len(train) == 32 and not foreign_files(run_dir)
    fp32 = load_run(run_dir, "cpu", "float32")
    again = activation_maxima(fp32.model, lambda m: [fp32.predict([t], batch_size=1) for t in train])
    assert saved.values.keys() == again.keys()
    for k in again:
        torch.testing.assert_close(saved.values[k], again[k], atol=1e-5, rtol=1e-4)
    few = fp32.record_int8_maxima(examples, "x", rows=4)
    spread = activation_maxima(fp32.model, lambda m: fp32.predict(train[::8]))
    assert few.prompts == 4 and all(
        torch.equal(few.values[k], spread[k]) for k in spread
    )  # rows 0, 8, 16, 24
    int8 = load_run(run_dir, "cpu", "int8")
    assert SMOOTHQUANT_ALPHA == 0.75 and is_smoothed(int8.model) and int8.dtype_name == "int8 + SmoothQuant"
    assert int8.dtype == torch.int8
    with caplog.at_level(logging.INFO, logger="raftlm"):
        assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--dtype", "int8"]) == 0
    assert "int8 weights (SmoothQuant alpha 0.75, maxima of 32 train prompts)" in caplog.text
    plain_dir = tmp_path / "plain"
    shutil.copytree(run_dir, plain_dir)
    (plain_dir / "int8_maxima.safetensors").unlink()
    plain = load_run(plain_dir, "cpu", "int8")
    assert is_int8(plain.model) and not is_smoothed(plain.model) and plain.dtype_name == "int8"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="raftlm"):
        assert main(["evaluate", "--model", str(plain_dir), "--split", "test", "--dtype", "int8"]) == 0
    assert f"int8 weights (plain: the run has no int8_maxima.safetensors; `raftlm calibrate {plain_dir}`" in (
        caplog.text
    )
    # the smoothed and the plain int8 are different models, both near float32
    a, b, c = (p.predict(TEXTS).values for p in (fp32, int8, plain))
    assert not np.array_equal(b, c)
    np.testing.assert_allclose(b, a, atol=1.5e-5)


def test_calibrate_measures_int8_maxima_on_its_rows_and_api_cli_and_server_run_the_same_int8(
    run, tmp_path, capsys
):
    """`raftlm calibrate RUN` and RAFTRegressor.calibrate measure the maxima on the rows they calibrate on
    (CLI: written to the run; API: kept by save); with --dtype int8 calibrate leaves them; the CLI's predict,
    RAFTRegressor.load(dtype="int8") and the server then run one int8 model (same predictions)."""
    import shutil

    from raftlm.api import RAFTRegressor
    from raftlm.models import Int8Maxima

    run_dir, data = run
    cal_dir = tmp_path / "cal"
    shutil.copytree(run_dir, cal_dir)
    before = (cal_dir / "int8_maxima.safetensors").read_bytes()
    assert main(["calibrate", str(cal_dir), "--dtype", "int8"]) == 0
    assert "int8 activation maxima left as they were" in capsys.readouterr().out
    assert (cal_dir / "int8_maxima.safetensors").read_bytes() == before
    assert main(["calibrate", str(cal_dir), "--input", str(data)]) == 0
    out = capsys.readouterr().out
    assert (
        f"int8 activation maxima (SmoothQuant alpha 0.75, maxima of 40 {data} prompts) for --dtype int8"
        in out
    )
    assert Int8Maxima.load(cal_dir).source == str(data)
    api = RAFTRegressor.load(str(run_dir))
    rows = [{"text": t} for t in TEXTS]
    api.calibrate(rows * 10, [1.0, 2.0, 3.0, 4.0] * 10)
    assert api.predictor_.int8_maxima.source == "calibrate()"
    api.save(str(tmp_path / "api"))
    assert Int8Maxima.load(tmp_path / "api").prompts == 40
    # one int8 model behind every interface
    out8 = tmp_path / "int8.jsonl"
    predict = ["predict", "--model", str(run_dir), "--input", str(data), "--output", str(out8)]
    assert main([*predict, "--dtype", "int8"]) == 0
    cli = [json.loads(line)["prediction"] for line in out8.read_text().splitlines()][: len(TEXTS)]
    loaded = RAFTRegressor.load(str(run_dir), device="cpu", dtype="int8").predict(rows)
    np.testing.assert_array_equal(loaded, load_run(run_dir, "cpu", "int8").predict(TEXTS).values)
    np.testing.assert_allclose(cli, loaded, atol=1e-6)


def test_a_damaged_int8_maxima_file_is_one_line_for_int8_and_a_warning_otherwise(run, tmp_path):
    import shutil

    run_dir, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    (bad / "int8_maxima.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        RaftlmError, match=r"int8_maxima.safetensors is damaged .*: record it again with `raftlm calibrate"
    ):
        load_run(bad, "cpu", "int8")
    with pytest.warns(UserWarning, match="int8_maxima.safetensors is damaged"):
        assert load_run(bad, "cpu", "float32").int8_maxima is None


def test_predict_and_evaluate_take_dtype_int8(run, tmp_path, capsys):
    run_dir, data = run
    out32, out8 = tmp_path / "fp32.jsonl", tmp_path / "int8.jsonl"
    base = ["predict", "--model", str(run_dir), "--input", str(data)]
    assert main([*base, "--output", str(out32)]) == 0
    assert main([*base, "--output", str(out8), "--dtype", "int8"]) == 0
    a = [json.loads(line)["prediction"] for line in out32.read_text().splitlines()]
    b = [json.loads(line)["prediction"] for line in out8.read_text().splitlines()]
    np.testing.assert_allclose(b, a, atol=1.5e-5)
    assert main(["evaluate", "--model", str(run_dir), "--split", "test", "--dtype", "int8"]) == 0


def test_serve_takes_dtype_int8_and_says_so(run):
    run_dir, _ = run
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "raftlm", "serve", str(run_dir), "--port", "0", "--dtype", "int8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        assert "(cpu, int8 + SmoothQuant, batches of up to" in line, line
        url = line.split(" on ")[1].split()[0]
        assert httpx.get(f"{url}/info", timeout=60).json()["dtype"] == "int8 + SmoothQuant"
        served = httpx.post(f"{url}/predict", json={"inputs": TEXTS}, timeout=60).json()["predictions"]
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
        (
            ["--device", "cuda"],
            "dtype=int8 runs on the CPU only: use device cpu, or dtype bfloat16 on a GPU (--device, --dtype; device=",
        ),
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
    before = {n: p.qdata.clone() for n, p in predictor.model.named_parameters() if hasattr(p, "qdata")}
    assert is_int8(cast_weights(predictor.model, torch.int8))  # quantizing again changes nothing
    after = {n: p.qdata for n, p in predictor.model.named_parameters() if hasattr(p, "qdata")}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_int8_without_torchao_is_one_line_naming_the_extra(monkeypatch):
    """torchao is the int8 extra (raftlm[int8]): without it, --dtype int8 says what to install."""
    import builtins

    from raftlm.models import quantize_int8
    from raftlm.testing import tiny_random_llama

    real = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    model, _ = tiny_random_llama()
    with pytest.raises(RaftlmError, match=r"--dtype int8 needs torchao .*pip install 'torchao==0.18.0'"):
        quantize_int8(model)


def test_torchaos_import_notices_are_not_shown(tmp_path):
    """transformers imports torchao whenever it is installed: its notices (CUDA kernels it cannot load on a
    CPU, torch's enum deprecation) would follow every raftlm command; raftlm.core filters those two only."""
    code = "import raftlm.models, torchao, logging; logging.getLogger('torchao').warning('Failed to load x')"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert proc.returncode == 0 and "_C" not in proc.stderr and "Enum subclass" not in proc.stderr, (
        proc.stderr
    )
    assert "Failed to load x" in proc.stderr  # torchao's other warnings still show


@pytest.mark.slow
def test_int8_with_compile_predicts_as_close_to_float32_as_eager_int8(run):
    """--dtype int8 --compile (benchmarks/int8.py: the fastest int8): inductor's int8 kernels round otherwise
    than eager's, so the bound is int8's against float32, not equality with eager int8."""
    run_dir, _ = run
    fp32 = load_run(run_dir, "cpu", "float32").predict(TEXTS).values
    compiled = load_run(run_dir, "cpu", "int8")
    compiled.compile()
    np.testing.assert_allclose(compiled.predict(TEXTS).values, fp32, atol=1.5e-5)


def test_int8_keeps_float32_the_layers_it_is_told_to_keep():
    from raftlm.models import _int8_weight, load_model, quantize_int8

    model, _ = load_model("tiny-random-llama")
    quantize_int8(model, keep=("mlp.down_proj",))
    linears = {n: _int8_weight(m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n.rsplit(".", 1)[-1] for n, q in linears.items() if not q} == {"down_proj", "lm_head"}
    assert sum(linears.values()) == 6 * len(model.model.layers)  # q, k, v, o, gate, up per block
