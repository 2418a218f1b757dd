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
