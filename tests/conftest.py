"""Shared fixtures: the virtual board (real MicroPython firmware + hardware model) and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))


def ionm_cmd(*args: str) -> list[str]:
    return [str(BIN / "ionm"), *args]


def run_ionm(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ionm_cmd(*args), capture_output=True, text=True, timeout=timeout, **kw)


def store_with_technologist(db: Path, password: str = "long-password-1") -> Path:
    """A case store at db with one account, "tech" (technologist): what the console needs to start."""
    from ionm.case.store import CaseStore
    from ionm.console.auth import Accounts

    store = CaseStore(db)
    Accounts(store).add("tech", "technologist", password)
    store.close()
    return db


def replay_headless(store, case_id: int, scratch):
    """Replay a recorded case into scratch as fast as it goes, without a server: (engine, source) once done."""
    from ionm.console.replay import prepare

    engine, source = prepare(store, case_id, scratch, speed=0.0)
    engine.start()
    engine.run_source(source)
    assert engine.wait_idle(120.0)
    engine.stop()
    return engine, source


@pytest.fixture
def virtual_board(tmp_path: Path) -> Iterator:
    """A bench-wired virtual board in real time (inputs on the bench divider, no patient)."""
    from ionm.board.virtual import VirtualBoard

    log = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(bench=True, pulse_log=str(tmp_path / "pulses.jsonl"), stderr=log) as board:
        yield board
    log.close()


@pytest.fixture
def connected(virtual_board) -> Iterator:
    """(board, link, welcome) with the handshake done and heartbeats running."""
    from ionm.board import link as ln

    link = ln.BoardLink(ln.open_port(virtual_board.device), heartbeat_s=0.025)
    try:
        welcome = ln.connect(link, timeout=10)
        yield virtual_board, link, welcome
    finally:
        link.close()


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("IONM_ROOT", str(ROOT))
