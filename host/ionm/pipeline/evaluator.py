"""One recording's evaluator: conditioning, rejection, averages, baseline, tracker and alerts, sweep by sweep.

Causal by construction: process() sees one sweep (all channels) at a time, and everything it decides uses
that sweep and the state left by earlier ones. The baseline is set on demand (set_baseline()), at the first
sweep after baseline_end_s, or — with baseline_end_s=None — automatically once every channel's split halves
reproduce (ionm.pipeline.baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ionm.pipeline import conditioning, modalities
from ionm.pipeline.alerts import AlertEvent, MepAlerts, SsepAlerts
from ionm.pipeline.averaging import Average, PerChannelAverages
from ionm.pipeline.baseline import BaselineAccumulator
from ionm.pipeline.conditioning import ArtifactRejector, Conditioner
from ionm.pipeline.peaks import MIN_THRESHOLD_UV, MepFeatures, Peak, PeakMarker, mep_features, mep_onset_window_ms
from ionm.pipeline.tracker import MAX_BASELINE_SE, KalmanState, Tracker

# A tracked channel whose baseline level is known to worse than ±10 % (relative SE) is a weak baseline: the
# 50 % criterion sits at most 5 of its SEs below the baseline, so confirming a change there takes long averages
# (a complete loss against a ±19 % baseline could not be confirmed at 3.5 SE within 1024 sweeps in the
# detection bench). Reported to the technologist, who can re-baseline on more sweeps or watch another channel.
WEAK_BASELINE_SE = 0.1


def robust_log_sd(p2p_uv: np.ndarray) -> float:
    """MEP baseline trials' spread: the robust SD (1.4826 MAD) of their log amplitude."""
    logs = np.log(np.maximum(np.asarray(p2p_uv, dtype=float), 1e-3))
    return 1.4826 * float(np.median(np.abs(logs - np.median(logs))))


# An MEP onset is searched from this fraction of the earliest typical onset of the channel's muscle (APB 18 ms ->
# 12.6 ms, TA 25 -> 17.5 ms, abductor hallucis 35 -> 24.5 ms; none for an unrecognised label): an artefact tail
# or a stray stimulus a few ms after the train is never taken for the response, while a short patient's or a
# child's earlier onsets (an adult's lower edge minus 30 %) are still found.
MEP_ONSET_FLOOR = 0.7
# An MEP trial is judged on a channel only when a response at this fraction of the channel's baseline would have
# stood out of its background (mep_features' presence threshold, never under MIN_THRESHOLD_UV).
MEP_JUDGEABLE_RATIO = 0.5


@dataclass
class EvaluatorConfig:
    mains_hz: tuple[float, ...] = (50.0, 60.0)  # both by default: the fit of an absent one is ~zero
    z: float = 3.5  # evidence (standard errors beyond a criterion) for warning / alert / recovery
    confirm: int = 3  # consecutive sweeps (SSEP) with that evidence before alert
    mep_confirm: int = 2  # trials of the last mep_window meeting a criterion (MEP)
    mep_window: int = 3  # the MEP trials judged together
    mep_baseline_trials: int = 3  # trials with a response an MEP channel needs to get a baseline
    average: tuple[str, float] = ("exponential", 100.0)  # display averages (kind, n); per channel: averages=
    averages: list[tuple[str, float]] | None = None
    amplitude_uv: float | None = None  # rejection limit after conditioning (default per modality)
    min_baseline_sweeps: int = 32  # SSEP sweeps (MEP: 2 trials) a channel needs to get a baseline
    modality_overrides: dict[str, object] = field(default_factory=dict)  # e.g. {"amplitude_ratio_alert": 0.4}


@dataclass
class SweepResult:
    t_s: float
    reasons: list[str | None]  # per channel: rejection reason, None if accepted
    states: list[str]
    alerts: list[AlertEvent]  # alerts raised by this sweep
    tracker: KalmanState | None = None  # SSEP, once the baseline is set
    mep: MepFeatures | None = None  # MEP


