"""Free-running EMG in the live case: what the engine does with each block of continuous EMG (ionm.sweep.EmgBlock).

Three paths leave a block, each at its own pace, so that neither the display nor the sound can hold up the
analysis, and the analysis cannot hold up the sound:

- sound (AudioPacker, on the source's thread as the block arrives, before any analysis): the block high-passed
  (DISPLAY_HP_HZ), as int16 at AUDIO_UV_PER_LSB, resampled to AUDIO_RATE_HZ; the server sends it to each viewer
  that turned its sound on, only the channels it has not muted, as a binary WebSocket message (audio_message);
- analysis (FreeRunMonitor.process, on the engine thread): ionm.pipeline.emg's causal detector on the raw block;
  its events (spikes, bursts, neurotonic trains, A-trains, cautery) and the cumulative A-train time per channel;
- display (FreeRunMonitor.process too): the high-passed block as min/max columns of DISPLAY_BIN_S per channel,
  integer µV, sent as incremental items; the last VIEW_S of them are kept for a new viewer's snapshot. When the
  analysis falls behind, every block is still analysed (never a sample dropped); columns older than VIEW_S
  behind the newest are not sent (they would scroll off a screen at once), the snapshot has them.

The A-train warning (Romstöck 2000, Prell 2007: more than ~10 s of cumulative A-train time on a facial muscle
predicts a postoperative facial paresis): on a facial-nerve channel (is_facial) whose cumulative A-train time
reaches warn_s (default A_TRAIN_WARN_S) the engine raises an alert once; the page shows the running figure.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal

from ionm.pipeline.emg import EVOKED_BLANK_MS, EmgConfig, EmgEvent, FreeRunDetector
from ionm.sweep import EmgBlock

STREAM = "emg/free-run"  # the key of free-run EMG in alerts, technical alarms and the store
A_TRAIN_WARN_S = 10.0  # cumulative A-train time on a facial channel that raises the warning (s)
DISPLAY_HP_HZ = 20.0  # high-pass of what is drawn and heard (electrode drift, movement): 2nd-order Butterworth
DISPLAY_BIN_S = 0.01  # one min/max column per 10 ms: 1000 columns over a 10-s screen
VIEW_S = 10.0  # the longest time base (1 s/div x 10 div); a new viewer gets this much
AUDIO_RATE_HZ = 8000.0
AUDIO_UV_PER_LSB = 0.1  # int16 steps of 0.1 µV: +-3.3 mV before clipping (cautery clips; discharges do not)
AUDIO_VERSION = 1
AUDIO_HEADER = struct.Struct("<BBHIddd")  # version, channels, rate Hz, samples per channel, t_s, wall0, index0
FACIAL_WORDS = ("orbicularis", "oris", "oculi", "mentalis", "nasalis", "frontalis", "zygomatic", "facial",
                "levator labii", "buccinator", "platysma")


def is_facial(label: str) -> bool:
    """A channel on a muscle of the facial nerve (VII), by its label: the A-train warning applies to these."""
    low = label.lower()
    return any(w in low for w in FACIAL_WORDS)



class AudioPacker:
    """Blocks to int16 sound at AUDIO_RATE_HZ (high-passed as the display): one per source, on its thread."""

    def __init__(self, fs: float, n_channels: int) -> None:
        self.fs = float(fs)
        self.factor = int(round(self.fs / AUDIO_RATE_HZ))
        if self.factor < 1 or abs(self.fs / self.factor - AUDIO_RATE_HZ) > 1e-6:
            raise ValueError("free-run EMG at %g Hz cannot be played at %g Hz" % (fs, AUDIO_RATE_HZ))
        self.sos = signal.butter(2, DISPLAY_HP_HZ, btype="highpass", fs=self.fs, output="sos")
        self.zi = np.zeros((self.sos.shape[0], n_channels, 2))
        # above 1 (a faster source): an anti-alias low-pass at 0.4 of the audio rate before taking every factor-th
        self.aa = (signal.butter(6, 0.4 * AUDIO_RATE_HZ, fs=self.fs, output="sos") if self.factor > 1 else None)
        self.zi_aa = None if self.aa is None else np.zeros((self.aa.shape[0], n_channels, 2))
        self.phase = 0  # samples of the source to skip before the next kept one

    def filtered(self, block: EmgBlock) -> np.ndarray:
        """The block high-passed, µV [ch, n] (what is drawn and heard)."""
        y, self.zi = signal.sosfilt(self.sos, np.asarray(block.data_uv, dtype=np.float64), axis=1, zi=self.zi)
        return np.asarray(y)

    def pcm(self, hp: np.ndarray) -> np.ndarray:
        """int16 [ch, m] at AUDIO_RATE_HZ from a high-passed block."""
        x = hp
        if self.aa is not None:
            x, self.zi_aa = signal.sosfilt(self.aa, x, axis=1, zi=self.zi_aa)
            x = x[:, self.phase :: self.factor]
            self.phase = (self.phase - hp.shape[1]) % self.factor
        return np.clip(np.round(x / AUDIO_UV_PER_LSB), -32767, 32767).astype(np.int16)


def audio_message(meta: dict[str, Any], pcm: np.ndarray, channels: Iterable[int]) -> bytes:
    """One binary WebSocket message of sound: AUDIO_HEADER (little-endian: version, number of channels, rate,
    samples per channel, case time of the first sample, host wall clock when the first sample was acquired,
    its sample index at the audio rate), the channel numbers (one byte each, ascending, padded to an even length), then
    int16 samples channel after channel (AUDIO_UV_PER_LSB µV per step)."""
    chans = sorted({int(c) for c in channels if 0 <= c < pcm.shape[0]})
    head = AUDIO_HEADER.pack(AUDIO_VERSION, len(chans), int(AUDIO_RATE_HZ), pcm.shape[1], meta["t_s"],
                             meta["wall0"], float(meta["index0"]))
    ids = bytes(chans) + (b"\0" if len(chans) % 2 else b"")
    return head + ids + np.ascontiguousarray(pcm[chans]).astype("<i2").tobytes()


@dataclass
class ChannelState:
    name: str
    facial: bool
    a_train_s: float = 0.0  # cumulative A-train time, s (the detector's, plus what was recorded before a restart)
    warned: bool = False  # the warning was raised (once per channel and case)
    counts: dict[str, int] | None = None


class FreeRunMonitor:
    """The EMG path of one free-run source in the engine (engine thread, apart from the AudioPacker)."""

    def __init__(self, fs: float, names: Iterable[str], *, warn_s: float = A_TRAIN_WARN_S,
                 config: EmgConfig | None = None) -> None:
        self.fs = float(fs)
        self.names = list(names)
        self.warn_s = float(warn_s)
        self.detector = FreeRunDetector(self.fs, self.names, config)
        self.audio = AudioPacker(self.fs, len(self.names))
        self.channels = [ChannelState(n, is_facial(n), counts={}) for n in self.names]
        self.a_train_before = [0.0] * len(self.names)  # recorded before a restart (the detector starts at 0)
        self.bin_n = max(int(round(DISPLAY_BIN_S * self.fs)), 1)
        self._bin_rest = np.zeros((len(self.names), 0))  # samples of the column not yet complete
        self._bin_t: float | None = None  # case time of the next column's start
        self.view: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=int(round(VIEW_S / DISPLAY_BIN_S)))
        self.events: deque[dict[str, Any]] = deque(maxlen=400)  # the newest, for the snapshot's marks
        self.t0_s: float | None = None  # case time of the detector's sample 0
        self.t_s = 0.0  # case time of the newest sample analysed
        self.blocks = 0

    # ---------------------------------------------------------------- analysis and display (engine thread)
    def process(self, block: EmgBlock, hp: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One block (raw, and high-passed for the display). Returns the events that ended (JSON-ready, case
        times) and the display columns completed by this block ({"k": "emg", "t0", "dt", "lo", "hi"} or None)."""
        if self.t0_s is None:
            self.t0_s = block.t_s
            self._bin_t = block.t_s
        t0 = self.t0_s
        plain = [t for t in block.stim_times_s if t not in block.evoked_times_s]
        if plain:
            self.detector.add_stimuli([t - t0 for t in plain])
        if block.evoked_times_s:
            self.detector.add_stimuli([t - t0 for t in block.evoked_times_s], EVOKED_BLANK_MS)
        out = [self._event(e) for e in self.detector.push(np.asarray(block.data_uv, dtype=np.float64))]
        self.t_s = block.t_s + block.n / self.fs
        self.blocks += 1
        return out, self._columns(hp)

    def _event(self, e: EmgEvent) -> dict[str, Any]:
        c = self.names.index(e.channel)
        ch = self.channels[c]
        assert ch.counts is not None
        ch.counts[e.kind] = ch.counts.get(e.kind, 0) + 1
        ch.a_train_s = self.a_train_before[c] + self.detector.channels[c].a_train_s
        ev = e.as_json()
        ev["t_s"] = round(float(e.t_s) + (self.t0_s or 0.0), 4)
        ev["end_s"] = round(float(e.end_s) + (self.t0_s or 0.0), 4)
        ev["ch"] = c
        if e.kind == "a_train":
            ev["cumulative_s"] = round(ch.a_train_s, 3)
        self.events.append(ev)
        return ev

    def _columns(self, hp: np.ndarray) -> dict[str, Any] | None:
        x = np.concatenate([self._bin_rest, hp], axis=1)
        k = x.shape[1] // self.bin_n
        self._bin_rest = x[:, k * self.bin_n :]
        if not k:
            return None
        cols = x[:, : k * self.bin_n].reshape(len(self.names), k, self.bin_n)
        lo = np.floor(cols.min(axis=2)).astype(np.int64)
        hi = np.ceil(cols.max(axis=2)).astype(np.int64)
        t = float(self._bin_t or 0.0)
        for j in range(k):
            self.view.append((t + j * DISPLAY_BIN_S, lo[:, j], hi[:, j]))
        self._bin_t = t + k * DISPLAY_BIN_S
        return {"k": "emg", "t0": round(t, 4), "dt": DISPLAY_BIN_S, "lo": lo.tolist(), "hi": hi.tolist()}

    def due_warnings(self) -> list[int]:
        """Facial channels whose cumulative A-train time reached the threshold and that were not warned yet
        (marked warned: the warning is raised once)."""
        due = []
        for c, ch in enumerate(self.channels):
            if ch.facial and not ch.warned and ch.a_train_s >= self.warn_s:
                ch.warned = True
                due.append(c)
        return due

    # ---------------------------------------------------------------- what a viewer is given
    def frame(self) -> dict[str, Any]:
        """The free-run state (small; sent whenever it changes): channels with their cumulative A-train time, the
        threshold, counts per kind, and the discharges under way (marked from their onset)."""
        t0 = self.t0_s or 0.0
        ongoing = [{"ch": self.names.index(e.channel), "t_s": round(e.t_s + t0, 3), "end_s": round(e.end_s + t0, 3),
                    "peak_uv": None if e.peak_uv is None else round(e.peak_uv, 1)} for e in self.detector.ongoing()]
        return {"t_s": round(self.t_s, 3), "fs": self.fs, "warn_s": self.warn_s,
                "audio": {"rate_hz": AUDIO_RATE_HZ, "uv_per_lsb": AUDIO_UV_PER_LSB},
                "channels": [{"name": ch.name, "facial": ch.facial, "a_train_s": round(ch.a_train_s, 3),
                              "warned": ch.warned, "counts": dict(ch.counts or {})} for ch in self.channels],
                "ongoing": ongoing}

    def view_frame(self) -> dict[str, Any]:
        """The last VIEW_S of display columns and the events among them: what a new viewer draws at once."""
        if not self.view:
            return {"t0": None, "dt": DISPLAY_BIN_S, "lo": [], "hi": [], "events": []}
        t0 = self.view[0][0]
        lo = np.stack([v[1] for v in self.view], axis=1)
        hi = np.stack([v[2] for v in self.view], axis=1)
        return {"t0": round(t0, 4), "dt": DISPLAY_BIN_S, "lo": lo.tolist(), "hi": hi.tolist(),
                "events": [e for e in self.events if e["end_s"] >= t0]}

    def restore(self, events: Iterable[dict[str, Any]], warned: Iterable[str]) -> None:
        """After a restart: the recorded events' cumulative A-train time and counts, and which channels were
        warned (the warning is not raised again)."""
        for ev in events:
            if ev.get("channel") not in self.names:
                continue
            c = self.names.index(ev["channel"])
            ch = self.channels[c]
            assert ch.counts is not None
            ch.counts[ev["kind"]] = ch.counts.get(ev["kind"], 0) + 1
            if ev["kind"] == "a_train":
                self.a_train_before[c] += float(ev["end_s"]) - float(ev["t_s"])
            ch.a_train_s = self.a_train_before[c]
        for name in warned:
            if name in self.names:
                self.channels[self.names.index(name)].warned = True
