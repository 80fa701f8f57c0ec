"""Issue 40: ce-ntl, CE on the answer tokens + ntl_weight x the number token loss of PyPI ntloss."""

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import train_args
from ntloss import NTLoss
from torch.testing import assert_close

from raftlm.cli import main
from raftlm.config import Config
from raftlm.core import Example, RaftlmError
from raftlm.grid import Grid
from raftlm.losses import CELoss, CENTLoss
from raftlm.methods import METHODS
from raftlm.pipeline import new_predictor
from raftlm.run import load_run
from raftlm.scoring import PromptBatch, bind_answer
from raftlm.training import build_features, chunked_loss, make_collator

WORDS = ["awful", "bad", "fine", "good", "great"]


def examples(targets):
    return [
        Example(f"review {i}: " + "so very " * i + f"{WORDS[i % 5]}. rating:", float(t))
        for i, t in enumerate(targets)
    ]


def setup(grid="1-5", targets=(1, 2, 3, 4, 5, 3), ntl_weight=0.3):
    method = {"method": "ce-ntl", "grid": grid, "target_range": "none", "ntl_weight": ntl_weight}
    cfg = Config.build({"model": {"name": "tiny-random-llama"}, "method": method})
    exs = examples(targets)
    predictor = new_predictor(cfg, exs)
    feats = build_features(predictor, exs, "ce-ntl", None)
    inputs = make_collator(predictor.pad_id)(feats)
    batch = PromptBatch(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"])
    return cfg, predictor, batch, inputs


def direct(model, tok, batch, answer_len):
    """CE and the package's NTL (its own mean over the batch's digit tokens) over full-sequence logits."""
    logits = model(**batch.model_inputs()).logits[:, :-1].float()
    labels = batch.input_ids[:, 1:].clone()
    width = labels.shape[1]
    labels[torch.arange(width)[None, :] < width - answer_len[:, None]] = -100  # prompt and padding
    # over a contiguous (tokens, V): a strided logsumexp over Gemma's 262k logits differs by 1e-4
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    ce = nll.view(labels.shape).sum(-1).mean()
    return ce, NTLoss(copy.deepcopy(tok))(logits, labels), labels


def test_the_loss_is_ce_plus_03_times_the_packages_ntl():
    cfg, predictor, batch, inputs = setup()
    loss_fn = METHODS["ce-ntl"].loss(predictor, cfg.method)
    assert isinstance(loss_fn, CENTLoss) and loss_fn.ntl_weight == 0.3
    model = predictor.model
    loss = loss_fn(model, batch, targets=inputs["targets"], answer_len=inputs["answer_len"])
    ce, ntl, labels = direct(model, predictor.tokenizer, batch, inputs["answer_len"])
    assert (labels != -100).sum() == 12  # six answers: one digit + EOS each, so the package's mean is ours
    assert ntl > 0.1
    assert_close(loss, ce + 0.3 * ntl)
    head = model.get_output_embeddings().weight
    assert_close(torch.autograd.grad(loss, head)[0], torch.autograd.grad(ce + 0.3 * ntl, head)[0])


def test_by_hand_half_on_the_target_digit_half_two_digits_away(tiny):
    # answer '3' + EOS; p('3') = p('5') = 0.5, then p(EOS) = 1: CE ln 2; NTL (W1) 0.5 * |5 - 3| = 1, all mass
    # on digits (no reweighing penalty) -> ln 2 + 0.3 * 1 = 0.9931
    _, tok = tiny
    three, five, eos = tok.convert_tokens_to_ids(["3", "5"]) + [tok.eos_token_id]
    logits = torch.full((1, 3, len(tok)), -1e4)
    logits[0, 0, [three, five]] = 0.0
    logits[0, 1, eos] = 0.0
    model = lambda **kw: SimpleNamespace(logits=logits)  # noqa: E731
    batch = PromptBatch(torch.tensor([[1, 50, three, eos]]), torch.ones(1, 4), torch.arange(4)[None])
    loss = CENTLoss(NTLoss(copy.deepcopy(tok)), 0.3)(model, batch, answer_len=torch.tensor([2]))
    assert_close(loss, torch.tensor(math.log(2) + 0.3))


def test_ntl_weight_zero_is_plain_ce():
    cfg, predictor, batch, inputs = setup(ntl_weight=0.0)
    loss = METHODS["ce-ntl"].loss(predictor, cfg.method)(
        predictor.model, batch, answer_len=inputs["answer_len"]
    )
    assert_close(loss, CELoss()(predictor.model, batch, answer_len=inputs["answer_len"]), rtol=0, atol=0)
    with pytest.raises(RaftlmError, match="ntl_weight=-1.0: use a finite weight >= 0"):
        Config.build({"method": {"method": "ce-ntl", "ntl_weight": -1}})


def test_length_chunks_give_the_batchs_loss_with_answers_of_one_two_and_three_digits():
    # answers '1', '12', '123': the package's own mean over the batch's digits would weigh '123' three
    # times; the loss is a mean over examples (each its digits' mean), as length chunks need
    cfg, predictor, batch, inputs = setup("1,12,123", (1, 12, 123, 1, 12, 123, 12))
    loss_fn = METHODS["ce-ntl"].loss(predictor, cfg.method)
    model, targets, answer_len = predictor.model, inputs["targets"], inputs["answer_len"]
    assert answer_len.tolist() == [2, 3, 4, 2, 3, 4, 3]
    losses, grads = [], []
    for k in (1, 2, 3, 7):
        loss = chunked_loss(loss_fn, model, batch, targets, answer_len, k)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, model.get_output_embeddings().weight)[0])
    for loss, grad in zip(losses[1:], grads[1:], strict=True):
        assert_close(loss, losses[0], atol=1e-6, rtol=1e-5)
        assert_close(grad, grads[0], atol=1e-6, rtol=1e-4)
    ce, _, labels = direct(model, predictor.tokenizer, batch, answer_len)
    logits = model(**batch.model_inputs()).logits[:, :-1].float()
    per_token = NTLoss(copy.deepcopy(predictor.tokenizer))(logits, labels, reduction="none")
    digits = torch.tensor([1, 2, 3, 1, 2, 3, 2])
    assert ((per_token != 0).sum(-1) == digits).all()
    assert_close(losses[0], ce + 0.3 * (per_token.sum(-1) / digits).mean())


