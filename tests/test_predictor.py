import numpy as np
import pytest

from raftlm.decoders import median, mode, parse_float, rail
from raftlm.grid import Grid, TargetScaler
from raftlm.predictor import Predictor

TEXTS = ["the movie was great. rating:", "bad. rating:", "input score: 12.34. output score:"]


def make(tiny, scaler=None):
    model, tok = tiny
    grid = Grid.parse("1-5")
    return Predictor.create(model, tok, grid, scaler or TargetScaler.identity(grid), TEXTS)


def test_grid_decoders_apply_the_pure_rules_to_the_model_probabilities(tiny):
    p = make(tiny)
    probs = np.exp(p.grid_log_probs(TEXTS))
    np.testing.assert_allclose(p.predict(TEXTS, "rail").values, rail(p.grid.array, probs))
    np.testing.assert_allclose(p.predict(TEXTS, "mode").values, mode(p.grid.array, probs))
    np.testing.assert_allclose(p.predict(TEXTS, "median").values, median(p.grid.array, probs))
    assert p.predict(TEXTS, "rail").entropy.shape == (3,)


def test_predictions_are_mapped_back_through_the_scaler(tiny):
    scaled = make(tiny, TargetScaler(-4.0, 4.0, 1.0, 5.0))
    plain = make(tiny)
    # the model predicts on the grid 1..5; data units are [-4, 4]: g -> -4 + (g - 1) * 2
    np.testing.assert_allclose(
        scaled.predict(TEXTS, "mode").values, -4 + (plain.predict(TEXTS, "mode").values - 1) * 2
    )


def test_greedy_is_the_parsed_decode_and_sampling_averages_k_draws(tiny):
    p = make(tiny)
    decoded = p.generate(TEXTS, max_new_tokens=4)
    greedy = p.predict(TEXTS, "greedy", max_new_tokens=4)
    np.testing.assert_allclose(greedy.values, [parse_float(d[0]) for d in decoded])
    samples = p.generate(TEXTS, num_return_sequences=4, do_sample=True, max_new_tokens=4, seed=3)
    assert [len(s) for s in samples] == [4, 4, 4]
    sampled = p.predict(TEXTS, "sample-rail", num_samples=4, max_new_tokens=4, seed=3)
    np.testing.assert_allclose(sampled.values, [np.mean([parse_float(s) for s in row]) for row in samples])


def test_text_that_is_not_a_number_is_counted_per_row_and_said(tiny):
    """eq. 1 counts a decoded text that is not a number as 0.0; each row says how many of its texts did,
    and a warning says it at all (a random model's text rarely is a number)."""
    from raftlm.core import RaftlmWarning
    from raftlm.predictor import unparsed_said_once

    p = make(tiny)
    samples = p.generate(TEXTS, num_return_sequences=4, do_sample=True, max_new_tokens=4, seed=3)
    want = [sum(np.isnan(parse_float(s, np.nan)) for s in row) for row in samples]
    assert sum(want) > 0
    with pytest.warns(
        RaftlmWarning, match=rf"{sum(want)} of 12 decoded texts were not a number and count as 0.0"
    ):
        sampled = p.predict(TEXTS, "sample-rail", num_samples=4, max_new_tokens=4, seed=3)
    assert sampled.unparsed.tolist() == want and sampled.n_unparsed == sum(want)
    assert p.predict(TEXTS, "rail").unparsed is None
    with pytest.warns(RaftlmWarning) as said, unparsed_said_once():  # several calls: one line, the total
        for _ in range(3):
            p.predict(TEXTS, "sample-rail", num_samples=4, max_new_tokens=4, seed=3)
    assert [str(w.message).split(" decoded")[0] for w in said] == [f"{3 * sum(want)} of 36"]


def test_a_rows_samples_do_not_depend_on_the_rows_beside_it(tiny):
    """sample-rail seeds each prompt by itself: a row alone, among others, in another order or after a
    shorter prompt (sorted first) gets the same samples (a file, the API and the server's micro-batches
    agree); another seed gives others."""
    p = make(tiny)

    def samples(texts, seed=3):
        return p.generate(texts, num_return_sequences=6, do_sample=True, max_new_tokens=5, seed=seed)

    row = TEXTS[1]
    alone = samples([row])[0]
    assert samples([TEXTS[0], row, TEXTS[2]])[1] == alone
    assert samples(["ok:", row])[1] == alone and samples([row, "ok:"])[0] == alone
    assert samples([row, row]) == [alone, alone]
    assert samples([row], seed=4)[0] != alone


def test_max_length_is_capped_at_the_model_context(tiny):
    model, tok = tiny
    grid = Grid.parse("1-5")
    import pytest

    with pytest.warns(UserWarning, match="exceeds the model's context"):
        p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), TEXTS, max_length=100_000)
    assert p.max_length == model.config.max_position_embeddings == 1024


MIXED = [t * k for k, t in enumerate(TEXTS * 3, start=1)]  # 9 prompts of mixed lengths


def test_grid_rows_only_scoring_equals_full_vocabulary_normalized_rail(tiny):
    model, tok = tiny
    grid = Grid.parse("1-5")
    p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), TEXTS, normalize_grid=True)
    assert p.scorer.normalize_grid
    fast = p.predict(MIXED, "rail")
    p.use_grid_rows(False)
    full = p.predict(MIXED, "rail")
    np.testing.assert_allclose(fast.values, full.values, atol=1e-5)
    np.testing.assert_allclose(fast.probs, full.probs / full.probs.sum(-1, keepdims=True), atol=1e-5)


