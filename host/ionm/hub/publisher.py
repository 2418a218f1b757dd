"""Publish a case to JetStream in order, once, whatever the network does.

publish() only queues (it is called on the engine thread and must not block). A thread of its own runs the
NATS client (nats-py, asyncio): it sends the queued messages one after the other, each with its JetStream
message id, and waits for the stream's acknowledgement before the next. When the server cannot be reached
the message is sent again, and again, until it is acknowledged; nothing later overtakes it, so after an
outage the stream back-fills in order, and a message whose acknowledgement was lost is stored once
(de-duplication by id within messages.DUPLICATE_WINDOW_S). Messages wait in memory (up to `outbox_max`; beyond,
the oldest display-only kinds are dropped and counted, alerts and the timeline never): a console that is
killed loses what had not been sent yet. Published to the room's own JetStream (ionm.hub.leaf.RoomServer, a leaf
node of the hub), a message is on the room's disk once acknowledged, and the hub's stream sources it from there
(docs/OVERSIGHT.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

from ionm.hub import messages as hm

NEVER_DROPPED = ("header", "alerts", "event", "technical", "stimulation", "screws")
RETRY_S = 0.5
ACK_TIMEOUT_S = 2.0


class Publisher:
    def __init__(self, servers: str | list[str], site: str, room: str, case: str, *, outbox_max: int = 100_000,
                 user: str | None = None, password: str | None = None, prefix: str = "ionm",
                 ensure: bool = True, tls_ca: str | None = None, nkey_seed: str | None = None) -> None:
        """servers: the hub's nats-server (direct; a hub cluster: every node's URL, or URLs separated by commas),
        or the room's own (ionm.hub.leaf.RoomServer: then prefix "ionmroom" and ensure=False, the room server
        keeps its stream); ensure: create the IONM stream if the server has none; tls_ca: the CA file the hub's
        certificate must chain to (a hub with TLS, ionm.hub.tls); nkey_seed: the room's nkey seed (read with
        ionm.hub.identity.read_seed) instead of user and password."""
        self.prefix, self.ensure = prefix, ensure
        self.servers = [u.strip() for u in servers.split(",") if u.strip()] if isinstance(servers, str) \
            else list(servers)
        self.site, self.room, self.case = site, room, case
        self.outbox_max = outbox_max
        self._auth: dict[str, Any] = {"user": user, "password": password} if user else {}
        if nkey_seed:  # the room's nkey (ionm.hub.identity.read_seed): it signs the server's challenge
            self._auth["nkeys_seed_str"] = nkey_seed
        if tls_ca:
            from ionm.hub.tls import client_context

            self._auth["tls"] = client_context(tls_ca)
        self._outbox: deque[tuple[int, str, bytes]] = deque()  # (seq, subject, payload)
        self._seq = 0
        self.session = hm.new_session()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stats = {"queued": 0, "published": 0, "duplicates": 0, "retries": 0, "dropped": 0, "connected": False}
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ionm-hub-publish", daemon=True)
        self._thread.start()

    # -- the caller's side --------------------------------------------------------------------------------
    def publish(self, kind: str, body: Any) -> int:
        """Queue one message; its seq."""
        subj = hm.subject(self.site, self.room, self.case, kind, self.prefix)
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._outbox.append((seq, subj, hm.encode(kind, seq, self.case, body, session=self.session)))
            self.stats["queued"] += 1
            if len(self._outbox) > self.outbox_max:
                self._drop_one()
        self._wake.set()
        return seq

    def _drop_one(self) -> None:
        for i, (_seq, subj, _p) in enumerate(self._outbox):
            if subj.rsplit(".", 1)[1] not in NEVER_DROPPED:
                del self._outbox[i]
                self.stats["dropped"] += 1
                return

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._outbox)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message is acknowledged (True) or timeout passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.pending:
                return True
            time.sleep(0.02)
        return not self.pending

    def close(self, flush_timeout: float = 5.0) -> None:
        self.flush(flush_timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # -- the client's thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import nats

        async def disconnected() -> None:
            self.stats["connected"] = False

        async def reconnected() -> None:
            self.stats["connected"] = True

        async def error(exc: Exception) -> None:  # the client's own reports (a refused reconnect): kept, not printed
            self.last_error = repr(exc)

        nc = None
        while not self._stop.is_set():
            try:
                nc = await nats.connect(self.servers, allow_reconnect=True, max_reconnect_attempts=-1,
                                        reconnect_time_wait=RETRY_S, connect_timeout=2,
                                        disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
                                        **self._auth)
                break
            except Exception as exc:  # no server yet: keep queuing, try again
                self.last_error = repr(exc)
                await asyncio.sleep(RETRY_S)
        if nc is None:
            return
        self.stats["connected"] = True
        js = nc.jetstream()
        stream_ready = not self.ensure
        try:
            while not (self._stop.is_set() and not self.pending):
                if not stream_ready:
                    try:
                        await ensure_stream(js)
                        stream_ready = True
                    except Exception as exc:
                        self.last_error = repr(exc)
                        await asyncio.sleep(RETRY_S)
                        continue
                with self._lock:
                    head = self._outbox[0] if self._outbox else None
                if head is None:
                    self._wake.clear()
                    await asyncio.get_running_loop().run_in_executor(None, self._wake.wait, 0.2)
                    continue
                seq, subj, payload = head
                try:
                    ack = await js.publish(subj, payload, timeout=ACK_TIMEOUT_S,
                                           headers={"Nats-Msg-Id": hm.msg_id(self.case, self.session, seq)})
                except Exception as exc:  # no acknowledgement: the same message again, nothing overtakes it
                    self.last_error = repr(exc)
                    self.stats["retries"] += 1
                    await asyncio.sleep(RETRY_S)
                    continue
                with self._lock:
                    if self._outbox and self._outbox[0][0] == seq:
                        self._outbox.popleft()
                self.stats["published"] += 1
                if ack.duplicate:
                    self.stats["duplicates"] += 1
        finally:
            await nc.close()


async def ensure_stream(js: Any, replicas: int = 1) -> None:
    """The IONM stream (every ionm.> subject, on disk, de-duplicating by message id); created if missing, with
    `replicas` replicas (a hub cluster: ionm.hub.cluster), or raised to them if it has fewer."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(hm.STREAM)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=hm.STREAM, subjects=[hm.SUBJECTS], storage=StorageType.FILE,
                                         duplicate_window=hm.DUPLICATE_WINDOW_S, num_replicas=replicas))
        return
    if (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
