"""Quantitative EEG for vascular and brain surgery: spectral indices per channel every epoch, and the
ischaemia / anaesthesia judgement of carotid surgery. docs/EVALUATION.md ("EEG") describes the method.

Per channel and EPOCH_S (2 s) epoch, from the Welch spectrum (scipy.signal.welch, 1 s Hann segments, half
overlapping: 1 Hz resolution) over TOTAL_HZ (1-30 Hz): band powers (delta 1-4, theta 4-8, alpha 8-13,
beta 13-30 Hz, µV²), relative alpha (alpha / total), the alpha/delta ratio, the spectral edge frequency
(95 % of the total power below it, Hz), and the burst-suppression ratio (the fraction of the epoch in
suppression: stretches of at least SUPPRESSION_MIN_S where the 1-30 Hz signal stays within
±SUPPRESSION_UV). Hemispheric asymmetry: (left - right) / (left + right) of total power over homologous
pairs (10-20 names: odd numbers left, even right; C3 with C4, ...).

Artefacts (per channel and epoch): an epoch is rejected when a sample lies beyond ±ARTEFACT_UV of its linear
trend (an electrode pop, movement, saturating cautery), when its power is POWER_JUMP times the channel's median over
its recent clean epochs (a smaller pop), or when it holds more than HF_UV rms in HF_HZ (electrocautery or muscle:
above the indices' band, below both mains frequencies). The channel's next epoch goes too (a pop's decay, the
amplifier's recovery). None of that channel's indices is taken from a rejected epoch (they are NaN), and the
monitor counts them per channel. Pooled values use the clean channel-epochs only. A hemisphere with fewer than
MIN_CLEAN_FRACTION of its channel-epochs clean over the 20 s is not judged: the state holds (an alarm is neither
raised nor ended by an artefact), and the epoch is counted as unjudged.

Judgement (EegMonitor), against a baseline set before the clamp (set_baseline): per hemisphere, relative
alpha and the alpha/delta ratio of the power pooled over its channels and the last SMOOTH_EPOCHS epochs
(20 s), as ratios to the baseline's (pooled likewise). A hemisphere meets the ischaemia criterion when
relative alpha falls by ALPHA_DROP (14 %) or the alpha/delta ratio by ADR_DROP (21 %) (Zhao 2023), by a
margin of CONFIDENCE_Z times the scatter of 20 s estimates about the baseline (measured on the baseline's
own sliding windows), so that the normal wander of a 20 s spectrum is not taken for a change. One
hemisphere meeting it while the other has changed less than half as much (each change as a multiple of the
criterion), for ISCHAEMIA_CONFIRM_EPOCHS (10 s), is "ischaemia" on that side; both
(bilateral slowing, with burst suppression rising or not) is "global", the anaesthetic pattern, never called
ischaemia. One event per change of state, confirmed over CONFIRM_EPOCHS; "recovered" when it clears.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import signal

EPOCH_S = 2.0
BANDS_HZ = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0)}
TOTAL_HZ = (1.0, 30.0)
SEF_FRACTION = 0.95
SUPPRESSION_UV = 5.0  # within ±5 µV ...
SUPPRESSION_MIN_S = 0.5  # ... for at least 0.5 s is suppression (ACNS burst-suppression terminology)
ALPHA_DROP = 0.14  # relative alpha down by 14 % of baseline ...
ADR_DROP = 0.21  # ... or alpha/delta ratio down by 21 % (Zhao 2023: shunt-requiring ischaemia)
SMOOTH_EPOCHS = 10  # 20 s of epochs judged together (their power pooled)
CONFIRM_EPOCHS = 3  # consecutive smoothed epochs meeting a state before it is reported (6 s)
# One-sided: the other hemisphere has changed less than this fraction of the side that met the criterion (each as a
# multiple of the criterion). An absolute test (the other side past half the drops by one scatter) called 2 of 90
# simulated clamps "global" when the unclamped side's 20 s spectrum wandered (`tools/eeg_sides.py --rule absolute`).
OTHER_SIDE_FRACTION = 0.5
# A one-sided change must hold longer than the others before it is called ischaemia (10 s): at a bolus's onset one
# hemisphere can lead the other by a few seconds (with 3 epochs, such a bolus was called ischaemia: tests/test_eeg.py).
ISCHAEMIA_CONFIRM_EPOCHS = 5
CONFIDENCE_Z = 2.0  # a criterion is met when the 20 s estimate lies this many of its baseline scatters beyond it
MIN_SCATTER = 0.02  # log-ratio scatter never taken below 2 %
# Artefact limits. EEG under anaesthesia, bursts of burst suppression included, stays within about ±150 µV of its
# trend; a pop or movement goes to hundreds of µV. Its power between 32 and 45 Hz is a few µV rms, cautery's tens.
# A smaller pop still multiplies its epoch's power: an epoch with POWER_JUMP times the channel's median power over
# its last POWER_EPOCHS clean epochs is rejected too (slowing changes it by 1.5-3 times). Both count power per
# second not suppressed (total / (1 - BSR)), so that the bursts of deep burst suppression are not taken for pops.
ARTEFACT_UV = 200.0
POWER_JUMP = 8.0
POWER_EPOCHS = 30
HF_HZ = (32.0, 45.0)
HF_UV = 10.0
MIN_CLEAN_FRACTION = 0.5


def side_of(name: str) -> str | None:
    """'L' or 'R' from a 10-20 name (odd numbers left, even right; z midline); None if neither or mixed."""
    nums = [int(n) for n in re.findall(r"[A-Za-z]+(\d+)", name)]
    sides = {"L" if n % 2 else "R" for n in nums}
    return sides.pop() if len(sides) == 1 else None


@dataclass(frozen=True)
class Indices:
    """One epoch's indices per channel (arrays of n_channels)."""

    t_s: float  # the epoch's end
    band_uv2: dict[str, np.ndarray]
    total_uv2: np.ndarray
    relative_alpha: np.ndarray
    alpha_delta: np.ndarray
    sef95_hz: np.ndarray
    bsr: np.ndarray
    rejected: np.ndarray  # [n_channels] bool: an artefact; that channel's indices above are NaN
    peak_uv: np.ndarray  # largest excursion from the epoch's linear trend (µV), the amplitude test
    hf_uv: np.ndarray  # rms in HF_HZ (µV; NaN where the sampling rate does not reach it), the cautery test


