"""Issue 20 item 3: the regional rules that read a pedicle screw's threshold (ionm.pipeline.screws), at each
boundary, and rules files refused with a message that says what is wrong."""

from __future__ import annotations

import json
import math

import pytest

from ionm.pipeline import screws as sc


@pytest.mark.parametrize("level, ma, colour", [
    # lumbosacral L1-S2 (Raynor 2007): < 4 red, 4-8 amber, > 8 green
    ("L1", 3.99, "red"), ("L4", 4.0, "amber"), ("L5", 8.0, "amber"), ("S1", 8.01, "green"), ("S2", 0.5, "red"),
    ("L3", 6.0, "amber"), ("S2", 20.0, "green"),
    # lower thoracic T6-T12 (Raynor 2002): <= 6 red, > 6 green
    ("T6", 6.0, "red"), ("T12", 6.01, "green"), ("T9", 2.0, "red"),
    # upper thoracic T1-T5 (Regidor 2011): < 12 red, else green
    ("T1", 11.99, "red"), ("T5", 12.0, "green"), ("T3", 30.0, "green"),
    # cervical: no rule
    ("C5", 1.0, "grey"), ("C7", 30.0, "grey"),
    # sacral below S2: no rule either
    ("S3", 1.0, "grey"),
])
def test_each_band_at_its_boundaries(level, ma, colour):
    got = sc.classify(level, ma, 20.0)
    assert got["colour"] == colour, got
    if colour == "grey":
        assert got["rule"] is None and not got["determined"]
    else:
        assert got["rule"] in ("lumbosacral", "lower thoracic", "upper thoracic") and got["source"]


def test_labels_and_sources():
    assert sc.classify("L4", 3.0, 20)["label"] == "likely breach"
    assert sc.classify("L4", 5.0, 20)["label"] == "possible breach"
    assert sc.classify("T2", 5.0, 20)["label"] == "suspect"
    assert "Raynor" in sc.classify("L4", 5.0, 20)["source"] and "2007" in sc.classify("L4", 5.0, 20)["source"]
    assert "Regidor" in sc.classify("T4", 5.0, 20)["source"]


def test_no_response_is_above_hi_ma_and_determined_only_when_hi_ma_passes_the_last_bound():
    assert sc.classify("L4", None, 8.0)["colour"] == "green"  # > 8 mA: green
    assert sc.classify("L4", None, 7.5)["colour"] == "grey"  # somewhere above 7.5: amber or green
    assert not sc.classify("L4", None, 7.5)["determined"]
    assert sc.classify("T3", None, 12.0)["colour"] == "green"  # >= 12
    assert sc.classify("T3", None, 11.5)["colour"] == "grey"
    assert sc.classify("T8", None, 6.0)["colour"] == "green"  # > 6
    assert "no response up to 20 mA" in sc.classify("L4", None, 20.0)["label"]


@pytest.mark.parametrize("bad", ["L6", "X4", "", "T13", "C0", "L", "4", None, 4, "L4 left", "S6"])
def test_a_bad_level_is_refused_with_what_is_allowed(bad):
    with pytest.raises(sc.RuleError, match="C1-C7, T1-T12, L1-L5, S1-S5"):
        sc.parse_level(bad)


def test_levels_and_sides_are_normalised():
    assert sc.parse_level(" l4 ") == "L4" and sc.parse_level("t12") == "T12"
    assert sc.parse_side("left") == "L" and sc.parse_side("R") == "R"
    with pytest.raises(sc.RuleError, match="side"):
        sc.parse_side("both")


def test_the_lowest_channel_decides():
    assert sc.lowest({"TA": 9.0, "AH": 3.5, "VM": None}) == ("AH", 3.5)
    assert sc.lowest({"TA": None}) is None


def test_a_non_finite_threshold_is_refused():
    with pytest.raises(sc.RuleError):
        sc.classify("L4", math.nan, 20)


def test_rules_round_trip_through_a_file_and_a_custom_file_changes_the_bands(tmp_path):
    p = tmp_path / "rules.json"
    p.write_text(json.dumps({"rules": sc.rules_json()}))
    assert sc.load_rules(p) == sc.DEFAULT_RULES
    custom = [{"name": "lumbar strict", "levels": ["L1", "L5"], "source": "local protocol",
               "bands": [{"upper_ma": 10, "inclusive": False, "colour": "red", "label": "breach"},
                         {"upper_ma": None, "inclusive": False, "colour": "green", "label": "ok"}]}]
    p.write_text(json.dumps(custom))
    rules = sc.load_rules(p)
    assert sc.classify("L4", 9.0, 20, rules)["colour"] == "red"
    assert sc.classify("S1", 9.0, 20, rules)["colour"] == "grey"  # not covered by this file


@pytest.mark.parametrize("doc, says", [
    ({"rules": 3}, "list of rules"),
    ([{"name": "x", "levels": ["L1"], "bands": []}], "levels"),
    ([{"name": "x", "levels": ["L5", "L1"], "bands": [{"upper_ma": None, "colour": "red"}]}], "comes after"),
    ([{"name": "x", "levels": ["L1", "L9"], "bands": [{"upper_ma": None, "colour": "red"}]}], "levels"),
    ([{"name": "x", "levels": ["L1", "L2"], "bands": [{"upper_ma": 4, "colour": "red"}]}], "last band"),
    ([{"name": "x", "levels": ["L1", "L2"], "bands": [{"upper_ma": 8, "colour": "red"}, {"upper_ma": 4,
                                                                                          "colour": "red"},
                                                      {"upper_ma": None, "colour": "green"}]}], "increase"),
    ([{"name": "x", "levels": ["L1", "L2"], "bands": [{"upper_ma": None, "colour": "purple"}]}], "colour"),
    ([{"name": "x", "levels": ["L1", "L2"], "bands": [{"upper_ma": "NaN", "colour": "red"},
                                                      {"upper_ma": None, "colour": "red"}]}], "upper_ma"),
    ([{"name": "a", "levels": ["L1", "L3"], "bands": [{"upper_ma": None, "colour": "red"}]},
      {"name": "b", "levels": ["L3", "L5"], "bands": [{"upper_ma": None, "colour": "red"}]}], "overlap"),
    ([{"name": "x", "levels": ["L1", "L2"], "bands": [{"upper_ma": None, "colour": "red"}], "extra": 1}],
     "unknown"),
])
def test_a_malformed_rules_file_is_refused_naming_the_problem(tmp_path, doc, says):
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(sc.RuleError, match=says) as err:
        sc.load_rules(p)
    assert str(p) in str(err.value)


def test_an_unreadable_rules_file_is_refused(tmp_path):
    with pytest.raises(sc.RuleError, match="rules"):
        sc.load_rules(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(sc.RuleError):
        sc.load_rules(tmp_path / "bad.json")
