"""A simulated case as a sweep source: the scenario's physiology rendered sweep by sweep (ionm_hw.sweeps).

Each enabled SSEP output is stimulated at its rate, the four outputs staggered by a quarter period (left and
right, upper and lower interleaved, as the scenario plan says); TcMEP trains go out on demand or every
repeat_s. The program is read from a RecordedStimulation, so the console's stimulation controls act on the
simulated patient (current, rate, on/off, train length). Sweeps come out in stimulus-time order, each once its
window has ended, paced to real time (speed 1), faster (speed k), or as fast as they render (speed 0).

Stimulus times continue across the rendering chunks at the exact rate, so the mains phase keeps drifting
from sweep to sweep (a chunked phase reset would line mains up sweep after sweep and defeat averaging).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ionm.board.stimulation import SSEP_OUTPUTS, RecordedStimulation, default_program
from ionm.board.tools.impedance import GOOD_LEAD_OHM
from ionm.sweep import Sweep

WINDOW_MS = {"ssep-upper": (5.0, 50.0), "ssep-lower": (5.0, 90.0), "mep": (45.0, 85.0)}
PROBE_PRE_MS = 40.0  # recorded before each manual probe pulse: the background the response is judged against
PROBE_WINDOW_MS = 45.0  # recorded after each manual probe pulse (a CMAP's onset is at most ~20 ms)
MODALITY_OF_OUTPUT = {0: "ssep-upper", 1: "ssep-upper", 2: "ssep-lower", 3: "ssep-lower"}


class SimulatedCase:
    """Iterate to get Sweeps; link_health() for the console; close() to stop."""

    def __init__(self, scenario: str | dict[str, Any] = "stable", seed: int = 1, *, speed: float = 1.0,
                 stimulation: RecordedStimulation | None = None, fs_hz: float = 8000.0, start_s: float = 0.0,
                 chunk_s: float = 1.0, duration_s: float | None = None):
        from ionm_hw.patient import VirtualPatient, load_scenario

        self.scenario = load_scenario(scenario) if isinstance(scenario, str) else copy.deepcopy(scenario)
        self.name = str(self.scenario.get("name", "custom"))
        self.seed = int(seed)
        self.speed = float(speed)
        self.fs = float(fs_hz)
        self.stimulation = stimulation or RecordedStimulation(default_program(self.scenario))
        self.start_s = float(start_s)
        self.chunk_s = float(chunk_s)
        self.duration_s = float(duration_s if duration_s is not None else self.scenario.get("duration_s", 1800.0))
        self._patient = VirtualPatient(self.scenario, self.seed, self.fs)  # lead-off, impedances: link health
        self._closed = False
        self._t = self.start_s  # start of the next chunk, case seconds
        self._next: dict[int, float] = {}  # next stimulus per SSEP output, fractional sample index
        self._next_train: float | None = None  # next repeated TcMEP train, s
        self.sweeps_sent = 0
        self._tof_patient: Any = None  # renders the trains-of-four (deliver_tof)
        self._tof_next = 0  # its next sample

    # ---------------------------------------------------------------- source interface
    def close(self) -> None:
        self._closed = True

    def link_health(self) -> dict[str, Any]:
        idx = int(self._t * self.fs)
        leadoff = self._patient.leadoff(max(idx - int(self.fs), 0), int(self.fs))
        names = self._patient.channel_names
        return {
            "source": "simulated case (%s, seed %d)" % (self.name, self.seed),
            "state": "stopped" if self._closed else "streaming",
            "samples_lost": 0,
            "sweeps": self.sweeps_sent,
            "leadoff": [names[i] for i in np.flatnonzero(leadoff)],
            "stim_impedance_ohm": {name: round(self._patient.stim_impedance_ohm(o, idx))
                                   for o, name in SSEP_OUTPUTS.items()},
            # what the board's electrode check would find (a live board measures it before the case)
            "lead_impedance_ohm": {names[i]: (None if z >= self._patient.OPEN_OHM else round(z))
                                   for i, z in enumerate(self._patient.lead_impedance_ohm(idx).sum(axis=1))},
            "lead_impedance_good_ohm": GOOD_LEAD_OHM,
        }

    # ---------------------------------------------------------------- the handheld probe (screw tests)
    def screw_channels(self, side: str) -> list[tuple[int, str]]:
        """The muscle channels on `side` ('L'/'R'): (channel, name as the sweeps name it)."""
        from ionm.board.hunt import side_of

        return [(c.index, c.name) for c in self._patient.channels
                if c.kind == "muscle" and side_of(c.label, c.derivation) == side]

    def hunt_screw(self, channels: list[int], *, hi_ma: float, p2p_uv: float, lo_ma: float = 0.5,
                   resolution_ma: float = 0.5, rate_hz: float = 5.0, stop: threading.Event | None = None) -> Any:
        """A threshold hunt without a board: the board's own search (ionm.board.hunt.Bisection) against the
        patient's probe model (what the probe touches now, each pulse's CMAP per channel with its trial-to-trial
        variability and any neuromuscular blockade), one pulse per 1/rate_hz of case time, paced as the case is.
        The criterion is judged on the CMAP alone (no background EMG, mains or artefact, which the board's raw
        window includes)."""
        from ionm.board.hunt import host_hunt
        from ionm_hw.physiology.blockade import twitch

        t0 = self._t
        n = len(self._patient.channels)

        def respond(k: int, current_ma: float) -> dict[int, float]:
            t = t0 + k / rate_hz
            index = int(round(t * self.fs))
            r = self._patient.probe.response(index, current_ma, n, twitch(self._patient.blockade.depth(t), 1))
            return {} if r is None else dict(r[1])

        pace = 1.0 / rate_hz / self.speed if self.speed > 0 else 0.0
        return host_hunt(respond, channels, lo_ma=lo_ma, hi_ma=hi_ma, resolution_ma=resolution_ma, rate_hz=rate_hz,
                         p2p_uv=p2p_uv, stop=stop, pace=pace)

    # ---------------------------------------------------------------- train-of-four
    def tof_channels(self) -> list[tuple[int, str]]:
        """The muscle channels a TOF's M-waves can be measured on: (channel, name as the sweeps name it)."""
        return [(c.index, c.name) for c in self._patient.channels if c.kind == "muscle"]

    def deliver_tof(self, output: int, channel: int, *, current_ma: float, width_us: int = 200) -> dict[str, Any]:
        """A train-of-four without a board: 4 pulses at 2 Hz on `output` from the case's current time, rendered by
        the simulated patient (its neuromuscular blockade fades and depresses the M-waves): `channel`'s samples over
        the train (µV), the pulses' sample indices in them and the sampling rate, which the console measures
        (ionm.pipeline.tof.responses). Paced as the case is. A patient of its own
        renders the trains (a render never goes back in time; the case's sweeps come from their own renders)."""
        from ionm_hw.patient import Pulse, VirtualPatient

        if self._tof_patient is None:
            self._tof_patient = VirtualPatient(self.scenario, self.seed, self.fs)
        first = max(int(round(self._t * self.fs)), self._tof_next)
        step = int(round(0.5 * self.fs))
        n = 4 * step
        pulses = [Pulse(first + k * step, int(output), float(current_ma), int(width_us), False) for k in range(4)]
        x = self._tof_patient.render(first, n, pulses)[:, int(channel)] * 1e6
        self._tof_next = first + n
        if self.speed > 0:
            time.sleep(n / self.fs / self.speed)
        return {"samples_uv": x, "pulse_indices": [p.index - first for p in pulses], "fs": self.fs,
                "t_s": first / self.fs}

    # ---------------------------------------------------------------- the handheld probe, manual mode
    def run_probe(self, current_ma: float, rate_hz: float, channels: list[int], on_response: Any,
                  stop: threading.Event) -> int:
        """Probe pulses of current_ma at rate_hz until `stop` (nerve mapping): each rendered by the simulated
        patient (what the probe touches, its blockade) on a patient of its own, from the case's current time;
        on_response(samples µV [channel, n] of `channels` from PROBE_PRE_MS before the pulse, fs, the pulse's
        sample in them) after each. Paced as the case is.
        Returns the pulses delivered."""
        from ionm_hw.patient import Pulse, VirtualPatient
        from ionm_hw.physiology.screws import PROBE_OUTPUT

        if self._tof_patient is None:
            self._tof_patient = VirtualPatient(self.scenario, self.seed, self.fs)
        step = int(round(self.fs / rate_hz))
        pre, n = int(round(PROBE_PRE_MS * self.fs / 1000)), int(round(PROBE_WINDOW_MS * self.fs / 1000))
        pulses = 0
        while not stop.is_set():
            first = max(int(round(self._t * self.fs)), self._tof_next)
            x = self._tof_patient.render(first, pre + n,
                                         [Pulse(first + pre, PROBE_OUTPUT, float(current_ma), 200, False)])
            self._tof_next = first + step
            pulses += 1
            on_response(np.ascontiguousarray(x[:, list(channels)].T * 1e6), self.fs, pre)
            stop.wait(step / self.fs / self.speed if self.speed > 0 else 0.01)
        return pulses

    def __iter__(self) -> Iterator[Sweep]:
        wall0 = time.monotonic() - (self.start_s / self.speed if self.speed > 0 else 0.0)
        while not self._closed and self._t < self.duration_s:
            t0, t1 = self._t, min(self._t + self.chunk_s, self.duration_s)
            batch = self._render(t0, t1)
            self._t = t1
            for due, sw in batch:
                if self._closed:
                    return
                if self.speed > 0:
                    wait = wall0 + due / self.speed - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                self.sweeps_sent += 1
                yield sw

    # ---------------------------------------------------------------- rendering
    def _render(self, t0: float, t1: float) -> list[tuple[float, Sweep]]:
        from ionm_hw.patient import TRIGGER_OUTPUT

        program = self.stimulation.state()
        scen = copy.deepcopy(self.scenario)
        tc = program["tcmep"]
        scen["stimulation"]["tcmep"].update(train_pulses=int(tc["train_pulses"]), ipi_ms=float(tc["ipi_ms"]))
        out: list[tuple[float, Sweep]] = []
        for o, site in program["ssep"].items():
            o_i = int(o)
            if not site["enabled"]:
                self._next.pop(o_i, None)
                continue
            scen["stimulation"]["ssep"]["outputs"].setdefault(o, {}).update(width_us=int(site["width_us"]))
            period = self.fs / float(site["rate_hz"])
            if o_i not in self._next:  # (re)started: first pulse a quarter period per output after t0
                self._next[o_i] = t0 * self.fs + period * (0.25 * o_i + 0.05)
            out += self._ssep(scen, o_i, float(site["current_ma"]), float(site["rate_hz"]), period, t1)
        trains = []
        for _ in range(self.stimulation.take_trains()):
            trains.append(t0 + 0.5 * (t1 - t0))
        if tc["repeat_s"] > 0:
            if self._next_train is None:
                self._next_train = t0 + 0.2
            while self._next_train < t1:
                trains.append(self._next_train)
                self._next_train += float(tc["repeat_s"])
        else:
            self._next_train = None
        for t in sorted(trains):
            out += self._mep(scen, t, TRIGGER_OUTPUT)
        out.sort(key=lambda x: x[0])
        return out

    def _ssep(self, scen: dict[str, Any], output: int, current_ma: float, rate_hz: float, period: float,
              t1: float) -> list[tuple[float, Sweep]]:
        from ionm_hw.sweeps import record_sweeps

        modality = MODALITY_OF_OUTPUT[output]
        pre_ms, post_ms = WINDOW_MS[modality]
        pre, post = int(round(pre_ms * self.fs / 1000)), int(round(post_ms * self.fs / 1000))
        first = self._next[output]
        n = int(np.ceil((t1 * self.fs - first) / period)) if first < t1 * self.fs else 0
        if n <= 0:
            return []
        self._next[output] = first + n * period
        start = int(round(first)) - pre
        rec = record_sweeps(scen, self.seed, modality=modality, output=output,
                            duration_s=(period * (n - 1) + pre + post + 1) / self.fs, fs_hz=self.fs, rate_hz=rate_hz,
                            pre_ms=pre_ms, post_ms=post_ms, current_ma=current_ma, start_s=start / self.fs)
        return self._sweeps(rec, modality, SSEP_OUTPUTS[output], post_ms)[:n]

    def _mep(self, scen: dict[str, Any], t: float, trigger: int) -> list[tuple[float, Sweep]]:
        from ionm_hw.sweeps import record_sweeps

        pre_ms, post_ms = WINDOW_MS["mep"]
        span = (pre_ms + post_ms) / 1000
        rec = record_sweeps(scen, self.seed, modality="mep", duration_s=span + 2 / self.fs, fs_hz=self.fs,
                            rate_hz=1.0 / (4 * span), pre_ms=pre_ms, post_ms=post_ms, start_s=t - pre_ms / 1000)
        return self._sweeps(rec, "mep", "TcMEP", post_ms)[:1]

    def _sweeps(self, rec: dict[str, Any], modality: str, source: str, post_ms: float) -> list[tuple[float, Sweep]]:
        names = tuple(rec["channel_names"])
        chans = tuple(self._patient.channel_names.index(nm) for nm in names)
        out = []
        for k, t in enumerate(rec["stim_time_s"]):
            sw = Sweep(float(t), int(round(float(t) * self.fs)), modality, source, float(rec["fs"]),
                       int(rec["pre_samples"]), chans, names, np.ascontiguousarray(rec["sweeps"][k], dtype=np.float32))
            out.append((float(t) + post_ms / 1000, sw))
        return out
