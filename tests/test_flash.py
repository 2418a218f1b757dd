"""`ionm flash`: the build and its manifest, the refusal of a board that cannot load it, a full flash over
the raw REPL of the real MicroPython unix port on a pseudo-terminal (mpremote's transport, as on a board),
the flashed files booting as the firmware, and the protocol-level update with its rollback on the virtual
board."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pty
import subprocess
import tty

import pytest

from ionm import board
from ionm.board import link as ln, mpy
from ionm.board.tools import flash, image
from ionm.cli import flash as flash_cmd
from ionm.protocol import cbor

D = board.load()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    p = argparse.ArgumentParser()
    flash_cmd.add_arguments(p)
    status = flash_cmd.run(p.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return status, out, err


def test_dry_run_manifest_lists_every_built_file_with_its_hash(tmp_path, capsys):
    status, out, _err = run_cli(capsys, "--dry-run", "--json", "--out", str(tmp_path / "fw"))
    assert status == 0
    manifest = json.loads(out)
    built = {p.name: p.read_bytes() for p in (tmp_path / "fw").iterdir() if p.name != "manifest.json"}
    assert {f["name"] for f in manifest["files"]} == set(built)
    for f in manifest["files"]:
        assert f["size"] == len(built[f["name"]])
        assert f["sha256"] == hashlib.sha256(built[f["name"]]).hexdigest()
    assert manifest["arch"] == D["mcu"]["mpy_arch"] and manifest["mpy_version"] == D["mcu"]["mpy_version"]
    # the firmware hash is the SHA-256 of the update image: the CBOR map of every file but the boot stage
    update_files = {n: d for n, d in built.items() if n not in ("main.py", "bootslot.mpy")}
    assert manifest["hash"] == hashlib.sha256(cbor.dumps(update_files)).hexdigest()
    for src in ("app.py", "framing.py", "cbor.py"):  # firmware and protocol modules, compiled
        assert built[src[:-3] + ".mpy"][:2] == bytes([ord("M"), D["mcu"]["mpy_version"]])


def test_dry_run_text_names_the_hash(tmp_path, capsys):
    status, out, _err = run_cli(capsys, "--dry-run", "--out", str(tmp_path / "fw"))
    assert status == 0
    manifest = image.build(tmp_path / "again").manifest()
    assert "hash %s" % manifest["hash"] in out and "app.mpy" in out


def test_arch_table_matches_mpy_cross(tmp_path):
    src = tmp_path / "nat.py"
    src.write_text("import micropython\n@micropython.native\ndef f(x):\n    return x + 1\n")
    for code, name in image.ARCH_NAMES.items():
        out = tmp_path / ("nat_%s.mpy" % name)
        subprocess.run([image.firmware_build.mpy_cross_exe(), "-march=%s" % name, "-o", str(out), str(src)],
                       check=True, capture_output=True)
        assert image.mpy_header(out.read_bytes())[2] == code, name


def test_a_board_that_cannot_load_the_build_is_refused_with_what_to_install(tmp_path):
    b = image.build(tmp_path / "fw")
    native = 7  # armv7emsp: the reference board
    ok_mpy = b.mpy_version | 3 << 8 | native << 10
    image.check_compatible(b, ok_mpy, "1.29.0")
    with pytest.raises(image.Incompatible) as err:
        image.check_compatible(b, 5 | native << 10, "1.19.1")  # MicroPython 1.19 loads .mpy v5
    assert "loads .mpy version 5" in str(err.value) and "install MicroPython 1.24.0 or newer" in str(err.value)
    with pytest.raises(image.Incompatible) as err:
        image.check_compatible(b, b.mpy_version | 2 << 10, "1.29.0")  # an x64 port cannot run armv7emsp code
    assert "native code" in str(err.value)
    with pytest.raises(image.Incompatible) as err:
        image.check_compatible(b, ok_mpy, "1.23.0")
    assert "older than board.json mcu.micropython_min_version" in str(err.value)


@pytest.fixture
def unix_repl(tmp_path):
    """The MicroPython unix port's REPL on a pty, in a directory standing for the board's filesystem."""
    fs = tmp_path / "board-fs"
    fs.mkdir()
    master, slave = pty.openpty()
    tty.setraw(slave)
    proc = subprocess.Popen([mpy.micropython_exe(), "-i"], stdin=master, stdout=master, stderr=master, cwd=fs)
    yield os.ttyname(slave), fs
    proc.kill()
    proc.wait()
    os.close(master)
    os.close(slave)


def test_flash_over_the_raw_repl_writes_verifies_and_records(unix_repl, tmp_path):
    port, fs = unix_repl
    # what an earlier install left: a source module that would shadow the new .mpy, and an update slot
    (fs / "app.py").write_text("raise ImportError('stale')\n")
    (fs / "fw_a").mkdir()
    (fs / "fw_a" / "app.mpy").write_bytes(b"old")
    (fs / "fw_boot.json").write_text('{"active": "a"}')
    res = flash.flash(port, tmp_path / "build", soft_reset=False, progress=False)
    manifest = res["manifest"]
    on_board = json.loads((fs / "fw_manifest.json").read_text())
    assert on_board == manifest and on_board["version"] == image.firmware_version()
    assert manifest["micropython"]["mpy"] & 0xFF == manifest["mpy_version"]
    for f in manifest["files"]:
        assert hashlib.sha256((fs / f["name"]).read_bytes()).hexdigest() == f["sha256"], f["name"]
    # built for the port it found (x64), so that its native code loads there
    assert manifest["arch"] == image.arch_of(manifest["micropython"]["mpy"])
    assert not (fs / "app.py").exists() and not (fs / "fw_a").exists() and not (fs / "fw_boot.json").exists()
    assert not list(fs.glob("*.new"))
    # the image the board holds has the same identity as the one an update would send
    files = {f["name"]: (fs / f["name"]).read_bytes() for f in manifest["files"]}
    assert manifest["hash"] == hashlib.sha256(cbor.dumps({n: d for n, d in files.items()
                                                          if n not in image.BOOT_STAGE})).hexdigest()


def test_the_flashed_files_boot_as_the_firmware(unix_repl, tmp_path):
    """The deployed .mpy files alone (no source tree on the path) run as the board's firmware."""
    from ionm.board.virtual import VirtualBoard

    port, fs = unix_repl
    flash.flash(port, tmp_path / "build", soft_reset=False, progress=False)
    err = open(tmp_path / "board.stderr", "w")
    with VirtualBoard(bench=True, stderr=err) as vb:
        vb.fw_cmd = [mpy.micropython_exe(), "-X", mpy.heap_arg(), str(fs / "main.py")]
        vb.fw_env = dict(vb.fw_env, MICROPYPATH=str(fs), IONM_BOARD=str(fs / "board.json"), IONM_STATE_DIR=str(fs))
        vb.reset_board()
        link = ln.BoardLink(ln.open_port(vb.device))
        try:
            welcome = ln.connect(link, timeout=10)
        finally:
            link.close()
    err.close()
    assert welcome["info"]["firmware"]["version"] == image.firmware_version()
    assert welcome["info"]["board"]["serial"] == "SIM-0001"


