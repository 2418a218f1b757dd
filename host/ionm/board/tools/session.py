"""A tool's session with a board over the ionm protocol: handshake, then fixed-length captures.

Every measurement of the board tools is one capture: configure, (load stimulation programs), start, collect
a contiguous run of samples and the board's stimulus events, stop. Starting afresh for each measurement
point means every sample of a capture was taken with the settings made before it (a generator level, a
stimulation program), with no host timestamp involved: sample indices are the board's own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ionm.board import link as ln
from ionm.board.tools.calibration import Calibration
from ionm.protocol import messages as m

SETTLE_SAMPLES = 8  # dropped at the start of a capture: more than the ADS1299's sinc filter settling (4 tDR)
ATTEMPTS = 2  # a capture that lost samples on the way is taken once more


class CaptureError(Exception):
    """A capture could not be completed as a contiguous record (samples lost, board silent or reset)."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry  # worth taking again (a loss on the way), not a board that stopped


@dataclass
class Recording:
    conf: dict[str, Any]  # the configure reply (channels, gain, vref_uv, full_scale_code, rate_hz)
    counts: np.ndarray  # int32 ADC counts (n_samples, n_channels)
    first_index: int  # board sample index of counts[0] (since start)
    events: list[dict[str, Any]] = field(default_factory=list)  # stim events of this capture, board order
    start_index: int | None = None  # stim-start's reply: where the programs began
    other_events: list[dict[str, Any]] = field(default_factory=list)  # watchdog, fault, overrun... meanwhile

    @property
    def rate_hz(self) -> float:
        return float(self.conf["rate_hz"])

    @property
    def channels(self) -> list[int]:
        return list(self.conf["channels"])

    def uv(self, cal: Calibration | None = None) -> np.ndarray:
        """µV per sample and channel; with a calibration, as the host applies it."""
        return (cal or Calibration()).to_uv(self.counts, self.conf)


