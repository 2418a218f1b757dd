"""Free-running EMG: per channel, spikes, bursts, neurotonic trains and A-trains, cautery suppressed and
stimulus artefacts blanked; cumulative A-train time per channel. docs/EVALUATION.md ("Free-running EMG")
describes the method and its assumptions.

Causal and streaming: FreeRunDetector.push(block) takes any number of samples ([n_channels, n], µV) and
returns the events that have ended; finish() returns the rest. Work is done in frames of FRAME_MS and every
filter keeps its state, so the events do not depend on how the record is cut into blocks.

Per channel, per sample:
1. stimulus blanking: from BLANK_PRE_MS before to blank_ms after each stimulus the raw signal is held at
   its last value before the window (the artefact never reaches the filters);
2. a causal band-pass (Butterworth, 20–1000 Hz) for discharges, and a causal high-pass above 1.5 kHz for
   cautery: MUPs and A-trains have almost no power there, cautery (aliased RF) is white;
3. a frame whose high-band rms exceeds cautery_uv is cautery; the cautery period lasts until
   CAUTERY_HOLD_MS after the last such frame (its fading ramp), and no discharge is counted in it;
4. a discharge is an upward crossing of |x| over the threshold, max(threshold_uv, noise_factor × noise),
   at least DEAD_MS after the previous one (the two phases of a MUP are one discharge); noise is the
   median rms of the last NOISE_FRAMES quiet frames (no crossing, no cautery);
5. discharges less than GAP_MS apart form a group; a group ends GAP_MS after its last discharge and is
   then classified: 1 discharge: spike; sinusoidal (≥ A_TRAIN_CONCENTRATION of the power within ±15 % of
   the dominant frequency, 50–250 Hz) and at least A_TRAIN_MIN_MS long: a_train; ≥ NEUROTONIC_MIN
   discharges over ≥ NEUROTONIC_MIN_MS: neurotonic; otherwise burst. A group still open when cautery
   starts is dropped (its discharges were the cautery's onset).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import signal

FRAME_MS = 5.0
BAND_HZ = (20.0, 1000.0)
CAUTERY_HP_HZ = 1500.0
MIN_FS_HZ = 4000.0  # the cautery band (above 1.5 kHz) needs it
BLANK_PRE_MS = 0.5
DEAD_MS = 3.0
GAP_MS = 100.0  # neurotonic firing down to 10 Hz stays one train
NOISE_FRAMES = 400  # 2 s of quiet frames
NOISE_UPDATE_FRAMES = 20  # the noise median is refreshed every 100 ms
AFTER_BLANK_MS = 20.0  # the step at a blanking window's end (held value -> signal) rings this long (20 Hz high-pass)
CAUTERY_HOLD_MS = 100.0
EVOKED_BLANK_MS = 25.0  # after a stimulus that evokes a muscle response: the vocalis CMAP ends by ~20 ms
A_TRAIN_HZ = (50.0, 250.0)
A_TRAIN_CONCENTRATION = 0.5
A_TRAIN_MIN_MS = 30.0
A_TRAIN_ANALYSIS_S = 2.0  # samples kept per group for the spectrum; a longer train is classified on its start
NEUROTONIC_MIN = 5
NEUROTONIC_MIN_MS = 80.0


@dataclass
class EmgConfig:
    threshold_uv: float = 30.0  # absolute floor of the discharge threshold, µV
    noise_factor: float = 6.0  # threshold in units of the quiet background rms
    cautery_uv: float = 25.0  # high-band (> 1.5 kHz) rms of a cautery frame, µV
    blank_ms: float = 8.0  # stimulus blanking after each stimulus, ms


@dataclass(frozen=True)
class EmgEvent:
    t_s: float
    end_s: float
    channel: str
    kind: str  # spike, burst, neurotonic, a_train, cautery
    rate_hz: float | None
    peak_uv: float | None

    def as_json(self) -> dict[str, Any]:
        def r(v: float | None, d: int) -> float | None:
            return None if v is None else round(float(v), d)

        return {"t_s": r(self.t_s, 4), "end_s": r(self.end_s, 4), "channel": self.channel, "kind": self.kind,
                "rate_hz": r(self.rate_hz, 2), "peak_uv": r(self.peak_uv, 1)}


@dataclass
class _Group:
    times: list[int]  # sample index of each discharge
    peak: float
    samples: list[np.ndarray] = field(default_factory=list)  # band-passed frames since the first discharge
    n_kept: int = 0


class _Channel:
    def __init__(self, name: str, fs: float, cfg: EmgConfig) -> None:
        self.name = name
        self.fs = fs
        self.cfg = cfg
        self.noise: deque[float] = deque(maxlen=NOISE_FRAMES)
        self.noise_uv = 0.0  # median of self.noise, refreshed every NOISE_UPDATE_FRAMES frames
        self.above = False
        self.last_discharge = -(10**12)
        self.group: _Group | None = None
        self.cautery_start: int | None = None
        self.cautery_last = -(10**12)  # last cautery frame's end sample
        self.cautery_peak = 0.0
        self.a_train_s = 0.0

    def threshold(self, frame_index: int) -> float:
        if frame_index % NOISE_UPDATE_FRAMES == 0 and self.noise:
            self.noise_uv = float(np.median(self.noise))
        return max(self.cfg.threshold_uv, self.cfg.noise_factor * self.noise_uv)

    def frame(self, band: np.ndarray, high_rms: float, raw_sd: float, blanked: np.ndarray, first: int,
              out: list[EmgEvent]) -> None:
        """One frame: band-passed µV from sample index first, the cautery band's rms (µV; 0 where the frame
        is mostly blanked), the raw signal's SD (µV) and which samples are blanked or just after (the step at
        a window's end rings there, so they never set a peak)."""
        end = first + band.size
        hold = int(CAUTERY_HOLD_MS * 1e-3 * self.fs)
        if high_rms > self.cfg.cautery_uv:
            if self.cautery_start is None:
                self.cautery_start = first
                self.cautery_peak = 0.0
                self.group = None  # discharges just before cautery are its onset, not the nerve's
            self.cautery_last = end
            self.cautery_peak = max(self.cautery_peak, raw_sd)
        if self.cautery_start is not None:
            if end - self.cautery_last > hold:
                out.append(EmgEvent(self.cautery_start / self.fs, self.cautery_last / self.fs, self.name, "cautery",
                                    None, self.cautery_peak))
                self.cautery_start = None
            else:
                self.above = False
                return
        thr = self.threshold(first // band.size)
        if self.group is None and not self.above and float(np.max(band)) <= thr and float(np.min(band)) >= -thr:
            self.noise.append(float(np.sqrt(np.mean(band * band))))  # the common case: a quiet frame
            return
        mag = np.abs(band)
        above = mag > thr
        rising = np.flatnonzero(above & ~np.r_[self.above, above[:-1]])
        self.above = bool(above[-1])
        dead = int(DEAD_MS * 1e-3 * self.fs)
        gap = int(GAP_MS * 1e-3 * self.fs)
        for i in rising:
            t = first + int(i)
            if t - self.last_discharge < dead:
                continue
            if self.group is not None and t - self.group.times[-1] > gap:
                self._close(out)
            if self.group is None:
                self.group = _Group([t], 0.0)
            else:
                self.group.times.append(t)
            self.last_discharge = t
        if self.group is not None:
            g = self.group
            start = max(g.times[0] - first, 0)
            clean = mag[start:][~blanked[start:]]
            g.peak = max(g.peak, float(np.max(clean)) if clean.size else 0.0)
            keep = int(A_TRAIN_ANALYSIS_S * self.fs) - g.n_kept
            if keep > 0 and start < band.size:
                piece = band[start : start + keep]
                g.samples.append(piece.copy())
                g.n_kept += piece.size
            if end - g.times[-1] > gap:
                self._close(out)
        if not rising.size and not above.any():
            self.noise.append(float(np.sqrt(np.mean(band * band))))

    def _close(self, out: list[EmgEvent]) -> None:
        g = self.group
        self.group = None
        if g is None:
            return
        fs = self.fs
        t0, t1 = g.times[0] / fs, g.times[-1] / fs
        n = len(g.times)
        x = np.concatenate(g.samples) if g.samples else np.zeros(0)
        kind, rate = "burst", None
        if n == 1:
            kind = "spike"
        else:
            f0, conc, cycles = _dominant(x, fs, t1 - t0)
            if conc >= A_TRAIN_CONCENTRATION and A_TRAIN_HZ[0] <= f0 <= A_TRAIN_HZ[1] \
                    and (t1 - t0) * 1e3 >= A_TRAIN_MIN_MS:
                kind, rate = "a_train", cycles
                t1 = max(t1, t0 + 1.0 / f0)  # at least one cycle long
                self.a_train_s += t1 - t0
            elif n >= NEUROTONIC_MIN and (t1 - t0) * 1e3 >= NEUROTONIC_MIN_MS:
                kind, rate = "neurotonic", (n - 1) / (t1 - t0)
        out.append(EmgEvent(t0, t1, self.name, kind, rate, g.peak))

    def flush(self, out: list[EmgEvent]) -> None:
        self._close(out)
        if self.cautery_start is not None:
            out.append(EmgEvent(self.cautery_start / self.fs, self.cautery_last / self.fs, self.name, "cautery",
                                None, self.cautery_peak))
            self.cautery_start = None


def _dominant(x: np.ndarray, fs: float, duration_s: float) -> tuple[float, float, float]:
    """(dominant frequency Hz, fraction of 20–1000 Hz power within ±15 % of it, cycle rate Hz) of a group's
    band-passed samples; the cycle rate counts the upward zero crossings over the train's own span."""
    n = min(x.size, int(duration_s * fs) + 1)
    x = x[:n]
    if n < 16:
        return 0.0, 0.0, 0.0
    spec = np.abs(np.fft.rfft(x * np.hanning(n), 4 * n)) ** 2  # zero-padded: 1/4 bin resolution
    f = np.fft.rfftfreq(4 * n, 1.0 / fs)
    band = (f >= BAND_HZ[0]) & (f <= BAND_HZ[1])
    total = float(np.sum(spec[band]))
    if total <= 0:
        return 0.0, 0.0, 0.0
    search = (f >= A_TRAIN_HZ[0] * 0.85) & (f <= A_TRAIN_HZ[1] * 1.15)
    f0 = float(f[search][np.argmax(spec[search])])
    near = (f >= 0.85 * f0) & (f <= 1.15 * f0)
    conc = float(np.sum(spec[near])) / total
    up = np.flatnonzero((x[:-1] < 0) & (x[1:] >= 0))
    cycles = (up.size - 1) * fs / (up[-1] - up[0]) if up.size > 2 else f0
    return f0, conc, float(cycles)


class FreeRunDetector:
    """Causal free-run EMG analysis of n channels at fs Hz (≥ MIN_FS_HZ); µV in, EmgEvents out."""

    def __init__(self, fs: float, channel_names: list[str], config: EmgConfig | None = None) -> None:
        if not fs >= MIN_FS_HZ:
            raise ValueError("free-run EMG needs a sample rate of at least %g Hz, got %g" % (MIN_FS_HZ, fs))
        self.fs = float(fs)
        self.cfg = config or EmgConfig()
        self.channels = [_Channel(name, self.fs, self.cfg) for name in channel_names]
        self.frame_len = max(int(round(FRAME_MS * 1e-3 * self.fs)), 1)
        self._pending = np.zeros((len(channel_names), 0))
        self._first = 0  # sample index of _pending[:, 0]
        self._stims: list[tuple[int, int]] = []  # (stimulus sample index, blanking after it), sorted, not yet past
        self._last_raw = np.zeros(len(channel_names))  # the previous frame's last sample, after blanking, µV
        self._sos_band = signal.butter(2, BAND_HZ, btype="bandpass", fs=self.fs, output="sos")
        self._sos_high = signal.butter(4, CAUTERY_HP_HZ, btype="highpass", fs=self.fs, output="sos")
        self._zi_band = np.zeros((self._sos_band.shape[0], len(channel_names), 2))
        self._zi_high = np.zeros((self._sos_high.shape[0], len(channel_names), 2))

    @property
    def n_samples(self) -> int:
        return self._first + self._pending.shape[1]

    def add_stimuli(self, times_s: Any, blank_ms: float | None = None) -> None:
        """Stimulus times (s from the first sample); a stimulus must be known before its samples are pushed.
        blank_ms: how long after these stimuli nothing is a discharge (default the config's, for the artefact);
        a stimulus that evokes a muscle response on these channels (continuous vagal stimulation: the vocalis
        CMAP, ionm.pipeline.rln) needs its response window blanked too, EVOKED_BLANK_MS."""
        post = int(round((self.cfg.blank_ms if blank_ms is None else blank_ms) * 1e-3 * self.fs))
        idx = [(int(round(float(t) * self.fs)), post) for t in np.atleast_1d(np.asarray(times_s, dtype=float))]
        self._stims = sorted(self._stims + idx)

    def ongoing(self) -> list[EmgEvent]:
        """Discharge groups still open (kind "ongoing", end_s = the latest discharge, rate_hz None): a display
        can mark a train from its onset instead of waiting for its end; the final event replaces it."""
        return [EmgEvent(c.group.times[0] / self.fs, c.group.times[-1] / self.fs, c.name, "ongoing", None,
                         c.group.peak) for c in self.channels if c.group is not None]

    def cumulative_a_train_s(self) -> dict[str, float]:
        return {c.name: c.a_train_s for c in self.channels}

    def _blank(self, x: np.ndarray, first: int) -> np.ndarray:
        """Hold each channel at its last raw value before a blanking window, in place (x starts at sample
        first); returns the mask of samples the cautery band ignores (windows and AFTER_BLANK_MS after)."""
        pre = int(round(BLANK_PRE_MS * 1e-3 * self.fs))
        after = int(round(AFTER_BLANK_MS * 1e-3 * self.fs))
        n = x.shape[1]
        end = first + n
        ignore = np.zeros(n, dtype=bool)
        for s, post in self._stims:
            lo, hi = max(s - pre, first), min(s + post, end)
            ignore[max(lo - first, 0) : max(min(s + post + after, end) - first, 0)] = True
            if lo >= hi:
                continue
            # The value just before the window: in this segment, or the last (possibly held) one before it.
            x[:, lo - first : hi - first] = (x[:, lo - first - 1] if lo > first else self._last_raw)[:, None]
        if n:
            self._last_raw = x[:, -1].copy()
        self._stims = [(s, post) for s, post in self._stims if s + post + after > end]
        return ignore

    def push(self, block: np.ndarray) -> list[EmgEvent]:
        """Samples [n_channels, n] in µV, following those pushed before; the events that ended."""
        block = np.atleast_2d(np.asarray(block, dtype=float))
        if block.shape[0] != len(self.channels):
            raise ValueError("block has %d channels, the detector %d" % (block.shape[0], len(self.channels)))
        data = np.concatenate([self._pending, block], axis=1)
        f = self.frame_len
        n_frames = data.shape[1] // f
        used = n_frames * f
        x = data[:, :used].copy()
        self._pending = data[:, used:]
        out: list[EmgEvent] = []
        if not n_frames:
            return out
        first = self._first
        self._first += used
        ignore = self._blank(x, first)
        # Filters over the whole segment with carried state: sample for sample what frame-wise filtering gives.
        band, self._zi_band = signal.sosfilt(self._sos_band, x, axis=1, zi=self._zi_band)
        high, self._zi_high = signal.sosfilt(self._sos_high, x, axis=1, zi=self._zi_high)
        keep = (~ignore).reshape(n_frames, f)
        kept = keep.sum(axis=1)
        high2 = (high * high).reshape(len(self.channels), n_frames, f)
        high_rms = np.sqrt(np.sum(high2 * keep, axis=2) / np.maximum(kept, 1))  # [ch, frame]
        high_rms[:, kept < f // 2] = 0.0  # mostly blanked: no cautery decision from this frame
        raw_sd = x.reshape(len(self.channels), n_frames, f).std(axis=2)
        for k in range(n_frames):
            for c, ch in enumerate(self.channels):
                ch.frame(band[c, k * f : (k + 1) * f], float(high_rms[c, k]), float(raw_sd[c, k]), ~keep[k],
                         first + k * f, out)
        return sorted(out, key=lambda e: (e.t_s, e.channel))

    def finish(self) -> list[EmgEvent]:
        """The events still open at the end of the record (the last partial frame is dropped)."""
        out: list[EmgEvent] = []
        for ch in self.channels:
            ch.flush(out)
        return sorted(out, key=lambda e: (e.t_s, e.channel))


def detect(samples_uv: np.ndarray, fs: float, channel_names: list[str], stim_times_s: Any = (),
           config: EmgConfig | None = None, evoked_times_s: Any = ()) -> tuple[list[EmgEvent], dict[str, float]]:
    """The whole record at once: (events sorted by onset, cumulative A-train time per channel, s).
    evoked_times_s: stimuli that evoke a muscle response on the channels (blanked for EVOKED_BLANK_MS); a time in
    both lists is blanked for the longer."""
    det = FreeRunDetector(fs, channel_names, config)
    evoked = {round(float(t), 6) for t in np.atleast_1d(np.asarray(evoked_times_s, dtype=float))}
    plain = np.atleast_1d(np.asarray(stim_times_s, dtype=float))
    det.add_stimuli([t for t in plain if round(float(t), 6) not in evoked])
    det.add_stimuli(sorted(evoked), EVOKED_BLANK_MS)
    events = det.push(samples_uv) + det.finish()
    return sorted(events, key=lambda e: (e.t_s, e.channel)), det.cumulative_a_train_s()
