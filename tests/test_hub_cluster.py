"""A three-node hub (ionm.hub.cluster): real nats-servers from the wheel on loopback, the IONM stream replicated on
all three; TLS on the client and leafnode ports and the routes (ionm.hub.tls)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ionm.hub import messages as hm
from ionm.hub.cluster import HubCluster, stream_leader
from ionm.hub.publisher import Publisher


def stream_messages(urls: list[str], **options: Any) -> list[tuple[str, str, dict]]:
    """(subject, Nats-Msg-Id, message) of every message of the IONM stream, in stream order, with its seq."""

    async def go() -> list[tuple[str, str, dict]]:
        import nats

        nc = await nats.connect(urls, connect_timeout=5, **options)
        js = nc.jetstream()
        try:
            state = (await js.stream_info(hm.STREAM)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1):
                m = await js.get_msg(hm.STREAM, seq)
                out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), hm.decode(m.data) | {"at": seq}))
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


class Page:
    """The hub's page reader (ionm.hub.server.follow: an ordered consumer from the stream's start) on a thread."""

    def __init__(self, urls: list[str], **options: Any) -> None:
        from ionm.hub.server import HubState

        self.state = HubState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(urls, options)), daemon=True)
        self._thread.start()

    async def _run(self, urls: list[str], options: dict[str, Any]) -> None:
        from ionm.hub.server import follow

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await follow(urls, self.state, self._stop, **options)

    def wait(self, n: int, deadline_s: float) -> int:
        end = time.monotonic() + deadline_s
        while self.state.messages < n and time.monotonic() < end:
            time.sleep(0.05)
        return self.state.messages

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


class Physician:
    """A physician's durable pull consumer on the stream, read on a thread of its own as messages come."""

    def __init__(self, urls: list[str], durable: str, **options: Any) -> None:
        self.urls, self.durable, self.options = urls, durable, options
        self.got: list[dict] = []
        self.errors = 0
        self.want = 0  # read until this many (raised by the test), then wait
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        import nats

        nc = await nats.connect(self.urls, connect_timeout=5, allow_reconnect=True, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.5, **self.options)
        js = nc.jetstream()
        sub = None
        try:
            while not self._stop.is_set():
                if len(self.got) >= self.want:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    if sub is None:
                        sub = await js.pull_subscribe(hm.SUBJECTS, durable=self.durable, stream=hm.STREAM)
                    for msg in await sub.fetch(min(20, self.want - len(self.got)), timeout=1.0):
                        self.got.append(hm.decode(msg.data))
                        await msg.ack_sync(timeout=5)
                except Exception:  # nothing yet, or the node or the consumer's leader is away: ask again
                    self.errors += 1
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def wait(self, n: int, deadline_s: float) -> int:
        self.want = n
        end = time.monotonic() + deadline_s
        while len(self.got) < n and time.monotonic() < end:
            time.sleep(0.05)
        return len(self.got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_node_killed_mid_case_loses_nothing_repeats_nothing_and_the_physician_reads_on(tmp_path):
    """Three nodes, the stream R3; a room publishes to the three client URLs. The node leading the stream is
    killed (SIGKILL) mid-case while the room goes on: the stream holds every message once, in the room's order
    (stream seqs 1..N), the physician's durable consumer, which had read part of the case before the kill, reads
    the rest, and so does the page's reader; the killed node, restarted on its store, catches up."""
    t0 = time.monotonic()
    cluster = HubCluster(tmp_path / "hub").start()
    started_s = time.monotonic() - t0
    pub = Publisher(cluster.urls, "General", "OR 1", "case-1")
    doc = Physician(cluster.urls, "dr_a")
    page = Page(cluster.urls)
    n_before, n_total = 40, 160
    try:
        info = asyncio.run(_stream_info(cluster.urls))
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2, info
        for i in range(n_before):
            pub.publish("event", {"i": i})
        assert pub.flush(30), pub.last_error
        assert doc.wait(25, 30) == 25, doc.errors
        leader = asyncio.run(stream_leader(cluster.urls))
        victim = [n.name for n in cluster.nodes].index(leader)
        i = n_before
        for _ in range(30):  # mid-case: messages on their way when the node dies
            pub.publish("trend", {"i": i})
            i += 1
        cluster.kill(victim)
        killed = time.monotonic()
        while i < n_total - 20:
            pub.publish("trend", {"i": i})
            i += 1
            time.sleep(0.02)
        for _ in range(20):
            pub.publish("alerts", {"i": i})
            i += 1
        assert pub.flush(60), (pub.last_error, pub.stats)
        stored_s = time.monotonic() - killed
        assert doc.wait(n_total, 60) == n_total, (len(doc.got), doc.errors)
        read_s = time.monotonic() - killed
        assert page.wait(n_total, 60) == n_total, page.state.messages
        page_s = time.monotonic() - killed
        time.sleep(1.0)  # nothing more comes
        got = stream_messages(cluster.urls)
        after = asyncio.run(_stream_info(cluster.urls))
        cluster.restart(victim)  # back on its store and ports: it catches up with what it missed
        restarted = time.monotonic()
        caught_up = None
        while caught_up is None and time.monotonic() < restarted + 60:
            try:
                peers = asyncio.run(_stream_info(cluster.urls)).cluster.replicas or []
            except Exception:
                peers = []
            if any(p.name == leader for p in peers) and all(p.current and not p.offline and not p.lag
                                                             for p in peers):
                caught_up = time.monotonic() - restarted
            else:
                time.sleep(0.2)
    finally:
        t1 = time.monotonic()
        page.close()
        doc.close()
        pub.close()
        cluster.stop()
        print("cluster started in %.1f s, stopped in %.1f s" % (started_s, time.monotonic() - t1))
    assert [m["at"] for _s, _id, m in got] == list(range(1, n_total + 1))  # stream seqs 1..N, each once
    assert [m["seq"] for _s, _id, m in got] == list(range(1, n_total + 1))  # in the room's order
    assert [mid for _s, mid, _m in got] == [hm.msg_id("case-1", pub.session, n) for n in range(1, n_total + 1)]
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(n_total))
    assert [m["seq"] for m in doc.got] == list(range(1, n_total + 1))  # the physician: before, then the rest
    assert after.cluster.leader != leader
    assert caught_up is not None, "the restarted node %s did not catch up" % leader
    (case,) = page.state.cases.values()  # the page: every message once (it counts what it is given)
    assert page.state.messages == n_total and case["last_seq"] == n_total
    print("node %s (stream leader) killed: %d messages, all stored %.1f s, read by the physician %.1f s and on the "
          "page %.1f s after the kill; new leader %s; publisher retries %d, duplicates acknowledged %d; the node "
          "restarted, current %.1f s later"
          % (leader, n_total, stored_s, read_s, page_s, after.cluster.leader, pub.stats["retries"],
             pub.stats["duplicates"], caught_up))


