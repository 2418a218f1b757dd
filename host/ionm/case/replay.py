"""`ionm replay CASE`: play a recorded case through the same console, paced (default) or --fast.

The recorded sweeps go through a fresh engine and pipeline, exactly as they did live; the recorded baselines
are set again at the moments they were set, and the recorded notes, acknowledgements and stimulation changes
appear in the timeline when they happened. The replay runs on a scratch case store (--keep PATH to keep it):
nothing done during a replay enters the case record. Logins use the accounts of --db.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Iterator
from typing import Any

HELP = "play a recorded case through the console (paced or --fast)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ionm.console_cmd import add_db_argument

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


class StoredCase:
    """A recorded case as a sweep source, in stimulus-time order, paced like the original (speed 0: unpaced)."""

    def __init__(self, store: Any, case_id: int, speed: float = 1.0, from_s: float = 0.0):
        self.store, self.case_id, self.speed, self.from_s = store, case_id, float(speed), float(from_s)
        self._closed = False
        self.sent = 0

    def close(self) -> None:
        self._closed = True

    def link_health(self) -> dict[str, Any]:
        return {"source": "replay of case %d" % self.case_id, "state": "stopped" if self._closed else "streaming",
                "samples_lost": 0, "sweeps": self.sent}

    def __iter__(self) -> Iterator[Any]:
        wall0 = None
        for sw, _ in self.store.iter_sweeps(self.case_id, t_from=self.from_s):
            if self._closed:
                return
            due = sw.t_s + (sw.data_uv.shape[1] - sw.pre_samples) / sw.fs
            if wall0 is None:
                wall0 = time.monotonic() - due / self.speed if self.speed > 0 else 0.0
            if self.speed > 0:
                wait = wall0 + due / self.speed - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self.sent += 1
            yield sw


def prepare(store: Any, case_id: int, scratch: Any, speed: float, from_s: float = 0.0) -> tuple[Any, StoredCase]:
    """The engine (on the scratch store) and source of a replay, with the recorded baselines and events
    scheduled."""
    from ionm.console.engine import CaseEngine, timeline_from_store

    case = store.case(case_id)
    rid = scratch.open_case(patient_id=case["patient_id"], procedure=case["procedure"],
                            meta={"replay_of": case["uid"], "source": "replay"}, user="replay")
    engine = CaseEngine(scratch, rid, queue_size=32 if speed <= 0 else 2048)

    def baseline(stream: str, user: str) -> None:
        if stream in engine.streams:
            engine.request_baseline(stream, "%s (recorded)" % user)

    for b in store.baselines(case_id):
        if b["t_s"] >= from_s:
            engine.at(b["t_s"], functools.partial(baseline, b["stream"], b["user"]))
    for item in timeline_from_store(store, case_id):
        if item["kind"] in ("note", "ack", "stim") and item["t_s"] >= from_s:
            engine.at(item["t_s"], functools.partial(engine._event, item["kind"], "[recorded] " + item["text"],
                                                     item["user"]))
    source = StoredCase(store, case_id, speed, from_s)
    engine.link_health = source.link_health
    return engine, source


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import tempfile
    import webbrowser

    from ionm.console.server import ConsoleServer, tls_context
    from ionm.console.store import CaseStore, StoreError
    from ionm.console_cmd import parse_listen

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
    host, port = parse_listen(args.listen)
    server = ConsoleServer(engine, scratch, tls=tls_context(args.cert, args.key) if args.cert else None,
                           auth_store=store)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        url = await server.start(host, port)
        engine.start()
        engine.run_source(source)
        print("ionm replay: case %s at %s" % (case["uid"], url), flush=True)
        if not args.no_browser:
            webbrowser.open(url)
        await stop.wait()
        await server.stop()

    try:
        asyncio.run(main())
    finally:
        engine.stop()
        scratch.close()
        store.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="ionm replay", description=HELP)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