def test_flash_over_the_repl_refuses_a_board_running_the_firmware(virtual_board, tmp_path, capsys):
    status, _out, err = run_cli(capsys, "--port", virtual_board.device, "--no-soft-reset", "--quiet",
                                "--out", str(tmp_path / "fw"))
    assert status == 1
    assert "no MicroPython raw REPL" in err and "runs the ionm firmware" in err and "--update" in err


def test_update_over_the_protocol_switches_and_a_broken_image_rolls_back(virtual_board, tmp_path, capsys):
    link = ln.BoardLink(ln.open_port(virtual_board.device))
    try:
        info = ln.connect(link, timeout=10)["info"]
    finally:
        link.close()
    before = info["firmware"]
    status, out, _err = run_cli(capsys, "--port", virtual_board.device, "--update", "--json", "--out",
                                str(tmp_path / "fw"))
    res = json.loads(out)
    assert status == 0 and res["ok"] and not res["rolled_back"]
    assert res["previous"] == before and res["slot"] == "a"
    b = image.build(tmp_path / "again", image.arch_of(info["micropython"]["mpy"]))  # the port's own arch
    assert res["hash"] == b.firmware_hash == res["running"]["hash"]

    broken = dict(b.update_files)
    del broken["app.mpy"]
    broken["app.py"] = b"raise ImportError('this update is broken')\n"
    res = flash.update(virtual_board.device, tmp_path / "fw2", img=cbor.dumps(broken), progress=False)
    assert not res["ok"] and res["rolled_back"] and res["slot"] == "b"
    assert res["running"]["hash"] == b.firmware_hash and res["running"]["slot"] == "a"
    assert "rolled back to slot a" in res["detail"]
    link = ln.BoardLink(ln.open_port(virtual_board.device))
    try:
        assert ln.connect(link, timeout=10)["info"]["firmware"]["hash"] == b.firmware_hash
    finally:
        link.close()


