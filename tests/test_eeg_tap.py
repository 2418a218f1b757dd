"""EEG from the board's stream (ionm.board.eegtap): the montage's EEG channels decimated from 8 kSPS to 250 SPS."""

from __future__ import annotations

import threading

import numpy as np
from scipy import signal

from ionm.board.eegtap import EegTap

FS = 8000.0


def _stream(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two board channels at FS: a 10 Hz alpha of 20 µV amplitude on both, 3 kHz of 200 µV (stimulus artefact,
    muscle) on the first, and the EEG each should give (the 10 Hz alone)."""
    t = np.arange(int(seconds * FS)) / FS
    alpha = 20.0 * np.sin(2 * np.pi * 10.0 * t)
    x = np.stack([alpha + 200.0 * np.sin(2 * np.pi * 3000.0 * t), alpha, np.zeros_like(t)], axis=1)
    return x, alpha


def _drain(tap: EegTap) -> list:
    tap.close()
    return list(tap)


def test_the_eeg_keeps_its_band_loses_what_is_above_it_and_comes_in_contiguous_blocks() -> None:
    x, alpha = _stream(4.0)
    tap = EegTap([0, 1], ["F3-C3", "F4-C4"], FS)
    for i in range(0, x.shape[0], 64):
        tap.feed(i, x[i:i + 64])
    blocks = _drain(tap)
    assert [b.first_index for b in blocks] == list(range(0, 62 * len(blocks), 62))  # 0.25 s of 250 SPS each
    assert all(b.fs == 250.0 and b.channel_names == ("F3-C3", "F4-C4") for b in blocks)
    y = np.concatenate([b.data_uv for b in blocks], axis=1)
    assert y.shape[1] == 992 // 62 * 62  # 4 s at 250 SPS, in whole blocks
    ref = alpha[::32][:y.shape[1]]
    # after the filter's settling (0.5 s), alpha passes within 1 % of its amplitude, delayed by the anti-alias filter
    # (8th order at 70 Hz: ~12 ms at 10 Hz, 3 samples), nothing an EEG trend of seconds notices
    lag = int(np.argmax(signal.correlate(y[1, 125:], ref[125:], mode="full"))) - (y.shape[1] - 126)
    assert 2 <= lag <= 4
    for ch in (0, 1):
        amp = np.sqrt(2) * np.std(y[ch, 125:])
        assert abs(amp - 20.0) < 0.2
    assert np.max(np.abs(y[0, 125:] - y[1, 125:])) < 0.5  # the 3 kHz of 200 µV folded into nothing visible


def test_a_gap_the_board_lost_is_held_and_counted_and_a_new_run_goes_on() -> None:
    x, _ = _stream(3.0)
    tap = EegTap([1], ["C3-P3"], FS)
    for i in range(0, 8000, 64):
        tap.feed(i, x[i:i + 64])
    for i in range(8000 + 640, 16000, 64):  # 640 samples (80 ms) lost by the board
        tap.feed(i, x[i:i + 64])
    assert tap.samples_held == 640
    for i in range(0, 4000, 64):  # the board restarted acquisition: its index is back at 0
        tap.feed(i, x[i:i + 64])
    assert tap.runs == 2
    blocks = _drain(tap)
    # the EEG's own clock never goes back and has no hole: 2 s, then 0.5 s of the new run
    assert [b.first_index for b in blocks] == list(range(0, 62 * len(blocks), 62))
    assert tap.samples_out == len(blocks) * 62 and len(blocks) == (16000 + 4000) // 32 // 62
    assert tap.link_health()["eeg_samples_held"] == 640


def test_a_resumed_case_goes_on_from_its_eeg_and_a_reader_ends_on_close() -> None:
    x, _ = _stream(1.0)
    tap = EegTap([1], ["C3-P3"], FS, start_s=120.0)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(tap))
    reader.start()
    for i in range(0, x.shape[0], 64):
        tap.feed(i, x[i:i + 64])
    tap.close()
    reader.join(5.0)
    assert not reader.is_alive()
    assert got and got[0].first_index == 30000 and got[0].t_s == 120.0


def test_a_resumed_board_case_holds_its_eeg_until_the_console_says_where_it_goes_on() -> None:
    """The board streams before the console has read the resumed case's stored EEG: nothing is dropped meanwhile, and
    the first block starts where the stored EEG ended."""
    x, _ = _stream(1.0)
    tap = EegTap([1], ["C3-P3"], FS, start_s=None)
    for i in range(0, x.shape[0], 64):
        tap.feed(i, x[i:i + 64])
    assert tap.blocks_sent == 0
    tap.begin(300.0)
    tap.begin(0.0)  # once only
    blocks = _drain(tap)
    assert [b.first_index for b in blocks] == [75000 + 62 * k for k in range(len(blocks))]
    assert len(blocks) == 8000 // 32 // 62 and blocks[0].t_s == 300.0
