# Persistent state on the board's filesystem: calibration and the firmware slots. Every file is written
# atomically (a new file, then a rename over the old one), so a reset mid-write leaves the old or the new
# version, never a torn one. The board support names the directory (the flash root on the RP2350).
import json
import os

import messages as m


def path(bsp, name):
    d = bsp.state_dir()
    return d + "/" + name if d else "/" + name


def write_atomic(p, data):
    tmp = p + ".new"
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        os.remove(p)  # MicroPython's rename does not replace an existing file on every port
    except OSError:
        pass
    os.rename(tmp, p)


def read_json(p, default=None):
    try:
        with open(p) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def _int_list(body, key, n, bound, what):
    values = body.get(key)
    if not isinstance(values, list) or len(values) != n:
        raise m.ProtocolError(m.E_BAD_FIELD, "%s must be a list of %d integers" % (key, n))
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool):
            raise m.ProtocolError(m.E_BAD_FIELD, "%s[%d] must be an integer" % (key, i))
        if v > bound or v < -bound:
            raise m.ProtocolError(m.E_BAD_FIELD, "%s %d: %d is outside the plausible bound ±%d (board.json %s)"
                                  % (what, i, v, bound, key))
    return values


class Calibration:
    def __init__(self, bsp, defn):
        self.bsp = bsp
        self.n_adc = defn["adc"]["chips"] * defn["adc"]["channels_per_chip"]
        self.n_stim = defn["stimulator"]["outputs"]
        ab = defn["adc"]["calibration_bounds"]
        sb = defn["stimulator"]["calibration_bounds"]
        self.gain_ppm_max = int(ab["gain_correction_max"] * 1000000)
        self.offset_nv_max = int(ab["offset_max_uv"] * 1000)
        self.stim_ppm_max = int(sb["gain_correction_max"] * 1000000)
        self.data = read_json(path(bsp, "calibration.json")) or self.empty()

    def empty(self):
        return {"date": None, "operator": "", "adc_gain_ppm": [], "adc_offset_nv": [], "stim_gain_ppm": []}

    def validate(self, body):
        date = body.get("date")
        operator = body.get("operator")
        if not isinstance(date, str) or len(date) < 10 or not isinstance(operator, str) or not operator:
            raise m.ProtocolError(m.E_BAD_FIELD, "calibration needs an ISO 8601 date and an operator")
        return {"date": date, "operator": operator,
                "adc_gain_ppm": _int_list(body, "adc_gain_ppm", self.n_adc, self.gain_ppm_max, "ADC channel"),
                "adc_offset_nv": _int_list(body, "adc_offset_nv", self.n_adc, self.offset_nv_max, "ADC channel"),
                "stim_gain_ppm": _int_list(body, "stim_gain_ppm", self.n_stim, self.stim_ppm_max, "output")}

    def store(self, body):
        cal = self.validate(body)  # all or nothing
        try:
            write_atomic(path(self.bsp, "calibration.json"), json.dumps(cal).encode())
        except OSError as exc:
            raise m.ProtocolError(m.E_STORAGE, "calibration not stored: %s" % exc) from None
        self.data = cal
        return cal
