"""Write protocol/vectors/messages.json: one example of every message type, its CBOR bytes and its frame.

The vectors are the contract's byte-exact examples: tests/test_protocol_contract.py holds both the host
and the MicroPython implementation to them. Regenerate only when the protocol changes on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "protocol"))

import cbor  # noqa: E402
import framing  # noqa: E402
import messages as m  # noqa: E402
import rice  # noqa: E402

SAMPLES = bytes(range(48))  # one sample of 16 channels
STIM_LIMITS = {"current_ua_max": 100000, "current_step_ua": 100, "width_us_min": 50, "width_us_max": 1000,
               "width_step_us": 10, "charge_nc_per_phase_max": 50000, "energy_uj_per_pulse_max": 300000,
               "energy_reference_ohm": 500, "compliance_v": 400, "over_current_tolerance_pct": 5,
               "impedance_ohm_max": 20000, "rate_mhz_max_per_output": 20000, "rate_mhz_max_total": 50000,
               "train_pulses_max": 9, "train_ipi_us_min": 1000, "train_ipi_us_max": 10000,
               "train_interval_ms_min": 1000, "tof_interval_ms_min": 15000, "holdoff_ms_before": 100,
               "holdoff_ms_after": 100, "watchdog_ms": 100,
               "waveforms": ["monophasic", "biphasic"],
               "probe": {"output": 4, "current_ua_max": 40000, "width_us": 200, "rate_mhz_min": 2000,
                         "rate_mhz_max": 5000, "hunt_pulses_max": 32},
               "auditory": {"output": -2, "width_us": 100, "level_db_nhl_max": 100, "masking_db_max": 70,
                            "rate_mhz_min": 10000, "rate_mhz_max": 50000,
                            "polarities": ["rarefaction", "condensation", "alternating"]}}


# encoding rice (SPEC 5.4.1): sample-major counts and channel count of each data-rice vector; the vector
# also carries them ("counts", "channels"), so that both decoders are held to them
RICE_BLOCKS = {
    # 8 samples x 4 channels: small differences, a channel at full scale, full-scale steps (escapes)
    "data-rice": ([v for row in zip(
        [1000, 1003, 999, 1001, 1010, 1004, 998, 1000],
        [-2000, -2005, -1990, -1996, -2001, -2010, -2003, -1999],
        [8388607, 8388600, 8388607, 8388605, 8388607, 8388607, 8388606, 8388607],
        [0, 0, -8388608, -8388608, 0, 0, 0, 0], strict=True) for v in row], 4),
    # 2 samples x 2 channels of extremes: coding would be longer, the block is sent raw (mode 0)
    "data-rice-raw": ([8388607, -8388608, -8388608, 8388607], 2),
}


def examples() -> list[tuple[str, list]]:
    return [
        ("hello", [m.HELLO, 1, {"versions": [1], "schema": m.SCHEMA}]),
        ("welcome", [m.WELCOME, 1, {"version": 1, "schema": m.SCHEMA, "caps": {
            "channels": 16, "rates_hz": [250, 500, 1000, 2000, 4000, 8000, 16000], "gains": [1, 2, 4, 6, 8, 12, 24],
            "stim_outputs": 4, "max_payload": 8192, "max_request": 4224, "link_budget_bytes_per_s": 500000,
            "heartbeat_interval_ms": 25, "stim": STIM_LIMITS}, "info": {
            "firmware": {"version": "0.1.0", "hash": "00" * 32},
            "micropython": {"implementation": "micropython", "version": "1.29.0", "machine": "rp2", "mpy": 2822},
            "board": {"name": "ionm-ref", "revision": "A", "serial": "e6614c311b7b5a2e", "support": "rp2350"},
            "calibration": {"date": None}}}]),
        ("get-info", [m.GET_INFO, 2, {}]),
        ("configure", [m.CONFIGURE, 3, {"rate_hz": 4000, "channels": [0, 1, 8, 15], "gain": 24, "input": "normal",
                                        "samples_per_frame": 32, "leadoff": True}]),
        ("configure-ack", [m.ACK, 3, {"cfg": 1, "rate_hz": 4000, "channels": [0, 1, 8, 15], "gain": [24, 24, 24, 24],
                                      "input": ["normal"] * 4, "samples_per_frame": 32, "vref_uv": 4500000,
                                      "full_scale_code": 8388607, "wire_bytes_per_s": 52125}]),
        ("start", [m.START, 4, {}]),
        ("stop", [m.STOP, 5, {}]),
        ("heartbeat", [m.HEARTBEAT, 0, {}]),
        ("data", [m.DATA, 1, 65536, 0, SAMPLES]),
        ("data-small-index", [m.DATA, 1, 23, 0x8001, SAMPLES]),
        ("event-stim", [m.EVENT, 0, {"kind": "stim", "index": 1234567, "output": 0, "program": 0,
                                     "current_ua": 24980, "width_us": 200, "biphasic": False}]),
        ("event-watchdog", [m.EVENT, 0, {"kind": "watchdog", "index": 9000, "last_host_index": 8600,
                                         "cancelled": 1, "detail": "no frame from the host for 100 ms"}]),
        ("stim-program", [m.STIM_PROGRAM, 6, {"programs": [
            {"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200, "rate_mhz": 4700},
            {"kind": "pulse", "output": 1, "current_ua": 25000, "width_us": 200, "rate_mhz": 4700, "phase_us": 106383},
            {"kind": "tcmep", "count": 5, "ipi_us": 3000, "interval_ms": 0}]}]),
        ("stim-start", [m.STIM_START, 7, {}]),
        ("error-limit", [m.ERROR, 6, m.error_body(m.E_LIMIT_CURRENT, "current_ua 100100 is above the limit 100000")]),
        ("error-unparsed", [m.ERROR, 0, m.error_body(m.E_MALFORMED, "a request is [type, rid 0..65535, {body}]")]),
        # CRC byte order: the trailer is the CRC-32 big-endian (this frame's CRC has four distinct bytes)
        ("crc-byte-order", [m.HEARTBEAT, 0, {}]),
        # every program kind in one set, every optional field (one TcMEP program per set, SPEC 5.8)
        ("stim-program-every-kind", [m.STIM_PROGRAM, 300, {"programs": [
            {"kind": "pulse", "output": 0, "current_ua": 25000, "width_us": 200, "rate_mhz": 4700,
             "waveform": "biphasic", "phase_us": 0, "jitter_us": 0, "averaged": True},
            {"kind": "pulse", "output": 1, "current_ua": 25000, "width_us": 200, "rate_mhz": 4700,
             "phase_us": 53191, "jitter_us": 2000},
            {"kind": "pulse", "output": 2, "current_ua": 10000, "width_us": 100, "rate_mhz": 3000, "averaged": False},
            {"kind": "ramp", "output": 3, "current_ua": 1000, "stop_ua": 20000, "step_ua": 500, "width_us": 200,
             "rate_mhz": 1000},
            {"kind": "tof", "output": 3, "current_ua": 40000, "width_us": 200, "waveform": "monophasic"},
            {"kind": "tcmep", "count": 5, "ipi_us": 3000, "interval_ms": 2000}]}]),
        ("stim-start-one", [m.STIM_START, 301, {"program": 5}]),
        # impedance (SPEC 5.10): the check before a case, its result, and what stimulation reports
        ("impedance", [m.IMPEDANCE, 302, {"channels": [0, 1, 15], "outputs": [0, 1]}]),
        ("impedance-ack", [m.ACK, 302, {"channels": [{"channel": 0, "ohm": 4180}, {"channel": 1, "ohm": 3925},
                                                     {"channel": 15, "ohm": None}],
                                        "outputs": [{"output": 0, "ohm": 2496}, {"output": 1, "ohm": 30011}],
                                        "limit_ohm": 20000, "lead_off_current_na": 24, "frequency_hz": 125}]),
        ("error-impedance", [m.ERROR, 303, m.error_body(m.E_LIMIT_IMPEDANCE, "output 1: electrode impedance 30011"
                                                        " ohm is above the limit 20000 ohm: nothing was started")]),
        ("event-stim-impedance", [m.EVENT, 0, {"kind": "stim", "index": 1234567, "output": 1, "program": 0,
                                               "current_ua": 24980, "width_us": 200, "biphasic": True,
                                               "impedance_ohm": 2513}]),
        ("event-fault-impedance", [m.EVENT, 0, {"kind": "fault", "fault": "impedance", "index": 80000, "output": 1,
                                                "cancelled": 1, "impedance_ohm": 30011,
                                                "detail": "output 1: electrode impedance 30011 ohm during"
                                                " stimulation, above the limit 20000 ohm; stimulation stopped"}]),
        # the handheld probe (SPEC 5.11): a manual probe program, a hunt, its events and a refusal
        ("stim-program-probe", [m.STIM_PROGRAM, 304, {"programs": [
            {"kind": "probe", "output": 4, "current_ua": 8000, "width_us": 200, "rate_mhz": 3000}]}]),
        ("hunt", [m.HUNT, 305, {"output": 4, "lo_ua": 500, "hi_ua": 40000, "resolution_ua": 500, "rate_mhz": 4000,
                                "channels": [11, 13], "p2p_uv": 100, "window_ms": [5, 40]}]),
        ("hunt-ack", [m.ACK, 305, {"start_index": 80080, "channels": [11, 13], "max_pulses": 32}]),
        ("event-hunt-pulse", [m.EVENT, 0, {"kind": "hunt-pulse", "index": 80080, "current_ua": 20200,
                                           "channels": [11, 13], "p2p_uv": [412, 36], "responses": [True, False]}]),
        ("event-hunt-done", [m.EVENT, 0, {"kind": "hunt-done", "reason": "done", "pulses": 7, "lo_ua": 500,
                                          "hi_ua": 40000, "resolution_ua": 500, "p2p_uv": 100, "results": [
                                              {"channel": 11, "threshold_ua": 5600, "below_ua": 5200},
                                              {"channel": 13, "threshold_ua": None, "below_ua": 40000}]}]),
        ("error-hunt-rate", [m.ERROR, 306, m.error_body(m.E_LIMIT_RATE, "rate_mhz 6000 is above the limit 5000")]),
        # the insert earphones (SPEC 5.8, `click`): a BAEP click program, a click delivered, a refusal
        ("stim-program-click", [m.STIM_PROGRAM, 307, {"programs": [
            {"kind": "click", "output": -2, "level_db": 80, "masking_db": 50, "polarity": "alternating", "ear": "L",
             "rate_mhz": 21100}]}]),
        ("event-stim-click", [m.EVENT, 0, {"kind": "stim", "index": 4321000, "output": -2, "program": 0,
                                           "level_db": 80, "polarity": "rarefaction", "ear": "L"}]),
        ("error-level", [m.ERROR, 308, m.error_body(m.E_LIMIT_LEVEL, "level_db 110 is above the limit 100")]),
        # an error reply with a multi-byte UTF-8 detail and a rid above 255 (the board encodes these by hand)
        ("error-charge", [m.ERROR, 300, m.error_body(m.E_LIMIT_CHARGE, "charge of phase 1: 55000 µA x 1000 µs"
                                                     " = 55000 nC, above the limit 50000 nC")]),
        # several programs started together, from one start index (SPEC 5.8): four interleaved SSEP outputs
        # and a repeating TcMEP
        ("stim-start-together", [m.STIM_START, 307, {"program": [0, 1, 2, 3, 4]}]),
        # lossless compression (SPEC 5.4.1): the option, and a compressed and a raw-fallback block
        ("configure-rice", [m.CONFIGURE, 308, {"rate_hz": 16000, "samples_per_frame": 32, "encoding": "rice"}]),
        ("data-rice", [m.DATA_RICE, 2, 65536, 0, rice.encode(*RICE_BLOCKS["data-rice"])]),
        ("data-rice-raw", [m.DATA_RICE, 2, 70000, 0x8001, rice.encode(*RICE_BLOCKS["data-rice-raw"])]),
    ]


def to_json(obj):
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    if isinstance(obj, list):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def main() -> int:
    out = []
    for seq, (name, msg) in enumerate(examples()):
        payload = cbor.dumps(msg)
        if name == "crc-byte-order":
            seq = 0x1234  # (SEQ is big-endian too: 0x12 0x34)
        frame = framing.encode(payload, seq, m.SCHEMA)
        vector = {"name": name, "message": to_json(msg), "cbor": payload.hex(), "seq": seq, "frame": frame.hex()}
        if name == "crc-byte-order":
            crc = framing.crc32(frame[2:-4])
            assert len(set(crc.to_bytes(4, "big"))) == 4, "pick a frame whose CRC bytes differ"
            vector["crc32"] = crc  # the frame ends with these 4 bytes, most significant first
            vector["hchk"] = framing.crc32(frame[2:8]) & 0xFFFF  # bytes 8..9, most significant first
        if name in RICE_BLOCKS:
            vector["counts"], vector["channels"] = RICE_BLOCKS[name]
        out.append(vector)
    path = ROOT / "protocol" / "vectors" / "messages.json"
    path.write_text(json.dumps({"schema": m.SCHEMA, "vectors": out}, indent=1) + "\n")
    print("wrote %d vectors to %s" % (len(out), path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
