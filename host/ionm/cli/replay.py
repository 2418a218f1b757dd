"""`ionm replay CASE`: play a recorded case through the console (ionm.console.replay), paced or --fast, until the
recording ends (exit 0, the alerts of the replay counted against the recorded ones), or until a signal; with
--keep-serving the console stays up after the end until a signal."""

from __future__ import annotations

import argparse
import sys

from ionm.cli.common import add_db_argument, parse_listen

HELP = "play a recorded case through the console (paced or --fast) until it ends"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", nargs="?", help="case id or uid (default: the newest)")
    add_db_argument(p)
    p.add_argument("--fast", action="store_true", help="as fast as the host can")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (default 1)")
    p.add_argument("--from", dest="from_s", type=float, default=0.0, metavar="S", help="start at case time S s")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--keep", metavar="PATH", help="keep the replay's scratch store here")
    p.add_argument("--keep-serving", action="store_true",
                   help="go on serving the console after the recording ended, until SIGINT/SIGTERM")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from ionm.case.store import CaseStore, StoreError
    from ionm.console.replay import eeg_source, prepare
    from ionm.console.serve import serve
    from ionm.console.server import ConsoleServer, tls_context

    store = CaseStore(args.db)
    try:
        case = store.case(args.case)
    except StoreError as exc:
        print("ionm replay: %s" % exc, file=sys.stderr)
        store.close()
        return 2
    tmp = None
    if args.keep:
        scratch_path = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ionm-replay-")
        scratch_path = tmp.name + "/replay.db"
    scratch = CaseStore(scratch_path)
    engine, source = prepare(store, int(case["id"]), scratch, 0.0 if args.fast else args.speed, args.from_s)
    eeg = eeg_source(store, int(case["id"]), 0.0 if args.fast else args.speed, args.from_s)
    host, port = parse_listen(args.listen)
    server = ConsoleServer(engine, scratch, tls=tls_context(args.cert, args.key) if args.cert else None,
                           auth_store=store)

    def at_end() -> bool:
        engine.store.flush()
        replayed = len(engine.store.rows("alerts", engine.case_id))
        rows = store.rows("alerts", int(case["id"]))
        # free-run EMG's A-train warnings come from samples that are not recorded: counted apart, not replayed
        emg = sum(1 for a in rows if a["stream"].startswith("emg/"))
        # nor are the BAEP's (its sweeps are not recorded; the EEG is replayed)
        neuro = sum(1 for a in rows if a["stream"].startswith("baep/"))
        print("ionm replay: end of the recording: %d sweeps%s, %d alerts (%d recorded)%s%s%s"
              % (source.sent, ", %d s of EEG" % eeg.sent if eeg is not None else "", replayed, len(rows) - emg - neuro,
                 "; %d free-run EMG warnings recorded, not replayed" % emg if emg else "",
                 "; %d BAEP alerts recorded, not replayed" % neuro if neuro else "",
                 "; serving until a signal" if args.keep_serving else ""), flush=True)
        return bool(args.keep_serving)

    try:
        serve(server, engine, source, host, port, open_browser=not args.no_browser,
              announce=lambda url: print("ionm replay: case %s at %s" % (case["uid"], url), flush=True),
              at_end=at_end, neuro_sources=[eeg] if eeg is not None else [])
    finally:
        engine.stop()
        scratch.close()
        store.close()
        if tmp is not None:
            tmp.cleanup()
    return 0