class ToolSession:
    def __init__(self, port: str, *, timeout: float = 10.0) -> None:
        self.link = ln.BoardLink(ln.open_port(port), on_data=self._on_data, on_event=self._on_event,
                                 heartbeat_s=0.025)
        self._cv = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self._blocks: list[ln.DataBlock] = []
        self._cfg: int | None = None
        self._base: int | None = None  # board index of the capture's first block
        self._expected = 0
        self._lost = 0
        self.retries: list[str] = []  # why captures had to be taken again
        try:
            self.welcome: dict[str, Any] = ln.connect(self.link, timeout=timeout)
        except BaseException:
            self.link.close()
            raise

    # -- identity ----------------------------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        return dict(self.welcome["info"])

    @property
    def serial(self) -> str:
        return str(self.welcome["info"]["board"]["serial"])

    def request(self, mtype: int, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.link.request(mtype, body or {}, **kw)

    def calibration(self) -> Calibration:
        return Calibration.from_board(self.request(m.CAL_READ))

    # -- callbacks (the link's reader thread) -------------------------------------------------------------
    def _on_data(self, block: ln.DataBlock) -> None:
        with self._cv:
            if self._cfg is None or block.cfg != self._cfg:
                return
            if self._base is None:
                # The first block defines the capture's origin. Index 0 at start is the protocol's promise,
                # but the virtual board's model continues its count when acquisition is restarted quickly;
                # the firmware follows it (an overrun event), and stimulus indices stay consistent with data.
                self._base = self._expected = block.first_index
            if block.first_index != self._expected:
                self._lost += block.first_index - self._expected
            self._expected = block.first_index + block.counts.shape[0]
            self._blocks.append(block)
            self._cv.notify_all()

    def _on_event(self, body: dict[str, Any]) -> None:
        with self._cv:
            self.events.append(body)
            self._cv.notify_all()

    def wait_event(self, kind: str, after: int, timeout: float) -> tuple[int, dict[str, Any]] | None:
        """(position, event) of the first event of this kind at position >= after in self.events, waiting up
        to timeout s; None when none came."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for i in range(after, len(self.events)):
                    if self.events[i].get("kind") == kind:
                        return i, self.events[i]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(min(left, 0.1))

    # -- captures --------------------------------------------------------------------------------------------------
    def record(self, config: dict[str, Any], n_samples: int, *, programs: list[dict[str, Any]] | None = None,
               timeout: float | None = None, attempts: int = ATTEMPTS) -> Recording:
        """Configure, start, and return n_samples contiguous samples with the stimulus events inside them.
        Without programs the record begins SETTLE_SAMPLES into the acquisition; with programs, stimulation
        starts once the first block has arrived and the record begins at stim-start's start_index. A capture
        that lost samples is taken again (counted in self.retries), never patched."""
        for attempt in range(attempts):
            try:
                return self._record(config, n_samples, programs, timeout)
            except CaptureError as exc:
                if attempt + 1 == attempts or not exc.retry:
                    raise
                self.retries.append(str(exc))
        raise AssertionError("unreachable")

    def _record(self, config: dict[str, Any], n_samples: int, programs: list[dict[str, Any]] | None,
                timeout: float | None) -> Recording:
        if programs:
            # The firmware arms pulses 20 ms ahead, once per block: with longer blocks a pulse due in the
            # gap is skipped as late. Blocks of at most 10 ms keep every pulse.
            config = dict(config, samples_per_frame=min(int(config.get("samples_per_frame", 32)),
                                                         max(1, int(config["rate_hz"]) // 100)))
        conf = self.request(m.CONFIGURE, config)
        if programs:
            self.request(m.STIM_PROGRAM, {"programs": programs})
        with self._cv:
            self._blocks, self._cfg, self._base, self._expected, self._lost = [], conf["cfg"], None, 0, 0
            n_events = len(self.events)
        limit = timeout if timeout is not None else 5.0 + 3.0 * (SETTLE_SAMPLES + n_samples) / conf["rate_hz"]
        deadline = time.monotonic() + limit
        start_index = None
        try:
            self.request(m.START)
            self._wait(lambda: self._base is not None, deadline, n_events, limit)
            assert self._base is not None
            origin = self._base + SETTLE_SAMPLES
            if programs:
                # After the first block, so that the board's index and its stimulus schedule agree.
                start_index = int(self.request(m.STIM_START)["start_index"])
                origin = max(origin, start_index)
            self._wait(lambda: self._expected >= origin + n_samples, deadline, n_events, limit)
        finally:
            self._cfg = None
            try:
                if programs:
                    self.request(m.STIM_STOP)
                self.request(m.STOP)
            except (ln.LinkError, ln.BoardError):
                pass
        with self._cv:
            blocks, events, base = self._blocks, self.events[n_events:], self._base
            self._blocks = []
        if programs and any(e.get("kind") == "watchdog" for e in events):
            # the board stopped stimulating because the host's frames came late: not the board's fault
            raise CaptureError("the board's watchdog stopped the stimulation during a capture", retry=True)
        lo = origin - base
        counts = np.concatenate([b.counts for b in blocks])[lo:lo + n_samples]
        stims = [e for e in events if e.get("kind") == "stim" and origin <= e["index"] < origin + n_samples]
        others = [e for e in events if e.get("kind") not in ("stim", "status")]
        return Recording(conf, counts, origin, stims, start_index, others)

    def _wait(self, done: Any, deadline: float, n_events: int, limit: float) -> None:
        with self._cv:
            while True:
                if self._lost:  # checked first: the block after a gap may be the one that completes the record
                    raise CaptureError("%d samples per channel lost during a capture: the measurement needs a "
                                       "contiguous record" % self._lost, retry=True)
                if done():
                    return
                if any(e.get("kind") == "boot" for e in self.events[n_events:]):
                    raise CaptureError("the board reset during a capture")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaptureError("the board stopped streaming: %d samples after %.0f s"
                                       % (self._expected - (self._base or 0), limit))
                self._cv.wait(min(left, 0.2))

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> ToolSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
