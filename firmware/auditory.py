# The insert earphones' click programs (board.json stimulator.auditory, limits safety.auditory; SPEC 5.8): a module of
# its own, imported by safety.py only when a program set holds a click program (and by app.py for a click's stim
# event), so that a board that never plays a click does not carry this code in its heap.
import messages as m
from safety import _int_field

POLARITIES = ("rarefaction", "condensation", "alternating")


def parse(sup, prog):
    width, level_max, masking_max, rate_min, rate_max = sup.clicks
    output = prog.get("output", sup.auditory_output)
    if output != sup.auditory_output or isinstance(output, bool):
        raise m.ProtocolError(m.E_LIMIT_OUTPUT, "the earphones are output %d (asked %r)"
                              % (sup.auditory_output, output))
    level = _int_field(prog, "level_db", 0, level_max, m.E_LIMIT_LEVEL)
    masking = _int_field(prog, "masking_db", 0, masking_max, m.E_LIMIT_LEVEL) if "masking_db" in prog else 0
    if masking > level:
        raise m.ProtocolError(m.E_LIMIT_LEVEL, "masking_db %d is above the click's %d dB nHL" % (masking, level))
    if "width_us" in prog:
        _int_field(prog, "width_us", width, width, m.E_LIMIT_WIDTH)
    polarity = prog.get("polarity", "alternating")
    if polarity not in POLARITIES:
        raise m.ProtocolError(m.E_BAD_FIELD, "polarity must be one of %s" % ", ".join(POLARITIES))
    ear = prog.get("ear", "L")
    if ear not in ("L", "R"):
        raise m.ProtocolError(m.E_BAD_FIELD, "ear must be L or R (the other one is masked)")
    rate = _int_field(prog, "rate_mhz", rate_min, rate_max, m.E_LIMIT_RATE)
    sup.check_rate(prog, True, sup.auditory_output)  # averaged: never a mains divisor
    phase = _int_field(prog, "phase_us", 0, 10000000) if "phase_us" in prog else 0
    # a random delay of each click, µs, at most a quarter period
    jitter = _int_field(prog, "jitter_us", 0, 250000000 // rate) if "jitter_us" in prog else 0
    return {"kind": "click", "output": sup.auditory_output, "level_db": level, "masking_db": masking,
            "polarity": polarity, "ear": ear, "width_us": width, "rate_mhz": rate, "jitter_us": jitter,
            "phase_us": phase, "current_ua": 0, "biphasic": False, "shapes": []}


def stim_event(index, output, program, level_db, flags):
    """The stim event of a click the earphones delivered (SPEC 5.5): the latch carries its level in dB nHL, and in
    its flags bit 0 rarefaction and bit 1 the right ear."""
    return {"kind": "stim", "index": index, "output": output, "program": program, "level_db": level_db,
            "polarity": "rarefaction" if flags & 1 else "condensation", "ear": "R" if flags & 2 else "L"}
