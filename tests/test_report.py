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
    assert pages == 1 + 1 + n_alerts + 1 + 1 + 1  # summary, baselines, one per alert, technical, notes, closing
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


def test_waveforms_are_drawn_negative_up_on_a_true_axis() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stream = {"pre_samples": 10, "fs": 1000.0}
    wave = np.zeros(50)
    wave[30] = -5.0  # a negative peak (N20-like)
    fig, ax = plt.subplots()
    try:
        report._trace_axes(ax, stream, wave, "x", "k")
        report._trace_axes(ax, stream, wave, "y", "k")  # a second trace keeps the axis inverted, not flipped back
        assert np.array_equal(ax.lines[0].get_ydata(), wave)  # true µV: the tick labels are true
        assert ax.yaxis_inverted()  # ... on an axis whose negative side is up
        lo, hi = ax.get_ylim()
        fig.canvas.draw()
        x_pix, y_pix = ax.transData.transform((20.0, -5.0))
        _, y_zero = ax.transData.transform((20.0, 0.0))
        assert y_pix > y_zero  # the negative peak is drawn above zero (display y grows upwards)
        assert lo > hi
    finally:
        plt.close(fig)


def with_losses(source, every: int = 29):
    from dataclasses import replace

    seen: dict[str, int] = {}
    for sw in source:
        k = seen.get(sw.source, 0)
        seen[sw.source] = k + 1
        if sw.modality != "mep" and k % every == every - 1:
            x = np.array(sw.data_uv, dtype=np.float32, copy=True)
            x[:, 60:90] = np.nan  # a frame lost on the link: every channel
            sw = replace(sw, data_uv=x)
        yield sw


def paused(source, at_s: float, pause_s: float):
    """The source goes silent (wall clock) once, as a stalled link does."""
    import time

    done = False
    for sw in source:
        if not done and sw.t_s >= at_s:
            done = True
            time.sleep(pause_s)
        yield sw


@pytest.fixture(scope="module")
def eventful_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A case with technical events: samples lost, a stalled source (technical alarms), stimulation stopped by
    the technologist, a console restart that resumes the case; alerts left unacknowledged on several channels."""
    import functools

    from ionm.board.simcase import SimulatedCase
    from ionm.board.stimulation import RecordedStimulation, default_program
    from ionm.console.engine import CaseEngine

    db = tmp_path_factory.mktemp("eventful") / "cases.db"
    store = CaseStore(db)
    scenario = injury_scenario(10.0)
    program = default_program(scenario)
    program["tcmep"]["repeat_s"] = 1.0
    stim = RecordedStimulation(program)
    cid = store.open_case(patient_id="T", meta={"source": "sim"})
    engine = CaseEngine(store, cid, stimulation=stim, queue_size=32, stall_alarm_s=0.5)
    engine.at(5.0, functools.partial(command(*TECH, {"cmd": "baseline"}), engine))
    engine.at(22.0, functools.partial(command(*TECH, {"cmd": "stim", "command": {"action": "stop_all"}}), engine))
    source = SimulatedCase(scenario, 1, speed=0.0, stimulation=stim, duration_s=24.0)
    engine.link_health = source.link_health
    engine.start()
    engine.run_source(paused(with_losses(source), 16.0, 2.5))
    assert engine.wait_idle(300)
    engine.stop()
    # the console restarts and resumes the case
    stim2 = RecordedStimulation(default_program(scenario))
    engine2 = CaseEngine(store, cid, stimulation=stim2, queue_size=32)
    start = engine2.resume() + 0.25
    source2 = SimulatedCase(scenario, 1, speed=0.0, stimulation=stim2, start_s=start, duration_s=start + 4.0)
    engine2.link_health = source2.link_health
    engine2.start()
    engine2.run_source(source2)
    assert engine2.wait_idle(300)
    engine2.stop()
    store.close()
    return db


def _pdf_text(pdf: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    return "\n".join(" ".join(ln.split()) for ln in text.splitlines())  # runs of spaces as laid out: one


def test_report_has_technical_events_and_unacknowledged_alerts_by_channel(eventful_db: Path, tmp_path: Path) -> None:
    from ionm.case.store import unpack
    from ionm.case.timeline import short_name

    out = tmp_path / "report.pdf"
    p = argparse.ArgumentParser()
    report_cmd.add_arguments(p)
    assert report_cmd.run(p.parse_args(["--db", str(eventful_db), "--out", str(out)])) == 0
    text = _pdf_text(out)
    store = CaseStore(eventful_db)
    try:
        cid = store.case()["id"]
        alerts = store.rows("alerts", cid)
        technical = [n for n in store.rows("notes", cid) if n["kind"] == "technical"]
        missing = 0
        for r in store.query("SELECT data FROM sweeps WHERE case_id = ?", (cid,)):
            missing += int(np.count_nonzero(~np.isfinite(unpack(r["data"])).all(axis=0)))
    finally:
        store.close()
    page = text[text.index("Technical events"):]
    page = page[:page.index("Interventions, events and notes")]
    assert "Stimulation stops: 1 (by the board 0, by a user 1)" in page
    assert "all stimulation stopped by tech" in page
    raised = [n for n in technical if n["text"].startswith("TECHNICAL ALARM")]
    assert raised, "the stalled source must have raised a technical alarm"
    assert "Technical alarms: %d raised" % len(raised) in page
    for n in technical:
        assert " ".join(n["text"].split())[:60] in page
    assert missing > 0
    assert "Lost samples: %d missing from recorded sweeps" % missing in page
    assert "Restarts: 1 (console 1, source clock 0)" in page
    assert "console restarted; the case resumed" in page
    assert len(alerts) >= 2
    groups: dict[tuple[str, int], list] = {}
    for a in alerts:
        groups.setdefault((a["stream"], a["channel"]), []).append(a)
    assert len(groups) >= 2
    summary = text[:text.index("Baselines (latest")]
    assert "Unacknowledged alerts by channel (%d channels)" % len(groups) in summary
    for (stream, _), rows in groups.items():
        line = "%s %s: %d alert%s" % (stream, short_name(rows[0]["channel_name"]), len(rows),
                                      "" if len(rows) == 1 else "s")
        assert line in summary and line in text[text.index("Closing status"):]
        assert sum(line in ln for ln in summary.splitlines()) == 1  # one line per channel, not one per alert
