# The safety supervisor: every stimulation request is checked here against the limits in board.json before
# anything takes effect. A program is accepted whole or refused whole (no partial effect), with the error
# code of the first limit it breaks and a message that names the limit and the value. Integer units only
# (µA, µs, mHz, ms): the RP2350 port's floats are single precision.
import messages as m

MAINS_HZ = (50, 60)


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
    def __init__(self, defn):
        s = defn["safety"]
        st = defn["stimulator"]
        self.outputs = st["outputs"]
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
        self.watchdog_ms = s["watchdog_ms"]
        hold = st["tcmep_holdoff_ms"]  # no other stimulus this long around a TcMEP train (scheduler)
        self.holdoff_before_ms = hold["before"]
        self.holdoff_after_ms = hold["after"]
        self.impedance_ohm = [self.reference_ohm] * self.outputs  # refined from current-sense readback

    # -- single pulse ---------------------------------------------------------------------------------
    def check_pulse(self, spec):
        """(output, current_ua, width_us, biphasic) of a pulse spec, or ProtocolError."""
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
        charge_pc = current * width
        if charge_pc > self.charge_pc_max:
            raise m.ProtocolError(m.E_LIMIT_CHARGE, "charge per phase %d nC is above the limit %d nC"
                                  % (charge_pc // 1000, self.charge_pc_max // 1000))
        phases = 2 if waveform == "biphasic" else 1
        energy = self.energy_uj(output, current, width, phases)
        if energy > self.energy_uj_max:
            raise m.ProtocolError(m.E_LIMIT_ENERGY, "energy %d µJ per pulse into %d ohm is above the limit %d µJ"
                                  % (energy, self.impedance_ohm[output], self.energy_uj_max))
        return output, current, width, phases == 2

    def energy_uj(self, output, current_ua, width_us, phases):
        """I²·R·t per pulse, into the output's measured impedance (at least the reference load), with the
        current the output stage can actually drive at its compliance voltage."""
        r = max(self.impedance_ohm[output], self.reference_ohm)
        i_ua = min(current_ua, self.compliance_v * 1000000 // r)
        # µA² · Ω · µs = 1e-18 J; in µJ: / 1e12. Split to stay within small ints on the board.
        return (i_ua * i_ua // 1000000) * r * width_us * phases // 1000000

    # -- programs --------------------------------------------------------------------------------------
    def check_rate(self, spec, averaged):
        rate = _int_field(spec, "rate_mhz", 1, self.rate_mhz_max_output, m.E_LIMIT_RATE)
        if averaged:
            for mains in MAINS_HZ:
                # mains / rate an integer: mains sits at the same phase in every sweep and survives averaging
                if (mains * 1000 * 1000) % rate == 0:
                    raise m.ProtocolError(m.E_BAD_FIELD, "rate %d mHz divides %d Hz mains exactly: choose e.g. 4700"
                                          % (rate, mains))
        return rate

    def check_program(self, prog):
        """Validated program (a dict with integer fields) or ProtocolError. Kinds: pulse, tcmep, ramp, tof."""
        kind = prog.get("kind")
        if kind == "pulse":
            out, cur, wid, bi = self.check_pulse(prog)
            rate = self.check_rate(prog, prog.get("averaged", True))
            jitter = _int_field(prog, "jitter_us", 0, 100000) if "jitter_us" in prog else 0
            phase = _int_field(prog, "phase_us", 0, 10000000) if "phase_us" in prog else 0
            return {"kind": kind, "output": out, "current_ua": cur, "width_us": wid, "biphasic": bi, "rate_mhz": rate,
                    "jitter_us": jitter, "phase_us": phase}
        if kind == "ramp":  # triggered-EMG threshold search: rising currents, one pulse per step
            start = dict(prog)
            out, cur0, wid, bi = self.check_pulse(start)
            stop = dict(prog)
            stop["current_ua"] = prog.get("stop_ua")
            _o, cur1, _w, _b = self.check_pulse(stop)
            step = _int_field(prog, "step_ua", self.current_step_ua, self.current_ua_max)
            if step % self.current_step_ua or cur1 < cur0:
                raise m.ProtocolError(m.E_BAD_FIELD, "ramp needs stop_ua >= current_ua and a step that is"
                                      " a multiple of %d" % self.current_step_ua)
            rate = self.check_rate(prog, False)
            return {"kind": kind, "output": out, "current_ua": cur0, "stop_ua": cur1, "step_ua": step, "width_us": wid,
                    "biphasic": bi, "rate_mhz": rate, "jitter_us": 0, "phase_us": 0}
        if kind == "tof":  # train-of-four: 4 pulses at 2 Hz, repeated no sooner than every 10 s
            out, cur, wid, bi = self.check_pulse(prog)
            return {"kind": kind, "output": out, "current_ua": cur, "width_us": wid, "biphasic": bi, "rate_mhz": 2000,
                    "count": 4, "jitter_us": 0, "phase_us": 0}
        if kind == "tcmep":  # trains to the external constant-voltage stimulator through the trigger output
            count = _int_field(prog, "count", 1, self.train_pulses_max, m.E_LIMIT_TRAIN)
            ipi = _int_field(prog, "ipi_us", self.train_ipi_us_min, self.train_ipi_us_max, m.E_LIMIT_IPI)
            interval = prog.get("interval_ms", 0)
            if interval:
                interval = _int_field(prog, "interval_ms", self.train_interval_ms_min, 3600000,
                                      m.E_LIMIT_TRAIN_INTERVAL)
            return {"kind": kind, "count": count, "ipi_us": ipi, "interval_ms": interval, "output": -1}
        raise m.ProtocolError(m.E_BAD_FIELD, "program kind %r is not one of pulse, ramp, tof, tcmep" % (kind,))

    def check_programs(self, progs):
        if not isinstance(progs, list) or not progs or len(progs) > 8:
            raise m.ProtocolError(m.E_BAD_FIELD, "programs must be a list of 1..8 programs")
        checked = []
        for i, prog in enumerate(progs):
            if not isinstance(prog, dict):
                raise m.ProtocolError(m.E_BAD_FIELD, "program %d is not a map" % i)
            checked.append(self.check_program(prog))
        per_output = [0] * self.outputs
        total = 0
        for p in checked:
            if p["kind"] == "tcmep":
                continue
            rate = p["rate_mhz"]
            per_output[p["output"]] += rate
            total += rate
        for out in range(self.outputs):
            if per_output[out] > self.rate_mhz_max_output:
                raise m.ProtocolError(m.E_LIMIT_RATE, "output %d would pulse at %d mHz, above the limit %d mHz"
                                      % (out, per_output[out], self.rate_mhz_max_output))
        if total > self.rate_mhz_max_total:
            raise m.ProtocolError(m.E_LIMIT_RATE, "all outputs together would pulse at %d mHz, above the limit %d mHz"
                                  % (total, self.rate_mhz_max_total))
        return checked
