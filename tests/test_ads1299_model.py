"""The ADS1299 chain model against datasheet behaviour (TI SBAS499C): reset values, ID, RDATAC framing
and mode rules, gain, the internal test signal's amplitude and frequency, lead-off status bits, noise."""

from __future__ import annotations

import numpy as np
import pytest

from ionm_hw import ads1299 as A


@pytest.fixture
def chain() -> A.ADS1299Chain:
    return A.ADS1299Chain(2, "TEST-1")


def wreg(chain, cs, addr, data):
    chain.spi(cs, bytes([A.WREG | addr, len(data) - 1, *data]))


def rreg(chain, cs, addr, n=1):
    return chain.spi(cs, bytes([A.RREG | addr, n - 1] + [0] * n))[2:]


def test_reset_values_and_id(chain):
    chain.spi(0b01, bytes([A.SDATAC]))
    regs = rreg(chain, 0b01, 0x00, A.N_REGS)
    assert regs == A.RESET_VALUES
    assert regs[0] & 0x1F == 0x1E  # ADS1299 (8-channel) ID bits
    assert regs[A.CONFIG1] == 0x96 and regs[A.CH1SET] == 0x61  # 250 SPS; gain 24, input shorted


def test_registers_are_not_accessible_in_rdatac_mode(chain):
    # the chip powers up in RDATAC: RREG returns nothing, WREG is ignored until SDATAC
    assert rreg(chain, 0b01, A.ID) == b"\x00"
    wreg(chain, 0b01, A.CONFIG1, [0x95])
    chain.spi(0b01, bytes([A.SDATAC]))
    assert rreg(chain, 0b01, A.CONFIG1) == b"\x96"
    wreg(chain, 0b01, A.CONFIG1, [0x95])
    assert rreg(chain, 0b01, A.CONFIG1) == b"\x95" and chain.rate_hz == 500


def test_chip_select_addresses_one_chip_and_read_only_registers_hold(chain):
    chain.spi(0b11, bytes([A.SDATAC]))
    wreg(chain, 0b10, A.CH1SET, [0x05])  # chip 1 only
    assert rreg(chain, 0b01, A.CH1SET) == b"\x61" and rreg(chain, 0b10, A.CH1SET) == b"\x05"
    wreg(chain, 0b01, A.ID, [0x00])
    assert rreg(chain, 0b01, A.ID) == b"\x3e"


def test_reset_opcode_and_pin_restore_defaults(chain):
    chain.spi(0b11, bytes([A.SDATAC]))
    wreg(chain, 0b11, A.CONFIG1, [0x90])
    chain.spi(0b11, bytes([A.RESET]))
    chain.spi(0b11, bytes([A.SDATAC]))
    assert rreg(chain, 0b01, A.CONFIG1) == b"\x96"
    wreg(chain, 0b11, A.CONFIG1, [0x90])
    chain.set_pin("reset", 0)
    chain.spi(0b11, bytes([A.SDATAC]))
    assert rreg(chain, 0b10, A.CONFIG1) == b"\x96"


def configure(chain, ch_set, cfg1=0x96, cfg2=0xD0, config4=0x00, loff_p=0, loff_n=0):
    chain.spi(0b11, bytes([A.SDATAC]))
    wreg(chain, 0b11, A.CONFIG1, [cfg1])
    wreg(chain, 0b11, A.CONFIG2, [cfg2])
    wreg(chain, 0b11, A.CH1SET, [ch_set] * 8)
    wreg(chain, 0b11, A.LOFF_SENSP, [loff_p])
    wreg(chain, 0b11, A.LOFF_SENSN, [loff_n])
    wreg(chain, 0b11, A.CONFIG4, [config4])
    chain.spi(0b11, bytes([A.RDATAC]))
    chain.set_pin("start", 1)


def test_rdatac_stream_framing_daisy_chain_order_and_status_word(chain):
    configure(chain, 0x60)  # gain 24, normal input
    inputs = np.zeros((5, 16))
    inputs[:, 3] = 1e-3  # chip 0 channel 4
    inputs[:, 11] = -2e-3  # chip 1 channel 4
    raw = chain.convert(inputs)
    assert len(raw) == 5 * 2 * 27
    codes, status = A.decode_stream(raw, 2)
    assert (status >> 20 == 0xC).all()  # 1100 + LOFF_STATP + LOFF_STATN + GPIO
    lsb = 4.5 / (2**23 - 1) / 24
    assert codes[:, 3].mean() * lsb == pytest.approx(1e-3, rel=0.01)
    assert codes[:, 11].mean() * lsb == pytest.approx(-2e-3, rel=0.01)


@pytest.mark.parametrize("gain_code,gain", list(enumerate(A.GAINS)))
def test_gain_scales_the_codes(gain_code, gain):
    chain = A.ADS1299Chain(1, "TEST-G")
    configure(chain, gain_code << 4)
    v = 0.5 * 4.5 / gain  # half of full scale at this gain
    codes, _ = A.decode_stream(chain.convert(np.full((200, 8), v)), 1)
    full = 2**23 - 1
    assert codes.mean() / full == pytest.approx(0.5, rel=0.01)  # within the unit's gain error
    over = A.decode_stream(chain.convert(np.full((4, 8), 2 * 4.5 / gain)), 1)[0]
    assert (over == full).all()  # clipped at positive full scale