def indices(x: np.ndarray, fs: float, t_s: float = 0.0) -> Indices:
    """The indices of one epoch [n_channels, n] (µV); a channel with an artefact has NaN indices (rejected)."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    nper = min(x.shape[1], int(round(fs)))
    f, p = signal.welch(x, fs=fs, nperseg=nper, noverlap=nper // 2, detrend="constant", axis=1)
    df = f[1] - f[0]
    bands = {k: p[:, (f >= lo) & (f < hi)].sum(axis=1) * df for k, (lo, hi) in BANDS_HZ.items()}
    sel = (f >= TOTAL_HZ[0]) & (f < TOTAL_HZ[1])
    total = p[:, sel].sum(axis=1) * df
    cum = np.cumsum(p[:, sel], axis=1)
    fsel = f[sel]
    sef = np.array([fsel[min(int(np.searchsorted(c, SEF_FRACTION * c[-1])), len(fsel) - 1)] if c[-1] > 0 else np.nan
                    for c in cum])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(total > 0, bands["alpha"] / total, np.nan)
        adr = np.where(bands["delta"] > 0, bands["alpha"] / bands["delta"], np.nan)
    peak = np.abs(signal.detrend(x, axis=1)).max(axis=1) if x.shape[1] > 1 else np.zeros(x.shape[0])
    hf_sel = (f >= HF_HZ[0]) & (f < HF_HZ[1])
    hf = np.sqrt(p[:, hf_sel].sum(axis=1) * df) if f[-1] >= HF_HZ[1] else np.full(x.shape[0], np.nan)
    ind = Indices(t_s, bands, total, rel, adr, sef, burst_suppression_ratio(x, fs), np.zeros(x.shape[0], bool),
                  peak, hf)
    return reject(ind, (peak > ARTEFACT_UV) | (np.nan_to_num(hf) > HF_UV))


def reject(ind: Indices, mask: np.ndarray) -> Indices:
    """The epoch with the channels in mask rejected: their indices NaN."""
    mask = np.asarray(mask, dtype=bool) & ~ind.rejected
    if not mask.any():
        return ind
    return replace(ind, band_uv2={k: np.where(mask, np.nan, v) for k, v in ind.band_uv2.items()},
                   total_uv2=np.where(mask, np.nan, ind.total_uv2),
                   relative_alpha=np.where(mask, np.nan, ind.relative_alpha),
                   alpha_delta=np.where(mask, np.nan, ind.alpha_delta), sef95_hz=np.where(mask, np.nan, ind.sef95_hz),
                   bsr=np.where(mask, np.nan, ind.bsr), rejected=ind.rejected | mask)


def burst_suppression_ratio(x: np.ndarray, fs: float) -> np.ndarray:
    """Per channel: the fraction of samples in suppression (within ±SUPPRESSION_UV of the 1-30 Hz signal's
    median for at least SUPPRESSION_MIN_S)."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    sos = signal.butter(2, TOTAL_HZ, btype="bandpass", fs=fs, output="sos")
    y = signal.sosfiltfilt(sos, x, axis=1) if x.shape[1] > 30 else x - x.mean(axis=1, keepdims=True)
    quiet = np.abs(y - np.median(y, axis=1, keepdims=True)) <= SUPPRESSION_UV
    need = int(round(SUPPRESSION_MIN_S * fs))
    out = np.zeros(x.shape[0])
    for c in range(x.shape[0]):
        q = np.r_[False, quiet[c], False].astype(np.int8)
        starts, ends = np.flatnonzero(np.diff(q) == 1), np.flatnonzero(np.diff(q) == -1)
        out[c] = sum(e - s for s, e in zip(starts, ends, strict=True) if e - s >= need) / x.shape[1]
    return out


