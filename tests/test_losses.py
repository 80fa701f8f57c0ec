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
