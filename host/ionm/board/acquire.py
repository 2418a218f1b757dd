"""Live acquisition from a board: a session that survives board resets, and the stimulus-locked sweeps.

BoardSession keeps a board configured and streaming. When the board reboots mid-case (its watchdog, a
brown-out, a cable) it re-handshakes, reconfigures and restarts acquisition by itself, reloads the
stimulation programs, and leaves stimulation STOPPED: resuming it is the technologist's decision, and the
console shows the reset. LiveCase turns the stream plus the board's stimulus events (latched sample
indices) into Sweep records, cut from the samples [stim - pre, stim + post); a sweep that lost samples
on the link carries NaN there and is rejected downstream with that reason, never silently patched.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionm.board import link as ln
from ionm.protocol import messages as m
from ionm.sweep import Sweep


class BoardSession:
    def __init__(self, port: str, *, on_data: Callable[[ln.DataBlock], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._user_event = on_event
        self._user_data = on_data
        self.config: dict[str, Any] | None = None
        self.conf_reply: dict[str, Any] | None = None
        self.programs: list[dict[str, Any]] | None = None
        self.acquiring = False
        self.resets = 0
        self.recovering = threading.Event()
        self._lock = threading.Lock()
        self._hunt: Any = None  # the hunt under way (ionm.board.hunt.HuntListener)
        # The port in a relay process of its own: the case's evaluation and display load cannot starve the board.
        self.link = ln.BoardLink(ln.open_port(port, relay=True), on_data=self._data, on_event=self._event,
                                 heartbeat_s=0.025)
        self.welcome = ln.connect(self.link, timeout=10)

    # -- commands ------------------------------------------------------------------------------------
    def configure(self, config: dict[str, Any]) -> dict[str, Any]:
        self.config = dict(config)
        self.conf_reply = self.link.request(m.CONFIGURE, self.config)
        return self.conf_reply

    def start(self) -> None:
        self.link.request(m.START, {})
        self.acquiring = True

    def stop(self) -> None:
        self.acquiring = False
        self.link.request(m.STOP, {})

    def load_programs(self, programs: list[dict[str, Any]]) -> None:
        self.link.request(m.STIM_PROGRAM, {"programs": programs})
        self.programs = programs

    def start_stimulation(self, program: int | list[int] | None = None) -> dict[str, Any]:
        """Start every loaded program (None), one (an index) or several together (a list: one start index for
        all, so that their phase_us interleave them exactly, SPEC 5.8)."""
        body: dict[str, Any] = {} if program is None else {"program": program}
        reply: dict[str, Any] = self.link.request(m.STIM_START, body)
        return reply

    def stop_stimulation(self) -> None:
        self.link.request(m.STIM_STOP, {})

    def hunt(self, channels: list[int], *, lo_ma: float, hi_ma: float, resolution_ma: float = 0.5,
             rate_hz: float = 5.0, p2p_uv: float = 100.0, window_ms: tuple[int, int] = (5, 40),
             max_pulses: int | None = None, timeout: float | None = None) -> Any:
        """Run a threshold hunt on the probe output (SPEC 5.11) and wait for its end: an
        ionm.board.hunt.HuntResult (thresholds per channel, every pulse and response). Acquisition must run
        with the channels in it. Parameters outside the probe's limits raise HuntError before anything is sent."""
        from ionm.board.hunt import HuntListener, request_body

        body = request_body(channels, lo_ma=lo_ma, hi_ma=hi_ma, resolution_ma=resolution_ma, rate_hz=rate_hz,
                            p2p_uv=p2p_uv, window_ms=window_ms, max_pulses=max_pulses)
        listener = HuntListener()
        listener.active = True
        self._hunt = listener
        try:
            reply = self.link.request(m.HUNT, body)
            n = int(reply["max_pulses"])
            return listener.wait(timeout if timeout is not None else 2.0 + n * 1000.0 / body["rate_mhz"] * 1.5)
        finally:
            self._hunt = None

    def measure_impedance(self, channels: list[int] | None = None,
                          outputs: list[int] | None = None) -> dict[str, Any]:
        """The board's electrode impedance check (SPEC 5.10); acquisition must be stopped."""
        from ionm.board.tools.impedance import request

        return request(self.link, channels, outputs)

    def close(self) -> None:
        try:
            if self.acquiring:
                self.link.request(m.STOP, {}, timeout=0.5, retries=1)
        except (ln.LinkError, ln.BoardError):
            pass
        self.link.close()

    # -- stream and recovery ---------------------------------------------------------------------------
    def _data(self, block: ln.DataBlock) -> None:
        if self._user_data:
            self._user_data(block)

    def _event(self, body: dict[str, Any]) -> None:
        # An event can arrive before self.link is assigned (a board booting as the port opens): no session yet,
        # so no reset mid-session; the reader thread must not die of it (the live-case bench saw it do so).
        link = getattr(self, "link", None)
        if body.get("kind") == "boot" and link is not None and link.handshaken:
            self.resets += 1
            self.recovering.set()
            threading.Thread(target=self._recover, name="ionm-recover", daemon=True).start()
        hunt = getattr(self, "_hunt", None)
        if hunt is not None:
            hunt.on_event(body)
        if self._user_event:
            self._user_event(body)

    def _recover(self) -> None:
        with self._lock:
            for _attempt in range(5):
                try:
                    self.welcome = ln.connect(self.link, timeout=5)
                    if self.config is not None:
                        self.conf_reply = self.link.request(m.CONFIGURE, self.config)
                    if self.programs:
                        self.link.request(m.STIM_PROGRAM, {"programs": self.programs})
                    if self.acquiring:
                        self.link.request(m.START, {})
                    break
                except (ln.LinkError, ln.BoardError):
                    time.sleep(0.2)
            self.recovering.clear()
        if self._user_event:
            self._user_event({"kind": "recovered", "resets": self.resets,
                              "detail": "board reset: acquisition resumed, programs reloaded (stimulation stopped)"})