def test_the_virtual_board_runs_the_flashed_build_not_the_sources(virtual_board):
    """As a board does: the modules mpy-cross compiled (for the unix port's architecture), identified by the
    build's hash. From source, every lazy import compiled in the board's heap, a need the board never has,
    and the hunt's request ran out of memory on a loaded machine (CI, 2026-12-06)."""
    link = ln.BoardLink(ln.open_port(virtual_board.device))
    try:
        info = ln.connect(link, timeout=10)["info"]
    finally:
        link.close()
    b = image.port_image()
    assert info["firmware"] == {"version": image.firmware_version(), "hash": b.firmware_hash}
    assert image.arch_of(info["micropython"]["mpy"]) == b.arch and b.native_arch == info["micropython"]["mpy"] >> 10
    modules = {n for n in b.files if n.endswith(".mpy")}
    assert {"app.mpy", "hunt.mpy", "huntreq.mpy", "cbor.mpy"} <= modules and "main.py" in b.files
    assert virtual_board.fw_env["MICROPYPATH"].split(os.pathsep)[0] == str(b.out)


def test_old_virtual_board_builds_are_pruned_but_recent_and_current_ones_kept(tmp_path):
    """Every firmware edit makes a new build under build/virtual-board/; those unused for a day beyond the newest
    KEEP_BUILDS go, and so do half-made ones a killed builder left aside. The current build always stays."""
    import time

    now = time.time()
    day = image.STALE_S
    current = tmp_path / "c0ffee"
    current.mkdir()
    os.utime(current, (now - 10 * day, now - 10 * day))  # the one in use, however old
    old = []
    for k in range(image.KEEP_BUILDS + 3):  # newest first: k days + 1 h old
        d = tmp_path / ("%020x" % k)
        d.mkdir()
        (d / "manifest.json").write_text("{}")
        age = (k + 1) * day + 3600.0
        os.utime(d, (now - age, now - age))
        old.append(d)
    fresh = tmp_path / "feed"
    fresh.mkdir()
    os.utime(fresh, (now - 60.0, now - 60.0))  # used a minute ago: stays even beyond the newest few
    half = tmp_path / "abc.x1y2"  # mkdtemp's aside, left by a killed builder
    half.mkdir()
    os.utime(half, (now - 2 * day, now - 2 * day))
    recent_half = tmp_path / "abd.x1y2"  # another builder at work right now
    recent_half.mkdir()
    removed = image.prune_builds(tmp_path, keep=current, now=now)
    left = {d.name for d in tmp_path.iterdir()}
    assert current.name in left and fresh.name in left and recent_half.name in left
    assert half.name not in left
    # the newest KEEP_BUILDS among the other builds stay (the fresh one counts among them)
    kept = [d for d in old if d.name in left]
    assert kept == old[: image.KEEP_BUILDS - 1]
    assert set(removed) == {half, *old[image.KEEP_BUILDS - 1:]}
