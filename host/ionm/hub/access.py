"""Who may read and publish what on the hub: an access file, turned into nats-server's accounts and permissions.

The access file (JSON):

    {"users": [
      {"name": "dr_lee", "nkey": "U...", "password": "$2a$...", "role": "physician",
       "rooms": ["General/OR 1", "General/OR 2"]},
      {"name": "dr_ray", "password": "...", "role": "physician", "rooms": ["Children's/*"]},
      {"name": "or1", "nkey": "U...", "role": "room", "room": "General/OR 1"}
    ]}

A room is "SITE/ROOM" (split at the first "/"; ROOM "*" is every room of the site). A user logs in with an nkey
(`"nkey"`: the user's public key, "U...", from `ionm hub --keygen`, ionm.hub.identity: the client proves it holds
the seed, and no secret is in this file or on the wire), a password, or both (a physician's password is then for
the hub's page only: the hub holds no physician's seed and signs in to NATS for the page with the password; the
physician's own NATS tools use the nkey). A password is given as is, or as a bcrypt hash ("$2a$..."), which
nats-server accepts in place of the password. Every user is in one account, IONM, with JetStream; server_conf()
writes it (an nkey user as `nkey:`, a password user as `user:`/`password:`, both with the same permissions), and a
service user for the hub's own page and source keeper, with a password made at each start.

- A physician may subscribe only to `ionm.<site>.<room>.>` of the assigned rooms and to replies under the
  user's own inbox prefix `_INBOX_<name>` (connect with inbox_prefix=inbox(name)); through JetStream, may only
  make consumers whose filter is one of those rooms' subjects (the filter is in the API subject:
  `$JS.API.CONSUMER.CREATE.IONM.<consumer>.<filter>`, nats-server checks that it matches the request), and
  may look at the stream's info. A physician cannot publish into the stream.
- A room may publish only `ionm.<site>.<room>.>` of its own room (direct mode), its announcement
  `ionmhub.join`, and what the hub's sourcing across the leaf needs: deliveries to the hub's source
  consumers (`$JS.S.>`), replies to the hub's JetStream requests (`$JSC.R.>`); and may receive only its
  inbox replies, its own domain's JetStream API requests (`$JS.<domain>.API.>`) and flow control. So a room
  cannot publish as another room, cannot read any case, and cannot reach the hub's JetStream API.

Rooms connect over the leaf as these ordinary users (the leaf remote's URL carries the name and password):
nats-server 2.15 refuses `permissions` on the users of `leafnodes { authorization }` ("unknown field"), while a
leaf connection that logs in as an account's user gets that user's permissions, measured in tests/test_hub.py.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ionm.hub import messages as hm
from ionm.hub.identity import is_user_public_key

ACCOUNT = "IONM"
SERVICE_USER = "ionm-hub"
ROLES = ("physician", "room")
HUB_DOMAIN = "hub"  # the hub's JetStream domain (ionm.hub.leaf.HUB_DOMAIN)


class AccessError(ValueError):
    """An access file that cannot be used."""


@dataclass
class User:
    name: str
    password: str | None
    role: str
    rooms: list[tuple[str, str]] = field(default_factory=list)  # (site, room); room "*": every room of the site
    nkey: str | None = None  # the user's public nkey ("U..."), ionm.hub.identity


def parse_room(text: str) -> tuple[str, str]:
    site, sep, room = str(text).partition("/")
    if not sep or not site or not room:
        raise AccessError("a room is SITE/ROOM, not %r" % text)
    return site, room


def inbox(name: str) -> str:
    """The inbox prefix a physician connects with (nats.connect(..., inbox_prefix=inbox(name)))."""
    return "_INBOX_" + hm.token(name)


def room_subject(site: str, room: str) -> str:
    return "ionm.%s.%s.>" % (hm.token(site), "*" if room == "*" else hm.token(room))


def physician_may_send(site: str, room: str, name: str) -> str:
    """What a physician may publish to an assigned room: acknowledgements and notes under the physician's own name
    (the last token), to any case of the room."""
    return "ionm.%s.%s.*.%s.%s" % (hm.token(site), "*" if room == "*" else hm.token(room), hm.PHYSICIAN,
                                   hm.token(name))


def room_inbox_api(site: str, room: str) -> list[str]:
    """What a room publishes to read its physicians' messages through its one durable consumer (ionm.hub.inbox):
    create it (the filter is its physicians' subjects of this room only), look it up, pull from it, acknowledge,
    directly (`$JS.API`) and across its leaf node (`$JS.hub.API`, the hub's JetStream domain)."""
    name = hm.physician_consumer(site, room)
    out = []
    for api in ("$JS.API", "$JS.%s.API" % HUB_DOMAIN):
        out += ["%s.CONSUMER.CREATE.%s.%s.%s" % (api, hm.STREAM, name, hm.physician_filter(site, room)),
                "%s.CONSUMER.INFO.%s.%s" % (api, hm.STREAM, name),
                "%s.CONSUMER.MSG.NEXT.%s.%s" % (api, hm.STREAM, name)]
    return out + ["$JS.ACK.%s.%s.>" % (hm.STREAM, name)]  # the reply subject, across the leaf too (measured)


class Access:
    def __init__(self, users: list[User]) -> None:
        self.users = users
        self._readable: dict[tuple[str, str, str], bool] = {}
        names = [u.name for u in users]
        if len(set(names)) != len(names) or SERVICE_USER in names:
            raise AccessError("user names must be distinct (and not %r)" % SERVICE_USER)
        keys = [u.nkey for u in users if u.nkey]
        if len(set(keys)) != len(keys):
            raise AccessError("nkeys must be distinct: one identity per room or physician")

    @classmethod
    def load(cls, path: str | Path) -> Access:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise AccessError("cannot read the access file %s: %s" % (path, exc)) from None
        return cls.parse(data)

    @classmethod
    def parse(cls, data: Any) -> Access:
        if not isinstance(data, dict) or not isinstance(data.get("users"), list):
            raise AccessError('an access file is {"users": [...]}')
        users = []
        for u in data["users"]:
            if not isinstance(u, dict) or not u.get("name"):
                raise AccessError("every user has a name: %r" % (u,))
            if not u.get("password") and not u.get("nkey"):
                raise AccessError("user %s: a user has a password or an nkey (or both)" % u["name"])
            nkey = u.get("nkey")
            if nkey is not None and not is_user_public_key(nkey):
                raise AccessError("user %s: \"nkey\" is a user's public key (U..., 56 characters, from ionm hub "
                                  "--keygen), never a seed" % u["name"])
            role = u.get("role")
            if role not in ROLES:
                raise AccessError("user %s: role is one of %s, not %r" % (u["name"], ", ".join(ROLES), role))
            if role == "room":
                rooms = [parse_room(u.get("room", ""))]
                if rooms[0][1] == "*":
                    raise AccessError("room user %s: a room user is one room, not a site" % u["name"])
            else:
                rooms = [parse_room(r) for r in u.get("rooms", [])]
            password = str(u["password"]) if u.get("password") else None
            users.append(User(str(u["name"]), password, role, rooms, nkey))
        return cls(users)

    def room_allowed(self, site: str, room: str) -> bool:
        """A room that may join the hub (its stream is sourced): one with a room user."""
        return any(u.role == "room" and (hm.token(u.rooms[0][0]), hm.token(u.rooms[0][1])) ==
                   (hm.token(site), hm.token(room)) for u in self.users)

    def may_read(self, name: str | None, site: str, room: str) -> bool:
        """Whether physician `name` may read the room whose subject tokens are site and room (as the hub's stream has
        them, ionm.hub.messages.parse_subject): exactly when the subscribe permissions that nats-server is given
        for the physician (permissions(), the same rules) let a message of that room through. The hub's page
        shows a physician only such rooms' cases."""
        key = (str(name), site, room)
        if key not in self._readable:  # the file does not change while the hub runs
            user = next((u for u in self.users if u.name == name and u.role == "physician"), None)
            probe = "ionm.%s.%s.case.kind" % (site, room)
            self._readable[key] = user is not None and any(
                subject_matches(p, probe) for p in self.permissions(user)["subscribe"]["allow"])
        return self._readable[key]

    def permissions(self, user: User) -> dict[str, Any]:
        subjects = [room_subject(s, r) for s, r in user.rooms]
        if user.role == "physician":
            return {"publish": {"allow": ["$JS.API.INFO", "$JS.API.STREAM.INFO." + hm.STREAM,
                                          "$JS.FC.%s.>" % hm.STREAM, "$JS.ACK.%s.>" % hm.STREAM]
                                + ["$JS.API.CONSUMER.CREATE.%s.*.%s" % (hm.STREAM, s) for s in subjects]
                                + [physician_may_send(s, r, user.name) for s, r in user.rooms]},
                    "subscribe": {"allow": subjects + [inbox(user.name) + ".>"]}}
        from ionm.hub.leaf import JOIN, domain

        site, room = user.rooms[0]
        return {"publish": {"allow": subjects + [JOIN, "$JS.API.STREAM.INFO." + hm.STREAM, "$JS.S.>", "$JSC.R.>"]
                            + room_inbox_api(site, room),
                            # never as a physician: the room reads its physicians' messages, it does not write them
                            "deny": ["ionm.%s.%s.*.%s.>" % (hm.token(site), hm.token(room), hm.PHYSICIAN)]},
                "subscribe": {"allow": ["_INBOX.>", "$JS.%s.API.>" % domain(site, room), "$JS.FC.>"]}}

    def server_conf(self, service_password: str) -> str:
        """The accounts block of the hub's nats-server configuration."""
        users: list[dict[str, Any]] = [{"user": SERVICE_USER, "password": service_password}]
        for u in self.users:
            if u.nkey:  # the client signs the server's challenge with its seed; the server has the public key only
                users.append({"nkey": u.nkey, "permissions": self.permissions(u)})
            if u.password:
                users.append({"user": u.name, "password": u.password, "permissions": self.permissions(u)})
        # nats-server's configuration reads JSON values: the block is JSON inside its own syntax
        return "accounts {\n  %s: {\n    jetstream: enabled\n    users: %s\n  }\n}\n" % (ACCOUNT, json.dumps(
            users, indent=2))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, p in enumerate(pat):
        if p == ">" and i == len(pat) - 1:
            return len(sub) > i
        if i >= len(sub) or (p != "*" and p != sub[i]):
            return False
    return len(pat) == len(sub)


def service_password() -> str:
    return secrets.token_urlsafe(24)
