"""Electrode impedance through the virtual board (firmware on MicroPython, hardware model): stimulating
electrodes measured before delivery (probe pulse) and on every delivered pulse (compliance-voltage over
current-sense readback), enforced against safety.impedance_ohm_max; recording electrodes measured per channel
with the ADS1299's AC lead-off excitation. The delivered-pulse log is the judge of what reached the patient."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ionm import board
from ionm.board import link as ln
from ionm.protocol import messages as m

D = board.load()
LIMIT = D["safety"]["impedance_ohm_max"]


def logged(path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def wait_for(events: list[dict], pred, timeout: float = 15.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for e in list(events):
            if pred(e):
                return e
        time.sleep(0.05)
    raise AssertionError("no such event; got %s" % [e for e in events if e["kind"] != "stim"])


def board_link(vb, events: list[dict]) -> ln.BoardLink:
    link = ln.BoardLink(ln.open_port(vb.device), on_event=events.append, heartbeat_s=0.025)
    ln.connect(link, timeout=10)
    return link


def test_an_output_above_the_impedance_limit_is_refused_before_any_stimulus_for_every_kind(tmp_path):
    """The issue's case: an electrode at 30 kΩ against a 20 kΩ limit received 8 pulses. Now stim-start
    measures it with a sub-threshold probe and refuses with limit-impedance, for every program kind that drives
    the output, and nothing but the probes reaches it; the other output, at 1 kΩ, runs and reports its
    impedance with every pulse."""
    from ionm.board.virtual import VirtualBoard

    log = tmp_path / "pulses.jsonl"
    events: list[dict] = []
    with VirtualBoard(bench=True, pulse_log=str(log), faults=["impedance:1:30000"],
                      stderr=open(tmp_path / "err", "w")) as vb:
        link = board_link(vb, events)
        try:
            link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 20})
            link.request(m.START, {})
            kinds = [
                {"kind": "pulse", "output": 1, "current_ua": 5000, "width_us": 200, "rate_mhz": 4700},
                {"kind": "pulse", "output": 1, "current_ua": 5000, "width_us": 200, "rate_mhz": 4700,
                 "waveform": "biphasic"},
                {"kind": "ramp", "output": 1, "current_ua": 1000, "stop_ua": 5000, "step_ua": 1000, "width_us": 200,
                 "rate_mhz": 2000},
                {"kind": "tof", "output": 1, "current_ua": 5000, "width_us": 200},
            ]
            for prog in kinds:
                link.request(m.STIM_PROGRAM, {"programs": [
                    {"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200, "rate_mhz": 4700}, prog]})
                with pytest.raises(ln.BoardError) as err:
                    link.request(m.STIM_START, {})  # all: refused whole, output 0 does not start either
                assert err.value.code == m.E_LIMIT_IMPEDANCE, prog
                assert "output 1" in err.value.detail and "above the limit %d ohm" % LIMIT in err.value.detail
                with pytest.raises(ln.BoardError) as err:
                    link.request(m.STIM_START, {"program": 1})
                assert err.value.code == m.E_LIMIT_IMPEDANCE
            link.request(m.STIM_START, {"program": 0})  # the good output alone
            wait_for(events, lambda e: e["kind"] == "stim" and e["output"] == 0)
            time.sleep(0.5)
            link.request(m.STIM_STOP, {})
        finally:
            link.close()
    delivered = logged(log)
    assert not [p for p in delivered if p["output"] == 1 and not p["probe"]]
    probes = [p for p in delivered if p["probe"]]
    assert {p["output"] for p in probes} == {0, 1}
    for p in probes:  # sub-threshold: board.json's probe, about 50 nC
        assert p["requested_ma"] * 1000 == D["stimulator"]["impedance_probe"]["current_ua"]
        assert p["width_us"] == D["stimulator"]["impedance_probe"]["width_us"] and not p["biphasic"]
    stims = [e for e in events if e["kind"] == "stim"]
    assert stims and {e["output"] for e in stims} == {0}
    for e in stims:  # the bench load is 1 kΩ; the readbacks' errors are a few tenths of a percent
        assert e["impedance_ohm"] == pytest.approx(1000, rel=0.02)
    assert not [e for e in events if e["kind"] == "fault"]


def restart(link, pid: int) -> None:
    """Start program pid again after a spurious watchdog stop. The train-of-four (program 0) may not run again within
    15 s (`limit-rate`) until its electrode has gone up, which the board measures first and refuses with
    `limit-impedance`: asked again every 0.2 s while it is the 15-s rule that refuses (at most 16 s)."""
    end = time.monotonic() + 16.0
    while True:
        try:
            link.request(m.STIM_START, {"program": pid})
            return
        except ln.BoardError as exc:
            if exc.code != m.E_LIMIT_RATE or pid != 0 or time.monotonic() > end:
                raise
        time.sleep(0.2)


def test_an_impedance_rising_during_stimulation_stops_it_with_a_fault_for_every_kind(tmp_path):
    """Each output's electrode goes to 30 kΩ at a given model time (from 1.2, 3.5 and 6 s on). The first pulse
    delivered into it measures it; the board stops all stimulation with a fault event (fault impedance) that
    names the output and the impedance, and nothing more reaches that output. 5 mA into 30 kΩ is 150 V: within
    compliance, so it is the impedance limit, not the compliance flag, that stops it."""
    from ionm.board.virtual import VirtualBoard

    log = tmp_path / "pulses.jsonl"
    events: list[dict] = []
    faults = ["impedance:2:30000:1.2", "impedance:1:30000:3.5", "impedance:0:30000:6.0"]
    with VirtualBoard(bench=True, pulse_log=str(log), faults=faults, stderr=open(tmp_path / "err", "w")) as vb:
        link = board_link(vb, events)
        try:
            link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 20})
            link.request(m.START, {})
            link.request(m.STIM_PROGRAM, {"programs": [
                {"kind": "tof", "output": 2, "current_ua": 5000, "width_us": 200},
                {"kind": "ramp", "output": 1, "current_ua": 1000, "stop_ua": 20000, "step_ua": 1000, "width_us": 100,
                 "rate_mhz": 2000, "waveform": "biphasic"},
                {"kind": "pulse", "output": 0, "current_ua": 5000, "width_us": 200, "rate_mhz": 4700,
                 "waveform": "biphasic"}]})
            refused_at_restart = set()
            for pid, out in ((0, 2), (1, 1), (2, 0)):
                link.request(m.STIM_START, {"program": pid})
                seen = len(events)
                end = time.monotonic() + 20
                while not [e for e in events if e["kind"] == "fault" and e["output"] == out]:
                    assert time.monotonic() < end, [e for e in events if e["kind"] not in ("stim", "status")]
                    if [e for e in events[seen:] if e["kind"] == "watchdog"]:
                        # a spurious watchdog trip on a loaded machine (docs/SAFETY.md): start it again, which
                        # is refused if the electrode has gone up meanwhile (measured before delivery)
                        seen = len(events)
                        try:
                            restart(link, pid)
                        except ln.BoardError as exc:
                            assert exc.code == m.E_LIMIT_IMPEDANCE and "output %d" % out in exc.detail
                            refused_at_restart.add(out)
                            break
                    time.sleep(0.05)
            time.sleep(0.5)
            with pytest.raises(ln.BoardError) as err:  # still 30 kΩ: refused before delivery now
                link.request(m.STIM_START, {"program": 2})
            assert err.value.code == m.E_LIMIT_IMPEDANCE
        finally:
            link.close()
    fault_events = [e for e in events if e["kind"] == "fault"]
    assert [e["output"] for e in fault_events] == [o for o in (2, 1, 0) if o not in refused_at_restart]
    assert fault_events
    delivered = [p for p in logged(log) if not p["probe"]]
    for out in refused_at_restart:
        assert not [p for p in delivered if p["output"] == out and p["impedance_ohm"] > LIMIT]
    for e in fault_events:
        out = e["output"]
        assert e["fault"] == "impedance" and e["impedance_ohm"] == pytest.approx(30000, rel=0.02)
        assert "above the limit %d ohm" % LIMIT in e["detail"] and "stimulation stopped" in e["detail"]
        high = [p for p in delivered if p["output"] == out and p["impedance_ohm"] > LIMIT]
        assert len(high) == 1 and high[0]["index"] == e["index"]  # the pulse that measured it, and no other
        assert not high[0]["compliance_limited"]
        stim = [s for s in events if s["kind"] == "stim" and s["output"] == out]
        assert stim[-1]["index"] == e["index"] and stim[-1]["impedance_ohm"] == e["impedance_ohm"]
        assert all(s["impedance_ohm"] == pytest.approx(1000, rel=0.02) for s in stim[:-1]) and len(stim) >= 2


def _fs4_amplitude(counts: np.ndarray) -> np.ndarray:
    """Per channel, the amplitude of the fDR/4 component (what AC lead-off excitation would add)."""
    n = len(counts) // 4 * 4
    x = counts[:n].astype(float)
    i = (x[0::4] - x[2::4]).sum(axis=0)
    q = (x[1::4] - x[3::4]).sum(axis=0)
    return np.hypot(i, q) / (2 * np.sqrt(2) * (n // 4))


def test_the_impedance_check_measures_every_channel_and_output_and_leaves_acquisition_as_configured(tmp_path):
    """Bench wiring: each channel's P input sees the divider's ~100 Ω, its N input ground; channel 3's P lead
    is 12 kΩ instead, channel 5's is open; output 2's electrodes are 5 kΩ, the others the 1 kΩ load."""
    from ionm.board.virtual import VirtualBoard

    events: list[dict] = []
    blocks: list[ln.DataBlock] = []
    faults = ["lead:3:12000", "lead:5:1e12", "impedance:2:5000"]
    with VirtualBoard(bench=True, faults=faults, stderr=open(tmp_path / "err", "w")) as vb:
        link = ln.BoardLink(ln.open_port(vb.device), on_event=events.append, on_data=blocks.append,
                            heartbeat_s=0.025)
        try:
            ln.connect(link, timeout=10)
            link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 40})
            r = link.request(m.IMPEDANCE, {}, timeout=10)
            assert [c["channel"] for c in r["channels"]] == list(range(16))
            assert [o["output"] for o in r["outputs"]] == list(range(4))
            assert r["limit_ohm"] == LIMIT and r["lead_off_current_na"] == 24 and r["frequency_hz"] == 125
            ch = {c["channel"]: c["ohm"] for c in r["channels"]}
            assert ch[3] == pytest.approx(12000, rel=0.02)  # (the fault replaces the divider's 100 Ω)
            assert ch[5] is None  # open: the input is driven to the rail
            for c in set(range(16)) - {3, 5}:
                assert ch[c] == pytest.approx(100, abs=25)
            out = {o["output"]: o["ohm"] for o in r["outputs"]}
            assert out[2] == pytest.approx(5000, rel=0.02)
            assert [out[0], out[1], out[3]] == pytest.approx([1000] * 3, rel=0.02)
            # a subset, and bad indices refused
            r = link.request(m.IMPEDANCE, {"channels": [3], "outputs": []}, timeout=10)
            assert len(r["channels"]) == 1 and r["outputs"] == []
            with pytest.raises(ln.BoardError) as err:
                link.request(m.IMPEDANCE, {"outputs": [4]})
            assert err.value.code == m.E_LIMIT_OUTPUT
            with pytest.raises(ln.BoardError) as err:
                link.request(m.IMPEDANCE, {"channels": [1, 1]})
            assert err.value.code == m.E_BAD_FIELD
            # the configured acquisition runs as configured: no lead-off excitation left on any channel
            link.request(m.START, {})
            with pytest.raises(ln.BoardError) as err:  # and the check is refused while acquiring
                link.request(m.IMPEDANCE, {})
            assert err.value.code == m.E_STATE
            time.sleep(0.5)
            link.request(m.STOP, {})
        finally:
            link.close()
    counts = np.concatenate([b.counts for b in blocks])
    assert len(counts) >= 1000
    # 24 nA x 100 Ω at gain 24 would be ~107 counts at fDR/4; 12 kΩ, ~12900
    assert _fs4_amplitude(counts).max() < 5


def test_recording_lead_impedance_matches_the_patients_electrodes(tmp_path):
    """On the virtual patient (EEG, EMG and mains on every channel) each channel's lead impedance is its two
    electrodes' impedances in series, within 3 %."""
    from ionm.board.virtual import VirtualBoard
    from ionm_hw.patient import VirtualPatient, load_scenario

    with VirtualBoard(scenario="stable", seed=3, stderr=open(tmp_path / "err", "w")) as vb:
        link = board_link(vb, [])
        try:
            r = link.request(m.IMPEDANCE, {"outputs": []}, timeout=10)
        finally:
            link.close()
    truth = VirtualPatient(load_scenario("stable"), 3, 500.0).lead_impedance_ohm(0).sum(axis=1)
    got = np.array([c["ohm"] for c in r["channels"]], dtype=float)
    assert got == pytest.approx(truth, rel=0.03)
    assert truth.min() >= 2000 and truth.max() <= 12000  # needle electrodes, two per channel