def test_normalized_rail_on_a_grid_whose_mass_underflows_is_a_number(tiny):
    # a multi-token grid takes the full-head path: exp of log-probs near -800 is 0 in float64, and the
    # renormalization divided 0 by 0 (NaN predictions, null in a file); it is done in log space now
    model, tok = tiny
    grid = Grid.parse("10,20,30")
    p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), TEXTS, normalize_grid=True)
    logp = p.grid_log_probs(TEXTS, 8, False, None)
    scorer = p.scorer
    p.scorer = lambda model, batch: scorer(model, batch).double() - 800.0  # the same distribution, its mass
    # below float64's range
    with np.errstate(divide="raise", invalid="raise"):  # no 0/0
        dead = p.predict(TEXTS, "rail")
    norm = np.exp(logp - logp.max(-1, keepdims=True))
    expected = norm / norm.sum(-1, keepdims=True) @ grid.array
    np.testing.assert_allclose(dead.values, expected, rtol=1e-6)
    np.testing.assert_allclose(dead.probs.sum(-1), 1.0, rtol=1e-9)


def test_length_bucketing_and_fixed_padding_give_the_same_predictions(tiny):
    p = make(tiny)
    bucketed = p.predict(MIXED, "rail", batch_size=4).values
    p.bucket, p.pad_to = False, 256
    fixed = p.predict(MIXED, "rail", batch_size=4).values
    np.testing.assert_allclose(bucketed, fixed, atol=1e-5)


def test_bf16_autocast_stays_close_to_float32(tiny):
    p = make(tiny)
    f32 = p.predict(MIXED, "rail").values
    bf16 = p.predict(MIXED, "rail", bf16=True).values
    np.testing.assert_allclose(bf16, f32, atol=0.05)  # bf16 keeps ~3 significant digits


@pytest.mark.slow
def test_torch_compile_switch_keeps_predictions(tiny):
    model, tok = tiny
    import copy

    grid = Grid.parse("1-5")
    p = Predictor.create(copy.deepcopy(model), tok, grid, TargetScaler.identity(grid), TEXTS)
    eager = p.predict(MIXED, "rail").values
    p.compile()
    np.testing.assert_allclose(p.predict(MIXED, "rail").values, eager, atol=1e-5)


def test_lm_head_runs_in_float32_under_bf16_autocast(tiny):
    import copy

    import torch

    from raftlm.models import lm_head_in_float32
    from raftlm.testing import tiny_random_llama

    model, tok = tiny_random_llama(seed=0)  # fresh: the shared fixture's head is patched by Predictor
    ids = tok(TEXTS[2], return_tensors="pt").input_ids
    keys = set(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(ids).logits.dtype == torch.bfloat16  # stock: the head's output rounded to bf16
    lm_head_in_float32(lm_head_in_float32(model))  # idempotent
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, output_hidden_states=True)
    head = model.get_output_embeddings()
    assert out.logits.dtype == torch.float32
    exact = torch.nn.functional.linear(out.hidden_states[-1].float(), head.weight)
    torch.testing.assert_close(out.logits, exact, rtol=0, atol=1e-5)
    assert set(model.state_dict()) == keys  # same module, same weights: saving is unchanged
    clone = copy.deepcopy(model)  # the patched forward follows the copy's own weights
    assert clone.get_output_embeddings().forward.__self__ is clone.get_output_embeddings()


def test_lm_head_on_a_sliced_view_runs_one_matmul_not_a_batched_one():
    # logits_to_keep hands the head a non-contiguous (B, k, D) view; with the weight frozen (raftlm's
    # recipes, and all inference) F.linear on it broadcasts the V x D weight into a bmm (3x slower on
    # Gemma's head); the patched head flattens to one mm instead
    import torch

    from raftlm.models import lm_head_in_float32
    from raftlm.testing import tiny_random_llama

    model, _ = tiny_random_llama(seed=0)
    head = lm_head_in_float32(model).get_output_embeddings()
    head.weight.requires_grad_(False)
    hidden = torch.randn(3, 7, head.in_features, requires_grad=True)
    view = hidden[:, -2:, :]
    assert not view.is_contiguous()
    with torch.profiler.profile() as prof:
        logits = head(view)
        logits.square().sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::bmm" not in ops and "aten::mm" in ops
    assert logits.shape == (3, 2, head.out_features)
    exact = torch.nn.functional.linear(view.detach(), head.weight)
    torch.testing.assert_close(logits.detach(), exact, rtol=0, atol=1e-6)


def test_grid_rows_scoring_through_a_wrapper_calls_the_whole_model(tiny):
    # DDP must be called as a whole to sync gradients; the grid-rows path needs get_decoder, so a
    # wrapper without it takes the full-head path, renormalized over the grid: the same numbers
    import torch

    from raftlm.scoring import encode_prompts, left_pad

    model, tok = tiny
    grid = Grid.parse("1-5")
    p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), TEXTS, normalize_grid=True)

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    batch = left_pad(encode_prompts(tok, p.fmt, MIXED, 128), p.pad_id)
    with torch.no_grad():
        direct = p.scorer(model, batch)
        wrapped = p.scorer(Wrapper(model), batch)
    torch.testing.assert_close(wrapped, direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(direct.exp().sum(-1), torch.ones(len(MIXED)))


def test_bf16_inference_on_a_cpu_without_bf16_units_warns(tiny, bf16_warning):
    bf16_warning(False)
    p = make(tiny)
    with pytest.warns(RuntimeWarning, match="without bf16 units.*drop --bf16"):
        p.predict(MIXED, "rail", bf16=True)
