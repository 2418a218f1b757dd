# The board definition (hardware/board.json), read once at boot. On the board the file is flashed as
# /board.json (or comes with a protocol update); on the virtual board IONM_BOARD names it. Nothing in the
# firmware restates its numbers.
import json
import os


def load():
    import bootslot

    getenv = getattr(os, "getenv", None)
    paths = [getenv("IONM_BOARD")] if getenv is not None and getenv("IONM_BOARD") else []
    if bootslot.SLOT_DIR:
        paths.append(bootslot.SLOT_DIR + "/board.json")  # the definition that came with an update
    paths.append("/board.json")
    for path in paths:
        try:
            with open(path) as fh:
                return _drop_docs(json.load(fh))
        except OSError:
            continue
    raise OSError("no board definition (board.json) found in %r" % paths)


def _drop_docs(d):
    """The "_doc" strings are for people: dropped, they free ~3 kB of the board's heap."""
    d.pop("_doc", None)
    for v in d.values():
        if isinstance(v, dict):
            _drop_docs(v)
    return d
