"""Accounts, roles, signed session cookies and login rate limiting for the console.

- Passwords are stored as argon2id hashes (argon2-cffi defaults); an unknown user costs the same verification
  time as a known one, so response times do not tell which names exist.
- A session cookie is "payload.signature": payload = base64(JSON {sid, user, exp}), signature = HMAC-SHA256 with
  a per-installation secret kept in the store. The session id must also be live in the sessions table, so a
  logout or a disabled account ends the session at once; the role is read from the account on every request,
  so a role change takes effect without a new login.
- Login attempts: an account is locked after `limit` failed attempts on it within the window, wherever they
  came from (RateLimiter, per user name); an address is only slowed down, never locked out (AddressBackoff):
  a hospital NAT puts a whole OR suite behind one address, and one person's typos must not lock out the
  colleagues behind it. Together a password cannot be guessed online, neither on one account nor by spraying
  many.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ionm.case.store import CaseStore
from ionm.console.engine import ROLES

SESSION_HOURS = 12.0  # a long case fits in one session
MIN_PASSWORD = 8


class AuthError(ValueError):
    pass


def _hasher():  # type: ignore[no-untyped-def]
    from argon2 import PasswordHasher

    return PasswordHasher()


@dataclass(frozen=True)
class Identity:
    user: str
    role: str
    sid: str


class Accounts:
    def __init__(self, store: CaseStore):
        self.store = store
        self._ph = _hasher()
        self._dummy = self._ph.hash(secrets.token_hex(16))

    def add(self, name: str, role: str, password: str, *, by: str = "admin") -> None:
        name = name.strip()
        if not name or any(c in name for c in " \t\n/:"):
            raise AuthError("user names are one word")
        if role not in ROLES:
            raise AuthError("role must be one of %s" % ", ".join(ROLES))
        if len(password) < MIN_PASSWORD:
            raise AuthError("password too short (at least %d characters)" % MIN_PASSWORD)
        if self.get(name) is not None:
            raise AuthError("user %r exists" % name)
        self.store.execute_now("INSERT INTO users (name, role, pw_hash, created) VALUES (?,?,?,?)",
                               (name, role, self._ph.hash(password), time.time()))
        self.store.audit(None, by, "user.add", {"name": name, "role": role})
        self.store.flush()

    def set_password(self, name: str, password: str, *, by: str = "admin") -> None:
        if len(password) < MIN_PASSWORD:
            raise AuthError("password too short (at least %d characters)" % MIN_PASSWORD)
        if not self.store.execute_now("UPDATE users SET pw_hash = ? WHERE name = ?", (self._ph.hash(password), name)):
            raise AuthError("no user %r" % name)
        self.store.execute_now("UPDATE sessions SET revoked = 1 WHERE user = ?", (name,))
        self.store.audit(None, by, "user.password", {"name": name})
        self.store.flush()

    def set_role(self, name: str, role: str, *, by: str = "admin") -> None:
        if role not in ROLES:
            raise AuthError("role must be one of %s" % ", ".join(ROLES))
        if not self.store.execute_now("UPDATE users SET role = ? WHERE name = ?", (role, name)):
            raise AuthError("no user %r" % name)
        self.store.audit(None, by, "user.role", {"name": name, "role": role})
        self.store.flush()

    def disable(self, name: str, *, by: str = "admin") -> None:
        if not self.store.execute_now("UPDATE users SET disabled = 1 WHERE name = ?", (name,)):
            raise AuthError("no user %r" % name)
        self.store.execute_now("UPDATE sessions SET revoked = 1 WHERE user = ?", (name,))
        self.store.audit(None, by, "user.disable", {"name": name})
        self.store.flush()

    def get(self, name: str) -> dict[str, object] | None:
        rows = self.store.query("SELECT name, role, disabled, created FROM users WHERE name = ?", (name,))
        return dict(rows[0]) if rows else None

    def list(self) -> list[dict[str, object]]:
        return [dict(r) for r in self.store.query("SELECT name, role, disabled, created FROM users ORDER BY name")]

    def authenticate(self, name: str, password: str) -> str | None:
        """The user's role if the password is right and the account enabled, else None."""
        from argon2.exceptions import InvalidHashError, VerificationError

        rows = self.store.query("SELECT pw_hash, role, disabled FROM users WHERE name = ?", (name,))
        stored = rows[0]["pw_hash"] if rows else self._dummy
        try:
            self._ph.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if not rows or rows[0]["disabled"]:
            return None
        return str(rows[0]["role"])