async def _stream_info(urls: list[str], **options: Any) -> Any:
    import nats

    nc = await nats.connect(urls, connect_timeout=5, **options)
    try:
        return await nc.jetstream().stream_info(hm.STREAM)
    finally:
        await nc.close()


def consecutive_free_ports(n: int) -> int:
    """The first of n consecutive free ports on loopback."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 60000)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no %d consecutive free ports" % n)


def test_ionm_hub_cluster_runs_three_nodes_and_its_page_shows_the_rooms_cases(tmp_path):
    """As it is run: `ionm hub --cluster --access FILE`; one room publishes to the printed list of client URLs, one
    through its leaf node given the printed list of leafnode URLs, each with its login; both on the page."""
    import json
    import signal
    import subprocess
    import urllib.request

    from conftest import ionm_cmd

    from ionm.hub import leaf
    from ionm.hub.natsserver import free_port

    access_file = tmp_path / "access.json"
    access_file.write_text(json.dumps({"users": [
        {"name": "or7", "password": "pw-7", "role": "room", "room": "General/OR 7"},
        {"name": "or8", "password": "pw-8", "role": "room", "room": "General/OR 8"},
        {"name": "dr_a", "password": "pw-a", "role": "physician", "rooms": ["General/*"]}]}))
    web_port, nats_port, leaf_port, route_port = free_port(), *(consecutive_free_ports(3) for _ in range(3))
    proc = subprocess.Popen(ionm_cmd("hub", "--cluster", "--listen", "127.0.0.1:%d" % web_port,
                                     "--nats", "127.0.0.1:%d" % nats_port, "--leaf", "127.0.0.1:%d" % leaf_port,
                                     "--routes", "127.0.0.1:%d" % route_port, "--store", str(tmp_path / "hub"),
                                     "--access", str(access_file)),
                            stdout=subprocess.PIPE, text=True)
    room = None
    try:
        first = proc.stdout.readline()
        urls = ["nats://127.0.0.1:%d" % (nats_port + i) for i in range(3)]
        assert "--publish %s)" % ",".join(urls) in first, first
        assert "cluster of three" in first
        leaf_urls = ["nats-leaf://127.0.0.1:%d" % (leaf_port + i) for i in range(3)]
        assert "--publish %s " % ",".join(leaf_urls) in proc.stdout.readline()
        assert "oversight page" in proc.stdout.readline()
        info = asyncio.run(_stream_info(urls, user="or7", password="pw-7"))
        assert info.config.num_replicas == 3
        direct = Publisher(",".join(u.replace("//", "//or7:pw-7@") for u in urls), "General", "OR 7", "case-7")
        direct.publish("header", {"uid": "case-7", "procedure": "craniotomy"})
        room = leaf.RoomServer(tmp_path / "room", "General", "OR 8",
                               ",".join(u.replace("//", "//or8:pw-8@") for u in leaf_urls)).start()
        via_leaf = Publisher(room.url, "General", "OR 8", "case-8", prefix="ionmroom", ensure=False)
        via_leaf.publish("header", {"uid": "case-8", "procedure": "scoliosis"})
        for p in (direct, via_leaf):
            assert p.flush(30), p.last_error
            p.close()
        from http.cookiejar import CookieJar

        page = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))  # the physician's browser
        page.open(urllib.request.Request("http://127.0.0.1:%d/login" % web_port, method="POST", data=json.dumps(
            {"name": "dr_a", "password": "pw-a"}).encode(), headers={"Content-Type": "application/json"}), timeout=10)
        view: dict = {"cases": []}
        end = time.monotonic() + 40
        while len(view["cases"]) < 2 and time.monotonic() < end:
            with page.open("http://127.0.0.1:%d/state.json" % web_port, timeout=5) as r:
                view = json.loads(r.read())
            time.sleep(0.2)
        assert sorted((c["room"], c["procedure"]) for c in view["cases"]) == [("OR_7", "craniotomy"),
                                                                             ("OR_8", "scoliosis")], view
        assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["node-1", "node-2", "node-3"]
    finally:
        if room is not None:
            room.stop()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def stream_count(urls: list[str], n: int, deadline_s: float, **options: Any) -> int:
    """Poll the IONM stream until it holds n messages (or the deadline passes); the count it last saw."""

    async def count() -> int:
        import nats

        async def quiet(_exc: Exception) -> None:  # a node that is down: the client tries the next
            pass

        nc = await nats.connect(urls, connect_timeout=2, allow_reconnect=False, error_cb=quiet, **options)
        try:
            return int((await nc.jetstream().stream_info(hm.STREAM)).state.messages)
        finally:
            await nc.close()

    end, seen = time.monotonic() + deadline_s, -1
    while time.monotonic() < end:
        try:
            seen = asyncio.run(count())
        except Exception:
            seen = -1
        if seen >= n:
            return seen
        time.sleep(0.2)
    return seen


def leaf_node_port(room_log: str) -> int:
    """The hub's leafnode port the room's server is connected to now (from the room server's log)."""
    import re

    found = re.findall(r"127\.0\.0\.1:(\d+) - lid:\d+ - Leafnode connection created", room_log)
    assert found, room_log[-2000:]
    return int(found[-1])


def test_a_rooms_leaf_node_moves_to_another_node_when_its_node_dies(tmp_path):
    """The room's own JetStream is a leaf node of the cluster, given every node's leafnode URL (the listener does
    not advertise); the hub's source keeper follows the cluster's client URLs. The node the room is connected to
    is killed mid-case: the room's server connects to another, and the hub's stream has every message once, in
    order."""
    from ionm.hub import leaf

    cluster = HubCluster(tmp_path / "hub").start()
    keeper = leaf.SourceKeeper(cluster.urls)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 2", cluster.leaf_urls()).start()
    pub = Publisher(room.url, "General", "OR 2", "case-2", prefix="ionmroom", ensure=False)
    room_log = tmp_path / "room" / "nats-server.log"
    try:
        for i in range(40):
            pub.publish("event", {"i": i})
        assert pub.flush(30), pub.last_error
        assert stream_count(cluster.urls, 40, 30) == 40, keeper.sources.stats
        before = leaf_node_port(room_log.read_text())
        victim = cluster.leaf_ports.index(before)
        cluster.kill(victim)
        killed = time.monotonic()
        for i in range(40, 120):
            pub.publish("trend", {"i": i})
            time.sleep(0.02)
        assert pub.flush(30), pub.last_error  # the room's own stream took them all
        assert stream_count(cluster.urls, 120, 60) == 120, (keeper.sources.stats, keeper.sources.last_error)
        arrived_s = time.monotonic() - killed
        time.sleep(1.0)
        after = leaf_node_port(room_log.read_text())
        got = stream_messages(cluster.urls)
    finally:
        pub.close()
        keeper.close()
        room.stop()
        cluster.stop()
    assert after != before and after in cluster.leaf_ports
    assert [m["at"] for _s, _id, m in got] == list(range(1, 121))
    assert [mid for _s, mid, _m in got] == [hm.msg_id("case-2", pub.session, n) for n in range(1, 121)]
    assert {s.rsplit(".", 1)[0] for s, _id, _m in got} == {"ionm.General.OR_2.case-2"}
    print("the room's leaf node's hub node killed: moved from leafnode port %d to %d; all 120 messages at the hub "
          "%.1f s after the kill; sources %s" % (before, after, arrived_s, keeper.sources.stats))


# -- TLS (ionm.hub.tls) ---------------------------------------------------------------------------------------------

def plain_text_answer(port: int) -> tuple[dict, bytes]:
    """What a plain-text client gets from a port: the server's INFO (JSON; {} if the server sends none, waiting for
    a TLS handshake), then everything after it, in answer to a plain CONNECT and PING, until the server closes the
    connection or is silent for 3 s."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        greeting = b""
        try:
            while not greeting.endswith(b"\r\n") and (chunk := s.recv(4096)):
                greeting += chunk
        except OSError:
            pass
        info = json.loads(greeting.split(b" ", 1)[1]) if greeting.startswith(b"INFO ") else {}
        answer = b""
        try:
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            while chunk := s.recv(4096):
                answer += chunk
        except OSError:
            pass
    return info, greeting + answer


def test_a_room_publishes_over_tls_and_plain_text_is_refused(tmp_path):
    """A three-node cluster with TLS on its client and leafnode ports and on the routes between its nodes (a CA
    and a server certificate made for the test). A room's leaf node that verifies the CA and a room publishing
    directly with the CA reach the stream; a plain-text client, a client that does not trust the CA, and a
    room's leaf node without the CA are refused."""
    from ionm.hub import leaf, tls

    files = tls.make_ca(tmp_path / "certs")
    cluster = HubCluster(tmp_path / "hub", tls=files).start()  # the stream R3: the routes work over TLS
    options = cluster.client_options()
    keeper = leaf.SourceKeeper(cluster.urls, **options)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 1", cluster.leaf_urls(), hub_ca=files.ca).start()
    untrusting = leaf.RoomServer(tmp_path / "room-2", "General", "OR 2", cluster.leaf_urls()).start()
    via_leaf = Publisher(room.url, "General", "OR 1", "case-1", prefix="ionmroom", ensure=False)
    direct = Publisher(cluster.urls, "General", "OR 3", "case-3", tls_ca=files.ca)
    lost = Publisher(untrusting.url, "General", "OR 2", "case-2", prefix="ionmroom", ensure=False)
    try:
        for i in range(30):
            for p in (via_leaf, direct, lost):
                p.publish("event", {"i": i})
        for p in (via_leaf, direct, lost):
            assert p.flush(30), p.last_error
        assert stream_count(cluster.urls, 60, 40, **options) == 60, (keeper.sources.stats, keeper.sources.last_error)
        time.sleep(3.0)  # long enough for the untrusting room's announcements and messages, had it connected
        got = stream_messages(cluster.urls, **options)
        refused = {what: plain_text_answer(port) for what, port in (
            ("client", cluster.client_ports[0]), ("leafnode", cluster.leaf_ports[1]),
            ("route", cluster.route_ports[2]))}

        async def without_the_ca() -> str:
            import nats

            async def quiet(_exc: Exception) -> None:
                pass

            for url in (cluster.urls[0], cluster.urls[0].replace("tls://", "nats://")):
                try:
                    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3, error_cb=quiet)
                except Exception as exc:
                    continue_with = repr(exc)
                    continue
                await nc.close()
                return "connected to %s" % url
            return continue_with

        no_ca = asyncio.run(without_the_ca())
        untrusting_log = (tmp_path / "room-2" / "nats-server.log").read_text()
    finally:
        for p in (via_leaf, direct, lost):
            p.close(flush_timeout=0.5)
        keeper.close()
        untrusting.stop()
        room.stop()
        cluster.stop()
    rooms = {}
    for s, _id, m in got:
        rooms.setdefault(s.rsplit(".", 1)[0], []).append(m["body"]["i"])
    assert rooms == {"ionm.General.OR_1.case-1": list(range(30)), "ionm.General.OR_3.case-3": list(range(30))}
    for what, (_info, answer) in refused.items():
        assert b"PONG" not in answer, (what, answer)  # the plain-text client is never served
    assert refused["client"][0]["tls_required"] is True, refused["client"]
    print("plain text refused: %s" % {what: (info.get("tls_required"), answer[-80:])
                                      for what, (info, answer) in refused.items()})
    assert "CERTIFICATE_VERIFY_FAILED" in no_ca, no_ca
    assert "certificate signed by unknown authority" in untrusting_log, untrusting_log[-2000:]


