"""The operating room's own JetStream, a leaf node of the hub: publishing never waits for the hub.

RoomServer runs the room's nats-server (the same binary as the hub's, ionm.hub.natsserver) with JetStream in the
domain `<site>-<room>` and a stream `ROOM-<site>-<room>` of the subjects `ionmroom.<site>.<room>.>` on the
room's disk, and connects it to the hub's leafnode listener. The console publishes to this local server
(Publisher(room.url, ..., prefix="ionmroom", ensure=False)), so a message is stored in the room once
acknowledged, hub or no hub; a console killed during an outage loses nothing it had published. Every
JOIN_EVERY_S the room announces itself on `ionmhub.join`, which reaches the hub while the leaf is up.

On the hub, keep_sources() listens to those announcements and makes the hub's IONM stream SOURCE each room's
stream across the leaf (`external.api` = `$JS.<domain>.API`), with the subject transform
`ionmroom.<site>.<room>.>` -> `ionm.<site>.<room>.>`: the hub's subjects are the same as when a room publishes
directly, and a room's stream can bring nothing but its own room's subjects (the filter is the hub's, built
from the announced site and room, not from anything else the room says). Messages keep their Nats-Msg-Id.

After a hub restart or a leaf reconnect, nats-server retries a source only after a long back-off (measured:
around 30 s); the hub therefore re-applies a room's source (removes it and adds it again: the stream resumes
after the last message it holds from that source) when the room is heard again after SILENT_S of silence,
when the hub's own connection comes back, or when the source itself has been silent (no message, no
heartbeat) for SILENT_S while its room announces itself. docs/OVERSIGHT.md.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ionm.hub import messages as hm
from ionm.hub.natsserver import NatsServer
from ionm.hub.tls import Files, server_block

ROOM_PREFIX = "ionmroom"
JOIN = "ionmhub.join"
JOIN_EVERY_S = 2.0
SILENT_S = 5.0
HUB_DOMAIN = "hub"
DEFAULT_LEAF_PORT = 7422  # nats-server's own default for leafnode connections


def domain(site: str, room: str) -> str:
    return "%s-%s" % (hm.token(site), hm.token(room))


def room_stream(site: str, room: str) -> str:
    return "ROOM-" + domain(site, room)


def room_subjects(site: str, room: str, prefix: str = ROOM_PREFIX) -> str:
    return "%s.%s.%s.>" % (prefix, hm.token(site), hm.token(room))


def leaf_remote(url: str) -> str:
    """A hub given as nats-leaf://[USER:PASSWORD@]HOST:PORT (or nats://, tls://) as nats-server's remote URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats-leaf", "nats", "tls") or not parts.hostname or not parts.port:
        raise ValueError("a hub's leafnode address is nats-leaf://[USER:PASSWORD@]HOST:PORT, not %r" % url)
    return url


def leaf_remotes(urls: str | list[str]) -> list[str]:
    """The hub's leafnode addresses: one URL, a list, or URLs separated by commas (the nodes of a hub cluster:
    the room's server connects to any of them and moves to another when its node fails)."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    return [leaf_remote(u.strip()) for u in items if u.strip()]


def hub_conf(leaf_host: str, leaf_port: int, accounts: str = "", *, tls: Files | None = None,
             cluster: str = "") -> str:
    """The hub's nats-server configuration: JetStream in the domain `hub`, a leafnode listener, and the
    accounts and users of an access file (ionm.hub.access.server_conf), if any; tls: TLS on the client and
    leafnode ports (ionm.hub.tls); cluster: a `cluster { }` block (ionm.hub.cluster). The listener does not
    advertise its own addresses: a room reconnects to the address it was given (a relay, a NAT), never to one
    the hub learned about itself (measured: with advertising, a room behind a relay reconnected around it); a
    room of a hub cluster is given every node's address instead."""
    tls_block = server_block(tls) if tls else ""
    return 'jetstream { domain: "%s" }\n%s\nleafnodes { host: "%s", port: %d, no_advertise: true%s }\n%s\n%s' % (
        HUB_DOMAIN, tls_block, leaf_host, int(leaf_port), ", " + tls_block if tls else "", cluster, accounts)


