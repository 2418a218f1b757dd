"""The console's live source on the virtual board: sweeps of every enabled output, stimulation commands
reaching the firmware, refusals that say why, on-demand TcMEP trains giving one sweep each."""

from __future__ import annotations

import threading
import time

import pytest

from ionm.board.boardcase import BoardCase
from ionm.board.stimulation import StimulationError


@pytest.fixture
def board_case(tmp_path):
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=2, stderr=err) as vb:
        case = BoardCase(vb.device)
        sweeps: list = []
        reader = threading.Thread(target=lambda: sweeps.extend(case), daemon=True)
        reader.start()
        try:
            yield case, sweeps
        finally:
            case.close()
            reader.join(timeout=5)
    err.close()


def test_board_case_streams_controls_and_refuses(board_case):
    case, sweeps = board_case
    time.sleep(2.0)
    sources = {s.source for s in sweeps}
    assert sources == {"L median", "R median", "L tibial", "R tibial"}
    assert case.case.blanked > 0  # interleaved stimuli fall inside each other's sweeps and are blanked
    for s in sweeps:
        assert s.data_uv.shape[0] == len(s.channels) and s.fs == 8000
    health = case.link_health()
    assert health["samples_lost"] == 0 and health["state"] == "streaming" and health["sweeps"] >= len(sweeps)

    with pytest.raises(StimulationError, match="mA"):
        case.apply({"action": "ssep", "output": 0, "current_ma": 100.1})  # off the limits: nothing changes
    assert case.state()["ssep"]["0"]["current_ma"] == 25.0

    case.apply({"action": "ssep", "output": 2, "enabled": False})
    n = len(sweeps)
    time.sleep(1.5)
    assert "L tibial" not in {s.source for s in sweeps[n + 4:]}  # (a sweep or two may still be in flight)

    case.apply({"action": "tcmep_train"})
    with pytest.raises(StimulationError, match="refused"):
        case.apply({"action": "tcmep_train"})  # the board's minimum train interval
    time.sleep(0.8)
    mep = [s for s in sweeps if s.modality == "mep"]
    assert len(mep) == 1  # a 5-pulse train is one sweep, locked to its last pulse


@pytest.fixture
def held_board_case(tmp_path):
    """A board case whose host-to-board bytes a fault proxy can hold back (a starved host)."""
    from faultproxy import FaultProxy

    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=3, stderr=err) as vb:
        proxy = FaultProxy(vb.device, seed=1, p_damage=0.0, p_garbage=0.0)
        case = BoardCase(proxy.device)
        sweeps: list = []
        reader = threading.Thread(target=lambda: sweeps.extend(case), daemon=True)
        reader.start()
        try:
            yield case, sweeps, proxy
        finally:
            case.close()
            reader.join(timeout=5)
            proxy.close()
    err.close()


def _kinds(case) -> list[str]:
    return [e["kind"] for e in case.link_health()["board_events"]]


@pytest.mark.parametrize("quiet_s, stopped_by", [(0.4, "watchdog"), (2.6, "host-lost")])
def test_a_quiet_host_is_reported_and_stimulation_rearmed(held_board_case, quiet_s, stopped_by):
    """The board stops stimulation after 100 ms of host silence (and acquisition after 2 s). The host reports
    what the board did, restarts what the technologist had running, says that it did, and sweeps resume."""
    case, sweeps, proxy = held_board_case
    time.sleep(1.5)
    assert {s.source for s in sweeps} == {"L median", "R median", "L tibial", "R tibial"}
    proxy.hold_host(quiet_s)
    deadline = time.monotonic() + 20.0
    while "rearmed" not in _kinds(case) and time.monotonic() < deadline:
        time.sleep(0.1)
    health = case.link_health()
    kinds = [e["kind"] for e in health["board_events"]]
    assert stopped_by in kinds and "rearmed" in kinds, health
    assert health["stimulation_stopped"] is None  # running again
    rearm = next(e for e in health["board_events"] if e["kind"] == "rearmed")
    assert "L median" in rearm["detail"] and "R tibial" in rearm["detail"]
    assert [e["seq"] for e in health["board_events"]] == sorted({e["seq"] for e in health["board_events"]})
    n = len(sweeps)
    time.sleep(1.5)
    assert {s.source for s in sweeps[n:]} == {"L median", "R median", "L tibial", "R tibial"}
    assert case.state()["ssep"]["0"]["enabled"]  # the program was never turned off
