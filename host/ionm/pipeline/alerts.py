"""Alert criteria, persistence, states normal / warning / alert, and global-versus-focal scope.

SSEP (ACNS defaults, IONM-REFERENCE "Alert criteria"): amplitude below 50 % of baseline or latency above
110 %. The evidence is the tracker's window test: a criterion is met when some window of recent sweeps puts
the estimate beyond it by z standard errors (default 3.5); the alert needs that on `confirm` consecutive
sweeps. Warning: the same evidence against the warning levels (default half-way: 70 %, 105 %). Leaving
alert needs the same strength of evidence the other way (amplitude above and latency below the criteria),
on `confirm` consecutive sweeps; on entering or leaving alert the channel's windows restart, so a new alert
needs evidence gathered after the last change.

MEP (single trials, CV 27-48 % and all-or-none): each trial gives a ratio to the baseline median (a loss, no
response above loss_uv, counts as ratio 0). The evidence is the last `window` accepted trials (default 3): the
channel alerts when `confirm` of them (default 2, so the newest among them) meet the criterion: amplitude at or
below 20 % of baseline (the -80 % rule; configurable, e.g. 0.5 or 0.35 for -50/-65 %), and below the baseline's own
spread (exp(-spread_z x its log-amplitude SD): a channel whose baseline trials scatter widely needs a deeper drop,
down to level_floor, 10 %, at most: a spread estimated from a handful of baseline trials is itself uncertain, and a
deeper criterion would only delay the alert of a true 80-90 % drop), or onset latency at or above its criterion. One
small trial is normal; two of three are not (a lognormal CV of 48 % puts a trial under 20 % once in ~6000). A
channel in alert stays there until it has recovered: the window's median back at or above the warning level (50 %)
with a response in the newest trial, and only then can it alert again, on new trials. Warning: the window's median
at or below the warning level. Threshold rise (a stimulation parameter, not a waveform) is threshold_rise_alert().

Corroboration (SSEP): the levels of one stimulated nerve (Erb's point N9, cervical N13, cortical N20) carry one
volley. A change at one level is read into the others by a reader who sees it at one level clearly: a channel
alerts on amplitude, without the z standard errors beyond the criterion, when another level of the same
stimulus (a channel outside its pool, on its side, or either of no side) is in alert, and its longest window
(its most precise average; only that one, so that no short window dips past by chance) puts its level at or
below the criterion (the point estimate) while it is beyond the baseline (level 1) by z standard errors, the
change itself certain. A noisy level held just past the criterion (limb_positioning: 45 %, the cortical level
known to +-5 %, the cervical to +-10-19 %) cannot be shown below 50 % at z by any window of the case, but it
reads below 50 % while the nerve's precise level alerts. The trade (tools/nerve_levels.py, docs/EVALUATION.md):
a level held at 62 % beside Erb's at 30 % was drawn in 1 case in 8, at 75 % in none.

Scope: an alert is "global" when another channel, on the other side or of unknown side, is itself changed
at that moment (warning or alert, or significant evidence beyond the warning levels) — anaesthetics and
other systemic causes affect both sides and the control channels; "focal" when no such channel changed;
"unknown" when the recording has no channel to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ionm.pipeline.modalities import Modality, side_of
from ionm.pipeline.tracker import WindowEstimates

NORMAL, WARNING, ALERT = "normal", "warning", "alert"


@dataclass
class AlertEvent:
    t_s: float  # stimulus time of the newest sweep the decision used
    channel: int
    channel_name: str
    criterion: str  # "amplitude", "latency", "amplitude+latency", "loss"
    amplitude_ratio: float
    latency_ratio: float
    scope: str  # "global", "focal" or "unknown"

    def as_json(self) -> dict[str, object]:
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 4)
        return {"t_s": round(float(self.t_s), 6), "channel": self.channel_name, "criterion": self.criterion,
                "amplitude_ratio": num(self.amplitude_ratio), "latency_ratio": num(self.latency_ratio),
                "scope": self.scope}


def scope_of(channel: int, changed: np.ndarray, names: list[str], same_response: list[int] | None = None) -> str:
    """Global when a channel on the other side (or of unknown side) changed too, focal if none did. Channels
    recording the same response as this one (its pool, e.g. a midline derivation of it) are not peers."""
    sides = [side_of(n) for n in names]
    skip = set(same_response or []) | {channel}
    peers = [c for c in range(len(names)) if c not in skip
             and (sides[channel] is None or sides[c] is None or sides[c] != sides[channel])]
    if not peers:
        return "unknown"
    return "global" if any(changed[c] for c in peers) else "focal"


class SsepAlerts:
    """The SSEP state machine for all channels of a recording."""

    def __init__(self, modality: Modality, names: list[str], z: float = 3.5, confirm: int = 3, min_n: int = 16,
                 present_z: float = 4.0, z_change: float = 4.25, z_above: float = -1.0, z_latency: float = 5.0,
                 z_scope: float = 2.0, z_scope_drop: float = 3.0, members: list[list[int]] | None = None):
        self.m = modality
        self.names = list(names)
        self.z, self.confirm, self.min_n, self.present_z = z, confirm, min_n, present_z
        self.z_change, self.z_above, self.z_latency, self.z_scope = z_change, z_above, z_latency, z_scope
        self.z_scope_drop = z_scope_drop
        n = len(names)
        self.members = members or [[c] for c in range(n)]  # channels recording the same response (pools)
        self.sides = [side_of(nm) for nm in names]
        self.state = [NORMAL] * n
        self.streak = np.zeros(n, dtype=int)
        self.changed = np.zeros(n, dtype=bool)
        self.events: list[AlertEvent] = []

    def _evidence(self, est: WindowEstimates, amp_level: float, lat_level: float, deciding: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Per channel: the strongest amplitude and latency evidence over the windows (z; an acute change
        counts as infinitely strong), and the deciding window's estimates.

        Amplitude, on some window: the level itself below the criterion, (level - a) / se > z; or an acute
        change: a drop from the reference before the window significant at z_change (beyond the drift
        tolerance), with the window not above the criterion, (a - level) / se < z_above (a reader's
        "reproducible acute 50 % drop"). Latency: the likelihood-ratio statistic for s > level exceeds
        z_latency^2 with the response present (a / se > present_z); or, after an acute change as above, the best
        fit lies beyond the level (the statistic is positive) with the response present. The deciding window's
        estimates only when `deciding` (else None)."""
        ok, acute, present = self._shared(est)
        below = (amp_level - est.amplitude) / est.level_se(amp_level)
        # Near: (a - level) / se < z_above, i.e. below > -z_above.
        za = np.where(acute & (below > -self.z_above), np.inf, np.where(ok, below, -np.inf))
        lr = est.latency_lr(lat_level)
        # The statistic maximises over latencies, windows and time: it needs z_latency where a plain z needs z.
        zl = np.where(ok & present, np.sqrt(np.maximum(lr, 0.0)) * np.sign(lr) * (self.z / self.z_latency), -np.inf)
        zl = np.where(acute & present & (lr > 0), np.inf, zl)
        if not deciding:
            return za.max(axis=1), zl.max(axis=1), None, None
        w = np.argmax(np.maximum(za, zl), axis=1)
        rows = np.arange(len(w))
        return za.max(axis=1), zl.max(axis=1), est.amplitude[rows, w], est.latency[rows, w]

    def _shared(self, est: WindowEstimates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[ch, n_w] what every level's evidence uses (computed once per sweep): the windows long enough to
        judge, those with an acute drop, and those where the response is present."""
        cache = est.__dict__.setdefault("_alerts", {})
        if self not in cache:
            ok = est.valid & (est.n[None, :] >= self.min_n)
            cache[self] = (ok, ok & (est.drop_z > self.z_change), est.amplitude / est.amplitude_se > self.present_z)
        return cache[self]  # type: ignore[no-any-return]

    def _corroborated(self, est: WindowEstimates, tracked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: does another level of the same stimulus in alert corroborate an amplitude alert here (its
        point estimate at or below the criterion on some window that is beyond the baseline by z standard errors;
        module docstring, Corroboration), and the index of the window judged (the channel's longest)."""
        n = len(self.names)
        alerting = [k for k in range(n) if self.state[k] == ALERT and tracked[k]]
        if not alerting:
            return np.zeros(n, dtype=bool), np.zeros(n, dtype=int)
        ok = self._shared(est)[0]
        # The longest window the channel has (its most precise average), and only that one: a maximum over the
        # short windows too would find one that reads past the criterion by chance on a level well above it.
        longest = len(est.n) - 1 - np.argmax(ok[:, ::-1], axis=1)
        rows = np.arange(n)
        a = est.amplitude[rows, longest]
        changed = (1.0 - a) / est.level_se(1.0)[rows, longest] > self.z
        reads = ok[rows, longest] & changed & (a <= self.m.amplitude_ratio_alert)
        by = np.array([any(k not in self.members[c]
                           and (None in (self.sides[k], self.sides[c]) or self.sides[k] == self.sides[c])
                           for k in alerting) for c in range(n)])
        return by & tracked & reads, longest

    def _recovered(self, est: WindowEstimates) -> np.ndarray:
        """Evidence the other way on some window: amplitude above and latency at or below the criteria."""
        ok = self._shared(est)[0]
        za = (est.amplitude - self.m.amplitude_ratio_alert) / est.level_se(self.m.amplitude_ratio_alert)
        lr = -est.latency_lr(self.m.latency_ratio_alert)
        return (ok & (za > self.z) & (lr > self.z**2)).any(axis=1)

    def update(self, est: WindowEstimates, t_s: float, accepted: np.ndarray, tracked: np.ndarray) -> list[int]:
        """Advance the states with this sweep's window estimates; returns the channels whose windows must
        restart (entered or left alert). New AlertEvents are appended to self.events."""
        za_a, zl_a, amp, lat = self._evidence(est, self.m.amplitude_ratio_alert, self.m.latency_ratio_alert)
        assert amp is not None and lat is not None
        amp_a, lat_a = za_a > self.z, zl_a > self.z
        za_w, zl_w, _, _ = self._evidence(est, self.m.amplitude_ratio_warning, self.m.latency_ratio_warning,
                                          deciding=False)
        amp_w, lat_w = za_w > self.z, zl_w > self.z
        # Scope asks whether anything changed elsewhere at the same time, not whether that change is alarming:
        # evidence beyond the warning levels at z_scope standard errors, or a drop from the sweeps before
        # (beyond the drift tolerance) at z_scope_drop, is enough. A global decline reaches the channels at
        # different moments of their noise: one crosses the criterion while the other is still above the
        # warning level, but already falling.
        dropping = np.where(self._shared(est)[0], est.drop_z, -np.inf).max(axis=1) > self.z_scope_drop
        amp_s, lat_s = (za_w > self.z_scope) | dropping, zl_w > self.z_scope
        recovered = self._recovered(est)
        corroborated, w_c = self._corroborated(est, tracked)
        restart: list[int] = []
        self.changed = tracked & (amp_s | lat_s | np.array([s != NORMAL for s in self.state]))
        # Streaks, vectorised over channels (the per-channel work is only for the rare transitions): in alert,
        # sweeps of recovery evidence; otherwise sweeps meeting a criterion. Only accepted, tracked channels move.
        live = accepted & tracked
        in_alert = np.array([st == ALERT for st in self.state])
        met = amp_a | lat_a | corroborated
        self.streak = np.where(live, np.where(np.where(in_alert, recovered, met), self.streak + 1, 0), self.streak)
        done = live & (self.streak >= self.confirm)
        for c in np.flatnonzero(done):
            if in_alert[c]:
                self.state[c] = NORMAL
            else:
                a_c, l_c = float(amp[c]), float(lat[c])
                if amp_a[c] or lat_a[c]:
                    crit = "amplitude+latency" if amp_a[c] and lat_a[c] else "amplitude" if amp_a[c] else "latency"
                else:  # corroborated by another level in alert: its own longest window that reads past the criterion
                    crit = "amplitude"
                    a_c, l_c = float(est.amplitude[c, w_c[c]]), float(est.latency[c, w_c[c]])
                self.state[c] = ALERT
                self.events.append(AlertEvent(t_s, int(c), self.names[c], crit, a_c, l_c,
                                              scope_of(int(c), self.changed, self.names, self.members[c])))
            self.streak[c] = 0
            restart.append(int(c))
        worse = met | amp_w | lat_w
        for c in np.flatnonzero(live & ~in_alert & ~done):
            self.state[c] = WARNING if worse[c] else NORMAL
        return restart


class MepAlerts:
    """The MEP state machine: the last `window` trials' ratios against the baseline, with hysteresis."""

    def __init__(self, modality: Modality, names: list[str], confirm: int = 2, window: int = 3,
                 spread_z: float = 3.0, level_floor: float = 0.1):
        self.m = modality
        self.names = list(names)
        self.confirm, self.window, self.spread_z = confirm, max(window, confirm), spread_z
        self.level_floor = min(level_floor, modality.amplitude_ratio_alert)
        n = len(names)
        self.state = [NORMAL] * n
        self.events: list[AlertEvent] = []
        self.history: list[list[tuple[float, float, bool]]] = [[] for _ in range(n)]  # (ratio, onset ratio, loss)
        self.amplitude_level = np.full(n, modality.amplitude_ratio_alert)  # per channel, after set_spread()
        self.changed = np.zeros(n, dtype=bool)

    def set_spread(self, log_sd: np.ndarray) -> None:
        """The baseline trials' SD of log amplitude per channel: a criterion inside the normal scatter of a
        channel is moved below it (never above the modality's criterion, never below level_floor)."""
        sd = np.nan_to_num(np.asarray(log_sd, dtype=float), nan=0.0)
        self.amplitude_level = np.clip(np.exp(-self.spread_z * sd), self.level_floor, self.m.amplitude_ratio_alert)

    def _window(self, c: int | np.integer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = self.history[c][-self.window:]
        return (np.array([r for r, _, _ in h]), np.array([o for _, o, _ in h]), np.array([lo for _, _, lo in h]))

    def update(self, p2p_ratio: np.ndarray, onset_ratio: np.ndarray, loss: np.ndarray, t_s: float,
               accepted: np.ndarray, tracked: np.ndarray) -> None:
        m = self.m
        ratio = np.where(loss, 0.0, p2p_ratio)
        live = accepted & tracked
        for c in np.flatnonzero(live):
            self.history[c].append((float(ratio[c]), float(onset_ratio[c]), bool(loss[c])))
            del self.history[c][:-self.window]
        median = np.full(len(self.names), np.nan)
        for c in np.flatnonzero(tracked):
            if self.history[c]:
                median[c] = float(np.median(self._window(c)[0]))
        worse = median <= m.amplitude_ratio_warning
        self.changed = tracked & (worse | np.array([s != NORMAL for s in self.state]))
        for c in np.flatnonzero(live):
            r, o, lost = self._window(c)
            if self.state[c] == ALERT:
                if median[c] >= m.amplitude_ratio_warning and not lost[-1]:
                    self.state[c] = NORMAL  # recovered: a new alert needs new trials
                    self.history[c] = self.history[c][-1:]
                continue
            level = self.amplitude_level[c]
            amp_met = (r <= level) | lost
            lat_met = ~lost & (o >= m.latency_ratio_alert)
            met = amp_met | lat_met
            if met[-1] and int(met.sum()) >= self.confirm:
                n_amp, n_lat = int(amp_met.sum()), int(lat_met.sum())
                crit = "loss" if lost[met].all() else "amplitude+latency" if n_amp >= self.confirm and \
                    n_lat >= self.confirm else "amplitude" if n_amp >= n_lat else "latency"
                self._alert(c, t_s, crit, r[met], o[met & ~lost])
            elif amp_met[-1] and len(r) >= 2 and self._pair_past(r[-2:], level):
                self._alert(c, t_s, "amplitude", r[-2:], o[-2:][~lost[-2:]])
            else:
                self.state[c] = WARNING if worse[c] else NORMAL

    @staticmethod
    def _pair_past(pair: np.ndarray, level: float) -> bool:
        """Two consecutive trials that together are past the criterion: their geometric mean at or below it,
        each counted no lower than half of it. A channel falling through the criterion draws its trial at
        the crossing above it half the time (CV 27-48 %); this pair rule alerts at the next trial, past it on
        its own, instead of waiting for another. The floor keeps one absent or tiny trial from carrying an
        ordinary one: 15 % after 50 % is not an alert, 9 % after 24 % is. Against normal variability it
        needs two low trials in a row, as two of three past the criterion do, so it adds few false alerts
        (tests/test_pipeline_alerts.py: 600 trains at CV 48 % on six channels give none)."""
        floored = np.maximum(pair, 0.5 * level)
        return bool(np.sqrt(floored[0] * floored[1]) <= level)

    def _alert(self, c: int | np.integer, t_s: float, crit: str, ratios: np.ndarray, onsets: np.ndarray) -> None:
        self.state[c] = ALERT
        self.events.append(AlertEvent(t_s, int(c), self.names[c], crit, float(np.median(ratios)),
                                      float(np.median(onsets)) if len(onsets) else float("nan"),
                                      scope_of(int(c), self.changed, self.names)))


def threshold_rise_alert(thresholds_v: np.ndarray, baseline_v: float, rise_v: float = 100.0,
                         sustained: int = 2) -> bool:
    """MEP threshold criterion: the stimulation threshold (V) found by threshold hunting has risen by more than
    rise_v over baseline on the last `sustained` determinations (>100 V sustained: IONM-REFERENCE,
    unconfirmed, hence configurable)."""
    th = np.asarray(thresholds_v, dtype=float)
    return bool(len(th) >= sustained and np.all(th[-sustained:] - baseline_v > rise_v))