class RoomServer:
    """The room's nats-server: JetStream (domain `<site>-<room>`, its stream on store_dir), a leaf node of the hub
    at hub_url (nats-leaf://[USER:PASSWORD@]HOST:PORT, or the list of a hub cluster's nodes), clients on loopback
    at `url`; hub_ca: the CA file that the hub's leafnode certificate must chain to (the hub has TLS); nkey_seed:
    the room's nkey seed (ionm.hub.identity.read_seed), with which the leaf connection signs in (the remote's
    `nkey`, nats-server 2.10.9 and later) instead of a user and password in the URL. The seed is then in the
    room's nats-server.conf, mode 0600 in the room's store, as a password in the URL would be."""

    def __init__(self, store_dir: str | Path, site: str, room: str, hub_url: str | list[str], *,
                 port: int | None = None, join_every_s: float = JOIN_EVERY_S, hub_ca: str | None = None,
                 nkey_seed: str | None = None) -> None:
        self.site, self.room = site, room
        self.domain, self.stream, self.subjects = domain(site, room), room_stream(site, room), room_subjects(site,
                                                                                                             room)
        tls = ", tls: { ca_file: %s }" % json.dumps(str(Path(hub_ca).resolve())) if hub_ca else ""
        nkey = ", nkey: %s" % json.dumps(nkey_seed) if nkey_seed else ""
        conf = ('jetstream { domain: "%s" }\nleafnodes { reconnect: "1s", remotes: [ { urls: %s%s%s } ] }\n'
                % (self.domain, json.dumps(leaf_remotes(hub_url)), tls, nkey))
        self.server = NatsServer(store_dir, port=port, name="ionm-room-" + self.domain, conf=conf)
        self.join_every_s = join_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.announced = 0
        self.last_error: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def announcement(self) -> dict[str, str]:
        return {"site": self.site, "room": self.room, "domain": self.domain, "stream": self.stream}

    def start(self) -> RoomServer:
        self.server.start()
        try:
            asyncio.run(self._ensure_stream())
        except Exception:
            self.server.stop()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._announce()), name="ionm-room-join",
                                        daemon=True)
        self._thread.start()
        return self

    async def _ensure_stream(self) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        nc = await nats.connect(self.url, connect_timeout=5)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 20
            while True:  # JetStream may need a moment after the server greets clients
                try:
                    try:
                        await js.stream_info(self.stream)
                    except NotFoundError:
                        await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subjects],
                                                         storage=StorageType.FILE,
                                                         duplicate_window=hm.DUPLICATE_WINDOW_S))
                    return
                except NotFoundError:
                    raise
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def _announce(self) -> None:
        import nats

        nc = await nats.connect(self.url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        payload = json.dumps(self.announcement()).encode()
        try:
            while not self._stop.is_set():
                try:
                    await nc.publish(JOIN, payload)
                    await nc.flush(timeout=2)
                    self.announced += 1
                except Exception as exc:
                    self.last_error = repr(exc)
                await asyncio.get_running_loop().run_in_executor(None, self._stop.wait, self.join_every_s)
        finally:
            await nc.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.server.stop()

    def __enter__(self) -> RoomServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def source_for(site: str, room: str) -> Any:
    """The hub's source of one room's stream: across the leaf, into the hub's subjects."""
    from nats.js.api import ExternalStream, StreamSource, SubjectTransform

    return StreamSource(name=room_stream(site, room), external=ExternalStream(api="$JS.%s.API" % domain(site, room)),
                        subject_transforms=[SubjectTransform(src=room_subjects(site, room),
                                                             dest=room_subjects(site, room, "ionm"))])


class Sources:
    """Which rooms the hub's stream sources, and when each was heard and (re)applied."""

    def __init__(self, allowed: Callable[[str, str], bool] | None = None, silent_s: float = SILENT_S) -> None:
        self.allowed = allowed
        self.silent_s = silent_s
        self.heard: dict[str, float] = {}
        self.applied: dict[str, float] = {}
        self.stale: set[str] = set()
        self.stats = {"joins": 0, "refused": 0, "added": 0, "reapplied": 0}
        self.last_error: str | None = None

    async def on_join(self, js: Any, data: bytes) -> None:
        try:
            msg = json.loads(data)
            site, room = str(msg["site"]), str(msg["room"])
            name = room_stream(site, room)
        except (ValueError, KeyError, TypeError):
            self.stats["refused"] += 1
            return
        if self.allowed is not None and not self.allowed(site, room):
            self.stats["refused"] += 1
            return
        self.stats["joins"] += 1
        now = time.monotonic()
        heard_before = self.heard.get(name)
        self.heard[name] = now
        si = await js.stream_info(hm.STREAM)
        current = {s.name: s for s in (si.config.sources or [])}
        info = {s.name: s for s in (si.sources or [])}.get(name)
        if name not in current:
            await self._apply(js, si.config, site, room, remove_first=False)
            self.stats["added"] += 1
            return
        silent_source = info is None or info.error is not None or info.active is None or info.active < 0 or \
            info.active > self.silent_s * 1e9
        silent_room = heard_before is None or now - heard_before > self.silent_s
        if (silent_source or silent_room or name in self.stale) and now - self.applied.get(name, 0.0) > self.silent_s:
            await self._apply(js, si.config, site, room, remove_first=True)
            self.stats["reapplied"] += 1

    async def _apply(self, js: Any, config: Any, site: str, room: str, *, remove_first: bool) -> None:
        name = room_stream(site, room)
        others = [s for s in (config.sources or []) if s.name != name]
        if remove_first:
            config.sources = others or None
            await js.update_stream(config)
        config.sources = others + [source_for(site, room)]
        await js.update_stream(config)
        self.applied[name] = time.monotonic()
        self.stale.discard(name)

    def hub_reconnected(self) -> None:
        self.stale.update(self.heard)


async def keep_sources(url: str | list[str], stop: asyncio.Event, sources: Sources | None = None,
                       **auth: Any) -> Sources:
    """On the hub: source every room that announces itself into the IONM stream, until stop is set."""
    import nats

    from ionm.hub.publisher import ensure_stream

    sources = sources or Sources()

    async def reconnected() -> None:
        sources.hub_reconnected()

    async def error(exc: Exception) -> None:
        sources.last_error = repr(exc)

    nc = await nats.connect(url, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                            reconnected_cb=reconnected, error_cb=error, **auth)
    js = nc.jetstream()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        queue.put_nowait(msg.data)

    try:
        await ensure_stream(js)
        await nc.subscribe(JOIN, cb=on_msg)
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            try:  # one announcement at a time: stream updates never race
                await sources.on_join(js, data)
            except Exception as exc:  # the hub is restarting, say: the room announces again in 2 s
                sources.last_error = repr(exc)
    finally:
        await nc.close()
    return sources


class SourceKeeper:
    """keep_sources() on a thread of its own (tests, or a hub that is not an asyncio program)."""

    def __init__(self, url: str | list[str], sources: Sources | None = None, **auth: Any) -> None:
        self.sources = sources or Sources()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, auth), name="ionm-hub-sources", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self, url: str | list[str], auth: dict[str, Any]) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await keep_sources(url, self._stop, self.sources, **auth)

        asyncio.run(main())

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