class Sessions:
    def __init__(self, store: CaseStore, hours: float = SESSION_HOURS):
        self.store = store
        self.hours = hours
        self._key = bytes.fromhex(store.set_setting_once("session_secret", secrets.token_hex(32)))

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest()).decode().rstrip("=")

    def create(self, user: str) -> str:
        sid = secrets.token_urlsafe(18)
        now = time.time()
        exp = now + self.hours * 3600
        self.store.execute_now("INSERT INTO sessions (id, user, created, expires) VALUES (?,?,?,?)",
                               (sid, user, now, exp))
        payload = base64.urlsafe_b64encode(json.dumps({"sid": sid, "user": user, "exp": exp}).encode())
        return payload.decode().rstrip("=") + "." + self._sign(payload.rstrip(b"="))

    def check(self, token: str | None) -> Identity | None:
        """The identity behind a cookie value, or None (bad signature, expired, revoked, account disabled)."""
        if not token or "." not in token:
            return None
        payload_s, sig = token.rsplit(".", 1)
        if not hmac.compare_digest(self._sign(payload_s.encode()), sig):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload_s + "=" * (-len(payload_s) % 4)))
            sid, user, exp = str(data["sid"]), str(data["user"]), float(data["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if exp < time.time():
            return None
        rows = self.store.query("SELECT s.revoked, s.expires, u.role, u.disabled FROM sessions s JOIN users u "
                                "ON u.name = s.user WHERE s.id = ? AND s.user = ?", (sid, user))
        if not rows or rows[0]["revoked"] or rows[0]["disabled"] or rows[0]["expires"] < time.time():
            return None
        return Identity(user, str(rows[0]["role"]), sid)

    def revoke(self, sid: str) -> None:
        self.store.execute_now("UPDATE sessions SET revoked = 1 WHERE id = ?", (sid,))


class RateLimiter:
    """At most `limit` failures per key within `window_s`; success does not reset (an attacker interleaving a
    known account cannot clear the count)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0):
        self.limit, self.window_s = limit, window_s
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Seconds until key may try again (0: now)."""
        with self._lock:
            q = self._fails.get(key)
            now = time.monotonic()
            while q and now - q[0] > self.window_s:
                q.popleft()
            if q is None or len(q) < self.limit:
                return 0.0
            return self.window_s - (now - q[0])

    def fail(self, key: str) -> None:
        with self._lock:
            self._fails.setdefault(key, deque()).append(time.monotonic())


class AddressBackoff:
    """Per client address: the first `free` failures within `window_s` cost nothing; after that, each attempt from
    the address waits base * 2^(failures - free) seconds (at most `cap_s`) after the previous one. Attempts that
    arrive together queue one after another (each reserves its slot), so parallel requests gain nothing. A wait
    is a delay, never a refusal: a colleague behind the same address with the right password gets in, later."""

    def __init__(self, free: int = 3, base_s: float = 1.0, cap_s: float = 10.0, window_s: float = 300.0,
                 clock: Any = time.monotonic):
        self.free, self.base_s, self.cap_s, self.window_s, self.clock = free, base_s, cap_s, window_s, clock
        self._fails: dict[str, deque[float]] = {}
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def _step(self, q: deque[float]) -> float:
        f = len(q)
        return 0.0 if f < self.free else min(self.cap_s, self.base_s * 2.0 ** (f - self.free))

    def reserve(self, addr: str) -> float:
        """Seconds this attempt from addr must wait before its password is checked (0: now)."""
        with self._lock:
            now = self.clock()
            q = self._fails.get(addr)
            while q and now - q[0] > self.window_s:
                q.popleft()
            if not q:
                self._fails.pop(addr, None)
                self._next.pop(addr, None)
                return 0.0
            step = self._step(q)
            if step <= 0:
                return 0.0
            slot = max(now, q[-1] + step, self._next.get(addr, 0.0))
            self._next[addr] = slot + step
            return slot - now

    def fail(self, addr: str) -> None:
        with self._lock:
            self._fails.setdefault(addr, deque()).append(self.clock())