def test_ionm_impedance_on_the_virtual_board_names_the_high_electrodes_and_exits_1(tmp_path):
    from conftest import run_ionm

    res = run_ionm("impedance", "--sim", "--fault", "impedance:1:30000", "--fault", "lead:3:14000", "--json")
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["board"]["support"] == "virtual" and not out["ok"]
    status = {c["channel"]: c["status"] for c in out["channels"]}
    assert status[3] == "high" and [s for c, s in status.items() if c != 3] == ["ok"] * 15
    outs = {o["output"]: o for o in out["outputs"]}
    assert outs[1]["status"] == "high" and outs[1]["ohm"] == pytest.approx(30000, rel=0.02)
    assert outs[1]["name"] == "R median" and outs[1]["limit_ohm"] == LIMIT
    assert [outs[o]["status"] for o in (0, 2, 3)] == ["ok"] * 3
    res = run_ionm("impedance", "--sim", "--channels", "0,15", "--outputs", "none")
    assert res.returncode == 0, res.stderr
    assert "C3'-Fz" in res.stdout and "Cz'-Fpz" in res.stdout and "all electrodes good" in res.stdout
    assert "L median" not in res.stdout


def test_the_console_source_checks_the_electrodes_before_the_case_and_follows_the_stimulating_ones(tmp_path):
    """BoardCase (the console's live-board source) runs the check before acquisition starts: link health
    gives each channel's lead impedance and each SSEP site's stimulating electrodes, the latter updated by
    the impedance every delivered pulse measures."""
    from ionm.board.boardcase import BoardCase
    from ionm.board.virtual import VirtualBoard
    from ionm_hw.patient import VirtualPatient, load_scenario

    with VirtualBoard(scenario="stable", seed=5, faults=["lead:2:40000"], stderr=open(tmp_path / "err", "w")) as vb:
        case = BoardCase(vb.device)
        try:
            health0 = case.link_health()
            end = time.monotonic() + 10
            seen: set[str] = set()
            while time.monotonic() < end and len(seen) < 4:  # every site's pulses reported their impedance
                seen |= {e for e in case.stim_impedance if case.stim_impedance[e] is not None}
                time.sleep(0.2)
            health = case.link_health()
        finally:
            case.close()
    leads = health0["lead_impedance_ohm"]
    assert len(leads) == 16 and health0["lead_impedance_good_ohm"] == 10000
    name2 = [n for n in leads if n.startswith("CPz-CP4")][0]
    assert leads[name2] > 40000  # the fault's 40 kΩ P electrode and the patient's N electrode
    assert sum(1 for v in leads.values() if v is not None and v <= 10000) == 15
    patient = VirtualPatient(load_scenario("stable"), 5, 8000.0)
    stim = health["stim_impedance_ohm"]
    assert sorted(stim) == ["L median", "L tibial", "R median", "R tibial"]
    for o, site in enumerate(("L median", "R median", "L tibial", "R tibial")):
        assert stim[site] == pytest.approx(patient.stim_impedance_ohm(o, 0), rel=0.05)


