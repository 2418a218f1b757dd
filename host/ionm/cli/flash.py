"""`ionm flash`: build the firmware and install it on a board (ionm.board.tools.flash)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ionm.board.tools.flash import FlashError, flash, update
from ionm.cli.common import fail

HELP = "build the firmware and install it on a board (REPL, or --update over the protocol)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", help="serial device of the board (e.g. /dev/ttyACM0)")
    p.add_argument("--dry-run", action="store_true", help="build and print the manifest; no board needed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--update", action="store_true",
                   help="update a board that runs the ionm firmware, over the protocol (no REPL needed)")
    p.add_argument("--out", help="build directory (default: a temporary one)")
    p.add_argument("--no-soft-reset", action="store_true",
                   help="REPL flash without soft resets: files go to the REPL's current directory and the board "
                        "is left in its REPL (ports without soft reset, such as the MicroPython unix port)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ---- command line ----------------------------------------------------------------------------------------------
def _print_manifest(manifest: dict[str, Any]) -> None:
    for f in manifest["files"]:
        print("%-20s %7d  %s" % (f["name"], f["size"], f["sha256"]))
    print("firmware %s for %s (.mpy v%d): %d files, %d bytes, image %d bytes\nhash %s"
          % (manifest["version"], manifest["arch"], manifest["mpy_version"], len(manifest["files"]),
             sum(f["size"] for f in manifest["files"]), manifest["image_bytes"], manifest["hash"]))


def run(args: argparse.Namespace) -> int:
    from ionm.board import firmware as firmware_build, link as ln
    from ionm.board.tools import image

    if not args.dry_run and not args.port:
        return fail("flash", 2, "--port is required (or --dry-run)")
    tmp = None
    if args.out:
        out = Path(args.out)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ionm-flash-")
        out = Path(tmp.name) / "firmware"
    try:
        if args.dry_run:
            try:
                manifest = image.build(out).manifest()
            except firmware_build.BuildError as exc:
                return fail("flash", 1, "build failed: %s" % exc)
            if args.json:
                print(json.dumps(manifest, indent=1))
            else:
                _print_manifest(manifest)
            return 0
        progress = not args.quiet and not args.json
        try:
            if args.update:
                res = update(args.port, out, progress=progress)
                if args.json:
                    print(json.dumps(res, indent=1))
                else:
                    print("%s: %s" % ("updated" if res["ok"] else "UPDATE FAILED", res["detail"]))
                    print("previous %s %s\nnow      %s %s" % (
                        res["previous"]["version"], res["previous"]["hash"][:16],
                        (res["running"] or {}).get("version"), str((res["running"] or {}).get("hash"))[:16]))
                return 0 if res["ok"] else 1
            res = flash(args.port, out, soft_reset=not args.no_soft_reset, progress=progress)
        except firmware_build.BuildError as exc:
            return fail("flash", 1, "build failed: %s" % exc)
        except image.Incompatible as exc:
            return fail("flash", 1, "refused: %s" % exc)
        except FlashError as exc:
            return fail("flash", 1, "%s" % exc)
        except ln.LinkError as exc:
            return fail("flash", 2, "%s" % exc)
        except ln.BoardError as exc:
            return fail("flash", 1, "the board refused: %s" % exc)
        if args.json:
            print(json.dumps(res, indent=1))
        else:
            _print_manifest(res["manifest"])
            running = res["running"]
            print("verified on the board%s" % ("; running firmware %s" % running["version"] if running else
                                              " (not reset: start main.py to run it)"))
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()
