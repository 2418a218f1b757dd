"""Non-physiological signals: electrocautery, electrode pops, neurotonic EMG bursts, stimulus artefact,
and lead-off.

Random events are drawn per fixed epoch from RNG(seed, stream, epoch), so the events touching any
sample range are known without simulating what came before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ionm_hw.physiology import keyed
from ionm_hw.physiology.montage import Channel

EPOCH_S = 10.0


@dataclass(frozen=True)
class Event:
    start: int  # sample index
    end: int  # first sample after the event's influence
    channel: int = -1  # -1: all channels
    amplitude_v: float = 0.0
    params: dict[str, float] = field(default_factory=dict)
    coupling: np.ndarray | None = None  # per channel of the full montage
    spikes: np.ndarray | None = None  # sample positions (float) of EMG discharges


class PoissonEvents:
    """Events at rate_per_min, drawn per epoch; overlapping(a, b) lists those touching [a, b)."""

    def __init__(self, seed: int, stream: int, fs_hz: float, rate_per_min: float, max_len_s: float,
                 draw: Callable[[np.random.Generator, int], Event]) -> None:  # fmt: skip
        self._seed, self._stream = seed, stream
        self._epoch = int(round(EPOCH_S * fs_hz))
        self._mean = rate_per_min * EPOCH_S / 60.0
        self._max_len = int(np.ceil(max_len_s * fs_hz))
        self._draw = draw
        self._cache = keyed.LruCache(64)

    def _events(self, k: int) -> list[Event]:
        def make() -> list[Event]:
            if self._mean <= 0 or k < 0:
                return []
            g = keyed.rng(self._seed, self._stream, k)
            n = int(g.poisson(self._mean))
            starts = np.sort(g.integers(k * self._epoch, (k + 1) * self._epoch, n))
            return [self._draw(g, int(s)) for s in starts]

        out = self._cache.get(k, make)
        assert isinstance(out, list)
        return out

    def overlapping(self, a: int, b: int) -> list[Event]:
        k0 = (a - self._max_len) // self._epoch
        k1 = (b - 1) // self._epoch
        return [e for k in range(k0, k1 + 1) for e in self._events(k) if e.start < b and e.end > a]


def _loguniform(g: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(g.uniform(np.log(lo), np.log(hi))))


class Cautery:
    """Electrocautery: 0.3–1 MHz carrier aliased by the ADC into broadband noise bursts, seconds long,
    hundreds of µV to mV, on every channel with electrode-dependent coupling."""

    EDGE_S = 0.05  # on/off ramp

    def __init__(self, seed: int, fs_hz: float, n_channels: int, noise: dict, scripted: list) -> None:
        self._fs = fs_hz
        self._n = n_channels
        self._white = keyed.KeyedWhite(seed, keyed.CAUTERY_NOISE)
        lo_s, hi_s = noise["cautery_s"]
        lo_uv, hi_uv = noise["cautery_uv"]

        def draw(g: np.random.Generator, start: int, dur_s: float | None = None, uv: float | None = None) -> Event:
            d = g.uniform(lo_s, hi_s) if dur_s is None else dur_s
            a = _loguniform(g, lo_uv, hi_uv) if uv is None else uv
            coupling = g.uniform(0.3, 1.5, n_channels)
            params = {"mod_hz": g.uniform(0.5, 3.0), "mod_phase": g.uniform(0, 2 * np.pi)}
            return Event(start, start + int(d * fs_hz), -1, a * 1e-6, params, coupling)

        self._random = PoissonEvents(seed, keyed.CAUTERY, fs_hz, float(noise["cautery_per_min"]), hi_s, draw)
        self._scripted = [
            draw(keyed.rng(seed, keyed.CAUTERY, 10**9 + i), int(on * fs_hz), dur, uv)
            for i, (on, dur, uv) in enumerate(scripted)
        ]

    def bursts(self, a: int, b: int) -> list[Event]:
        return self._random.overlapping(a, b) + [e for e in self._scripted if e.start < b and e.end > a]

    def render(self, out: np.ndarray, first: int, channels: list[int]) -> None:
        n = out.shape[0]
        for e in self.bursts(first, first + n):
            lo, hi = max(e.start, first), min(e.end, first + n)
            idx = np.arange(lo, hi)
            edge = self.EDGE_S * self._fs
            env = np.clip(np.minimum(idx - e.start, e.end - idx) / edge, 0, 1)
            env = np.sin(0.5 * np.pi * env) ** 2
            t = idx / self._fs
            env = env * (1 + 0.3 * np.sin(2 * np.pi * e.params["mod_hz"] * t + e.params["mod_phase"]))
            assert e.coupling is not None
            for j, ch in enumerate(channels):
                w = self._white.samples(lo, hi - lo, ch)
                out[lo - first : hi - first, j] += e.amplitude_v * e.coupling[ch] * env * w


class Pops:
    """Electrode pops: a sudden step (electrode–gel potential jump) decaying exponentially."""

    def __init__(self, seed: int, fs_hz: float, n_channels: int, rate_per_min: float) -> None:
        self._fs = fs_hz

        def draw(g: np.random.Generator, start: int) -> Event:
            tau = _loguniform(g, 0.1, 1.5)
            amp = _loguniform(g, 100.0, 2000.0) * (1 if g.random() < 0.5 else -1)
            ch = int(g.integers(0, n_channels))
            return Event(start, start + int(8 * tau * fs_hz), ch, amp * 1e-6, {"tau_s": tau})

        self._events = PoissonEvents(seed, keyed.POPS, fs_hz, rate_per_min, 12.0, draw)

    def render(self, out: np.ndarray, first: int, channels: list[int]) -> None:
        n = out.shape[0]
        for e in self._events.overlapping(first, first + n):
            if e.channel not in channels:
                continue
            lo, hi = max(e.start, first), min(e.end, first + n)
            dt = (np.arange(lo, hi) - e.start) / self._fs
            out[lo - first : hi - first, channels.index(e.channel)] += e.amplitude_v * np.exp(-dt / e.params["tau_s"])


class EmgBursts:
    """Neurotonic discharges on muscle channels: trains of motor-unit potentials at 60–210 Hz."""

    def __init__(self, seed: int, fs_hz: float, muscle_channels: list[int], rate_per_min: float) -> None:
        self._fs = fs_hz

        def draw(g: np.random.Generator, start: int) -> Event:
            dur = _loguniform(g, 0.2, 3.0)
            rate = g.uniform(60.0, 210.0)
            n = max(int(dur * rate), 1)
            period = fs_hz / rate
            spikes = start + np.cumsum(period * (1 + 0.05 * g.standard_normal(n)))
            sigma = g.uniform(0.5, 1.0) * 1e-3 * fs_hz  # samples
            ch = int(muscle_channels[int(g.integers(0, len(muscle_channels)))])
            amp = _loguniform(g, 50.0, 400.0) * 1e-6
            return Event(start, int(spikes[-1] + 6 * sigma) + 1, ch, amp, {"sigma": sigma}, spikes=spikes)

        rate = rate_per_min if muscle_channels else 0.0
        self._events = PoissonEvents(seed, keyed.EMG_BURSTS, fs_hz, rate, 3.5, draw)

    def render(self, out: np.ndarray, first: int, channels: list[int]) -> None:
        n = out.shape[0]
        for e in self._events.overlapping(first, first + n):
            if e.channel not in channels or e.spikes is None:
                continue
            s = e.params["sigma"]
            j = channels.index(e.channel)
            near = e.spikes[(e.spikes > first - 6 * s) & (e.spikes < first + n + 6 * s)]
            for sp in near:
                lo, hi = max(int(sp - 6 * s), first), min(int(sp + 6 * s) + 1, first + n)
                x = (np.arange(lo, hi) - sp) / s
                # biphasic motor-unit potential (first derivative of a gaussian), peak = amplitude
                out[lo - first : hi - first, j] += e.amplitude_v * -x * np.exp(0.5 - 0.5 * x * x)


# Stimulus artefact pickup, µV per mA of stimulus (per V for the TcMEP stimulator), by where the channel
# sits relative to the stimulation site. Largest on the stimulated limb.
ARTEFACT_UV_PER_MA = {"same": 60.0, "neck": 10.0, "head": 4.0, "trunk": 6.0, "same_side": 3.0, "other": 2.0}
ARTEFACT_UV_PER_V_TCMEP = {"head": 40.0, "neck": 8.0, "trunk": 3.0, "arm": 2.0, "leg": 1.0}
OUTPUT_REGION = {0: "arm_L", 1: "arm_R", 2: "leg_L", 3: "leg_R", 4: "trunk"}  # 4: the handheld probe


def artefact_coupling(channels: list[Channel], g: np.random.Generator,
                      outputs: tuple[int, ...] = (0, 1, 2, 3, -1)) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per output: (spike coupling, tail coupling) per channel — µV/mA (µV/V for the trigger)."""
    out = {}
    for output in outputs:
        spike = np.empty(len(channels))
        for ch in channels:
            if output == -1:
                key = ch.region.split("_")[0]
                base = ARTEFACT_UV_PER_V_TCMEP.get(key, 3.0)
            else:
                stim = OUTPUT_REGION[output]
                if ch.region == stim:
                    base = ARTEFACT_UV_PER_MA["same"]
                elif ch.region in ("neck", "head", "trunk"):
                    base = ARTEFACT_UV_PER_MA[ch.region]
                elif ch.region.split("_")[-1] == stim.split("_")[-1]:
                    base = ARTEFACT_UV_PER_MA["same_side"]
                else:
                    base = ARTEFACT_UV_PER_MA["other"]
            spike[ch.index] = base * float(np.exp(0.3 * g.standard_normal())) * (1 if g.random() < 0.5 else -1)
        tail = spike * g.uniform(0.03, 0.08, len(channels)) * np.where(g.random(len(channels)) < 0.5, 1, -1)
        out[output] = (spike, tail)
    return out


