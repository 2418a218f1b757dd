# The safety supervisor: every stimulation request is checked here against the limits in board.json before
# anything takes effect. A program is accepted whole or refused whole (no partial effect), with the error
# code of the first limit it breaks and a message that names the limit and the value. Integer units only
# (µA, µs, mHz, ms): the RP2350 port's floats are single precision.
#
# The limits hold on what the output is driven to deliver, not on the request alone (issue 17): the current
# checked is the larger of the request and the calibrated DAC setting (stim_gain_ppm applied), the charge
# limit holds for each phase of a pulse (two for biphasic), the energy limit for the sum of the phases into
# the output's impedance after compliance. Each program kind's parser lists every pulse shape it can deliver
# (KINDS below); check_program puts each of them through the same limit checks, so a kind added later is
# checked like the others. The scheduler checks each pulse again as it arms it, and the current-sense
# readback of each delivered pulse is checked again (readback_error).
#
# Electrode impedance: every pulse's compliance-voltage readback over its current-sense readback is the
# impedance of the output's electrodes (impedance_from); stim-start measures it first with a sub-threshold
# probe pulse on every output it starts. An output whose last measurement is above impedance_ohm_max, open,
# or missing is refused (limit-impedance at stim-start) and never armed (impedance_error); a delivered pulse
# that measures above the limit stops stimulation (a fault event). The measured impedance is also the R of
# the energy limit (at least energy_reference_ohm).
import messages as m
from micropython import const

MAINS_HZ = (50, 60)
OPEN = const(-1)  # impedance_from: less than a tenth of the requested current flowed (no current path)
UNKNOWN = const(-2)  # not measured (or a pulse of 0 µA, which measures nothing)


def _int_field(spec, name, lo=None, hi=None, code=m.E_BAD_FIELD):
    v = spec.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise m.ProtocolError(m.E_BAD_FIELD, "%s must be an integer" % name)
    if lo is not None and v < lo:
        raise m.ProtocolError(code, "%s %d is below the minimum %d" % (name, v, lo))
    if hi is not None and v > hi:
        raise m.ProtocolError(code, "%s %d is above the limit %d" % (name, v, hi))
    return v