class Evaluator:
    def __init__(self, fs: float, pre_samples: int, n_samples: int, modality: str, channel_names: list[str],
                 baseline_end_s: float | None = None, config: EvaluatorConfig | None = None,
                 stimulated: str | None = None):
        self.cfg = config or EvaluatorConfig()
        self.modality = modalities.get(modality, **self.cfg.modality_overrides)
        self.fs, self.pre, self.n = float(fs), int(pre_samples), int(n_samples)
        self.names = list(channel_names)
        n_ch = len(self.names)
        # Channels that monitor this stimulus (the others are never tracked, so never alert): see monitored().
        self.monitored = np.array(modalities.monitored(stimulated, self.names), dtype=bool)
        self.baseline_end_s = baseline_end_s
        m = self.modality
        blank = conditioning.blank_slice(self.fs, self.pre, self.n, m.blank_ms)
        blank_end = blank.stop
        self.blank_end = blank_end
        self.mep_min_onset_ms = np.array([MEP_ONSET_FLOOR * mep_onset_window_ms(str(nm))[0] for nm in self.names])
        keep = np.ones(self.n, dtype=bool)
        keep[blank] = False
        if m.single_trial:
            # MEP: the response is the signal; judge cautery and the noise on what precedes the train, or
            # else on the sweep's last 10 ms (MEPs are over by ~60 ms).
            keep[self.pre:] = False
            if keep.sum() < 16:
                keep[:] = False
                keep[-max(16, int(0.010 * self.fs)):] = True
        self.keep = keep
        # MEP: trains come every few seconds, too sparse for the canceller to follow the mains phase, so each
        # trial's hum is fitted on its own pre-train samples (TrialMainsFit). Left in, tens of µV of hum
        # would set the presence threshold (10 noise SD) above a small muscle's half-baseline response, and
        # read as a response once that response is lost (issue 16: left TA alerting 4-9 trains late).
        self.cond = Conditioner(self.fs, self.n, self.pre, m.band_hz, m.blank_ms, self.cfg.mains_hz,
                                mains_fit_mask=keep if m.single_trial else None,
                                mains_per_sweep=m.single_trial,
                                baseline_mask=keep if m.single_trial else None)
        amp_limit = self.cfg.amplitude_uv or (20_000.0 if m.single_trial else 250.0)
        self.rejector = ArtifactRejector(n_ch, amplitude_uv=amp_limit, adaptive_rms=not m.single_trial)
        window = np.zeros(self.n, dtype=bool)
        window[blank_end:] = True
        self.window = window
        kinds = self.cfg.averages or [self.cfg.average] * n_ch
        self.averages = PerChannelAverages(kinds, self.n, window)
        self.sites = [modalities.site_of(nm, m.name) for nm in self.names]
        self.markers = [PeakMarker(m, site, self.fs, self.pre) for site in self.sites]
        self.tracker = Tracker(self.fs, self.n, self.pre, blank_end, m.band_hz[1], n_ch)
        self.accum = BaselineAccumulator(n_ch, self.n, self.tracker.idx, window=window)
        self.baseline_set = False
        self.tracked = np.zeros(n_ch, dtype=bool)
        self.baseline_peaks: list[dict[str, Peak]] = [{} for _ in range(n_ch)]
        self.ssep_alerts = SsepAlerts(m, self.names, z=self.cfg.z, confirm=self.cfg.confirm)
        self.mep_alerts = MepAlerts(m, self.names, confirm=self.cfg.mep_confirm, window=self.cfg.mep_window)
        self._mep_base: list[list[tuple[float, float]]] = [[] for _ in range(n_ch)]
        self.mep_baseline = np.full((n_ch, 2), np.nan)  # (p2p µV, onset ms) medians
        self.last_t = -np.inf
        self._first_t = np.inf  # first sweep's stimulus time (the baseline's span)

    # -- baseline -------------------------------------------------------------------------------------
    def set_baseline(self) -> None:
        """Freeze the baseline from what was accumulated (on demand, or at baseline_end_s)."""
        if self.modality.single_trial:
            # A channel's baseline is the median of its trials with a response, when it has enough of them and
            # they are most of its trials (a muscle that answers one train in three has no baseline to lose).
            log_sd = np.full(len(self.names), np.nan)
            for c, trials in enumerate(self._mep_base):
                good = np.array([(p, o) for p, o in trials if np.isfinite(o)]).reshape(-1, 2)
                if len(good) >= self.cfg.mep_baseline_trials and 2 * len(good) > len(trials):
                    self.mep_baseline[c] = np.median(good, axis=0)
                    # robust: one small or one large baseline trial must not set the channel's criterion
                    log_sd[c] = robust_log_sd(good[:, 0])
            self.tracked = np.isfinite(self.mep_baseline[:, 0]) & self.monitored
            self.mep_alerts.set_spread(log_sd)
        else:
            mean, a, b = self.accum.halves()
            n_ch = len(self.names)
            stack, ok = self.accum.aligned()
            n_base = self.accum.n
            enough = n_base >= self.cfg.min_baseline_sweeps
            span = self.last_t - self._first_t if np.isfinite(self._first_t) else 0.0
            dt = span / max(len(stack) - 1, 1) if len(stack) > 1 else 1.0
            self.tracker.set_baseline(mean, a, b, stack, ok & enough[None, :], n_base, self.sites, self.names,
                                      baseline_end_s=self.last_t if np.isfinite(self.last_t) else 0.0,
                                      baseline_dt_s=dt)
            self.tracked = self.tracker.tracked & enough & self.monitored
            self.ssep_alerts.members = self.tracker.members
            base = Average(mean, a, b, self.accum.n.astype(float), np.zeros(n_ch), np.zeros(n_ch))
            self.baseline_peaks = [self.markers[c].measure(base.channel(c)) for c in range(n_ch)]
        self.baseline_set = True

    def baseline_reference(self, ch: int) -> tuple[float, float]:
        """(amplitude µV, latency ms) that ratio 1 stands for on a channel: the named pair's peak to peak
        and the first peak's latency at baseline (SSEP), or the baseline medians (MEP)."""
        if self.modality.single_trial:
            return float(self.mep_baseline[ch, 0]), float(self.mep_baseline[ch, 1])
        peaks = self.baseline_peaks[ch]
        pair = self.markers[ch].pair
        if pair and "%s-%s" % pair in peaks:
            p = peaks["%s-%s" % pair]
            return abs(p.amplitude_uv), p.latency_ms
        if peaks:
            p = next(iter(peaks.values()))
            return abs(p.amplitude_uv), p.latency_ms
        return float("nan"), float("nan")

    def baseline_level_se(self, ch: int) -> float:
        """Relative standard error of the baseline level a channel is judged against (through its pool; SSEP,
        NaN when not tracked or MEP). A baseline known to ±20 % bounds every decision: a loss of the response is
        then at most 5 SE from the baseline, and 2.5 SE from the 50 % criterion, however long the average."""
        if self.modality.single_trial or not self.baseline_set or not self.tracked[ch]:
            return float("nan")
        return float(self.tracker.windows.baseline_se[ch])

    def baseline_readiness(self) -> list[int | None]:
        """Per channel, after set_baseline(): how many more sweeps (MEP: trials) its baseline needs to be
        tracked; 0 when tracked, None when no response was found to extrapolate from.

        SSEP: a baseline is tracked when its level's standard error is at most MAX_BASELINE_SE; that error falls
        as 1/sqrt(n) with the sweeps averaged, so n x (se / MAX_BASELINE_SE)^2 sweeps are needed in all (an
        estimate: the split-halves term falls faster, so it errs on the long side)."""
        n_ch = len(self.names)
        if not self.baseline_set:
            return [None] * n_ch
        out: list[int | None] = []
        if self.modality.single_trial:
            for c, trials in enumerate(self._mep_base):
                good = sum(1 for _, o in trials if np.isfinite(o))
                if self.tracked[c] or not self.monitored[c]:
                    out.append(0)
                elif good == 0:
                    out.append(None)
                else:  # enough trials with a response, and most of them
                    out.append(max(self.cfg.mep_baseline_trials - good, len(trials) + 1 - 2 * good, 1))
            return out
        bank = self.tracker.bank
        for c in range(n_ch):
            n_b = int(self.accum.n[c])
            if self.tracked[c] or not self.monitored[c]:
                out.append(0)
            elif n_b < self.cfg.min_baseline_sweeps:  # too few to judge yet: at least the minimum
                out.append(self.cfg.min_baseline_sweeps - n_b)
            elif bank is None or not np.isfinite(bank.baseline_se[c]):
                out.append(None)
            else:
                need = int(np.ceil(n_b * (bank.baseline_se[c] / MAX_BASELINE_SE) ** 2))
                need = max(need, self.cfg.min_baseline_sweeps)
                out.append(max(need - n_b, 1))
        return out

    def weak_baselines(self) -> dict[int, float]:
        """Tracked channels whose baseline level's relative SE exceeds WEAK_BASELINE_SE: {channel: SE}."""
        se = {c: self.baseline_level_se(c) for c in range(len(self.names))}
        return {c: v for c, v in se.items() if np.isfinite(v) and v > WEAK_BASELINE_SE}

    # -- one sweep ------------------------------------------------------------------------------------
    def process(self, sweep_uv: np.ndarray, stim_time_s: float) -> SweepResult:
        """Evaluate one sweep [n_channels, n_samples] (µV, raw) stimulated at stim_time_s."""
        # As recorded (float32 in files and from the board): conditioning makes its own float64 copy.
        raw = np.asarray(sweep_uv).reshape(len(self.names), self.n)
        if not np.issubdtype(raw.dtype, np.floating):
            raw = raw.astype(np.float64)
        t = float(stim_time_s)
        if (not self.baseline_set and self.baseline_end_s is not None and t > self.baseline_end_s):
            self.set_baseline()
        # A channel's float64 sum is finite exactly when its samples are (float32 samples cannot overflow it; a
        # float64 sweep beyond ~1e304 µV counts as non-finite, garbage either way): one reduction, not a mask.
        finite = np.isfinite(raw.sum(axis=1, dtype=np.float64))
        if not finite.all():
            raw = np.where(np.isfinite(raw), raw, 0.0)
        x = self.cond(raw, t)
        reasons = self.rejector.check(raw, x, self.keep)
        for c in np.flatnonzero(~finite):
            if reasons[c] is not None:
                self.rejector.counts[c][reasons[c]] -= 1  # type: ignore[index]
            self.rejector.counts[c]["nonfinite"] = self.rejector.counts[c].get("nonfinite", 0) + 1
            reasons[c] = "nonfinite"
        ok = np.array([r is None for r in reasons])
        self.last_t = t
        self._first_t = min(self._first_t, t)
        if self.modality.single_trial:
            return self._mep(x, t, reasons, ok)
        self.averages.update(x, ok)
        events: list[AlertEvent] = []
        state = None
        if not self.baseline_set:
            self.accum.add(x, ok)
            if self.baseline_end_s is None and bool(np.all(self.accum.is_stable())):
                self.set_baseline()
        else:
            self.tracker.update(x, ok, t, self.rejector.noise_ratio)
            est = self.tracker.estimates()
            before = len(self.ssep_alerts.events)
            restart = self.ssep_alerts.update(est, t, self.tracker.pooled_ok, self.tracked)
            for ch in restart:
                self.tracker.windows.reset(ch)
            events = self.ssep_alerts.events[before:]
            state = self.tracker.kalman.state()
        states = self.ssep_alerts.state if self.baseline_set else ["normal"] * len(self.names)
        return SweepResult(t, reasons, list(states), events, tracker=state)

    def _mep(self, x: np.ndarray, t: float, reasons: list[str | None], ok: np.ndarray) -> SweepResult:
        feats = mep_features(x, self.fs, self.pre, self.blank_end, noise_mask=self.keep,
                             min_onset_ms=self.mep_min_onset_ms)
        events: list[AlertEvent] = []
        if not self.baseline_set:
            for c in np.flatnonzero(ok):
                self._mep_base[c].append((float(feats.p2p_uv[c]), float(feats.onset_ms[c])))
            if self.baseline_end_s is None and all(len(b) >= self.cfg.mep_baseline_trials for b in self._mep_base):
                self.set_baseline()
        else:
            # A trial whose background (cautery, EMG bursts) is so loud that a response at half the baseline
            # could not have been told from it says nothing about the response: it is not counted as a loss
            # but rejected for that channel ("noise"). The presence threshold is 10 noise SD peak to peak.
            judgeable = feats.threshold_uv <= np.maximum(MEP_JUDGEABLE_RATIO * self.mep_baseline[:, 0],
                                                         MIN_THRESHOLD_UV)
            for c in np.flatnonzero(ok & self.tracked & ~judgeable):
                reasons[c] = "noise"
                self.rejector.counts[c]["noise"] = self.rejector.counts[c].get("noise", 0) + 1
            ok = ok & (judgeable | ~self.tracked)
            ratio = feats.p2p_uv / self.mep_baseline[:, 0]
            onset_ratio = feats.onset_ms / self.mep_baseline[:, 1]
            loss = ~np.isfinite(feats.onset_ms) | (feats.p2p_uv < self.modality.loss_uv)
            before = len(self.mep_alerts.events)
            self.mep_alerts.update(ratio, onset_ratio, loss, t, ok, self.tracked)
            events = self.mep_alerts.events[before:]
        states = self.mep_alerts.state if self.baseline_set else ["normal"] * len(self.names)
        return SweepResult(t, reasons, list(states), events, mep=feats)

    # -- read-outs ------------------------------------------------------------------------------------
    @property
    def alerts(self) -> list[AlertEvent]:
        return self.mep_alerts.events if self.modality.single_trial else self.ssep_alerts.events

    def rejected(self) -> dict[str, dict[str, int]]:
        return {nm: {k: v for k, v in counts.items() if v} for nm, counts in zip(self.names, self.rejector.counts,
                                                                                   strict=True)}

    def peaks(self, ch: int) -> dict[str, Peak]:
        """Named peaks of a channel's current display average (manual overrides: self.markers[ch])."""
        return self.markers[ch].measure(self.averages.estimate().channel(ch))
