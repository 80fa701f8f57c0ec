import numpy as np
import pytest

from raftlm.core import RaftlmError
from raftlm.grid import Grid, TargetScaler, make_scaler


def test_digit_grid_default_strings():
    g = Grid.parse("1-5")
    assert g.values == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert g.strings == ("1", "2", "3", "4", "5")


def test_range_grid_has_51_strings_with_one_decimal():
    g = Grid.parse("0:5:0.1")
    assert len(g.values) == 51
    assert g.strings[:3] == ("0.0", "0.1", "0.2") and g.strings[-1] == "5.0"
    assert g.values[37] == pytest.approx(3.7)


def test_explicit_and_custom_strings_round_trip():
    g = Grid.parse("1.0,2.5,4")
    assert g.strings == ("1.0", "2.5", "4") and g.values == (1.0, 2.5, 4.0)
    months = Grid.parse("1=January,2=February,3=March,4=April,5=May")
    assert months.value_of("March") == 3.0 and months.nearest_string(4.4) == "April"
    assert Grid.from_dict(months.to_dict()) == months


@pytest.mark.parametrize(
    "spec, fragment",
    [("5", "at least 2"), ("1,1,2", "duplicate"), ("a-b", "cannot parse"), ("1=x,2=x", "distinct")],
)
def test_bad_grids_raise_one_line(spec, fragment):
    with pytest.raises(RaftlmError, match=fragment) as err:
        Grid.parse(spec)
    assert "\n" not in str(err.value)


def test_scaler_maps_data_range_onto_grid_and_back():
    s = TargetScaler(-4.0, 4.0, 1.0, 5.0)
    np.testing.assert_allclose(s.to_grid([-4, 0, 4]), [1, 3, 5])
    np.testing.assert_allclose(s.to_data(s.to_grid([-3.3, 2.2])), [-3.3, 2.2])


def test_make_scaler_auto_and_warning():
    g = Grid.parse("0-9")
    s = make_scaler(g, [10.0, 20.0, 110.0], "auto")
    np.testing.assert_allclose(s.to_grid([10, 110]), [0, 9])
    with pytest.warns(UserWarning, match="2/3 targets fall outside"):
        make_scaler(Grid.parse("1-5"), [0.0, 3.0, 5.5], None)
    # one distinct training target (a 3-row file's random 80 %): said as what it is, with the fix
    with pytest.raises(RaftlmError, match=r"every training target is 5 \(2 of them\).*--target-range LO,HI"):
        make_scaler(Grid.parse("1-5"), [5.0, 5.0], "auto")


@pytest.mark.parametrize(
    "spec, written",
    [
        ("1-5", "1-5"),
        ("1,2.5,4", "1,2.5,4"),
        ("1=one,2.5=two", "1=one,2.5=two"),
        # :g kept 6 digits: 1234567 came back as 1.23457e+06, another grid
        ("1234567=big,0.1234567=small", "1234567.0=big,0.1234567=small"),
    ],
)
def test_a_grid_spec_reads_back_into_the_same_grid(spec, written):
    g = Grid.parse(spec)
    assert g.spec() == written and Grid.parse(g.spec()) == g
