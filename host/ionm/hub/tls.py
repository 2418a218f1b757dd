"""TLS for the hub's nats-server: its client port, leafnode port and cluster routes; clients verifying its CA.

Files(cert, key, ca) are PEM files: the server's certificate and key (the same certificate serves the client and
leafnode ports and, in a cluster, both ends of the routes: it needs the extended key usages serverAuth and
clientAuth, and the hub's addresses as subject alternative names) and the CA that signed it. server_block()
is nats-server's `tls { ... }` block; a route (cluster) block always verifies the other node's certificate
against the CA (nats-server does so for routes whatever the block says). Clients (ionm.hub.publisher, the
hub's page and source keeper) use client_context(ca): the server's certificate must chain to the CA and name
the address connected to. A room's leaf node gives nats-server the CA file in its remote (ionm.hub.leaf).

make_ca() writes a self-signed CA and a server certificate for loopback with the `openssl` command, for tests
and demonstrations (a hospital uses its own CA)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


class TlsError(RuntimeError):
    """Certificates that cannot be made or read."""


@dataclass(frozen=True)
class Files:
    cert: str
    key: str
    ca: str

    def check(self) -> Files:
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not Path(path).is_file():
                raise TlsError("the TLS %s %s is not a file" % (what, path))
        return Files(str(Path(self.cert).resolve()), str(Path(self.key).resolve()), str(Path(self.ca).resolve()))


def server_block(files: Files, *, verify: bool = False) -> str:
    """nats-server's `tls { }` block (for the top level, `leafnodes { }` or `cluster { }`); verify: require the
    other side's certificate too (mutual TLS)."""
    return "tls { cert_file: %s, key_file: %s, ca_file: %s, timeout: 5%s }" % (
        json.dumps(files.cert), json.dumps(files.key), json.dumps(files.ca), ", verify: true" if verify else "")


def client_context(ca: str) -> ssl.SSLContext:
    """A client's context that trusts only the hub's CA and checks the server's name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def make_ca(directory: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30) -> Files:
    """A self-signed CA (ca.pem) and a server certificate (server.pem, server-key.pem) for hosts, in directory."""
    if shutil.which("openssl") is None:
        raise TlsError("the openssl command is needed to make certificates")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    san = ",".join(("IP:%s" if h.replace(".", "").isdigit() or ":" in h else "DNS:%s") % h for h in hosts)
    ext = d / "server.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n" % san)

    def run(*args: str) -> None:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise TlsError("openssl %s: %s" % (args[0], done.stderr.strip()))

    ca, ca_key = d / "ca.pem", d / "ca-key.pem"
    cert, key, csr = d / "server.pem", d / "server-key.pem", d / "server.csr"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", str(days),
        "-subj", "/CN=ionm hub test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=ionm hub")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", str(days), "-extfile", str(ext))
    for p in (key, ca_key):
        p.chmod(0o600)
    return Files(str(cert), str(key), str(ca)).check()
