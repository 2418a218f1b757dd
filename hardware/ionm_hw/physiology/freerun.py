"""Free-running EMG of muscle channels with the scripted truth of every event, for scoring EMG detectors.

What a free-run muscle channel shows during surgery (docs/EVALUATION.md, "Free-running EMG"):

- baseline: a few µV of background (electrode, amplifier and distant EMG) with occasional single
  motor-unit potentials (MUPs, spontaneous or from light touch);
- spike: one MUP (biphasic, 0.3–1 ms phases), 30–400 µV;
- burst: 2–4 MUPs of different units within 10–40 ms (touch, irrigation with cold saline);
- neurotonic: sustained repetitive firing of one unit, 20–100 Hz with 5–20 % jitter of the interval,
  from 0.1 s to seconds (traction, retraction, heat);
- a_train: Romstöck's A-train (2000): a sinusoidal, symmetric, regular train at 60–210 Hz with sudden
  onset, 50–300 µV, from 0.1 s to seconds (facial nerve traction; cumulative time > ~10 s predicts paresis);
- cautery: broadband noise (the 0.3–1 MHz carrier aliased by the converter), 100 µV to mV rms,
  on every channel with its own coupling;
- stimulus: a stimulation artefact (biphasic pulse of mV and an amplifier recovery tail, 1 ms);
- transection: from its onset the channel's nerve carries nothing; no MUP, no discharge, only background
  (a quiet channel is not a safe channel);
- vagal: continuous vagal nerve stimulation (~1 Hz, 1-2 mA, an electrode on the vagus) and, after each
  stimulus, the vocalis compound muscle action potential (CMAP) on the endotracheal-tube channel of that side:
  biphasic, 0.3-2 mV peak to peak at 5-9 ms (left vagus longer than right), scaled by a scripted course
  (traction: amplitude down and latency up over minutes, then release and recovery; INMSG, Schneider 2018).

Unlike the sweep model (noise.py, interference.py), a recording is rendered whole from one seed: the
scripted events and the random ones (irrigation, spontaneous MUPs) are drawn from RNG(seed, FREERUN, ...)
keyed by event index and channel, so the same seed and script give the same samples and truth.

render(...) returns the samples in µV [n_channels, n_samples] and the truth: one TruthEvent per event
(kind, channel, onset_s, end_s, rate_hz, peak_uv). random_script(...) draws a script for tests and benches.
Scenarios (hardware/scenarios/freerun/NAME.json, render_scenario) script whole cases: lumbar nerve-root
retraction, a cerebellopontine-angle tumour with facial-nerve traction, a thyroidectomy with recurrent
laryngeal nerve traction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ionm_hw.physiology import keyed

FREERUN = 11  # keyed stream of this module (keyed.py's streams end at 10)

DISCHARGE_KINDS = ("spike", "burst", "neurotonic", "a_train")
KINDS = (*DISCHARGE_KINDS, "irrigation", "cautery", "stimulus", "transection", "vagal")
VAGAL_JITTER = (0.05, 0.05)  # per-stimulus CMAP amplitude (fraction, SD) and latency (ms, SD) scatter
CMAP_PHASE_MS = 1.2  # width (SD) of each of the CMAP's two phases

A_TRAIN_HZ = (60.0, 210.0)  # Romstöck 2000
NEUROTONIC_HZ = (20.0, 100.0)
MUP_SIGMA_MS = (0.3, 0.6)  # phase half-width of a biphasic MUP: spectrum peaks at 1/(2πσ) ≈ 270–530 Hz
EDGE_S = 0.005  # on/off ramp of an A-train, s (a sudden onset)
CAUTERY_EDGE_S = 0.05


@dataclass(frozen=True)
class TruthEvent:
    kind: str
    channel: int  # -1: every channel (cautery, stimulus)
    onset_s: float
    end_s: float
    rate_hz: float | None = None  # discharges (MUPs or cycles) per second
    peak_uv: float | None = None  # largest |amplitude| of the waveform (cautery: rms; vagal: CMAP p2p), µV
    latency_ms: float | None = None  # vagal: the CMAP's first-peak latency after its stimulus, ms

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Recording:
    fs_hz: float
    samples_uv: np.ndarray  # [n_channels, n_samples], µV
    truth: list[TruthEvent]
    stim_times_s: list[float] = field(default_factory=list)
    vagal_times_s: list[float] = field(default_factory=list)  # stimuli that evoke a CMAP (kind vagal)

    @property
    def duration_s(self) -> float:
        return self.samples_uv.shape[1] / self.fs_hz


def _cmap(u: np.ndarray) -> np.ndarray:
    """The CMAP's shape in units of its phase SD: a negative gaussian phase at 0, a positive one at 2."""
    return -np.exp(-0.5 * u**2) + np.exp(-0.5 * (u - 2.0) ** 2)


