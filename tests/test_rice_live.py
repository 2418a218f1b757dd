"""`encoding: "rice"` end to end on the virtual board: the full board (16 ch x 16 kSPS continuous) is accepted
compressed and still refused raw; a live stream gives DataBlocks whose counts are exactly the blocks' (decoded
by the reference codec, and re-encoded to the very bytes the board sent); a corrupt block is dropped and
counted by the host, never a crash, and its samples are counted lost."""

from __future__ import annotations

import time

import cbor2
import pytest

from ionm import board
from ionm.board import link as ln
from ionm.protocol import framing, messages as m, rice


def test_full_board_is_accepted_with_rice_and_refused_raw(connected):
    _vb, link, _welcome = connected
    full = {"rate_hz": 16000, "samples_per_frame": 32}
    with pytest.raises(ln.BoardError) as exc:
        link.request(m.CONFIGURE, full)
    assert exc.value.code == m.E_LINK_BUDGET
    ack = link.request(m.CONFIGURE, dict(full, encoding="rice"))
    budget = board.load()["link"]["budget_bytes_per_s"]
    assert ack["encoding"] == "rice" and len(ack["channels"]) == 16 and ack["rate_hz"] == 16000
    assert ack["wire_bytes_per_s"] > budget >= ack["expected_bytes_per_s"]  # worst case raw, expected fits
    assert (ack["wire_bytes_per_s"], ack["expected_bytes_per_s"]) == (785000, 477500)  # SPEC 5.3's figures
    assert link.request(m.CONFIGURE, {"rate_hz": 2000})["encoding"] == "raw"  # the default
    with pytest.raises(ln.BoardError) as exc:
        link.request(m.CONFIGURE, dict(full, encoding="zip"))
    assert exc.value.code == m.E_BAD_FIELD
    # even compressed, a configuration whose expected load is over the budget is refused
    with pytest.raises(ln.BoardError) as exc:
        link.request(m.CONFIGURE, {"rate_hz": 16000, "samples_per_frame": 1, "encoding": "rice"})
    assert exc.value.code == m.E_LINK_BUDGET and "rice" in exc.value.detail


def test_live_rice_stream_is_lossless_and_decodes_to_the_blocks_the_board_sent(tmp_path):
    from ionm.board.virtual import VirtualBoard

    err = open(tmp_path / "board.stderr", "w")
    payloads: list[bytes] = []
    blocks: list[ln.DataBlock] = []
    with VirtualBoard(scenario="stable", seed=5, stderr=err) as vb:
        link = ln.BoardLink(ln.open_port(vb.device), heartbeat_s=0.025, on_data=blocks.append)
        real = link._dispatch

        def capture(payload: bytes) -> None:
            payloads.append(payload)
            real(payload)

        link._dispatch = capture  # type: ignore[method-assign]
        try:
            ln.connect(link, timeout=10)
            conf = link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 40, "encoding": "rice",
                                              "input": ["normal"] * 12 + ["shorted", "shorted", "test", "test"]})
            link.request(m.START, {})
            time.sleep(2.0)
            link.request(m.STOP, {})
            time.sleep(0.2)
        finally:
            link.close()
    err.close()
    assert conf["encoding"] == "rice"
    data = [cbor2.loads(p) for p in payloads]
    data = [d for d in data if d[0] in (m.DATA, m.DATA_RICE)]
    assert data and all(d[0] == m.DATA_RICE for d in data)
    assert link.stats.samples_lost == 0 and link.stats.blocks_undecodable == 0
    assert len(blocks) == len(data) >= 100
    modes = set()
    for d, blk in zip(data, blocks, strict=True):
        block = d[4]
        modes.add(block[0])
        counts = rice.decode(block, 16)
        assert blk.counts.ravel().tolist() == counts and blk.counts.shape == (40, 16)
        assert rice.encode(counts, 16) == block  # the board's encoder is the reference's, on real data
    assert rice.MODE_RICE in modes
    ratio = link.stats.block_bytes / (3 * 16 * link.stats.samples_received)
    assert ratio < 0.75, ratio
    indices = [b.first_index for b in blocks]
    assert indices == list(range(0, 40 * len(blocks), 40))


def _frames(blocks: list[tuple[int, bytes]], cfg: int) -> bytes:
    return b"".join(framing.encode(cbor2.dumps([m.DATA_RICE, cfg, first, 0, block]), k, m.SCHEMA)
                    for k, (first, block) in enumerate(blocks))