class Supervisor:
    def __init__(self, defn, calibration=None):
        self.calibration = calibration  # storage.Calibration (its data["stim_gain_ppm"]), or None
        s = defn["safety"]
        st = defn["stimulator"]
        self.outputs = st["outputs"]  # outputs 0..outputs-1: pulse, ramp and TOF programs
        probe = st["probe"]  # the handheld probe: its own output, driven by probe programs and hunts only
        sp = s["probe"]
        self.probe_output = probe["output"]
        self.n_outputs = self.probe_output + 1  # every output stage, the probe's included
        self.probe_ua_max = int(min(sp["current_ma_max"], probe["current_ma_max"]) * 1000)
        self.probe_width_us = sp["width_us"]
        self.probe_rate_mhz_min = int(sp["rate_hz_min"] * 1000)
        self.probe_rate_mhz_max = int(sp["rate_hz_max"] * 1000)
        self.hunt_pulses_max = sp["hunt_pulses_max"]
        # the insert-earphone driver: its own output number (negative: no current stage), limits in dB nHL
        aud, sa = st["auditory"], s["auditory"]
        self.auditory_output = aud["output"]
        # (width µs, level dB nHL max, masking dB max, rate mHz min, rate mHz max): one attribute, not five (heap)
        self.clicks = (sa["width_us"], min(sa["level_db_nhl_max"], aud["level_db_nhl_max"]), sa["masking_db_max"],
                       int(sa["rate_hz_min"] * 1000), int(sa["rate_hz_max"] * 1000))
        self.current_ua_max = int(s["current_ma_max"] * 1000)
        self.current_step_ua = st["current_step_ua"]
        self.width_us_min = s["width_us_min"]
        self.width_us_max = s["width_us_max"]
        self.width_step_us = st["width_step_us"]
        self.charge_pc_max = int(s["charge_uc_per_phase_max"] * 1000000)  # µA·µs = pC
        self.energy_uj_max = int(s["energy_mj_per_pulse_max"] * 1000)
        self.reference_ohm = int(s["energy_reference_ohm"])
        self.compliance_v = int(st["compliance_v"])
        self.rate_mhz_max_output = int(s["rate_hz_max_per_output"] * 1000)
        self.rate_mhz_max_total = int(s["rate_hz_max_total"] * 1000)
        self.train_pulses_max = s["train_pulses_max"]
        self.train_ipi_us_min = s["train_ipi_us_min"]
        self.train_ipi_us_max = s["train_ipi_us_max"]
        self.train_interval_ms_min = s["tcmep_train_interval_ms_min"]
        self.tof_interval_ms_min = s["tof_interval_ms_min"]  # one train-of-four per 15 s at most (board-wide)
        self.watchdog_ms = s["watchdog_ms"]
        hold = st["tcmep_holdoff_ms"]  # no other stimulus this long around a TcMEP train (scheduler)
        self.holdoff_before_ms = hold["before"]
        self.holdoff_after_ms = hold["after"]
        self.impedance_ohm = [self.reference_ohm] * self.n_outputs  # the energy limit's R: measured, >= reference
        self.electrode_ohm = [UNKNOWN] * self.n_outputs  # the last measurement per output (ohms, OPEN, UNKNOWN)
        self.readback_tolerance_pct = s["over_current_tolerance_pct"]
        self.impedance_ohm_max = int(s["impedance_ohm_max"])
        zprobe = st["impedance_probe"]
        self.probe_ua = zprobe["current_ua"]
        self.probe_us = zprobe["width_us"]

    def limits(self):
        """The limits as the welcome's caps.stim gives them to the host (integers, SPEC 5.1)."""
        return {"current_ua_max": self.current_ua_max, "current_step_ua": self.current_step_ua,
                "width_us_min": self.width_us_min, "width_us_max": self.width_us_max,
                "width_step_us": self.width_step_us, "charge_nc_per_phase_max": self.charge_pc_max // 1000,
                "energy_uj_per_pulse_max": self.energy_uj_max, "energy_reference_ohm": self.reference_ohm,
                "compliance_v": self.compliance_v, "over_current_tolerance_pct": self.readback_tolerance_pct,
                "impedance_ohm_max": self.impedance_ohm_max, "rate_mhz_max_per_output": self.rate_mhz_max_output,
                "rate_mhz_max_total": self.rate_mhz_max_total, "train_pulses_max": self.train_pulses_max,
                "train_ipi_us_min": self.train_ipi_us_min, "train_ipi_us_max": self.train_ipi_us_max,
                "train_interval_ms_min": self.train_interval_ms_min, "tof_interval_ms_min": self.tof_interval_ms_min,
                "holdoff_ms_before": self.holdoff_before_ms,
                "holdoff_ms_after": self.holdoff_after_ms, "watchdog_ms": self.watchdog_ms,
                "waveforms": ["monophasic", "biphasic"],
                "probe": {"output": self.probe_output, "current_ua_max": self.probe_ua_max,
                          "width_us": self.probe_width_us, "rate_mhz_min": self.probe_rate_mhz_min,
                          "rate_mhz_max": self.probe_rate_mhz_max, "hunt_pulses_max": self.hunt_pulses_max},
                "auditory": {"output": self.auditory_output, "width_us": self.clicks[0],
                             "level_db_nhl_max": self.clicks[1], "masking_db_max": self.clicks[2],
                             "rate_mhz_min": self.clicks[3], "rate_mhz_max": self.clicks[4],
                             "polarities": ["rarefaction", "condensation", "alternating"]}}

    # -- what an output delivers ------------------------------------------------------------------------
    def dac_ua(self, output, current_ua):
        """The DAC setting that makes `output` deliver current_ua: the calibration gain applied, uncapped."""
        cal = self.calibration
        ppm = cal.data["stim_gain_ppm"] if cal is not None else None
        if not ppm or output < 0 or output >= len(ppm):  # the probe output takes no calibration entry
            return current_ua
        return current_ua * (1000000 + ppm[output]) // 1000000

    def driven_ua(self, output, current_ua):
        """The current the limits are checked on: the request or the DAC setting, whichever is larger (a
        calibration may be wrong: the DAC setting is what the output stage is told to deliver)."""
        dac = self.dac_ua(output, current_ua)
        return dac if dac > current_ua else current_ua

    def delivery_error(self, output, current_ua, width_us, phases):
        """None, or (code, detail) of the first limit a pulse of current_ua for width_us per phase breaks."""
        if not 0 <= output < self.n_outputs:
            return m.E_LIMIT_OUTPUT, "no stimulator output %d" % output
        limit = self.current_limit(output)
        if current_ua > limit:
            return m.E_LIMIT_CURRENT, ("output %d would be driven at %d µA, above the limit %d µA"
                                       % (output, current_ua, limit))
        if output == self.probe_output and (width_us > self.probe_width_us or phases != 1):
            # (its stimuli are exactly that wide, programs say so; the impedance probe's 50 µs pulse is shorter)
            return m.E_LIMIT_WIDTH, ("the probe output delivers monophasic pulses of at most %d µs (asked %d µs,"
                                     " %d phases)" % (self.probe_width_us, width_us, phases))
        for phase in range(phases):  # every phase carries the same charge on this output stage
            charge_pc = current_ua * width_us
            if charge_pc > self.charge_pc_max:
                return m.E_LIMIT_CHARGE, ("charge of phase %d: %d µA x %d µs = %d nC, above the limit %d nC"
                                          % (phase + 1, current_ua, width_us, charge_pc // 1000,
                                             self.charge_pc_max // 1000))
        energy = self.energy_uj(output, current_ua, width_us, phases)
        if energy > self.energy_uj_max:
            return m.E_LIMIT_ENERGY, ("energy %d µJ per pulse (%d phases) into %d ohm is above the limit %d µJ"
                                      % (energy, phases, self.impedance_ohm[output], self.energy_uj_max))
        return None

    def current_limit(self, output):
        """The current limit of an output: the probe's own, or the general one."""
        return self.probe_ua_max if output == self.probe_output else self.current_ua_max

    def rate_limit_mhz(self, output):
        """The rate limit of an output (its minimum interval is the inverse)."""
        if output == self.auditory_output:
            return self.clicks[4]
        return self.probe_rate_mhz_max if output == self.probe_output else self.rate_mhz_max_output

    def check_delivery(self, output, current_ua, width_us, phases):
        err = self.delivery_error(output, self.driven_ua(output, current_ua), width_us, phases)
        if err is not None:
            raise m.ProtocolError(err[0], err[1])

    def readback_error(self, requested_ua, measured_ua, width_us, phases, output=0):
        """None, or a sentence saying how a delivered pulse's current-sense readback broke a limit: more than
        over_current_tolerance_pct above the request (plus one DAC step), or above the current or charge
        limit by more than one DAC step."""
        step = self.current_step_ua
        if measured_ua > requested_ua + requested_ua * self.readback_tolerance_pct // 100 + step:
            return ("delivered %d µA for %d µA requested (tolerance %d %% + %d µA)"
                    % (measured_ua, requested_ua, self.readback_tolerance_pct, step))
        limit = self.current_limit(output)
        if measured_ua > limit + step:
            return "delivered %d µA, above the limit %d µA" % (measured_ua, limit)
        if (measured_ua - step) * width_us > self.charge_pc_max:
            return ("delivered %d nC per phase, above the limit %d nC"
                    % (measured_ua * width_us // 1000, self.charge_pc_max // 1000))
        return None

    # -- electrode impedance ----------------------------------------------------------------------------
    def impedance_from(self, requested_ua, measured_ua, voltage_10mv):
        """Ohms from one pulse's readbacks (current sense in µA, compliance voltage in 10 mV units): OPEN when
        less than a tenth of the requested current flowed, UNKNOWN for a pulse of 0 µA. Small integers only
        (at most 65535 x 10000): allocates nothing."""
        if requested_ua <= 0:
            return UNKNOWN
        if measured_ua * 10 < requested_ua:
            return OPEN
        return voltage_10mv * 10000 // measured_ua

    def note_impedance(self, output, ohm):
        """Record an output's measured impedance (UNKNOWN changes nothing)."""
        if ohm == UNKNOWN:
            return
        self.electrode_ohm[output] = ohm
        if ohm > 0:
            self.impedance_ohm[output] = ohm if ohm > self.reference_ohm else self.reference_ohm

    def impedance_error(self, output):
        """None, or why `output` must not stimulate: its last measured impedance is above the limit, open, or
        missing."""
        ohm = self.electrode_ohm[output]
        if ohm == OPEN:
            return "output %d: open circuit (the probe current found no path: electrode off or lead broken)" % output
        if ohm == UNKNOWN:
            return "output %d: electrode impedance not measured" % output
        if ohm > self.impedance_ohm_max:
            return ("output %d: electrode impedance %d ohm is above the limit %d ohm"
                    % (output, ohm, self.impedance_ohm_max))
        return None

    # -- single pulse ---------------------------------------------------------------------------------
    def check_pulse(self, spec):
        """(output, current_ua, width_us, biphasic) of a pulse spec's fields, or ProtocolError. The limits that
        depend on what is delivered are checked by check_program on every shape a program lists."""
        output = _int_field(spec, "output", 0, self.outputs - 1, m.E_LIMIT_OUTPUT)
        current = _int_field(spec, "current_ua", 0, self.current_ua_max, m.E_LIMIT_CURRENT)
        if current % self.current_step_ua:
            raise m.ProtocolError(m.E_LIMIT_CURRENT, "current_ua %d is not a multiple of the DAC step %d µA"
                                  % (current, self.current_step_ua))
        width = _int_field(spec, "width_us", self.width_us_min, self.width_us_max, m.E_LIMIT_WIDTH)
        if width % self.width_step_us:
            raise m.ProtocolError(m.E_LIMIT_WIDTH, "width_us %d is not a multiple of %d µs"
                                  % (width, self.width_step_us))
        waveform = spec.get("waveform", "monophasic")
        if waveform not in ("monophasic", "biphasic"):
            raise m.ProtocolError(m.E_BAD_FIELD, "waveform must be monophasic or biphasic")
        return output, current, width, waveform == "biphasic"

    def check_probe_pulse(self, spec, current_name="current_ua"):
        """current_ua of a probe-output pulse spec (output, current, width, waveform), or ProtocolError: the
        probe's output only, at most its current limit on the DAC step, its one width, monophasic."""
        output = spec.get("output", self.probe_output)
        if output != self.probe_output or isinstance(output, bool):
            raise m.ProtocolError(m.E_LIMIT_OUTPUT, "the probe is output %d (asked %r)" % (self.probe_output, output))
        current = _int_field(spec, current_name, 0, self.probe_ua_max, m.E_LIMIT_CURRENT)
        if current % self.current_step_ua:
            raise m.ProtocolError(m.E_LIMIT_CURRENT, "%s %d is not a multiple of the DAC step %d µA"
                                  % (current_name, current, self.current_step_ua))
        if "width_us" in spec:
            _int_field(spec, "width_us", self.probe_width_us, self.probe_width_us, m.E_LIMIT_WIDTH)
        if spec.get("waveform", "monophasic") != "monophasic":
            raise m.ProtocolError(m.E_BAD_FIELD, "the probe is monopolar: waveform must be monophasic")
        return current

    def energy_uj(self, output, current_ua, width_us, phases):
        """I²·R·t per pulse, all phases, into the output's measured impedance (at least the reference load),
        with the current the output stage can actually drive at its compliance voltage."""
        r = max(self.impedance_ohm[output], self.reference_ohm)
        i_ua = min(current_ua, self.compliance_v * 1000000 // r)
        # µA² · Ω · µs = 1e-18 J; in µJ: / 1e12. Split to stay within small ints on the board.
        return (i_ua * i_ua // 1000000) * r * width_us * phases // 1000000

    # -- programs --------------------------------------------------------------------------------------
    def check_rate(self, spec, averaged, output=0):
        rate = _int_field(spec, "rate_mhz", 1, self.rate_limit_mhz(output), m.E_LIMIT_RATE)
        if averaged:
            for mains in MAINS_HZ:
                # mains / rate an integer: mains sits at the same phase in every sweep and survives averaging
                if (mains * 1000 * 1000) % rate == 0:
                    raise m.ProtocolError(m.E_BAD_FIELD, "rate %d mHz divides %d Hz mains exactly: choose e.g. 4700"
                                          % (rate, mains))
        return rate

    def check_program(self, prog):
        """Validated program (a dict with integer fields) or ProtocolError. The kind's parser (KINDS) checks
        its fields and lists in "shapes" every (output, current_ua, width_us, biphasic) it can deliver; each
        shape is checked here against every delivery limit."""
        parse = KINDS.get(prog.get("kind"))
        if parse is None:
            raise m.ProtocolError(m.E_BAD_FIELD, "program kind %r is not one of %s"
                                  % (prog.get("kind"), ", ".join(sorted(KINDS))))
        p = parse(self, prog)
        for output, current, width, biphasic in p["shapes"]:
            self.check_delivery(output, current, width, 2 if biphasic else 1)
        return p

    def check_programs(self, progs):
        if not isinstance(progs, list) or not progs or len(progs) > 8:
            raise m.ProtocolError(m.E_BAD_FIELD, "programs must be a list of 1..8 programs")
        checked = []
        for i, prog in enumerate(progs):
            if not isinstance(prog, dict):
                raise m.ProtocolError(m.E_BAD_FIELD, "program %d is not a map" % i)
            checked.append(self.check_program(prog))
        trains = [p for p in checked if p["kind"] == "tcmep"]
        if len(trains) > 1:
            # a stim-start of all starts every program at the same sample: two TcMEP programs would put two
            # trains together, closer than the minimum train interval (validated whole, here, not at start)
            raise m.ProtocolError(m.E_LIMIT_TRAIN_INTERVAL, "%d TcMEP programs would start their trains together;"
                                  " trains must be at least %d ms apart: one TcMEP program per set"
                                  % (len(trains), self.train_interval_ms_min))
        clicks = [p for p in checked if p["kind"] == "click"]
        if len(clicks) > 1:
            raise m.ProtocolError(m.E_LIMIT_RATE, "%d click programs: the earphones take one (its rate is the"
                                  " limit's)" % len(clicks))
        per_output = [0] * self.n_outputs
        total = 0
        for p in checked:
            if p["kind"] in ("tcmep", "click"):  # no current from this board's output stages
                continue
            rate = p["rate_mhz"]
            per_output[p["output"]] += rate
            total += rate
        for out in range(self.n_outputs):
            if per_output[out] > self.rate_limit_mhz(out):
                raise m.ProtocolError(m.E_LIMIT_RATE, "output %d would pulse at %d mHz, above the limit %d mHz"
                                      % (out, per_output[out], self.rate_limit_mhz(out)))
        if total > self.rate_mhz_max_total:
            raise m.ProtocolError(m.E_LIMIT_RATE, "all outputs together would pulse at %d mHz, above the limit %d mHz"
                                  % (total, self.rate_mhz_max_total))
        return checked


# -- program kinds: each parser checks its fields and lists the pulse shapes the program can deliver --------
def _pulse(sup, prog):
    out, cur, wid, bi = sup.check_pulse(prog)
    rate = sup.check_rate(prog, prog.get("averaged", True))
    jitter = _int_field(prog, "jitter_us", 0, 100000) if "jitter_us" in prog else 0
    phase = _int_field(prog, "phase_us", 0, 10000000) if "phase_us" in prog else 0
    return {"kind": "pulse", "output": out, "current_ua": cur, "width_us": wid, "biphasic": bi, "rate_mhz": rate,
            "jitter_us": jitter, "phase_us": phase, "shapes": [(out, cur, wid, bi)]}


def _ramp(sup, prog):  # triggered-EMG threshold search: rising currents, one pulse per step
    out, cur0, wid, bi = sup.check_pulse(prog)
    stop = dict(prog)
    stop["current_ua"] = prog.get("stop_ua")
    _o, cur1, _w, _b = sup.check_pulse(stop)
    step = _int_field(prog, "step_ua", sup.current_step_ua, sup.current_ua_max)
    if step % sup.current_step_ua or cur1 < cur0:
        raise m.ProtocolError(m.E_BAD_FIELD, "ramp needs stop_ua >= current_ua and a step that is"
                              " a multiple of %d" % sup.current_step_ua)
    rate = sup.check_rate(prog, False)
    # every delivery limit grows with the current: the first and the highest step bound all the others
    last = cur0 + (cur1 - cur0) // step * step
    return {"kind": "ramp", "output": out, "current_ua": cur0, "stop_ua": cur1, "step_ua": step, "width_us": wid,
            "biphasic": bi, "rate_mhz": rate, "jitter_us": 0, "phase_us": 0,
            "shapes": [(out, cur0, wid, bi), (out, last, wid, bi)]}


def _tof(sup, prog):  # train-of-four: 4 pulses at 2 Hz
    out, cur, wid, bi = sup.check_pulse(prog)
    return {"kind": "tof", "output": out, "current_ua": cur, "width_us": wid, "biphasic": bi, "rate_mhz": 2000,
            "count": 4, "jitter_us": 0, "phase_us": 0, "shapes": [(out, cur, wid, bi)]}


def _tcmep(sup, prog):  # trains to the external constant-voltage stimulator through the trigger output
    count = _int_field(prog, "count", 1, sup.train_pulses_max, m.E_LIMIT_TRAIN)
    ipi = _int_field(prog, "ipi_us", sup.train_ipi_us_min, sup.train_ipi_us_max, m.E_LIMIT_IPI)
    interval = prog.get("interval_ms", 0)
    if interval:
        interval = _int_field(prog, "interval_ms", sup.train_interval_ms_min, 3600000, m.E_LIMIT_TRAIN_INTERVAL)
    # a logic trigger: no current from this board's outputs (the external stimulator has its own limits)
    return {"kind": "tcmep", "count": count, "ipi_us": ipi, "interval_ms": interval, "output": -1, "shapes": []}


def _probe(sup, prog):  # the handheld probe, manual mode: nerve mapping and screw testing at a set current
    cur = sup.check_probe_pulse(prog)
    out, wid = sup.probe_output, sup.probe_width_us
    rate = sup.check_rate(prog, False, out)
    return {"kind": "probe", "output": out, "current_ua": cur, "width_us": wid, "biphasic": False, "rate_mhz": rate,
            "jitter_us": 0, "phase_us": 0, "shapes": [(out, cur, wid, False)]}


def _click(sup, prog):  # BAEP clicks on the earphones: parsed by auditory.py, loaded only when a set has one
    import auditory

    return auditory.parse(sup, prog)


KINDS = {"pulse": _pulse, "ramp": _ramp, "tof": _tof, "tcmep": _tcmep, "probe": _probe, "click": _click}