def test_a_tokenizer_that_merges_digits_or_a_grid_without_digits_is_a_one_line_error(tiny_merged, tiny):
    model, tok = tiny_merged  # GPT-2 style: ' 3' is one token, which the number token loss cannot read
    before = (len(tok), len(tok.added_tokens_decoder), tok.tokenize(" 3 rating: 12"))
    grid = Grid.parse("1-5")
    fake = SimpleNamespace(tokenizer=tok, grid=grid, fmt=bind_answer(tok, grid, ["rating:"]), model=model)
    with pytest.raises(RaftlmError, match=r"^ce-ntl: the answer '1' is tokenized as \['Ġ1'\].*use ce"):
        METHODS["ce-ntl"].loss(fake, Config().method)
    # ntloss adds the digits to the tokenizer it gets (splitting ' 3'): it got a copy
    assert (len(tok), len(tok.added_tokens_decoder), tok.tokenize(" 3 rating: 12")) == before
    model, tok = tiny
    letters = Grid.parse("1=a,2=b,3=c,4=d,5=e")
    fake = SimpleNamespace(
        tokenizer=tok, grid=letters, fmt=bind_answer(tok, letters, ["rating:"]), model=model
    )
    with pytest.raises(RaftlmError, match="grid strings hold no digits"):
        METHODS["ce-ntl"].loss(fake, Config().method)


def test_trains_and_predicts_with_rail_and_greedy(tmp_path, toy_csv):
    run = tmp_path / "run"
    assert main(train_args(toy_csv, run, "--method", "ce-ntl", "--ntl-weight", "0.5")) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["ntl_weight"] == 0.5
    results = json.loads((run / "eval_results.json").read_text())
    assert np.isfinite(results["train"]["train_loss"]) and np.isfinite(results["test"]["rmse"])
    predictor = load_run(run)
    texts = [f"review {i}: the product was {w}. rating:" for i, w in enumerate(WORDS)]
    rail = predictor.predict(texts)
    assert rail.probs.shape == (5, 5) and np.all(np.isfinite(rail.values))
    assert predictor.predict(texts, "greedy").values.shape == (5,)


@pytest.mark.slow
def test_gemma_tokenizer_digits_are_the_number_tokens():
    """Gemma 3: digits are single tokens and ' 3' is '▁' + '3' (the '▁' folded into the prompt)."""
    from raftlm.models import load_model

    model, tok = load_model("gemma-3-270m")
    grid = Grid.parse("0:5:0.5")
    fake = SimpleNamespace(tokenizer=tok, grid=grid, fmt=bind_answer(tok, grid, ["Similarity:"]), model=model)
    loss_fn = METHODS["ce-ntl"].loss(fake, Config().method)
    digits = tok.convert_tokens_to_ids([str(d) for d in range(10)])
    assert sorted(loss_fn.ntl.number_token_ids.tolist()) == sorted(digits) and fake.fmt.fold_prefix
    ids = [tok("<bos>Similarity: " + s, add_special_tokens=False)["input_ids"] for s in ("2.5", "4.0")]
    batch = PromptBatch(
        torch.tensor(ids),
        torch.ones(2, len(ids[0]), dtype=torch.long),
        torch.arange(len(ids[0]))[None].expand(2, -1),
    )
    with torch.no_grad():
        loss = loss_fn(model, batch, answer_len=torch.tensor([3, 3]))
        ce, ntl, _ = direct(model, tok, batch, torch.tensor([3, 3]))
    assert_close(loss, ce + 0.3 * ntl)  # two digits per answer: the package's mean is ours
