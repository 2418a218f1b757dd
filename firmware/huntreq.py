# The hunt request (SPEC 5.11): its parameters validated against the probe's limits and the acquisition, the
# probe's electrode measured, and the hunt put on the scheduler. The hunt itself runs in hunt.py.
import messages as m
from hunt import Hunt
from scheduler import HUNT_PID, Running

_HORIZON_MS = 20  # as the scheduler's: the first pulse is armed one horizon ahead


def _int(body, name, lo, hi, code_lo, code_hi):
    v = body.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise m.ProtocolError(m.E_BAD_FIELD, "%s must be an integer (got %r)" % (name, v))
    if v < lo:
        raise m.ProtocolError(code_lo, "%s %d is below the minimum %d" % (name, v, lo))
    if v > hi:
        raise m.ProtocolError(code_hi, "%s %d is above the limit %d" % (name, v, hi))
    return v


def parse(sup, body, cfg):
    """The hunt's parameters from a request body, validated against the probe's limits and the acquisition
    `cfg`; ProtocolError (nothing delivered) on any bad value."""
    if not isinstance(body, dict):
        raise m.ProtocolError(m.E_BAD_FIELD, "hunt body must be a map")
    out = body.get("output", sup.probe_output)
    if out != sup.probe_output or isinstance(out, bool):
        raise m.ProtocolError(m.E_LIMIT_OUTPUT, "hunts run on the probe output %d (asked %r)" % (sup.probe_output, out))
    step = sup.current_step_ua
    lo = _int(body, "lo_ua", step, sup.probe_ua_max, m.E_BAD_FIELD, m.E_LIMIT_CURRENT)
    hi = _int(body, "hi_ua", step, sup.probe_ua_max, m.E_BAD_FIELD, m.E_LIMIT_CURRENT)
    if lo % step or hi % step:
        raise m.ProtocolError(m.E_LIMIT_CURRENT, "lo_ua and hi_ua must be multiples of the DAC step %d µA" % step)
    if hi < lo:
        raise m.ProtocolError(m.E_BAD_FIELD, "need lo_ua <= hi_ua (got %d..%d)" % (lo, hi))
    res = _int(body, "resolution_ua", step, sup.probe_ua_max, m.E_BAD_FIELD, m.E_BAD_FIELD)
    if res % step:
        raise m.ProtocolError(m.E_BAD_FIELD, "resolution_ua must be a multiple of the DAC step %d µA" % step)
    rate = _int(body, "rate_mhz", sup.probe_rate_mhz_min, sup.probe_rate_mhz_max, m.E_BAD_FIELD, m.E_LIMIT_RATE)
    crit = _int(body, "p2p_uv", 10, 10000, m.E_BAD_FIELD, m.E_BAD_FIELD)
    win = body.get("window_ms")
    if (
        not isinstance(win, list)
        or len(win) != 2
        or any(not isinstance(w, int) or isinstance(w, bool) for w in win)
        or not 0 <= win[0] < win[1] <= 100
    ):
        raise m.ProtocolError(m.E_BAD_FIELD, "window_ms must be [start, end], integers, 0 <= start < end <= 100")
    maxp = sup.hunt_pulses_max
    if "max_pulses" in body:
        maxp = _int(body, "max_pulses", 1, sup.hunt_pulses_max, m.E_BAD_FIELD, m.E_BAD_FIELD)
    chans = body.get("channels")
    if (
        not isinstance(chans, list)
        or not chans
        or len(chans) > len(cfg.channels)
        or any(not isinstance(c, int) or isinstance(c, bool) or c not in cfg.channels for c in chans)
        or len(set(chans)) != len(chans)
    ):
        raise m.ProtocolError(
            m.E_BAD_FIELD, "channels must be distinct channels of the acquisition %r" % (cfg.channels,)
        )
    return out, lo, hi, res, step, rate, crit, win, maxp, chans


def start(h, sched, now_index, fs, block):
    """Run the hunt alongside the programs running, from the next horizon on. Returns its first sample."""
    sched.check_blocks(fs, block)
    out = h.output
    total = h.rate_mhz
    for run in sched.running:
        p = run.prog
        if p["kind"] == "tcmep" or run.pid == HUNT_PID:
            continue
        if p["output"] == out:
            raise m.ProtocolError(m.E_STATE, "output %d is busy with another program: stim-stop first" % out)
        total += p["rate_mhz"]
    if total > sched.sup.rate_mhz_max_total:
        raise m.ProtocolError(
            m.E_LIMIT_RATE,
            "all outputs together would pulse at %d mHz, above the limit %d mHz"
            % (total, sched.sup.rate_mhz_max_total),
        )
    if sched.hunt is not None and sched.hunt.reason is None:
        sched.hunt.reason = "replaced"
    start = now_index + max(fs * _HORIZON_MS // 1000, 2 * block)
    if sched.fs != fs:
        sched.fs = fs
    h.due = start
    sched.hunt = h
    sched.running = [r for r in sched.running if r.pid != HUNT_PID]
    sched.running.append(Running(HUNT_PID, {"kind": "hunt", "output": out, "hunt": h}, 0))
    return start


def request(fw, rid, body):
    """The hunt request (SPEC 5.11): validated whole (nothing delivered when refused), the probe's electrode
    measured first like stim-start's, then run by the scheduler and judged block by block."""
    acq = fw.acq
    if acq is None or not acq.running:
        raise m.ProtocolError(
            m.E_STATE, "start acquisition first: hunt pulses and responses are timed by the ADC sample clock"
        )
    sup = fw.supervisor
    h = Hunt(parse(sup, body, acq.cfg), acq.cfg, fw.chips, int(fw.defn["adc"]["vref_v"] * 1000000))
    sup.check_delivery(h.output, h.hi, sup.probe_width_us, 1)  # the highest pulse it may deliver
    fs = acq.cfg.rate_hz
    fw.scheduler.check_blocks(fs, acq.writer.nsamp)
    fw.probe_output(h.output)
    err = sup.impedance_error(h.output)
    if err is not None:
        raise m.ProtocolError(
            m.E_LIMIT_IMPEDANCE,
            err + ": the probe touches nothing conductive, or its return electrode is off; no hunt was started",
        )
    old = fw.scheduler.hunt
    if old is not None and old.reason is not None:
        old.report(fw)
    first = start(h, fw.scheduler, acq.next_index, fs, acq.writer.nsamp)
    fw.link.ack(rid, {"start_index": first, "channels": h.channels, "max_pulses": h.max_pulses})
