"""A channel on the other side of a one-sided stimulus monitors nothing of it (issue 16, live-case bench: the right
Erb's point channel of the left median stream alerted on a latency 'change' the patient never had).

Whatever such a channel picks up time-locked to the stimulus (another program's response in the window, artefact)
is not this stimulus's response; the console already hides it. The evaluator, live and offline alike, must not
track it, and so never alert on it, while the channels that do monitor the stimulus are judged as before.
"""

from __future__ import annotations

import numpy as np
import pytest

from ionm.pipeline import modalities, sweepfile
from ionm.pipeline.evaluator import Evaluator, EvaluatorConfig
from ionm.pipeline.offline import evaluate
from ionm.pipeline.synthetic import ssep_montage_chunks, ssep_montage_header

BASELINE_END_S = 120.0
ONSET_S = 180.0
FOREIGN_MS, FOREIGN_UV = 30.0, 3.0  # a sharp time-locked deflection on the right Erb's point, not of this stimulus


def _recording(seed: int = 3) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    h = ssep_montage_header("ssep-upper", baseline_end_s=BASELINE_END_S)
    names = list(h["channel_names"])
    right = names.index("EpR-Fz (R Erb's point N9)")
    fs, pre = float(h["fs"]), int(h["pre_samples"])
    t_ms = (np.arange(h["n_samples"]) - pre) / fs * 1e3
    bump = FOREIGN_UV * np.exp(-0.5 * ((t_ms - FOREIGN_MS) / 0.5) ** 2)
    ts, xs = [], []
    for chunk in ssep_montage_chunks(int((ONSET_S + 60.0) * 4.7), seed=seed, modality="ssep-upper"):
        x = chunk["sweeps"].copy()
        on = chunk["stim_time_s"] < ONSET_S  # the foreign deflection goes away at ONSET_S
        x[on, right] += bump.astype(np.float32)
        ts.append(chunk["stim_time_s"])
        xs.append(x)
    return h, names, np.concatenate(ts), np.concatenate(xs)


@pytest.fixture(scope="module")
def recording():
    return _recording()


def _run(recording, stimulated: str | None) -> Evaluator:
    h, names, t, x = recording
    ev = Evaluator(float(h["fs"]), int(h["pre_samples"]), h["n_samples"], "ssep-upper", names, BASELINE_END_S,
                   EvaluatorConfig(mains_hz=(50.0, 60.0)), stimulated=stimulated)
    for k in range(len(t)):
        ev.process(x[k], float(t[k]))
    return ev


def test_the_rule_is_the_consoles():
    names = ["C4'-Fz (L median cortical N20)", "C3'-Fz (R median cortical N20)", "Cv5-Fz (cervical N13)",
             "EpL-Fz (L Erb's point N9)", "EpR-Fz (R Erb's point N9)", "Cz'-Fpz (tibial cortical P37, both sides)"]
    # A channel's side is the limb its label names, else its electrodes' (C3' is left): the console's rule.
    assert modalities.monitored("L median", names) == [True, False, True, True, False, True]
    assert modalities.monitored("R median", names) == [False, True, True, False, True, True]
    assert modalities.monitored("TcMEP", names) == [True] * 6
    assert modalities.monitored(None, names) == [True] * 6


def test_a_channel_of_the_other_side_is_not_tracked_and_never_alerts(recording):
    _, names, _, _ = recording
    right, left = names.index("EpR-Fz (R Erb's point N9)"), names.index("EpL-Fz (L Erb's point N9)")
    # Without knowing the stimulated side (as before), the foreign deflection is a reproducible "response" and its
    # disappearance is an alert: what the bench saw.
    blind = _run(recording, None)
    assert blind.tracked[right]
    assert any(a.channel == right for a in blind.alerts)
    ev = _run(recording, "L median")
    assert not ev.tracked[right] and ev.tracked[left]
    assert [a.channel_name for a in ev.alerts] == []
    assert ev.baseline_readiness()[right] == 0  # nothing to wait for on it


def test_offline_evaluation_reads_the_stimulated_site_from_the_sweep_file(recording, tmp_path):
    h, names, t, x = recording
    path = tmp_path / "l_median.npz"
    sweepfile.save(path, {**{k: h[k] for k in ("fs", "pre_samples", "modality", "baseline_end_s", "channel_names")},
                          "sweeps": x, "stim_time_s": t, "stimulated": np.array("L median")})
    sf = sweepfile.load(path)
    assert sf.stimulated == "L median"
    out = evaluate(sf)
    assert out["alerts"] == []
    assert out["baseline"]["EpR-Fz (R Erb's point N9)"]["tracked"] is False
    # and the live evaluator agrees with it sweep for sweep
    assert [a.as_json() for a in _run(recording, "L median").alerts] == out["alerts"]


def test_a_stimulated_key_that_is_not_one_string_is_refused(recording, tmp_path):
    h, _, t, x = recording
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: h[k] for k in ("fs", "pre_samples", "modality", "baseline_end_s")}, sweeps=x[:10],
             stim_time_s=t[:10], stimulated=np.array([1.0, 2.0]))
    with pytest.raises(sweepfile.SweepFileError, match="stimulated"):
        sweepfile.load(path)
