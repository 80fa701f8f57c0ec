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
    p = Predictor.create(model, tok, grid, TargetScaler.identity(grid), TEXTS, normalize=True)
    assert p.scorer.grid_only
    fast = p.predict(MIXED, "rail")
    p.use_grid_rows(False)
    full = p.predict(MIXED, "rail")
    np.testing.assert_allclose(fast.values, full.values, atol=1e-5)
    np.testing.assert_allclose(fast.probs, full.probs / full.probs.sum(-1, keepdims=True), atol=1e-5)


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
