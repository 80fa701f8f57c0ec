import json
import shutil

import numpy as np
import pytest
import torch
from helpers import train_args
from safetensors.torch import load_file
from transformers.optimization import Adafactor

from raftlm.config import Config
from raftlm.core import RaftlmError
from raftlm.pipeline import train_run
from raftlm.testing import tiny_random_llama

W = "model.layers.1.mlp.down_proj.weight"


def cfg_for(data, out, **training):
    t = {
        "output_dir": str(out),
        "max_steps": 2,
        "batch_size": 8,
        "lr": 1e-2,
        "eval_steps": 2,
        "optimizer": "adafactor",
    }
    t.update(training)  # adafactor: the paper's optimizer, which these pinned tests were written with
    model = {"name": "tiny-random-llama", "trainable": t.pop("trainable", "full")}
    method = {
        "method": t.pop("method", "raft"),
        "grid": t.pop("grid", None),
        "ce_decimals": t.pop("ce_decimals", None),
        "ce_target": t.pop("ce_target", None),
    }
    return Config.build({"model": model, "data": {"dataset": f"csv:{data}"}, "method": method, "training": t})


def weights(run):
    return load_file(run / "model.safetensors")


def test_gradient_accumulation_equals_the_larger_batch(tmp_path, toy_csv):
    big = train_run(cfg_for(toy_csv, tmp_path / "big", batch_size=8, grad_accum=1))
    acc = train_run(cfg_for(toy_csv, tmp_path / "acc", batch_size=4, grad_accum=2))
    a, b = weights(big), weights(acc)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a[W], tiny_random_llama(0)[0].state_dict()[W])


def test_top_n_freezes_embeddings_and_lower_blocks(tmp_path, toy_csv):
    run = train_run(cfg_for(toy_csv, tmp_path / "top", trainable="top-1"))
    before, after = tiny_random_llama(0)[0].state_dict(), weights(run)
    torch.testing.assert_close(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    torch.testing.assert_close(
        after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"]
    )
    assert not torch.allclose(after[W], before[W])


def test_lora_run_saves_a_merged_plain_model(tmp_path, toy_csv):
    run = train_run(cfg_for(toy_csv, tmp_path / "lora", trainable="lora", lr=5e-2))
    after = weights(run)
    assert not any("lora" in k for k in after)
    assert not torch.allclose(after[W], tiny_random_llama(0)[0].state_dict()[W])


@pytest.mark.parametrize(
    "method, extra",
    [("ce", {}), ("ce", {"grid": "0:5:0.5", "ce_decimals": 1}), ("raft", {"grid": "0:5:0.5"})],
)
def test_methods_and_multi_token_grids_train(tmp_path, toy_csv, method, extra):
    run = train_run(cfg_for(toy_csv, tmp_path / "r", method=method, **extra))
    res = json.loads((run / "eval_results.json").read_text())
    assert res["train"]["global_step"] == 2 and np.isfinite(res["train"]["train_loss"])
    assert json.loads((run / "raftlm.json").read_text())["method"] == method


def test_paper_adafactor_settings_are_used(tmp_path, toy_csv, monkeypatch):
    seen = {}
    original = Adafactor.__init__

    def spy(self, params, **kw):
        seen.update(kw)
        original(self, params, **kw)

    monkeypatch.setattr(Adafactor, "__init__", spy)
    train_run(cfg_for(toy_csv, tmp_path / "ada"))
    assert seen["eps"] == (1e-30, 1e-3) and seen["decay_rate"] == -0.8
    assert seen["relative_step"] is False and seen["scale_parameter"] is False


def test_adamw_cosine_with_warmup_runs(tmp_path, toy_csv):
    run = train_run(
        cfg_for(
            toy_csv,
            tmp_path / "adamw",
            optimizer="adamw",
            scheduler="cosine",
            warmup_steps=1,
            max_steps=3,
            logging_steps=1,
        )
    )
    lrs = [
        r["learning_rate"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "learning_rate" in r
    ]
    # logged per step: 1 warmup step from 0 to the peak 1e-2, then cosine over the 2 remaining steps
    np.testing.assert_allclose(lrs, [0.0, 1e-2, 5e-3], atol=1e-9)


def test_ce_answers_end_with_eos_so_greedy_decoding_stops(tiny):
    from raftlm.core import Example
    from raftlm.grid import Grid, TargetScaler
    from raftlm.predictor import Predictor
    from raftlm.training import build_features

    model, tok = tiny
    grid = Grid.parse("1-5")
    p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), ["rating:"])
    feats = build_features(p, [Example("the product was good. rating:", 4.2)], "ce", None)
    assert feats[0]["answer_ids"] == [*p.fmt.candidates[3], tok.eos_token_id]  # '4' (nearest) then EOS
    one_decimal = build_features(p, [Example("x. rating:", 4.26)], "ce", 1)
    assert tok.decode(one_decimal[0]["answer_ids"][:-1]) == "4.3"


