"""Issue 22 item 1: EEG from the same board, beside the SSEPs. The virtual board (firmware on MicroPython) records the
carotid procedure montage: its 8 EEG derivations carry an EEG scenario (ionm_hw.physiology.eeg), and BoardCase
gives them as 250-SPS EEG (ionm.board.eegtap) from the stream its SSEP sweeps are cut from."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from ionm.board.boardcase import BoardCase, procedure_montage
from ionm_hw.physiology.eeg import render_scenario
from ionm_hw.physiology.montage import EEG_DERIVATIONS

SEED = 6
EEG_SCENARIO = "cea_clamp_ischaemia"
RECORD_S = 14.0


def _band(x: np.ndarray) -> np.ndarray:
    """1-30 Hz, where the EEG's indices live (the board's channels also carry mains, which the model does not)."""
    return signal.sosfiltfilt(signal.butter(4, (1.0, 30.0), btype="bandpass", fs=250.0, output="sos"), x, axis=-1)


def test_the_carotid_montage_gives_the_scenarios_eeg_from_the_board_beside_the_median_sseps(tmp_path: Path) -> None:
    from ionm.board.virtual import VirtualBoard

    scen = tmp_path / "carotid.json"
    scen.write_text(json.dumps({"name": "carotid", "montage": "carotid", "eeg": EEG_SCENARIO}))
    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario=str(scen), seed=SEED, stderr=err) as vb:
        case = BoardCase(vb.device, montage=procedure_montage("carotid"))
        assert case.eeg_source is not None and case.eeg_source.names == EEG_DERIVATIONS
        sweeps: list = []
        blocks: list = []
        readers = [threading.Thread(target=lambda: sweeps.extend(case), daemon=True),
                   threading.Thread(target=lambda: blocks.extend(case.eeg_source), daemon=True)]
        for r in readers:
            r.start()
        try:
            deadline = time.monotonic() + 60.0
            while sum(b.n for b in blocks) < RECORD_S * 250 and time.monotonic() < deadline:
                time.sleep(0.5)
            health = case.link_health()
        finally:
            case.close()
            for r in readers:
                r.join(timeout=5)
    err.close()

    # contiguous 250-SPS EEG of the 8 derivations, on its own clock from 0
    assert blocks and all(b.fs == 250.0 and b.channel_names == EEG_DERIVATIONS for b in blocks)
    assert [b.first_index for b in blocks] == list(np.cumsum([0] + [b.n for b in blocks[:-1]]))
    # nothing lost silently: every board sample is in the EEG, received or (lost by the board) held and counted
    assert health["eeg_samples_held"] == health["samples_lost"]
    # the EEG is the scenario's, as the patient model renders it for this seed: each derivation found in it at one
    # delay (the board's acquisition starts after the patient's clock), through the ADC, the link and the decimation
    x = _band(np.concatenate([b.data_uv for b in blocks], axis=1).astype(float))[:, 250:]  # the filters' settling
    model = _band(render_scenario(EEG_SCENARIO, SEED, 250.0).samples_uv)[:, :int(60 * 250)]
    lags, peaks = [], []
    for k in range(len(EEG_DERIVATIONS)):
        c = signal.correlate(model[k], x[k], mode="valid")
        lag = int(np.argmax(c))
        seg = model[k, lag:lag + x.shape[1]]
        lags.append(lag)
        peaks.append(float(np.corrcoef(seg, x[k])[0, 1]))
    assert max(lags) - min(lags) <= 1, lags
    assert min(peaks) > 0.9, peaks
    # the same stream's SSEP sweeps: both median nerves on the 5 upper-limb channels, the tibial on its one
    got = {(s.modality, s.source): len(s.channels) for s in sweeps}
    assert got.get(("ssep-upper", "L median")) == 5 and got.get(("ssep-upper", "R median")) == 5
    assert got.get(("ssep-lower", "L tibial")) == 1


def test_an_eeg_scenario_the_montage_does_not_record_is_refused_with_the_reason() -> None:
    from ionm_hw.patient import VirtualPatient

    with pytest.raises(ValueError, match="records none of the montage's EEG channels"):
        VirtualPatient({"eeg": EEG_SCENARIO}, 1, 8000.0)  # the default montage has no EEG derivation
    with pytest.raises(ValueError, match="no procedure montage 'spine'"):
        procedure_montage("spine")
