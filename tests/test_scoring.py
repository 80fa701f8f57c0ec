import pytest
import torch
from torch.testing import assert_close

from raftlm.core import RaftlmError
from raftlm.grid import Grid
from raftlm.scoring import GridLogProbs, bind_answer, encode_prompts, left_pad, naive_log_probs

TEXTS = [
    "the similarity between the two sentences is equal to",
    "a man is playing a guitar. rating:",
    "input score: 12.34. output score:",
]


def scores(model, tok, fmt, texts, max_length=128):
    batch = left_pad(encode_prompts(tok, fmt, texts, max_length), tok.pad_token_id)
    with torch.no_grad():
        return GridLogProbs(fmt, tok.pad_token_id)(model, batch)


def test_space_is_folded_into_the_prompt_when_it_is_its_own_token(tiny):
    model, tok = tiny
    fmt = bind_answer(tok, Grid.parse("1-5"), TEXTS)
    assert fmt.fold_prefix and fmt.single_token
    assert [tok.decode(list(c)) for c in fmt.candidates] == ["1", "2", "3", "4", "5"]
    # the prompt + candidate equals how the tokenizer encodes the full answered text
    ids = encode_prompts(tok, fmt, TEXTS[:1], 128)[0]
    assert ids + list(fmt.candidates[2]) == tok(TEXTS[0] + " 3")["input_ids"]


def test_merged_space_digit_tokens_stay_in_the_candidate(tiny_merged):
    model, tok = tiny_merged
    assert len(tok(" 3", add_special_tokens=False)["input_ids"]) == 1  # ' 3' is one token here
    fmt = bind_answer(tok, Grid.parse("1-5"), TEXTS)
    assert not fmt.fold_prefix
    ids = encode_prompts(tok, fmt, TEXTS[:1], 128)[0]
    assert ids + list(fmt.candidates[2]) == tok(TEXTS[0] + " 3")["input_ids"]
    assert_close(
        scores(model, tok, fmt, TEXTS), naive_log_probs(model, tok, fmt, TEXTS), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("fixture", ["tiny", "tiny_merged"])
def test_batched_scores_equal_one_at_a_time(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    fmt = bind_answer(tok, Grid.parse("1-5"), TEXTS)
    batched = scores(model, tok, fmt, TEXTS)  # different lengths -> left padding
    single = torch.cat([scores(model, tok, fmt, [t]) for t in TEXTS])
    assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "spec", ["0:5:0.1", "1=January,2=February,3=March,4=April,5=May", "10,11,12,100,1000"]
)
def test_multi_token_scoring_equals_brute_force(tiny, spec):
    model, tok = tiny
    fmt = bind_answer(tok, Grid.parse(spec), TEXTS)
    assert not fmt.single_token
    assert_close(
        scores(model, tok, fmt, TEXTS), naive_log_probs(model, tok, fmt, TEXTS), atol=1e-5, rtol=1e-5
    )


def test_multi_token_trie_reads_only_distinct_prefixes(tiny):
    model, tok = tiny
    fmt = bind_answer(tok, Grid.parse("0:5:0.1"), TEXTS)
    assert len(GridLogProbs(fmt, tok.pad_token_id).paths) == 6  # '0.' .. '5.' serve all 51 strings


def test_multi_token_scores_are_differentiable(tiny):
    model, tok = tiny
    fmt = bind_answer(tok, Grid.parse("0:2:0.5"), TEXTS)
    batch = left_pad(encode_prompts(tok, fmt, TEXTS, 128), tok.pad_token_id)
    lp = GridLogProbs(fmt, tok.pad_token_id)(model, batch)
    lp.exp().sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_long_prompt_is_truncated_on_the_left_keeping_the_cue(tiny):
    model, tok = tiny
    fmt = bind_answer(tok, Grid.parse("1-5"), TEXTS)
    long_text = "blah " * 200 + "rating:"
    with pytest.warns(UserWarning, match="truncated from the left"):
        ids = encode_prompts(tok, fmt, [long_text], 32)[0]
    assert len(ids) == 31 and ids[0] == tok.bos_token_id
    assert tok.decode(ids[-3:]).endswith("rating: ")


def test_grid_string_the_tokenizer_cannot_produce():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "rating": 2, ":": 3, "1": 4, "2": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>")
    with pytest.raises(RaftlmError, match="cannot be produced by this tokenizer"):
        bind_answer(tok, Grid.parse("1=1,2=2,3=xyz"), ["rating :"], answer_prefix="")


@pytest.mark.parametrize("rows", [1, 3, 9, 13, 16])
def test_tall_weight_linear_is_f_linear_forward_and_backward(rows, monkeypatch):
    from raftlm.scoring import TALL, TallWeightLinear, linear_in_weight_dtype

    torch.manual_seed(0)
    weight = torch.randn(TALL + 5, 8, requires_grad=True)
    x = torch.randn(rows, 8, requires_grad=True)
    outs, grads = [], []
    for fn in (torch.nn.functional.linear, TallWeightLinear.apply, linear_in_weight_dtype):
        out = fn(x, weight)
        (out.logsumexp(-1) * torch.arange(1.0, rows + 1)).sum().backward()
        outs.append(out.detach())
        grads.append((x.grad.clone(), weight.grad.clone()))
        x.grad = weight.grad = None
    for out, (gx, gw) in zip(outs[1:], grads[1:], strict=True):
        assert out.shape == (rows, TALL + 5) and out.is_contiguous()
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, grads[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gw, grads[0][1], rtol=1e-5, atol=1e-6)
    calls = []  # a CPU head taller than TALL rows goes through TallWeightLinear, a shorter one F.linear
    original = TallWeightLinear.apply
    monkeypatch.setattr(TallWeightLinear, "apply", lambda *a: calls.append(1) or original(*a))
    linear_in_weight_dtype(x, weight)
    linear_in_weight_dtype(x, weight[:TALL])
    assert calls == [1]
