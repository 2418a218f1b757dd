"""Pedicle-screw test results read against regional rules (issue 20 item 3): pure functions, no I/O but load_rules.

A screw test finds the lowest probe current that evokes a muscle response (the board's threshold hunt, SPEC 5.11);
what that current means depends on where the screw is. A rule covers a run of vertebral levels and splits the
threshold axis into bands, each with a colour and a label. The defaults:

| region | levels | bands | source |
|---|---|---|---|
| lumbosacral | L1-S2 | < 4 mA red "likely breach", 4-8 mA amber "possible breach", > 8 mA green | Raynor 2007 |
| lower thoracic | T6-T12 | <= 6 mA red "likely breach", > 6 mA green | Raynor 2002 (rectus abdominis) |
| upper thoracic | T1-T5 | < 12 mA red "suspect", >= 12 mA green | Regidor 2011 (T2-T6, axillary electrode) |
| cervical | C1-C7 | no rule: grey | - |

A band is (upper bound in mA, whether the bound belongs to it, colour, label); the last band has no bound. A test
that saw no response up to hi_ma says only that the threshold is above hi_ma: its band is the last one when hi_ma
is at or above the last bound, else it is not determined (grey). Rules come from a JSON file (`ionm console
--screw-rules FILE`) in the shape rules_json() writes; load_rules() refuses a malformed one with a message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVELS: tuple[str, ...] = (tuple("C%d" % k for k in range(1, 8)) + tuple("T%d" % k for k in range(1, 13))
                           + tuple("L%d" % k for k in range(1, 6)) + tuple("S%d" % k for k in range(1, 6)))
COLOURS = ("red", "amber", "green", "grey")
SIDES = {"L": "left", "R": "right"}


class RuleError(ValueError):
    """A rules file or a level that cannot be used (the message says what is wrong)."""


@dataclass(frozen=True)
class Band:
    upper_ma: float | None  # None: no upper bound (the last band)
    inclusive: bool  # the bound belongs to this band (<= rather than <)
    colour: str
    label: str

    def holds(self, ma: float) -> bool:
        if self.upper_ma is None:
            return True
        return ma <= self.upper_ma if self.inclusive else ma < self.upper_ma


@dataclass(frozen=True)
class Rule:
    name: str
    first: str  # first and last level covered, inclusive
    last: str
    source: str
    bands: tuple[Band, ...]

    def covers(self, level: str) -> bool:
        i = LEVELS.index(level)
        return LEVELS.index(self.first) <= i <= LEVELS.index(self.last)


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("lumbosacral", "L1", "S2",
         "Raynor BL et al., Spine 2007;32(24):2673-8 (4857 lumbar screws): < 4 mA likely breach, 4-8 mA possible, "
         "> 8 mA none",
         (Band(4.0, False, "red", "likely breach"), Band(8.0, True, "amber", "possible breach"),
          Band(None, False, "green", "no breach indicated"))),
    Rule("lower thoracic", "T6", "T12",
         "Raynor BL et al., Spine 2002;27(18):2030-5 (T6-T12 screws, rectus abdominis): > 6 mA intraosseous, "
         "<= 6 mA a possible medial breach",
         (Band(6.0, True, "red", "likely breach"), Band(None, False, "green", "no breach indicated"))),
    Rule("upper thoracic", "T1", "T5",
         "Regidor I et al., Eur Spine J 2011;20(10):1620-5 (T2-T6 screws, axillary electrode): below 12 mA "
         "suspect malposition",
         (Band(12.0, False, "red", "suspect"), Band(None, False, "green", "no breach indicated"))),
)


def parse_level(value: Any) -> str:
    """'l4', ' L4 ' -> 'L4'; RuleError for anything that is not a vertebral level C1-C7, T1-T12, L1-L5, S1-S5."""
    if isinstance(value, str):
        s = value.strip().upper()
        if re.fullmatch(r"[CTLS][0-9]{1,2}", s) and s in LEVELS:
            return s
    raise RuleError("level must be one of C1-C7, T1-T12, L1-L5, S1-S5 (got %r)" % (value,))


def parse_side(value: Any) -> str:
    """'L'/'left' -> 'L', 'R'/'right' -> 'R'; RuleError otherwise."""
    if isinstance(value, str):
        s = value.strip().lower()
        for k, name in SIDES.items():
            if s in (k.lower(), name):
                return k
    raise RuleError("side must be L or R (got %r)" % (value,))


def rule_for(level: str, rules: tuple[Rule, ...] = DEFAULT_RULES) -> Rule | None:
    lv = parse_level(level)
    return next((r for r in rules if r.covers(lv)), None)


def classify(level: str, threshold_ma: float | None, hi_ma: float,
             rules: tuple[Rule, ...] = DEFAULT_RULES) -> dict[str, Any]:
    """The band of a screw at `level` whose lowest threshold is threshold_ma (None: no response up to hi_ma):
    {colour, label, rule (name or None), source, determined}."""
    rule = rule_for(level, rules)
    if rule is None:
        return {"colour": "grey", "label": "no rule for %s" % parse_level(level), "rule": None, "source": None,
                "determined": False}
    if threshold_ma is not None:
        if not math.isfinite(threshold_ma):
            raise RuleError("threshold must be finite (got %r)" % threshold_ma)
        band = next(b for b in rule.bands if b.holds(threshold_ma))
        return {"colour": band.colour, "label": band.label, "rule": rule.name, "source": rule.source,
                "determined": True}
    # no response up to hi_ma: the threshold is above it
    last_bound = max((b.upper_ma for b in rule.bands if b.upper_ma is not None), default=-math.inf)
    if hi_ma >= last_bound:
        band = rule.bands[-1]
        return {"colour": band.colour, "label": "%s (no response up to %g mA)" % (band.label, hi_ma),
                "rule": rule.name, "source": rule.source, "determined": True}
    return {"colour": "grey", "label": "not determined: no response up to %g mA, below the rule's %g mA"
            % (hi_ma, last_bound), "rule": rule.name, "source": rule.source, "determined": False}


def lowest(thresholds_ma: dict[str, float | None]) -> tuple[str, float] | None:
    """The channel with the lowest threshold (the one that decides the screw) and its threshold; None when none
    responded. Ties go to the first channel in order."""
    best: tuple[str, float] | None = None
    for name, v in thresholds_ma.items():
        if v is not None and (best is None or v < best[1]):
            best = (name, float(v))
    return best


# ---------------------------------------------------------------- rules files
def rules_json(rules: tuple[Rule, ...] = DEFAULT_RULES) -> list[dict[str, Any]]:
    """The rules as JSON (the shape load_rules reads, and what the console shows and stores with each result)."""
    return [rule_json(r) for r in rules]


def rule_json(r: Rule) -> dict[str, Any]:
    return {"name": r.name, "levels": [r.first, r.last], "source": r.source,
            "bands": [{"upper_ma": b.upper_ma, "inclusive": b.inclusive, "colour": b.colour, "label": b.label}
                      for b in r.bands]}


def parse_rules(doc: Any) -> tuple[Rule, ...]:
    """Rules from their JSON form ({"rules": [...]} or the list itself); RuleError naming what is wrong."""
    items = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise RuleError("screw rules: expected a list of rules (or {\"rules\": [...]})")
    rules: list[Rule] = []
    for i, r in enumerate(items):
        where = "screw rules[%d]" % i
        if not isinstance(r, dict):
            raise RuleError("%s: must be an object" % where)
        unknown = set(r) - {"name", "levels", "source", "bands"}
        if unknown:
            raise RuleError("%s: unknown field(s) %s" % (where, ", ".join(sorted(unknown))))
        name, source, levels, bands = r.get("name"), r.get("source", ""), r.get("levels"), r.get("bands")
        if not isinstance(name, str) or not name.strip():
            raise RuleError("%s.name: must be a non-empty string" % where)
        if not isinstance(source, str):
            raise RuleError("%s.source: must be a string" % where)
        if not isinstance(levels, list) or len(levels) != 2:
            raise RuleError("%s.levels: must be [first, last], e.g. [\"L1\", \"S2\"]" % where)
        try:
            first, last = parse_level(levels[0]), parse_level(levels[1])
        except RuleError as exc:
            raise RuleError("%s.levels: %s" % (where, exc)) from None
        if LEVELS.index(first) > LEVELS.index(last):
            raise RuleError("%s.levels: %s comes after %s" % (where, first, last))
        if not isinstance(bands, list) or not bands:
            raise RuleError("%s.bands: must be a non-empty list" % where)
        out: list[Band] = []
        prev = -math.inf
        for j, b in enumerate(bands):
            bw = "%s.bands[%d]" % (where, j)
            if not isinstance(b, dict) or set(b) - {"upper_ma", "inclusive", "colour", "label"}:
                raise RuleError("%s: must be an object with upper_ma, inclusive, colour, label" % bw)
            up, inc, col, lab = b.get("upper_ma"), b.get("inclusive", False), b.get("colour"), b.get("label", "")
            last_band = j == len(bands) - 1
            if last_band and up is not None:
                raise RuleError("%s.upper_ma: the last band has no upper bound (null)" % bw)
            if not last_band:
                if isinstance(up, bool) or not isinstance(up, (int, float)) or not math.isfinite(up) or up <= 0:
                    raise RuleError("%s.upper_ma: must be a positive finite number of mA" % bw)
                if up <= prev:
                    raise RuleError("%s.upper_ma: bounds must increase (%g after %g)" % (bw, up, prev))
                prev = float(up)
            if not isinstance(inc, bool):
                raise RuleError("%s.inclusive: must be true or false" % bw)
            if col not in COLOURS:
                raise RuleError("%s.colour: must be one of %s" % (bw, ", ".join(COLOURS)))
            if not isinstance(lab, str):
                raise RuleError("%s.label: must be a string" % bw)
            out.append(Band(None if up is None else float(up), inc, col, lab))
        rule = Rule(name.strip(), first, last, source, tuple(out))
        for other in rules:
            if any(other.covers(lv) for lv in LEVELS[LEVELS.index(first):LEVELS.index(last) + 1]):
                raise RuleError("%s: levels %s-%s overlap rule %r" % (where, first, last, other.name))
        rules.append(rule)
    return tuple(rules)


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """Rules from a JSON file; RuleError (with the file's name) when it cannot be read or is malformed."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RuleError("screw rules %s: %s" % (path, exc)) from None
    try:
        return parse_rules(doc)
    except RuleError as exc:
        raise RuleError("%s: %s" % (path, exc)) from None
