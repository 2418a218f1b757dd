"""`ionm flash`: build the firmware for the board's architecture and install it.

Three ways:
- `--dry-run`: build and print the manifest (files, sizes, SHA-256, firmware hash) without a board.
- default, over the MicroPython REPL (mpremote's transport): for a board that runs plain MicroPython. Every
  file is written beside the old one (NAME.new), read back as a SHA-256 computed on the board, and only
  when all match are they switched in; a stale NAME.py that would shadow a new NAME.mpy is removed, the
  update slots are cleared (the flashed image becomes the base the boot stage runs), and /fw_manifest.json
  records version and hash. The board is then soft-reset and asked over the ionm protocol which firmware
  it runs.
- `--update`, over the ionm protocol (SPEC §5.9): for a board already running the firmware (its link
  ignores Ctrl-C, so there is no REPL). Chunks with their own SHA-256, commit, reboot into a trial of the
  new slot; success when the board answers hello with the new hash, a rollback reported as a failure.

A board whose MicroPython cannot load the build (.mpy version, board.json mcu.micropython_min_version) is
refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

UPDATE_CHUNK = 4096  # bytes per fw-chunk: the protocol's maximum
SLOT_STATE = ("fw_boot.json", "fw_boot.json.new", "fw_staging.bin")  # the boot stage's records (firmware/bootslot.py)
SLOT_DIRS = ("fw_a", "fw_b")


# ---- full flash over the REPL --------------------------------------------------------------------------------
class FlashError(Exception):
    pass


def _switch_code(names: list[str], stale: list[str]) -> str:
    """Board-side: each NAME.new over NAME (remove first: rename does not replace on every port), stale
    files and the update slots removed."""
    return (
        "import os\n"
        "def _rm(p):\n"
        " try:\n  os.remove(p)\n except OSError:\n  pass\n"
        "for n in %r:\n _rm(n)\n os.rename(n + '.new', n)\n"
        "for n in %r:\n _rm(n)\n"
        "for d in %r:\n"
        " try:\n  fs = os.listdir(d)\n except OSError:\n  continue\n"
        " for f in fs:\n  _rm(d + '/' + f)\n"
        " os.rmdir(d)\n" % (names, stale, list(SLOT_DIRS)))


def deploy(repl: Any, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Build for the architecture of the board in its raw REPL (a ReplBoard), refuse it if its MicroPython
    cannot load the build, then write, verify and switch in every file and record the manifest. Returns
    the manifest written."""
    from ionm.board.tools import image
    from ionm.board.tools.calibration import now_iso
    from ionm.board.tools.progress import ProgressBar

    impl = repl.implementation()
    build = image.build(out, image.arch_of(int(impl["mpy"])))
    image.check_compatible(build, int(impl["mpy"]), str(impl["version"]))
    names = sorted(build.files)
    total = sum(len(d) for d in build.files.values())
    with ProgressBar("flash", total, enabled=progress) as bar:
        done = 0
        for name in names:
            data = build.files[name]
            repl.write_file(name + ".new", data, lambda n, _t, base=done: bar.update(base + n))
            done += len(data)
            bar.update(done)
    for name in names:  # all read back before anything is switched: a failed transfer leaves the old firmware
        want = hashlib.sha256(build.files[name]).hexdigest()
        got = repl.sha256(name + ".new")
        if got != want:
            repl.write_file(name + ".new", build.files[name])  # one retry of a damaged transfer
            got = repl.sha256(name + ".new")
            if got != want:
                raise FlashError("%s: the board holds SHA-256 %s, expected %s; nothing was switched"
                                 % (name, got[:16], want[:16]))
    stale = [n[:-4] + ".py" for n in names if n.endswith(".mpy") and n[:-4] + ".py" not in build.files]
    repl.exec(_switch_code(names, stale + list(SLOT_STATE)))
    for name in names:
        got = repl.sha256(name)
        if got != hashlib.sha256(build.files[name]).hexdigest():
            raise FlashError("%s: SHA-256 %s on the board after the switch" % (name, got[:16]))
    manifest = build.manifest(flashed=now_iso(), micropython=impl)
    data = json.dumps(manifest, indent=1).encode()
    repl.write_file(image.MANIFEST_NAME + ".new", data)
    repl.exec(_switch_code([image.MANIFEST_NAME], []))
    if repl.sha256(image.MANIFEST_NAME) != hashlib.sha256(data).hexdigest():
        raise FlashError("%s did not read back as written" % image.MANIFEST_NAME)
    return manifest


def flash(port: str, out: Path, *, soft_reset: bool = True, progress: bool = True) -> dict[str, Any]:
    """Full flash over the REPL; returns {manifest, running} (running: the firmware the board reports
    over the protocol after its reset, or None without a reset)."""
    from ionm.board.tools.repl import ReplBoard, ReplError

    try:
        repl = ReplBoard(port, soft_reset=soft_reset)
    except ReplError as exc:
        raise FlashError(str(exc) + _why_no_repl(port)) from exc
    try:
        if soft_reset:
            repl.exec("import os\nos.chdir('/')")  # the flash root, where the boot looks for main.py
        manifest = deploy(repl, out, progress=progress)
    finally:
        repl.close(restart=soft_reset)
    running = _running_firmware(port) if soft_reset else None
    if running is not None and running.get("hash") != manifest["hash"]:
        raise FlashError("flashed and verified, but the board now reports firmware %s (hash %s), not %s"
                         % (running.get("version"), str(running.get("hash"))[:16], manifest["hash"][:16]))
    return {"manifest": manifest, "running": running}


