"""`ionm export`: EDF+ read back with pyedflib, BDF+D with edfio, and the CSV."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from ionm.case.store import CaseStore
from ionm.cli import export
from ionm.console.scripted import command, injury_scenario, run_case

TECH = ("tech", "technologist")


@pytest.fixture(scope="module")
def case_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("export") / "cases.db"
    store = CaseStore(db)
    run_case(store, injury_scenario(14.0), duration_s=20.0, mep_every=1.0, actions=[
        (8.0, command(*TECH, {"cmd": "baseline"})),
        (9.0, command(*TECH, {"cmd": "note", "text": "screw L3 left placed"})),
    ])
    store.close()
    return db


def _run(*argv: str) -> int:
    p = argparse.ArgumentParser()
    export.add_arguments(p)
    return export.run(p.parse_args(list(argv)))


def test_edf_reads_back_with_pyedflib(case_db: Path, tmp_path: Path) -> None:
    import pyedflib

    out = tmp_path / "case.edf"
    assert _run("--db", str(case_db), "--edf", str(out)) == 0
    files = sorted(tmp_path.glob("case.*.edf"))
    assert [f.name for f in files] == ["case.mep_TcMEP.edf", "case.ssep-lower_L-tibial.edf",
                                       "case.ssep-lower_R-tibial.edf", "case.ssep-upper_L-median.edf",
                                       "case.ssep-upper_R-median.edf"]
    store = CaseStore(case_db)
    try:
        cid = store.case()["id"]
        for f, key in ((files[1], "ssep-lower/L tibial"), (files[0], "mep/TcMEP")):
            sweeps = list(store.iter_sweeps(cid, key))
            data = np.stack([sw.data_uv for sw, _ in sweeps])  # [k, ch, n]
            r = pyedflib.EdfReader(str(f))
            try:
                assert r.signals_in_file == data.shape[1]
                assert r.datarecords_in_file == len(sweeps)
                assert r.getSampleFrequency(0) == 8000.0
                assert r.getSignalLabels()[0] == sweeps[0][0].channel_names[0].split(" (")[0]
                for c in range(data.shape[1]):
                    x = r.readSignal(c)
                    ref = data[:, c, :].reshape(-1)
                    lsb = (ref.max() - ref.min() + 2) / 65535
                    assert np.max(np.abs(x - ref)) <= lsb  # the raw sweeps, to EDF's 16-bit resolution
                onsets, _, texts = r.readAnnotations()
            finally:
                r.close()
            stims = [t for t in texts if t.startswith("stim ")]
            assert len(stims) == len(sweeps)
            t_case = [float(t.rsplit("t=", 1)[1]) for t in stims]
            assert np.allclose(t_case, [sw.t_s for sw, _ in sweeps], atol=1e-4)  # each sweep's true time
            assert any("screw L3 left placed" in t for t in texts)
            assert any(t.startswith("baseline (tech)") for t in texts)
            if key == "mep/TcMEP":
                assert any(t.startswith("alert (system)") for t in texts)
    finally:
        store.close()


def test_bdf_discontinuous_keeps_case_time(case_db: Path, tmp_path: Path) -> None:
    import edfio

    out = tmp_path / "mep.bdf"
    assert _run("--db", str(case_db), "--edf", str(out), "--stream", "mep/TcMEP", "--discontinuous") == 0
    bdf = edfio.read_bdf(out)
    store = CaseStore(case_db)
    try:
        sweeps = list(store.iter_sweeps(store.case()["id"], "mep/TcMEP"))
    finally:
        store.close()
    assert not bdf.is_continuous and bdf.num_data_records == len(sweeps)
    stims = [a.onset for a in bdf.annotations if a.text == "stim TcMEP"]
    # Trains one second apart in the case are one second apart in the file (not end to end).
    assert np.allclose(np.diff(stims), np.diff([sw.t_s for sw, _ in sweeps]), atol=1e-5)
    x = bdf.signals[0].data
    assert np.max(np.abs(x - np.stack([sw.data_uv[0] for sw, _ in sweeps]).reshape(-1))) < 0.01  # 24 bits


def test_csv(case_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "case.csv"
    assert _run("--db", str(case_db), "--csv", str(out)) == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    kinds = {r["kind"] for r in rows}
    assert {"measurement", "note", "baseline", "alert"} <= kinds
    meas = [r for r in rows if r["kind"] == "measurement" and r["stream"] == "mep/TcMEP" and r["amplitude_ratio"]]
    assert meas and all(float(r["t_s"]) >= 8.0 for r in meas)  # ratios exist only once a baseline is set
    assert [r["text"] for r in rows if r["kind"] == "note"] == ["screw L3 left placed"]


def test_unknown_case_or_stream(case_db: Path, tmp_path: Path) -> None:
    assert _run("--db", str(case_db), "99", "--csv", str(tmp_path / "x.csv")) == 2
    assert _run("--db", str(case_db), "--stream", "eeg/none", "--edf", str(tmp_path / "x.edf")) == 2


def with_losses(source, every: int = 23):
    """The sweeps of a source with stretches lost as the board link loses them: every `every`-th sweep of a stream
    has a run of samples NaN on all channels (a lost frame); every MEP trial the 3rd has one channel's run lost."""
    from dataclasses import replace

    seen: dict[str, int] = {}
    for sw in source:
        k = seen.get(sw.source, 0)
        seen[sw.source] = k + 1
        period = 3 if sw.modality == "mep" else every
        if k % period == period - 1:
            x = np.array(sw.data_uv, dtype=np.float32, copy=True)
            i0 = 40 + 7 * (k // period % 5)
            x[:, i0:i0 + 25] = np.nan
            if sw.modality == "mep":
                x[1, 5:9] = np.nan  # and a shorter run on one channel alone, elsewhere
            sw = replace(sw, data_uv=x)
        yield sw


@pytest.fixture(scope="module")
def lossy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole case (every stream) whose sweeps hold NaN where samples were lost, baselines completed by themselves
    (so the record repeats baseline events), a note and alerts."""
    import functools

    from ionm.board.simcase import SimulatedCase
    from ionm.board.stimulation import RecordedStimulation, default_program
    from ionm.console.engine import CaseEngine

    db = tmp_path_factory.mktemp("lossy") / "cases.db"
    store = CaseStore(db)
    scenario = injury_scenario(14.0)
    program = default_program(scenario)
    program["tcmep"]["repeat_s"] = 1.0
    stim = RecordedStimulation(program)
    cid = store.open_case(patient_id="T", meta={"source": "sim"})
    engine = CaseEngine(store, cid, stimulation=stim, queue_size=32)
    engine.at(3.0, functools.partial(command(*TECH, {"cmd": "baseline"}), engine))
    engine.at(9.0, functools.partial(command(*TECH, {"cmd": "note", "text": "screw L3 left placed"}), engine))
    source = SimulatedCase(scenario, 1, speed=0.0, stimulation=stim, duration_s=20.0)
    engine.start()
    engine.run_source(with_losses(source))
    assert engine.wait_idle(300)
    engine.stop()
    store.close()
    return db


def _stored(store: CaseStore, cid: int, key: str) -> tuple[list, np.ndarray]:
    sweeps = list(store.iter_sweeps(cid, key))
    return sweeps, np.stack([sw.data_uv for sw, _ in sweeps]).astype(np.float64)


def _runs(lost_kn: np.ndarray) -> list[tuple[int, int, int]]:
    """(sweep, first, end) of every run of lost samples, any channel."""
    out = []
    for k in range(lost_kn.shape[0]):
        row = np.concatenate([[False], lost_kn[k], [False]])
        e = np.flatnonzero(row[1:] != row[:-1])
        out += [(k, int(a), int(b)) for a, b in zip(e[::2], e[1::2], strict=True)]
    return out


def test_a_whole_case_with_lost_samples_exports_every_stream_read_back_by_pyedflib(lossy_db: Path,
                                                                                   tmp_path: Path) -> None:
    import pyedflib

    store = CaseStore(lossy_db)
    try:
        cid = store.case()["id"]
        keys = [s["key"] for s in store.streams(cid)]
        lossy = [k for k in keys if np.isnan(_stored(store, cid, k)[1]).any()]
        assert sorted(lossy) == sorted(keys) and len(keys) == 5  # every stream lost samples
        out = tmp_path / "case.edf"
        assert _run("--db", str(lossy_db), "--edf", str(out)) == 0
        for key in keys:
            f = tmp_path / ("case.%s.edf" % export_slug(key))
            sweeps, data = _stored(store, cid, key)
            k_n, n = data.shape[0], data.shape[2]
            fs, pre = sweeps[0][0].fs, sweeps[0][0].pre_samples
            lost = ~np.isfinite(data)
            r = pyedflib.EdfReader(str(f))
            try:
                assert r.datarecords_in_file == k_n
                for c in range(data.shape[1]):
                    x = r.readSignal(c)
                    assert np.isfinite(x).all()
                    ref = data[:, c, :].reshape(-1)
                    ok = np.isfinite(ref)
                    lsb = (max(np.nanmax(ref), 0) - min(np.nanmin(ref), 0) + 2) / 65535
                    assert np.max(np.abs(x[ok] - ref[ok])) <= lsb  # every sample that arrived, as recorded
                    assert np.max(np.abs(x[~ok])) <= lsb  # a lost one is 0 µV ...
                onsets, durations, texts = r.readAnnotations()
            finally:
                r.close()
            pairs = [(round(float(o), 4), t) for o, t in zip(onsets, texts, strict=True)]
            assert len(pairs) == len(set(pairs)), "duplicate annotations in %s" % key
            gaps = sorted((float(o), float(d)) for o, d, t in zip(onsets, durations, texts, strict=True)
                          if t.startswith("samples lost"))
            want = sorted((k * n / fs + i0 / fs, (i1 - i0) / fs) for k, i0, i1 in _runs(lost.any(axis=1)))
            assert want and len(gaps) == len(want)
            assert np.allclose(gaps, want, rtol=0, atol=0.5 / fs)  # ... and marked where, and as long as, it was lost
            assert sum(t.startswith("stim ") for t in texts) == k_n
            assert sum("screw L3 left placed" in t for t in texts) == 1
            assert pre > 0
    finally:
        store.close()


def test_a_whole_case_with_lost_samples_as_edf_plus_d_keeps_the_gaps_at_case_time(lossy_db: Path,
                                                                                  tmp_path: Path) -> None:
    import edfio

    store = CaseStore(lossy_db)
    try:
        cid = store.case()["id"]
        keys = [s["key"] for s in store.streams(cid)]
        out = tmp_path / "case.edf"
        assert _run("--db", str(lossy_db), "--edf", str(out), "--discontinuous") == 0
        for key in keys:
            edf = edfio.read_edf(tmp_path / ("case.%s.edf" % export_slug(key)))
            sweeps, data = _stored(store, cid, key)
            fs, pre = sweeps[0][0].fs, sweeps[0][0].pre_samples
            assert not edf.is_continuous and edf.num_data_records == len(sweeps)
            x = edf.signals[0].data
            ref = data[:, 0, :].reshape(-1)
            ok = np.isfinite(ref)
            assert np.isfinite(x).all()
            lsb = (max(np.nanmax(ref), 0) - min(np.nanmin(ref), 0) + 2) / 65535
            assert np.max(np.abs(x[ok] - ref[ok])) <= lsb
            gaps = sorted((a.onset, a.duration or 0.0) for a in edf.annotations if a.text.startswith("samples lost"))
            t0 = sweeps[0][0].t_s - pre / fs  # edfio gives onsets from the first record's start
            want = sorted((sweeps[k][0].t_s - pre / fs + i0 / fs - t0, (i1 - i0) / fs)
                          for k, i0, i1 in _runs((~np.isfinite(data)).any(axis=1)))
            assert want and len(gaps) == len(want)
            assert np.allclose(gaps, want, rtol=0, atol=0.5 / fs)  # at the case time of the loss
            pairs = [(round(a.onset, 4), a.text) for a in edf.annotations]
            assert len(pairs) == len(set(pairs))
    finally:
        store.close()


def export_slug(key: str) -> str:
    from ionm.case.export import slug

    return slug(key)
