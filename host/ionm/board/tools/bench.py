"""`ionm bench`: automated verification of a board against the limits of its definition, with the bench
signal generator wired through the divider (hardware/BENCH-WIRING.md) and driven over VISA.

Checks (limits: board.json `bench_limits`, see ionm.board.tools.limits), the board's calibration applied:
- amplitude accuracy at every PGA gain (a generator sine through the divider) and the match between channels;
- frequency response: the upper −3 dB point and the flatness of the passband;
- input-referred noise with the inputs shorted inside the ADS1299;
- averaging: the noise of an average of N stimulus-locked sweeps falls as 1/√N;
- mains rejection: 50 and 60 Hz from the generator, averaged over sweeps at 4.7 Hz, against one sweep;
- timing: a generator burst triggered by the board's trigger output (a TcMEP program of one pulse) starts
  at the stimulus index plus the programmed delay, within a sample;
- stimulator accuracy: current-sense readback against the request on every output into the bench load.

`--report DIR` writes report.json, report.txt and PNG plots (frequency response, noise). The exit status is
0 when every check passes, 1 when one fails, 2 when the board or the generator cannot be driven.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SIGNAL_VPP_UV = 2000.0  # 2 mVpp at the input (2 Vpp at the generator): inside the ±187 mV range at gain 24
AMPLITUDE_HZ = 40.0  # sinc³ droop at 8 kSPS: 0.01 %
CAPTURE_S = 0.25  # per amplitude point: 10 cycles at 40 Hz
RESPONSE_HZ = [10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3500.0, 3900.0]
MAINS_VPP_UV = 100.0
SWEEP_MS = 200.0  # sweep length for averaging: shorter than the 4.7 Hz period
STIM_CURRENT_UA = 1000  # the 4.7 Hz program that marks the sweeps (into the bench load)
STIM_LEVELS_UA = [5000, 10000, 20000]
STIM_PULSES = 2
BURST_HZ = 200.0  # timing: one square cycle, 5 ms, +1 mV then −1 mV at the input
BURST_DELAY_S = 0.005
TIMING_TRIALS = 2
NO_SIGNAL = 0.1  # a channel reading less than this fraction of the applied level has no signal
# The groups of checks, in the order they run (only raising the sample rate), and the checks each one makes.
# `ionm bench --only` runs some of them: after a repair, what the failed checks measure, in a few seconds.
GROUPS = {
    "stimulator": ("stimulator_accuracy",),
    "noise": ("noise", "averaging_slope", "mains_rejection"),
    "amplitude": ("amplitude_gain_*", "channel_match"),
    "frequency": ("upper_3db", "passband_flatness"),
    "timing": ("timing",),
}


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None
    limit: Any
    unit: str
    detail: str = ""
    channels_failed: list[int] = field(default_factory=list)


def _worst_abs(values: dict[int, float]) -> tuple[int, float]:
    ch = max(values, key=lambda c: abs(values[c]))
    return ch, values[ch]


class Bench:
    """One bench run: the measurements in an order that only raises the sample rate (2 kSPS, then 8 kSPS)."""

    def __init__(self, session: Any, gen: Any, limits: dict[str, Any], defn: dict[str, Any]) -> None:
        self.s = session
        self.gen = gen
        self.lim = limits
        self.defn = defn
        self.cal = session.calibration()
        self.checks: list[Check] = []
        self.data: dict[str, Any] = {}
        self.wired = [c for c in defn["bench"]["generator_channels"]]

    def run(self, groups: tuple[str, ...] = ()) -> list[Check]:
        """Every group of checks (GROUPS), or only those named."""
        steps = {"stimulator": self.stimulator, "noise": self.noise_averaging_mains, "amplitude": self.amplitude,
                 "frequency": self.frequency_response, "timing": self.timing}
        for name in GROUPS:
            if not groups or name in groups:
                steps[name]()
        self.gen.off()
        return self.checks

    def add(self, check: Check) -> None:
        self.checks.append(check)

    # ---- stimulator ---------------------------------------------------------------------------------------
    def stimulator(self) -> None:
        from ionm.board.tools import measure

        outputs = int(self.defn["stimulator"]["outputs"])
        rb = measure.stimulator_readback(self.s, outputs=outputs, levels_ua=STIM_LEVELS_UA, pulses=STIM_PULSES,
                                         rate_hz=int(self.lim["noise_rate_hz"]),
                                         stim_gain_ppm=self.cal.stim_gain_ppm or None)
        err = (rb.readback_ua / [STIM_LEVELS_UA] - 1.0) * 100.0
        limit = self.lim["stimulator_accuracy_pct"]
        o, j = divmod(int(abs(err).argmax()), len(STIM_LEVELS_UA))
        bad = sorted({int(x) for x in (abs(err) > limit).nonzero()[0]})
        self.data["stimulator"] = {"levels_ua": STIM_LEVELS_UA, "readback_ua": rb.readback_ua.round(1).tolist()}
        self.add(Check("stimulator_accuracy", not bad, round(float(abs(err[o, j])), 4), limit, "%",
                       "worst: output %d at %d µA reads back %.0f µA%s" % (
                           o, STIM_LEVELS_UA[j], rb.readback_ua[o, j],
                           "; outputs out of limits: %s" % bad if bad else ""), bad))

    # ---- noise, averaging and mains in two captures ------------------------------------------------------
    def noise_averaging_mains(self) -> None:
        import numpy as np

        from ionm.board.tools import analysis, measure

        rate = int(self.lim["noise_rate_hz"])
        n_sweeps = int(self.lim["mains_sweeps"])
        period_s = 1000.0 / measure.STIM_RATE_MHZ
        n_ch = len(self.wired)
        half = n_ch // 2
        sweep = int(SWEEP_MS * rate / 1000)
        noise: dict[int, float] = {}
        shorted_sweeps = []
        rejection: dict[int, float] = {}
        psd: dict[int, Any] = {}
        no_signal: list[int] = []
        for k, mains_hz in enumerate((50.0, 60.0)):
            # half the channels shorted (noise, averaging), the other half on the generator (mains); swapped
            # in the second capture so that every channel has both
            shorted = set(self.wired[:half] if k == 0 else self.wired[half:])
            self.gen.sine(mains_hz, MAINS_VPP_UV * 1e-6)
            config = {"rate_hz": rate, "gain": 24, "channels": self.wired, "leadoff": False, "samples_per_frame": 50,
                      "input": ["shorted" if c in shorted else "normal" for c in self.wired]}
            program = [{"kind": "pulse", "output": 0, "current_ua": STIM_CURRENT_UA, "width_us": 100,
                        "rate_mhz": measure.STIM_RATE_MHZ}]
            rec = self.s.record(config, int((n_sweeps + 0.5) * period_s * rate) + sweep, programs=program)
            uv = rec.uv(self.cal)
            onsets = [e["index"] - rec.first_index for e in rec.events if e.get("program") == 0][:n_sweeps]
            eps = analysis.epochs(uv, onsets, sweep)
            for i, ch in enumerate(self.wired):
                if ch in shorted:
                    noise[ch] = float(uv[:, i].std())
                    psd[ch] = _welch(uv[:, i], rate)
                    continue
                singles = [analysis.sine_fit(e[:, i], rate, mains_hz, refine=False).amplitude for e in eps]
                single = float(np.mean(singles))
                avg = analysis.sine_fit(eps[:, :, i].mean(axis=0), rate, mains_hz, refine=False).amplitude
                if single < NO_SIGNAL * MAINS_VPP_UV / 2:
                    no_signal.append(ch)
                    continue
                rejection[ch] = min(rejection.get(ch, math.inf), 20.0 * math.log10(single / max(avg, 1e-9)))
            shorted_sweeps.append(eps[:, :, [i for i, c in enumerate(self.wired) if c in shorted]])
            self.data.setdefault("mains", {})["%d Hz" % mains_hz] = {"sweeps": int(eps.shape[0])}
        # noise
        lo, hi = self.lim["noise_uvrms_min"], self.lim["noise_uvrms_max"]
        bad = sorted(c for c, v in noise.items() if not lo <= v <= hi)
        # the value shown: the channel furthest outside the window, else the noisiest
        ch = max(bad, key=lambda c: max(lo - noise[c], noise[c] - hi)) if bad else max(noise, key=lambda c: noise[c])
        self.data["noise"] = {"rate_hz": rate, "gain": 24, "uvrms": noise, "psd": psd}
        self.add(Check("noise", not bad, round(noise[ch], 4), [lo, hi], "µVrms",
                       "shorted inputs, gain 24, %d SPS; channel %d%s"
                       % (rate, ch, "; out of limits: %s" % bad if bad else " is the noisiest"), bad))
        # averaging: sweeps of both captures, each of its own shorted channels
        sizes = [1, 2, 4, 8, 16, 32, 64]
        pooled: dict[int, list[float]] = {}
        for eps in shorted_sweeps:
            for n, r in analysis.averaging_rms(eps, [n for n in sizes if n <= eps.shape[0]]).items():
                pooled.setdefault(n, []).append(r)
        rms_by_n = {n: float(np.sqrt(np.mean(np.square(v)))) for n, v in pooled.items()}
        slope = analysis.averaging_slope(rms_by_n)
        s_lo, s_hi = self.lim["averaging_slope"]
        self.data["averaging"] = {"rms_uv_by_n": rms_by_n, "slope": slope}
        self.add(Check("averaging_slope", s_lo <= slope <= s_hi, round(slope, 4), [s_lo, s_hi], "",
                       "rms of an average of N sweeps ∝ N^slope (N = %s)" % sorted(rms_by_n)))
        # mains
        limit = self.lim["mains_rejection_db_min"]
        bad = sorted(set(no_signal) | {c for c, v in rejection.items() if v < limit})
        worst = min(rejection, key=lambda c: rejection[c]) if rejection else None
        self.data["mains"]["rejection_db"] = rejection
        self.add(Check("mains_rejection", not bad, None if worst is None else round(rejection[worst], 2), limit, "dB",
                       "50 and 60 Hz, %d sweeps at %.1f Hz averaged against one sweep; worst on channel %s%s" % (
                           n_sweeps, measure.STIM_RATE_MHZ / 1000, worst,
                           "; no signal on channels %s" % no_signal if no_signal else ""), bad))

    # ---- amplitude at every gain ---------------------------------------------------------------------------------
    def amplitude(self) -> None:
        import numpy as np

        from ionm.board.tools import measure

        rate = int(self.lim["frequency_response_rate_hz"])
        limit = self.lim["amplitude_accuracy_pct"]
        self.gen.sine(AMPLITUDE_HZ, SIGNAL_VPP_UV * 1e-6)
        by_gain = {}
        at_24 = None
        for gain in self.defn["adc"]["gains"]:
            lv = measure.sine(self.s, rate_hz=rate, gain=gain, seconds=CAPTURE_S, freq_hz=AMPLITUDE_HZ,
                              input_vpp_uv=SIGNAL_VPP_UV, cal=self.cal, channels=self.wired)
            err = {c: float((a / lv.nominal_uv - 1.0) * 100.0) for c, a in zip(lv.channels, lv.amplitude_uv,
                                                                              strict=True)}
            by_gain[gain] = err
            if gain == 24:
                at_24 = lv
            ch, e = _worst_abs(err)
            bad = sorted(c for c, v in err.items() if abs(v) > limit)
            self.add(Check("amplitude_gain_%d" % gain, not bad, round(abs(e), 4), limit, "%",
                           "%.0f µVpp at %.0f Hz; worst channel %d (%+.3f %%)%s" % (
                               SIGNAL_VPP_UV, AMPLITUDE_HZ, ch, e,
                               "; out of limits: %s" % bad if bad else ""), bad))
        self.data["amplitude_error_pct"] = by_gain
        if at_24 is not None:  # independent of the generator's accuracy: the channels against each other
            med = float(np.median(at_24.amplitude_uv))
            dev = {c: float((a / med - 1.0) * 100.0) for c, a in zip(at_24.channels, at_24.amplitude_uv, strict=True)}
            limit = self.lim["channel_match_pct"]
            ch, e = _worst_abs(dev)
            bad = sorted(c for c, v in dev.items() if abs(v) > limit)
            self.add(Check("channel_match", not bad, round(abs(e), 4), limit, "%",
                           "channels against their median at gain 24; worst channel %d (%+.3f %%)%s"
                           % (ch, e, "; out of limits: %s" % bad if bad else ""), bad))

    # ---- frequency response -----------------------------------------------------------------------------------
    def frequency_response(self) -> None:
        import numpy as np

        from ionm.board.tools import analysis, measure

        rate = int(self.lim["frequency_response_rate_hz"])
        freqs = [f for f in RESPONSE_HZ if f < rate / 2]
        gains_db = np.zeros((len(freqs), len(self.wired)))
        for k, f in enumerate(freqs):
            self.gen.sine(f, SIGNAL_VPP_UV * 1e-6)
            seconds = max(CAPTURE_S, 10.0 / f)  # at least ten cycles
            lv = measure.sine(self.s, rate_hz=rate, gain=24, seconds=seconds, freq_hz=f,
                              input_vpp_uv=SIGNAL_VPP_UV, cal=self.cal, channels=self.wired)
            gains_db[k] = 20.0 * np.log10(np.maximum(lv.amplitude_uv / lv.nominal_uv, 1e-6))
        self.data["frequency_response"] = {"rate_hz": rate, "freq_hz": freqs, "gain_db": gains_db.T.tolist(),
                                           "channels": self.wired}
        dead = [c for i, c in enumerate(self.wired) if gains_db[0, i] < 20.0 * math.log10(NO_SIGNAL)]
        corners = {c: analysis.upper_3db(freqs, gains_db[:, i].tolist()) for i, c in enumerate(self.wired)
                   if c not in dead}
        limit = float(self.lim["upper_3db_hz_min"])
        reached = {c: f for c, f in corners.items() if f is not None}
        worst = min(reached.values()) if reached else None
        bad = sorted(set(dead) | {c for c, f in reached.items() if f < limit})
        self.add(Check("upper_3db", not bad, round(worst, 1) if worst is not None else freqs[-1], limit, "Hz",
                       ("−3 dB at %.0f Hz (channel %d)" % (worst, min(reached, key=lambda c: reached[c]))
                        if worst is not None else
                        "no −3 dB point up to %.0f Hz, the highest frequency measured (%d SPS): the response is "
                        "flat to there" % (freqs[-1], rate))
                       + ("; no signal on channels %s" % dead if dead else ""), bad))
        f_lo, f_hi = self.lim["flat_band_hz"]
        band = [k for k, f in enumerate(freqs) if f_lo <= f <= f_hi]
        dev = np.abs(gains_db[band] - gains_db[band[0]]).max(axis=0)
        limit = self.lim["flatness_db"]
        bad = sorted(set(dead) | {c for i, c in enumerate(self.wired) if dev[i] > limit})
        live = [i for i, c in enumerate(self.wired) if c not in dead]
        worst_dev = float(dev[live].max()) if live else math.inf
        self.add(Check("passband_flatness", not bad, round(worst_dev, 4), limit, "dB",
                       "%.0f–%.0f Hz%s" % (f_lo, f_hi, "; out of limits: %s" % bad if bad else ""), bad))

    # ---- stimulus-locked timing --------------------------------------------------------------------------------
    def timing(self) -> None:
        import numpy as np

        rate = int(self.lim["frequency_response_rate_hz"])
        tol = int(self.lim["timing_tolerance_samples"])
        self.gen.triggered_burst("SQU", BURST_HZ, SIGNAL_VPP_UV * 1e-6, 1, BURST_DELAY_S)
        interval = int(self.defn["safety"]["tcmep_train_interval_ms_min"])
        program = [{"kind": "tcmep", "count": 1, "ipi_us": int(self.defn["safety"]["train_ipi_us_min"]),
                    "interval_ms": interval}]
        n = int(((TIMING_TRIALS - 1) * interval / 1000.0 + 0.05) * rate)
        rec = self.s.record({"rate_hz": rate, "gain": 24, "channels": self.wired, "leadoff": False,
                             "samples_per_frame": 50}, n, programs=program)
        uv = rec.uv(self.cal)
        expected = math.ceil(BURST_DELAY_S * rate - 1e-9)  # the first sample at or after the burst's edge
        step = SIGNAL_VPP_UV / 2.0
        errors: dict[int, list[int | None]] = {c: [] for c in self.wired}
        stims = [e["index"] - rec.first_index for e in rec.events if e.get("output") == -1]
        for s0 in stims:
            if s0 + expected + 8 > uv.shape[0]:
                continue
            base = uv[s0:s0 + expected // 2].mean(axis=0)  # before the burst: the stimulus itself is silent
            for i, ch in enumerate(self.wired):
                above = np.flatnonzero(uv[s0:s0 + expected + 8, i] - base[i] > step / 2)
                errors[ch].append(int(above[0]) - expected if above.size else None)
        trials = min(len(v) for v in errors.values()) if errors else 0
        bad = sorted(c for c, v in errors.items() if not v or any(e is None or abs(e) > tol for e in v))
        finite = [abs(e) for v in errors.values() for e in v if e is not None]
        worst = max(finite) if finite else None
        self.data["timing"] = {"rate_hz": rate, "expected_samples": expected, "errors_samples": errors}
        self.add(Check("timing", bool(trials) and not bad, worst, tol, "samples",
                       "%d trigger(s): burst onset %d samples (%.1f ms) after the stimulus index%s" % (
                           trials, expected, BURST_DELAY_S * 1000,
                           "; late, early or absent on channels %s" % bad if bad else ""), bad))


def _welch(x: Any, fs: float) -> dict[str, list[float]]:
    from scipy import signal

    f, pxx = signal.welch(x - x.mean(), fs=fs, nperseg=min(len(x), 1024))
    return {"freq_hz": f.tolist(), "uv_per_rthz": (pxx ** 0.5).tolist()}


# ---- report ---------------------------------------------------------------------------------------------------
def bench(port: str, generator: str, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the bench (only: some of GROUPS; a partial report says which, and passes on those alone)."""
    from ionm import board
    from ionm.board.tools import limits
    from ionm.board.tools.calibration import now_iso
    from ionm.board.tools.instrument import Generator
    from ionm.board.tools.session import ToolSession

    defn = board.load()
    lim, source = limits.bench_limits(defn)
    with Generator(generator) as gen, ToolSession(port) as session:
        unknown = sorted(set(only) - set(GROUPS))
        if unknown:
            raise ValueError("no group of checks called %s (groups: %s)" % (", ".join(unknown), ", ".join(GROUPS)))
        b = Bench(session, gen, lim, defn)
        checks = b.run(only)
        info, retries = session.info, session.retries
    return {"passed": all(c.passed for c in checks), "board_serial": info["board"]["serial"],
            "date": now_iso(), "board": info["board"], "firmware": info["firmware"],
            "calibration": b.cal.date, "generator": gen.idn, "limits_source": source,
            "capture_retries": retries, "groups": [g for g in GROUPS if not only or g in only],
            "partial": bool(only) and set(only) != set(GROUPS), "checks": [asdict(c) for c in checks], "data": b.data}


