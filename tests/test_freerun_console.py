"""Issue 19 item 5, the engine's side: free-running EMG from a free-run scenario through the case engine
(ionm.console.freerun): events on the timeline and in the store, the cumulative A-train warning on facial channels at
its threshold (10 s by default, configurable), once, surviving a restart; sound packed from the blocks; a source
that stops delivering raises a technical alarm; the report's free-run page.

The scenario is hardware/scenarios/freerun/cpa_facial_traction.json: A-trains on L orbicularis oris at 40 (0.3 s),
48 (0.8 s), 60 (1.5 s), 75 (0.5 s), 90 (2.0 s), 105 (1.2 s), 118 (2.5 s) and 135 s (3.0 s), so its cumulative time
passes 10 s during the train at 135 s; L orbicularis oculi has 0.6 s at 61 s; L mentalis none. The source runs
unpaced (speed 0): the engine analyses ~30 case seconds per wall second."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ionm.board.freerun import FreeRunCase
from ionm.case.store import CaseStore
from ionm.console import freerun
from ionm.console.engine import CaseEngine
from ionm.sweep import EmgBlock

SCENARIO = "cpa_facial_traction"
ORIS, OCULI, MENTALIS = "L orbicularis oris", "L orbicularis oculi", "L mentalis"


class Run:
    def __init__(self, tmp: Path, warn_s: float | None = None, resume: bool = False, **kw: Any) -> None:
        self.store = CaseStore(tmp / "cases.db")
        cid = self.store.open_case_id() if resume else None
        self.case_id = cid if cid is not None else self.store.open_case(patient_id="EMG-1")
        self.engine = CaseEngine(self.store, self.case_id, a_train_warn_s=warn_s, **kw)
        self.start_s = self.engine.resume() if resume else 0.0
        self.appends: list[str] = []
        self.engine.subscribe(lambda frames, appends: self.appends.extend(appends))
        self.engine.start()

    def play(self, until_s: float, start_s: float | None = None) -> None:
        """The scenario from start_s (default where the case resumed) to until_s, every block analysed."""
        src = FreeRunCase(SCENARIO, 1, speed=0.0, start_s=self.start_s if start_s is None else start_s)

        def upto() -> Iterator[EmgBlock]:
            for block in src:
                if block.t_s >= until_s - 1e-9:
                    return
                yield block

        done = self.engine.run_emg_source(upto())
        done.join(30)
        end = time.monotonic() + 30
        while self.engine.emg is None or self.engine.emg.t_s < until_s - 1e-6:
            assert time.monotonic() < end, "the free-run EMG did not reach %.0f s" % until_s
            time.sleep(0.02)
        self.engine.call(lambda: None)

    def alerts(self) -> list[dict[str, Any]]:
        self.store.flush()
        return [a for a in self.store.rows("alerts", self.case_id) if a["stream"] == freerun.STREAM]

    def close(self) -> None:
        self.engine.stop()
        self.store.close()


def test_events_reach_timeline_and_store_and_the_warning_comes_once_at_10_s(tmp_path: Path) -> None:
    run = Run(tmp_path)
    try:
        run.play(100.0)
        assert run.alerts() == []  # 6.1 s of A-train on orbicularis oris so far: below 10 s
        oris = run.engine.emg.channels[0]
        assert oris.name == ORIS and oris.facial and 5.0 < oris.a_train_s < 9.0, oris
        run.play(150.0, start_s=100.0)
        run.store.flush()
        alerts = run.alerts()
        assert [a["channel_name"] for a in alerts] == [ORIS]  # once, on the channel that passed it
        assert "cumulative A-train time" in alerts[0]["criterion"] and "warning at 10 s" in alerts[0]["criterion"]
        assert 135.0 < alerts[0]["t_s"] < 140.0  # when the train that crossed 10 s ended (classified at its end)
        assert run.engine.emg.channels[0].a_train_s >= 10.0 > run.engine.emg.channels[1].a_train_s
        # in the banner's groups and on the timeline
        group = run.engine.alerts.frame()["groups"][0]
        assert group["unacked"] == 1 and ORIS in group["latest"]["label"]
        lines = [e["text"] for e in run.engine.timeline if e["kind"] == "emg"]
        assert sum(ORIS + ": A-train" in t for t in lines) == 8  # 40 .. 135 s (the one at 150 s is under way)
        assert any(OCULI + ": A-train" in t for t in lines)
        # every event in the store (spikes and cautery too), each once
        stored = [p["body"] for p in run.store.rows("programs", run.case_id) if p["kind"] == "emg"]
        kinds = {e["kind"] for e in stored}
        assert {"a_train", "cautery"} <= kinds, kinds
        assert len({(e["t_s"], e["channel"], e["kind"]) for e in stored}) == len(stored)
        assert any(a["action"] == "alert" and a["detail"].get("stream") == freerun.STREAM
                   for a in run.store.rows("audit", run.case_id))
        # the page is sent the events and the display columns
        assert any('"k":"emgev"' in a and '"a_train"' in a for a in run.appends)
        assert any(a.startswith('{"k":"emg",') for a in run.appends)
    finally:
        run.close()


def test_the_threshold_is_configurable_and_applies_to_facial_channels_only(tmp_path: Path) -> None:
    run = Run(tmp_path, warn_s=0.5)
    try:
        run.play(65.0)
        by_channel = {a["channel_name"]: a for a in run.alerts()}
        # orbicularis oris passes 0.5 s with the train at 48 s (0.3 + 0.8), oculi with its 0.6 s at 61 s
        assert set(by_channel) == {ORIS, OCULI}
        assert 48.0 < by_channel[ORIS]["t_s"] < 50.0 and 61.0 < by_channel[OCULI]["t_s"] < 63.0
        assert "warning at 0.5 s" in by_channel[ORIS]["criterion"]
        assert run.engine.call(run.engine.snapshot)["frames"]["emg"]["warn_s"] == 0.5
    finally:
        run.close()
    assert freerun.is_facial("R orbicularis oculi") and freerun.is_facial("L mentalis")
    assert not freerun.is_facial("L tibialis anterior (L5)") and not freerun.is_facial("R vocalis")


def test_a_restart_keeps_the_cumulative_time_and_does_not_warn_again(tmp_path: Path) -> None:
    run = Run(tmp_path, warn_s=2.0)
    try:
        run.play(70.0)
        assert [a["channel_name"] for a in run.alerts()] == [ORIS]  # 2.6 s after the train at 60 s
        before = run.engine.emg.channels[0].a_train_s
    finally:
        run.close()
    run = Run(tmp_path, warn_s=2.0, resume=True)
    try:
        assert 61.5 < run.start_s < 70.0  # the end of the newest recorded event
        run.play(95.0)
        assert [a["channel_name"] for a in run.alerts()] == [ORIS]  # not raised again
        after = run.engine.emg.channels[0].a_train_s
        assert after == pytest.approx(before + 0.5 + 2.0, abs=0.1)  # the trains at 75 and 90 s added to it
        frame = run.engine.call(run.engine.snapshot)["frames"]["emg"]
        assert frame["channels"][0]["warned"] and frame["channels"][0]["a_train_s"] == pytest.approx(after, abs=1e-3)
        texts = [e["text"] for e in run.engine.timeline]
        assert any("A-train 1.50 s" in t for t in texts)  # the recorded events are on the resumed timeline
    finally:
        run.close()


def test_sound_is_packed_from_every_block_before_the_analysis(tmp_path: Path) -> None:
    run = Run(tmp_path)
    got: list[tuple[dict[str, Any], np.ndarray]] = []
    run.engine.subscribe_audio(lambda meta, pcm: got.append((meta, pcm.copy())))
    try:
        run.play(61.0, start_s=59.0)
        assert len(got) >= 100
        idx = [m["index0"] for m, _ in got]
        assert idx == list(range(idx[0], idx[0] + 160 * len(idx), 160))  # every 20-ms block, in order, none lost
        loud = max(int(np.abs(p[0]).max()) for _, p in got)
        assert loud * freerun.AUDIO_UV_PER_LSB > 100  # the A-train at 60 s (145 µV) is heard on orbicularis oris
        meta, pcm = got[-1]
        msg = freerun.audio_message(meta, pcm, [2, 0])
        head = freerun.AUDIO_HEADER.unpack_from(msg)
        assert head[:4] == (1, 2, 8000, 160) and head[4] == meta["t_s"] and head[6] == meta["index0"]
        off = freerun.AUDIO_HEADER.size
        assert list(msg[off : off + 2]) == [0, 2]  # the channels sent, in order
        samples = np.frombuffer(msg[off + 2 :], dtype="<i2").reshape(2, 160)
        assert np.array_equal(samples, pcm[[0, 2]])
    finally:
        run.close()


class StallingSource:
    """Delivers a second of blocks, then nothing until closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[EmgBlock]:
        names = (ORIS,)
        for k in range(50):
            yield EmgBlock(k * 0.02, k * 160, 8000.0, names, np.zeros((1, 160), dtype=np.float32),
                           acquired_wall=time.time())
            time.sleep(0.02)
        self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