def test_a_collapsed_raft_run_says_so_and_logs_grid_mass(tmp_path, toy_csv):
    # lr 1.0 saturates the tiny model's grid distribution within a few steps; the run must say so (the
    # nearest value's CE target: the default two-hot one keeps this toy run's spread alive, std 0.03)
    cfg = cfg_for(toy_csv, tmp_path / "run", max_steps=6, lr=1.0, optimizer="adamw", ce_target="nearest")
    with pytest.warns(
        UserWarning, match=r"validation at step \d+: .*(grid holds|every prediction is).*lower"
    ):
        train_run(cfg)
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "eval_rmse" in e]
    assert all(0 <= e["eval_grid_mass"] <= 1 + 1e-5 and e["eval_prediction_std"] >= 0 for e in evals)
    last = evals[-1]
    assert last["eval_grid_mass"] < 0.01 or last["eval_prediction_std"] < 1e-3


def test_bf16_training_on_a_cpu_without_bf16_units_warns_once(tmp_path, toy_csv, bf16_warning, recwarn):
    bf16_warning(False)
    train_run(cfg_for(toy_csv, tmp_path / "bf16", bf16=True))
    slow = [w for w in recwarn if "drop --bf16" in str(w.message)]
    assert len(slow) == 1 and slow[0].category is RuntimeWarning  # training + validation: one line


def test_no_bf16_warning_in_float32_or_on_a_cpu_with_bf16_units(tmp_path, toy_csv, bf16_warning, recwarn):
    bf16_warning(False)
    train_run(cfg_for(toy_csv, tmp_path / "f32"))
    bf16_warning(True)
    train_run(cfg_for(toy_csv, tmp_path / "bf16", bf16=True))
    assert not [w for w in recwarn if "drop --bf16" in str(w.message)]


# --- training.ema: an exponential moving average of the trained weights (issue 40's lever) -------------


def test_the_weight_average_updates_swaps_and_loads():
    from raftlm.training import WeightAverage

    lin = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Linear(2, 1, bias=False).requires_grad_(False)
    model = torch.nn.Sequential(lin, frozen)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightAverage(model, 0.75)
    assert list(ema.shadow) == ["0.weight"]  # the trained weights only
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[5.0, 6.0]]))
    ema.on_step_end(None, None, None)  # avg = 0.75 * [1, 2] + 0.25 * [5, 6]
    torch.testing.assert_close(ema.shadow["0.weight"], torch.tensor([[2.0, 3.0]]))
    with ema.swapped():
        torch.testing.assert_close(lin.weight.detach(), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[5.0, 6.0]]))  # its own weights back
    ema.load_into_model(None)  # no best checkpoint: the final average
    torch.testing.assert_close(lin.weight.detach(), torch.tensor([[2.0, 3.0]]))


