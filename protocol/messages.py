# Message layer of the IONM wire protocol (SPEC.md §3, messages.cddl). Runs on MicroPython and CPython.
#
# Every frame payload is one CBOR array whose first element is the message type:
#   request  (host -> board):  [type, rid, body]      rid: 1..65535, echoed by the reply
#   reply    (board -> host):  [ACK, rid, body] or [ERROR, rid, {"code", "name", "detail"}]
#   event    (board -> host):  [EVENT, 0, {"kind": ..., ...}]
#   data     (board -> host):  [DATA, cfg, first_index, leadoff, samples]
#                              [DATA_RICE, cfg, first_index, leadoff, block]  (rice.py, SPEC 5.4.1)
# SCHEMA is the fingerprint of messages.cddl (CRC-32 of its normalised text, see schema_fingerprint());
# a test recomputes it, so the CDDL cannot change without this constant changing with it.

VERSION = 1
SCHEMA = 0x6335F73B

# Message types.
HELLO = 1
WELCOME = 2
GET_INFO = 3
INFO = 4
CONFIGURE = 5
START = 6
STOP = 7
HEARTBEAT = 8
ACK = 9
ERROR = 10
DATA = 16
EVENT = 17
DATA_RICE = 18
STIM_PROGRAM = 20
STIM_START = 21
STIM_STOP = 22
IMPEDANCE = 23
HUNT = 27
CAL_READ = 24
CAL_WRITE = 25
SELF_TEST = 26
FW_BEGIN = 28
FW_CHUNK = 29
FW_COMMIT = 30
RESET = 31

# Error codes: (code, name). Limits are 0x20.., so a host can tell "refused for safety" at a glance.
E_MALFORMED = 1  # payload is not a well-formed message
E_UNKNOWN_TYPE = 2
E_BAD_FIELD = 3  # a field is missing, of the wrong type, or not one of the allowed values
E_STATE = 4  # not allowed in the current state (e.g. START before CONFIGURE)
E_VERSION = 5  # no common protocol version
E_LINK_BUDGET = 6  # acquisition would exceed the USB link budget
E_BUSY = 7
E_INTERNAL = 8
E_STORAGE = 9
E_LIMIT_CURRENT = 0x20
E_LIMIT_WIDTH = 0x21
E_LIMIT_CHARGE = 0x22
E_LIMIT_ENERGY = 0x23
E_LIMIT_RATE = 0x24
E_LIMIT_TRAIN = 0x25
E_LIMIT_IPI = 0x26
E_LIMIT_TRAIN_INTERVAL = 0x27
E_LIMIT_OUTPUT = 0x28
E_LIMIT_IMPEDANCE = 0x29
E_LIMIT_LEVEL = 0x2A  # an auditory click or its masking louder than allowed (safety.auditory)

ERROR_NAMES = {
    E_MALFORMED: "malformed",
    E_UNKNOWN_TYPE: "unknown-type",
    E_BAD_FIELD: "bad-field",
    E_STATE: "bad-state",
    E_VERSION: "version",
    E_LINK_BUDGET: "link-budget",
    E_BUSY: "busy",
    E_INTERNAL: "internal",
    E_STORAGE: "storage",
    E_LIMIT_CURRENT: "limit-current",
    E_LIMIT_WIDTH: "limit-width",
    E_LIMIT_CHARGE: "limit-charge",
    E_LIMIT_ENERGY: "limit-energy",
    E_LIMIT_RATE: "limit-rate",
    E_LIMIT_TRAIN: "limit-train",
    E_LIMIT_IPI: "limit-ipi",
    E_LIMIT_TRAIN_INTERVAL: "limit-train-interval",
    E_LIMIT_OUTPUT: "limit-output",
    E_LIMIT_IMPEDANCE: "limit-impedance",
    E_LIMIT_LEVEL: "limit-level",
}

TYPE_NAMES = {
    HELLO: "hello", WELCOME: "welcome", GET_INFO: "get-info", INFO: "info", CONFIGURE: "configure",
    START: "start", STOP: "stop", HEARTBEAT: "heartbeat", ACK: "ack", ERROR: "error", DATA: "data",
    EVENT: "event", DATA_RICE: "data-rice", STIM_PROGRAM: "stim-program", STIM_START: "stim-start",
    STIM_STOP: "stim-stop",
    IMPEDANCE: "impedance", HUNT: "hunt",
    CAL_READ: "cal-read", CAL_WRITE: "cal-write", SELF_TEST: "self-test", FW_BEGIN: "fw-begin",
    FW_CHUNK: "fw-chunk", FW_COMMIT: "fw-commit", RESET: "reset",
}


class ProtocolError(Exception):
    """A request the board refuses: carries the error code and a human-readable detail."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def error_body(code, detail):
    return {"code": code, "name": ERROR_NAMES.get(code, "unknown"), "detail": detail}


def schema_fingerprint(cddl_text):
    """CRC-32 of the CDDL with comments and all white space removed: layout edits keep the fingerprint,
    any change to a rule changes it."""
    import binascii

    parts = []
    for line in cddl_text.split("\n"):
        cut = line.find(";")
        if cut >= 0:
            line = line[:cut]
        parts.append("".join(line.split()))
    return binascii.crc32("".join(parts).encode()) & 0xFFFFFFFF
