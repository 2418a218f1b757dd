"""`ionm stream`: open a board, handshake, configure a default acquisition, stream, stop cleanly, and print
link statistics. The first thing to run against a new board or cable."""

from __future__ import annotations

import time
from typing import Any


def stream(port: str, seconds: float, config: dict[str, Any]) -> dict[str, Any]:
    from ionm.board import link as ln
    from ionm.protocol import messages as m

    transport = ln.open_port(port)
    blink = ln.BoardLink(transport, heartbeat_s=0.025)
    try:
        welcome = ln.connect(blink)
        conf = blink.request(m.CONFIGURE, config)
        blink.request(m.START, {})
        t0 = time.monotonic()
        time.sleep(seconds)
        stop = blink.request(m.STOP, {})
        elapsed = time.monotonic() - t0
        time.sleep(0.2)  # the frames in flight before STOP took effect
    finally:
        blink.close()
    s = blink.stats
    channels = conf["channels"]
    return {
        "port": port,
        "board": welcome["info"]["board"],
        "firmware": welcome["info"]["firmware"],
        "micropython": welcome["info"]["micropython"],
        "frames": s.frames,
        "data_frames": s.data_frames,
        "bytes": s.bytes,
        "frames_rejected": s.frames_rejected,
        "rejected_by_reason": s.rejected_by_reason,
        "samples_lost": s.samples_lost,
        "sequence_gaps": s.sequence_gaps,
        "board_resets": s.board_resets,
        "channels": len(channels),
        "sample_rate_hz": conf["rate_hz"],
        "samples_per_channel": [
            {"channel": ch, "received": blink.received_by_channel.get(ch, 0), "lost": blink.lost_by_channel.get(ch, 0)}
            for ch in channels],
        "board_samples": stop["samples"],
        "seconds": round(elapsed, 3),
        "bytes_per_s": round(s.bytes / elapsed) if elapsed else 0,
        "encoding": conf.get("encoding", "raw"),
        "blocks_undecodable": s.blocks_undecodable,
        # bytes of samples (raw) or blocks (rice) per 3-byte raw sample: the compression ratio
        "block_bytes_over_raw": round(s.block_bytes / (3 * s.samples_received * len(channels)), 4)
        if s.samples_received else None,
    }