def test_a_source_that_stops_delivering_raises_a_technical_alarm(tmp_path: Path) -> None:
    run = Run(tmp_path, stall_alarm_s=0.5)
    try:
        run.engine.run_emg_source(StallingSource())
        end = time.monotonic() + 10
        while "stall:" + freerun.STREAM not in run.engine.technical.active:
            assert time.monotonic() < end, "no technical alarm for a silent free-run source"
            time.sleep(0.05)
        assert run.engine.stats["emg_blocks"] == 50
        text = run.engine.technical.active["stall:" + freerun.STREAM].text
        assert text.startswith("no data from emg/free-run"), text
    finally:
        run.close()


def test_the_report_has_a_free_run_page_and_survives_the_warning(tmp_path: Path) -> None:
    from ionm.case.report import emg_lines, write_report

    run = Run(tmp_path, warn_s=2.0)
    try:
        run.play(70.0)
        run.store.flush()
        lines = emg_lines(run.store, run.case_id)
        total = "%.1f s" % run.engine.emg.channels[0].a_train_s
        assert any(line.strip().startswith(ORIS) and line.rstrip().endswith(total) for line in lines), lines
        assert any("A-train warnings" in line for line in lines)
        pages = write_report(run.store, run.case_id, str(tmp_path / "case.pdf"))
        assert pages >= 2 and (tmp_path / "case.pdf").stat().st_size > 1000
    finally:
        run.close()


