"""Fast sweep recordings for evaluation tests and benchmarks (no firmware, no ADC model).

record_sweeps renders, with the same VirtualPatient as the hardware model, only the windows around each
stimulus, and returns them in the interchange format of `ionm evaluate`, plus the scripted truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ionm import board
from ionm_hw.patient import TRIGGER_OUTPUT, Pulse, VirtualPatient
from ionm_hw.physiology import keyed

DEFAULT_OUTPUT = {"ssep-upper": 0, "ssep-lower": 2, "mep": TRIGGER_OUTPUT}
AMPLIFIER_NOISE_UV = 0.2  # rms per sample: a stand-in for the ADC model's input noise


def record_sweeps(scenario: dict[str, Any], seed: int, *, modality: str, duration_s: float, fs_hz: float = 8000.0,
                  rate_hz: float | None = None, pre_ms: float, post_ms: float, output: int | None = None,
                  current_ma: float | None = None, channels: Sequence[int] | None = None,
                  add_amplifier_noise: bool = True, start_s: float = 0.0) -> dict[str, Any]:  # fmt: skip
    """Sweeps of one stimulated output (SSEP) or of TcMEP trains, from start_s for duration_s.

    rate_hz: stimulus (train) rate; default the scenario's SSEP rate, or one TcMEP train per the
    scenario's tcmep.interval_s. output: default left median (ssep-upper), left tibial (ssep-lower).
    current_ma: default the scenario's plan for that output. channels: default those of the montage
    serving the modality. For MEP, sweeps are aligned to the last pulse of each train. The first stimulus
    (last pulse) falls pre_ms (at least a train's length) after start_s, then one every 1/rate_hz s
    (rounded to samples), as long as its window ends within start_s + duration_s.

    Returns fs (Hz), pre_samples, sweeps (float32 µV [n_sweeps, n_channels, n_samples], raw),
    stim_time_s (float64, s), modality, baseline_end_s, channel_names, and truth: {"names": monitored
    responses, "amplitude"/"latency": scripted factors [n_sweeps, n_names], "channel": index into the
    returned channels where each response is largest (-1: not recorded)}; for MEP also per train and
    muscle, on the muscle's own channel without noise: "onset_ms" (after the last pulse, where the response
    first reaches 2 % of its peak), "p2p_uv", "area_uv_ms" (of the rectified response).
    """
    if modality not in DEFAULT_OUTPUT:
        raise ValueError(f"modality must be one of {', '.join(DEFAULT_OUTPUT)}")
    patient = VirtualPatient(scenario, seed, fs_hz)
    patient.record_trials = modality == "mep"
    spec = patient.scenario
    out_no = DEFAULT_OUTPUT[modality] if output is None else int(output)
    chans = [c.index for c in patient.channels if c.modality == modality] if channels is None else list(channels)
    pre = int(round(pre_ms * fs_hz / 1000))
    post = int(round(post_ms * fs_hz / 1000))

    if modality == "mep":
        if out_no != TRIGGER_OUTPUT:
            raise ValueError("mep: TcMEP trains go out on the trigger (output None or TRIGGER_OUTPUT)")
        tc = spec["stimulation"]["tcmep"]
        rate = rate_hz or 1.0 / float(tc["interval_s"])
        ipi = int(round(float(tc["ipi_ms"]) * fs_hz / 1000))
        offsets = [-(int(tc["train_pulses"]) - 1 - j) * ipi for j in range(int(tc["train_pulses"]))]
        width, current, biphasic = int(board.load()["trigger"]["out_pulse_us"]), 0.0, False
        names = patient.responses_of(TRIGGER_OUTPUT)
    else:
        if out_no not in (0, 1, 2, 3):
            raise ValueError(f"{modality}: output must be a stimulator output 0..3")
        plan = spec["stimulation"]["ssep"]
        site = plan["outputs"][str(out_no)]
        rate = rate_hz or float(plan["rate_hz"])
        offsets = [0]
        width = int(site["width_us"])
        current = float(site["current_ma"]) if current_ma is None else float(current_ma)
        biphasic = site.get("waveform", "monophasic") == "biphasic"
        names = [n for n in patient.responses_of(out_no) if not n.startswith("mwave")]

    # Stimulus (last pulse of a train) indices: the first window starts at start_s.
    lead = max(pre, -offsets[0])
    first = int(round(start_s * fs_hz)) + lead
    end_limit = int(round((start_s + duration_s) * fs_hz))
    period = fs_hz / rate
    stims = first + np.round(np.arange(int((end_limit - post - first) / period) + 1) * period).astype(np.int64)
    stims = stims[stims + post <= end_limit]

    # Render the windows (merged where they touch), with every pulse that falls inside.
    sweeps = np.zeros((len(stims), len(chans), pre + post), dtype=np.float32)
    spans: list[list[int]] = []  # [start, end, first sweep, last sweep]
    for k, s in enumerate(stims):
        lo, hi = int(s) - lead, int(s) + post
        if spans and lo <= spans[-1][1]:
            spans[-1][1], spans[-1][3] = hi, k
        else:
            spans.append([lo, hi, k, k])
    for lo, hi, k0, k1 in spans:
        pulses = [Pulse(int(stims[k]) + o, out_no, current, width, biphasic)
                  for k in range(k0, k1 + 1) for o in offsets]  # fmt: skip
        x = patient.render(lo, hi - lo, pulses, chans) * 1e6  # µV
        for k in range(k0, k1 + 1):
            a = int(stims[k]) - pre - lo
            sweeps[k] = x[a : a + pre + post].T
    if add_amplifier_noise:
        g = keyed.rng(seed, keyed.AMPLIFIER, int(round(start_s * fs_hz)))
        sweeps += (AMPLIFIER_NOISE_UV * g.standard_normal(sweeps.shape)).astype(np.float32)

    stim_time_s = stims / fs_hz
    amp = np.zeros((len(stims), len(names)))
    lat = np.zeros((len(stims), len(names)))
    for j, n in enumerate(names):
        amp[:, j], lat[:, j] = patient.script.factors(n, stim_time_s)
    best = [patient.best_channel(n) for n in names]
    truth: dict[str, Any] = {
        "names": names,
        "amplitude": amp,
        "latency": lat,
        "channel": [chans.index(b) if b in chans else -1 for b in best],
    }
    if modality == "mep":  # per-train truth (NaN where a train's response fell outside the recording)
        for j, key in enumerate(("onset_ms", "p2p_uv", "area_uv_ms")):
            truth[key] = np.array([[patient.trials.get(int(s), {}).get(n, (np.nan,) * 3)[j] for n in names]
                                   for s in stims])  # fmt: skip
    return {
        "fs": float(fs_hz),
        "pre_samples": pre,
        "sweeps": sweeps,
        "stim_time_s": stim_time_s.astype(np.float64),
        "modality": modality,
        "baseline_end_s": float(spec["baseline_end_s"]),
        "channel_names": [patient.channel_names[c] for c in chans],
        "truth": truth,
    }
