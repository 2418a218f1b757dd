"""Alert criteria, persistence, states normal / warning / alert, and global-versus-focal scope.

SSEP (ACNS defaults, IONM-REFERENCE "Alert criteria"): amplitude below 50 % of baseline or latency above
110 %. The evidence is the tracker's window test: a criterion is met when some window of recent sweeps puts
the estimate beyond it by z standard errors (default 3.5); the alert needs that on `confirm` consecutive
sweeps. Warning: the same evidence against the warning levels (default half-way: 70 %, 105 %). Leaving
alert needs the same strength of evidence the other way (amplitude above and latency below the criteria),
on `confirm` consecutive sweeps; on entering or leaving alert the channel's windows restart, so a new alert
needs evidence gathered after the last change.

MEP (judged per trial): loss (no response above loss_uv), amplitude at or below 20 % of baseline (the -80 %
rule; configurable, e.g. 0.5 or 0.35 for -50/-65 %), onset latency at or above 110 %; alert when met on
`confirm` consecutive trials (default 2: one small trial is common with 27-48 % trial-to-trial CV).
Threshold rise (a stimulation parameter, not a waveform) is threshold_rise_alert().

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


def scope_of(channel: int, changed: np.ndarray, names: list[str]) -> str:
    """Global when a channel on the other side (or of unknown side) changed too, focal if none did."""
    sides = [side_of(n) for n in names]
    peers = [c for c in range(len(names)) if c != channel
             and (sides[channel] is None or sides[c] is None or sides[c] != sides[channel])]
    if not peers:
        return "unknown"
    return "global" if any(changed[c] for c in peers) else "focal"


class SsepAlerts:
    """The SSEP state machine for all channels of a recording."""

    def __init__(self, modality: Modality, names: list[str], z: float = 3.5, confirm: int = 3, min_n: int = 8,
                 present_z: float = 4.0, z_change: float = 5.0, z_point: float = 0.5):
        self.m = modality
        self.names = list(names)
        self.z, self.confirm, self.min_n, self.present_z = z, confirm, min_n, present_z
        self.z_change, self.z_point = z_change, z_point
        n = len(names)
        self.state = [NORMAL] * n
        self.streak = np.zeros(n, dtype=int)
        self.changed = np.zeros(n, dtype=bool)
        self.events: list[AlertEvent] = []

    def _evidence(self, est: WindowEstimates, amp_level: float, lat_level: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per channel: amplitude criterion met, latency criterion met, and the deciding window's estimates.

        Amplitude: (level - a) / se > z on some window (a is the fit at the best latency, which if anything
        overestimates a weak response: the test errs towards not alerting), or, for an acute change, a drop
        from the level before the window significant at z_change with a below the level by z_point standard
        errors (a reader's "reproducible acute 50 % drop"). Latency: the likelihood-ratio
        statistic for s > level exceeds z^2 on some window, with the response itself present there
        (amplitude / SE > present_z)."""
        ok = est.valid & (est.n[None, :] >= self.min_n)
        za = np.where(ok, (amp_level - est.amplitude) / est.amplitude_se, -np.inf)
        # Acute path: a change from the level just before the window, significant at z_change, to an
        # estimate below the criterion by z_point standard errors. Expressed on the same scale as za.
        zc = (est.ref_amplitude - est.amplitude) / np.hypot(est.amplitude_se, est.ref_amplitude_se)
        below = (amp_level - est.amplitude) / est.amplitude_se > self.z_point
        acute = ok & np.isfinite(zc) & (zc > self.z_change) & below
        za = np.where(acute, np.maximum(za, self.z + 1e-9), za)
        # The response must be there to have a latency: its (latency-marginalised) amplitude significant.
        present = est.amplitude / est.amplitude_se > self.present_z
        lr = est.latency_lr(lat_level)
        zl = np.where(ok & present, np.sqrt(np.maximum(lr, 0.0)) * np.sign(lr), -np.inf)
        zbest = np.maximum(za, zl)
        w = np.argmax(zbest, axis=1)
        rows = np.arange(len(w))
        return (np.asarray((za > self.z).any(axis=1)), np.asarray((zl > self.z).any(axis=1)),
                est.amplitude[rows, w], est.latency[rows, w])

    def _recovered(self, est: WindowEstimates) -> np.ndarray:
        """Evidence the other way on some window: amplitude above and latency at or below the criteria."""
        ok = est.valid & (est.n[None, :] >= self.min_n)
        za = (est.amplitude - self.m.amplitude_ratio_alert) / est.amplitude_se
        lr = -est.latency_lr(self.m.latency_ratio_alert)
        return (ok & (za > self.z) & (lr > self.z**2)).any(axis=1)

    def update(self, est: WindowEstimates, t_s: float, accepted: np.ndarray, tracked: np.ndarray) -> list[int]:
        """Advance the states with this sweep's window estimates; returns the channels whose windows must
        restart (entered or left alert). New AlertEvents are appended to self.events."""
        amp_a, lat_a, amp, lat = self._evidence(est, self.m.amplitude_ratio_alert, self.m.latency_ratio_alert)
        amp_w, lat_w, _, _ = self._evidence(est, self.m.amplitude_ratio_warning, self.m.latency_ratio_warning)
        recovered = self._recovered(est)
        restart: list[int] = []
        self.changed = tracked & (amp_w | lat_w | np.array([s != NORMAL for s in self.state]))
        for c in np.flatnonzero(accepted & tracked):
            if self.state[c] == ALERT:
                self.streak[c] = self.streak[c] + 1 if recovered[c] else 0
                if self.streak[c] >= self.confirm:
                    self.state[c], self.streak[c] = NORMAL, 0
                    restart.append(int(c))
                continue
            met = amp_a[c] or lat_a[c]
            self.streak[c] = self.streak[c] + 1 if met else 0
            if self.streak[c] >= self.confirm:
                crit = "amplitude+latency" if amp_a[c] and lat_a[c] else "amplitude" if amp_a[c] else "latency"
                self.state[c], self.streak[c] = ALERT, 0
                self.events.append(AlertEvent(t_s, int(c), self.names[c], crit, float(amp[c]), float(lat[c]),
                                              scope_of(int(c), self.changed, self.names)))
                restart.append(int(c))
            else:
                self.state[c] = WARNING if (met or amp_w[c] or lat_w[c]) else NORMAL
        return restart


