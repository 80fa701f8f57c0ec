"""Issue 40: head-attn, learned queries attending over every prompt token (RELISH-style), trained with
the squared error on a frozen backbone or under top-N blocks, cached or not."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import train_args
from torch.testing import assert_close

from raftlm import RAFTRegressor
from raftlm.cache import build_store, skip_frozen
from raftlm.cli import main
from raftlm.config import Config
from raftlm.core import Example, RaftlmError
from raftlm.heads import HEAD_CLASSES, AttentionPoolHead
from raftlm.losses import HeadMSELoss
from raftlm.methods import METHODS
from raftlm.pipeline import make_trainable, new_predictor
from raftlm.run import load_run
from raftlm.scoring import PromptBatch, left_pad
from raftlm.testing import tiny_random_llama
from raftlm.training import build_features, frozen_blocks_to_cache, make_collator

WORDS = ["awful", "bad", "fine", "good", "great"]
EXAMPLES = [Example(f"review {i}: " + "so " * i + f"{WORDS[i % 5]}. rating:", 1.0 + i % 5) for i in range(6)]


class FakeLM:
    """A causal LM stand-in whose final hidden states are fixed (dim 2)."""

    def __init__(self, hidden):
        self.hidden = hidden

    def get_output_embeddings(self):
        return object()

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep=0, output_hidden_states=False):
        return SimpleNamespace(hidden_states=(self.hidden,))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_formula_and_gemma_size():
    for d, q, h in [(32, 4, 16), (640, 4, 768), (576, 2, 100)]:
        # queries + layer norm + attention (in/out projections and biases) + MLP
        expected = q * d + 2 * d + (4 * d * d + 4 * d) + (q * d * h + h) + (h + 1)
        assert n_params(AttentionPoolHead(d, q, h)) == expected
    assert n_params(AttentionPoolHead(640)) == 3_612_417  # Gemma 3 270M (D 640), the defaults: 3.6M
    assert AttentionPoolHead(640).attn.num_heads == 8 and AttentionPoolHead(12).attn.num_heads == 4


def test_one_number_per_row_starting_at_the_bias_and_rebuilt_from_its_config(tiny):
    model, _ = tiny
    batch = left_pad([[1, 20, 21, 22], [1, 30], [1, 5, 6]], 0)
    head = AttentionPoolHead(32, queries=3, hidden=8, bias=2.5)
    assert_close(head(model, batch), torch.full((3,), 2.5))  # the output layer starts at zero
    rebuilt = HEAD_CLASSES[type(head).__name__](**head.config())
    rebuilt.load_state_dict(head.state_dict())
    torch.nn.init.normal_(head.out.weight)
    rebuilt.load_state_dict(head.state_dict())
    assert head(model, batch).shape == (3,)
    assert_close(rebuilt(model, batch), head(model, batch))


def test_pooling_by_hand_with_uniform_attention():
    # pad (9, 9) is masked; LN (eps 0) of (1,-2), (3,4), (5,0) is (1,-1), (-1,1), (1,-1); zero query projection
    # -> uniform attention, identity values and output -> mean (1/3, -1/3); inp (3, 0) -> 1,
    # gelu(1) = 0.8413447; 0.5 + 2 * 0.8413447 = 2.1826894 (with the pad it would be 0.5 + 2 * gelu(0) = 0.5)
    hidden = torch.tensor([[[9.0, 9.0], [1.0, -2.0], [3.0, 4.0], [5.0, 0.0]]])
    batch = PromptBatch(
        torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 2]])
    )
    head = AttentionPoolHead(2, queries=1, hidden=1, num_heads=1, bias=0.5)
    head.norm.eps = 0.0
    with torch.no_grad():
        head.attn.in_proj_weight.copy_(torch.cat([torch.zeros(2, 2), torch.eye(2), torch.eye(2)]))
        head.attn.in_proj_bias.zero_()
        head.attn.out_proj.weight.copy_(torch.eye(2))
        head.attn.out_proj.bias.zero_()
        head.inp.weight.copy_(torch.tensor([[3.0, 0.0]]))
        head.inp.bias.zero_()
        head.out.weight.fill_(2.0)
    assert_close(head(FakeLM(hidden), batch), torch.tensor([2.1826894]), atol=1e-6, rtol=0)


def test_padding_does_not_change_a_prediction(tiny):
    model, _ = tiny
    head = AttentionPoolHead(32, queries=4, hidden=16)
    torch.nn.init.normal_(head.out.weight)
    row, longer = [1, 30, 31, 5], [1, 20, 21, 22, 23, 24, 25, 26, 27]
    with torch.no_grad():
        alone = head(model, left_pad([row], 0))
        batched = head(model, left_pad([longer, row, [1, 7]], 0))
    assert_close(batched[1:2], alone, atol=1e-5, rtol=0)


def reference_loss(head, model, seqs, targets):
    """The head written out per row over its real tokens only (no padding, no nn.MultiheadAttention)."""
    d, n_heads = head.queries.shape[1], head.attn.num_heads
    w, b = head.attn.in_proj_weight, head.attn.in_proj_bias
    preds = []
    for seq in seqs:
        h = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0]  # (T, D), final norm applied
        k = F.layer_norm(h, (d,), head.norm.weight, head.norm.bias)
        q_, k_, v_ = (
            head.queries @ w[:d].T + b[:d],
            k @ w[d : 2 * d].T + b[d : 2 * d],
            k @ w[2 * d :].T + b[2 * d :],
        )
        step = d // n_heads
        parts = []
        for j in range(n_heads):
            s = slice(j * step, (j + 1) * step)
            parts.append(torch.softmax(q_[:, s] @ k_[:, s].T / math.sqrt(step), -1) @ v_[:, s])
        pooled = torch.cat(parts, -1) @ head.attn.out_proj.weight.T + head.attn.out_proj.bias  # (Q, D)
        z = F.gelu(pooled.flatten() @ head.inp.weight.T + head.inp.bias)
        preds.append(z @ head.out.weight[0] + head.out.bias[0])
    return ((torch.stack(preds) - targets) ** 2).mean()


def test_loss_equals_the_head_written_out_by_hand(tiny):
    model, _ = tiny
    head = AttentionPoolHead(32, queries=3, hidden=8, bias=3.0)
    torch.nn.init.normal_(head.out.weight)
    seqs, targets = [[1, 20, 21, 22, 23], [1, 30], [1, 5, 6, 7]], torch.tensor([1.0, 4.5, 2.0])
    loss = HeadMSELoss(head)(model, left_pad(seqs, 0), targets)
    assert_close(loss, reference_loss(head, model, seqs, targets), atol=1e-5, rtol=1e-5)


def test_the_method_builds_the_head_from_its_config_fields():
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama"},
            "method": {
                "method": "head-attn",
                "grid": "1-5",
                "target_range": "none",
                "attn_queries": 2,
                "attn_hidden": 5,
            },
        }
    )
    predictor = new_predictor(cfg, EXAMPLES)
    assert isinstance(predictor.head, AttentionPoolHead)
    assert predictor.head.config() == {"hidden_size": 32, "queries": 2, "hidden": 5, "num_heads": 8}
    assert predictor.head.out.bias.item() == pytest.approx(np.mean([e.target for e in EXAMPLES]))
    with pytest.raises(RaftlmError, match="attn_queries and attn_hidden are positive"):
        Config.build({"method": {"method": "head-attn", "attn_queries": 0}})


@pytest.mark.parametrize(
    "method, lm_head_trains",
    [("head-attn", False), ("head-pooled", False), ("head-mlp-logits", True), ("raft", True)],
)
def test_full_training_freezes_an_untied_lm_head_only_under_heads_that_skip_the_logits(
    method, lm_head_trains, monkeypatch
):
    """The tiny model's LM head is its own matrix (as Llama-3-8B's): under a head that reads the final hidden
    states it gets no gradient, so under a launch it is frozen (DDP failed on it); a head or loss that reads
    logits trains it, and the input embeddings train under full either way. One process leaves it as it
    was (the same numbers; a checkpoint of an earlier version holds its optimizer state)."""
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "trainable": "full"},
            "method": {"method": method, "grid": "1-5"},
        }
    )
    for processes, trains in (("1", True), ("2", lm_head_trains)):
        monkeypatch.setenv("WORLD_SIZE", processes)
        predictor = new_predictor(cfg, EXAMPLES)
        make_trainable(predictor, cfg)
        model = predictor.model
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
        assert model.get_output_embeddings().weight.requires_grad is trains
        assert model.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("trainable, frozen", [("none", 2), ("top-1", 1)])
def test_cached_loss_and_gradients_equal_the_uncached_path(tmp_path, trainable, frozen):
    method_cfg = {"method": "head-attn", "grid": "1-5", "target_range": "none", "attn_hidden": 16}
    cfg = Config.build({"model": {"name": "tiny-random-llama", "trainable": trainable}, "method": method_cfg})
    predictor = new_predictor(cfg, EXAMPLES)
    make_trainable(predictor, cfg)
    predictor.model.train()
    torch.nn.init.normal_(predictor.head.out.weight)  # else no gradient reaches past the output layer
    loss_fn = METHODS["head-attn"].loss(predictor, cfg.method)
    feats = build_features(predictor, EXAMPLES, "head-attn", None)
    assert frozen_blocks_to_cache(predictor, cfg) == frozen
    store = build_store(predictor.model, [f["prompt_ids"] for f in feats], frozen, predictor.pad_id, tmp_path)

    def loss_and_grads(inputs, k):
        model = predictor.model
        model.zero_grad()
        batch = PromptBatch(
            inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], False, inputs.get("hidden")
        )
        with skip_frozen(model, k):
            loss = loss_fn(model, batch, targets=inputs["targets"], answer_len=inputs["answer_len"])
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss0, grads0 = loss_and_grads(make_collator(predictor.pad_id)(feats), 0)
    loss1, grads1 = loss_and_grads(make_collator(predictor.pad_id, store=store)(feats), frozen)
    assert_close(loss1, loss0, atol=1e-6, rtol=1e-5)
    assert grads0.keys() == grads1.keys()
    assert ("model.layers.1.mlp.up_proj.weight" in grads0) == (trainable == "top-1")
    for name in grads0:
        assert grads0[name].abs().sum() > 0, name  # the queries, attention, MLP (and the top block)
        assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-4, msg=name)


TEXTS = [f"review {i}: the product was {w}. rating:" for i, w in enumerate(WORDS * 6)]
Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 6)


@pytest.mark.parametrize("trainable", ["none", "top-1"])
def test_trains_cached_saves_reloads_and_predicts_identically(tmp_path, monkeypatch, trainable):
    import raftlm.training

    built = []
    monkeypatch.setattr(
        raftlm.training, "build_store", lambda *a, **k: built.append(1) or build_store(*a, **k)
    )
    reg = RAFTRegressor(
        model="tiny-random-llama",
        method="head-attn",
        trainable=trainable,
        max_steps=4,
        batch_size=8,
        lr=1e-2,
        eval_steps=4,
        output_dir=str(tmp_path / "run"),
        progress_bar=False,
    )
    pred = reg.fit(TEXTS, Y).predict(TEXTS)  # 4 x 8 visits >= 30 examples: the frozen blocks are cached
    assert built and pred.shape == (30,) and np.all(np.isfinite(pred)) and np.std(pred) > 0
    reg.save(tmp_path / "saved")
    again = RAFTRegressor.load(tmp_path / "saved", device="cpu").predict(TEXTS)
    np.testing.assert_allclose(again, pred, rtol=1e-6, atol=1e-6)
    initial = tiny_random_llama(seed=0)[0].state_dict()
    trained = load_run(tmp_path / "saved").model.state_dict()
    assert torch.equal(
        trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"]
    )
    top = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(trained[top], initial[top]) == (trainable == "none")


def test_cli_flags_reach_the_saved_head_and_predict_reads_it(tmp_path, toy_csv):
    run = tmp_path / "run"
    extra = ("--method", "head-attn", "--attn-queries", "2", "--attn-hidden", "8", "--trainable", "none")
    assert main(train_args(toy_csv, run, *extra)) == 0
    head = json.loads((run / "raftlm.json").read_text())["head"]
    assert head == {
        "class": "AttentionPoolHead",
        "kwargs": {"hidden_size": 32, "queries": 2, "hidden": 8, "num_heads": 8},
    }
    out = tmp_path / "preds.jsonl"
    assert main(["predict", "--model", str(run), "--input", str(toy_csv), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [line.split(",")[0] for line in toy_csv.read_text().splitlines()[1:]]
    expected = load_run(run).predict(texts).values
    np.testing.assert_allclose([r["prediction"] for r in rows], expected, rtol=1e-5, atol=1e-6)


def test_lora_wraps_the_backbone_and_the_head_trains_whole():
    """With trainable lora, peft wrapped the attached head's own Linear layers too: LoRA branches beside
    their full weights (one on out_proj never read: MultiheadAttention reads out_proj.weight directly)."""
    cfg = Config.build(
        {"model": {"name": "tiny-random-llama", "trainable": "lora"}, "method": {"method": "head-attn"}}
    )
    examples = [Example(f"review {i}: fine. rating:", 1.0 + i % 5) for i in range(8)]
    predictor = new_predictor(cfg, examples)
    make_trainable(predictor, cfg)
    head = dict(predictor.model.named_modules())
    head = next(m for name, m in head.items() if name.endswith("raftlm_head"))
    assert not [n for n, _ in head.named_modules() if "lora" in n]
    assert all(p.requires_grad for p in head.parameters())
    assert [n for n, _ in predictor.model.named_modules() if "lora_A" in n]  # the backbone: LoRA
