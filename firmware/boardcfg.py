# The board definition (hardware/board.json), read once at boot. On the board the file is flashed as
# /board.json; on the virtual board IONM_BOARD names it. Nothing in the firmware restates its numbers.
import json
import os


def load():
    path = "/board.json"
    getenv = getattr(os, "getenv", None)
    if getenv is not None and getenv("IONM_BOARD"):
        path = getenv("IONM_BOARD")
    with open(path) as fh:
        return json.load(fh)
