"""Issue 17: requests the firmware used to accept too leniently (or refuse too late) are refused with the
spec's error codes, on the virtual board (the firmware on MicroPython, behind a pty)."""

from __future__ import annotations

import pytest

from ionm import board
from ionm.board import link as ln
from ionm.protocol import messages as m

D = board.load()
PULSE = {"kind": "pulse", "output": 0, "current_ua": 1000, "width_us": 100, "rate_mhz": 4700}
TRAIN = {"kind": "tcmep", "count": 3, "ipi_us": 2000, "interval_ms": 0}


def refused(link, mtype: int, body: dict) -> ln.BoardError:
    with pytest.raises(ln.BoardError) as err:
        link.request(mtype, body)
    return err.value


def test_hello_with_another_schema_is_refused_and_the_right_one_welcomed(connected):
    _vb, link, welcome = connected
    assert welcome["schema"] == m.SCHEMA
    err = refused(link, m.HELLO, {"versions": [m.VERSION], "schema": m.SCHEMA ^ 0x10000})  # same low 16 bits
    assert err.code == m.E_VERSION and "schema" in err.detail
    assert refused(link, m.HELLO, {"versions": [m.VERSION], "schema": "x"}).code == m.E_BAD_FIELD
    assert link.request(m.HELLO, {"versions": [m.VERSION], "schema": m.SCHEMA})["schema"] == m.SCHEMA
    assert link.request(m.HELLO, {"versions": [m.VERSION]})["version"] == m.VERSION  # schema is optional


def test_stim_start_program_must_be_an_index_or_an_array_of_distinct_indices_when_present(connected):
    _vb, link, _w = connected
    link.request(m.CONFIGURE, {"rate_hz": 2000, "channels": [0]})
    link.request(m.START, {})
    link.request(m.STIM_PROGRAM, {"programs": [PULSE, dict(PULSE, output=1)]})
    for bad in (None, -1, 2, "0", 0.0, True, [], [0, 0], [0, 2], [0, True], [[0]], [0, None], [0, 1, 0],
                {"0": 0}):
        assert refused(link, m.STIM_START, {"program": bad}).code == m.E_BAD_FIELD, bad
    assert link.request(m.STIM_START, {"program": 0})["start_index"] >= 0
    assert link.request(m.STIM_START, {"program": [1, 0]})["start_index"] >= 0  # together
    assert link.request(m.STIM_START, {})["start_index"] >= 0  # absent: all programs
    link.request(m.STIM_STOP, {})


def test_a_tcmep_set_that_cannot_keep_the_train_interval_is_refused_at_stim_program(connected):
    """Two TcMEP programs start their first trains together at a stim-start of all: refused whole, at once,
    with limit-train-interval, and the programs loaded before stay."""
    _vb, link, _w = connected
    link.request(m.STIM_PROGRAM, {"programs": [PULSE]})
    for second in (TRAIN, dict(TRAIN, interval_ms=D["safety"]["tcmep_train_interval_ms_min"] * 5)):
        err = refused(link, m.STIM_PROGRAM, {"programs": [PULSE, TRAIN, second]})
        assert err.code == m.E_LIMIT_TRAIN_INTERVAL, err
    assert link.request(m.STIM_PROGRAM, {"programs": [PULSE, TRAIN]})["programs"] == 2


def test_starting_a_running_program_again_restarts_it_instead_of_running_it_twice(connected):
    """SPEC 5.8: stim-start {program: i} again restarts program i. (It used to add a second run of it, whose
    pulses the per-output minimum interval then had to skip: pulses_skipped in the status event.)"""
    import time

    _vb, link, _w = connected
    events: list[dict] = []
    link.on_event = events.append
    link.request(m.CONFIGURE, {"rate_hz": 2000, "channels": [0], "samples_per_frame": 8})
    link.request(m.START, {})
    link.request(m.STIM_PROGRAM, {"programs": [dict(PULSE, rate_mhz=9700)]})
    link.request(m.STIM_START, {"program": 0})
    time.sleep(0.05)
    link.request(m.STIM_START, {"program": 0})
    time.sleep(1.0)
    link.request(m.STIM_STOP, {})
    stims = [e for e in events if e["kind"] == "stim"]
    status = [e for e in events if e["kind"] == "status"]
    assert len(stims) >= 5 and status
    assert status[-1]["pulses_skipped"] == 0, status[-1]


def test_a_request_too_big_for_the_heap_to_decode_gets_its_error_under_its_own_rid(connected):
    """A well-formed payload whose decoding needs more memory than the board has (4000 empty maps: 4 kB on the
    wire, far more as objects) is refused as malformed, and the reply carries the request's rid, read from the
    envelope's head, so the host's request ends with that error at once instead of waiting out its retries
    in silence (it was rid 0, which no request waits for)."""
    _vb, link, _w = connected
    with pytest.raises(ln.BoardError) as err:
        link.request(m.GET_INFO, {"x": [{}] * 4000}, retries=0)
    assert err.value.code == m.E_MALFORMED and "memory" in err.value.detail
    assert link.request(m.GET_INFO, {})["board"]["serial"]  # and the board carries on
