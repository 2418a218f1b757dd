"""Shared fixtures: the virtual board (real MicroPython firmware + hardware model) and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def room_case_on_hub_page(web_port: int, db: Path, log: Path, *publish: str, timeout_s: float = 40.0,
                          login: tuple[str, str] | None = None) -> dict:
    """Run a simulated room console (`ionm console --sim --direct`, baseline at 1 s) publishing with the given
    --publish/--site/--room/... arguments until the hub's page at web_port lists its case with a baseline (or
    timeout_s passes), stop it with SIGINT (it must exit 0), and return the page's last view. login: (name,
    password) of a physician to log in to the page first (a hub with --access shows nothing without one)."""
    import json
    import signal
    import time
    import urllib.request
    from http.cookiejar import CookieJar

    page = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    if login is not None:
        req = urllib.request.Request("http://127.0.0.1:%d/login" % web_port, method="POST",
                                     data=json.dumps({"name": login[0], "password": login[1]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with page.open(req, timeout=10) as r:
            assert json.loads(r.read()) == {"physician": login[0]}

    console = subprocess.Popen([sys.executable, "-m", "ionm.cli", "console", "--sim", "--direct", "--scenario",
                                "stable", "--db", str(db), "--no-browser", "--listen", "127.0.0.1:0",
                                "--auto-baseline", "1", *publish],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        view: dict = {"cases": []}
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with page.open("http://127.0.0.1:%d/state.json" % web_port, timeout=5) as r:
                view = json.loads(r.read())
            if view["cases"] and any(e.get("kind") == "baseline" for e in view["cases"][0]["events"]):
                break
            time.sleep(0.5)
        console.send_signal(signal.SIGINT)
        assert console.wait(30) == 0, log.read_text(errors="replace")
    finally:
        if console.poll() is None:
            console.kill()
    return view


@contextmanager
def console_on_board(tmp_path: Path, scenario: str, settle_s: float = 2.0, held: bool = False) -> Iterator[tuple]:
    """A case engine on the virtual board (BoardCase, the firmware on MicroPython, pulse log at
    tmp_path/pulses.jsonl) with the board as its probe, once its SSEP sweeps flow (settle_s): (engine, case); with
    held, through a fault proxy that can hold the host's bytes back (a starved host): (engine, case, proxy).
    Stopped, with its case store, on the way out."""
    import time

    from ionm.board.boardcase import BoardCase
    from ionm.board.virtual import VirtualBoard
    from ionm.case.store import CaseStore
    from ionm.console.engine import CaseEngine

    store = CaseStore(tmp_path / "cases.db")
    cid = store.open_case()
    err = open(tmp_path / "board.stderr", "w")
    try:
        with VirtualBoard(scenario=scenario, pulse_log=str(tmp_path / "pulses.jsonl"), stderr=err) as vb:
            proxy = None
            if held:
                from faultproxy import FaultProxy

                proxy = FaultProxy(vb.device, seed=1, p_damage=0.0, p_garbage=0.0)
            case = BoardCase(proxy.device if proxy is not None else vb.device)
            engine = CaseEngine(store, cid, stimulation=case, link_health=case.link_health, probe=case)
            engine.start()
            engine.run_source(case)
            try:
                time.sleep(settle_s)
                yield (engine, case, proxy) if held else (engine, case)
            finally:
                engine.stop()
                case.close()
                if proxy is not None:
                    proxy.close()
    finally:
        err.close()
        store.close()


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


# `make test` runs the suite in two phases (Makefile): these files on two workers at once (pytest-xdist), then
# every other file alone. These compute, or wait for what they check without a deadline of real time: the hub's
# tests (nats-server and a room on the simulated case, no virtual board) and replay's. The others pace something
# in real time (the virtual board's firmware and hardware model, a browser, a console on the board, a cluster's
# fail-over) and share the machine with nothing but the load a check adds; run beside a second worker they met
# the board's 100 ms host watchdog late (the pty's kernel worker, tools/pty_latency.py) and failed. A new test
# file runs alone until it is listed here.
PARALLEL_FILES = frozenset("""
    test_ads1299_model test_alert_groups test_auth test_baep test_bench test_bench_live_case test_cbor
    test_console_engine test_display test_eeg test_emg test_evaluate test_evaluate_edf test_export
    test_frame_reader_mpy test_frame_writer_mpy test_framing test_framing_properties test_layering test_ledger
    test_mep_background test_mep_features test_monitored_channels test_narrow_peripheral test_patient
    test_pipeline_alerts test_pipeline_averaging test_pipeline_conditioning test_pipeline_peaks
    test_pipeline_tracker test_probe_console test_report test_rln test_safety_mpy test_scenarios test_screw_model
    test_screw_rules test_strict_requests test_technical_alarms test_tof test_tof_console test_ws_commands
    test_hub test_hub_physician test_hub_nkeys test_hub_view test_replay test_eeg_tap test_baep_tap
""".split())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in PARALLEL_FILES:
            item.add_marker(pytest.mark.parallel)
