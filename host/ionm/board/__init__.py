"""The board definition (hardware/board.json): the single source of truth for pins, ranges and limits."""

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