def summary(report: dict[str, Any]) -> str:
    lines = ["ionm bench: board %s, firmware %s, calibration %s" % (
        report["board_serial"], report["firmware"]["version"], report["calibration"] or "none"),
        "limits: %s" % report["limits_source"]]
    lines += ["capture taken again: %s" % r for r in report.get("capture_retries", [])] + [""]
    for c in report["checks"]:
        value = "-" if c["value"] is None else "%g" % c["value"]
        lines.append("%-4s %-20s %10s %-6s limit %-14s %s" % ("PASS" if c["passed"] else "FAIL", c["name"], value,
                                                             c["unit"], json.dumps(c["limit"]), c["detail"]))
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    partial = " (partial bench: only %s)" % ", ".join(report["groups"]) if report.get("partial") else ""
    lines += ["", ("PASSED" if report["passed"] else "FAILED: %s" % ", ".join(failed)) + partial]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = report["data"]
    plain = {k: v for k, v in report.items() if k != "data"}
    plain["measurements"] = {k: v for k, v in data.items() if k != "noise"}
    plain["measurements"]["noise"] = {k: v for k, v in data.get("noise", {}).items() if k != "psd"}
    (out / "report.json").write_text(json.dumps(plain, indent=1, default=str) + "\n")
    (out / "report.txt").write_text(summary(report))
    _plots(data, out)