def asymmetry(total_uv2: np.ndarray, names: list[str]) -> dict[str, float]:
    """(L - R) / (L + R) of total power for each homologous pair present ('C3-P3/C4-P4': value)."""
    out: dict[str, float] = {}
    for i, a in enumerate(names):
        if side_of(a) != "L":
            continue
        mirror = re.sub(r"(\d+)", lambda m: str(int(m.group(1)) + 1), a)
        if mirror in names:
            j = names.index(mirror)
            s = total_uv2[i] + total_uv2[j]
            if not np.isfinite(s):
                continue  # a channel of the pair rejected (artefact): no value, rather than a false one
            out["%s/%s" % (a, mirror)] = float((total_uv2[i] - total_uv2[j]) / s) if s > 0 else 0.0
    return out


def _pooled(epochs: list[Indices], channels: list[int] | None = None) -> tuple[float, float]:
    """Relative alpha and the alpha/delta ratio of the power summed over the epochs and the channels (a longer
    spectrum over several derivations: far steadier than a median of per-epoch, per-channel ratios, whose
    delta band holds only a few cycles)."""
    sel = slice(None) if channels is None else channels
    alpha = float(np.nansum([e.band_uv2["alpha"][sel] for e in epochs]))  # (rejected channel-epochs are NaN)
    delta = float(np.nansum([e.band_uv2["delta"][sel] for e in epochs]))
    total = float(np.nansum([e.total_uv2[sel] for e in epochs]))
    return (alpha / total if total > 0 else float("nan"), alpha / delta if delta > 0 else float("nan"))


def clean_fraction(epochs: list[Indices], channels: list[int]) -> float:
    """The fraction of the channel-epochs that were not rejected (1.0 for none)."""
    cells = [e.rejected[channels] for e in epochs]
    n = sum(c.size for c in cells)
    return 1.0 - float(sum(int(c.sum()) for c in cells)) / n if n else 1.0


def change_size(rel: float, adr: float) -> float:
    """A hemisphere's change as a multiple of the ischaemia criterion: the larger of relative alpha's and the
    alpha/delta ratio's fall (as ratios to baseline), each over its criterion's, in log units (negative: a rise)."""
    return max(float(np.log(rel) / np.log(1 - ALPHA_DROP)), float(np.log(adr) / np.log(1 - ADR_DROP)))


def other_side_changed(rel: dict[str, float], adr: dict[str, float], scatter: dict[str, tuple[float, float]],
                       met: str, other: str) -> bool:
    """Whether the hemisphere `other` has changed with the one that met the criterion (the pattern is global, not
    one-sided): by at least OTHER_SIDE_FRACTION of its change."""
    return change_size(rel[other], adr[other]) >= OTHER_SIDE_FRACTION * change_size(rel[met], adr[met])


