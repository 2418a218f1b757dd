"""Recurrent laryngeal and vagus nerve monitoring, after the International Neural Monitoring Study Group
(Randolph 2011; Schneider 2018, continuous monitoring). docs/EVALUATION.md ("Recurrent laryngeal nerve")
describes the method.

The response: the vocalis compound muscle action potential (CMAP) recorded on the endotracheal-tube
electrodes of the stimulated side, WINDOW_MS after each stimulus of the vagus (or the recurrent laryngeal
nerve). Per stimulus and channel: its peak-to-peak amplitude (µV) and the latency of its largest-magnitude
first phase (ms), on the sweep less its pre-stimulus mean.

- Intermittent monitoring (a hand-held probe at 1-2 mA): a response below LOS_UV (100 µV) is loss of signal
  (`loss_of_signal`).
- Continuous monitoring (vagal stimulation at ~1 Hz, 1-2 mA; `VagalMonitor`): the baseline is the median of
  the first BASELINE_N responses (after `baseline_from_s`); each stimulus is judged on the median of the last
  SMOOTH_N responses (5 s at 1 Hz), so that one odd response never decides. Channels whose baseline is below
  MIN_BASELINE_UV (the other side, or a displaced tube) are not monitored. States, one event per change:
  * "combined": amplitude below 50 % AND latency above 110 % of baseline: the combined event that precedes
    loss of signal during traction (Schneider 2018: it is the warning to release the traction);
  * "amplitude": amplitude below 50 % with latency within 110 %: an isolated amplitude drop, most often
    technical (tube displacement, electrode contact), reported as a warning to check the tube;
  * "loss": amplitude below LOS_UV (absolute): loss of signal;
  * "recovered": amplitude back above 50 % and latency back within 110 % after any of the above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LOS_UV = 100.0  # loss of signal: a response below this, µV peak to peak (INMSG)
AMPLITUDE_RATIO = 0.5  # combined event: amplitude below 50 % of baseline ...
LATENCY_RATIO = 1.1  # ... with latency above 110 % of baseline
WINDOW_MS = (3.0, 20.0)  # the response window after the stimulus (RLN ~3-4 ms, right vagus ~5, left ~8 ms)
PRE_MS = 5.0  # the pre-stimulus stretch whose mean is the sweep's zero
BASELINE_N = 20  # responses that make the baseline (20 s at 1 Hz)
SMOOTH_N = 5  # responses judged together
MIN_BASELINE_UV = 200.0  # a channel with a smaller baseline response is not monitored
# A response whose pre-stimulus background has an SD above this is not judged (cautery, a discharge burst):
# the CMAP is hundreds of µV, the quiet background a few.
REJECT_PRE_SD_UV = 30.0
STATES = ("normal", "amplitude", "combined", "loss")


def loss_of_signal(p2p_uv: float) -> bool:
    """Intermittent monitoring: a probe response below LOS_UV (µV) at 1-2 mA is loss of signal."""
    return bool(p2p_uv < LOS_UV)


@dataclass(frozen=True)
class Response:
    t_s: float  # the stimulus
    amplitude_uv: np.ndarray  # [channel] peak to peak in the window
    latency_ms: np.ndarray  # [channel] of the largest-magnitude phase's first peak
    accepted: np.ndarray  # [channel] False: the background before the stimulus was too loud to judge (cautery)


@dataclass(frozen=True)
class RlnEvent:
    t_s: float  # the stimulus whose response decided
    channel: str
    kind: str  # "combined", "amplitude", "loss", "recovered"
    amplitude_ratio: float
    latency_ratio: float
    amplitude_uv: float

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("amplitude_ratio", "latency_ratio"):
            d[k] = round(d[k], 3)
        d["amplitude_uv"] = round(d["amplitude_uv"], 1)
        d["t_s"] = round(d["t_s"], 4)
        return d


def measure(sweep_uv: np.ndarray, fs: float, pre_samples: int, window_ms: tuple[float, float] = WINDOW_MS
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p2p µV, latency ms, pre-stimulus SD µV) per channel of one sweep [n_channels, n] whose stimulus is at
    pre_samples.

    The latency is that of the first peak of the response: the first extremum, in the window, whose magnitude
    reaches half the window's largest (a CMAP's first phase, not a later, larger one)."""
    x = np.atleast_2d(np.asarray(sweep_uv, dtype=float))
    p0 = max(0, pre_samples - int(round(PRE_MS * 1e-3 * fs)))
    zero = x[:, p0:pre_samples].mean(axis=1) if pre_samples > p0 else np.zeros(x.shape[0])
    pre_sd = x[:, p0:pre_samples].std(axis=1) if pre_samples > p0 else np.zeros(x.shape[0])
    lo = pre_samples + int(round(window_ms[0] * 1e-3 * fs))
    hi = min(x.shape[1], pre_samples + int(round(window_ms[1] * 1e-3 * fs)))
    w = x[:, lo:hi] - zero[:, None]
    p2p = np.ptp(w, axis=1)
    lat = np.full(x.shape[0], np.nan)
    for c in range(x.shape[0]):
        a = np.abs(w[c])
        if not len(a) or a.max() <= 0:
            continue
        big = a >= 0.5 * a.max()
        i = int(np.argmax(big))  # the first sample of the first big phase: follow it to its peak
        j = i
        while j + 1 < len(a) and big[j + 1] and np.sign(w[c, j + 1]) == np.sign(w[c, i]):
            j += 1
        k = i + int(np.argmax(a[i:j + 1]))
        lat[c] = (lo + k - pre_samples) / fs * 1e3
    return p2p, lat, pre_sd


