import math
from types import SimpleNamespace

import torch
from torch.testing import assert_close

from raftlm.losses import CELoss, RAFTLoss, raft_predictor
from raftlm.scoring import PromptBatch, left_pad

VALUES = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])


class FixedScorer:
    """Stands in for GridLogProbs: returns given log-probabilities."""

    def __init__(self, logp):
        self.logp = logp

    def __call__(self, model, batch):
        return self.logp


def test_raft_loss_by_hand():
    # p=(0,0,.5,.5,0) -> y_hat 3.5, target 4 -> .25 ; uniform -> 3, target 1 -> 4 ; mean 2.125
    probs = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.2] * 5])
    loss = RAFTLoss(FixedScorer(probs.log()), VALUES)(None, None, targets=torch.tensor([4.0, 1.0]))
    assert_close(loss, torch.tensor(2.125))


def test_raft_predictor_normalized():
    # mass .5 on '2' and .3 on '4': unnormalized 2.2 ; normalized 2.2/.8 = 2.75
    logp = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.0]]).log()
    assert_close(raft_predictor(logp, VALUES), torch.tensor([2.2]))
    assert_close(raft_predictor(logp, VALUES, normalize_grid=True), torch.tensor([2.75]))


def test_raft_predictor_normalized_on_a_dead_grid_keeps_a_value_and_a_gradient():
    # log-probs near -200 underflow to 0 in float32: mass / mass was 0 / 0 = NaN
    logp = torch.tensor([[-200.0, -199.0, -200.0, -200.0, -200.0]], requires_grad=True)
    assert logp.exp().sum() == 0
    pred = raft_predictor(logp, VALUES, normalize_grid=True)
    expected = (torch.softmax(logp.detach().double(), -1) @ VALUES.double()).float()
    assert_close(pred.detach(), expected)  # 2 - ... : most mass on '2'
    pred.sum().backward()
    assert torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0


def test_lemma3_raft_minimizer_reaches_the_mean_including_non_integer_targets():
    # targets 1.5, 2.5, 4.1 (none on the grid) have mean 2.7; a free distribution over {1..5}
    # trained with the RAFT loss must put its RAIL prediction at exactly E[y] = 2.7
    targets = torch.tensor([1.5, 2.5, 4.1])
    theta = torch.zeros(5, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=0.5, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, -1).expand(3, 5)
        loss = RAFTLoss(FixedScorer(logp), VALUES)(None, None, targets=targets)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    pred = raft_predictor(torch.log_softmax(theta, -1)[None], VALUES)
    assert_close(pred, torch.tensor([2.7]), atol=1e-4, rtol=0)


class FakeLM:
    """Returns fixed logits for the kept positions, as a causal LM with logits_to_keep does."""

    def __init__(self, logits):
        self.logits = logits

    def __call__(self, input_ids, attention_mask, position_ids, logits_to_keep):
        return SimpleNamespace(logits=self.logits[:, -logits_to_keep:])


def test_ce_loss_by_hand_masks_prompt_and_padding():
    # vocab 4. Row 0: answer [2] (1 token); row 1: answer [3, 1] (2 tokens). Uniform logits everywhere
    # except the position predicting row 0's answer, where p(2) = e^2/(e^2+3) .
    batch = left_pad([[1, 1, 0, 2], [1, 0, 3, 1]], pad_id=0)
    logits = torch.zeros(2, 4, 4)
    logits[0, 2, 2] = 2.0  # position 2 predicts token at position 3 (row 0's answer)
    loss = CELoss()(FakeLM(logits), batch, answer_len=torch.tensor([1, 2]))
    row0 = -math.log(math.e**2 / (math.e**2 + 3))
    row1 = 2 * math.log(4)
    assert_close(loss, torch.tensor((row0 + row1) / 2))


def test_raft_loss_on_a_real_model_matches_brute_force(tiny):
    from raftlm.grid import Grid
    from raftlm.scoring import GridLogProbs, bind_answer, encode_prompts, naive_log_probs

    model, tok = tiny
    texts = ["the movie was great. rating:", "bad. rating:"]
    fmt = bind_answer(tok, Grid.parse("1-5"), texts)
    batch = left_pad(encode_prompts(tok, fmt, texts, 64), tok.pad_token_id)
    targets = torch.tensor([4.0, 2.5])
    loss = RAFTLoss(GridLogProbs(fmt, tok.pad_token_id), VALUES)(
        model, PromptBatch(batch.input_ids, batch.attention_mask, batch.position_ids), targets=targets
    )
    with torch.no_grad():
        pred = naive_log_probs(model, tok, fmt, texts).exp() @ VALUES
    assert_close(loss, ((pred - targets) ** 2).mean(), atol=1e-5, rtol=1e-5)


