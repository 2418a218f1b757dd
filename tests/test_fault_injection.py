"""End-to-end fault tolerance: damaged bytes between the virtual board and the host, and a board reset
mid-stream. The host never crashes, rejects the damaged frames and only them, counts exactly the samples
really lost, and resumes."""

from __future__ import annotations

import time

from faultproxy import FaultProxy

from ionm.board import link as ln
from ionm.board.acquire import BoardSession


def test_host_rejects_exactly_the_damaged_frames_counts_losses_exactly_and_survives_a_reset(virtual_board):
    proxy = FaultProxy(virtual_board.device, seed=11, p_damage=0.08, p_garbage=0.05)
    events: list[dict] = []
    session = BoardSession(proxy.device, on_event=events.append)
    try:
        session.configure({"rate_hz": 2000, "samples_per_frame": 20, "channels": [0, 1, 2, 3]})
        proxy.enabled.set()
        session.start()
        time.sleep(2.0)
        virtual_board.reset_board()  # power-cycle mid-stream
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(e.get("kind") == "recovered" for e in events):
            time.sleep(0.1)
        frames_after_reset = session.link.stats.data_frames
        time.sleep(1.5)
        proxy.enabled.clear()
        session.stop()
        time.sleep(0.3)
    finally:
        session.close()
        proxy.close()
    s = session.link.stats
    assert any(e.get("kind") == "recovered" for e in events), events
    assert s.board_resets == 1 and session.resets == 1
    assert s.data_frames > frames_after_reset  # streaming resumed after the reset
    assert proxy.data_frames_damaged >= 10  # the test really damaged frames
    # exactly the damaged frames were rejected (the injector's garbage has no false SYNC) ...
    assert s.frames_rejected == proxy.frames_damaged, (s.rejected_by_reason, proxy.frames_damaged)
    # ... every intact data frame was accepted ...
    assert s.data_frames == proxy.data_frames_sent - proxy.data_frames_damaged
    # ... and the samples reported lost are exactly those inside the damaged frames
    assert s.samples_lost == proxy.samples_destroyed
    assert s.bad_messages == 0


def test_commands_survive_a_lossy_line_by_retrying(virtual_board):
    """Requests whose frames are damaged on the way are retried with the same effect."""
    import random

    link = ln.BoardLink(ln.open_port(virtual_board.device), heartbeat_s=0.025)
    rng = random.Random(3)
    real_write = link.transport.write

    def lossy_write(data: bytes) -> int | None:
        if len(data) > 20 and rng.random() < 0.3:  # damage a third of the requests
            b = bytearray(data)
            b[rng.randrange(10, len(b))] ^= 0x40
            data = bytes(b)
        return real_write(data)

    link.transport.write = lossy_write  # type: ignore[method-assign]
    try:
        ln.connect(link, timeout=10)
        for _ in range(15):
            reply = link.request(2 + 1, {}, timeout=0.5, retries=5)  # GET_INFO
            assert reply["board"]["support"] == "virtual"
    finally:
        link.close()
