"""The simulated signal generator, driven over SCPI the way the bench tool drives a real one (pyvisa-py)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import pyvisa

from ionm import board
from ionm_hw.generator import SignalGenerator, at_input, divider_ratio, generator_volts_for
from ionm_hw.scpi import MessageFramer, ScpiInstrument, ScpiServer


@pytest.fixture(scope="module")
def rm() -> Iterator[pyvisa.ResourceManager]:
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


@pytest.fixture
def gen() -> SignalGenerator:
    return SignalGenerator(serial="T0042")


@pytest.fixture
def server(gen: SignalGenerator) -> Iterator[ScpiServer]:
    with ScpiServer(gen, max_message_bytes=64 * 1024) as srv:
        yield srv


@pytest.fixture
def inst(rm: pyvisa.ResourceManager, server: ScpiServer) -> Iterator[pyvisa.resources.MessageBasedResource]:
    res = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    yield res
    res.close()


def errors(inst: pyvisa.resources.MessageBasedResource) -> list[int]:
    """Drain the error queue; the codes, oldest first."""
    codes = []
    while (code := int(inst.query("SYST:ERR?").split(",")[0])) != 0:
        codes.append(code)
    return codes


def setup(inst: pyvisa.resources.MessageBasedResource, commands: str) -> None:
    """Write and wait until executed (*OPC?): writes alone return before the instrument acts."""
    assert inst.query(f"{commands};*OPC?") == "1"


def times(t0: float, n: int, fs: float) -> np.ndarray:
    return t0 + np.arange(n) / fs


# ---- SCPI surface --------------------------------------------------------------------------------
def test_identity_and_common_commands(inst, server) -> None:
    assert server.resource == f"TCPIP0::127.0.0.1::{server.port}::SOCKET"
    maker, model, serial, version = inst.query("*IDN?").split(",")
    assert (maker, model, serial, version) == ("IONM", "SIMGEN-1", "T0042", "1.0")
    assert inst.query("*OPC?") == "1"
    assert inst.query("SYST:ERR?") == '0,"No error"'
    inst.write("FREQ 123;VOLT 0.2")
    inst.write("*RST")
    assert float(inst.query("FREQ?")) == 1000.0 and float(inst.query("VOLT?")) == 0.1
    assert inst.query("OUTP?") == "0"  # a reset instrument keeps its output off
    inst.write("NOPE")
    assert inst.query("*ESR?") == "32"  # command-error bit
    inst.write("*CLS")
    assert errors(inst) == []


def test_sine_settings_round_trip_in_every_spelling(inst, gen) -> None:
    inst.write("SOURce1:FUNCtion SQUare")
    inst.write("sour1:func sin")
    inst.write("source:frequency 1 kHz;voltage 50 mV;VOLTage:OFFSet 0.01")  # relative path after ';'
    inst.write(":OUTPut1:STATe ON")
    reply = inst.query("FUNC?;:SOUR1:FREQ?;:VOLT?;:VOLT:OFFS?;:OUTP?")
    func, freq, vpp, offset, out = reply.split(";")
    assert func == "SIN" and out == "1"
    assert (float(freq), float(vpp), float(offset)) == (1000.0, 0.05, 0.01)
    settings = gen.settings()
    assert (settings.frequency_hz, settings.amplitude_vpp, settings.offset_v) == (1000.0, 0.05, 0.01)
    inst.write("FUNC:PULS:WIDT 200 us;:PHAS 90;:BURS:NCYC 4;:TRIG:DEL 2ms;SOUR EXT")
    assert float(inst.query("FUNC:PULS:WIDT?")) == pytest.approx(200e-6)
    assert float(inst.query("PHAS?")) == 90.0
    assert inst.query("BURS:NCYC?") == "4"
    assert float(inst.query("TRIG:DEL?")) == pytest.approx(2e-3)
    assert inst.query("TRIG:SOUR?") == "EXT"
    assert float(inst.query("FREQ? MAX")) == 20e6 and float(inst.query("FREQ? MIN")) == 1e-6
    assert errors(inst) == []


def test_apply_sets_function_levels_and_output_in_one_go(inst) -> None:
    assert inst.query("OUTP?") == "0"
    setup(inst, "APPL:SQU 2 kHz,0.2,-0.1")
    assert inst.query("APPL?") == '"SQU +2.00000000000000E+03,+2.00000000000000E-01,-1.00000000000000E-01"'
    assert inst.query("OUTP?") == "1"


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("FROB 1", -113),
        ("SOUR:FREQUEN 1", -113),  # neither short nor long form
        ("SOUR2:FREQ 1", -114),  # one channel only
        ("FREQ 30 MHz", -222),
        ("FREQ 0", -222),
        ("VOLT 20", -222),
        ("VOLT 0.0001", -222),
        ("BURS:NCYC 0", -222),
        ("FUNC TRIANGLE", -224),
        ("TRIG:SOUR WIRELESS", -224),
        ("FUNC:ARB nothere", -256),
        ("FUNC ARB", -221),  # no arb selected yet
        ("*TRG", -211),  # trigger source is IMM
        ("FREQ", -109),
        ("FREQ 1,2", -108),
        ("FREQ abc", -104),
        ("FREQ 1.2.3", -121),
        ("FREQ 5 parsecs", -131),
        ('FREQ "1"', -104),
        ("*IDN", -113),  # query-only
        ('FUNC:ARB "unterminated', -151),
    ],
)
def test_bad_commands_queue_exact_codes(inst, command: str, code: int) -> None:
    before = inst.query("FREQ?")
    inst.write(command)
    assert errors(inst) == [code]
    assert inst.query("FREQ?") == before  # a refused setting changes nothing


def test_error_after_bad_unit_still_answers_later_queries(inst) -> None:
    assert inst.query("BOGUS;FREQ 2e3;FREQ?") == "+2.00000000000000E+03"
    assert errors(inst) == [-113]


def test_error_queue_overflows_to_350(inst) -> None:
    for _ in range(30):
        inst.write("BOGUS")
    codes = errors(inst)
    assert len(codes) == 20 and codes[-1] == -350 and set(codes[:-1]) == {-113}


# ---- robustness -----------------------------------------------------------------------------------
def raw_client(server: ScpiServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2.0)
    return sock


def ask(sock: socket.socket, query: bytes) -> bytes:
    sock.sendall(query + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "server closed the connection"
        reply += chunk
    return reply[:-1]


def drain(sock: socket.socket) -> list[int]:
    codes = []
    while (reply := ask(sock, b"SYST:ERR?")) != b'0,"No error"':
        codes.append(int(reply.split(b",")[0]))
    return codes


def test_garbage_overlong_lines_and_disconnects_never_kill_the_server(server, gen) -> None:
    rng = np.random.default_rng(7)
    with raw_client(server) as sock:
        sock.sendall(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes() + b"\n")
        sock.sendall(b"\xff\xfe;;;:::?;#;,,\r\n")
        assert ask(sock, b"*IDN?").startswith(b"IONM,SIMGEN-1")
        codes = drain(sock)
        assert codes and all(-200 < c <= -100 or c == -350 for c in codes)  # command errors only
        sock.sendall(b"FREQ " + b"9" * 100_000 + b"\n")  # over the 64 KiB limit
        assert ask(sock, b"FREQ?") == b"+1.00000000000000E+03"
        assert drain(sock) == [-363]
    with raw_client(server) as sock:
        sock.sendall(b"FREQ 1234")  # no newline: the client dies mid-command
    with raw_client(server) as sock:
        assert float(ask(sock, b"FREQ?")) == 1000.0  # the half command was never executed
    assert gen.settings().frequency_hz == 1000.0


def test_concurrent_clients_share_one_instrument(rm, server) -> None:
    a = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    b = rm.open_resource(server.resource, read_termination="\n", write_termination="\n", timeout=2000)
    try:
        setup(a, "FREQ 777")
        assert float(b.query("FREQ?")) == 777.0
        b.query("UNKNOWN:THING;*OPC?")
        assert a.query("SYST:ERR?").startswith("-113,")  # one error queue, as on a real instrument
    finally:
        a.close()
        b.close()


def test_framer_is_indifferent_to_how_bytes_arrive() -> None:
    block = struct.pack(">8h", 10, 13, 0, 10, -10, 35, 59, 32767)  # holds '\n', '\r', '#', ';'
    stream = b"A 1;B 2\n" + b"DATA:ARB:DAC x,#216" + block + b"\n" + b'C "a#9;\n'
    whole = MessageFramer().feed(stream)
    framer = MessageFramer()
    trickled = [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]
    assert whole == trickled == [b"A 1;B 2", b"DATA:ARB:DAC x,#216" + block, b'C "a#9;']


# ---- rendering -----------------------------------------------------------------------------------
def test_sine_renders_the_programmed_wave(inst, gen) -> None:
    setup(inst, "FUNC SIN;FREQ 1000;VOLT 0.05;VOLT:OFFS 0.01;PHAS 30;:OUTP ON")
    fs, t0 = 16000.0, 0.25
    got = gen.render(t0, 480, fs)
    t = times(t0, 480, fs)
    want = 0.01 + 0.025 * np.sin(2 * np.pi * (1000 * t + 30 / 360))
    np.testing.assert_allclose(got, want, atol=1e-12)
    setup(inst, "OUTP OFF")
    assert not gen.render(t0, 480, fs).any()


@pytest.mark.parametrize(
    "setup", ["FUNC SIN;PHAS 45", "FUNC SQU", "FUNC SQU;BURS:STAT ON;BURS:NCYC 2;BURS:INT:PER 0.1"]
)
def test_rendering_in_blocks_equals_one_block(setup: str) -> None:
    fs = 16000.0
    one, many = SignalGenerator(), SignalGenerator()
    for g in (one, many):
        instrument = ScpiInstrument(g)
        reply = instrument.execute(f"FREQ 37.5;FUNC:SQU:DCYC 30;VOLT 1;OUTP ON;{setup};*OPC?".encode())
        assert reply == "1\n"
    whole = one.render(0.0, 16000, fs)
    blocks = np.concatenate([many.render(k * 160 / fs, 160, fs) for k in range(100)])
    np.testing.assert_array_equal(whole, blocks)  # bit-identical, not merely close
    assert np.ptp(whole) == pytest.approx(1.0, abs=1e-3)


def test_external_trigger_plays_exactly_ncycles_after_the_delay(inst, gen) -> None:
    setup(inst, "FUNC SIN;FREQ 1000;VOLT 2;VOLT:OFFS 0.5;OUTP ON")
    setup(inst, "BURS:MODE TRIG;BURS:NCYC 3;BURS:STAT ON;TRIG:SOUR EXT;TRIG:DEL 2 ms")
    assert errors(inst) == []
    fs, t_trig = 16000.0, 0.1005
    start = t_trig + 2e-3
    pre = gen.render(0.0, 1600, fs)  # [0, 0.1 s): no trigger yet -> idle at the offset
    assert np.all(pre == 0.5)
    gen.trigger(t_trig)
    gen.trigger(t_trig + 1e-3)  # arrives during the burst: dropped, as a real generator does
    t = times(0.1, 1600, fs)
    got = gen.render(0.1, 1600, fs)
    in_burst = (t >= start - 1e-12) & (t < start + 3e-3 - 1e-12)
    want = np.where(in_burst, 0.5 + 1.0 * np.sin(2 * np.pi * 1000 * (t - start)), 0.5)
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert in_burst.sum() == 48  # 3 cycles of 16 samples
    assert gen.ignored_triggers == 1
    # Square wave: count the cycles directly (rising edges from the idle level into the burst).
    setup(inst, "FUNC SQU")
    gen.trigger(0.3)
    sq = gen.render(0.3, 1600, fs)
    played = sq != 0.5
    assert played.sum() == 48 and np.count_nonzero(np.diff(sq[played]) > 0) == 2  # 3 highs, 2 re-rises
    assert np.flatnonzero(played)[0] == round(2e-3 * fs)
    assert np.all(gen.render(0.4, 160, fs) == 0.5)  # idle again afterwards


def test_bus_trigger_starts_a_burst_at_the_next_rendered_instant(inst, gen) -> None:
    setup(inst, "FUNC SQU;FREQ 500;VOLT 1;OUTP ON;BURS:STAT ON;BURS:NCYC 1;TRIG:SOUR BUS;TRIG:DEL 0")
    fs = 8000.0
    assert not gen.render(0.0, 800, fs).any()
    setup(inst, "*TRG")
    out = gen.render(0.1, 800, fs)
    assert np.count_nonzero(out) == 16 and np.all(out[:8] == 0.5) and np.all(out[8:16] == -0.5)
    inst.write("TRIG:SOUR EXT;*TRG")
    assert errors(inst) == [-211]


def test_arb_upload_ascii_and_binary_blocks(inst, gen) -> None:
    points = [0.0, 0.5, 1.0, 0.5, 0.0, -0.5, -1.0, -0.25]
    inst.write("DATA:ARB tri8," + ",".join(str(p) for p in points))
    codes = [0, 10, 32767, 10, -10, 3338, -32767, 13]  # 10 and 13 encode to '\n' and '\r' bytes
    inst.write_binary_values("DATA:ARB:DAC dac8,", codes, datatype="h", is_big_endian=True)
    inst.write("FORM:BORD SWAP")
    inst.write_binary_values("DATA:ARB:DAC swap8,", codes, datatype="h", is_big_endian=False)
    assert errors(inst) == []
    assert inst.query("DATA:VOL:CAT?") == '"DAC8","SWAP8","TRI8"'
    fs = 800.0  # at 100 Hz: one sample per arb point
    setup(inst, "FUNC:ARB tri8;FUNC ARB;FREQ 100;VOLT 2;VOLT:OFFS 0;OUTP ON")
    assert inst.query("FUNC?;FUNC:ARB?") == 'ARB;"tri8"'
    np.testing.assert_allclose(gen.render(0.0, 16, fs), points * 2, atol=1e-12)
    for name in ("dac8", "swap8"):
        setup(inst, f"FUNC:ARB {name}")
        got = gen.render(0.5, 8, fs)
        np.testing.assert_allclose(got, np.array(codes) / 32767, atol=1e-12)
    inst.write("DATA:ARB bad,0,1,2,0,0,0,0,0")  # 2 is outside -1..1
    inst.write("DATA:ARB short,0,1,0")  # too few points
    inst.write("DATA:VOL:CLE")  # refused while an arb plays
    assert errors(inst) == [-222, -222, -221]


def test_pulse_width_and_load_setting(inst, gen) -> None:
    setup(inst, "FUNC PULS;FREQ 100;FUNC:PULS:WIDT 1ms;VOLT 1;VOLT:OFFS 0.5;OUTP ON")
    out = gen.render(0.0, 100, 10000.0)  # one period at 10 kS/s
    assert np.all(out[:10] == 1.0) and np.all(out[10:] == 0.0)
    setup(inst, "OUTP:LOAD 50")  # the instrument now assumes a 50 Ohm load: the open terminals double
    assert float(inst.query("OUTP:LOAD?")) == 50.0
    assert gen.render(0.0, 1, 10000.0)[0] == pytest.approx(2.0)
    inst.write("OUTP:LOAD INF")
    assert float(inst.query("OUTP:LOAD?")) == 9.9e37


def test_divider_brings_millivolts_to_microvolts(inst, gen) -> None:
    top, bottom = board.load()["bench"]["divider_r_top_ohm"], board.load()["bench"]["divider_r_bottom_ohm"]
    ratio = divider_ratio(board.load())
    assert ratio == bottom / (top + bottom) and divider_ratio() == ratio
    assert divider_ratio({"bench": {"divider_r_top_ohm": 900.0, "divider_r_bottom_ohm": 100.0}}) == 0.1
    vpp = generator_volts_for(50e-6)
    assert vpp == pytest.approx(50e-6 / ratio)
    setup(inst, f"FUNC SIN;FREQ 1000;VOLT {vpp!r};VOLT:OFFS 0;OUTP ON")
    at_amp = at_input(gen.render(0.0, 16, 16000.0))  # includes the peaks at samples 4 and 12
    assert np.ptp(at_amp) == pytest.approx(50e-6, rel=1e-9)


def test_cli_prints_the_resource_string(rm) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ionm_hw.scpi", "--port", "0", "--serial", "CLI1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        resource = proc.stdout.readline().strip()
        assert resource.startswith("TCPIP0::127.0.0.1::") and resource.endswith("::SOCKET")
        res = rm.open_resource(resource, read_termination="\n", write_termination="\n", timeout=2000)
        assert res.query("*IDN?") == "IONM,SIMGEN-1,CLI1,1.0"
        res.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_falling_edge_trigger_waits_for_the_end_of_the_board_pulse() -> None:
    gen = SignalGenerator()
    reply = ScpiInstrument(gen).execute(
        b"FUNC SQU;FREQ 1000;VOLT 1;OUTP ON;BURS:STAT ON;TRIG:SOUR EXT;TRIG:SLOP NEG;TRIG:SLOP?"
    )
    assert reply == "NEG\n"
    fs = 1e6  # 1 us resolution
    width_s = board.load()["trigger"]["out_pulse_us"] * 1e-6
    gen.trigger(0.01)
    out = gen.render(0.01, 2000, fs)
    assert np.flatnonzero(out)[0] == round(width_s * fs)
