"""The bench signal generator over VISA (pyvisa, SCPI; hardware/BENCH-WIRING.md §5): the same commands
drive the simulated generator and a bench instrument. Levels are given at the amplifier input and
converted through the bench divider of the board definition, never with a hard-coded ratio."""

from __future__ import annotations

from typing import Any


class GeneratorError(Exception):
    """The generator refused a setting (its SCPI error queue was not empty) or could not be reached."""


class Generator:
    def __init__(self, resource: str, *, timeout_ms: int = 5000) -> None:
        import pyvisa

        from ionm_hw.generator import generator_volts_for

        self._volts_for = generator_volts_for
        try:
            self.rm = pyvisa.ResourceManager("@py")
            inst: Any = self.rm.open_resource(resource, read_termination="\n", write_termination="\n",
                                              timeout=timeout_ms)
            self.inst = inst
            self.idn = self.inst.query("*IDN?").strip()
        except Exception as exc:  # pyvisa raises several unrelated types for an unreachable instrument
            raise GeneratorError("cannot open the generator %s: %s" % (resource, exc)) from exc
        self.write("*RST;*CLS")
        # The divider is ~100 kΩ: program open-circuit volts, or a 50 Ω default doubles every level.
        self.write("OUTP:LOAD INF")
        self.sync()

    def write(self, command: str) -> None:
        self.inst.write(command)

    def sync(self) -> None:
        """Wait until every setting is applied, then fail loudly if any was refused."""
        if self.inst.query("*OPC?").strip() != "1":
            raise GeneratorError("the generator did not complete its operations")
        err = self.inst.query("SYST:ERR?").strip()
        if not err.startswith("0") and not err.startswith("+0"):
            raise GeneratorError("the generator refused a setting: %s" % err)

    def sine(self, freq_hz: float, input_vpp: float) -> None:
        """Free-running sine of input_vpp volts peak-to-peak at the amplifier input."""
        self.write("OUTP OFF;:BURS:STAT OFF;:FUNC SIN;:FREQ %.9g;:VOLT %.9g;:VOLT:OFFS 0;:OUTP ON"
                   % (freq_hz, self._volts_for(input_vpp)))
        self.sync()

    def triggered_burst(self, function: str, freq_hz: float, input_vpp: float, cycles: int, delay_s: float) -> None:
        """Burst of `cycles` cycles, delay_s after each rising edge on the external trigger input (the
        board's trigger output); silent (0 V) otherwise."""
        self.write("OUTP OFF;:FUNC %s;:FREQ %.9g;:VOLT %.9g;:VOLT:OFFS 0;:BURS:MODE TRIG;:BURS:NCYC %d;"
                   ":BURS:STAT ON;:TRIG:SOUR EXT;:TRIG:SLOP POS;:TRIG:DEL %.9g;:OUTP ON"
                   % (function, freq_hz, self._volts_for(input_vpp), cycles, delay_s))
        self.sync()

    def off(self) -> None:
        self.write("OUTP OFF;:BURS:STAT OFF")
        self.sync()

    def close(self) -> None:
        try:
            self.write("OUTP OFF")
        except Exception:
            pass
        try:
            self.inst.close()
        finally:
            self.rm.close()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