def _plots(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr = data.get("frequency_response")
    if fr:
        fig, ax = plt.subplots(figsize=(8, 5))
        for ch, g in zip(fr["channels"], fr["gain_db"], strict=True):
            ax.semilogx(fr["freq_hz"], g, marker=".", lw=0.8, label="ch %d" % ch)
        import numpy as np

        f = np.geomspace(fr["freq_hz"][0], fr["rate_hz"] / 2, 200)
        ax.semilogx(f, 60.0 * np.log10(np.abs(np.sinc(f / fr["rate_hz"]))), color="0.5", ls=":", lw=1.2,
                    label="ADS1299 sinc³ (datasheet)")
        ax.axhline(-3.0, color="k", ls="--", lw=0.8)
        ax.set(xlabel="frequency (Hz)", ylabel="gain re. applied (dB)",
               title="Frequency response, gain 24, %d SPS" % fr["rate_hz"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=4)
        fig.tight_layout()
        fig.savefig(out / "frequency_response.png", dpi=100)
        plt.close(fig)
    noise = data.get("noise")
    if noise:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for ch, p in sorted(noise["psd"].items()):
            ax.loglog(p["freq_hz"][1:], p["uv_per_rthz"][1:], lw=0.7,
                      label="ch %d: %.3f µVrms" % (ch, noise["uvrms"][ch]))
        ax.set(xlabel="frequency (Hz)", ylabel="µV/√Hz", title="Input-referred noise, inputs shorted, gain 24")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        avg = data.get("averaging")
        if avg:
            ns = sorted(avg["rms_uv_by_n"])
            rms = [avg["rms_uv_by_n"][n] for n in ns]
            ax2.loglog(ns, rms, "o-", label="measured (slope %.3f)" % avg["slope"])
            ax2.loglog(ns, [rms[0] / math.sqrt(n) for n in ns], "k--", lw=0.8, label="1/√N")
            ax2.set(xlabel="sweeps averaged N", ylabel="rms of the average (µV)", title="Averaging")
            ax2.grid(True, which="both", alpha=0.3)
            ax2.legend()
        fig.tight_layout()
        fig.savefig(out / "noise.png", dpi=100)
        plt.close(fig)