def test_ionm_hub_with_tls_and_a_console_publishing_through_its_leaf_node_with_the_ca(tmp_path):
    """As it is run: `ionm hub --make-certs DIR`, `ionm hub --tls-cert --tls-key --tls-ca` (one server, TLS on
    every port) and `ionm console --sim --direct --publish nats-leaf://HUB:LEAFPORT --hub-ca CA`; the case, with
    its baseline, reaches the hub's page (which reads the stream over TLS)."""
    import signal
    import subprocess

    from conftest import ionm_cmd, room_case_on_hub_page, run_ionm, store_with_technologist

    from ionm.hub.natsserver import free_port

    made = run_ionm("hub", "--make-certs", str(tmp_path / "certs"))
    assert made.returncode == 0, made.stderr
    certs = ["--tls-cert", str(tmp_path / "certs" / "server.pem"), "--tls-key", str(tmp_path / "certs" /
             "server-key.pem"), "--tls-ca", str(tmp_path / "certs" / "ca.pem")]
    assert " ".join(certs) in made.stdout, made.stdout
    web_port, nats_port, leaf_port = free_port(), free_port(), free_port()
    hub = subprocess.Popen(ionm_cmd("hub", "--listen", "127.0.0.1:%d" % web_port, "--nats", "127.0.0.1:%d" % nats_port,
                                    "--leaf", "127.0.0.1:%d" % leaf_port, "--store", str(tmp_path / "hub"), *certs),
                           stdout=subprocess.PIPE, text=True)
    db = store_with_technologist(tmp_path / "cases.db")
    log = tmp_path / "console.log"
    try:
        first = hub.stdout.readline()
        assert "at tls://127.0.0.1:%d" % nats_port in first and "TLS on every port" in first, first
        hub.stdout.readline()
        hub.stdout.readline()
        view = room_case_on_hub_page(web_port, db, log, "--publish", "nats-leaf://127.0.0.1:%d" % leaf_port,
                                     "--hub-ca", str(tmp_path / "certs" / "ca.pem"), "--site", "General",
                                     "--room", "OR 5", "--room-store", str(tmp_path / "room"))
        plain = {port: plain_text_answer(port)[0].get("tls_required") for port in (nats_port, leaf_port)}
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    assert plain == {nats_port: True, leaf_port: True}  # both ports demand TLS: the room came in over it
    assert [(c["site"], c["room"]) for c in view["cases"]] == [("General", "OR_5")], view
    assert any(e.get("kind") == "baseline" for e in view["cases"][0]["events"]), view
    assert "Leafnode connection created" in (tmp_path / "room" / "nats-server.log").read_text()