@dataclass
class SweepSpec:
    """How the host cuts and labels the sweeps of one stimulation program."""

    modality: str  # "ssep-upper" | "ssep-lower" | "mep"
    source: str  # e.g. "L median"
    channels: tuple[int, ...]  # board channels recorded for this program
    pre_ms: float
    post_ms: float
    train: int = 1  # stimuli per sweep: a TcMEP train's sweep is aligned to its last pulse
    train_gap_ms: float = 12.0  # pulses further apart than this start a new train
    electrical: bool = True  # False: acoustic stimuli (BAEP clicks), which leave no artefact in other sweeps


OTHER_ARTEFACT_MS = 3.0  # blanked after every stimulus that falls inside another stimulus's sweep


REJECT_TRAIN_IN_SWEEP = "TcMEP train inside the sweep"
REJECT_STIMULUS_IN_MEP = "another stimulus inside the MEP window"
REJECT_STIMULUS_IN_BAEP = "an electrical stimulus inside the BAEP window"


class LiveCase:
    """Sweeps from a BoardSession: feed() blocks and events (as the session's callbacks), iterate sweeps().

    Interleaved programs put other outputs' stimuli inside a sweep (four outputs at 4.7 Hz are 53 ms apart;
    a tibial sweep is 95 ms long). The host knows every stimulus index, so their artefacts are blanked by
    linear interpolation over OTHER_ARTEFACT_MS; the sweep's own stimulus is left for the pipeline.

    Two foreign stimuli are not blanked but rejected, because what they evoke lasts longer than their
    artefact: a TcMEP train inside any other sweep (muscle responses of mV over the whole window), and any
    other stimulus inside an MEP window (an SSEP pulse's M-wave and F-wave in the muscle recorded). The
    board's hold-off (protocol/SPEC.md §5.8) keeps both from happening; a rejection means it did not, and
    is counted by reason (`rejected`)."""

    def __init__(self, specs: dict[int, SweepSpec], channel_names: dict[int, str], history_s: float = 2.0) -> None:
        self.specs = specs
        self.channel_names = channel_names
        self.history_s = history_s
        self._conf: dict[str, Any] | None = None
        self._buf: np.ndarray | None = None  # [n, n_channels] µV ring
        self._buf_first = 0  # sample index of _buf[0]
        self._valid_until = 0  # samples below this index are in _buf (or NaN where lost)
        self._pending: list[tuple[int, int]] = []  # (stim index, program)
        self._trains: dict[int, list[int]] = {}  # program -> pulse indices of the train in progress
        self._stimuli: list[tuple[int, int]] = []  # recent (stimulus index, program) of every program
        self.blanked = 0  # artefacts of other stimuli blanked inside sweeps
        self.rejected: dict[str, int] = {}  # sweeps not delivered, by reason
        self._out: queue.Queue[Sweep | None] = queue.Queue()
        self._lock = threading.Lock()
        self.t0_index = 0
        self.sweeps_cut = 0
        self.runs = 1  # acquisition runs seen (a new one starts at index 0)

    def set_specs(self, specs: dict[int, SweepSpec]) -> None:
        """New programs on the board: sweeps of the old ones still pending are dropped, not mislabelled."""
        with self._lock:
            self.specs = specs
            self._pending = []
            self._trains = {}

    def set_configuration(self, conf_reply: dict[str, Any]) -> None:
        with self._lock:
            self._conf = conf_reply
            self._scale = np.array([conf_reply["vref_uv"] / conf_reply["full_scale_code"] / g
                                    for g in conf_reply["gain"]], dtype=np.float32)
            n = int(self.history_s * conf_reply["rate_hz"])
            self._buf = np.full((n, len(conf_reply["channels"])), np.nan, dtype=np.float32)
            self._buf_first = 0
            self._valid_until = 0
            self._pending = []

    def on_data(self, block: ln.DataBlock) -> None:
        with self._lock:
            if self._conf is None or self._buf is None or block.cfg != self._conf["cfg"]:
                return
            buf = self._buf
            n_buf = buf.shape[0]
            start, n = block.first_index, block.counts.shape[0]
            if start < self._buf_first or (start == 0 and self._valid_until > 0):
                # A new acquisition run (after host-lost, a stop, a board reset): its index restarts at 0, so
                # the old run's samples and pending stimuli are over. Its sweeps restart the source's clock.
                buf[:] = np.nan
                self._buf_first = start
                self._valid_until = start
                self._pending = []
                self._trains = {}
                self._stimuli = []
                self.runs += 1
            end = start + n
            if end - self._buf_first > n_buf:  # slide the window (lost stretches stay NaN)
                shift = end - self._buf_first - n_buf
                if shift >= n_buf:
                    buf[:] = np.nan
                else:
                    buf[:-shift] = buf[shift:]
                    buf[-shift:] = np.nan
                self._buf_first += shift
            lo = start - self._buf_first
            buf[max(lo, 0):lo + n] = (block.counts * self._scale)[max(-lo, 0):]
            self._valid_until = end
            self._cut_ready()

    def on_event(self, body: dict[str, Any]) -> None:
        if body.get("kind") == "stim" and body.get("program", -1) in self.specs:
            prog, index = int(body["program"]), int(body["index"])
            spec = self.specs[prog]
            with self._lock:
                self._stimuli.append((index, prog))
                del self._stimuli[:-64]
                if spec.train > 1:  # collect the train; its sweep is locked to the last pulse
                    fs = float(self._conf["rate_hz"]) if self._conf else 1.0
                    train = self._trains.setdefault(prog, [])
                    if train and index - train[-1] > spec.train_gap_ms * fs / 1000:
                        train.clear()  # an incomplete train (a latch lost): start over
                    train.append(index)
                    if len(train) < spec.train:
                        return
                    train.clear()
                self._pending.append((index, prog))
                self._cut_ready()

    def _cut_ready(self) -> None:
        if self._conf is None or self._buf is None:
            return
        fs = float(self._conf["rate_hz"])
        chan_pos = {c: i for i, c in enumerate(self._conf["channels"])}
        # one block more than the window: a stimulus latched in the window's last block is reported just
        # after that block's data, and must be known before its artefact can be blanked
        margin = int(self._conf["samples_per_frame"])
        blank = max(1, int(round(OTHER_ARTEFACT_MS * fs / 1000)))
        keep = []
        for stim, prog in self._pending:
            spec = self.specs[prog]
            pre = int(round(spec.pre_ms * fs / 1000))
            post = int(round(spec.post_ms * fs / 1000))
            if stim + post + margin > self._valid_until:
                keep.append((stim, prog))
                continue
            lo = stim - pre - self._buf_first
            if lo < 0:
                continue  # older than the history: dropped (cannot happen unless the host stalled > history)
            reason = self._foreign(stim, prog, pre, post)
            if reason is not None:
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                continue
            cols = [chan_pos[c] for c in spec.channels if c in chan_pos]
            data = self._buf[lo:lo + pre + post, cols].T.copy()
            for other, other_prog in self._stimuli:  # blank the artefacts of the other stimuli inside this sweep
                a = other - (stim - pre)
                if other == stim or a + blank <= 0 or a >= pre + post:
                    continue
                if other_prog in self.specs and not self.specs[other_prog].electrical:
                    continue  # a click: nothing to blank
                a0, a1 = max(a, 1), min(a + blank, pre + post - 1)
                left, right = data[:, a0 - 1], data[:, a1]
                frac = (np.arange(a0, a1) - (a0 - 1)) / (a1 - (a0 - 1))
                data[:, a0:a1] = left[:, None] + (right - left)[:, None] * frac[None, :]
                self.blanked += 1
            self.sweeps_cut += 1
            self._out.put(Sweep(t_s=stim / fs, stim_index=stim, modality=spec.modality, source=spec.source, fs=fs,
                                pre_samples=pre, channels=tuple(spec.channels),
                                channel_names=tuple(self.channel_names.get(c, "ch%d" % c) for c in spec.channels),
                                data_uv=data))
        self._pending = keep

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.rejected)

    def _foreign(self, stim: int, prog: int, pre: int, post: int) -> str | None:
        """Why the sweep of `prog` at `stim` must be rejected for another program's stimulus, or None."""
        mep = self.specs[prog].train > 1
        acoustic = not self.specs[prog].electrical
        for other, other_prog in self._stimuli:
            if other_prog == prog or not stim - pre <= other < stim + post:
                continue
            spec = self.specs.get(other_prog)
            if spec is not None and spec.train > 1:
                return REJECT_TRAIN_IN_SWEEP
            if spec is not None and not spec.electrical:
                continue  # a click inside another sweep: it evokes nothing there and leaves no artefact
            if mep:
                return REJECT_STIMULUS_IN_MEP
            if acoustic:  # an electrical artefact of hundreds of µV in a 0.5-µV BAEP sweep: rejected, not blanked
                return REJECT_STIMULUS_IN_BAEP
        return None

    def sweeps(self, timeout: float | None = None) -> Iterator[Sweep]:
        """Sweeps in stimulus order as they complete; ends after close()."""
        while True:
            try:
                sweep = self._out.get(timeout=timeout)
            except queue.Empty:
                return
            if sweep is None:
                return
            yield sweep

    def close(self) -> None:
        self._out.put(None)
