"""Writes synthetic_mep_trials.npz: seeded, synthetic single-trial MEPs with known onset and p2p.

Not recorded data (see README.md). Run from the repository root:
    .venv/bin/python tests/data/mep/make_synthetic_mep.py
The output is byte-for-byte the same for the same numpy version (seeded generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import signal

FS = 3000.0  # Hz, as the recordings the issue was reported on
PRE_MS, POST_MS = 40.0, 100.0
BLANK_MS = 4.0  # the project's MEP blanking after the train's last pulse
UV_PER_COUNT = 0.1  # stored as int16 counts of 0.1 µV

# muscle: (onset range ms, median p2p µV, trial-to-trial CV); onsets inside the typical windows of
# ionm.pipeline.peaks.mep_onset_window_ms, amplitudes and CVs from IONM-REFERENCE.md (APB ~1.2 mV CV 48 %,
# AH ~1 mV CV 35 %, TA ~0.5 mV CV 27 %); forearm like the hand.
MUSCLES = {
    "L APB": ((20.0, 26.0), 1200.0, 0.48),
    "R ECR": ((14.5, 20.0), 900.0, 0.40),
    "L tibialis anterior": ((27.0, 38.0), 500.0, 0.27),
    "R abductor hallucis": ((38.0, 50.0), 1000.0, 0.35),
}
TRIALS_PER_MUSCLE = 60


def phase(t_ms: np.ndarray, start_ms: float, width_ms: float) -> np.ndarray:
    """A causal phase: zero before start_ms, (u/w)^2 exp(2 - 2u/w) after, peak 1 at u = w."""
    u = np.clip(t_ms - start_ms, 0.0, None) / width_ms
    return u**2 * np.exp(2.0 - 2.0 * u)


def response(rng: np.random.Generator, t_ms: np.ndarray, onset_ms: float, p2p_uv: float,
             small_phase: int | None) -> tuple[np.ndarray, float]:
    """A polyphasic MEP of 3-6 alternating phases starting exactly at onset_ms, scaled to p2p_uv, with phase
    small_phase (if any) at a third of its size; returns it and the time by which it has died away (ms)."""
    n_phases = int(rng.integers(3, 7))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    out = np.zeros_like(t_ms)
    start = onset_ms
    end = onset_ms
    for k in range(n_phases):
        width = rng.uniform(0.7, 1.8)
        size = rng.uniform(0.5, 1.0) * 0.85**k
        if k == small_phase:
            size *= 0.35  # a phase well under the others (under 50 µV on a small MEP)
        out += sign * size * phase(t_ms, start, width)
        end = start + 6.0 * width
        sign = -sign
        start += width * rng.uniform(0.9, 1.6)  # the next phase starts as this one peaks: no gap
    return out * p2p_uv / float(np.ptp(out)), end


def emg_noise(rng: np.random.Generator, n: int, sd_uv: float) -> np.ndarray:
    """Background muscle noise, 20-500 Hz, plus slow wander (2-8 Hz, up to 1 SD)."""
    sos = signal.butter(2, [20.0, 500.0], btype="bandpass", fs=FS, output="sos")
    x = signal.sosfiltfilt(sos, rng.standard_normal(n + 600))[300:-300]
    x *= sd_uv / x.std()
    t_s = np.arange(n) / FS
    wander = rng.uniform(0.0, 1.0) * sd_uv * np.sin(2 * np.pi * rng.uniform(2.0, 8.0) * t_s + rng.uniform(0, 6.3))
    return x + wander


def build(seed: int = 20240611) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pre = int(round(PRE_MS * 1e-3 * FS))
    n = pre + int(round(POST_MS * 1e-3 * FS)) + 1
    t_ms = (np.arange(n) - pre) / FS * 1e3
    rows, names, onsets, p2ps, kinds = [], [], [], [], []
    for name, ((lo, hi), median_uv, cv) in MUSCLES.items():
        sigma_log = np.sqrt(np.log(1 + cv**2))
        for _ in range(TRIALS_PER_MUSCLE):
            draw = rng.random()
            kind = "none" if draw < 0.12 else "small" if draw < 0.30 else "large"
            onset = rng.uniform(lo, hi)
            mains_uv = rng.uniform(0.0, 15.0)
            if kind == "small":
                # 55-150 µV with one later phase a third of the others (under 50 µV), readable because the
                # background is quiet (1.5-3 µV, mains up to 3 µV): a small MEP is only told from noise when
                # it stands well clear of it, and its first phase must reach 6 SD to be seen to start.
                amp = rng.uniform(55.0, 150.0)
                noise_sd = rng.uniform(1.5, 3.0)
                mains_uv = rng.uniform(0.0, 3.0)
                small_phase: int | None = int(rng.integers(1, 3))
            else:
                amp = median_uv * float(np.exp(rng.normal(-0.5 * sigma_log**2, sigma_log)))
                noise_sd = rng.uniform(3.0, 10.0) if amp < 400.0 else rng.uniform(5.0, 20.0)
                # now and then a first phase a third of the others (still >= 6 noise SD on these sizes)
                small_phase = 0 if rng.random() < 0.15 else None
            wave, end = response(rng, t_ms, onset, amp, small_phase)
            if kind == "none":
                wave = np.zeros_like(t_ms)
            x = wave + emg_noise(rng, n, noise_sd)
            mains_hz = 50.0 if rng.random() < 0.5 else 60.0
            x += mains_uv * np.sin(2 * np.pi * mains_hz * t_ms * 1e-3 + rng.uniform(0, 6.3))
            if rng.random() < 0.4:  # the train's artefact tail, just after the blanking
                after = np.clip(t_ms - BLANK_MS, 0.0, None)
                tau = rng.uniform(0.3, 2.5)
                x += rng.choice([-1.0, 1.0]) * rng.uniform(100.0, 2000.0) * np.exp(-after / tau) * (t_ms >= BLANK_MS)
            blank = (t_ms >= -0.5) & (t_ms < BLANK_MS)  # blanked as conditioning does: a straight line
            i0, i1 = np.flatnonzero(blank)[[0, -1]]
            x[blank] = np.linspace(x[i0 - 1], x[i1 + 1], blank.sum() + 2)[1:-1]
            x -= x[t_ms < -0.5].mean()
            if kind == "none":
                onsets.append(np.nan)
                p2ps.append(np.nan)
            else:
                onsets.append(onset)
                span = (t_ms >= onset) & (t_ms <= end)
                p2ps.append(float(np.ptp(x[span])))  # as a reader measures it: the trace over the response
            rows.append(np.round(x / UV_PER_COUNT).astype(np.int16))
            names.append(name)
            kinds.append(kind)
    return {"sweeps_counts": np.array(rows), "uv_per_count": np.float64(UV_PER_COUNT), "fs": np.float64(FS),
            "pre_samples": np.int64(pre), "blank_end_samples": np.int64(pre + int(round(BLANK_MS * 1e-3 * FS))),
            "channel_names": np.array(names), "kind": np.array(kinds), "onset_ms": np.array(onsets),
            "p2p_uv": np.array(p2ps)}


if __name__ == "__main__":
    out = Path(__file__).with_name("synthetic_mep_trials.npz")
    np.savez_compressed(out, **build())
    print(out, out.stat().st_size, "bytes")
