"""`ionm evaluate`: the sweep-file format, errors, JSON shape, causality, and --trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ionm.pipeline import sweepfile
from ionm.pipeline.offline import evaluate
from ionm.pipeline.synthetic import make_mep, make_ssep

BIN = Path(sys.executable).parent
ALERT_KEYS = {"t_s", "channel", "criterion", "amplitude_ratio", "latency_ratio", "scope"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ionm"), "evaluate", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def drop_file(tmp_path_factory) -> Path:
    """Two channels, left and right; the left one drops to 30 % with +12 % latency at 150 s."""
    amp = lambda t: np.stack([np.where(t > 150, 0.3, 1.0), np.ones_like(t)], 1)  # noqa: E731
    lat = lambda t: np.stack([np.where(t > 150, 1.12, 1.0), np.ones_like(t)], 1)  # noqa: E731
    d = make_ssep(int(240 * 4.7), seed=21, snr_db=-12.0, n_channels=2, amplitude=amp, latency=lat,
                  baseline_end_s=80.0, channel_names=["C4'-Fz (L median)", "C3'-Fz (R median)"])
    path = tmp_path_factory.mktemp("ev") / "drop.npz"
    sweepfile.save(path, d)
    return path


def test_alerts_json_shape_and_the_focal_drop(drop_file):
    r = _cli(str(drop_file), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out["alerts"], list) and len(out["alerts"]) == 1
    a = out["alerts"][0]
    assert set(a) == ALERT_KEYS
    assert a["channel"] == "C4'-Fz (L median)" and a["scope"] == "focal"
    assert a["criterion"] in ("amplitude", "latency", "amplitude+latency")
    assert 150.0 < a["t_s"] < 200.0
    assert a["amplitude_ratio"] < 0.5 or a["latency_ratio"] > 1.1


def test_evaluation_is_causal(drop_file):
    sf = sweepfile.load(drop_file)
    full = evaluate(sf)["alerts"]
    assert full
    # The alert's sweep itself (t_s in the JSON is rounded to the µs: take the exact stimulus time).
    t_alert = float(sf.stim_time_s[np.argmin(np.abs(sf.stim_time_s - full[0]["t_s"]))])
    for cut in (60.0, 120.0, t_alert - 0.1, t_alert, 200.0):
        part = evaluate(sf.until(cut))["alerts"]
        assert part == [a for a in full if a["t_s"] <= cut]


def test_until_option_matches_a_cut_file(drop_file, tmp_path):
    sf = sweepfile.load(drop_file)
    cut = sf.until(170.0)
    sweepfile.save(tmp_path / "cut.npz", cut)
    a = json.loads(_cli(str(drop_file), "--json", "--until", "170").stdout)["alerts"]
    b = json.loads(_cli(str(tmp_path / "cut.npz"), "--json").stdout)["alerts"]
    assert a == b


def test_ssep_trials_give_tracker_estimates_with_uncertainty(drop_file):
    sf = sweepfile.load(drop_file)
    rows = evaluate(sf, trials=True)["trials"]
    assert len(rows) == sf.n_sweeps * 2
    late = [r for r in rows if r["t_s"] > 220 and r["channel"].startswith("C4")]
    early = [r for r in rows if r["t_s"] < 80]
    assert all(r["amplitude_ratio"] is None for r in early)  # no baseline yet
    a = np.array([r["amplitude_ratio"] for r in late])
    s = np.array([r["latency_ratio"] for r in late])
    a_sd = np.array([r["amplitude_ratio_sd"] for r in late])
    s_sd = np.array([r["latency_ratio_sd"] for r in late])
    # The reported uncertainty covers the truth (0.3, 1.12) most of the time.
    assert np.mean(np.abs(a - 0.3) <= 2 * a_sd) > 0.8
    assert np.mean(np.abs(s - 1.12) <= 2 * s_sd) > 0.8
    stable = [r for r in rows if r["t_s"] > 120 and r["channel"].startswith("C3")]
    assert np.mean([abs(r["amplitude_ratio"] - 1.0) <= 2 * r["amplitude_ratio_sd"] for r in stable]) > 0.8
    assert all(r["latency_ms"] == pytest.approx(r["latency_ratio"] * late[0]["latency_ms"] / late[0]["latency_ratio"],
                                                rel=1e-3) for r in late)


def test_mep_trials_give_onset_p2p_and_area_per_channel(tmp_path):
    d = make_mep(12, seed=3, n_channels=2, onset_ms=[[22.0, 35.0]], amplitude_uv=800.0, baseline_end_s=40.0)
    path = tmp_path / "mep.npz"
    sweepfile.save(path, d)
    r = _cli(str(path), "--trials", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["trials"]
    assert len(rows) == 24
    for row in rows:
        assert {"t_s", "channel", "onset_ms", "p2p_uv", "area_uv_ms", "rejected"} <= set(row)
    ch0 = [row for row in rows if row["channel"] == "m0"]
    truth = d["truth"]
    assert np.allclose([row["onset_ms"] for row in ch0], truth["onset_ms"][:, 0], atol=0.5)
    assert np.allclose([row["p2p_uv"] for row in ch0], truth["p2p_uv"][:, 0], rtol=0.05)
    assert np.allclose([row["area_uv_ms"] for row in ch0], truth["area_uv_ms"][:, 0], rtol=0.1)


def test_mep_loss_alerts_after_two_trials(tmp_path):
    amp = np.where(np.arange(20) >= 12, 0.0, 800.0)[:, None]
    d = make_mep(20, seed=4, n_channels=1, amplitude_uv=amp, baseline_end_s=60.0, channel_names=["L APB"])
    out = evaluate(sweepfile.from_mapping(d))
    assert [(a["criterion"], a["t_s"]) for a in out["alerts"]] == [("loss", float(d["stim_time_s"][13]))]


@pytest.mark.parametrize("variant", ["2d", "float64", "no_names", "modality_0d_bytes", "int16", "list_modality"])
def test_files_from_other_tools(tmp_path, variant):
    d = make_ssep(200, seed=5, snr_db=-5.0, baseline_end_s=20.0)
    keys = {k: d[k] for k in sweepfile.REQUIRED}
    if variant == "2d":
        keys["sweeps"] = keys["sweeps"][:, 0, :]
    elif variant == "float64":
        keys["sweeps"] = keys["sweeps"].astype(np.float64)
    elif variant == "modality_0d_bytes":
        keys["modality"] = np.array(b"ssep-upper")
    elif variant == "int16":
        keys["sweeps"] = np.round(keys["sweeps"]).astype(np.int16)
    elif variant == "list_modality":
        keys["modality"] = np.array(["SSEP-upper"])
    if variant != "no_names":
        keys["channel_names"] = np.array(["C3'-Fz"])
    path = tmp_path / "x.npz"
    np.savez(path, **keys)
    r = _cli(str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["channels"] == (["ch0"] if variant == "no_names" else ["C3'-Fz"])
    assert out["alerts"] == []


@pytest.mark.parametrize("change,needle", [
    ({"only": ["sweeps"]}, "'fs'"),
    ({"drop": "baseline_end_s"}, "'baseline_end_s'"),
    ({"set": ("modality", np.array("eeg"))}, "'modality'"),
    ({"set": ("fs", np.array([8000.0, 4000.0]))}, "'fs'"),
    ({"set": ("stim_time_s", np.arange(5.0))}, "'stim_time_s'"),
    ({"set": ("pre_samples", np.array(10_000))}, "'pre_samples'"),
    ({"set": ("sweeps", np.zeros((3, 2, 2, 5)))}, "'sweeps'"),
    ({"set": ("channel_names", np.array(["a", "b"]))}, "'channel_names'"),
    ({"set": ("sweeps", np.array(["x"] * 10))}, "'sweeps'"),
])
def test_bad_files_fail_with_exit_2_naming_the_key(tmp_path, change, needle):
    d = make_ssep(20, seed=1, baseline_end_s=1.0)
    keys = {k: d[k] for k in (*sweepfile.REQUIRED, "channel_names")}
    if "only" in change:
        keys = {k: keys[k] for k in change["only"]}
    if "drop" in change:
        keys.pop(change["drop"])
    if "set" in change:
        keys[change["set"][0]] = change["set"][1]
    path = tmp_path / "bad.npz"
    np.savez(path, **keys)
    r = _cli(str(path), "--json")
    assert r.returncode == 2
    assert needle in r.stderr and r.stdout == ""


def test_unreadable_files_fail_with_exit_2(tmp_path):
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    text = tmp_path / "t.npz"
    text.write_text("not a zip")
    obj = tmp_path / "obj.npz"
    np.savez(obj, fs=np.array([{"a": 1}], dtype=object))
    for path, needle in ((npy, "single .npy"), (text, "cannot read"), (obj, "'fs'"),
                         (tmp_path / "missing.npz", "no such file")):
        r = _cli(str(path))
        assert r.returncode == 2 and needle in r.stderr, (path, r.stderr)


def test_round_trip_keeps_the_interchange_keys(tmp_path):
    d = make_ssep(30, seed=2, n_channels=3)
    sweepfile.save(tmp_path / "a.npz", d)
    sf = sweepfile.load(tmp_path / "a.npz")
    assert sf.sweeps.dtype == np.float32 and sf.sweeps.shape == d["sweeps"].shape
    assert sf.modality == "ssep-upper" and sf.channel_names == ["ch0", "ch1", "ch2"]
    np.testing.assert_array_equal(sf.stim_time_s, d["stim_time_s"])
    with np.load(tmp_path / "a.npz") as z:
        assert set(z.files) == {*sweepfile.REQUIRED, "channel_names"}


def test_baseline_reports_how_well_each_level_is_known(tmp_path):
    # Same response on both channels, one 20 dB noisier: its baseline level is known ~10x less well, and the
    # text report says that a change there takes longer to confirm.
    d = make_ssep(int(90 * 4.7), seed=23, snr_db=np.array([-8.0, -28.0]), n_channels=2, baseline_end_s=80.0,
                  channel_names=["C4'-Fz (L median)", "C3'-Fz (R median)"])
    path = tmp_path / "weak.npz"
    sweepfile.save(path, d)
    base = evaluate(sweepfile.from_mapping(d))["baseline"]
    good, weak = base["C4'-Fz (L median)"], base["C3'-Fz (R median)"]
    assert good["tracked"] and 0 < good["level_se"] < 0.05
    assert weak["level_se"] is None or weak["level_se"] > 5 * good["level_se"]
    text = _cli(str(path)).stdout
    line = next(ln for ln in text.splitlines() if "C3'-Fz" in ln)
    assert ("known to ±" in line) if weak["tracked"] else ("not tracked" in line)
    assert "known to ±" not in next(ln for ln in text.splitlines() if "C4'-Fz" in ln)