def artefact_shape(n: int, fs_hz: float, width_us: float, biphasic: bool,
                   tau_ms: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(pulse, tail) shapes over n samples from the pulse onset: the pulse as the fraction of each
    sample period it covers (the converter integrates), then the amplifier's recovery tail."""
    edges = np.arange(n + 1) / fs_hz * 1e6  # µs
    w = float(width_us)

    def cover(t0: float, t1: float) -> np.ndarray:
        return np.clip(np.minimum(edges[1:], t1) - np.maximum(edges[:-1], t0), 0, None) * fs_hz / 1e6

    pulse = cover(0.0, w) - (cover(w, 2 * w) if biphasic else 0.0)
    end_us = 2 * w if biphasic else w
    mid = (np.arange(n) + 0.5) / fs_hz * 1e6
    tail = np.where(mid > end_us, np.exp(-(mid - end_us) / (tau_ms * 1e3)), 0.0)
    return pulse, tail * (0.15 if biphasic else 1.0)  # charge-balanced pulses leave little residue


class Leadoff:
    """Electrodes off: the channel drifts to the rail within ms (lead-off current charging the open input)
    and settles back over a few hundred ms once the electrode is back."""

    TAU_OFF_S = 0.02
    TAU_ON_S = 0.3

    def __init__(self, fs_hz: float, channels: list[Channel], windows: list[tuple[str, float, float]],
                 rail_v: float, g: np.random.Generator) -> None:  # fmt: skip
        self._fs = fs_hz
        known = {e for ch in channels for e in ch.electrodes}
        for electrode, _, _ in windows:
            if electrode not in known:
                raise ValueError(f"leadoff: electrode {electrode!r} is not in the montage ({', '.join(sorted(known))})")
        self._windows = {
            ch.index: [(int(on * fs_hz), int(min(off, 1e7) * fs_hz)) for e, on, off in windows if e in ch.electrodes]
            for ch in channels
        }
        self._rail = rail_v * np.where(g.random(len(channels)) < 0.5, 1.0, -1.0)

    def flags(self, first: int, n: int) -> np.ndarray:
        return np.array([any(on < first + n and off > first for on, off in w) for w in self._windows.values()])

    def apply(self, out: np.ndarray, first: int, channels: list[int]) -> None:
        idx = np.arange(first, first + out.shape[0])
        for j, ch in enumerate(channels):
            wins = self._windows[ch]
            if not wins:
                continue
            w = np.zeros(len(idx))  # 1 = fully at the rail
            tau_off, tau_on = self.TAU_OFF_S * self._fs, self.TAU_ON_S * self._fs  # samples
            for on, off in wins:
                during = (idx >= on) & (idx < off)
                after = idx >= off
                w[during] = np.maximum(w[during], 1 - np.exp(-(idx[during] - on) / tau_off))
                at_off = 1 - np.exp(-(off - on) / tau_off)
                w[after] = np.maximum(w[after], at_off * np.exp(-(idx[after] - off) / tau_on))
            if w.any():
                out[:, j] = (1 - w) * out[:, j] + w * self._rail[ch]