class MepAlerts:
    """The MEP state machine: per-trial ratios against the baseline medians, confirmed over trials."""

    def __init__(self, modality: Modality, names: list[str], confirm: int = 2):
        self.m = modality
        self.names = list(names)
        self.confirm = confirm
        n = len(names)
        self.state = [NORMAL] * n
        self.streak = np.zeros(n, dtype=int)
        self.events: list[AlertEvent] = []

    def update(self, p2p_ratio: np.ndarray, onset_ratio: np.ndarray, loss: np.ndarray, t_s: float,
               accepted: np.ndarray, tracked: np.ndarray) -> None:
        m = self.m
        amp_met = p2p_ratio <= m.amplitude_ratio_alert
        lat_met = ~loss & (onset_ratio >= m.latency_ratio_alert)
        met = loss | amp_met | lat_met
        worse = met | (p2p_ratio <= m.amplitude_ratio_warning) | (~loss & (onset_ratio >= m.latency_ratio_warning))
        changed = tracked & (worse | np.array([s != NORMAL for s in self.state]))
        for c in np.flatnonzero(accepted & tracked):
            if self.state[c] == ALERT:
                self.streak[c] = self.streak[c] + 1 if not met[c] else 0
                if self.streak[c] >= self.confirm:
                    self.state[c], self.streak[c] = NORMAL, 0
                continue
            self.streak[c] = self.streak[c] + 1 if met[c] else 0
            if self.streak[c] >= self.confirm:
                crit = "loss" if loss[c] else "amplitude+latency" if amp_met[c] and lat_met[c] else \
                    "amplitude" if amp_met[c] else "latency"
                self.state[c], self.streak[c] = ALERT, 0
                self.events.append(AlertEvent(t_s, int(c), self.names[c], crit, float(p2p_ratio[c]),
                                              float(onset_ratio[c]), scope_of(int(c), changed, self.names)))
            else:
                self.state[c] = WARNING if worse[c] else NORMAL


def threshold_rise_alert(thresholds_v: np.ndarray, baseline_v: float, rise_v: float = 100.0,
                         sustained: int = 2) -> bool:
    """MEP threshold criterion: the stimulation threshold (V) found by threshold hunting has risen by more than
    rise_v over baseline on the last `sustained` determinations (>100 V sustained: IONM-REFERENCE,
    unconfirmed, hence configurable)."""
    th = np.asarray(thresholds_v, dtype=float)
    return bool(len(th) >= sustained and np.all(th[-sustained:] - baseline_v > rise_v))