def test_ce_targets_nearest_is_one_hot_and_two_hot_has_the_target_as_its_mean():
    from raftlm.losses import ce_targets

    values = torch.tensor([1.0, 2.0, 3.0])
    y = torch.tensor([2.25, 3.0, 0.5, 3.7, 1.0])  # between, on the top value, below and above the grid, on
    assert_close(ce_targets(y, values), torch.eye(3)[[1, 2, 0, 2, 0]])
    two_hot = ce_targets(y, values, "two-hot")
    assert_close(two_hot, torch.tensor([[0, 0.75, 0.25], [0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]]))
    assert_close(two_hot @ values, y.clamp(1, 3))  # the mean is the target, clipped to the grid
    shuffled = torch.tensor([3.0, 1.0, 2.0])  # a grid in any order: weights follow the values
    assert_close(ce_targets(y[:1], shuffled, "two-hot"), torch.tensor([[0.25, 0, 0.75]]))
    assert_close(ce_targets(y[:2], torch.tensor([2.0]), "two-hot"), torch.ones(2, 1))  # one value: one-hot


def test_two_hot_ce_agrees_with_the_squared_loss_where_the_nearest_one_hot_pulls_onto_the_grid():
    # p = (0, 0, .5, .5, 0): target 3.5 -> squared loss 0, two-hot CE ln 2 (0.5 on '3', 0.5 on '4'); nearest: '4'
    logp = torch.tensor([[1e-30, 1e-30, 0.5, 0.5, 1e-30]]).log()
    half = RAFTLoss(FixedScorer(logp), VALUES, ce_weight=0.5, ce_target="two-hot")
    assert_close(half(None, None, targets=torch.tensor([3.5])), torch.tensor(0.5 * math.log(2)))
    on_grid = torch.tensor([4.0])  # on a grid value both targets are the same one-hot
    nearest = RAFTLoss(FixedScorer(logp), VALUES, ce_weight=0.5)
    assert_close(half(None, None, targets=on_grid), nearest(None, None, targets=on_grid))

    # a free distribution over {1..5} fit to one off-grid target 3.25 with RAFT + 1.0 x CE: with two-hot
    # targets both terms have one optimum, (0, 0, .75, .25, 0), which predicts 3.25; the nearest value's
    # one-hot wins over the squared loss (moving mass e to '4' saves 0.5e of it and costs e of CE) and
    # predicts '3' exactly: the target rounded to the grid
    def fit(ce_target: str) -> torch.Tensor:
        theta = torch.zeros(5, requires_grad=True)
        opt = torch.optim.LBFGS([theta], lr=0.5, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)
        loss_fn = RAFTLoss(None, VALUES, ce_weight=1.0, ce_target=ce_target)

        def closure():
            opt.zero_grad()
            loss_fn.scorer = FixedScorer(torch.log_softmax(theta, -1)[None])
            loss = loss_fn(None, None, targets=torch.tensor([3.25]))
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        return torch.softmax(theta.detach(), -1)

    p = fit("two-hot")
    assert_close(p, torch.tensor([0.0, 0.0, 0.75, 0.25, 0.0]), atol=2e-3, rtol=0)
    assert_close(p @ VALUES, torch.tensor(3.25), atol=1e-3, rtol=0)
    p = fit("nearest")
    assert_close(p, torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]), atol=1e-3, rtol=0)


def test_the_ce_term_ignores_grid_values_off_its_target_even_at_zero_probability():
    logp = torch.tensor([[-math.inf, -math.inf, math.log(0.5), math.log(0.5), -math.inf]], requires_grad=True)
    for ce_target in ("nearest", "two-hot"):
        loss = RAFTLoss(FixedScorer(logp), VALUES, ce_weight=1.0, ce_target=ce_target)
        value = loss(None, None, targets=torch.tensor([3.5 if ce_target == "two-hot" else 4.0]))
        assert_close(value.detach(), torch.tensor(math.log(2) + (0.25 if ce_target == "nearest" else 0.0)))
        (grad,) = torch.autograd.grad(value, logp)
        assert torch.isfinite(grad).all()
