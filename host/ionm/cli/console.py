"""`ionm console`: the case console — live view, alerts, notes, stimulation — in a browser, with remote oversight.

    ionm console --sim [--scenario NAME]              the virtual board: the firmware on MicroPython, a patient
    ionm console --sim --direct [--fast]              the scenario's physiology straight from the patient model
    ionm console --port /dev/ttyACM0                  the board
    ionm console --sim --freerun NAME                 also free-running EMG from a free-run scenario
                                                      (hardware/scenarios/freerun): traces, events, sound
    ionm console --sim --eeg NAME --baep NAME         also EEG (hardware/scenarios/eeg: DSA, index trends, raw
                                                      EEG, ischaemia alerts), recorded by the virtual board on
                                                      the carotid montage's EEG channels, and BAEP
                                                      (hardware/scenarios/baep: the stack with waves I, III, V,
                                                      wave V alerts)
    ionm console --port /dev/ttyACM0 --montage carotid   the board's EEG channels as EEG too
    ionm console --sim --baep NAME                    BAEP from the virtual board: clicks on its earphones, the
                                                      posterior-fossa montage's Cz-A1 / Cz-A2 (with --eeg too: the
                                                      EEG from the board, the BAEP simulated)
    ionm console ... --publish nats-leaf://HUB:7422 --site S --room R --room-store DIR
                                                      also to the oversight hub (ionm hub), through the room's
                                                      own JetStream, a leaf node of the hub's
    ionm console ... --publish nats://HUB:4222 --site S --room R   straight to the hub's server
    ionm console ... --publish nats-leaf://HUB:7422 --nkey-seed or2.nk ...   signed in with the room's nkey
                                                      (ionm hub --keygen) instead of a password in the URL

The console serves on --listen (default 127.0.0.1:8080). For an oversight physician on another machine, listen
on a reachable address AND give --cert/--key (TLS); accounts are made with `ionm users add`. Restarting with
the same --db resumes the case that was open (sweeps, baselines, alerts, notes); `--new-case` starts another.
docs/CONSOLE.md has the walk-through.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from typing import Any

from ionm.cli.common import add_db_argument, fail, parse_listen, scenario_error

HELP = "the case console: live waveforms, trends, alerts, notes and stimulation in a browser"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sim", action="store_true", help="the virtual board with a simulated patient")
    src.add_argument("--port", metavar="PATH", help="the board's serial port")
    p.add_argument("--direct", action="store_true",
                   help="--sim: sweeps straight from the patient model, without the firmware (quick looks)")
    p.add_argument("--scenario", default="stable", help="--sim: scenario name or JSON path (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="--sim: patient seed")
    p.add_argument("--fast", action="store_true", help="--sim: as fast as the host can (no real-time pacing)")
    p.add_argument("--speed", type=float, default=1.0, help="--sim: times real time (default 1)")
    p.add_argument("--events-at", type=float, metavar="S", help="--sim: move the scenario's events to start at S s")
    p.add_argument("--mep-every", type=float, default=0.0, metavar="S",
                   help="--sim: TcMEP train every S s (0: on demand)")
    p.add_argument("--freerun", metavar="NAME",
                   help="--sim: free-running EMG from this free-run scenario (hardware/scenarios/freerun: "
                        "lumbar_root_retraction, cpa_facial_traction, thyroid_rln_traction) or JSON path")
    p.add_argument("--eeg", metavar="NAME",
                   help="--sim: EEG from this EEG scenario (hardware/scenarios/eeg: cea_clamp_ischaemia, "
                        "cea_clamp_cautery, cea_anaesthetic_bolus) or JSON path")
    p.add_argument("--montage", metavar="NAME",
                   help="the board's procedure montage: default (SSEP and TcMEP, 16 channels), carotid (8 EEG "
                        "derivations, the median SSEPs, one tibial cortical channel, both APBs: the EEG comes from "
                        "the board) or posterior_fossa (the default's SSEP and MEP channels but the tibialis "
                        "anteriors, and the BAEP's Cz-A1, Cz-A2 with clicks on the board's earphones); default "
                        "'carotid' with --sim --eeg, 'posterior_fossa' with --sim --baep, else 'default'")
    p.add_argument("--baep", metavar="NAME",
                   help="--sim: BAEP from this BAEP scenario (hardware/scenarios/baep: mvd_cn8_retraction, "
                        "cpa_tumour_loss, baep_stable) or JSON path")
    p.add_argument("--a-train-warning", type=float, default=10.0, metavar="S",
                   help="free-run EMG: warn when a facial channel's cumulative A-train time reaches S s "
                        "(default %(default)s)")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default %(default)s")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    add_db_argument(p)
    p.add_argument("--cert", help="TLS certificate (PEM); with --key serves https/wss")
    p.add_argument("--key", help="TLS private key (PEM)")
    p.add_argument("--new-case", action="store_true", help="start a new case even if one is open")
    p.add_argument("--patient-id", default="", help="patient identifier (no names are stored)")
    p.add_argument("--procedure", default="", help="procedure, e.g. 'posterior fusion T4-L2'")
    p.add_argument("--auto-baseline", type=float, metavar="S", help="set every stream's baseline at case time S s")
    p.add_argument("--stall-alarm", type=float, default=2.0, metavar="S",
                   help="technical alarm when a running stream delivers no sweep for S s (default %(default)s)")
    p.add_argument("--screw-rules", metavar="FILE",
                   help="pedicle-screw threshold rules (JSON, docs/CONSOLE.md); default the built-in regional rules")
    p.add_argument("--publish", metavar="URL",
                   help="publish the case to an oversight hub (ionm hub): nats-leaf://[USER:PASSWORD@]HUB:LEAFPORT "
                        "through this room's own JetStream (a leaf node: nothing lost while the hub is away), or "
                        "nats://[USER:PASSWORD@]HUB:PORT straight to the hub's server; a hub cluster's nodes "
                        "separated by commas")
    p.add_argument("--site", default="site", help="--publish: this hospital's name (default %(default)s)")
    p.add_argument("--room", default="OR", help="--publish: this operating room's name (default %(default)s)")
    p.add_argument("--hub-ca", metavar="PEM",
                   help="--publish to a hub with TLS (ionm hub --tls-cert): the CA its certificate must chain to")
    p.add_argument("--nkey-seed", metavar="FILE",
                   help="--publish: sign in to the hub with this room's nkey seed (ionm hub --keygen; the file "
                        "mode 0600) instead of a user and password in the URL")
    p.add_argument("--room-store", default="room-store", metavar="DIR",
                   help="--publish nats-leaf://: the room's JetStream store (default %(default)s)")


def shift_events(scenario: dict[str, Any], at_s: float) -> dict[str, Any]:
    """The scenario with its events moved so the first starts at at_s (recoveries and ends move along)."""
    events = scenario.get("events", [])
    if not events:
        return scenario
    shift = at_s - min(float(e["onset_s"]) for e in events)
    for e in events:
        e["onset_s"] = float(e["onset_s"]) + shift
        if "end_s" in e:
            e["end_s"] = float(e["end_s"]) + shift
        if isinstance(e.get("recovery"), dict) and "onset_s" in e["recovery"]:
            e["recovery"]["onset_s"] = float(e["recovery"]["onset_s"]) + shift
    return scenario


def _simulated_case(meta: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario of a simulated case (as opened: a resumed case keeps its own) and its stimulation program."""
    from ionm.board.stimulation import default_program
    from ionm_hw.patient import load_scenario

    scenario = load_scenario(meta.get("scenario", args.scenario))
    if not args.direct and meta.get("montage", "default") != "default":
        scenario["montage"] = meta["montage"]  # the patient is wired as the board's montage says
        if meta.get("eeg") and meta["montage"] == "carotid":
            scenario["eeg"] = meta["eeg"]  # ... and its EEG channels record the EEG scenario
        if meta.get("baep") and meta["montage"] == "posterior_fossa":
            scenario["baep"] = meta["baep"]  # ... and its BAEP channels the BAEP scenario, when the earphones click
    if meta.get("events_at") is not None:
        scenario = shift_events(scenario, float(meta["events_at"]))
    program = default_program(scenario)
    program["tcmep"]["repeat_s"] = float(meta.get("mep_every") or 0.0)
    return scenario, program


