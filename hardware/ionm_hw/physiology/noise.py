"""Background noise (EEG, EMG, electrode floor) and mains interference, random access by sample index.

Coloured noise is built from overlapping segments of 2C samples (hop C): each segment is an
independent realisation drawn from RNG(seed, stream, segment, channel) and shaped in the frequency
domain; neighbours are cross-faded with sine/cosine windows whose squares sum to one, so the variance
is the same everywhere and any sample range can be produced without rendering what came before.
Keying by channel means a subset of channels is identical to the same channels of the full montage.
"""

from __future__ import annotations

import numpy as np

from ionm_hw.physiology import keyed

SEGMENT_S = 2.0  # hop between cross-faded segments; spectral smearing ~1/SEGMENT_S Hz, harmless here
EEG_EXPONENT = 1.3  # EEG power ∝ 1/f^1.3 above 0.5 Hz (anaesthetised background)
EEG_CORNER_HZ = 0.5
EMG_BAND_HZ = (20.0, 500.0)  # surface EMG power band


def _unit_shape(power: np.ndarray) -> np.ndarray:
    """Amplitude spectrum with sum of squares = 1 (scaled later to a target rms)."""
    total = float(np.sum(power))
    return np.sqrt(power / total) if total > 0 else np.zeros_like(power)


class BackgroundNoise:
    """Per-channel stationary noise: eeg_uv·(1/f) + emg_uv·(20–500 Hz) + floor_uv·white (µV rms each)."""

    def __init__(self, seed: int, fs_hz: float, levels_uv: np.ndarray) -> None:
        # levels_uv: (n_channels, 3) rms of the EEG, EMG and white components, µV.
        self._seed = seed
        self._levels = np.asarray(levels_uv, dtype=float)
        self.hop = int(2 ** round(np.log2(SEGMENT_S * fs_hz)))  # samples (power of two: fast FFT)
        n = 2 * self.hop
        f = np.fft.rfftfreq(n, 1.0 / fs_hz)
        eeg = 1.0 / np.maximum(f, EEG_CORNER_HZ) ** EEG_EXPONENT
        eeg[0] = 0.0
        lo, hi = EMG_BAND_HZ
        emg = 1.0 / ((1 + (lo / np.maximum(f, 1e-3)) ** 4) * (1 + (f / hi) ** 4))  # 2nd-order-like band
        flat = np.ones_like(f)
        flat[0] = 0.0
        self._shapes = np.stack([_unit_shape(eeg), _unit_shape(emg), _unit_shape(flat)])  # (3, n_bins)
        m = np.arange(n)
        self._window = np.sin(np.pi * (m + 0.5) / n)
        self._cache = keyed.LruCache(48)
        self._amp: dict[int, np.ndarray] = {}

    def _amplitude(self, channel: int) -> np.ndarray:
        """Spectral amplitude of a channel's segments, V. irfft of (a+ib)·H (a, b unit normal) has variance
        ≈ Σ H² / C² (C = hop), so H is the unit shape times rms times C."""
        if channel not in self._amp:
            self._amp[channel] = self._levels[channel] @ self._shapes * 1e-6 * self.hop
        return self._amp[channel]

    def _segment(self, k: int, channel: int) -> np.ndarray:
        def make() -> np.ndarray:
            amp = self._amplitude(channel)
            g = keyed.rng(self._seed, keyed.BACKGROUND, k, channel)
            spec = g.standard_normal((2, amp.size))
            return np.fft.irfft((spec[0] + 1j * spec[1]) * amp, 2 * self.hop) * self._window

        out = self._cache.get((k, channel), make)
        assert isinstance(out, np.ndarray)
        return out

    def render(self, first: int, n: int, channels: list[int]) -> np.ndarray:
        out = np.zeros((n, len(channels)))
        c = self.hop
        for j, ch in enumerate(channels):
            if not self._levels[ch].any():
                continue
            pos = first
            while pos < first + n:
                k, r = divmod(pos, c)  # hop k: tail of segment k, head of segment k+1
                take = min(c - r, first + n - pos)
                a = self._segment(k, ch)[c + r : c + r + take]
                b = self._segment(k + 1, ch)[r : r + take]
                out[pos - first : pos - first + take, j] = a + b
                pos += take
        return out


class Mains:
    """Mains hum: fundamental and harmonics with a slowly drifting frequency (grid ±~0.005 Hz).

    The drift is a sum of slow sinusoids whose phase integral is analytic, so the phase at any sample is
    known without integrating from zero.
    """

    HARMONICS = (1, 2, 3, 5)
    DRIFT_HZ_RMS = 0.003

    def __init__(self, seed: int, fs_hz: float, mains_hz: float, amplitude_uv: np.ndarray) -> None:
        g = keyed.rng(seed, keyed.MAINS)
        self._fs = fs_hz
        self._f0 = mains_hz
        n_ch = len(amplitude_uv)
        rel = np.array([1.0, g.uniform(0.04, 0.15), g.uniform(0.15, 0.4), g.uniform(0.04, 0.15)])
        # Complex amplitude per (harmonic, channel): channel-specific pickup and phase (impedance imbalance).
        phase = g.uniform(0, 2 * np.pi, (len(self.HARMONICS), n_ch))
        self._amp = rel[:, None] * np.asarray(amplitude_uv)[None, :] * 1e-6 * np.exp(1j * phase)
        self._drift_a = self.DRIFT_HZ_RMS * np.sqrt(2.0 / 3.0) * np.ones(3)  # three components, Hz
        self._drift_f = 1.0 / g.uniform(30.0, 300.0, 3)  # Hz (periods 30–300 s)
        self._drift_p = g.uniform(0, 2 * np.pi, 3)

    def cycles(self, index: np.ndarray) -> np.ndarray:
        """Mains phase in cycles (fractional part) at the given sample indices."""
        t = index / self._fs
        base = np.mod(self._f0 * t, 1.0)  # float64: ~1e-9 cycle error even after a day
        w = 2 * np.pi * self._drift_f
        drift = np.sum(
            self._drift_a[:, None] * (np.cos(self._drift_p)[:, None] - np.cos(np.outer(w, t) + self._drift_p[:, None]))
            / w[:, None],
            axis=0,
        )
        return np.mod(base + drift, 1.0)

    def render(self, first: int, n: int, channels: list[int]) -> np.ndarray:
        idx = np.arange(first, first + n, dtype=np.int64)
        z = np.exp(2j * np.pi * self.cycles(idx))
        zh = np.stack([z**h for h in self.HARMONICS], axis=1)  # (n, H): integer powers, no more trig
        a = self._amp[:, channels]  # (H, ch)
        return zh.real @ a.real - zh.imag @ a.imag
