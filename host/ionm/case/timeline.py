"""A recorded case's events as people read them: the console's timeline, the report's pages and the export's
annotations all word an alert, a note or a stimulation change the same way."""

from __future__ import annotations

from typing import Any

from ionm.case.store import CaseStore


def short_name(name: str) -> str:
    """'C4'-Fz (L median cortical N20)' -> "C4'-Fz L median cortical N20" without the clutter."""
    return name.replace("(", "").replace(")", "")



def fmt_case_time(t: float) -> str:
    """Case seconds as mm:ss, as the page's clock shows them."""
    return "%02d:%02d" % (int(t) // 60, int(t) % 60)


def tof_note(tof: dict[str, Any]) -> str:
    """The TOF state an MEP or EMG alert raised under blockade carries (the alert's label says it)."""
    ratio = " T4/T1 %.2f" % tof["ratio"] if tof.get("ratio") is not None else ""
    return "TOF %d/4%s at %s: MEP/EMG unreliable under neuromuscular blockade" % (
        tof["count"], ratio, fmt_case_time(float(tof["t_s"])))


def alert_label(a: dict[str, Any]) -> str:
    amp, lat = a.get("amplitude_ratio"), a.get("latency_ratio")
    parts = []
    if amp is not None:
        parts.append("amplitude %d %%" % round(100 * amp))
    if lat is not None:
        parts.append("latency %d %%" % round(100 * lat))
    # an alert with neither ratio (free-run EMG's A-train warning) says its scope alone
    label = "%s %s: %s (%s)" % (a["stream"].split("/", 1)[-1], short_name(a["channel_name"]), a["criterion"],
                                "; ".join([", ".join(parts), a["scope"]] if parts else [a["scope"]]))
    return label + (" [%s]" % tof_note(a["tof"]) if a.get("tof") else "")


def describe_tof(r: dict[str, Any]) -> str:
    """A train-of-four as the timeline and the report word it: 'TOF L median, wrist -> APBL1-APBL2 L APB 25 mA:
    1/4 (below 2: MEP and EMG unreliable)'."""
    head = "%sTOF %s -> %s %g mA" % ("automatic " if r.get("auto") else "", r["site"], short_name(r["channel_name"]),
                                     r["current_ma"])
    if r.get("error"):
        return "%s: failed: %s" % (head, r["error"])
    ratio = ", T4/T1 %.2f" % r["ratio"] if r.get("ratio") is not None else ""
    warn = "" if r.get("reliable") else " (below 2: MEP and EMG unreliable)"
    return "%s: %d/4%s%s" % (head, r["count"], ratio, warn)



def describe_stim(cmd: dict[str, Any]) -> str:
    action = cmd.get("action")
    if action == "tcmep_train":
        return "TcMEP train delivered"
    if action == "stop_all":
        return "all stimulation stopped"
    if action == "resume":
        return "stimulation resumed by hand"
    rest = ", ".join("%s %s" % (k, v) for k, v in cmd.items() if k != "action")
    return "%s: %s" % (action, rest)



def describe_screw(r: dict[str, Any]) -> str:
    """A screw test's result as the timeline and the report word it: 'screw L4 left: 3.5 mA (AHL1-AHL2 L abductor
    hallucis): red, likely breach [lumbosacral]'."""
    low = r.get("lowest")
    if r.get("error"):
        what = "failed: %s" % r["error"]
    elif low is None:
        what = "no response up to %g mA" % r["hi_ma"]
    else:
        what = "%.1f mA (%s)" % (low["threshold_ma"], short_name(low["channel"]))
    return "%sscrew %s: %s: %s, %s%s" % ("dynamic " if r.get("dynamic") else "", r["screw"], what, r["colour"],
                                        r["label"], " [%s]" % r["rule"] if r.get("rule") else "")


def describe_probe(r: dict[str, Any]) -> str:
    """A manual probe session as the timeline and the report word it: 'probe (facial nerve) at 1.0 mA: response
    present on OOL1-OOL2 (850 µV, 6.1 ms), ...: 12 pulses' or '...: no response (>= 100 µV): 12 pulses'."""
    head = "probe%s at %g mA" % (" (%s)" % r["label"] if r.get("label") else "", r["ma"])
    if r.get("error"):
        return "%s: failed: %s (%d pulses)" % (head, r["error"], r["pulses"])
    if r["present"]:
        what = "response present on " + ", ".join(
            "%s (%.0f µV, %s ms)" % (n, v["p2p_uv"], "?" if v.get("lat_ms") is None else "%.1f" % v["lat_ms"])
            for n, v in r["present"].items())
    else:
        what = "no response (>= %g µV)" % r["criterion_uv"]
    return "%s: %s: %d pulses%s" % (head, what, r["pulses"], " (stopped by itself)" if r.get("timed_out") else "")


EMG_TIMELINE_KINDS = ("neurotonic", "a_train")  # free-run EMG events listed in the timeline (all are stored)
EMG_KIND_WORDS = {"a_train": "A-train", "neurotonic": "neurotonic discharge", "spike": "spike", "burst": "burst",
                  "cautery": "cautery"}


def describe_emg(ev: dict[str, Any]) -> str:
    """A free-run EMG event as the timeline and the report word it: 'EMG L orbicularis oris: A-train 1.50 s at 95
    Hz, 140 µV (cumulative 4.3 s)'."""
    rate = " at %.0f Hz" % ev["rate_hz"] if ev.get("rate_hz") else ""
    peak = ", %.0f µV" % ev["peak_uv"] if ev.get("peak_uv") is not None else ""
    cum = " (cumulative A-train %.1f s)" % ev["cumulative_s"] if ev.get("cumulative_s") is not None else ""
    return "EMG %s: %s %.2f s%s%s%s" % (ev["channel"], EMG_KIND_WORDS.get(ev["kind"], ev["kind"]),
                                        max(float(ev["end_s"]) - float(ev["t_s"]), 0.0), rate, peak, cum)


def describe_eeg_baseline(b: dict[str, Any]) -> str:
    """'baseline EEG: 01:00-04:00 (90 epochs): relative alpha L 0.50, R 0.49; alpha/delta L 1.76, R 1.63'."""
    lines = b["lines"]
    return ("baseline EEG: %s-%s (%d epochs): relative alpha L %.2f, R %.2f; alpha/delta L %.2f, R %.2f"
            % (fmt_case_time(b["from_s"]), fmt_case_time(b["to_s"]), b["epochs"], lines["L"]["ra"], lines["R"]["ra"],
               lines["L"]["adr"], lines["R"]["adr"]))


def describe_baep_baseline(b: dict[str, Any]) -> str:
    """'baseline BAEP L ear (2000 sweeps): I 1.70, III 3.95, V 5.75 ms (V 0.60 uV); I-V 4.05 ms'."""
    w = b["waves"]
    return ("baseline BAEP %s (%d sweeps): I %.2f, III %.2f, V %.2f ms (V %.2f uV); I-V %.2f ms"
            % (b["stream"].split("/", 1)[-1], b["sweeps"], w["I"]["ms"], w["III"]["ms"], w["V"]["ms"], w["V"]["uv"],
               b["ipl"]["I-V"]))


def eeg_ratios(e: dict[str, Any]) -> str:
    a, d = e["alpha_ratio"], e["adr_ratio"]
    return "relative alpha L %d %%, R %d %%; alpha/delta L %d %%, R %d %% of baseline" % (
        round(100 * a["L"]), round(100 * a["R"]), round(100 * d["L"]), round(100 * d["R"]))


# Surgical events the technologist marks (the console's Clamp on / Shunt / Clamp off): on the timeline, in the record
# and the audit. A clamp renews the EEG's baseline from the EEG before it (docs/CONSOLE.md), and the EEG's alerts
# raised while clamped say how long after the clamp they came (ionm.console.engine).
SURGICAL_EVENTS = {"clamp": "clamp on", "shunt": "shunt open", "declamp": "clamp off"}


def describe_surgical_event(body: dict[str, Any]) -> str:
    """A surgical event's timeline line: "clamp on (EEG baseline renewed from the EEG before it)"."""
    text = SURGICAL_EVENTS.get(str(body.get("event")), str(body.get("event")))
    eeg = body.get("eeg_baseline")
    if eeg == "renewed":
        text += " (EEG baseline renewed from the EEG before it)"
    elif eeg and eeg != "no EEG":
        text += " (EEG baseline %s)" % eeg
    return text


def describe_eeg_recovery(e: dict[str, Any]) -> str:
    where = "%s hemisphere" % e["side"] if e.get("side") else "both hemispheres"
    return "EEG: %s back within the criteria (%s)" % (where, eeg_ratios(e))


def baep_wave_v(e: dict[str, Any]) -> str:
    return "wave V %d %% of baseline, %+.2f ms, over the last %d sweeps" % (
        round(100 * e["amplitude_ratio"]), e["latency_shift_ms"], e["window"])


def describe_baep_recovery(stream: str, e: dict[str, Any]) -> str:
    return "BAEP %s: wave V recovered (%s)" % (stream.split("/", 1)[-1], baep_wave_v(e))


def timeline_from_store(store: CaseStore, case_id: int) -> list[dict[str, Any]]:
    """The case's events in time order, as the console timeline and the report show them."""
    items: list[dict[str, Any]] = []
    for n in store.rows("notes", case_id):
        items.append({"t_s": n["t_s"], "wall": n["wall"], "kind": n["kind"], "user": n["user"], "text": n["text"]})
    alerts = {}
    programs = store.rows("programs", case_id)
    tofs = {p["body"]["alert"]: p["body"]["tof"] for p in programs if p["kind"] == "alert_tof"}
    for a in store.rows("alerts", case_id):
        alerts[a["uid"]] = alert_label(a | {"tof": tofs.get(a["uid"])})
        items.append({"t_s": a["t_s"], "wall": a["wall"], "kind": "alert", "user": "system",
                      "text": alerts[a["uid"]]})
    for a in store.rows("acks", case_id):
        items.append({"t_s": a["t_s"], "wall": a["wall"], "kind": "ack", "user": a["user"],
                      "text": "%s: %s" % (alerts.get(a["alert_uid"], a["alert_uid"]), a["note"])})
    for b in store.rows("baselines", case_id):
        items.append({"t_s": b["t_s"], "wall": b["wall"], "kind": "baseline", "user": b["user"],
                      "text": "baseline %s" % b["stream"]})
    for p in programs:
        if p["kind"] == "stimulation":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "stim", "user": p["user"],
                          "text": describe_stim(p["body"]["command"])})
        elif p["kind"] == "screw_test" and p["body"].get("timeline", True):
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "screw", "user": p["user"],
                          "text": describe_screw(p["body"])})
        elif p["kind"] == "probe":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "probe", "user": p["user"],
                          "text": describe_probe(p["body"])})
        elif p["kind"] == "emg_warning":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "emg", "user": p["user"],
                          "text": "free-run EMG: A-train warning at %g s (was %g s)" % (p["body"]["warn_s"],
                                                                                      p["body"]["was_s"])})
        elif p["kind"] == "emg" and p["body"].get("kind") in EMG_TIMELINE_KINDS:
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "emg", "user": p["user"],
                          "text": describe_emg(p["body"])})
        elif p["kind"] == "tof":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "tof", "user": p["user"],
                          "text": describe_tof(p["body"])})
        elif p["kind"] in ("eeg_baseline", "baep_baseline"):
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "baseline", "user": p["user"],
                          "text": (describe_eeg_baseline if p["kind"] == "eeg_baseline" else
                                   describe_baep_baseline)(p["body"])})
        elif p["kind"] == "surgical_event":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "surgical", "user": p["user"],
                          "text": describe_surgical_event(p["body"])})
        elif p["kind"] == "eeg_event" and p["body"]["kind"] == "recovered":  # (the others are alerts)
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "eeg", "user": p["user"],
                          "text": describe_eeg_recovery(p["body"])})
        elif p["kind"] == "baep_event" and p["body"]["kind"] == "recovered":
            items.append({"t_s": p["t_s"], "wall": p["wall"], "kind": "baep", "user": p["user"],
                          "text": describe_baep_recovery(p["body"].get("stream", "baep/?"), p["body"])})
    items.sort(key=lambda i: (i["wall"], i["t_s"]))
    return items
