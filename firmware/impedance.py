# Electrode impedance (issue 17): the recording electrodes' lead impedance per channel, the ADS1299 way.
#
# AC lead-off (ADS1299 datasheet SBAS499C, lead-off detection): with LOFF.FLEAD_OFF = fDR/4 the chip sources
# ILEAD_OFF into each channel's P electrode and sinks it from its N electrode, reversing the current every two
# conversions, so a channel reads a square wave of ILEAD_OFF x (Z_P + Z_N) on top of whatever the patient
# produces. Its amplitude is recovered by demodulating at fDR/4: in phase, samples 0 minus 2 of every 4; in
# quadrature, 1 minus 3. That rejects DC (electrode offsets of hundreds of mV) and, over the settings in
# board.json (adc.impedance_check: 500 SPS, 125 Hz excitation, 0.4 s), 50/60 Hz mains and its harmonics
# exactly. For a square wave aligned to the conversions (what the hardware model produces) each of I and Q
# is 2A per period, so A = sqrt(I^2 + Q^2) / (2 sqrt(2) periods). A sample within 1/64 of full scale means
# the input sits at a rail: the electrode is open (no current path), reported as OPEN (-1).
#
# The stimulating electrodes' impedance is measured by the output stage itself (safety.Supervisor.
# impedance_from: the compliance-voltage readback over the current-sense readback of a pulse, or of a
# sub-threshold probe pulse before any stimulus: app.Firmware.probe_output).
#
# The firmware imports this module only for the check (app.Firmware.on_impedance) and drops it afterwards.
import messages as m
from ads1299 import BYTES_PER_CHIP
from micropython import const

_FULL_SCALE = const(8388607)
_RAIL = const(8257536)  # 63/64 of full scale
_STATUS_BYTES = const(3)
OPEN = const(-1)


def index_list(body, name, n, code):
    """body[name] as a list of distinct indices 0..n-1 (absent: all of them), or ProtocolError."""
    if name not in body:
        return list(range(n))
    v = body[name]
    if not isinstance(v, list) or len(v) > n:
        raise m.ProtocolError(m.E_BAD_FIELD, "%s must be a list of distinct indices 0..%d" % (name, n - 1))
    seen = 0
    for i in v:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
            raise m.ProtocolError(code, "%s: %r is not an index 0..%d" % (name, i, n - 1))
        if seen >> i & 1:
            raise m.ProtocolError(m.E_BAD_FIELD, "%s: %d is listed twice" % (name, i))
        seen |= 1 << i
    return v


class LeadImpedance:
    def __init__(self, bsp, adc, defn):
        a = defn["adc"]
        c = a["impedance_check"]
        self.bsp = bsp
        self.adc = adc
        self.chips = a["chips"]
        self.rate_hz = c["rate_hz"]
        self.gain = c["gain"]
        self.current_na = c["lead_off_current_na"]
        self.settle = c["settle_samples"]
        self.samples = c["samples"] // 4 * 4
        self.block = c["block_samples"]
        self.vref_uv = int(a["vref_v"] * 1000000)

    def measure(self, channels):
        """Ohms (int) of each ADC channel in `channels`, in order, or OPEN for an input at a rail. Leaves the ADC
        stopped in SDATAC mode with the impedance configuration: the caller programs it again."""
        adc = self.adc
        chips = self.chips
        n_all = chips * 8
        per = [(24, "shorted", False)] * n_all
        for ch in channels:
            per[ch] = (self.gain, "normal", True)
        adc.stop()
        adc.configure(self.rate_hz, per, leadoff=False, ac_leadoff_na=self.current_na)
        stride = BYTES_PER_CHIP * chips
        raw = bytearray(self.block * stride)
        acc_i = [0] * n_all
        acc_q = [0] * n_all
        rail = [False] * n_all
        settle = self.settle
        end = settle + self.samples
        k = 0
        self.bsp.start_stream(raw, self.rate_hz)
        adc.start()
        try:
            while k < end:
                self.bsp.read_block(raw)
                for s in range(self.block):
                    if settle <= k < end:
                        phase = (k - settle) & 3
                        base = s * stride + _STATUS_BYTES
                        for ch in channels:
                            o = base + (ch >> 3) * BYTES_PER_CHIP + (ch & 7) * 3
                            v = (raw[o] << 16) | (raw[o + 1] << 8) | raw[o + 2]
                            if v & 0x800000:
                                v -= 0x1000000
                            if v > _RAIL or v < -_RAIL:
                                rail[ch] = True
                            elif phase == 0:
                                acc_i[ch] += v
                            elif phase == 2:
                                acc_i[ch] -= v
                            elif phase == 1:
                                acc_q[ch] += v
                            else:
                                acc_q[ch] -= v
                    k += 1
        finally:
            self.bsp.stop_stream()
            adc.stop()
        periods = self.samples // 4
        # counts -> µV: vref_uv / full scale / gain; µV / nA = kOhm
        scale = self.vref_uv * 1000.0 / (_FULL_SCALE * self.gain * self.current_na)
        out = [OPEN] * len(channels)
        for j in range(len(channels)):
            ch = channels[j]
            if not rail[ch]:
                i = float(acc_i[ch])
                q = float(acc_q[ch])
                amp = (i * i + q * q) ** 0.5 / (2.0 * 2.0 ** 0.5 * periods)
                out[j] = int(amp * scale + 0.5)
        return out


def check(fw, body):
    """The impedance request's result (SPEC 5.10) for the firmware `fw` (acquisition stopped): each listed
    stimulator output's electrode impedance (probe pulse) and each listed channel's lead impedance. The ADC
    is reprogrammed for the check and given back its configuration afterwards."""
    defn = fw.defn
    sup = fw.supervisor
    channels = index_list(body, "channels", fw.chips * defn["adc"]["channels_per_chip"], m.E_BAD_FIELD)
    outputs = index_list(body, "outputs", sup.outputs, m.E_LIMIT_OUTPUT)
    out_ohm = []
    for out in outputs:
        ohm = fw.probe_output(out)
        out_ohm.append({"output": out, "ohm": ohm if ohm >= 0 else None})
    ch_ohm = []
    if channels:
        try:
            values = LeadImpedance(fw.bsp, fw.adc, defn).measure(channels)
        finally:
            if fw.acq is not None:
                fw.acq.program_adc()  # the configured acquisition, as it was
        for i in range(len(channels)):
            ch_ohm.append({"channel": channels[i], "ohm": values[i] if values[i] >= 0 else None})
    c = defn["adc"]["impedance_check"]
    return {"channels": ch_ohm, "outputs": out_ohm, "limit_ohm": sup.impedance_ohm_max,
            "lead_off_current_na": c["lead_off_current_na"], "frequency_hz": c["rate_hz"] // 4}
