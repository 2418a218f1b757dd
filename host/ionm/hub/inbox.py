"""What travels back from the hub: physicians' acknowledgements and notes, applied in the room, each once.

A physician acknowledges an alert or writes a note on the hub's page; the hub publishes it into its stream on
`ionm.<site>.<room>.<case>.physician.<login>` (ionm.hub.messages.physician_subject; nats-server lets a physician
publish only under their own login and only to assigned rooms, ionm.hub.access). The room reads those messages
through one durable pull consumer of the hub's stream (ionm.hub.messages.physician_consumer, filter
`ionm.<site>.<room>.*.physician.*`: the access file lets the room create, read and acknowledge that consumer and no
other), directly (`$JS.API`) or across its leaf node (`$JS.hub.API`, the hub's JetStream domain), and hands each
to the console's engine as the physician's own command (role "physician": role-checked, stored, audited and on
the timeline as any command from the console; the user is `<login>@hub`, so the room sees who it was and
where it came from).

Once: the stream keeps a message until the room's consumer has acknowledged it, and the room acknowledges it only
after the command and its receipt (audit action "hub_command", with the message's id) are committed in the
case store. A message delivered again (the acknowledgement lost in a reconnect, a console restarted on the
case) finds its id among the receipts and is not applied again. Each message is answered with a "receipt" on
the room's own subjects (status applied, refused with the reason, or duplicate), which the hub's page shows.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from ionm.hub import messages as hm

RECEIPT_ACTION = "hub_command"
FETCH_WAIT_S = 1.0
RETRY_S = 0.5
COMMAND_TIMEOUT_S = 30.0
FIELDS = {"ack": ("alert", "note", "group"), "note": ("text",)}


def hub_user(physician: str) -> str:
    """The name a hub physician's command carries in the room's record."""
    return "%s@hub" % physician


class PhysicianInbox:
    """Reads the room's physicians' messages from the hub's stream and applies those for the engine's case."""

    def __init__(self, servers: str | list[str], site: str, room: str, engine: Any, publisher: Any = None, *,
                 user: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 domain: str | None = None, nkey_seed: str | None = None) -> None:
        """servers: the hub's nats-server (the room's login in user/password or in the URL), or with domain="hub"
        the room's own server (ionm.hub.leaf.RoomServer), whose leaf node reaches the hub's JetStream;
        publisher: the room's Publisher, for the receipts."""
        self.servers = [u.strip() for u in servers.split(",") if u.strip()] if isinstance(servers, str) \
            else list(servers)
        self.site, self.room, self.engine, self.publisher, self.domain = site, room, engine, publisher, domain
        self.case_uid = str(engine.case["uid"])
        self.case_id = int(engine.case_id)
        self._auth: dict[str, Any] = {"user": user, "password": password} if user else {}
        if nkey_seed:  # the room's nkey (ionm.hub.identity.read_seed): it signs the server's challenge
            self._auth["nkeys_seed_str"] = nkey_seed
        if tls_ca:
            from ionm.hub.tls import client_context

            self._auth["tls"] = client_context(tls_ca)
        from ionm.console.commands import Schema

        self._schema = Schema()  # the console's own checks of a command's fields
        self.applied: set[str] = set(self._receipts())
        self.stats = {"applied": 0, "refused": 0, "duplicates": 0, "other_case": 0, "errors": 0, "connected": False}
        self.receipts: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="ionm-hub-inbox",
                                        daemon=True)
        self._thread.start()

    def _receipts(self) -> list[str]:
        """The ids of the hub messages this case has already applied or answered (committed receipts)."""
        rows = self.engine.store.query("SELECT detail FROM audit WHERE case_id = ? AND action = ?",
                                       (self.case_id, RECEIPT_ACTION))
        return [str(json.loads(r[0]).get("id")) for r in rows]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- one message --------------------------------------------------------------------------------------
    def handle(self, subject: str, data: bytes) -> dict[str, Any] | None:
        """Apply one physician's message (on this thread; the engine runs the command on its own); its receipt,
        or None when it is for another case of the room (an earlier one)."""
        from ionm.console.commands import CommandInvalid
        from ionm.console.engine import CommandError

        where = hm.parse_subject(subject)
        if where is None or where["kind"] != hm.PHYSICIAN:
            return None
        if where["case"] != hm.token(self.case_uid):
            self.stats["other_case"] += 1
            return None
        physician = where["physician"]  # the subject's, which nats-server checked against the sender's login
        user = hub_user(physician)
        try:
            body = hm.decode(data)["body"]
            rid = str(body["id"])
        except (ValueError, KeyError, TypeError):
            return self._answer(None, physician, user, "refused", "not a physician's message of this version")
        if rid in self.applied:
            self.stats["duplicates"] += 1
            return {"id": rid, "physician": physician, "status": "duplicate", "error": None, "cmd": body.get("cmd"),
                    "alert": body.get("alert"), "t_s": self.engine.t_s, "wall": round(time.time(), 3)}
        cmd = str(body.get("cmd", ""))
        msg = {"cmd": cmd} | {k: body[k] for k in FIELDS.get(cmd, ()) if k in body}
        try:
            if cmd not in FIELDS:
                raise CommandInvalid("cmd", "from the hub: ack or note, not %r" % cmd)
            msg = self._schema.check(msg)
            result = self.engine.submit(user, "physician", msg).result(COMMAND_TIMEOUT_S)
        except (CommandInvalid, CommandError) as exc:
            return self._answer(rid, physician, user, "refused", str(exc), msg)
        return self._answer(rid, physician, user, "applied", None, msg, result)

    def _answer(self, rid: str | None, physician: str, user: str, status: str, error: str | None,
                msg: dict[str, Any] | None = None, result: Any = None) -> dict[str, Any]:
        receipt = {"id": rid, "physician": physician, "status": status, "error": error,
                   "cmd": (msg or {}).get("cmd"), "alert": (msg or {}).get("alert"), "t_s": self.engine.t_s,
                   "wall": round(time.time(), 3)}
        if rid is not None:  # committed before the hub's stream is told: a redelivery finds it
            self.engine.store.audit(self.case_id, user, RECEIPT_ACTION, receipt | {"result": result})
            self.engine.store.flush()
            self.applied.add(rid)
        self.stats["applied" if status == "applied" else "refused"] += 1
        self.receipts.append(receipt)
        return receipt

    # -- the client's thread -----------------------------------------------------------------------------
    async def _main(self) -> None:
        import nats

        async def error(exc: Exception) -> None:
            self.last_error = repr(exc)

        nc = None
        while nc is None and not self._stop.is_set():
            try:
                nc = await nats.connect(self.servers, allow_reconnect=True, max_reconnect_attempts=-1,
                                        reconnect_time_wait=RETRY_S, connect_timeout=2, error_cb=error,
                                        **self._auth)
            except Exception as exc:
                self.last_error = repr(exc)
                await asyncio.sleep(RETRY_S)
        if nc is None:
            return
        js = nc.jetstream(domain=self.domain)
        sub = None
        try:
            while not self._stop.is_set():
                if sub is None:
                    try:
                        sub = await self._subscribe(js)
                        self.stats["connected"] = True
                    except Exception as exc:  # no hub, or no stream yet: try again
                        self.last_error = repr(exc)
                        await asyncio.sleep(RETRY_S)
                        continue
                try:
                    batch = await sub.fetch(10, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    continue
                except Exception as exc:  # the hub went away mid-fetch: the durable consumer is on its disk
                    self.last_error = repr(exc)
                    self.stats["connected"] = False
                    await asyncio.sleep(RETRY_S)
                    continue
                for m in batch:
                    try:
                        receipt = await asyncio.get_running_loop().run_in_executor(None, self.handle, m.subject,
                                                                                   m.data)
                    except Exception as exc:  # the engine or the store failed: not acknowledged, so delivered
                        self.last_error = repr(exc)  # again after ack_wait, and applied then if not already
                        self.stats["errors"] += 1
                        continue
                    if receipt is not None and self.publisher is not None:
                        self.publisher.publish("receipt", receipt)
                    try:
                        await m.ack_sync(timeout=2.0)
                    except Exception as exc:  # delivered again later: its receipt makes it a duplicate
                        self.last_error = repr(exc)
        finally:
            await nc.close()

    async def _subscribe(self, js: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return await js.pull_subscribe(
            hm.physician_filter(self.site, self.room), durable=hm.physician_consumer(self.site, self.room),
            stream=hm.STREAM, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                                    ack_wait=COMMAND_TIMEOUT_S + 5, max_ack_pending=100))