@dataclass
class VagalMonitor:
    """Continuous vagal monitoring of the vocalis channels; feed it one sweep per stimulus (add)."""

    fs: float
    channel_names: list[str]
    baseline_from_s: float = 0.0
    responses: list[Response] = field(default_factory=list)
    events: list[RlnEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.channel_names)
        self.baseline_amplitude = np.full(n, np.nan)
        self.baseline_latency = np.full(n, np.nan)
        self.monitored = np.zeros(n, dtype=bool)
        self.state = ["normal"] * n
        self._base: list[Response] = []
        self._recent: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # accepted (p2p, latency) per channel

    @property
    def baseline_set(self) -> bool:
        return bool(np.isfinite(self.baseline_amplitude).all())

    def add(self, t_s: float, sweep_uv: np.ndarray, pre_samples: int) -> list[RlnEvent]:
        """The response to the stimulus at t_s (its sweep, stimulus at pre_samples); the events it raised."""
        p2p, lat, pre_sd = measure(sweep_uv, self.fs, pre_samples)
        r = Response(t_s, p2p, lat, pre_sd <= REJECT_PRE_SD_UV)
        self.responses.append(r)
        for c in np.flatnonzero(r.accepted):
            self._recent[c].append((float(p2p[c]), float(lat[c])))
            del self._recent[c][:-SMOOTH_N]
        if not self.baseline_set:
            if t_s >= self.baseline_from_s and r.accepted.all():
                self._base.append(r)
            if len(self._base) >= BASELINE_N:
                self.baseline_amplitude = np.median([b.amplitude_uv for b in self._base], axis=0)
                self.baseline_latency = np.nanmedian([b.latency_ms for b in self._base], axis=0)
                self.monitored = self.baseline_amplitude >= MIN_BASELINE_UV
            return []
        out: list[RlnEvent] = []
        for c in np.flatnonzero(self.monitored & r.accepted):
            amp = float(np.median([a for a, _ in self._recent[c]]))
            a_ratio = amp / float(self.baseline_amplitude[c])
            l_ratio = float(np.nanmedian([la for _, la in self._recent[c]])) / float(self.baseline_latency[c])
            if amp < LOS_UV:
                new = "loss"
            elif a_ratio < AMPLITUDE_RATIO:
                new = "combined" if l_ratio > LATENCY_RATIO else "amplitude"
            elif l_ratio > LATENCY_RATIO and self.state[c] != "normal":
                new = self.state[c]  # amplitude back but latency not yet: not recovered
            else:
                new = "normal"
            if new == self.state[c]:
                continue
            # Worsening is reported at once; "amplitude" after "combined" or "loss" is not an improvement worth an
            # event of its own (the nerve is still at risk): only a full recovery is.
            if new == "normal":
                kind = "recovered"
            elif STATES.index(new) > STATES.index(self.state[c]) or self.state[c] == "normal":
                kind = new
            else:
                continue
            self.state[c] = new
            out.append(RlnEvent(t_s, self.channel_names[c], kind, a_ratio, l_ratio, amp))
        self.events.extend(out)
        return out


def evaluate_continuous(samples_uv: np.ndarray, fs: float, channel_names: list[str], stim_times_s: Any,
                        baseline_from_s: float = 0.0) -> VagalMonitor:
    """The whole record at once: every stimulus's sweep through a VagalMonitor (returned, with its responses,
    baseline and events)."""
    x = np.asarray(samples_uv, dtype=float)
    mon = VagalMonitor(fs, list(channel_names), baseline_from_s)
    pre = int(round(PRE_MS * 1e-3 * fs))
    post = int(round(WINDOW_MS[1] * 1e-3 * fs))
    for t in np.asarray(stim_times_s, dtype=float):
        i = int(round(t * fs))
        if i - pre < 0 or i + post > x.shape[1]:
            continue
        mon.add(float(t), x[:, i - pre:i + post], pre)
    return mon
