import numpy as np
import pytest

from raftlm import RaftlmError, RAFTRegressor

TEXTS = [
    f"review {i}: the product was {w}. rating:"
    for i, w in enumerate(["awful", "bad", "fine", "good", "great"] * 6)
]
Y = np.array([1.0, 2.0, 3.0, 4.0, 5.0] * 6)


def small(**kw):
    return RAFTRegressor(model="tiny-random-llama", max_steps=3, batch_size=8, lr=1e-2, eval_steps=3, **kw)


def test_fit_predict_score_save_load(tmp_path):
    reg = small(output_dir=str(tmp_path / "run"))
    assert reg.fit(TEXTS, Y, eval_set=(TEXTS[:5], Y[:5])) is reg
    pred = reg.predict(TEXTS)
    assert pred.shape == (30,) and np.all((pred >= 0) & (pred <= 5))  # RAIL over '1'..'5' with mass <= 1
    probs = reg.predict_proba(TEXTS[:2])
    assert probs.shape == (2, 5) and np.all(probs.sum(-1) <= 1 + 1e-9)
    np.testing.assert_allclose(pred[:2], probs @ np.arange(1, 6), rtol=1e-6)
    r2 = reg.score(TEXTS, Y)
    assert r2 == pytest.approx(1 - ((pred - Y) ** 2).sum() / ((Y - Y.mean()) ** 2).sum())
    reg.save(tmp_path / "saved")
    again = RAFTRegressor.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict(TEXTS), pred, rtol=1e-5, atol=1e-6)
    assert reg.train_summary_["global_step"] == 3


def test_init_only_stores_arguments_and_predict_needs_fit():
    reg = RAFTRegressor(model="does-not-matter", lr=3e-4)
    assert reg.lr == 3e-4 and not hasattr(reg, "predictor_")
    with pytest.raises(RaftlmError, match="not fitted"):
        reg.predict(["x"])


def test_dict_inputs_fill_the_template_and_targets_are_scaled(tmp_path):
    reg = small(prompt_template="Title: {title}. Stars:", target_range="auto", method="none", grid="0-9")
    rows = [{"title": f"movie {i}"} for i in range(6)]
    reg.fit(rows, [10, 20, 30, 40, 50, 60])
    assert reg.predictor_.scaler.to_dict() == {
        "data_low": 10.0,
        "data_high": 60.0,
        "grid_low": 0.0,
        "grid_high": 9.0,
    }
    assert reg.predict(rows).shape == (6,)
    with pytest.raises(RaftlmError, match="2 texts but 3 targets"):
        reg.fit(rows[:2], [1, 2, 3])