@dataclass(frozen=True)
class EegEvent:
    t_s: float
    kind: str  # "ischaemia", "global", "recovered"
    side: str | None  # "L"/"R" for ischaemia; None for global
    alpha_ratio: dict[str, float]  # per hemisphere: smoothed relative alpha / baseline
    adr_ratio: dict[str, float]  # per hemisphere: smoothed alpha/delta / baseline
    bsr: float  # the median burst-suppression ratio over the channels, smoothed

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["alpha_ratio"] = {k: round(v, 3) for k, v in self.alpha_ratio.items()}
        d["adr_ratio"] = {k: round(v, 3) for k, v in self.adr_ratio.items()}
        d["bsr"] = round(self.bsr, 3)
        return d


@dataclass
class EegMonitor:
    """Epochs in (push samples), indices and events out; set_baseline() before the clamp."""

    fs: float
    channel_names: list[str]
    epochs: list[Indices] = field(default_factory=list)
    events: list[EegEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sides = [side_of(n) for n in self.channel_names]
        self._pending = np.zeros((len(self.channel_names), 0))
        self._t = 0.0
        self.baseline: dict[str, tuple[float, float]] | None = None  # per side: (relative alpha, alpha/delta)
        self.scatter: dict[str, tuple[float, float]] = {}  # per side: log-ratio SD of 20 s estimates at baseline
        self.mode: tuple[str, str | None] = ("normal", None)  # ("ischaemia", side) or ("global", None)
        self.state: dict[str, str] = {"L": "normal", "R": "normal"}  # per hemisphere, for a display
        self._streak: dict[tuple[str, str | None], int] = {}
        self.rejected = np.zeros(len(self.channel_names), dtype=np.int64)  # channel-epochs rejected (artefact)
        self._artefact_before = np.zeros(len(self.channel_names), dtype=bool)  # the last epoch's own artefacts
        self._power_history = np.full((POWER_EPOCHS, len(self.channel_names)), np.nan)  # clean epochs' total µV²
        self.unjudged_epochs = 0  # epochs after the baseline with a hemisphere too contaminated to judge
        self.unjudged_since_s: float | None = None  # monitor time since which the judgement has been held
        self.unjudged_sides: list[str] = []  # the hemispheres too contaminated to judge, while held

    def push(self, block: np.ndarray) -> list[EegEvent]:
        x = np.concatenate([self._pending, np.atleast_2d(np.asarray(block, dtype=float))], axis=1)
        n = int(round(EPOCH_S * self.fs))
        out: list[EegEvent] = []
        while x.shape[1] >= n:
            self._t += EPOCH_S
            ind = indices(x[:, :n], self.fs, self._t)
            # power per second of EEG that is not suppressed: under burst suppression a burst is not an artefact
            level = ind.total_uv2 / np.maximum(1.0 - ind.bsr, 0.1)
            with warnings.catch_warnings():  # a channel without 5 epochs to compare with: no test
                warnings.simplefilter("ignore", RuntimeWarning)
                ref = np.where(np.isfinite(self._power_history).sum(axis=0) >= 5,
                               np.nanmedian(self._power_history, axis=0), np.inf)
            ind = reject(ind, level > POWER_JUMP * ref)
            # the epoch after an artefact goes too: a pop's decay and an amplifier's recovery outlast their epoch
            own, ind = ind.rejected, reject(ind, self._artefact_before)
            self._artefact_before = own
            self._power_history = np.roll(self._power_history, -1, axis=0)
            # rejected epochs are left out of the reference, and so are epochs mostly suppressed (their power per
            # unsuppressed second rests on too little EEG)
            self._power_history[-1] = np.where(ind.rejected | ~(ind.bsr <= 0.5), np.nan, level)
            self.epochs.append(ind)
            self.rejected += ind.rejected
            x = x[:, n:]
            if self.baseline is not None:
                out += self._judge()
        self._pending = x
        self.events += out
        return out

    def set_baseline(self, from_s: float = 0.0) -> None:
        """The baseline: relative alpha and alpha/delta of the power summed over the epochs since from_s."""
        eps = [e for e in self.epochs if e.t_s - EPOCH_S >= from_s]
        if not eps:
            raise ValueError("no EEG epoch since %.0f s to make a baseline from" % from_s)
        self.baseline = {s: _pooled(eps, self._side(s)) for s in "LR"}
        # The scatter of the 20 s estimates about the baseline, from its own sliding windows (log ratio SD): the
        # criteria are met only beyond it, so that the normal wander of a 20 s spectrum is not an alert.
        self.scatter = {}
        for side in "LR":
            w = [_pooled(eps[i:i + SMOOTH_EPOCHS], self._side(side)) for i in range(len(eps) - SMOOTH_EPOCHS + 1)]
            r = np.log([v[0] / self.baseline[side][0] for v in w]) if len(w) >= 3 else np.zeros(1)
            a = np.log([v[1] / self.baseline[side][1] for v in w]) if len(w) >= 3 else np.zeros(1)
            self.scatter[side] = (max(float(np.std(r)), MIN_SCATTER), max(float(np.std(a)), MIN_SCATTER))

    def _side(self, side: str) -> list[int]:
        return [i for i, s in enumerate(self.sides) if s == side]

    def ratios(self) -> tuple[dict[str, float], dict[str, float], float]:
        """Per hemisphere, relative alpha and the alpha/delta ratio of the power pooled over its channels and the
        last SMOOTH_EPOCHS epochs, as ratios to the baseline's; the median burst-suppression ratio."""
        assert self.baseline is not None
        last = self.epochs[-SMOOTH_EPOCHS:]
        rel: dict[str, float] = {}
        adr: dict[str, float] = {}
        for s in "LR":
            r, a = _pooled(last, self._side(s))
            rel[s], adr[s] = r / self.baseline[s][0], a / self.baseline[s][1]
        per_epoch = [float(np.median(e.bsr[~e.rejected])) for e in last if not e.rejected.all()]
        bsr = float(np.median(per_epoch)) if per_epoch else float("nan")
        return rel, adr, bsr

    def _judge(self) -> list[EegEvent]:
        """The state machine: normal -> ischaemia (one side) or global (both); each back to normal. A side in
        ischaemia stays so until it clears, whatever the other side does; global (the anaesthetic pattern)
        stays until both clear, so that an uneven recovery is never called ischaemia."""
        last = self.epochs[-SMOOTH_EPOCHS:]
        fouled = [s for s in "LR" if clean_fraction(last, self._side(s)) < MIN_CLEAN_FRACTION]
        if fouled:  # too much artefact to tell a change, or to tell one side's from both: hold the state
            self.unjudged_epochs += 1
            if self.unjudged_since_s is None:
                self.unjudged_since_s = last[-1].t_s - EPOCH_S
            self.unjudged_sides = fouled
            return []
        self.unjudged_since_s, self.unjudged_sides = None, []
        rel, adr, bsr = self.ratios()
        sc = self.scatter
        met = {s: np.log(rel[s]) <= np.log(1 - ALPHA_DROP) - CONFIDENCE_Z * sc[s][0]
               or np.log(adr[s]) <= np.log(1 - ADR_DROP) - CONFIDENCE_Z * sc[s][1] for s in "LR"}
        kind, side = self.mode
        new: tuple[str, str | None]
        if kind == "global":
            new = ("global", None) if met["L"] or met["R"] else ("normal", None)
        elif kind == "ischaemia":
            assert side is not None
            new = ("ischaemia", side) if met[side] else ("normal", None)
        elif met["L"] and met["R"]:
            new = ("global", None)
        elif met["L"] or met["R"]:
            s1 = "L" if met["L"] else "R"
            other = "R" if s1 == "L" else "L"
            new = ("global", None) if other_side_changed(rel, adr, sc, s1, other) else ("ischaemia", s1)
        else:
            new = ("normal", None)
        self._streak = {new: self._streak.get(new, 0) + 1}
        if new == self.mode or self._streak[new] < (ISCHAEMIA_CONFIRM_EPOCHS if new[0] == "ischaemia" else
                                                    CONFIRM_EPOCHS):
            return []
        t = self.epochs[-1].t_s
        old, self.mode = self.mode, new
        self.state = {s: new[0] if new[0] != "ischaemia" or new[1] == s else "normal" for s in "LR"}
        if new[0] == "normal":
            return [EegEvent(t, "recovered", old[1], rel, adr, bsr)]
        return [EegEvent(t, new[0], new[1], rel, adr, bsr)]