def test_the_technologist_sets_the_threshold_during_the_case_and_it_outlives_a_restart(tmp_path: Path) -> None:
    from ionm.console.engine import CommandError

    run = Run(tmp_path)
    try:
        run.play(65.0)
        assert run.alerts() == []  # 2.6 s on orbicularis oris, 0.6 s on oculi: below 10 s
        with pytest.raises(CommandError):
            run.engine.submit("doc", "physician", {"cmd": "emg_warning", "s": 1.0}).result(10)
        assert run.engine.submit("tech", "technologist", {"cmd": "emg_warning", "s": 1.0}).result(10) == {"warn_s": 1.0}
        assert [a["channel_name"] for a in run.alerts()] == [ORIS]  # past the new threshold: warned at once
        assert "warning at 1 s" in run.alerts()[0]["criterion"]
        assert any(e["text"] == "free-run EMG: A-train warning at 1 s (was 10 s)" and e["user"] == "tech"
                   and e["t_s"] >= 64.9 for e in run.engine.timeline)  # at the free-run EMG's case time
        actions = [a["action"] for a in run.store.rows("audit", run.case_id)]
        assert "emg_warning" in actions and "denied" in actions
    finally:
        run.close()
    run = Run(tmp_path, resume=True)
    try:
        run.play(70.0)
        assert run.engine.call(run.engine.snapshot)["frames"]["emg"]["warn_s"] == 1.0
        assert [a["channel_name"] for a in run.alerts()] == [ORIS]
    finally:
        run.close()
