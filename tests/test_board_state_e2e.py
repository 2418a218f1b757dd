"""The board's persistent state through the protocol, on the virtual board: calibration stored atomically
and validated against board.json, self-test, and a firmware update with trial boot and rollback."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from ionm import board, paths
from ionm.board import link as ln
from ionm.protocol import cbor, messages as m

D = board.load()


class Board:
    """A link that records events and can wait for one."""

    def __init__(self, device: str) -> None:
        self.events: list[dict] = []
        self.cv = threading.Condition()
        self.link = ln.BoardLink(ln.open_port(device), on_event=self._event, heartbeat_s=0.025)
        ln.connect(self.link, timeout=10)

    def _event(self, e: dict) -> None:
        with self.cv:
            self.events.append(e)
            self.cv.notify_all()

    def wait_boot(self, after: int, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        with self.cv:
            while time.monotonic() < deadline:
                boots = [e for e in self.events[after:] if e["kind"] == "boot"]
                if boots:
                    return boots[-1]
                self.cv.wait(0.1)
        raise AssertionError("no boot event")

    def close(self) -> None:
        self.link.close()


@pytest.fixture
def board_link(virtual_board):
    b = Board(virtual_board.device)
    yield virtual_board, b
    b.close()


def calibration(**over):
    cal = {"date": "2026-11-21T10:00:00Z", "operator": "bench-1", "adc_gain_ppm": [1200] * 16,
           "adc_offset_nv": [-15000] * 16, "stim_gain_ppm": [-9000, 0, 0, 0]}
    cal.update(over)
    return cal


def test_calibration_is_validated_stored_and_survives_a_reset(board_link):
    vb, b = board_link
    assert b.link.request(m.CAL_READ, {})["date"] is None
    bound = int(D["adc"]["calibration_bounds"]["gain_correction_max"] * 1e6)
    gains = [0] * 16
    gains[7] = bound + 1
    with pytest.raises(ln.BoardError) as err:
        b.link.request(m.CAL_WRITE, calibration(adc_gain_ppm=gains))
    assert err.value.code == m.E_BAD_FIELD and "ADC channel 7" in err.value.detail
    assert b.link.request(m.CAL_READ, {})["date"] is None  # refused: no effect
    gains[7] = bound
    assert b.link.request(m.CAL_WRITE, calibration(adc_gain_ppm=gains))["date"] == "2026-11-21T10:00:00Z"
    n = len(b.events)
    vb.reset_board()
    b.wait_boot(n)
    ln.connect(b.link, timeout=10)
    stored = b.link.request(m.CAL_READ, {})
    assert stored["adc_gain_ppm"] == gains and stored["operator"] == "bench-1"
    assert b.link.request(m.GET_INFO, {})["calibration"]["date"] == "2026-11-21T10:00:00Z"
    assert not list(Path(vb.state_dir).glob("*.new"))  # no half-written file left behind


def test_self_test_reports_each_check(board_link):
    _vb, b = board_link
    res = b.link.request(m.SELF_TEST, {})
    checks = {c["name"]: c for c in res["checks"]}
    assert checks["adc-id"]["passed"] and checks["adc-registers"]["passed"] and checks["heap"]["passed"]
    assert not checks["calibration"]["passed"] and res["passed"] is False  # an uncalibrated board is not ready
    b.link.request(m.CAL_WRITE, calibration())
    assert b.link.request(m.SELF_TEST, {})["passed"] is True


def image(version: str, broken: bool = False) -> bytes:
    """An update as `ionm flash --update` sends one: the build the virtual board runs (mpy-cross's .mpy files
    for the unix port), with version.py as source for the changed version string. (From source throughout,
    the updated board compiled every module in its heap and ran out of it for the next update's 4 kB chunk
    on a loaded machine: no board runs its firmware from source.)"""
    from ionm.board.tools import image as build_image

    files = dict(build_image.port_image().update_files)
    del files["version.mpy"]
    src = (paths.firmware_dir() / "version.py").read_bytes()
    files["version.py"] = src.replace(b'FIRMWARE_VERSION = "0.1.0"', b'FIRMWARE_VERSION = "%s"' % version.encode())
    assert files["version.py"] != src
    if broken:
        del files["app.mpy"]
        files["app.py"] = b"raise ImportError('this update is broken')\n"
    return cbor.dumps(files)


def send_update(b: Board, img: bytes, chunk: int = 4096) -> dict:
    digest = hashlib.sha256(img).digest()
    b.link.request(m.FW_BEGIN, {"size": len(img), "sha256": digest, "chunk": chunk})
    for off in range(0, len(img), chunk):
        part = img[off:off + chunk]
        reply = b.link.request(m.FW_CHUNK, {"offset": off, "data": part, "sha256": hashlib.sha256(part).digest()})
        assert reply["received"] == off + len(part)
    return b.link.request(m.FW_COMMIT, {}, timeout=5, retries=0)


def test_firmware_update_switches_slots_and_a_broken_update_rolls_back(board_link):
    vb, b = board_link
    first = image("0.1.1-test")
    # a corrupted chunk is refused and says where to resume
    digest = hashlib.sha256(first).digest()
    b.link.request(m.FW_BEGIN, {"size": len(first), "sha256": digest, "chunk": 4096})
    with pytest.raises(ln.BoardError) as err:
        b.link.request(m.FW_CHUNK, {"offset": 0, "data": first[:4096], "sha256": bytes(32)})
    assert "resend from 0" in err.value.detail

    n = len(b.events)
    done = send_update(b, first)
    assert done["slot"] == "a" and done["hash"] == hashlib.sha256(first).hexdigest()
    boot = b.wait_boot(n)
    assert boot["slot"] == "a" and not boot.get("rollback")
    ln.connect(b.link, timeout=10)  # the hello that confirms the trial
    info = b.link.request(m.GET_INFO, {})
    assert info["firmware"] == {"version": "0.1.1-test", "hash": done["hash"]}

    n = len(b.events)
    bad = send_update(b, image("0.1.2-broken", broken=True))
    assert bad["slot"] == "b"
    boot = b.wait_boot(n, timeout=20)  # the broken slot dies at import; the next boot rolls back
    assert boot.get("rollback") is True and boot["slot"] == "a"
    ln.connect(b.link, timeout=10)
    assert b.link.request(m.GET_INFO, {})["firmware"]["version"] == "0.1.1-test"
    assert vb.resets >= 3  # commit, the broken trial's crash, and so on: each one a board reset