def test_a_probe_that_finds_an_output_above_the_limit_stops_the_program_running_on_it_before_its_next_pulse(tmp_path):
    """A program on output 1 at 0.2 Hz runs; its electrode goes to 30 kΩ between two pulses. Starting it again
    probes the output: refused (limit-impedance), and the program already running is not armed again: the
    board stops stimulation with fault impedance as that pulse comes due, and no stimulus reaches 30 kΩ."""
    from ionm.board.virtual import VirtualBoard

    log = tmp_path / "pulses.jsonl"
    events: list[dict] = []
    fs = 4000
    with VirtualBoard(bench=True, pulse_log=str(log), faults=["impedance:1:30000:1.0"],
                      stderr=open(tmp_path / "err", "w")) as vb:
        link = board_link(vb, events)
        try:
            link.request(m.CONFIGURE, {"rate_hz": fs, "samples_per_frame": 20})
            link.request(m.START, {})
            link.request(m.STIM_PROGRAM, {"programs": [{"kind": "pulse", "output": 1, "current_ua": 5000,
                                                        "width_us": 200, "rate_mhz": 200, "averaged": False}]})
            link.request(m.STIM_START, {})
            wait_for(events, lambda e: e["kind"] == "stim" and e["output"] == 1)
            wait_for(events, lambda e: e["kind"] == "status" and e["index"] > 1.2 * fs)  # past the rise
            with pytest.raises(ln.BoardError) as err:
                link.request(m.STIM_START, {"program": 0})
            assert err.value.code == m.E_LIMIT_IMPEDANCE and "output 1" in err.value.detail
            fault = wait_for(events, lambda e: e["kind"] in ("fault", "watchdog"), timeout=15)
        finally:
            link.close()
    if fault["kind"] == "watchdog":  # a spurious trip on a loaded machine stopped the program first
        pytest.skip("the watchdog stopped stimulation before the program's next pulse (docs/SAFETY.md)")
    assert fault["fault"] == "impedance" and fault["output"] == 1
    assert "refused as it was armed" in fault["detail"] and "30" in fault["detail"]
    delivered = [p for p in logged(log) if not p["probe"]]
    assert len(delivered) == 1 and delivered[0]["impedance_ohm"] == 1000  # the pulse before the rise, only
    probes = [p for p in logged(log) if p["probe"]]
    assert [p["impedance_ohm"] for p in probes] == [1000, 30000]
