import math

import pytest

from amoeba_search.quality import QualityCheck, quality_floor


def test_a_floor_is_a_number_or_a_multiple_of_the_full_model():
    assert quality_floor("10x", 25.0) == 250.0 and quality_floor("2.5X", 4.0) == 10.0
    assert quality_floor(400, 25.0) == 400.0 and quality_floor("400", 25.0) == 400.0
    assert quality_floor(None, 25.0) is None


@pytest.mark.parametrize("bad", ["ten", "x", "-3", "0x", "inf", "nanx"])
def test_a_bad_floor_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="quality floor"):
        quality_floor(bad, 25.0)


def test_the_check_says_what_is_wrong():
    check = QualityCheck("d15-f0.5-h0.333", 1343.5, 25.1, 251.0, "10x")
    assert not check.usable and math.isclose(check.floor, 251.0)
    assert "above the quality floor 251 (10x; the full model has 25.1)" in check.warning()
    assert QualityCheck("d26-f1-h1", 40.0, 25.1, 251.0, "10x").usable


def test_a_floor_rule_is_checked_before_any_work():
    from amoeba_search.quality import parse_floor

    assert parse_floor("none") is None and parse_floor("NONE") is None
    assert parse_floor("10x") == "10x" and parse_floor("400") == "400"
    with pytest.raises(ValueError, match="quality floor 'tenx'"):
        parse_floor("tenx")