def test_internal_test_signal_amplitude_and_frequency():
    chain = A.ADS1299Chain(1, "TEST-T")
    configure(chain, 0x05 | (0 << 4), cfg1=0x96, cfg2=0xD0)  # gain 1, test input; 250 SPS; 1x amp, fCLK/2^21
    fs = 250
    codes, _ = A.decode_stream(chain.convert(np.zeros((fs * 8, 8))), 1)
    v = codes[:, 0] * 4.5 / (2**23 - 1)
    amp = 4.5 / 2.4e3  # ±1.875 mV
    assert np.median(v[v > 0]) == pytest.approx(amp, rel=0.01)
    assert np.median(v[v < 0]) == pytest.approx(-amp, rel=0.01)
    edges = np.flatnonzero(np.diff(np.sign(v)) != 0)
    f = fs / (2 * np.mean(np.diff(edges)))
    assert f == pytest.approx(2.048e6 / 2**21, rel=0.02)  # ~0.98 Hz
    chain2 = A.ADS1299Chain(1, "TEST-T")
    configure(chain2, 0x05, cfg2=0xD5)  # CAL_AMP 2x, fCLK/2^20
    v2 = A.decode_stream(chain2.convert(np.zeros((fs * 4, 8))), 1)[0][:, 0] * 4.5 / (2**23 - 1)
    assert np.median(v2[v2 > 0]) == pytest.approx(2 * amp, rel=0.01)


def test_leadoff_status_bits_follow_electrodes_when_sensing_is_on():
    chain = A.ADS1299Chain(2, "TEST-L")
    configure(chain, 0x60, config4=0x02, loff_p=0xFF, loff_n=0xFF)
    off = np.zeros(16, dtype=bool)
    off[[2, 9]] = True
    _, status = A.decode_stream(chain.convert(np.zeros((3, 16)), off), 2)
    statp0 = (status[0, 0] >> 12) & 0xFF
    statp1 = (status[0, 1] >> 12) & 0xFF
    assert statp0 == 1 << 2 and statp1 == 1 << 1
    chain.spi(0b11, bytes([A.SDATAC]))
    assert rreg(chain, 0b01, A.LOFF_STATP) == bytes([1 << 2])
    wreg(chain, 0b11, A.CONFIG4, [0x00])  # comparators off: no status
    _, status = A.decode_stream(chain.convert(np.zeros((3, 16)), off), 2)
    assert ((status >> 4) & 0xFFFF == 0).all()


def test_ac_lead_off_excitation_is_a_square_at_fdr4_of_the_current_times_the_electrodes_impedance():
    """LOFF.FLEAD_OFF = 11 (fDR/4), ILEAD_OFF = 24 nA: a sensed channel reads +-24 nA x (Z_P + Z_N), two
    conversions up, two down; only the sensed sides count, LOFF_FLIP reverses it, DC lead-off adds nothing."""
    chain = A.ADS1299Chain(1, "TEST-Z")
    configure(chain, 0x00, cfg1=0x95, loff_p=0b0111, loff_n=0b0101)  # gain 1, 500 SPS
    chain.spi(0b01, bytes([A.SDATAC]))
    wreg(chain, 0b01, A.LOFF, [0b0000_0111])
    wreg(chain, 0b01, A.LOFF_FLIP, [0b0100])
    chain.spi(0b01, bytes([A.RDATAC]))
    chain.lead_ohm[:8] = [[10e3, 2e3]] * 8
    codes, _ = A.decode_stream(chain.convert(np.zeros((400, 8))), 1)
    v = codes * 4.5 / (2**23 - 1)
    sq = np.where((np.arange(400) // 2) % 2 == 0, 1.0, -1.0)
    amp = [(v[:, c] - v[:, c].mean()) @ sq / 400 for c in range(4)]
    assert amp[0] == pytest.approx(24e-9 * 12e3, rel=0.01)  # P and N sensed
    assert amp[1] == pytest.approx(24e-9 * 10e3, rel=0.01)  # P only
    assert amp[2] == pytest.approx(-24e-9 * 12e3, rel=0.01)  # flipped
    assert abs(amp[3]) < 24e-9 * 100  # not sensed
    chain.lead_ohm[0] = [1e12, 2e3]  # an open electrode: the input is driven to the rail
    codes, _ = A.decode_stream(chain.convert(np.zeros((8, 8))), 1)
    assert (np.abs(codes[:, 0]) >= 2**23 - 1).all()
    chain.spi(0b01, bytes([A.SDATAC]))
    wreg(chain, 0b01, A.LOFF, [0x00])  # DC lead-off: no excitation in the samples
    chain.spi(0b01, bytes([A.RDATAC]))
    codes, _ = A.decode_stream(chain.convert(np.zeros((400, 8))), 1)
    assert abs((codes[:, 1] - codes[:, 1].mean()) @ sq / 400 * 4.5 / (2**23 - 1)) < 24e-9 * 100


def test_shorted_input_noise_matches_the_datasheet_table():
    for rate_code, rate in ((6, 250), (2, 4000)):
        chain = A.ADS1299Chain(1, "TEST-N")
        configure(chain, 0x61, cfg1=0x90 | rate_code)  # gain 24, shorted
        codes, _ = A.decode_stream(chain.convert(np.zeros((4000, 8))), 1)
        uv = (codes - codes.mean(axis=0)) * 4.5 / (2**23 - 1) / 24 * 1e6
        assert uv.std() == pytest.approx(A.noise_uvrms(24, rate), rel=0.1)
    assert A.noise_uvrms(1, 16000) == pytest.approx(21.7, rel=0.01)  # gain 1 is the table's own column
    assert A.noise_uvrms(24, 250) == pytest.approx(0.14, rel=0.05)  # the datasheet's headline figure


def test_unit_errors_are_fixed_by_the_serial():
    a, b, c = (A.UnitErrors.for_serial(s, 0) for s in ("SN-1", "SN-1", "SN-2"))
    assert np.array_equal(a.gain_error, b.gain_error) and not np.array_equal(a.gain_error, c.gain_error)