def test_a_run_with_ema_keeps_the_average_validation_chose_and_resumes_it(tmp_path, toy_csv):
    """Validation measures the average, the best checkpoint stores it, the saved model is it (its
    validation RMSE is the best logged one), and a resumed run continues the average exactly."""
    from raftlm.cli import main
    from raftlm.training import EMA_FILE

    full, broken, plain = tmp_path / "full", tmp_path / "broken", tmp_path / "plain"
    keep = ["--set", "training.keep_checkpoints=true"]
    assert main([*train_args(toy_csv, full, "--ema", "0.5"), *keep]) == 0
    assert main(train_args(toy_csv, plain)) == 0
    best = json.loads((full / "eval_results.json").read_text())["train"]
    saved, average = (
        load_file(full / "model.safetensors"),
        load_file(full / "checkpoints" / f"checkpoint-{best['best_step']}" / EMA_FILE),
    )
    for name, value in average.items():
        torch.testing.assert_close(saved[name], value)
    assert any(not torch.equal(saved[k], load_file(plain / "model.safetensors")[k]) for k in average)
    assert (
        main(
            ["evaluate", "--model", str(full), "--split", "validation", "--output", str(tmp_path / "v.json")]
        )
        == 0
    )
    rmse = json.loads((tmp_path / "v.json").read_text())["rmse"]
    assert rmse == pytest.approx(best["best_validation_rmse"], rel=1e-5)
    # a crash after checkpoint-2, resumed: the same average, so the same model
    assert main([*train_args(toy_csv, broken, "--ema", "0.5"), *keep]) == 0
    for name in ["eval_results.json", "model.safetensors", "raftlm.json", "config.json"]:
        (broken / name).unlink()
    shutil.rmtree(broken / "checkpoints" / "checkpoint-4")
    assert main([*train_args(toy_csv, broken, "--ema", "0.5"), "--resume"]) == 0
    a, b = load_file(full / "model.safetensors"), load_file(broken / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_ema_is_a_decay_between_0_and_1():
    with pytest.raises(RaftlmError, match=r"ema=1.0: use a decay strictly between 0 and 1"):
        Config.build({"training": {"ema": 1}})


def test_compiled_blocks_train_the_same_weights_as_eager_and_leave_the_model_eager(tmp_path, toy_csv):
    """--compile (training.compile): the trained blocks run torch.compile'd in training steps (with the
    length chunks and the real-token MLPs of a CPU step), giving eager's weights within float tolerance;
    outside a step (validation, prediction) the blocks are the plain modules."""
    from torch._dynamo.utils import counters

    from raftlm.models import decoder_layers
    from raftlm.training import compiled_blocks

    eager = train_run(cfg_for(toy_csv, tmp_path / "eager", trainable="top-1", optimizer="adamw", lr=1e-3))
    counters.clear()
    cfg = cfg_for(toy_csv, tmp_path / "compiled", trainable="top-1", optimizer="adamw", lr=1e-3, compile=True)
    compiled = train_run(cfg)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled a block
    a, b = weights(eager), weights(compiled)
    assert not torch.allclose(a[W], tiny_random_llama(0)[0].state_dict()[W])  # trained
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4)
    model = tiny_random_llama(0)[0]
    blocks, cache = decoder_layers(model), {}
    with compiled_blocks(model, 1, cache):
        assert blocks[0]._compiled_call_impl is None and blocks[1]._compiled_call_impl is not None
    assert all(block._compiled_call_impl is None for block in blocks) and list(cache) == [id(blocks[1])]


def test_stopped_clock_does_not_count_a_step_of_the_wall_clock(monkeypatch):
    """An NTP correction or a clock set by hand moves time.time: not a stop (it counted 100 s a tick)."""
    import time

    from raftlm.core import StoppedClock

    real, calls = time.time, []
    monkeypatch.setattr(time, "time", lambda: real() + 100 * len(calls.append(1) or calls))
    clock = StoppedClock(tick=0.05, slack=0.3)
    time.sleep(0.4)
    assert clock.close() < 1.0  # (100 s a tick counted; a loaded machine may wake the thread late once)


STOPPED_CHILD = """
import sys, time
from raftlm.core import StoppedClock
clock = StoppedClock(tick=0.05, slack=1.0)
end = time.time() + 1.0
while time.time() < end:  # a busy main thread (holding the GIL between switches) is not a stop
    sum(range(1000))
print(clock.stopped, flush=True)
print("ready", flush=True)
sys.stdin.readline()  # the test stops this process, continues it, then writes a line
print(clock.close(), flush=True)
"""


def test_stopped_clock_counts_a_sigstop_and_not_a_busy_thread():
    """The seconds a run was stopped (a benchmark queue's SIGSTOP, Ctrl-Z) are measured, so that
    train_runtime_s can leave them out; a busy main thread counts nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", STOPPED_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert float(child.stdout.readline()) == 0.0
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        begin = time.monotonic()
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(child.pid, signal.SIGCONT)
        stopped = time.monotonic() - begin  # at most the stop's length (this process may run late too)
        time.sleep(0.3)
        out, _ = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
    # the stop counted once: less up to one tick, plus the child's late wake after SIGCONT on a busy machine
    assert stopped - 0.5 < float(out) < stopped + 1.0, (out, stopped)


def test_run_totals_leave_the_stopped_seconds_out():
    """RunTotals' seconds (checkpointed and final) are Trainer's runtime less the stopped seconds."""
    from raftlm.training import RunTotals

    totals = RunTotals(loss_sum=2.0, steps=2, seconds=30.0)  # resumed from a checkpoint at step 2
    totals.on_train_begin(None, type("S", (), {"global_step": 2, "stateful_callbacks": {}})(), None)
    totals.clock.stopped = 4.0  # as the clock's thread counts it (the test above measures that)
    loss, seconds = totals.whole_run(4, 3.0, 10.0)
    assert (loss, seconds) == (2.0, 36.0)  # (2 + 3 x 2) / 4; 30 + 10 - 4
    assert abs(totals.state()["args"]["seconds"] - 26.0) < 1.0  # 30 + the ~0 s since the begin - 4
    totals.close()
    assert totals.stopped() == 4.0
