"""EEG in the live case: what the engine does with each block of continuous EEG (ionm.sweep.EegBlock), on the engine
thread (EegView.process).

- analysis: ionm.pipeline.eeg's EegMonitor on the raw samples: indices per channel every 2-s epoch, and after the
  baseline its events (unilateral ischaemia, global slowing, recovered), which the engine raises as alerts;
- record: the raw samples in STORE_S (1 s) records, kept by the engine in the case store as a stream of its own
  (STREAM) so that the EEG outlives a restart and `ionm export` writes it;
- display, thinned here, never in the browser: per epoch a density spectral array column per hemisphere (the Welch
  power spectrum of the epoch, averaged over the hemisphere's channels, DSA_HZ at 0.5 Hz, as dB re 1 µV²/Hz in
  DSA_DB mapped to one byte, base64), a trend point (the judged values: relative alpha and alpha/delta of the power
  pooled over the hemisphere and the last 20 s; SEF95 and the burst-suppression ratio, medians over the hemisphere's
  channels and the last 10 s; asymmetry of the pooled total power), and the raw EEG band-passed RAW_BAND_HZ (the
  display's 0.5 Hz low cut and 35 Hz high cut) at RAW_FS_HZ in steps of RAW_Q_UV.
A new viewer gets the last DSA_VIEW_S of DSA columns and trend points, thinned to at most DSA_SHOWN / TREND_SHOWN,
and the last RAW_VIEW_S of raw EEG.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import signal

from ionm.pipeline import eeg as qeeg
from ionm.sweep import EegBlock

STREAM = "eeg/EEG"
STORE_S = 1.0  # samples stored in records of 1 s
DSA_HZ = (0.5, 30.0)
DSA_DB = (-20.0, 30.0)  # dB re 1 µV²/Hz mapped to 0..255 (suppression ~ -20, delta/alpha at baseline ~ +18)
DSA_VIEW_S = 1800.0  # what the page's DSA and trends span (30 min)
DSA_SHOWN = 240  # columns of it a new viewer is sent (thinned by averaging power)
TREND_SHOWN = 240
RAW_BAND_HZ = (0.5, 35.0)
RAW_FS_HZ = 125.0
RAW_Q_UV = 0.5
RAW_VIEW_S = 10.0  # a new viewer's raw EEG (the page then keeps 16 s)
BASELINE_S = 180.0  # the baseline: the EEG of the last 3 min before the request ...
BASELINE_MIN_S = 40.0  # ... of at least this much (the scatter needs a few 20-s windows)
SEF_BSR_EPOCHS = 5  # SEF95 and BSR shown as medians over the last 10 s


def _b64(levels: Any) -> str:
    return base64.b64encode(np.asarray(levels, dtype=np.uint8).tobytes()).decode("ascii")


def dsa_levels(psd: np.ndarray) -> np.ndarray:
    """Power spectral density (µV²/Hz) -> 0..255 over DSA_DB."""
    db = 10.0 * np.log10(np.maximum(psd, 1e-6))
    return np.clip(np.round((db - DSA_DB[0]) / (DSA_DB[1] - DSA_DB[0]) * 255.0), 0, 255).astype(np.uint8)


@dataclass
class EegView:
    fs: float
    names: list[str]
    t0_s: float = 0.0  # case time of the monitor's sample 0
    clamp: dict[str, Any] | None = None  # the engine's clamp state ({"clamp_s", "shunt_s"}), shown with the EEG
    dsa: deque[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=lambda: deque(maxlen=5400))
    trend: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5400))

    def __post_init__(self) -> None:
        self.stream = STREAM
        self.monitor = qeeg.EegMonitor(self.fs, list(self.names))
        self.sides = {s: [i for i, n in enumerate(self.names) if qeeg.side_of(n) == s] for s in "LR"}
        self.t_s = self.t0_s  # case time of the newest sample
        self.samples = 0
        self._store: list[np.ndarray] = []
        self._store_t: float | None = None
        self._store_i = 0
        self._store_n = int(round(STORE_S * self.fs))
        self.raw_sos = signal.butter(2, RAW_BAND_HZ, btype="bandpass", fs=self.fs, output="sos")
        self.raw_zi = np.zeros((self.raw_sos.shape[0], len(self.names), 2))
        self.raw_step = max(int(round(self.fs / RAW_FS_HZ)), 1)
        self.raw_phase = 0
        self.raw: deque[tuple[float, np.ndarray]] = deque()  # (case time, [ch] ints of RAW_Q_UV) at RAW_FS_HZ
        self.baseline_info: dict[str, Any] | None = None
        self.nper = int(round(qeeg.EPOCH_S * self.fs))
        f = np.fft.rfftfreq(self.nper, 1.0 / self.fs)
        self.dsa_sel = (f >= DSA_HZ[0] - 1e-9) & (f <= DSA_HZ[1] + 1e-9)
        self.dsa_f = f[self.dsa_sel]
        self._ring = np.zeros((len(self.names), 0))

    # ---------------------------------------------------------------- per block (engine thread)
    def process(self, block: EegBlock, display: bool = True) -> tuple[list[qeeg.EegEvent], list[dict[str, Any]]]:
        """One block: the monitor's new events and the display appends (raw EEG, and per epoch completed a DSA
        column with the trend point). display=False: the monitor and the DSA and trends only (a resumed case's
        recorded EEG run through again)."""
        x = np.asarray(block.data_uv, dtype=np.float64)
        n_epochs = len(self.monitor.epochs)
        self._ring = np.concatenate([self._ring, x], axis=1)[:, -4 * self.nper - x.shape[1]:]
        events = self.monitor.push(x)
        self.samples += x.shape[1]
        self.t_s = self.t0_s + self.samples / self.fs
        appends: list[dict[str, Any]] = [self._raw(block.t_s, x)] if display else []
        for k in range(n_epochs, len(self.monitor.epochs)):
            appends.append(self._epoch(k))
        return events, appends

    def store_records(self, block: EegBlock) -> list[tuple[float, int, np.ndarray]]:
        """Records of STORE_S completed by this block: (case time of the first sample, its index, [ch, n])."""
        if self._store_t is None or not self._store:
            self._store_t, self._store_i = block.t_s, block.first_index
        self._store.append(np.asarray(block.data_uv, dtype=np.float32))
        x = np.concatenate(self._store, axis=1)
        out = []
        while x.shape[1] >= self._store_n:
            out.append((float(self._store_t), int(self._store_i), x[:, :self._store_n]))
            x = x[:, self._store_n:]
            self._store_t += self._store_n / self.fs
            self._store_i += self._store_n
        self._store = [x] if x.shape[1] else []
        return out

    def _raw(self, t_s: float, x: np.ndarray) -> dict[str, Any]:
        y, self.raw_zi = signal.sosfilt(self.raw_sos, x, axis=1, zi=self.raw_zi)
        idx = np.arange(self.raw_phase, y.shape[1], self.raw_step)
        self.raw_phase = int((self.raw_phase - y.shape[1]) % self.raw_step)
        v = np.round(y[:, idx] / RAW_Q_UV).astype(np.int64)
        t0 = t_s + (idx[0] / self.fs if idx.size else 0.0)
        for j in range(v.shape[1]):
            self.raw.append((t0 + j / RAW_FS_HZ, v[:, j]))
        while self.raw and self.raw[0][0] < self.t_s - RAW_VIEW_S:
            self.raw.popleft()
        return {"k": "eegraw", "t0": round(t0, 4), "dt": 1.0 / RAW_FS_HZ, "q": RAW_Q_UV, "v": v.tolist()}

    def _epoch(self, k: int) -> dict[str, Any]:
        mon = self.monitor
        ep = mon.epochs[k]
        t = round(self.t0_s + ep.t_s, 3)
        # the epoch's samples (the monitor keeps its indices only): epoch k is samples k*nper .. (k+1)*nper
        end = (k + 1) * self.nper - (self.samples - self._ring.shape[1])
        x = self._ring[:, end - self.nper:end]
        psd = signal.periodogram(x, fs=self.fs, window="hann", detrend="constant", axis=1)[1][:, self.dsa_sel]
        cols = {s: dsa_levels(psd[idx].mean(axis=0)) if idx else np.zeros(self.dsa_f.size, np.uint8)
                for s, idx in self.sides.items()}
        self.dsa.append((t, cols["L"], cols["R"]))
        point = self._trend_point(t, k)
        self.trend.append(point)
        return {"k": "eegep", "dL": _b64(cols["L"]), "dR": _b64(cols["R"]), **point}

    def _trend_point(self, t: float, k: int) -> dict[str, Any]:
        """The trend at epoch k, from the epochs up to it."""
        mon = self.monitor
        last = mon.epochs[max(0, k + 1 - qeeg.SMOOTH_EPOCHS):k + 1]
        few = mon.epochs[max(0, k + 1 - SEF_BSR_EPOCHS):k + 1]
        p: dict[str, Any] = {"t": t}
        for s, idx in self.sides.items():
            ra, adr = qeeg._pooled(last, idx) if idx else (float("nan"), float("nan"))
            sef = _nanmedian([e.sef95_hz[idx] for e in few]) if idx else float("nan")
            bsr = _nanmedian([e.bsr[idx] for e in few]) if idx else float("nan")
            p[s] = [_r(ra, 4), _r(adr, 3), _r(sef, 2), _r(bsr, 3)]
        total = _clean_mean([e.total_uv2 for e in last])
        asym = qeeg.asymmetry(total, list(self.names))
        p["asym"] = _r(float(np.mean(list(asym.values()))), 4) if asym else None
        return p


    # ---------------------------------------------------------------- baseline
    def set_baseline(self, now_s: float, from_s: float | None = None) -> dict[str, Any]:
        """The baseline from the EEG of the last BASELINE_S (at least BASELINE_MIN_S), or since case time from_s (a
        recorded baseline set again): the monitor's, and the lines the trends draw (baseline values, and the
        effective ischaemia thresholds: the drop plus the confidence margin of twice the baseline's own scatter).
        Raises ValueError when there is not enough EEG yet."""
        mon = self.monitor
        have = len(mon.epochs) * qeeg.EPOCH_S
        if have < BASELINE_MIN_S:
            raise ValueError("an EEG baseline needs %.0f s of EEG (%.0f s so far)" % (BASELINE_MIN_S, have))
        from_s = max(0.0, mon.epochs[-1].t_s - BASELINE_S) if from_s is None else max(0.0, from_s - self.t0_s)
        mon.set_baseline(from_s)
        # a new baseline also ends a state under way (EegMonitor keeps it across set_baseline): the EEG as it is now
        # is the reference, and is judged afresh from it
        mon.mode, mon.state, mon._streak = ("normal", None), {"L": "normal", "R": "normal"}, {}
        assert mon.baseline is not None
        eps = [e for e in mon.epochs if e.t_s - qeeg.EPOCH_S >= from_s]
        lines: dict[str, Any] = {}
        for s, idx in self.sides.items():
            ra, adr = mon.baseline[s]
            sc_ra, sc_adr = mon.scatter[s]
            lines[s] = {"ra": _r(ra, 4), "adr": _r(adr, 3),
                        "ra_alert": _r(ra * float(np.exp(np.log(1 - qeeg.ALPHA_DROP) - qeeg.CONFIDENCE_Z * sc_ra)), 4),
                        "adr_alert": _r(adr * float(np.exp(np.log(1 - qeeg.ADR_DROP) - qeeg.CONFIDENCE_Z * sc_adr)), 3),
                        "sef": _r(_nanmedian([e.sef95_hz[idx] for e in eps]), 2) if idx else None,
                        "bsr": _r(_nanmedian([e.bsr[idx] for e in eps]), 3) if idx else None}
        total = _clean_mean([e.total_uv2 for e in eps])
        asym = qeeg.asymmetry(total, list(self.names))
        self.baseline_info = {"t_s": round(now_s, 2), "from_s": round(self.t0_s + from_s, 2),
                              "to_s": round(self.t0_s + mon.epochs[-1].t_s, 2), "epochs": len(eps),
                              "lines": lines, "asym": _r(float(np.mean(list(asym.values()))), 4) if asym else None}
        return self.baseline_info

    # ---------------------------------------------------------------- what a viewer is given
    def frame(self) -> dict[str, Any]:
        """The EEG state (small; sent whenever it changes): channels, hemispheres' states, the baseline's lines,
        the criteria, and the DSA's frequency axis and colour scale."""
        mon = self.monitor
        return {"t_s": round(self.t_s, 3), "fs": self.fs, "channels": list(self.names),
                "sides": {s: [self.names[i] for i in idx] for s, idx in self.sides.items()},
                "state": dict(mon.state), "mode": list(mon.mode), "baseline": self.baseline_info,
                "criteria": {"alpha_drop": qeeg.ALPHA_DROP, "adr_drop": qeeg.ADR_DROP,
                             "smooth_s": qeeg.SMOOTH_EPOCHS * qeeg.EPOCH_S,
                             "confirm_s": qeeg.CONFIRM_EPOCHS * qeeg.EPOCH_S},
                "dsa": {"f0": float(self.dsa_f[0]), "df": float(self.dsa_f[1] - self.dsa_f[0]),
                        "n": int(self.dsa_f.size), "db": list(DSA_DB), "epoch_s": qeeg.EPOCH_S},
                "trend_fields": ["ra", "adr", "sef", "bsr"], "view_s": DSA_VIEW_S, "clamp": self.clamp,
                "artefact": self.artefact()}

    def artefact(self) -> dict[str, Any]:
        """Artefact rejection so far: epochs rejected per channel, and since when (case time) the judgement has
        been held because a hemisphere was too contaminated to judge (None: it is judging)."""
        mon = self.monitor
        return {"rejected": {n: int(k) for n, k in zip(self.names, mon.rejected, strict=True)},
                "epoch_s": qeeg.EPOCH_S, "unjudged_epochs": mon.unjudged_epochs,
                "held_since": _r(self.t0_s + mon.unjudged_since_s, 2) if mon.unjudged_since_s is not None else None,
                "held_sides": list(mon.unjudged_sides)}

    def held_alarm(self, held_s: float) -> str | None:
        """The technical alarm's text when the judgement has been held by artefact for held_s or longer."""
        mon = self.monitor
        if mon.unjudged_since_s is None or not mon.epochs or mon.epochs[-1].t_s - mon.unjudged_since_s < held_s:
            return None
        sides = " and ".join({"L": "left", "R": "right"}[s] for s in mon.unjudged_sides)
        return "EEG not judged for %.0f s: artefact on the %s hemisphere%s" % (
            mon.epochs[-1].t_s - mon.unjudged_since_s, sides, "s" if len(mon.unjudged_sides) > 1 else "")

    def view_frame(self) -> dict[str, Any]:
        """What a new viewer draws at once: the last DSA_VIEW_S of DSA columns (levels averaged over runs of columns
        to at most DSA_SHOWN) and trend points (every k-th, at most TREND_SHOWN), and the last RAW_VIEW_S of raw."""
        t_end = self.t_s
        cols = [c for c in self.dsa if c[0] >= t_end - DSA_VIEW_S]
        k = max(1, -(-len(cols) // DSA_SHOWN))
        dsa = []
        for i in range(0, len(cols), k):
            run = cols[i:i + k]  # the mean of the levels (dB) over a run of columns
            lv_l = np.round(np.mean(np.stack([c[1] for c in run]).astype(float), axis=0))
            lv_r = np.round(np.mean(np.stack([c[2] for c in run]).astype(float), axis=0))
            dsa.append({"t": run[-1][0], "L": _b64(lv_l), "R": _b64(lv_r)})
        pts = [p for p in self.trend if p["t"] >= t_end - DSA_VIEW_S]
        step = max(1, -(-len(pts) // TREND_SHOWN))
        pts = pts[::-1][::step][::-1]
        raw = list(self.raw)
        return {"dsa": dsa, "dsa_dt": qeeg.EPOCH_S * k, "trend": pts,
                "raw": {"t0": round(raw[0][0], 4) if raw else None, "dt": 1.0 / RAW_FS_HZ, "q": RAW_Q_UV,
                        "v": np.stack([r[1] for r in raw], axis=1).tolist() if raw else []}}


def _nanmedian(rows: list[np.ndarray]) -> float:
    """The median of the values that are not NaN (rejected epochs), NaN if none is."""
    v = np.concatenate([np.ravel(r) for r in rows]) if rows else np.zeros(0)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _clean_mean(rows: list[np.ndarray]) -> np.ndarray:
    """Per channel, the mean over the epochs that were not rejected (NaN for a channel with none)."""
    a = np.asarray(rows, dtype=float)
    n = np.isfinite(a).sum(axis=0)
    return np.where(n > 0, np.nansum(a, axis=0) / np.maximum(n, 1), np.nan)


def _r(v: float | None, digits: int) -> float | None:
    if v is None or not np.isfinite(v):
        return None
    return round(float(v), digits)
