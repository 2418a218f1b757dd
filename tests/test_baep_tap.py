"""BAEP from the board's stream (ionm.board.baeptap): click-locked sweeps at 8 kSPS as 20-kHz BAEP blocks."""

from __future__ import annotations

import numpy as np

from ionm.board.baeptap import BLOCK, EDGE_MS, POST_MS, PRE_MS, BaepTap
from ionm.sweep import Sweep

FS = 8000.0


def _sweep(t_s: float, k: int, drift_uv: float = 0.0) -> Sweep:
    """A board sweep cut as BoardCase cuts it (PRE_MS + EDGE_MS before the click, POST_MS + EDGE_MS after): a
    0.5-µV wave V at 5.7 ms on the ipsilateral channel, and a slow drift of drift_uv (EEG, electrode) under it."""
    pre = int(round((PRE_MS + EDGE_MS) * FS / 1000))
    n = pre + int(round((POST_MS + EDGE_MS) * FS / 1000))
    ms = (np.arange(n) - pre) * 1000 / FS
    wave = 0.5 * np.exp(-0.5 * ((ms - 5.7) / 0.25) ** 2)
    slow = drift_uv * (1 + ms / 20.0) ** 2
    data = np.stack([wave + slow, slow]).astype(np.float32)
    return Sweep(t_s, k, "baep", "L ear", FS, pre, (14, 15), ("Cz-A1 (BAEP)", "Cz-A2 (BAEP)"), data)


def test_sweeps_become_20_khz_blocks_with_the_wave_where_it_was_and_the_drift_taken_off() -> None:
    tap = BaepTap("L", 21.1)
    for k in range(25):
        tap.put(_sweep(k / 21.1, k, drift_uv=30.0 * (-1) ** k))
    tap.close()
    blocks = list(tap)
    assert len(blocks) == 25 // BLOCK and tap.sweeps_in == 25
    b = blocks[0]
    assert (b.fs, b.pre_samples, b.sweeps_uv.shape) == (20000.0, 20, (2, BLOCK, 220))
    assert [x.first_sweep for x in blocks] == [0, BLOCK] and abs(blocks[1].t_s - BLOCK / 21.1) < 1e-9
    avg = np.concatenate([x.sweeps_uv for x in blocks], axis=1).mean(axis=1)
    ms = (np.arange(220) - 20) / 20.0
    assert abs(ms[int(np.argmax(avg[0]))] - 5.7) <= 0.05  # band-limited interpolation: the peak stays put
    assert np.max(np.abs(avg[1])) < 0.05  # 30 µV of drift, alternating in sign: gone from every sweep alike
    assert np.max(np.abs(blocks[0].sweeps_uv[1])) < 0.5


def test_a_sweep_with_samples_the_board_lost_is_dropped_and_counted_never_averaged() -> None:
    tap = BaepTap("L", 21.1)
    lost = _sweep(0.0, 0)
    lost.data_uv[:, 40:60] = np.nan  # (the live case's buffer holds NaN where the board lost samples)
    tap.put(lost)
    for k in range(1, 11):
        tap.put(_sweep(k / 21.1, k))
    tap.close()
    (block,) = list(tap)
    assert np.isfinite(block.sweeps_uv).all() and tap.link_health()["baep_sweeps_incomplete"] == 1
    assert tap.sweeps_in == 10


def test_a_resumed_case_holds_its_sweeps_until_begin_and_a_restarted_board_clock_goes_on() -> None:
    tap = BaepTap("R", 21.1, start_s=None)
    for k in range(10):
        tap.put(_sweep(k / 21.1, k))
    assert tap.sweeps_in == 0  # held
    tap.begin(600.0)
    for k in range(10):  # the board restarted acquisition: its clock is back at 0
        tap.put(_sweep(k / 21.1, k))
    tap.close()
    blocks = list(tap)
    assert [round(b.t_s, 3) for b in blocks] == [600.0, round(600.0 + 10 / 21.1, 3)]
    assert blocks[0].side == "R"