_U = np.linspace(-4.0, 6.0, 100001)
_CMAP_PEAK_SD = float(_U[np.argmin(_cmap(_U))])  # where the first (negative) peak of the shape is
_CMAP_P2P = float(np.ptp(_cmap(_U)))


def _mup(out: np.ndarray, fs_hz: float, t_s: float, amp_uv: float, sigma_ms: float) -> None:
    """Add a biphasic MUP (first derivative of a gaussian, peak |amp_uv| at ±σ) centred at t_s."""
    s = sigma_ms * 1e-3 * fs_hz  # samples
    c = t_s * fs_hz
    lo, hi = max(int(c - 6 * s), 0), min(int(c + 6 * s) + 2, out.size)
    if lo >= hi:
        return
    x = (np.arange(lo, hi) - c) / s
    out[lo:hi] += amp_uv * -x * np.exp(0.5 - 0.5 * x * x)


def _get(ev: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in ev:
        return ev[key]
    if default is None:
        raise ValueError("free-run event %r needs %r" % (ev.get("kind"), key))
    return default


def render(duration_s: float, fs_hz: float, n_channels: int, script: list[dict[str, Any]], seed: int, *,
           noise_uv: float = 3.0, spontaneous_per_min: float = 2.0, mains_uv: float = 0.0,
           mains_hz: float = 50.0) -> Recording:
    """The recording of a script (list of event dicts, times in s from the start):

      {"kind": "spike"|"burst", "channel", "onset_s", "peak_uv"}
      {"kind": "neurotonic"|"a_train", "channel", "onset_s", "duration_s", "rate_hz", "peak_uv"}
      {"kind": "irrigation", "channel", "onset_s", "duration_s", "per_s"}   random spikes and bursts
      {"kind": "cautery", "onset_s", "duration_s", "peak_uv"}                rms, every channel
      {"kind": "stimulus", "times_s": [...], "peak_uv"}                      artefacts, every channel
      {"kind": "transection", "channel", "onset_s"}
      {"kind": "vagal", "channel", "times_s": [...], "peak_uv", "latency_ms",
       "course": [[t_s, amplitude factor, latency factor], ...], "artefact_uv"}   CMAP on channel (p2p peak_uv
                                             at first-peak latency latency_ms, times the course interpolated
                                             in time) after an artefact on every channel

    noise_uv: background rms per channel (white, µV); spontaneous_per_min: single MUPs per channel
    (30–80 µV); mains_uv: peak mains hum at mains_hz with a 3rd harmonic of 20 %, its phase per channel.
    Every discharge is in the truth, spontaneous ones included.
    """
    if fs_hz < 2000:
        raise ValueError("free-run EMG needs fs >= 2000 Hz (MUP phases are 0.3–1 ms), got %g" % fs_hz)
    n = int(round(duration_s * fs_hz))
    out = np.zeros((n_channels, n))
    truth: list[TruthEvent] = []
    stim_times: list[float] = []
    vagal_times: list[float] = []
    cut = np.full(n_channels, np.inf)  # transection time per channel, s
    for ev in script:
        if ev.get("kind") == "transection":
            ch = int(_get(ev, "channel"))
            cut[ch] = min(cut[ch], float(_get(ev, "onset_s")))
            truth.append(TruthEvent("transection", ch, cut[ch], duration_s))

    def alive(ch: int, t: float) -> bool:
        return t < cut[ch]

    def spike(ch: int, t: float, amp: float, g: np.random.Generator) -> None:
        if alive(ch, t):
            _mup(out[ch], fs_hz, t, amp, g.uniform(*MUP_SIGMA_MS))
            truth.append(TruthEvent("spike", ch, t, t, None, abs(amp)))

    def burst(ch: int, t: float, amp: float, g: np.random.Generator) -> None:
        if not alive(ch, t):
            return
        k = int(g.integers(2, 5))
        times = t + np.sort(np.r_[0.0, g.uniform(0.004, 0.04, k - 1)])
        amps = abs(amp) * g.uniform(0.5, 1.0, k) * np.where(g.random(k) < 0.5, -1, 1)
        amps[0] = amp
        for tt, a in zip(times, amps, strict=True):
            _mup(out[ch], fs_hz, float(tt), float(a), g.uniform(*MUP_SIGMA_MS))
        truth.append(TruthEvent("burst", ch, t, float(times[-1]), None, float(np.max(np.abs(amps)))))

    for i, ev in enumerate(script):
        kind = ev.get("kind")
        g = keyed.rng(seed, FREERUN, 1, i)
        if kind not in KINDS:
            raise ValueError("unknown free-run event kind %r (%s)" % (kind, ", ".join(KINDS)))
        if kind == "spike":
            spike(int(_get(ev, "channel")), float(_get(ev, "onset_s")), float(_get(ev, "peak_uv")), g)
        elif kind == "burst":
            burst(int(_get(ev, "channel")), float(_get(ev, "onset_s")), float(_get(ev, "peak_uv")), g)
        elif kind == "irrigation":
            ch, t0, dur = int(_get(ev, "channel")), float(_get(ev, "onset_s")), float(_get(ev, "duration_s"))
            per_s = float(_get(ev, "per_s", 2.0))
            # Irregular touches: a spike or a burst every 1/per_s s on average, at least 0.15 s apart
            # (the detector's event grouping would otherwise merge them; so would a listener's ear).
            t = t0 + g.exponential(1.0 / per_s)
            while t < t0 + dur:
                amp = float(np.exp(g.uniform(np.log(40.0), np.log(400.0)))) * (1 if g.random() < 0.5 else -1)
                (spike if g.random() < 0.5 else burst)(ch, t, amp, g)
                t += 0.15 + g.exponential(1.0 / per_s)
        elif kind == "neurotonic":
            ch, t0 = int(_get(ev, "channel")), float(_get(ev, "onset_s"))
            dur, rate, amp = float(_get(ev, "duration_s")), float(_get(ev, "rate_hz")), float(_get(ev, "peak_uv"))
            jitter = g.uniform(0.05, 0.2)
            sigma = g.uniform(*MUP_SIGMA_MS)
            times = [t0]
            while True:
                nxt = times[-1] + max(1.0 / rate * (1 + jitter * g.standard_normal()), 0.3 / rate)
                if nxt > t0 + dur:
                    break
                times.append(nxt)
            times = [t for t in times if alive(ch, t)]
            if not times:
                continue
            # One unit firing: the same shape each time, ±10 % amplitude.
            amps = amp * (1 + 0.1 * np.clip(g.standard_normal(len(times)), -1, 1)) / 1.1
            for tt, a in zip(times, amps, strict=True):
                _mup(out[ch], fs_hz, tt, float(a), sigma)
            r = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
            truth.append(TruthEvent("neurotonic", ch, times[0], times[-1], r, float(np.max(np.abs(amps)))))
        elif kind == "a_train":
            ch, t0 = int(_get(ev, "channel")), float(_get(ev, "onset_s"))
            dur, rate, amp = float(_get(ev, "duration_s")), float(_get(ev, "rate_hz")), float(_get(ev, "peak_uv"))
            t1 = min(t0 + dur, cut[ch], duration_s)
            if t1 <= t0:
                continue
            i0, i1 = int(round(t0 * fs_hz)), int(round(t1 * fs_hz))
            ts = np.arange(i0, i1) / fs_hz
            # A regular train: the frequency wanders by ~1 % (a slow sinusoid), the phase starts at 0
            # (a sudden onset at t0) and the envelope ramps over EDGE_S at each end.
            wobble = 0.01 * rate * np.sin(2 * np.pi * g.uniform(0.5, 2.0) * (ts - t0) + g.uniform(0, 2 * np.pi))
            phase = 2 * np.pi * np.cumsum(rate + wobble) / fs_hz
            env = np.clip(np.minimum(ts - t0, t1 - ts) / EDGE_S, 0, 1)
            out[ch, i0:i1] += amp * env * np.sin(phase)
            truth.append(TruthEvent("a_train", ch, t0, t1, rate, abs(amp)))
        elif kind == "cautery":
            t0, dur, rms = float(_get(ev, "onset_s")), float(_get(ev, "duration_s")), float(_get(ev, "peak_uv"))
            i0, i1 = int(round(t0 * fs_hz)), min(int(round((t0 + dur) * fs_hz)), n)
            idx = np.arange(i0, i1)
            env = np.sin(0.5 * np.pi * np.clip(np.minimum(idx - i0, i1 - idx) / (CAUTERY_EDGE_S * fs_hz), 0, 1)) ** 2
            coupling = g.uniform(0.5, 1.5, n_channels)
            for ch in range(n_channels):
                w = keyed.rng(seed, FREERUN, 2, i, ch).standard_normal(i1 - i0)
                out[ch, i0:i1] += rms * coupling[ch] * env * w
            truth.append(TruthEvent("cautery", -1, t0, t0 + dur, None, rms))
        elif kind == "stimulus":
            amp = float(_get(ev, "peak_uv", 2000.0))
            coupling = g.uniform(0.3, 1.0, n_channels) * np.where(g.random(n_channels) < 0.5, -1, 1)
            for t in _get(ev, "times_s"):
                t = float(t)
                i0 = int(round(t * fs_hz))
                k = np.arange(int(0.01 * fs_hz))  # 10 ms: pulse and recovery tail (τ 1 ms, 5 %)
                width = max(int(round(200e-6 * fs_hz)), 1)  # 200 µs phases
                shape = np.where(k < width, 1.0, np.where(k < 2 * width, -1.0, 0.0))
                shape += np.where(k >= 2 * width, 0.05 * np.exp(-(k - 2 * width) / (1e-3 * fs_hz)), 0.0)
                hi = min(i0 + k.size, n)
                if i0 < n:
                    out[:, i0:hi] += amp * coupling[:, None] * shape[None, : hi - i0]
                stim_times.append(t)
                truth.append(TruthEvent("stimulus", -1, t, t + 0.002, None, amp))

        elif kind == "vagal":
            ch = int(_get(ev, "channel"))
            course = np.asarray(_get(ev, "course", [[0.0, 1.0, 1.0]]), dtype=float).reshape(-1, 3)
            p2p0, lat0 = float(_get(ev, "peak_uv", 800.0)), float(_get(ev, "latency_ms", 7.0))
            art = float(_get(ev, "artefact_uv", 3000.0))
            coupling = g.uniform(0.3, 1.0, n_channels) * np.where(g.random(n_channels) < 0.5, -1, 1)
            sd = CMAP_PHASE_MS * 1e-3
            for t in _get(ev, "times_s"):
                t = float(t)
                i0 = int(round(t * fs_hz))
                k = np.arange(int(0.01 * fs_hz))  # the artefact as for "stimulus" (200 µs phases, 1 ms tail)
                width = max(int(round(200e-6 * fs_hz)), 1)
                shape = np.where(k < width, 1.0, np.where(k < 2 * width, -1.0, 0.0))
                shape += np.where(k >= 2 * width, 0.05 * np.exp(-(k - 2 * width) / (1e-3 * fs_hz)), 0.0)
                hi = min(i0 + k.size, n)
                if i0 < n:
                    out[:, i0:hi] += art * coupling[:, None] * shape[None, : hi - i0]
                a = float(np.interp(t, course[:, 0], course[:, 1])) * (1 + VAGAL_JITTER[0] * g.standard_normal())
                lat_ms = float(np.interp(t, course[:, 0], course[:, 2])) * lat0 + VAGAL_JITTER[1] * g.standard_normal()
                p2p = max(a, 0.0) * p2p0
                if alive(ch, t) and p2p > 0:
                    # A negative phase, then a positive one 2 SD later; _CMAP_PEAK_SD and _CMAP_P2P (the shape's
                    # first-peak offset and peak to peak) put the first peak at the latency and scale it to p2p.
                    t_peak = t + lat_ms * 1e-3
                    span = np.arange(int(round((t_peak - 4 * sd) * fs_hz)), int(round((t_peak + 6 * sd) * fs_hz)))
                    span = span[(span >= 0) & (span < n)]
                    out[ch, span] += p2p / _CMAP_P2P * _cmap((span / fs_hz - t_peak) / sd + _CMAP_PEAK_SD)
                stim_times.append(t)
                vagal_times.append(t)
                truth.append(TruthEvent("vagal", ch, t, t + (lat_ms + 6 * CMAP_PHASE_MS) * 1e-3, 1.0,
                                        p2p if alive(ch, t) else 0.0, lat_ms))

    g = keyed.rng(seed, FREERUN, 3)
    for ch in range(n_channels):
        gc = keyed.rng(seed, FREERUN, 4, ch)
        for t in np.sort(gc.uniform(0, duration_s, gc.poisson(spontaneous_per_min * duration_s / 60.0))):
            amp = gc.uniform(30.0, 80.0) * (1 if gc.random() < 0.5 else -1)
            spike(ch, float(t), float(amp), gc)
        out[ch] += noise_uv * g.standard_normal(n)
        if mains_uv:
            # its own stream: hum on or off leaves every other draw (noise, MUPs) as it was
            mains_phase = 2 * np.pi * mains_hz * np.arange(n) / fs_hz + keyed.rng(seed, FREERUN, 6, ch).uniform(0, 7)
            out[ch] += mains_uv * (np.sin(mains_phase) - 0.2 * np.sin(3 * mains_phase)) / 1.2  # peak 1.2 at π/2
    truth.sort(key=lambda e: (e.onset_s, e.channel))
    return Recording(fs_hz, out, truth, sorted(stim_times), sorted(vagal_times))


def random_script(seed: int, duration_s: float, n_channels: int, *, neurotonic_per_min: float = 3.0,
                  a_trains_per_min: float = 3.0, irrigation_per_min: float = 1.0, cautery_per_min: float = 1.0,
                  stim_rate_hz: float = 0.0) -> list[dict[str, Any]]:
    """A random script: neurotonic discharges and A-trains on random channels, irrigation, cautery (every
    channel) and optional stimuli at stim_rate_hz. Events of one channel are at least 0.5 s apart and none
    overlaps a cautery burst (a discharge under cautery is not detectable, and its truth would be moot)."""
    g = keyed.rng(seed, FREERUN, 5)
    script: list[dict[str, Any]] = []
    busy: list[tuple[float, float]] = []  # every channel, cautery

    def free(t0: float, t1: float, spans: list[tuple[float, float]]) -> bool:
        return all(t1 + 0.5 < a or t0 > b + 0.5 for a, b in spans)

    for _ in range(g.poisson(cautery_per_min * duration_s / 60.0)):
        t0, dur = g.uniform(0.5, duration_s - 5.0), g.uniform(1.0, 4.0)
        if free(t0, t0 + dur, busy):
            busy.append((t0, t0 + dur))
            script.append({"kind": "cautery", "onset_s": t0, "duration_s": dur,
                           "peak_uv": float(np.exp(g.uniform(np.log(200.0), np.log(2000.0))))})
    per_channel: list[list[tuple[float, float]]] = [list(busy) for _ in range(n_channels)]
    for kind, per_min in (("neurotonic", neurotonic_per_min), ("a_train", a_trains_per_min),
                          ("irrigation", irrigation_per_min)):
        for _ in range(g.poisson(per_min * duration_s / 60.0)):
            ch = int(g.integers(0, n_channels))
            t0 = g.uniform(0.5, duration_s - 5.0)
            ev: dict[str, Any]
            if kind == "irrigation":
                ev = {"kind": kind, "channel": ch, "onset_s": t0, "duration_s": g.uniform(1.0, 4.0), "per_s": 2.0}
            else:
                lo, hi = NEUROTONIC_HZ if kind == "neurotonic" else A_TRAIN_HZ
                rate = g.uniform(lo, hi)
                # at least 6 discharges: fewer is a burst, not sustained firing
                dur = max(float(np.exp(g.uniform(np.log(0.1), np.log(4.0)))), 6.0 / rate)
                ev = {"kind": kind, "channel": ch, "onset_s": t0, "duration_s": dur,
                      "rate_hz": rate, "peak_uv": g.uniform(60.0, 300.0)}
            t1 = t0 + float(ev["duration_s"]) + 0.3
            if free(t0, t1, per_channel[ch]):
                per_channel[ch].append((t0, t1))
                script.append(ev)
    if stim_rate_hz > 0:
        script.append({"kind": "stimulus", "times_s": list(np.arange(0.25, duration_s, 1.0 / stim_rate_hz)),
                       "peak_uv": 3000.0})
    return script


def scenarios_dir() -> Path:
    """hardware/scenarios/freerun/: free-run EMG scenarios (a subdirectory, so the sweep scenarios'
    scenario_names() and their tests never see them)."""
    from ionm_hw.physiology.scenario import scenarios_dir as sweep_scenarios

    return sweep_scenarios() / "freerun"


def scenario_names() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.json"))


def load_scenario(name_or_path: str) -> dict[str, Any]:
    """A free-run scenario: {"name", "description", "duration_s", "channels": [labels], "events": [...]},
    events as render() takes them but with "channel" given by label. Returns it with channels as indices."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = scenarios_dir() / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no free-run scenario {name_or_path!r}; available: {', '.join(scenario_names())}")
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    labels = list(data["channels"])
    events = []
    for ev in data["events"]:
        ev = dict(ev)
        if "channel" in ev:
            if ev["channel"] not in labels:
                raise ValueError("%s: event channel %r is not one of %s" % (path.name, ev["channel"], labels))
            ev["channel"] = labels.index(ev["channel"])
        events.append(ev)
    return {**data, "events": events}


def render_scenario(name_or_path: str, seed: int, fs_hz: float = 8000.0, **kw: Any) -> tuple[Recording, list[str]]:
    """(recording, channel labels) of a free-run scenario."""
    sc = load_scenario(name_or_path)
    return render(float(sc["duration_s"]), fs_hz, len(sc["channels"]), sc["events"], seed, **kw), list(sc["channels"])
