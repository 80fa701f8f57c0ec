"""regression_metrics pinned by hand; atomic_write leaves the old file or the new one, never a part."""

import math

import pytest

from raftlm.io import atomic_write, write_json
from raftlm.metrics import regression_metrics


def test_regression_metrics_by_hand():
    m = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5])
    # errors (0, 0, 0, 1): RMSE sqrt(1/4) = 0.5, MAE 1/4; SS_tot = 5 -> R^2 = 1 - 1/5
    assert (m["rmse"], m["mae"], m["r2"], m["n"]) == pytest.approx((0.5, 0.25, 0.8, 4))
    # Pearson: sum dx*dy = 6.5, sum dx^2 = 5, sum dy^2 = 8.75 -> 6.5 / sqrt(43.75); ranks agree
    assert m["pearson"] == pytest.approx(6.5 / math.sqrt(43.75))
    assert m["spearman"] == pytest.approx(1.0)


def test_constant_predictions_have_zero_correlation_not_nan():
    m = regression_metrics([1, 2, 3], [2, 2, 2])
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0 and m["rmse"] == pytest.approx(math.sqrt(2 / 3))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"old": 1})

    def half_then_fail(p):
        p.write_text('{"new": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{\n  "old": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left
    atomic_write(path, lambda p: p.write_text("new"))
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) != "0o600"
