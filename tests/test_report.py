"""`ionm report`: a valid PDF with the expected pages, rendered by poppler when it is installed."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ionm.case import report
from ionm.case.store import CaseStore
from ionm.cli import report as report_cmd
from ionm.console.scripted import ack_all, command, injury_scenario, run_case

TECH = ("tech", "technologist")


@pytest.fixture(scope="module")
def case_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("report") / "cases.db"
    store = CaseStore(db)
    run_case(store, injury_scenario(14.0), duration_s=24.0, mep_every=1.0, actions=[
        (8.0, command(*TECH, {"cmd": "baseline"})),
        (9.0, command(*TECH, {"cmd": "note", "text": "screw L3 left placed"})),
        (20.0, ack_all("doc", "physician", "surgeon informed")),
        (23.0, command(*TECH, {"cmd": "close", "note": "end of monitoring"})),
    ])
    store.close()
    return db


def test_report_pages(case_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    p = argparse.ArgumentParser()
    report_cmd.add_arguments(p)
    assert report_cmd.run(p.parse_args(["--db", str(case_db), "--out", str(out)])) == 0
    store = CaseStore(case_db)
    try:
        cid = store.case()["id"]
        n_alerts = len(store.rows("alerts", cid))
    finally:
        store.close()
    assert n_alerts >= 1
    pdf = out.read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pages == 1 + 1 + n_alerts + 1 + 1  # summary, baselines, one per alert, notes, closing status
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) not installed: rendering not checked")
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(out), str(tmp_path / "page")], check=True)
    pngs = sorted(tmp_path.glob("page-*.png"))
    assert len(pngs) == pages
    from PIL import Image

    for k, png in enumerate(pngs):
        px = np.asarray(Image.open(png).convert("RGB")).astype(int)
        assert (px.sum(axis=2) < 300).sum() > 200, "page %d is blank" % (k + 1)
        red = (px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)
        if 2 <= k < 2 + n_alerts:
            assert red.sum() > 50, "alert page %d has no red 'at alert' trace" % (k + 1)


def test_baseline_table_marks_untracked_and_weak_channels_and_reads_older_cases() -> None:
    assert report._baseline_note({"tracked": False, "level_se": None}) == "  (not tracked)"
    assert report._baseline_note({"tracked": True, "level_se": 0.19}) == "  (weak: level ±19 %)"
    assert report._baseline_note({"tracked": True, "level_se": 0.04}) == ""
    assert report._baseline_note({"tracked": True}) == ""  # a case stored before level_se was kept
