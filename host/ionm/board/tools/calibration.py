"""The host side of a board's calibration (protocol SPEC §5.9): what the board holds, how the host applies
the ADC part, the plausibility bounds of board.json, and the copy kept on the host.

Per ADC channel: µV = (counts × vref_uv / full_scale_code / gain − adc_offset_nv / 1000) × (1 + adc_gain_ppm /
10^6). The board applies the stimulator part itself (its DAC setting is current × (1 + stim_gain_ppm / 10^6)).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ionm import board


@dataclass
class Calibration:
    date: str | None = None  # ISO 8601, UTC; None: never calibrated
    operator: str = ""
    adc_gain_ppm: list[int] = field(default_factory=list)  # per ADC channel (empty: none)
    adc_offset_nv: list[int] = field(default_factory=list)  # per ADC channel, input-referred nV
    stim_gain_ppm: list[int] = field(default_factory=list)  # per stimulator output

    @classmethod
    def from_board(cls, reply: dict[str, Any]) -> Calibration:
        """From a cal-read reply (or the same keys in a host file)."""
        return cls(date=reply.get("date"), operator=reply.get("operator") or "",
                   adc_gain_ppm=[int(v) for v in reply.get("adc_gain_ppm") or []],
                   adc_offset_nv=[int(v) for v in reply.get("adc_offset_nv") or []],
                   stim_gain_ppm=[int(v) for v in reply.get("stim_gain_ppm") or []])

    def to_board(self) -> dict[str, Any]:
        """The cal-write body."""
        return {"date": self.date, "operator": self.operator, "adc_gain_ppm": list(self.adc_gain_ppm),
                "adc_offset_nv": list(self.adc_offset_nv), "stim_gain_ppm": list(self.stim_gain_ppm)}

    @property
    def calibrated(self) -> bool:
        return self.date is not None and bool(self.adc_gain_ppm)

    def channel_terms(self, channels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(offset µV, gain factor) per configured channel; identity for an uncalibrated board."""
        if not self.calibrated:
            return np.zeros(len(channels)), np.ones(len(channels))
        off = np.array([self.adc_offset_nv[c] / 1000.0 for c in channels])
        gain = np.array([1.0 + self.adc_gain_ppm[c] / 1e6 for c in channels])
        return off, gain

    def to_uv(self, counts: np.ndarray, conf: dict[str, Any], *, apply: bool = True) -> np.ndarray:
        """ADC counts (n_samples, n_channels) of a configuration -> µV, with this calibration applied."""
        scale = np.array([conf["vref_uv"] / conf["full_scale_code"] / g for g in conf["gain"]])
        uv = counts.astype(np.float64) * scale
        if not apply:
            return uv
        off, gain = self.channel_terms(conf["channels"])
        return (uv - off) * gain


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---- plausibility bounds (board.json adc/stimulator calibration_bounds) -------------------------------
class OutOfBounds(Exception):
    """A measured correction outside the plausible range: the channel or output is faulty or miswired."""


def check_bounds(cal: Calibration, defn: dict[str, Any] | None = None) -> None:
    """Raise OutOfBounds naming every channel/output whose correction is implausible (the same bounds the
    board enforces on cal-write, checked first so that the message can say what was measured)."""
    d = defn or board.load()
    ab, sb = d["adc"]["calibration_bounds"], d["stimulator"]["calibration_bounds"]
    gain_max, off_max = ab["gain_correction_max"] * 1e6, ab["offset_max_uv"] * 1000
    stim_max = sb["gain_correction_max"] * 1e6
    problems = []
    for ch, (g, o) in enumerate(zip(cal.adc_gain_ppm, cal.adc_offset_nv, strict=True)):
        if abs(g) > gain_max:
            problems.append("ADC channel %d: gain correction %+.2f %% is outside ±%.1f %% "
                            "(board.json adc.calibration_bounds.gain_correction_max)" % (ch, g / 1e4, gain_max / 1e4))
        if abs(o) > off_max:
            problems.append("ADC channel %d: offset %+.1f µV is outside ±%.0f µV "
                            "(board.json adc.calibration_bounds.offset_max_uv)" % (ch, o / 1000, off_max / 1000))
    for out, g in enumerate(cal.stim_gain_ppm):
        if abs(g) > stim_max:
            problems.append("stimulator output %d: gain correction %+.2f %% is outside ±%.1f %% "
                            "(board.json stimulator.calibration_bounds.gain_correction_max)"
                            % (out, g / 1e4, stim_max / 1e4))
    if problems:
        raise OutOfBounds("; ".join(problems))


# ---- the host's copy -------------------------------------------------------------------------------------
def default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ionm" / "calibration"


def store_path(serial: str, store: Path | None = None) -> Path:
    """<store>/<serial>.json, the serial made safe as a file name."""
    return (store or default_store()) / ("%s.json" % "".join(c if c.isalnum() or c in "-_." else "_" for c in serial))


def save(cal: Calibration, serial: str, store: Path | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write <store>/<serial>.json atomically (a new file renamed over the old one); returns its path."""
    path = store_path(serial, store)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"board_serial": serial, **asdict(cal), **(extra or {})}
    tmp = path.with_suffix(".json.new")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load(serial: str, store: Path | None = None) -> tuple[Calibration, dict[str, Any]] | None:
    path = store_path(serial, store)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return Calibration.from_board(record), record
