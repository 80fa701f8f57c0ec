"""Issue 3: predictive heads, MBR and log-loss, ablation switches (pinned numbers; hand arithmetic)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from raftlm.config import Config
from raftlm.heads import (
    LearnableRAFTHead,
    MLPLogitsHead,
    PooledHead,
    ProbProjectionHead,
    SpecialTokenHead,
    pool,
)
from raftlm.losses import MBRLoss, RAFTLogLoss, RAFTLoss, raft_predictor
from raftlm.methods import METHODS
from raftlm.models import add_number_tokens, load_model
from raftlm.pipeline import train_run
from raftlm.run import load_run
from raftlm.scoring import left_pad
from raftlm.testing import tiny_random_llama

VALUES = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])


class FakeLM:
    """A causal LM stand-in with fixed final-position logits (vocab 6) and hidden states (dim 2)."""

    def __init__(self, logits, hidden):
        self.logits, self.hidden = logits, hidden
        self.config = SimpleNamespace()

    def get_output_embeddings(self):
        return object()

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep=0, output_hidden_states=False):
        return SimpleNamespace(logits=self.logits[:, None, :], hidden_states=(self.hidden,))


LOGITS = torch.tensor([[0.0, 2.5, 0.0, 0.0, 0.0, math.log(3.0)]])  # softmax: 1,e^2.5,1,1,1,3 / (7 + e^2.5)
HIDDEN = torch.tensor([[[9.0, 9.0], [1.0, -2.0], [3.0, 4.0]]])  # position 0 is padding
BATCH = left_pad([[5, 6]], pad_id=0)
BATCH.attention_mask = torch.tensor([[0, 1, 1]])
BATCH.input_ids = torch.tensor([[0, 5, 6]])
FAKE = FakeLM(LOGITS, HIDDEN)


def test_special_token_head_is_bias_plus_that_logit():
    assert_close(SpecialTokenHead(token_id=1, bias=1.0)(FAKE, BATCH), torch.tensor([3.5]))  # 1.0 + 2.5


def test_pooling_ignores_padding():
    # real rows (1,-2) and (3,4): mean (2,1), min (1,-2), max (3,4); cls = first real row
    assert_close(pool(HIDDEN, BATCH.attention_mask, "mean"), torch.tensor([[2.0, 1.0]]))
    assert_close(pool(HIDDEN, BATCH.attention_mask, "min"), torch.tensor([[1.0, -2.0]]))
    assert_close(pool(HIDDEN, BATCH.attention_mask, "max"), torch.tensor([[3.0, 4.0]]))
    assert_close(pool(HIDDEN, BATCH.attention_mask, "cls"), torch.tensor([[1.0, -2.0]]))
    head = PooledHead(2, "mean", bias=0.5)
    head.linear.weight.data = torch.tensor([[1.0, 2.0]])
    assert_close(head(FAKE, BATCH), torch.tensor([4.5]))  # 0.5 + 1*2 + 2*1


def test_mlp_logits_head_by_hand():
    # LOGITS standardized: mean m = (2.5 + ln 3) / 6, biased std sd; unit weight (0, sqrt(6), 0, ...)
    # scaled by 1/sqrt(6) reads z_1 = (2.5 - m) / sd; first bias -z_1 -> sigmoid(0) = 0.5 -> 1 + 4 * 0.5
    head = MLPLogitsHead(vocab_size=6, hidden=1, bias=0.0)
    m = (2.5 + math.log(3.0)) / 6
    sd = math.sqrt(sum((v - m) ** 2 for v in LOGITS[0].tolist()) / 6)
    head.inp.weight.data = torch.tensor([[0.0, math.sqrt(6.0), 0.0, 0.0, 0.0, 0.0]])
    head.inp.bias.data = torch.tensor([-(2.5 - m) / sd])
    head.out.weight.data = torch.tensor([[4.0]])
    head.out.bias.data = torch.tensor([1.0])
    assert_close(head(FAKE, BATCH), torch.tensor([3.0]))
    fresh = MLPLogitsHead(vocab_size=6, hidden=8, bias=2.5)
    assert_close(fresh(FAKE, BATCH), torch.tensor([2.5]))  # output weight starts at zero


def test_prob_projection_head_by_hand():
    head = ProbProjectionHead(vocab_size=6, bias=1.0)
    head.weight.data = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0])
    z = 7 + math.exp(2.5)
    assert_close(head(FAKE, BATCH), torch.tensor([1.0 + 2.0 * 3.0 / z]))


@pytest.mark.parametrize("scope", ["grid", "all"])
def test_learnable_raft_starts_at_the_raft_solution(scope):
    # grid '1'..'5' are token ids 1..5 here; RAIL = sum_y y p(y) with p = softmax(LOGITS)
    head = LearnableRAFTHead([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], vocab_size=6, scope=scope)
    p = torch.softmax(LOGITS, -1)[0, 1:6]
    assert_close(head(FAKE, BATCH), (p @ VALUES)[None])


def test_heads_keep_float32_outputs_under_bf16_autocast():
    # bf16 has steps of 1/64 between 2 and 4: a head whose Linear ran in bf16 would round 2.7031 + d to
    # one value and flatten regression outputs (measured: head-mlp-logits predicted one constant on STS-B)
    pooled = PooledHead(2, "mean", bias=2.7031)
    pooled.linear.weight.data = torch.tensor([[1e-3, 0.0]])
    mlp = MLPLogitsHead(vocab_size=6, hidden=1, bias=2.7031)
    mlp.out.weight.data = torch.tensor([[1e-3]])
    proj = ProbProjectionHead(vocab_size=6, bias=2.7031)
    proj.weight.data = torch.tensor([0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
    learn = LearnableRAFTHead([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], vocab_size=6, scope="grid")
    for head in (pooled, mlp, proj, learn):
        exact = head(FAKE, BATCH)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_bf16 = head(FAKE, BATCH)
        assert under_bf16.dtype == torch.float32
        assert_close(under_bf16, exact, rtol=0, atol=1e-6)


def test_mbr_and_logloss_by_hand():
    probs = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0]])
    scorer = lambda m, b: probs.log()  # noqa: E731
    assert_close(
        MBRLoss(scorer, VALUES)(None, None, targets=torch.tensor([4.0])), torch.tensor(0.5)
    )  # .5*1 + .5*0
    # half the mass off the grid renormalizes to the same distribution: the same loss, no escape route
    off = torch.tensor([[0.0, 0.0, 0.25, 0.25, 0.0]])
    assert_close(
        MBRLoss(lambda m, b: off.log(), VALUES)(None, None, targets=torch.tensor([4.0])), torch.tensor(0.5)
    )
    two = torch.tensor([[0.2, 0.8]])
    loss = RAFTLogLoss(lambda m, b: two.log(), torch.tensor([0.0, 1.0]))(
        None, None, targets=torch.tensor([0.5])
    )
    assert_close(loss, torch.tensor(-(0.5 * math.log(0.8) + 0.5 * math.log(0.2))))  # 0.916


def test_lemma4_mbr_minimizer_is_one_hot_while_raft_reaches_the_mean():
    targets = torch.tensor([1.5, 2.5, 4.1])  # E[y] = 2.7; nearest grid value 3

    def fit(loss_cls):
        theta = torch.zeros(5, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=0.1)
        for _ in range(3000):
            opt.zero_grad()
            logp = torch.log_softmax(theta, -1).expand(3, 5)
            loss_cls(lambda m, b: logp, VALUES)(None, None, targets=targets).backward()  # noqa: B023
            opt.step()
        return torch.softmax(theta, -1).detach()

    p_mbr = fit(MBRLoss)
    assert p_mbr.argmax() == 2 and p_mbr[2] > 0.99  # one-hot on '3'
    p_raft = fit(RAFTLoss)
    assert_close(raft_predictor(p_raft.log()[None], VALUES), torch.tensor([2.7]), atol=1e-3, rtol=0)
    assert p_raft.max() < 0.9  # RAFT keeps a spread distribution


@pytest.mark.parametrize("init", ["zero", "first", "average", "random"])
def test_new_number_tokens_initialization(init):
    model, tok = tiny_random_llama(seed=0)
    emb = model.get_input_embeddings().weight.detach().clone()
    new = add_number_tokens(model, tok, ["0.5", "3.5"], init, seed=0)
    assert new == ["<0.5>", "<3.5>"]
    ids = tok.convert_tokens_to_ids(new)
    assert tok("<3.5>", add_special_tokens=False)["input_ids"] == [ids[1]]  # a single new token
    w = model.get_input_embeddings().weight.detach()
    pieces = tok("3.5", add_special_tokens=False)["input_ids"]
    if init == "zero":
        assert torch.all(w[ids[1]] == 0)
    elif init == "first":
        assert_close(w[ids[1]], emb[pieces[0]])
    elif init == "average":
        assert_close(w[ids[1]], emb[pieces].mean(0))
    else:
        assert 0 < w[ids[1]].std() < 0.1
    out = model.get_output_embeddings().weight.detach()  # untied output rows get the same rule
    if init == "first":
        assert_close(out[ids[1]], model.get_output_embeddings().weight[pieces[0]].detach())


def test_bidirectional_mask_lets_early_positions_see_later_tokens(tiny):
    model, tok = tiny
    a, b = [1, 20, 21, 22, 23], [1, 20, 21, 22, 30]  # differ only in the last token

    def first_positions(seq, bidirectional):
        batch = left_pad([seq], tok.pad_token_id, bidirectional)
        with torch.no_grad():
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.model_mask(), position_ids=batch.position_ids
            )
        return out.logits[0, :3]

    assert_close(first_positions(a, False), first_positions(b, False))  # causal: the future is invisible
    assert not torch.allclose(first_positions(a, True), first_positions(b, True), atol=1e-4)


def test_ce_refuses_bidirectional_attention(tmp_path, toy_csv):
    from raftlm.core import RaftlmError

    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "attention": "bidirectional"},
            "data": {"dataset": f"csv:{toy_csv}"},
            "method": {"method": "ce"},
            "training": {"output_dir": str(tmp_path / "r")},
        }
    )
    with pytest.raises(RaftlmError, match="ce with bidirectional attention degenerates"):
        train_run(cfg)


def test_random_init_keeps_the_architecture_but_not_the_weights(tmp_path):
    model, tok = tiny_random_llama(seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    fresh, _ = load_model(str(tmp_path / "m"), init="random", seed=1)
    assert fresh.config.num_hidden_layers == 2
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(fresh.state_dict()[key], model.state_dict()[key])


METHOD_SETTINGS = {
    "encoder-cls": {"model": "tiny-random-bert"},
    "encoder-mean": {"model": "tiny-random-bert", "trainable": "none"},
    "raft-logloss": {},
    "head-pooled": {"pooling": "max"},
    "learnable-raft": {"learnable_scope": "all"},
    "raft": {"attention": "bidirectional"},
    "ce": {"new_tokens": "first", "grid": "1:5:0.5"},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_reloads_and_predicts_identically(tmp_path, toy_csv, method):
    extra = METHOD_SETTINGS.get(method, {})
    cfg = Config.build(
        {
            "model": {
                "name": extra.get("model", "tiny-random-llama"),
                "trainable": extra.get("trainable", "full"),
                "attention": extra.get("attention", "causal"),
            },
            "data": {"dataset": f"csv:{toy_csv}"},
            "method": {
                "method": method,
                **{
                    k: v
                    for k, v in extra.items()
                    if k in ("pooling", "learnable_scope", "new_tokens", "grid")
                },
            },
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 3,
                "batch_size": 8,
                "lr": 1e-2,
                "eval_steps": 3,
            },
        }
    )
    run = train_run(cfg)
    texts = [f"review {i}: the product was fine. rating:" for i in range(5)]
    loaded = load_run(run)
    first = loaded.predict(texts).values
    again = load_run(run).predict(texts).values
    assert np.all(np.isfinite(first)) and first.shape == (5,)
    np.testing.assert_allclose(first, again, rtol=1e-6, atol=1e-7)
    assert (run / "head.safetensors").exists() == (METHODS[method].head is not None)


TABLE13_GRIDS = {
    "digit '5' only": ("5", True),
    "digits '1','9'": ("1,9", False),
    "digits '7','8','9'": ("7,8,9", False),
    "characters 'a'-'e'": ("1=a,2=b,3=c,4=d,5=e", False),
    "reversed digits": ("1=5,2=4,3=3,4=2,5=1", False),
    "months": ("1=January,2=February,3=March,4=April,5=May", False),
}


@pytest.mark.parametrize("name", sorted(TABLE13_GRIDS))
def test_grid_ablations_of_tables_13_14_20_train(tmp_path, toy_csv, name):
    spec, single = TABLE13_GRIDS[name]
    cfg = Config.build(
        {
            "model": {"name": "tiny-random-llama", "trainable": "full"},
            "data": {"dataset": f"csv:{toy_csv}"},
            "method": {"method": "raft", "grid": spec, "single_value_grid": single, "target_range": "1,5"},
            "training": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 2,
                "batch_size": 8,
                "lr": 1e-2,
                "eval_steps": 2,
            },
        }
    )
    run = train_run(cfg)
    p = load_run(run)
    assert p.grid.strings == tuple(s.split("=")[-1] for s in spec.split(","))
    values = p.predict(["review 1: the product was fine. rating:"]).values
    assert np.isfinite(values).all()


def test_single_value_grid_spans_zero_to_its_value():
    from raftlm.core import RaftlmError
    from raftlm.grid import Grid

    with pytest.raises(RaftlmError, match="--single-value-grid"):
        Grid.parse("5")
    g = Grid.parse("5", single=True)
    assert (g.low, g.high) == (0.0, 5.0) and Grid.from_dict(g.to_dict()) == g
