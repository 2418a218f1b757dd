"""The board's port in a relay process (ionm.board.relay): the host's load cannot starve the board, and a host
that hangs or dies still stops stimulation (protocol/SPEC.md §5.6, docs/SAFETY.md)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ionm.board import link as ln, relay
from ionm.protocol import messages as m

FAST = {"kind": "pulse", "output": 0, "current_ua": 20000, "width_us": 100, "rate_mhz": 19900, "averaged": False}


@pytest.fixture
def stim_board(tmp_path):
    from ionm.board.virtual import VirtualBoard

    log = tmp_path / "pulses.jsonl"
    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(pulse_log=str(log), stderr=err) as vb:
        vb.pulse_log_path = str(log)
        yield vb
    err.close()


def _open(vb, events, *, relay_on: bool, on_data=None):
    link = ln.BoardLink(ln.open_port(vb.device, relay=relay_on), on_event=events.append, on_data=on_data,
                        heartbeat_s=None)  # the host itself sends no heartbeat: only what the test sends
    ln.connect(link, timeout=10)
    link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 20})
    link.request(m.START, {})
    return link


@pytest.mark.parametrize("relay_on", [False, True], ids=["in-process", "relay"])
def test_a_host_slower_than_the_watchdog_but_alive_keeps_stimulation_only_through_the_relay(stim_board, relay_on):
    """The host's frames come every 250 ms, as when its threads are starved of CPU: in-process the board stops
    stimulating (its 100 ms watchdog), through the relay it does not (the host is alive, the relay feeds it)."""
    events: list[dict] = []
    link = _open(stim_board, events, relay_on=relay_on)
    try:
        link.request(m.STIM_PROGRAM, {"programs": [FAST]})
        link.request(m.STIM_START, {})
        for _ in range(6):  # 1.5 s of a host heard every 250 ms
            time.sleep(0.25)
            link.send(m.HEARTBEAT, {})
        watchdog = [e for e in events if e["kind"] == "watchdog"]
        if relay_on:
            assert watchdog == []
        else:
            assert watchdog, "without the relay a host heard every 250 ms must trip the 100 ms watchdog"
    finally:
        link.close()


def test_a_host_that_hangs_still_stops_stimulation_through_the_relay(stim_board):
    """The relay speaks for the host only while the host is alive: after HOST_ALIVE_S of host silence it stops,
    and the board's watchdog stops the pulses 100 ms (of board time) after the relay's last frame."""
    events: list[dict] = []
    link = _open(stim_board, events, relay_on=True)
    try:
        link.request(m.STIM_PROGRAM, {"programs": [FAST]})
        link.request(m.STIM_START, {})  # the host's last frame: then it hangs (sends nothing, keeps reading)
        t_end = time.monotonic() + 10 * relay.HOST_ALIVE_S + 5
        while time.monotonic() < t_end and not [e for e in events if e["kind"] == "watchdog"]:
            time.sleep(0.05)
    finally:
        link.close()
    watchdog = [e for e in events if e["kind"] == "watchdog"]
    assert len(watchdog) == 1, events[-5:]
    delivered = [json.loads(line) for line in open(stim_board.pulse_log_path)]
    start = min(p["index"] for p in delivered)
    # The relay spoke for the host for HOST_ALIVE_S after its last frame, and no longer (board time, 4 kSPS).
    spoke_s = (watchdog[0]["last_host_index"] - start) / 4000
    assert spoke_s <= relay.HOST_ALIVE_S + 0.2
    assert (max(p["index"] for p in delivered) - watchdog[0]["last_host_index"]) / 4 <= 100  # ms


def test_a_host_that_dies_stops_stimulation_through_the_relay(stim_board, tmp_path):
    """Closing the host's end (as a killed host does) ends the relay; the board stops within its watchdog."""
    events: list[dict] = []
    link = _open(stim_board, events, relay_on=True)
    link.request(m.STIM_PROGRAM, {"programs": [FAST]})
    link.request(m.STIM_START, {})
    time.sleep(0.3)
    proc = link.transport.proc
    link.close()
    assert proc.wait(timeout=5) is not None  # the relay is gone
    time.sleep(1.0)  # far past the board's 100 ms watchdog
    n_after = sum(1 for _ in open(stim_board.pulse_log_path))
    time.sleep(0.5)  # at 19.9 Hz, ~10 pulses if the board were still stimulating
    assert sum(1 for _ in open(stim_board.pulse_log_path)) == n_after


def test_a_stalled_host_reader_loses_no_sample_through_the_relay(stim_board):
    """The host stops reading for 2 s (evaluation fell behind, the machine is busy): the relay keeps the board's
    bytes, and once the host reads again every sample is there. Display may lag; acquisition never drops."""
    events: list[dict] = []
    stalled = threading.Event()

    def on_data(block) -> None:
        if not stalled.is_set():
            stalled.set()
            time.sleep(2.0)  # the reader thread is stuck: nothing is read from the port meanwhile

    link = _open(stim_board, events, relay_on=True, on_data=on_data)
    beat = threading.Event()

    def heartbeat() -> None:  # the host's heartbeat thread still runs: the host is alive, only slow to read
        while not beat.wait(0.025):
            link.send(m.HEARTBEAT, {})

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        assert stalled.wait(10)
        time.sleep(3.0)
        received = link.stats.samples_received
        assert received >= 4000 * 2.5  # the 2 s backlog and what followed (3 s since the stall began)
        assert link.stats.samples_lost == 0
        assert not [e for e in events if e["kind"] in ("overrun", "host-lost", "watchdog")]
    finally:
        beat.set()
        link.close()


def test_the_relay_refuses_a_port_that_does_not_open_with_the_reason(tmp_path):
    missing = tmp_path / "not-a-tty"
    missing.write_text("")
    with pytest.raises(ln.LinkError, match="cannot open"):
        ln.open_port(str(missing), relay=True)
