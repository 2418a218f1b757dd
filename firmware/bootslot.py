# Boot stage: choose the firmware slot before anything else is imported. A slot installed by a protocol
# update (updater.py) is booted once as a trial; if that boot never confirms itself (a host completing a
# hello), the next boot rolls back to the previous slot. This file and main.py are only replaced by a
# full `ionm flash`, never by a protocol update, so a bad update cannot break the way back.
import json
import os
import sys

SLOT_DIR = ""  # the directory the running firmware was imported from ("" = the flashed base image)


def state_dir():
    getenv = getattr(os, "getenv", None)  # the unix port (virtual board) names a directory; the board uses /
    d = getenv("IONM_STATE_DIR") if getenv else None
    return d or ""


def _path(name):
    d = state_dir()
    return (d + "/" if d else "/") + name


def _write(boot):
    tmp = _path("fw_boot.json.new")
    with open(tmp, "w") as fh:
        json.dump(boot, fh)
    try:
        os.remove(_path("fw_boot.json"))
    except OSError:
        pass
    os.rename(tmp, _path("fw_boot.json"))


def select():
    """(slot, rolled_back): put the chosen slot first on sys.path."""
    global SLOT_DIR
    try:
        with open(_path("fw_boot.json")) as fh:
            boot = json.load(fh)
    except (OSError, ValueError):
        boot = {}
    slot = boot.get("active")
    rolled_back = False
    trial = boot.get("trial")
    if trial:
        if boot.get("tried"):  # the trial boot never confirmed itself: back to the previous slot
            boot["trial"], boot["tried"] = None, False
            rolled_back = True
        else:
            boot["tried"] = True
            slot = trial
        _write(boot)
    if slot:
        SLOT_DIR = _path("fw_" + slot)
        sys.path.insert(0, SLOT_DIR)
    return slot, rolled_back


def confirm():
    """The running trial slot works (a host completed a hello): make it the active slot."""
    try:
        with open(_path("fw_boot.json")) as fh:
            boot = json.load(fh)
    except (OSError, ValueError):
        return
    if boot.get("trial") and boot.get("tried"):
        boot["active"], boot["trial"], boot["tried"] = boot["trial"], None, False
        _write(boot)


def boot_record():
    try:
        with open(_path("fw_boot.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}