class _Sink:
    """A transport that never delivers anything (the test feeds the link's dispatcher itself)."""

    def read(self, n: int) -> bytes:
        time.sleep(0.01)
        return b""

    in_waiting = 0

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


def test_a_corrupt_block_is_dropped_and_counted_and_its_samples_counted_lost():
    got: list[ln.DataBlock] = []
    link = ln.BoardLink(_Sink(), on_data=got.append)
    try:
        link._configs[1] = {"cfg": 1, "channels": [0, 1], "rate_hz": 4000}
        counts = [[100 + s, -50 - 2 * s] for s in range(10)]
        flat = [v for row in counts for v in row]
        good = rice.encode(flat, 2)
        assert good[0] == rice.MODE_RICE
        bad = bytes([good[0], good[1], good[2], 30]) + good[4:]  # k = 30: not a valid block
        truncated = good[:-3]
        for first, block in ((0, good), (10, bad), (20, truncated), (30, b""), (40, good)):
            link._dispatch(cbor2.dumps([m.DATA_RICE, 1, first, 0, block]))
        assert link.stats.blocks_undecodable == 3
        assert [b.first_index for b in got] == [0, 40]
        assert link.stats.samples_lost == 30  # the three dropped blocks, exactly
        assert got[1].counts.tolist() == counts
    finally:
        link.close()


def _stream_counts(encoding: str, tmp_path, seconds: float = 1.0):
    """All counts of one run of a fresh virtual board with a patient (seed 5: the same signal every run)."""
    import numpy as np

    from ionm.board.virtual import VirtualBoard

    blocks: list[ln.DataBlock] = []
    err = open(tmp_path / ("board-%s.stderr" % encoding), "w")
    with VirtualBoard(scenario="stable", seed=5, stderr=err) as vb:
        link = ln.BoardLink(ln.open_port(vb.device), heartbeat_s=0.025, on_data=blocks.append)
        try:
            ln.connect(link, timeout=10)
            link.request(m.CONFIGURE, {"rate_hz": 4000, "samples_per_frame": 40, "encoding": encoding})
            link.request(m.START, {})
            time.sleep(seconds)
            link.request(m.STOP, {})
            time.sleep(0.2)
        finally:
            link.close()
    err.close()
    assert link.stats.samples_lost == 0 and blocks
    assert [b.first_index for b in blocks] == list(range(0, 40 * len(blocks), 40))
    return np.concatenate([b.counts for b in blocks])


def test_a_rice_stream_gives_the_very_counts_a_raw_stream_gives(tmp_path):
    """The hardware model is deterministic per sample for a seed: the same board streamed raw and then rice
    delivers the same int32 counts, sample for sample, to the host."""
    raw = _stream_counts("raw", tmp_path)
    comp = _stream_counts("rice", tmp_path)
    n = min(len(raw), len(comp))
    assert n >= 2000 and raw.dtype == comp.dtype
    assert (raw[:n] == comp[:n]).all()


def test_the_full_board_streams_compressed_and_every_loss_is_counted(tmp_path):
    """16 ch x 16 kSPS continuous with rice on the virtual board with a patient: accepted, decoded without an
    undecodable block, about half the raw bytes, and whatever a loaded machine loses is exactly what the
    board's overrun events report (SPEC 5.3: never silent)."""
    from ionm.board.virtual import VirtualBoard

    events: list[dict] = []
    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(scenario="stable", seed=8, stderr=err) as vb:
        link = ln.BoardLink(ln.open_port(vb.device), heartbeat_s=0.025, on_event=events.append)
        try:
            ln.connect(link, timeout=10)
            conf = link.request(m.CONFIGURE, {"rate_hz": 16000, "encoding": "rice"})
            link.request(m.START, {})
            time.sleep(1.5)
            stop = link.request(m.STOP, {})
            time.sleep(0.3)
        finally:
            link.close()
    err.close()
    s = link.stats
    assert conf["channels"] == list(range(16)) and conf["samples_per_frame"] == 32
    assert s.blocks_undecodable == 0 and s.frames_rejected == 0
    assert s.samples_received >= 16000
    overruns = sum(e["lost"] for e in events if e.get("kind") == "overrun")
    assert s.samples_lost == overruns
    assert s.samples_received + s.samples_lost == stop["samples"]
    assert s.block_bytes / (3 * 16 * s.samples_received) < 0.6
