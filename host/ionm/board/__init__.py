"""The board side of the host: everything between the board's USB port and a stream of sweeps.

This module is the board definition (hardware/board.json), the single source of truth for pins, ranges and
limits; the package holds the serial link (link), acquisition into sweeps (acquire), stimulation programs
validated against the limits (stimulation), live sources for a case (boardcase: a board; simcase: the patient
model straight), the virtual board (virtual), the firmware build and the MicroPython runner (firmware, mpy),
and the flash/calibrate/bench tools (tools). It knows nothing of the pipeline, the case record or the console.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ionm import paths


@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed board definition. Callers must not mutate it (it is cached)."""
    return _load(str(path or paths.board_file()))


def n_channels(defn: dict[str, Any] | None = None) -> int:
    d = defn or load()
    return int(d["adc"]["chips"] * d["adc"]["channels_per_chip"])
