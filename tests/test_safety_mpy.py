"""The safety supervisor (firmware/safety.py) on MicroPython: every limit in board.json is accepted at its
boundary and refused one step over, with the specific error code, and a refused program changes nothing."""

from __future__ import annotations

import pytest
from mpyrun import run_json

from ionm import board
from ionm.protocol import messages as m

D = board.load()
S, ST = D["safety"], D["stimulator"]
STEP_UA, STEP_US = ST["current_step_ua"], ST["width_step_us"]
BASE = {"kind": "pulse", "output": 0, "current_ua": 10000, "width_us": 200, "rate_mhz": 4700}


def case(name, ok, code=None, **changes):
    prog = dict(BASE)
    prog.update(changes)
    return {"name": name, "programs": [prog], "ok": ok, "code": code}


def boundary_cases():
    i_max = int(S["current_ma_max"] * 1000)
    q_max_pc = int(S["charge_uc_per_phase_max"] * 1e6)
    w_at_q = (q_max_pc // i_max) // STEP_US * STEP_US  # widest pulse at full current within the charge limit
    cases = [
        case("current at max (short pulse)", True, current_ua=i_max, width_us=S["width_us_min"]),
        case("current one step over", False, m.E_LIMIT_CURRENT, current_ua=i_max + STEP_UA, width_us=S["width_us_min"]),
        case("current off the DAC step", False, m.E_LIMIT_CURRENT, current_ua=10050),
        case("width at min", True, width_us=S["width_us_min"]),
        case("width one step under min", False, m.E_LIMIT_WIDTH, width_us=S["width_us_min"] - STEP_US),
        case("width at max", True, width_us=S["width_us_max"], current_ua=10000),
        case("width one step over", False, m.E_LIMIT_WIDTH, width_us=S["width_us_max"] + STEP_US),
        case("charge at the limit", True, current_ua=i_max, width_us=w_at_q),
        case("charge one width step over", False, m.E_LIMIT_CHARGE, current_ua=i_max, width_us=w_at_q + STEP_US),
        case("output last", True, output=ST["outputs"] - 1),
        case("output past last", False, m.E_LIMIT_OUTPUT, output=ST["outputs"]),
        case("rate at max per output", True, rate_mhz=int(S["rate_hz_max_per_output"] * 1000) - 1, averaged=False),
        case("rate over max", False, m.E_LIMIT_RATE, rate_mhz=int(S["rate_hz_max_per_output"] * 1000) + 1),
        case("rate dividing 50 Hz mains", False, m.E_BAD_FIELD, rate_mhz=5000),
        case("rate dividing 60 Hz mains", False, m.E_BAD_FIELD, rate_mhz=3000),
        case("4.7 Hz is fine", True, rate_mhz=4700),
        case("negative current", False, m.E_LIMIT_CURRENT, current_ua=-100),
        case("current not an int", False, m.E_BAD_FIELD, current_ua=1.5),
        case("unknown waveform", False, m.E_BAD_FIELD, waveform="triangle"),
    ]
    tc = {"kind": "tcmep", "count": S["train_pulses_max"], "ipi_us": S["train_ipi_us_min"],
          "interval_ms": S["tcmep_train_interval_ms_min"]}
    cases += [
        {"name": "tcmep at limits", "programs": [tc], "ok": True, "code": None},
        {"name": "tcmep one pulse too many", "programs": [dict(tc, count=S["train_pulses_max"] + 1)], "ok": False,
         "code": m.E_LIMIT_TRAIN},
        {"name": "tcmep ipi too short", "programs": [dict(tc, ipi_us=S["train_ipi_us_min"] - 1)], "ok": False,
         "code": m.E_LIMIT_IPI},
        {"name": "tcmep ipi too long", "programs": [dict(tc, ipi_us=S["train_ipi_us_max"] + 1)], "ok": False,
         "code": m.E_LIMIT_IPI},
        {"name": "tcmep trains too close", "programs": [dict(tc, interval_ms=S["tcmep_train_interval_ms_min"] - 1)],
         "ok": False, "code": m.E_LIMIT_TRAIN_INTERVAL},
    ]
    per_out = int(S["rate_hz_max_per_output"] * 1000)
    half = per_out // 2 - 1
    cases.append({"name": "two programs on one output over its rate",
                  "programs": [dict(BASE, rate_mhz=half + 700, averaged=False), dict(BASE, rate_mhz=half + 700,
                                                                                    averaged=False)],
                  "ok": False, "code": m.E_LIMIT_RATE})
    total = int(S["rate_hz_max_total"] * 1000)
    spread = [dict(BASE, output=o, rate_mhz=per_out - 1, averaged=False) for o in range(ST["outputs"])]
    cases.append({"name": "all outputs together over the total rate", "programs": spread,
                  "ok": sum(p["rate_mhz"] for p in spread) <= total, "code": m.E_LIMIT_RATE})
    return cases


CODE = """
import boardcfg
import messages as m
from safety import Supervisor
sup = Supervisor(boardcfg.load())
for c in _IN:
    try:
        sup.check_programs(c["programs"])
        emit({"name": c["name"], "ok": True, "code": None, "detail": ""})
    except m.ProtocolError as e:
        emit({"name": c["name"], "ok": False, "code": e.code, "detail": e.detail})
"""


def test_every_limit_is_accepted_at_its_boundary_and_refused_one_step_over():
    cases = boundary_cases()
    results = {r["name"]: r for r in run_json(CODE, cases)}
    assert len(results) == len(cases)
    for c in cases:
        r = results[c["name"]]
        assert r["ok"] == c["ok"], (c["name"], r)
        if not c["ok"]:
            assert r["code"] == c["code"], (c["name"], r)
            assert r["detail"], c["name"]  # the refusal says why


def test_energy_is_computed_into_the_measured_impedance_and_capped_by_compliance():
    code = """
import boardcfg
from safety import Supervisor
sup = Supervisor(boardcfg.load())
out = []
for ohm in (500, 5000, 20000):
    sup.impedance_ohm[0] = ohm
    out.append(sup.energy_uj(0, 100000, 1000, 2))
emit(out)
"""
    (energies,) = run_json(code, None)
    v = D["stimulator"]["compliance_v"]
    expect = []
    for ohm in (500, 5000, 20000):
        i = min(0.1, v / ohm)
        expect.append(i * i * ohm * 1e-3 * 2 * 1e6)  # µJ
    assert energies == pytest.approx(expect, rel=1e-3)


# Every program kind the supervisor knows, with one example program (at `current_ua`, `width_us` on output 0)
# per kind that delivers current; None for a kind that delivers none through the board's outputs. A kind
# added to the firmware and not here fails test_the_kind_table_covers_every_kind_the_firmware_knows.
KIND_EXAMPLES: dict[str, dict | None] = {
    "pulse": {"kind": "pulse", "output": 0, "rate_mhz": 4700},
    "ramp": {"kind": "ramp", "output": 0, "step_ua": 100, "rate_mhz": 1000},  # stop_ua: the current under test
    "tof": {"kind": "tof", "output": 0},
    "tcmep": None,
    # the handheld probe's own output, limits and width: test_the_probe_output_holds_its_own_limits_at_every_check
    "probe": {"kind": "probe", "output": ST["probe"]["output"], "rate_mhz": 4000},
    # the earphones: no current stage; their own limits in dB nHL: test_the_earphones_hold_their_own_limits
    "click": None,
}
PROBE = ST["probe"]["output"]

GAIN_CODE = """
import boardcfg
import messages as m
from safety import Supervisor, KINDS

class Cal:
    def __init__(self, ppm):
        self.data = {"stim_gain_ppm": ppm}

emit(sorted(KINDS))
for c in _IN:
    sup = Supervisor(boardcfg.load(), Cal(c["ppm"]))
    try:
        sup.check_programs(c["programs"])
        emit({"ok": True, "code": None})
    except m.ProtocolError as e:
        emit({"ok": False, "code": e.code, "detail": e.detail})
"""


def _example(kind: str, current: int, width: int, waveform: str) -> dict:
    prog = dict(KIND_EXAMPLES[kind] or {})
    prog.update(width_us=width, waveform=waveform)
    if kind == "ramp":  # the ramp's highest step is the one under test
        prog.update(current_ua=STEP_UA, stop_ua=current)
    else:
        prog.update(current_ua=current)
    return prog


def test_limits_are_checked_on_the_current_the_output_is_driven_to_after_calibration_gain_for_every_kind():
    """Issue 17: with +10 % stim gain (allowed by the calibration bounds), 50 mA x 1000 us was accepted and the
    DAC driven to 55 mA (55 uC against the 50 uC limit). The limits hold on the calibrated DAC current, for
    every kind that delivers current, monophasic and biphasic (each phase), and with a negative gain the
    request itself still counts."""
    ppm_max = int(ST["calibration_bounds"]["gain_correction_max"] * 1e6)
    q_max_pc = int(S["charge_uc_per_phase_max"] * 1e6)
    i_max = int(S["current_ma_max"] * 1000)
    cases, expect = [], []
    for kind, ex in KIND_EXAMPLES.items():
        if ex is None or ex["output"] == PROBE:
            continue
        for waveform in ("monophasic", "biphasic"):
            w = S["width_us_max"]
            i_at_q = q_max_pc // w  # 50 mA at 1000 us: at the charge limit uncalibrated
            for ppm, current, width, ok, code in (
                (0, i_at_q, w, True, None),
                (ppm_max, i_at_q, w, False, m.E_LIMIT_CHARGE),  # 55 mA driven: over the charge limit
                (-ppm_max, i_at_q, w, True, None),  # the DAC below the request: the request is what counts
                (-ppm_max, i_at_q + STEP_UA, w, False, m.E_LIMIT_CHARGE),
                (0, i_max, S["width_us_min"], True, None),
                (ppm_max, i_max, S["width_us_min"], False, m.E_LIMIT_CURRENT),  # 110 mA driven
                (ppm_max, i_max * 10 // 11 // STEP_UA * STEP_UA, S["width_us_min"], True, None),
            ):
                gains = [ppm, 0, 0, 0]
                cases.append({"ppm": gains, "programs": [_example(kind, current, width, waveform)]})
                expect.append((kind, waveform, ppm, current, width, ok, code))
    out = run_json(GAIN_CODE, cases)
    results = out[1:]
    assert len(results) == len(expect)
    for (kind, waveform, ppm, current, width, ok, code), r in zip(expect, results, strict=True):
        assert (r["ok"], r["code"]) == (ok, code), (kind, waveform, ppm, current, width, r)


def test_the_kind_table_covers_every_kind_the_firmware_knows():
    (kinds,) = run_json(GAIN_CODE, [])
    assert kinds == sorted(KIND_EXAMPLES)


def test_impedance_from_the_readbacks_is_enforced_and_allocates_nothing():
    """safety.Supervisor on MicroPython: ohms = compliance voltage (10 mV units) / current-sense readback; less
    than a tenth of the requested current is an open circuit; an output above the limit, open or never
    measured may not stimulate; a measurement is the energy limit's R (at least the reference load). The
    per-pulse path (impedance_from, note_impedance, impedance_error when fine) runs under heap_lock."""
    code = """
import boardcfg
import micropython
from safety import Supervisor, OPEN, UNKNOWN
sup = Supervisor(boardcfg.load())
out = {"unmeasured": sup.impedance_error(0)}


def per_pulse(sup):  # locals only: a new global would allocate
    micropython.heap_lock()
    try:
        z_ok = sup.impedance_from(25000, 24800, 2480)  # 24.80 V at 24.8 mA: 1000 ohm
        sup.note_impedance(0, z_ok)
        fine = sup.impedance_error(0)
        z_max = sup.impedance_from(1000, 1000, 2000)  # 20.00 V at 1 mA: the limit itself
        z_open = sup.impedance_from(25000, 2499, 40000)  # less than a tenth flowed
        z_zero = sup.impedance_from(0, 0, 0)
    finally:
        micropython.heap_unlock()
    return z_ok, fine, z_max, z_open, z_zero


z_ok, fine, z_max, z_open, z_zero = per_pulse(sup)
out.update({"ok": z_ok, "fine": fine, "max": z_max, "open": z_open, "zero": z_zero, "energy_r": sup.impedance_ohm[0]})
sup.note_impedance(1, z_max)
out["at_limit"] = sup.impedance_error(1)
sup.note_impedance(1, z_max + 1)
out["over"] = sup.impedance_error(1)
sup.note_impedance(1, z_open)
out["open_err"] = sup.impedance_error(1)
sup.note_impedance(1, z_zero)
out["after_zero"] = sup.impedance_error(1)
sup.note_impedance(2, 5000)
out["energy_r2"] = sup.impedance_ohm[2]
sup.note_impedance(3, 300)
out["energy_r_low"] = sup.impedance_ohm[3]
out["consts"] = [OPEN, UNKNOWN]
emit(out)
"""
    (r,) = run_json(code, None)
    limit = int(S["impedance_ohm_max"])
    assert "not measured" in r["unmeasured"]
    assert r["ok"] == 1000 and r["fine"] is None and r["energy_r"] == 1000
    assert r["energy_r_low"] == int(S["energy_reference_ohm"])  # 300 ohm measured: the reference load still
    assert r["max"] == limit and r["at_limit"] is None
    assert "%d ohm is above the limit %d ohm" % (limit + 1, limit) in r["over"]
    assert r["open"] == r["consts"][0] and "open circuit" in r["open_err"]
    assert r["zero"] == r["consts"][1] and "open circuit" in r["after_zero"]  # a 0 µA pulse measures nothing
    assert r["energy_r2"] == 5000


PROBE_CODE = """
import boardcfg
import messages as m
from safety import Supervisor

class Cal:
    def __init__(self, ppm):
        self.data = {"stim_gain_ppm": ppm}

def outcome(f):
    try:
        f()
        return {"ok": True, "code": None}
    except m.ProtocolError as e:
        return {"ok": False, "code": e.code, "detail": e.detail}

for c in _IN:
    sup = Supervisor(boardcfg.load(), Cal(c["ppm"]))
    for p in c.get("programs", []):  # JSON has no NaN: the board gets a real one
        for k in p:
            if p[k] == "NaN":
                p[k] = float("nan")
    if "programs" in c:
        emit(outcome(lambda: sup.check_programs(c["programs"])))
    elif "arm" in c:  # what the scheduler checks as it arms a pulse: the delivered current and width
        o, cur, wid, ph = c["arm"]
        err = sup.delivery_error(o, sup.driven_ua(o, cur), wid, ph)
        emit({"ok": err is None, "code": err and err[0], "detail": err and err[1]})
    else:  # the readback of a delivered pulse
        req, meas = c["readback"]
        err = sup.readback_error(req, meas, 200, 1, c["output"])
        emit({"ok": err is None, "code": None, "detail": err})
"""


def test_the_probe_output_holds_its_own_limits_at_every_check():
    """Issue 20 item 1: the handheld probe is its own output (board.json stimulator.probe) with its own limits
    (safety.probe): at most 40 mA on the DAC step, 200 us only, monophasic, at most 5 Hz; only `probe` programs
    (and hunts) drive it, and no other kind may. Checked at stim-program, as each pulse is armed (delivery_error)
    and on the readback; a calibration of the other outputs changes nothing on it (it takes none)."""
    sp = S["probe"]
    i_max = int(sp["current_ma_max"] * 1000)
    w = sp["width_us"]
    r_max = int(sp["rate_hz_max"] * 1000)
    ppm_max = int(ST["calibration_bounds"]["gain_correction_max"] * 1e6)
    prog = {"kind": "probe", "output": PROBE, "current_ua": 10000, "rate_mhz": 4000}
    cases = [
        ("probe at its current limit", {"programs": [dict(prog, current_ua=i_max)]}, True, None),
        ("probe one step over", {"programs": [dict(prog, current_ua=i_max + STEP_UA)]}, False, m.E_LIMIT_CURRENT),
        ("probe off the DAC step", {"programs": [dict(prog, current_ua=10050)]}, False, m.E_LIMIT_CURRENT),
        ("probe NaN current", {"programs": [dict(prog, current_ua="NaN")]}, False, m.E_BAD_FIELD),
        ("probe at its width", {"programs": [dict(prog, width_us=w)]}, True, None),
        ("probe other width", {"programs": [dict(prog, width_us=w + STEP_US)]}, False, m.E_LIMIT_WIDTH),
        ("probe biphasic", {"programs": [dict(prog, waveform="biphasic")]}, False, m.E_BAD_FIELD),
        ("probe at its rate", {"programs": [dict(prog, rate_mhz=r_max)]}, True, None),
        ("probe over its rate", {"programs": [dict(prog, rate_mhz=r_max + 1)]}, False, m.E_LIMIT_RATE),
        ("probe kind on output 0", {"programs": [dict(prog, output=0)]}, False, m.E_LIMIT_OUTPUT),
        ("pulse kind on the probe", {"programs": [dict(BASE, output=PROBE)]}, False, m.E_LIMIT_OUTPUT),
        ("tof on the probe", {"programs": [{"kind": "tof", "output": PROBE, "current_ua": 10000, "width_us": w}]},
         False, m.E_LIMIT_OUTPUT),
        ("two probe programs over its rate", {"programs": [dict(prog, rate_mhz=r_max // 2 + 1)] * 2}, False,
         m.E_LIMIT_RATE),
        ("probe with full calibration gain elsewhere",
         {"programs": [dict(prog, current_ua=i_max)], "ppm": [ppm_max] * 4}, True, None),
        ("armed at its limit", {"arm": [PROBE, i_max, w, 1]}, True, None),
        ("armed one step over", {"arm": [PROBE, i_max + STEP_UA, w, 1]}, False, m.E_LIMIT_CURRENT),
        ("armed wider", {"arm": [PROBE, 1000, w + STEP_US, 1]}, False, m.E_LIMIT_WIDTH),
        ("the impedance probe pulse on it",
         {"arm": [PROBE, ST["impedance_probe"]["current_ua"], ST["impedance_probe"]["width_us"], 1]}, True, None),
        ("armed biphasic", {"arm": [PROBE, 1000, w, 2]}, False, m.E_LIMIT_WIDTH),
        ("armed on no output", {"arm": [PROBE + 1, 1000, w, 1]}, False, m.E_LIMIT_OUTPUT),
        ("readback at the limit", {"readback": [i_max, i_max + STEP_UA], "output": PROBE}, True, None),
        ("readback over the probe's limit", {"readback": [i_max, i_max + 2 * STEP_UA + 1], "output": PROBE}, False,
         None),
    ]
    data = [dict(c, ppm=c.get("ppm", [0, 0, 0, 0])) for _, c, _, _ in cases]
    results = run_json(PROBE_CODE, data)
    assert len(results) == len(cases)
    for (name, _c, ok, code), r in zip(cases, results, strict=True):
        assert r["ok"] == ok, (name, r)
        if not ok:
            assert r["detail"], name
            if code is not None:
                assert r["code"] == code, (name, r)


TOF_CODE = """
import boardcfg
import messages as m
from safety import Supervisor
from scheduler import Scheduler

class Bsp:
    def __init__(self):
        self.armed = []
    def arm_pulse(self, index, out, ua, us, bi):
        self.armed.append(index)
    def cancel_stimulation(self):
        return 0

sup = Supervisor(boardcfg.load())
for o in range(sup.n_outputs):
    sup.note_impedance(o, 2000)
bsp = Bsp()
sched = Scheduler(bsp, sup)
tof = sup.check_program({"kind": "tof", "output": 0, "current_ua": 30000, "width_us": 200})
sched.load([tof])
fs = 4000
out = []
for now_s in _IN:
    try:
        start = sched.start(int(now_s * fs), fs, 40)
        for i in range(start - 40, start + 2 * fs, 40):  # block by block over the train: its four pulses armed
            sched.tick(i, start + 10 * fs, 40)
        out.append({"ok": True, "armed": len(bsp.armed)})
    except m.ProtocolError as e:
        out.append({"ok": False, "code": e.code, "detail": e.detail, "armed": len(bsp.armed)})
sched.rebase(int((_IN[2] + 1) * fs), fs, fs, 0)  # 1 s after the last TOF, acquisition restarted at once
try:
    sched.start(0, fs, 40)
    out.append({"ok": True})
except m.ProtocolError as e:
    out.append({"ok": False, "code": e.code})
emit(out)
"""


def test_a_train_of_four_is_refused_sooner_than_15_s_after_the_last_even_across_a_restart():
    """Issue 20 item 5: at most one TOF per safety.tof_interval_ms_min on the board; a sooner stim-start is refused
    (limit-rate) with nothing armed, one at the interval is accepted, and an acquisition restart does not reset it."""
    gap_s = S["tof_interval_ms_min"] / 1000
    starts = [0.0, gap_s - 0.1, gap_s + 0.1, gap_s + 0.1 + gap_s / 2]
    (r,) = run_json(TOF_CODE, starts)
    assert r[0] == {"ok": True, "armed": 4}
    assert not r[1]["ok"] and r[1]["code"] == m.E_LIMIT_RATE and r[1]["armed"] == 4 and "15000 ms" in r[1]["detail"]
    assert r[2] == {"ok": True, "armed": 8}
    assert not r[3]["ok"] and r[3]["armed"] == 8
    assert r[4] == {"ok": False, "code": m.E_LIMIT_RATE}


def click_cases() -> list[dict]:
    """The earphones' (board.json stimulator.auditory, safety.auditory) limits at their boundaries."""
    sa, aud = S["auditory"], ST["auditory"]
    level_max = min(sa["level_db_nhl_max"], aud["level_db_nhl_max"])
    base = {"kind": "click", "output": aud["output"], "level_db": 80, "masking_db": 50, "polarity": "alternating",
            "ear": "L", "rate_mhz": 21100}

    def c(name: str, ok: bool, code: int | None = None, extra: list[dict] | None = None, **changes: object) -> dict:
        return {"name": name, "programs": [dict(base, **changes)] + (extra or []), "ok": ok, "code": code}

    lo, hi = int(sa["rate_hz_min"] * 1000), int(sa["rate_hz_max"] * 1000)
    return [
        c("the default click", True),
        c("level at max", True, level_db=level_max),
        c("level one dB over", False, m.E_LIMIT_LEVEL, level_db=level_max + 1),
        c("masking at max", True, level_db=level_max, masking_db=sa["masking_db_max"]),
        c("masking one dB over", False, m.E_LIMIT_LEVEL, level_db=level_max, masking_db=sa["masking_db_max"] + 1),
        c("masking above the click", False, m.E_LIMIT_LEVEL, level_db=40, masking_db=41),
        c("rate at min", True, rate_mhz=lo + 100),
        c("rate under min", False, m.E_LIMIT_RATE, rate_mhz=lo - 1),
        c("rate at max", True, rate_mhz=hi - 100),
        c("rate over max", False, m.E_LIMIT_RATE, rate_mhz=hi + 1),
        c("rate dividing 50 Hz mains", False, m.E_BAD_FIELD, rate_mhz=25000),
        c("width other than 100 us", False, m.E_LIMIT_WIDTH, width_us=aud["width_us"] + 10),
        c("an electrical output", False, m.E_LIMIT_OUTPUT, output=0),
        c("the TcMEP trigger", False, m.E_LIMIT_OUTPUT, output=-1),
        c("unknown polarity", False, m.E_BAD_FIELD, polarity="both"),
        c("no such ear", False, m.E_BAD_FIELD, ear="B"),
        c("level not an integer", False, m.E_BAD_FIELD, level_db=80.5),
        c("two click programs", False, m.E_LIMIT_RATE, extra=[dict(base, rate_mhz=11100)]),
        # no current from the earphones: beside four SSEP outputs whose rates fill the total, still accepted
        c("clicks beside a full total of electrical pulses", True,
          extra=[dict(BASE, output=o, rate_mhz=int(S["rate_hz_max_total"] * 1000) // 4 - 1, averaged=False)
                 for o in range(4)]),
    ]


def test_the_earphones_hold_their_own_limits() -> None:
    """Issue 22 item 3: clicks in dB nHL up to safety.auditory's level, masking never above the click nor its own
    maximum, 10-50 Hz and never a mains divisor (the BAEP is averaged), exactly 100 µs, on the earphones only, one
    program; no current, so the electrical rate total does not count them."""
    cases = click_cases()
    results = {r["name"]: r for r in run_json(CODE, cases)}
    for c in cases:
        r = results[c["name"]]
        assert (r["ok"], r["code"]) == (c["ok"], c["code"]), (c["name"], r)
        if not c["ok"]:
            assert r["detail"], c["name"]


CLICK_CODE = """
import boardcfg
from safety import Supervisor
from scheduler import Scheduler

class Bsp:
    def __init__(self):
        self.clicks, self.triggers, self.masking = [], [], None
    def arm_click(self, index, level, rare, right):
        self.clicks.append([index, level, rare, right])
    def arm_trigger_train(self, index, count, ipi_us, first, last):
        self.triggers.append(index)
    def set_masking(self, right, level):
        self.masking = [right, level]
    def cancel_stimulation(self):
        self.masking = None
        return 0

sup = Supervisor(boardcfg.load())
bsp = Bsp()
sched = Scheduler(bsp, sup)
fs, block = 8000, 64
click = sup.check_program(_IN["click"])
train = sup.check_program({"kind": "tcmep", "count": 5, "ipi_us": 3000, "interval_ms": 1000})
sched.load([click, train])
start = sched.start(0, fs, block)
masking = bsp.masking
deadline = start + 3 * fs  # the host stays in touch for 3 s
for i in range(0, start + 4 * fs, block):
    sched.tick(i, deadline, block)
out = {"start": start, "masking": masking, "clicks": bsp.clicks, "triggers": bsp.triggers}
sched.stop()
out["masking_after_stop"] = bsp.masking
emit(out)
"""


def test_clicks_alternate_hold_off_around_trains_stop_at_the_watchdog_deadline_and_mask_the_other_ear() -> None:
    """The scheduler on MicroPython: a right-ear click program at 21.1 Hz beside repeating TcMEP trains. The left
    ear is masked at its level from the start until the stop; the clicks alternate rarefaction / condensation at
    the program's level, keep their rate (never closer than 1/50 Hz), none falls in a train's hold-off, and none
    is armed past the watchdog deadline (the host's silence stops them like any pulse)."""
    fs = 8000
    prog = {"kind": "click", "output": ST["auditory"]["output"], "level_db": 85, "masking_db": 55,
            "polarity": "alternating", "ear": "R", "rate_mhz": 21100}
    (r,) = run_json(CLICK_CODE, {"click": prog})
    assert r["masking"] == [False, 55] and r["masking_after_stop"] is None  # the left ear, until any stop
    clicks = r["clicks"]
    assert all(c[1] == 85 and c[3] for c in clicks)
    assert [c[2] for c in clicks[:4]] == [True, False, True, False]
    idx = [c[0] for c in clicks]
    assert max(idx) < r["start"] + 3 * fs  # the watchdog deadline
    assert min(b - a for a, b in zip(idx, idx[1:], strict=False)) >= fs // int(S["auditory"]["rate_hz_max"])
    hold = ST["tcmep_holdoff_ms"]
    before, after = hold["before"] * fs // 1000, hold["after"] * fs // 1000
    span = 4 * 3000 * fs // 1_000_000
    assert len(r["triggers"]) >= 2
    for t in r["triggers"]:
        assert not [i for i in idx if t - before <= i <= t + span + after], t
    # between the trains the clicks keep their 21.1 Hz grid
    assert len(idx) >= 3 * 21.1 * 0.5
