"""`ionm evaluate FILE.edf|.bdf`: continuous recordings written by pyedflib (an independent writer), read by
edfio, analysed by ionm.pipeline.emg; and the bad files that must exit 2 with a message saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyedflib
import pytest

from ionm.pipeline import edffile, emg
from ionm_hw.physiology import freerun

BIN = Path(sys.executable).parent
FS = 8000.0
NAMES = ["L VM", "L TA", "L gastroc"]  # EDF labels hold 16 characters
EVENT_KEYS = {"t_s", "end_s", "channel", "kind", "rate_hz", "peak_uv"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ionm"), "evaluate", *args], capture_output=True, text=True, timeout=120)


def _write(path: Path, x_uv: np.ndarray, fs: float | list[float], labels: list[str], stims=(), *,
           bdf: bool = False, unit: str = "uV") -> Path:
    rates = fs if isinstance(fs, list) else [fs] * len(labels)
    w = pyedflib.EdfWriter(str(path), len(labels), pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS)
    lim = float(np.ceil(np.max(np.abs(x_uv)) * 1.01 + 1.0))  # EDF headers hold 8 characters
    dig = 2**23 - 1 if bdf else 2**15 - 1
    w.setSignalHeaders([{"label": lab, "dimension": unit, "sample_frequency": r, "physical_max": lim,
                         "physical_min": -lim, "digital_max": dig, "digital_min": -dig - 1}
                        for lab, r in zip(labels, rates, strict=True)])
    w.set_number_of_annotation_signals(4)  # room for 2 stimuli/s (pyedflib's default keeps one per record)
    for t in stims:
        w.writeAnnotation(float(t), -1, "Stimulus")
    w.writeSamples([np.ascontiguousarray(x_uv[i, : int(len(x_uv[i]) * rates[i] / rates[0])])
                    for i in range(len(labels))])
    w.close()
    return path


@pytest.fixture(scope="module")
def recording():
    script = freerun.random_script(121, 40.0, len(NAMES), stim_rate_hz=2.0)
    script.append({"kind": "a_train", "channel": 1, "onset_s": 1.0, "duration_s": 1.5, "rate_hz": 120.0,
                   "peak_uv": 150.0})
    return freerun.render(40.0, FS, len(NAMES), script, 121)


@pytest.mark.parametrize("bdf", [False, True])
def test_round_trip_gives_the_events_of_the_samples(recording, tmp_path, bdf):
    path = _write(tmp_path / ("r.bdf" if bdf else "r.edf"), recording.samples_uv, FS, NAMES,
                  recording.stim_times_s, bdf=bdf)
    rec = edffile.load(path)
    assert rec.channel_names == NAMES and rec.fs == FS
    assert rec.stim_times_s == pytest.approx(recording.stim_times_s, abs=1e-4)
    # 16 bits over ±lim µV: a step of lim/32768 (BDF: 256 times finer)
    step = float(np.max(np.abs(recording.samples_uv))) / 2**15 * (1 / 256 if bdf else 1)
    assert np.max(np.abs(rec.samples_uv - recording.samples_uv)) <= step * 1.1
    r = _cli(str(path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["channels"] == NAMES and out["fs_hz"] == FS and out["n_stimuli"] == len(recording.stim_times_s)
    direct, a_train_s = emg.detect(recording.samples_uv, FS, NAMES, recording.stim_times_s)
    direct_discharges = [e for e in direct if e.kind != "cautery"]
    assert len(out["events"]) == len(direct_discharges) >= 3
    for got, want in zip(out["events"], direct_discharges, strict=True):
        assert set(got) == EVENT_KEYS
        assert (got["channel"], got["kind"]) == (want.channel, want.kind)
        assert got["t_s"] == pytest.approx(want.t_s, abs=1e-3)
    assert out["a_train_cumulative_s"][NAMES[1]] == pytest.approx(a_train_s[NAMES[1]], abs=0.01)
    assert out["a_train_cumulative_s"][NAMES[1]] >= 1.4
    a_train = [e for e in out["events"] if e["kind"] == "a_train" and abs(e["t_s"] - 1.0) < 0.05]
    assert len(a_train) == 1 and a_train[0]["rate_hz"] == pytest.approx(120.0, rel=0.03)


def test_text_output_lists_events_and_cumulative_time(recording, tmp_path):
    path = _write(tmp_path / "t.edf", recording.samples_uv, FS, NAMES, recording.stim_times_s)
    r = _cli(str(path))
    assert r.returncode == 0, r.stderr
    assert "a_train" in r.stdout and "cumulative A-train time on L TA" in r.stdout


def _bad(tmp_path: Path, recording, case: str) -> Path:
    x = recording.samples_uv[:, : int(4 * FS)]
    if case == "missing label":
        return _write(tmp_path / "b.edf", x, FS, ["L VM", "", "L gastroc"])
    if case == "duplicate label":
        return _write(tmp_path / "b.edf", x, FS, ["L VM", "L VM", "L gastroc"])
    if case == "low rate":
        return _write(tmp_path / "b.edf", x[:, ::8], 1000.0, NAMES)
    if case == "mixed rates":
        return _write(tmp_path / "b.edf", x, [FS, FS, FS / 2], NAMES)
    if case == "unit":
        return _write(tmp_path / "b.edf", x, FS, NAMES, unit="degC")
    if case == "truncated":
        good = _write(tmp_path / "g.edf", x, FS, NAMES).read_bytes()
        (tmp_path / "b.edf").write_bytes(good[: len(good) * 2 // 3])
        return tmp_path / "b.edf"
    if case == "truncated header":
        good = _write(tmp_path / "g.edf", x, FS, NAMES).read_bytes()
        (tmp_path / "b.edf").write_bytes(good[:700])
        return tmp_path / "b.edf"
    if case == "not an EDF":
        np.savez(tmp_path / "b.npz", x=x)
        (tmp_path / "b.edf").write_bytes((tmp_path / "b.npz").read_bytes())
        return tmp_path / "b.edf"
    if case == "empty":
        (tmp_path / "b.bdf").write_bytes(b"")
        return tmp_path / "b.bdf"
    if case == "discontinuous":
        raw = bytearray(_write(tmp_path / "g.edf", x, FS, NAMES).read_bytes())
        assert raw[192:197] == b"EDF+C"
        raw[192:197] = b"EDF+D"
        keeping = raw.index(b"+2\x14\x14")  # the time-keeping annotation of the third 1-s data record
        raw[keeping : keeping + 2] = b"+7"  # which now starts at 7 s: a 5-s gap after the second
        (tmp_path / "b.edf").write_bytes(bytes(raw))
        return tmp_path / "b.edf"
    if case == "missing":
        return tmp_path / "nothing.edf"
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "message"), [
    ("missing label", "signal 1 has no label"),
    ("duplicate label", "two signals are labelled 'L VM'"),
    ("low rate", "sample rate 1000 Hz is too low"),
    ("mixed rates", "different sample rates (4000, 8000 Hz)"),
    ("unit", "physical dimension 'degC'"),
    ("truncated", "truncated: the header announces 4 data records"),
    ("truncated header", "truncated or malformed header"),
    ("not an EDF", "not an EDF or BDF file"),
    ("empty", "the file is empty"),
    ("missing", "cannot read the file"),
    ("discontinuous", "the recording is discontinuous"),
])
def test_bad_files_exit_2_with_a_message_naming_the_fault(recording, tmp_path, case, message):
    path = _bad(tmp_path, recording, case)
    r = _cli(str(path), "--json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("ionm evaluate: %s: " % path)


def test_trials_is_refused_for_a_continuous_recording(recording, tmp_path):
    path = _write(tmp_path / "r.edf", recording.samples_uv[:, : int(2 * FS)], FS, NAMES)
    r = _cli(str(path), "--trials")
    assert r.returncode == 2 and "--trials applies to sweep files" in r.stderr


def test_until_analyses_the_samples_up_to_that_time(recording, tmp_path):
    path = _write(tmp_path / "u.edf", recording.samples_uv, FS, NAMES, recording.stim_times_s)
    full = json.loads(_cli(str(path), "--json").stdout)["events"]
    cut = json.loads(_cli(str(path), "--json", "--until", "20").stdout)
    assert cut["duration_s"] == 20.0
    assert all(e["end_s"] <= 20.0 for e in cut["events"])
    # Events that ended (a gap of 100 ms without discharge) before the cut are the same as in the whole file.
    assert [e for e in cut["events"] if e["end_s"] < 19.8] == [e for e in full if e["end_s"] < 19.8]
    assert len(cut["events"]) < len(full)
