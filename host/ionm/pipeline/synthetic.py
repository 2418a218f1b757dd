"""Synthetic sweeps with known truth, for the pipeline's tests and as the benchmark's fallback source.

An SSEP is a sum of Gaussian-shaped components whose latencies scale with the latency ratio s (a stretch
about the stimulus) and whose amplitudes scale with the amplitude ratio a; noise is coloured (pink plus
white, band-limited) and scaled so that the per-sweep SNR in the 30–1000 Hz band is snr_db; mains (50 Hz
and harmonics, locked to wall-clock time), a DC offset and a stimulus artefact are added. The result is the
interchange dict of ionm.pipeline.sweepfile plus 'truth'.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import signal

# (latency ms, amplitude µV, width ms): negative = N, positive = P. Scalp figures: IONM-REFERENCE.
SSEP_UPPER_COMPONENTS = ((13.0, -0.6, 1.2), (20.0, -1.2, 1.6), (25.0, 1.4, 2.4), (33.0, -0.5, 3.5))
SSEP_LOWER_COMPONENTS = ((31.0, -0.3, 2.0), (38.0, 1.0, 2.5), (45.0, -0.9, 3.5), (55.0, 0.4, 5.0))


def ssep_waveform(t_ms: np.ndarray, components: tuple[tuple[float, float, float], ...], amplitude: float = 1.0,
                  latency: float = 1.0) -> np.ndarray:
    out = np.zeros_like(t_ms, dtype=float)
    for lat, amp, width in components:
        out += amp * np.exp(-0.5 * ((t_ms - lat * latency) / (width * latency)) ** 2)
    return amplitude * out


def mep_waveform(t_ms: np.ndarray, onset_ms: float, amplitude_uv: float, shape_seed: int = 0) -> np.ndarray:
    """A polyphasic muscle response, peak to peak amplitude_uv: 4 alternating gaussian phases, the first
    peaking 2 sigma after onset_ms. The response is zero before onset_ms: the first phase rises from it as a
    quarter sine to its peak and the later ones are held to the same ramp, so it leaves the baseline exactly at
    onset_ms, steeply, as a motor unit volley does and as a reader marks the onset (a gaussian's tail would leave
    it wherever the noise lets one see it: up to a sigma earlier on a large response)."""
    rng = np.random.default_rng(shape_seed)
    out = np.zeros_like(t_ms, dtype=float)
    t, sign = onset_ms, 1.0 if rng.random() < 0.5 else -1.0
    ramp = np.ones_like(out)
    for k in range(4):
        sigma = rng.uniform(0.6, 1.5)
        a = sign * rng.uniform(0.5, 1.0) * 0.85**k
        if k == 0:
            t += 2.0 * sigma
            ramp = np.sin(0.5 * np.pi * np.clip((t_ms - onset_ms) / (2.0 * sigma), 0.0, 1.0))
            out += a * np.where(t_ms < t, ramp, np.exp(-0.5 * ((t_ms - t) / sigma) ** 2))
        else:
            out += ramp * a * np.exp(-0.5 * ((t_ms - t) / sigma) ** 2)
        sign = -sign
        t += rng.uniform(1.8, 3.5)
    return out * amplitude_uv / max(float(np.ptp(out)), 1e-12)


def coloured_noise(rng: np.random.Generator, shape: tuple[int, ...], fs: float) -> np.ndarray:
    """Pink (1/f power) plus equal-power white noise, low-passed at 0.4 fs; unit variance overall."""
    n = shape[-1]
    white = rng.standard_normal(shape)
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    f = np.fft.rfftfreq(n, 1 / fs)
    spec /= np.sqrt(np.maximum(f, fs / n))
    pink = np.fft.irfft(spec, n, axis=-1)
    pink /= pink.std() + 1e-30
    out = pink + white
    sos = signal.butter(4, 0.4 * fs, fs=fs, output="sos")
    out = signal.sosfilt(sos, out, axis=-1)
    return np.asarray(out / out.std())


def make_ssep(n_sweeps: int, *, seed: int, modality: str = "ssep-upper", fs: float = 8000.0, rate_hz: float = 4.7,
              pre_ms: float = 5.0, post_ms: float | None = None, snr_db: float | np.ndarray = -10.0,
              amplitude: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None,
              latency: Callable[[np.ndarray], np.ndarray] | np.ndarray | None = None,
              n_channels: int = 1, mains_uv: float = 5.0, mains_hz: float = 50.0, artefact_uv: float = 300.0,
              offset_uv: float = 500.0, baseline_end_s: float = 60.0, channel_names: list[str] | None = None,
              jitter_sd: float = 0.0) -> dict:
    """Sweeps [n_sweeps, n_channels, n_samples] (float32, µV) with scripted truth.

    amplitude/latency: arrays [n_sweeps] or [n_sweeps, n_channels], or callables of the stimulus times (s)
    returning those; default 1 (unchanged). snr_db: per-sweep SNR in the SSEP band (scalar or per channel).
    jitter_sd: trial-to-trial amplitude variability (fraction)."""
    rng = np.random.default_rng(seed)
    comps = SSEP_UPPER_COMPONENTS if modality == "ssep-upper" else SSEP_LOWER_COMPONENTS
    post = post_ms if post_ms is not None else (50.0 if modality == "ssep-upper" else 90.0)
    pre = int(round(pre_ms * 1e-3 * fs))
    n = pre + int(round(post * 1e-3 * fs))
    t_ms = (np.arange(n) - pre) / fs * 1e3
    stim = np.arange(n_sweeps) / rate_hz + rng.uniform(0, 1.0 / rate_hz)

    def script(v: Callable[[np.ndarray], np.ndarray] | np.ndarray | None) -> np.ndarray:
        out = np.ones(n_sweeps) if v is None else (v(stim) if callable(v) else np.asarray(v, dtype=float))
        out = np.asarray(out, dtype=float)
        return np.broadcast_to(out[:, None] if out.ndim == 1 else out, (n_sweeps, n_channels)).copy()

    amp, lat = script(amplitude), script(latency)
    if jitter_sd:
        amp_trial = amp * (1 + jitter_sd * rng.standard_normal(amp.shape))
    else:
        amp_trial = amp
    base = ssep_waveform(t_ms, comps)
    post_mask = t_ms > 0
    sig_power = float(np.mean(base[post_mask] ** 2))
    snr = np.broadcast_to(np.asarray(snr_db, dtype=float), (n_channels,))
    noise_sd = np.sqrt(sig_power / 10 ** (snr / 10))
    # Scale the noise by its power inside the analysis band, where the SNR is defined.
    noise = coloured_noise(rng, (n_sweeps, n_channels, n), fs)
    sos = signal.butter(2, [30.0, min(1000.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    in_band = signal.sosfiltfilt(sos, noise[: min(50, n_sweeps)], axis=-1).std()
    noise *= noise_sd[None, :, None] / in_band
    sweeps = np.empty((n_sweeps, n_channels, n))
    # Distinct latency/amplitude values are few in scripted scenarios: cache the waveforms.
    for i in range(n_sweeps):
        for c in range(n_channels):
            sweeps[i, c] = ssep_waveform(t_ms, comps, amp_trial[i, c], lat[i, c])
    sweeps += noise
    t_abs = stim[:, None] + (np.arange(n) - pre)[None, :] / fs
    mains = sum(mains_uv / k * np.sin(2 * np.pi * mains_hz * k * t_abs + k) for k in (1, 2, 3))
    sweeps += np.asarray(mains)[:, None, :]
    art = artefact_uv * np.exp(-np.clip(t_ms, 0, None) / 0.3) * (t_ms >= 0)
    sweeps += art
    sweeps += offset_uv
    names = channel_names or ["ch%d" % c for c in range(n_channels)]
    return {"fs": np.float64(fs), "pre_samples": np.int64(pre), "sweeps": sweeps.astype(np.float32),
            "stim_time_s": stim, "modality": np.array(modality), "baseline_end_s": np.float64(baseline_end_s),
            "channel_names": np.array(names),
            "truth": {"amplitude": amp, "latency": lat, "components": comps, "t_ms": t_ms,
                      "waveform": base}}


def make_mep(n_trials: int, *, seed: int, fs: float = 8000.0, interval_s: float = 10.0, pre_ms: float = 20.0,
             post_ms: float = 90.0, onset_ms: float | np.ndarray = 25.0, amplitude_uv: float | np.ndarray = 500.0,
             noise_uv: float = 5.0, n_channels: int = 1, baseline_end_s: float = 60.0,
             channel_names: list[str] | None = None, artefact_uv: float = 2000.0) -> dict:
    """MEP trials with known onset (ms), peak-to-peak (µV) and area (µV·ms), per trial and channel.

    onset_ms, amplitude_uv: scalars or arrays broadcastable to [n_trials, n_channels] (per channel: [[...]])."""
    rng = np.random.default_rng(seed)
    pre = int(round(pre_ms * 1e-3 * fs))
    n = pre + int(round(post_ms * 1e-3 * fs))
    t_ms = (np.arange(n) - pre) / fs * 1e3
    onset = np.broadcast_to(np.asarray(onset_ms, dtype=float), (n_trials, n_channels))
    ampl = np.broadcast_to(np.asarray(amplitude_uv, dtype=float), (n_trials, n_channels))
    sweeps = np.zeros((n_trials, n_channels, n))
    area = np.zeros((n_trials, n_channels))
    p2p = np.zeros((n_trials, n_channels))
    for i in range(n_trials):
        for c in range(n_channels):
            w = mep_waveform(t_ms, onset[i, c], ampl[i, c], shape_seed=c)
            sweeps[i, c] = w
            area[i, c] = np.sum(np.abs(w)) / fs * 1e3
            p2p[i, c] = np.ptp(w)
    # Muscle background: surface EMG, 20-500 Hz (no 1/f drift on bipolar muscle derivations).
    emg = rng.standard_normal(sweeps.shape)
    emg = signal.sosfiltfilt(signal.butter(2, [20.0, 500.0], btype="bandpass", fs=fs, output="sos"), emg, axis=-1)
    sweeps += noise_uv * emg / emg.std()
    # The train artefact: five pulses 3 ms apart, the last at the stimulus time (sweeps are aligned to the
    # train's last pulse), each decaying in 0.3 ms.
    for k in range(5):
        tk = t_ms + 3.0 * k
        sweeps += artefact_uv * np.exp(-np.clip(tk, 0, None) / 0.3) * (tk >= 0)
    stim = np.arange(n_trials) * interval_s + 1.0
    names = channel_names or ["m%d" % c for c in range(n_channels)]
    return {"fs": np.float64(fs), "pre_samples": np.int64(pre), "sweeps": sweeps.astype(np.float32),
            "stim_time_s": stim, "modality": np.array("mep"), "baseline_end_s": np.float64(baseline_end_s),
            "channel_names": np.array(names),
            "truth": {"onset_ms": np.array(onset), "p2p_uv": p2p, "area_uv_ms": area}}


# -- multi-derivation recordings of one stimulated limb ---------------------------------------------------------
# Per derivation: its label (site and side inferred by ionm.pipeline.modalities as for a real montage), the
# components it records (latency ms, amplitude µV, gaussian SD ms: negative = N) and its background noise in the
# 30-1000 Hz band (µV RMS per sweep). Figures as in the virtual patient (hardware/ionm_hw/physiology): the nerve
# responses are sharp, their negative peak 0.8 ms wide at half height (SD 0.34 ms), between two small positive
# phases; the cervical N13 is ~2 ms wide and the cortical components 3-7 ms. The ipsilateral scalp channel
# carries a tenth of the cortical response, the other side's nerve channel none.
_NERVE_SD_MS = 0.8 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # 0.34 ms: 0.8 ms full width at half maximum
MONTAGE_UPPER: tuple[tuple[str, tuple[tuple[float, float, float], ...], float], ...] = (
    ("C4'-Fz (L median cortical N20)", ((19.5, -1.6, 1.3), (24.5, 1.9, 2.2), (32.0, -0.8, 3.5)), 2.5),
    ("C3'-Fz (R median cortical N20)", ((19.5, -0.16, 1.3), (24.5, 0.19, 2.2)), 2.5),
    ("Cv5-Fz (cervical N13)", ((11.3, 0.3, 0.6), (13.3, -1.5, 0.9), (15.8, 0.5, 1.3)), 2.0),
    ("EpL-Fz (L Erb's point N9)", ((8.8, 0.75, 0.25), (9.7, -3.0, _NERVE_SD_MS), (11.0, 1.35, 0.6)), 1.5),
    ("EpR-Fz (R Erb's point N9)", (), 1.5),
)
MONTAGE_LOWER: tuple[tuple[str, tuple[tuple[float, float, float], ...], float], ...] = (
    ("CPz-CP4 (L tibial cortical P37)", ((38.5, 1.1, 2.0), (46.0, -1.2, 2.8), (56.0, 0.55, 4.0)), 2.5),
    ("CPz-CP3 (R tibial cortical P37)", ((38.5, 0.33, 2.0), (46.0, -0.36, 2.8)), 2.5),
    ("PFLp-PFLd (L popliteal fossa)", ((7.8, 0.4, 0.25), (8.7, -2.0, _NERVE_SD_MS), (10.0, 0.8, 0.5)), 1.0),
    ("PFRp-PFRd (R popliteal fossa)", (), 1.0),
    ("Cz'-Fpz (tibial cortical P37, both sides)", ((38.5, 0.5, 2.0), (46.0, -0.55, 2.8)), 3.0),
)
_CHUNK = 1000  # sweeps rendered at a time (the random draws are the same whatever the recording's length)


def ssep_montage_chunks(n_sweeps: int, *, seed: int, modality: str = "ssep-upper", fs: float = 8000.0,
                        rate_hz: float = 4.7, pre_ms: float = 5.0,
                        amplitude: Callable[[np.ndarray], np.ndarray] | None = None,
                        latency: Callable[[np.ndarray], np.ndarray] | None = None,
                        latency_jitter_ms: float = 0.2, latency_wander_ms: float = 0.2,
                        wander: Callable[[np.ndarray], np.ndarray] | None = None, amplitude_cv: float = 0.08,
                        mains_uv: float = 20.0, mains_hz: float = 50.0,
                        drift_uv: float = 100.0, noise_scale: float = 1.0):
    """Sweeps of one stimulated limb's montage (MONTAGE_UPPER / MONTAGE_LOWER), in chunks of up to _CHUNK sweeps,
    each a dict {"stim_time_s" [k], "sweeps" float32 µV [k, n_channels, n_samples], "amplitude", "latency" [k,
    n_channels] (the scripted truth), "shift_ms" [k] (the jitter and wander, not truth)}; hours of recording never
    sit in memory at once.

    amplitude, latency: callables of the stimulus times (s) returning the truth [k] or [k, n_channels] (default
    1). Latency is a stretch about the stimulus, as in make_ssep. On top of the truth, what a stable patient
    adds without any change: a latency shift of every component, the same on every derivation of the volley,
    made of trial-to-trial jitter (SD latency_jitter_ms) and a slow wander (three sinusoids of periods 1-15 min,
    SD latency_wander_ms in total, so peaks of ~2.5 SD; or wander(stimulus times) in ms); a trial-to-trial
    amplitude variation (lognormal, amplitude_cv); mains locked to wall-clock time at mains_hz with its 2nd and
    3rd harmonics, its frequency
    drifting by ±3 mHz, a per-derivation pick-up of mains_uv µV times a lognormal factor; a baseline drift of
    drift_uv µV made of slow sinusoids (0.05-2 Hz) of absolute time; a 500 µV electrode offset and a
    stimulus artefact."""
    montage = MONTAGE_UPPER if modality == "ssep-upper" else MONTAGE_LOWER
    rng = np.random.default_rng(seed)
    n_ch = len(montage)
    pre = int(round(pre_ms * 1e-3 * fs))
    n = pre + int(round((50.0 if modality == "ssep-upper" else 90.0) * 1e-3 * fs))
    t_ms = (np.arange(n) - pre) / fs * 1e3
    first_stim = rng.uniform(0, 1.0 / rate_hz)
    wander_hz = 1.0 / rng.uniform(60.0, 900.0, 3)
    wander_phase = rng.uniform(0, 2 * np.pi, 3)
    mains_gain = mains_uv * np.exp(0.5 * rng.standard_normal(n_ch))
    mains_phase = rng.uniform(0, 2 * np.pi, (n_ch, 3))
    drift_hz = rng.uniform(0.05, 2.0, (n_ch, 4))
    drift_phase = rng.uniform(0, 2 * np.pi, (n_ch, 4))
    noise_uv = np.array([m[2] for m in montage]) * noise_scale
    sos = signal.butter(2, [30.0, min(1000.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    in_band = float(signal.sosfiltfilt(sos, coloured_noise(rng, (50, n), fs), axis=-1).std())
    art = 300.0 * np.exp(-np.clip(t_ms, 0, None) / 0.5) * (t_ms >= 0)
    for start in range(0, n_sweeps, _CHUNK):
        k = min(_CHUNK, n_sweeps - start)
        stim = first_stim + np.arange(start, start + k) / rate_hz

        amp, lat = _scripted(amplitude, stim, n_ch), _scripted(latency, stim, n_ch)
        if wander is None:
            slow = latency_wander_ms * np.sqrt(2.0 / 3.0) * np.sin(2 * np.pi * np.outer(stim, wander_hz)
                                                                    + wander_phase).sum(axis=1)
        else:
            slow = np.asarray(wander(stim), dtype=float)
        shift = slow + latency_jitter_ms * rng.standard_normal(k)
        trial_amp = np.exp(amplitude_cv * rng.standard_normal(k) - 0.5 * amplitude_cv**2)
        sweeps = coloured_noise(rng, (k, n_ch, n), fs) * (noise_uv / in_band)[None, :, None]
        tt = t_ms[None, :] - shift[:, None]
        for c, (_, comps, _) in enumerate(montage):
            a = (amp[:, c] * trial_amp)[:, None]
            s = lat[:, c][:, None]
            for lat_ms, amp_uv, sd_ms in comps:
                sweeps[:, c] += a * amp_uv * np.exp(-0.5 * ((tt - lat_ms * s) / (sd_ms * s)) ** 2)
        t_abs = stim[:, None] + (np.arange(n) - pre)[None, :] / fs
        # Mains phase in cycles: the nominal frequency plus a drift of 3 mHz amplitude over a 97 s period.
        cycles = mains_hz * t_abs + 0.003 * 97.0 / (2 * np.pi) * (1.0 - np.cos(2 * np.pi * t_abs / 97.0))
        for c in range(n_ch):
            for h, rel in ((1, 1.0), (2, 0.1), (3, 0.3)):
                sweeps[:, c] += mains_gain[c] * rel * np.sin(2 * np.pi * h * cycles + mains_phase[c, h - 1])
            sweeps[:, c] += 0.5 * drift_uv * np.sin(2 * np.pi * t_abs[..., None] * drift_hz[c]
                                                     + drift_phase[c]).sum(axis=-1)
        sweeps += art + 500.0
        yield {"stim_time_s": stim, "sweeps": sweeps.astype(np.float32), "amplitude": amp, "latency": lat,
               "shift_ms": shift}


def _scripted(v: Callable[[np.ndarray], np.ndarray] | None, stim: np.ndarray, n_ch: int) -> np.ndarray:
    """A scripted truth at these stimulus times as [k, n_ch] (1 when not scripted)."""
    out = np.ones(len(stim)) if v is None else np.asarray(v(stim), dtype=float)
    return np.broadcast_to(out[:, None] if out.ndim == 1 else out, (len(stim), n_ch)).copy()


def ssep_montage_header(modality: str = "ssep-upper", fs: float = 8000.0, pre_ms: float = 5.0,
                        baseline_end_s: float = 240.0) -> dict:
    """The interchange keys of a ssep_montage_chunks recording other than its sweeps and stimulus times."""
    montage = MONTAGE_UPPER if modality == "ssep-upper" else MONTAGE_LOWER
    pre = int(round(pre_ms * 1e-3 * fs))
    n = pre + int(round((50.0 if modality == "ssep-upper" else 90.0) * 1e-3 * fs))
    return {"fs": np.float64(fs), "pre_samples": np.int64(pre), "n_samples": n, "modality": np.array(modality),
            "baseline_end_s": np.float64(baseline_end_s), "channel_names": np.array([m[0] for m in montage])}
