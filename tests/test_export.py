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