def _why_no_repl(port: str) -> str:
    """If the port speaks the ionm protocol, say so: its firmware ignores Ctrl-C, so there is no REPL."""
    from ionm.board import link as ln

    try:
        link = ln.BoardLink(ln.open_port(port))
    except ln.LinkError:
        return ""
    try:
        welcome = ln.connect(link, timeout=2)
        fw = welcome["info"]["firmware"]
        return ("; the board runs the ionm firmware %s (hash %s), whose link ignores Ctrl-C: use "
                "`ionm flash --update --port %s`, or see docs/BOARD-TOOLS.md for a first install"
                % (fw["version"], fw["hash"][:16], port))
    except (ln.LinkError, ln.BoardError):
        return ""
    finally:
        link.close()


def _running_firmware(port: str, timeout: float = 15.0) -> dict[str, Any] | None:
    from ionm.board import link as ln

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            link = ln.BoardLink(ln.open_port(port))
        except ln.LinkError:  # USB re-enumerating after the reset
            time.sleep(0.5)
            continue
        try:
            return dict(ln.connect(link, timeout=5)["info"]["firmware"])
        except (ln.LinkError, ln.BoardError):
            pass
        finally:
            link.close()
    return None


# ---- update over the protocol -----------------------------------------------------------------------------
def send_image(session: Any, img: bytes, *, chunk: int = UPDATE_CHUNK, progress: bool = True) -> dict[str, Any]:
    """fw-begin, fw-chunk (resuming where the board says when a chunk is refused), fw-commit. Returns the
    commit's ack {slot, hash}."""
    from ionm.board import link as ln
    from ionm.board.tools.progress import ProgressBar
    from ionm.protocol import messages as m

    session.request(m.FW_BEGIN, {"size": len(img), "sha256": hashlib.sha256(img).digest(), "chunk": chunk})
    offset, refusals = 0, 0
    with ProgressBar("update", len(img), enabled=progress) as bar:
        while offset < len(img):
            part = img[offset:offset + chunk]
            try:
                reply = session.request(m.FW_CHUNK, {"offset": offset, "data": part,
                                                     "sha256": hashlib.sha256(part).digest()})
            except ln.BoardError as exc:
                resume = re.search(r"(?:expected offset|resend from) (\d+)", exc.detail)
                refusals += 1
                if exc.code != m.E_BAD_FIELD or resume is None or refusals > 5:
                    raise
                offset = int(resume.group(1))  # a reply lost and the request retried: go on from there
                continue
            offset = int(reply["received"])
            bar.update(offset)
    # The board resets right after acking: never retry a commit (the retry would meet the new firmware).
    ack: dict[str, Any] = session.request(m.FW_COMMIT, {}, timeout=15.0, retries=0)
    return ack


def update(port: str, out: Path, *, img: bytes | None = None, chunk: int = UPDATE_CHUNK, progress: bool = True,
           boot_timeout: float = 30.0) -> dict[str, Any]:
    """Protocol-level update with a build for the board's architecture (img: send these bytes instead of
    the build's image). Returns {ok, rolled_back, slot, hash, previous, running, detail}."""
    from ionm.board import link as ln
    from ionm.board.tools import image
    from ionm.board.tools.session import ToolSession
    from ionm.protocol import messages as m

    with ToolSession(port) as session:
        info = session.info
        mpy = int(info["micropython"]["mpy"])
        build = image.build(out, image.arch_of(mpy))
        image.check_compatible(build, mpy, str(info["micropython"]["version"]))
        img = build.image if img is None else img
        expected = hashlib.sha256(img).hexdigest()
        previous = dict(info["firmware"])
        n_events = len(session.events)
        ack = send_image(session, img, chunk=chunk, progress=progress)
        result: dict[str, Any] = {"ok": False, "rolled_back": False, "slot": ack["slot"], "hash": ack["hash"],
                                  "previous": previous, "running": None, "detail": ""}
        if ack["hash"] != expected:
            result["detail"] = "the board committed hash %s, not the image's %s" % (ack["hash"][:16], expected[:16])
            return result
        deadline = time.monotonic() + boot_timeout
        after = n_events
        while True:
            found = session.wait_event("boot", after, max(deadline - time.monotonic(), 0.0))
            if found is None:
                result["detail"] = "the board did not come back within %.0f s of the commit" % boot_timeout
                return result
            after, boot = found[0] + 1, found[1]
            if boot.get("rollback"):
                result.update(rolled_back=True, running={"version": boot.get("firmware"), "hash": boot.get("hash"),
                                                         "slot": boot.get("slot")},
                              detail="the new firmware did not confirm itself (it reset before completing a hello): "
                                     "the board rolled back to slot %s, firmware %s"
                                     % (boot.get("slot"), boot.get("firmware")))
                return result
            if boot.get("hash") != expected:
                continue  # an older boot record, or the trial restarting: wait for the next one
            try:
                ln.connect(session.link, timeout=10)  # the hello that confirms the trial slot
                running = dict(session.request(m.GET_INFO)["firmware"])
            except (ln.LinkError, ln.BoardError):
                continue  # it reset again before answering: the next boot says whether it rolled back
            result["running"] = running
            result["ok"] = running.get("hash") == expected
            result["detail"] = ("running firmware %s from slot %s" % (running.get("version"), ack["slot"])
                                if result["ok"] else "the board reports hash %s" % str(running.get("hash"))[:16])
            return result
