import numpy as np
import pytest

from raftlm.decoders import entropy, median, mode, parse_float, rail, sample_mean

VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
PROBS = np.array([[0.1, 0.2, 0.1, 0.4, 0.2], [0.5, 0.0, 0.0, 0.0, 0.3]])


def test_rail_mean_unnormalized_and_normalized():
    # row 0: .1+.4+.3+1.6+1.0 = 3.4 ; row 1: .5+1.5 = 2.0 (mass .8) -> normalized 2.0/.8 = 2.5
    np.testing.assert_allclose(rail(VALUES, PROBS), [3.4, 2.0])
    np.testing.assert_allclose(rail(VALUES, PROBS, normalize_grid=True), [3.4, 2.5])


def test_mode_and_median():
    np.testing.assert_allclose(mode(VALUES, PROBS), [4.0, 1.0])
    # row 0 cdf .1 .3 .4 .8 -> first >= .5 is 4 ; row 1 cdf .5 (of .8 total: half is .4) -> 1
    np.testing.assert_allclose(median(VALUES, PROBS), [4.0, 1.0])
    # unsorted grid values give the same median
    order = [4, 2, 0, 3, 1]
    np.testing.assert_allclose(median(VALUES[order], PROBS[:, order]), [4.0, 1.0])


def test_entropy_of_uniform_is_log_g():
    np.testing.assert_allclose(entropy(np.full((1, 5), 0.2)), [np.log(5)])
    np.testing.assert_allclose(entropy(np.array([[0, 0, 1.0, 0, 0]])), [0.0], atol=1e-12)


def test_entropy_of_a_row_without_grid_mass_is_the_uniform_one_not_nan():
    with np.errstate(divide="raise", invalid="raise"):
        got = entropy(np.array([[0.0] * 5, [0, 0.25, 0.25, 0, 0]]))
    np.testing.assert_allclose(got, [np.log(5), np.log(2)])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3.0),
        (" 3.8\n\nThe", 3.8),
        ("4.", 4.0),
        ("-2e1", -20.0),
        (".5", 0.5),
        ("+1.25 stars", 1.25),
        ("banana", 0.0),
        ("", 0.0),
        ("nan", 0.0),
        ("inf", 0.0),
        ("three", 0.0),
        ("35", 35.0),
    ],
)
def test_parse_float_rules(text, expected):
    assert parse_float(text) == expected


def test_parse_float_custom_default_and_sample_mean():
    assert np.isnan(parse_float("x", default=np.nan))
    np.testing.assert_allclose(sample_mean([["1", "3", "oops"], ["4", "4.5"]]), [4 / 3, 4.25])


def test_collapse_names_a_dead_grid_and_a_saturated_one_and_passes_live_predictions():
    from raftlm.metrics import collapse

    y = np.array([1.0, 2.0, 3.0, 4.0])
    # grid mass 1e-9 per row (RAFT pushed it onto other tokens): unnormalized RAIL predicts ~0
    dead = np.full((4, 5), 2e-10)
    assert collapse(y, np.zeros(4), dead) == (
        "the grid holds 1.0e-09 of the model's probability on average (it moved to other tokens)"
    )
    # all mass on '3': every prediction 3.0 (std 0 < 1e-3 * std(y) = 1.1e-3)
    one_hot = np.tile([0.0, 0, 1, 0, 0], (4, 1))
    assert collapse(y, np.full(4, 3.0), one_hot).startswith(
        "every prediction is 3 (std 0.0e+00, targets' 1.12)"
    )
    assert collapse(y, np.array([2.0, 2.5, 3.0, 3.5]), np.tile([0.1, 0.2, 0.4, 0.2, 0.1], (4, 1))) is None
    assert collapse(y, y + 0.0005 * np.arange(4)) is None  # no probs (a head): only the spread is read
    # a head (no grid): said without grid words
    assert (
        collapse(y, np.full(4, 3.0))
        == "every prediction is 3 (std 0.0e+00, targets' 1.12): the model predicts a constant"
    )
    assert collapse(y, np.full(4, 3.0), one_hot).endswith("the grid distribution saturated on one value")
