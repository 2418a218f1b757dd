"""Where the repository's non-Python-package parts live (firmware/, protocol/, hardware/).

The host package is installed in editable mode from the repository, so the firmware sources and the
board definition are found relative to it. IONM_ROOT overrides the search (e.g. an installed copy).
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    env = os.environ.get("IONM_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "firmware" / "main.py").is_file() and (parent / "hardware" / "board.json").is_file():
            return parent
    raise FileNotFoundError("cannot find the ionm repository (firmware/main.py); set IONM_ROOT")


def firmware_dir() -> Path:
    return repo_root() / "firmware"


def protocol_dir() -> Path:
    return repo_root() / "protocol"


def board_file() -> Path:
    return repo_root() / "hardware" / "board.json"


def scenarios_dir() -> Path:
    return repo_root() / "hardware" / "scenarios"