def _live_source(port: str, program: dict[str, Any] | None = None, montage: str = "default",
                 resuming: bool = False) -> tuple[Any, Any, Any]:
    """(sweep source, stimulation, link_health) for a board on `port` (real or virtual). A resumed case's EEG
    (a montage with EEG channels) is held until the engine says where it goes on (case.eeg_source.begin)."""
    from ionm.board import link as ln
    from ionm.board.boardcase import BoardCase, procedure_montage

    try:
        case = BoardCase(port, montage=procedure_montage(montage), program=program,
                         eeg_start_s=None if resuming else 0.0)
    except (ln.LinkError, ln.BoardError) as exc:
        raise SystemExit("ionm console: %s" % exc) from None
    return case, case, case.link_health


def _virtual_board(scenario: dict[str, Any], seed: int) -> Any:
    """Start the virtual board with this scenario (written out: the model process reads it by path)."""
    import json
    import tempfile

    from ionm.board.virtual import VirtualBoard

    fh = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="ionm-scenario-", delete=False)
    json.dump(scenario, fh)
    fh.close()
    board = VirtualBoard(scenario=fh.name, seed=seed, stderr=open(os.devnull, "w"))
    board.scenario_file = fh.name  # removed when the console stops
    return board


def run(args: argparse.Namespace) -> int:
    from ionm.board.simcase import SimulatedCase
    from ionm.board.stimulation import RecordedStimulation
    from ionm.case.store import CaseStore
    from ionm.console.auth import Accounts
    from ionm.console.engine import CaseEngine
    from ionm.console.serve import serve
    from ionm.console.server import ConsoleServer, tls_context

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return fail("console", 2, "%s" % exc)
    if bool(args.cert) != bool(args.key):
        return fail("console", 2, "--cert and --key go together")
    if args.sim:
        problem = scenario_error(args.scenario)
        if problem:
            return fail("console", 2, problem)
    if args.freerun:
        if not args.sim:
            return fail("console", 2, "--freerun needs --sim (a board's free-run EMG is not wired yet)")
        from ionm_hw.physiology.freerun import load_scenario as load_freerun

        try:
            load_freerun(args.freerun)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            return fail("console", 2, str(exc))
    if args.montage is not None:
        from ionm.board.boardcase import procedure_montage

        try:
            procedure_montage(args.montage)
        except ValueError as exc:
            return fail("console", 2, str(exc))
        if args.direct:
            return fail("console", 2, "--montage is the board's: not with --direct")
    for what in ("eeg", "baep"):
        name = getattr(args, what)
        if not name:
            continue
        if not args.sim:
            return fail("console", 2, "--%s is a simulated scenario and needs --sim (a board records its EEG with "
                        "--montage carotid; its BAEP is not wired yet)" % what)
        if what == "eeg" and not args.direct and args.montage is not None and args.montage != "carotid":
            return fail("console", 2, "--eeg on the virtual board needs a montage with EEG channels (carotid)")
        if what == "baep" and not args.direct and args.montage is not None and args.montage not in (
                "posterior_fossa", "carotid"):
            return fail("console", 2, "--baep on the virtual board needs a montage with BAEP channels "
                        "(posterior_fossa)")
        import importlib

        try:
            importlib.import_module("ionm_hw.physiology." + what).load_scenario(name)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            return fail("console", 2, str(exc))
    if not args.a_train_warning > 0:
        return fail("console", 2, "--a-train-warning must be above 0 s")
    if host not in ("127.0.0.1", "localhost", "::1") and not args.cert:
        print("ionm console: WARNING: listening on %s without TLS: passwords and patient data cross the network "
              "in clear. Give --cert/--key for remote oversight." % host, file=sys.stderr)
    screw_rules = None
    if args.screw_rules:
        from ionm.pipeline.screws import RuleError, load_rules

        try:
            screw_rules = load_rules(args.screw_rules)
        except RuleError as exc:
            return fail("console", 2, str(exc))
    store = CaseStore(args.db)
    accounts = Accounts(store)
    if not accounts.list():
        print("ionm console: no user accounts in %s. Create one first:\n  ionm users add NAME --role technologist "
              "--db %s" % (args.db, args.db), file=sys.stderr)
        store.close()
        return 2

    if args.hub_ca and not Path(args.hub_ca).is_file():
        store.close()
        return fail("console", 2, "--hub-ca %s is not a file" % args.hub_ca)
    nkey_seed = None
    if args.nkey_seed:
        from ionm.hub.identity import IdentityError, read_seed

        try:
            nkey_seed = read_seed(args.nkey_seed)
        except IdentityError as exc:
            store.close()
            return fail("console", 2, "--nkey-seed: %s" % exc)
        if not args.publish:
            store.close()
            return fail("console", 2, "--nkey-seed is the room's identity for --publish")
        if any("@" in u.partition("://")[2] for u in args.publish.split(",")):
            store.close()
            return fail("console", 2, "the room signs in with --nkey-seed or with USER:PASSWORD in the --publish "
                                      "URL, not both")
    room_server = None
    if args.publish and args.publish.startswith("nats-leaf://"):  # started first: a failure leaves nothing running
        from ionm.hub.leaf import RoomServer
        from ionm.hub.natsserver import NatsServerError

        try:
            room_server = RoomServer(Path(args.room_store), args.site, args.room, args.publish,
                                     hub_ca=args.hub_ca, nkey_seed=nkey_seed).start()
        except (ValueError, NatsServerError) as exc:
            store.close()
            return fail("console", 2 if isinstance(exc, ValueError) else 1, str(exc))
        atexit.register(room_server.stop)  # whatever stops the console later (stop() is idempotent)

    case_id = None if args.new_case else store.open_case_id()
    resuming = case_id is not None
    if case_id is not None:
        meta = store.case(case_id)["meta"]
    else:
        meta = {"source": "sim" if args.sim else "board", "port": args.port}
        if args.sim:
            meta.update(scenario=args.scenario, seed=args.seed, events_at=args.events_at, mep_every=args.mep_every)
        if args.freerun:
            meta.update(freerun=args.freerun, a_train_warning_s=args.a_train_warning)
        meta.update({k: getattr(args, k) for k in ("eeg", "baep") if getattr(args, k)})
        if not args.direct:  # the board's montage (the virtual board's EEG is recorded on the carotid montage)
            meta["montage"] = args.montage or ("carotid" if args.sim and args.eeg else
                                               "posterior_fossa" if args.sim and args.baep else "default")
        case_id = store.open_case(patient_id=args.patient_id, procedure=args.procedure, meta=meta)

    board = None
    source: Any
    stimulation: Any
    if args.sim:
        scenario, program = _simulated_case(meta, args)
    if args.sim and not args.direct:
        board = _virtual_board(scenario, int(meta.get("seed", args.seed)))
        print("ionm console: virtual board at %s (firmware on MicroPython, scenario %s)"
              % (board.device, meta.get("scenario", args.scenario)), flush=True)
        source, stimulation, link_health = _live_source(board.device, program, meta.get("montage", "default"),
                                                        resuming)
        engine = CaseEngine(store, case_id, stimulation=stimulation, link_health=link_health,
                            auto_baseline_s=args.auto_baseline, stall_alarm_s=args.stall_alarm, probe=source,
                            screw_rules=screw_rules, a_train_warn_s=meta.get("a_train_warning_s", args.a_train_warning))
        if resuming:
            engine.resume()
    elif args.sim:
        stimulation = RecordedStimulation(program)
        engine = CaseEngine(store, case_id, stimulation=stimulation, auto_baseline_s=args.auto_baseline,
                            stall_alarm_s=args.stall_alarm, screw_rules=screw_rules,
                            a_train_warn_s=meta.get("a_train_warning_s", args.a_train_warning),
                            queue_size=32 if args.fast else 2048)  # a fast source runs just ahead, not minutes
        start_s = engine.resume() + 0.25 if resuming else 0.0
        source = SimulatedCase(scenario, int(meta.get("seed", args.seed)), speed=0.0 if args.fast else args.speed,
                                    stimulation=stimulation, start_s=start_s)
        engine.link_health = source.link_health
        engine.probe = source
    else:
        source, stimulation, link_health = _live_source(args.port, montage=meta.get("montage", "default"),
                                                        resuming=resuming)
        engine = CaseEngine(store, case_id, stimulation=stimulation, link_health=link_health,
                            auto_baseline_s=args.auto_baseline, stall_alarm_s=args.stall_alarm, probe=source,
                            screw_rules=screw_rules, a_train_warn_s=meta.get("a_train_warning_s", args.a_train_warning))
        if resuming:
            engine.resume()
    emg_source = None
    freerun = meta.get("freerun") or args.freerun
    if freerun and args.sim:  # free-run EMG beside the sweeps: a resumed case goes on from its case time
        from ionm.board.freerun import FreeRunCase

        emg_source = FreeRunCase(freerun, int(meta.get("seed", args.seed)), speed=0.0 if args.fast else args.speed,
                                 start_s=engine.t_s)
    neuro_sources: list[Any] = []  # EEG and BAEP beside the sweeps: a resumed case goes on where its EEG / BAEP stopped
    eeg_tap = getattr(source, "eeg_source", None)  # the board's EEG channels (a montage with EEG)
    if eeg_tap is not None:
        eeg_tap.begin(engine.eeg_end_s)
        neuro_sources.append(eeg_tap)
    elif args.sim and (meta.get("eeg") or args.eeg):
        from ionm.board.eegbaep import EegCase

        neuro_sources.append(EegCase(meta.get("eeg") or args.eeg, int(meta.get("seed", args.seed)),
                                     speed=0.0 if args.fast else args.speed, start_s=engine.eeg_end_s))
    baep_tap = getattr(source, "baep_source", None)  # the board's BAEP channels and earphones
    if baep_tap is not None:
        baep_tap.begin(engine.now_s())
        neuro_sources.append(baep_tap)
    elif args.sim and (meta.get("baep") or args.baep):  # (the EEG's carotid montage has no BAEP channels)
        from ionm.board.eegbaep import BaepCase

        neuro_sources.append(BaepCase(meta.get("baep") or args.baep, int(meta.get("seed", args.seed)),
                                      speed=0.0 if args.fast else args.speed, start_s=engine.now_s()))
    tls = tls_context(args.cert, args.key) if args.cert else None
    server = ConsoleServer(engine, store, tls=tls)
    publisher = inbox = None
    if args.publish:  # remote oversight (docs/OVERSIGHT.md): queued, never blocks the engine
        from ionm.hub import bridge
        from ionm.hub.inbox import PhysicianInbox
        from ionm.hub.publisher import Publisher

        if room_server is not None:  # the room's own JetStream, a leaf node of the hub's
            from ionm.hub.leaf import HUB_DOMAIN, ROOM_PREFIX

            publisher = Publisher(room_server.url, args.site, args.room, store.case(case_id)["uid"],
                                  prefix=ROOM_PREFIX, ensure=False)
            print("ionm console: room JetStream at %s (domain %s, store %s), a leaf node of %s"
                  % (room_server.url, room_server.domain, args.room_store, _without_password(args.publish)),
                  flush=True)
        else:
            publisher = Publisher(args.publish, args.site, args.room, store.case(case_id)["uid"], tls_ca=args.hub_ca,
                                  nkey_seed=nkey_seed)
        bridge.attach(engine, publisher)
        # the physicians' acknowledgements and notes from the hub, applied here once each (ionm.hub.inbox)
        inbox = PhysicianInbox(room_server.url, args.site, args.room, engine, publisher, domain=HUB_DOMAIN) \
            if room_server is not None else \
            PhysicianInbox(args.publish, args.site, args.room, engine, publisher, tls_ca=args.hub_ca,
                           nkey_seed=nkey_seed)
        signed = ""
        if nkey_seed:
            from ionm.hub.identity import public_key

            signed = ", signed in with the nkey %s" % public_key(nkey_seed)  # public: matches the access file
        print("ionm console: publishing to %s as %s/%s%s" % (_without_password(args.publish), args.site, args.room,
                                                               signed), flush=True)

    def announce(url: str) -> None:
        case = store.case(case_id)
        print("ionm console: %s case %s at %s" % ("resumed" if resuming else "opened", case["uid"], url), flush=True)

    try:
        serve(server, engine, source, host, port, open_browser=not args.no_browser, announce=announce,
              emg_source=emg_source, neuro_sources=neuro_sources)
    finally:
        # each step on its own: a failure in one must not leave the virtual board running
        for step in (inbox.close if inbox is not None else None, engine.stop, getattr(source, "close", None),
                     board.close if board is not None else None,
                     publisher.close if publisher is not None else None,
                     room_server.stop if room_server is not None else None, store.close):
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # say it, and go on cleaning up
                print("ionm console: while stopping: %s" % exc, file=sys.stderr)
        if board is not None and board.scenario_file:
            Path(board.scenario_file).unlink(missing_ok=True)
        print("ionm console: stopped (the case stays open; run again to resume)", flush=True)
    return 0


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    if "," in url:  # a hub cluster's nodes
        return ",".join(_without_password(u.strip()) for u in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (parts.username, parts.netloc.rpartition("@")[2])))
