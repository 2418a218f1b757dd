"""`ionm report CASE --out FILE.pdf`: the case report, from the store alone.

Pages: (1) case summary — identifiers, times, streams with sweep and rejection counts, alert counts, closing
status; (2) baselines — every stream's baseline waveforms with the reference amplitude and latency of each
channel; (3) one page per alert — the channel's average before the alert, at it and after it, overlaid on the
baseline, the trend around it, and who acknowledged it with what note; (4) interventions and notes — the
timeline (continued on further pages when long); (5) technical events — stimulation stops, technical alarms,
samples lost (counts and times) and restarts; (6) closing status — the final state of every tracked channel,
the alerts left unacknowledged grouped by channel, and whether the audit trail's hash chain is intact.
Waveforms are drawn negative up on a truly inverted axis (the tick labels are true µV).
"""

from __future__ import annotations

import datetime
import textwrap
from typing import Any

import numpy as np

A4 = (8.27, 11.69)
AFTER_S = 30.0  # the "after" average: the first stored at least this long after the alert
BEFORE_S = 30.0


def _when(wall: float | None) -> str:
    return "-" if wall is None else datetime.datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S")


def _baseline_note(ref: dict[str, Any]) -> str:
    """What the baseline table says after a channel's reference: not tracked, or a weak baseline (level known to
    worse than ±10 %; older cases stored no level SE)."""
    from ionm.pipeline.evaluator import WEAK_BASELINE_SE

    if not ref["tracked"]:
        return "  (not tracked)"
    se = ref.get("level_se")
    return "  (weak: level ±%.0f %%)" % (100 * se) if se is not None and se > WEAK_BASELINE_SE else ""


def _mmss(t: float) -> str:
    return "%02d:%02d" % (int(t) // 60, int(t) % 60)


def _text_page(pdf: Any, title: str, lines: list[str], per_page: int = 58) -> int:
    """Plain text pages (wrapped); returns how many were written."""
    import matplotlib.pyplot as plt

    wrapped: list[str] = []
    for line in lines:
        wrapped += textwrap.wrap(line, 100, subsequent_indent="        ") or [""]
    pages = max(1, (len(wrapped) + per_page - 1) // per_page)
    for p in range(pages):
        fig = plt.figure(figsize=A4)
        fig.text(0.07, 0.95, title + (" (continued)" if p else ""), fontsize=15, weight="bold")
        fig.text(0.07, 0.92, "\n".join(wrapped[p * per_page:(p + 1) * per_page]), fontsize=8.5, va="top",
                 family="monospace")
        pdf.savefig(fig)
        plt.close(fig)
    return pages


def _trace_axes(ax: Any, stream: dict[str, Any], wave: np.ndarray, label: str, color: str, ls: str = "-") -> None:
    """A trace in true µV on an axis drawn negative up (the neurophysiology convention): the values are plotted as
    they are and the axis is inverted, so the tick labels stay true and "negative up" is what the reader sees."""
    t = (np.arange(wave.shape[-1]) - stream["pre_samples"]) / stream["fs"] * 1000.0
    ax.plot(t, wave, color=color, ls=ls, lw=1.0, label=label)
    if not ax.yaxis_inverted():
        ax.invert_yaxis()


def lost_samples(store: Any, cid: int) -> list[dict[str, Any]]:
    """Samples missing from the recorded sweeps (lost on the link: NaN in the record), as episodes: sweeps of any
    stream less than 2 s apart belong to one. Each: first and last sweep time, sweeps affected, samples missing
    (per channel-independent sample time) and the streams."""
    from ionm.case.store import unpack

    rows = store.query("SELECT stream, t_s, data FROM sweeps WHERE case_id = ? AND reasons LIKE '%nonfinite%' "
                       "ORDER BY t_s, id", (cid,))
    episodes: list[dict[str, Any]] = []
    for r in rows:
        x = unpack(r["data"])
        n = int(np.count_nonzero(~np.isfinite(x).all(axis=0)))
        if not n:
            continue
        t = float(r["t_s"])
        if episodes and t - episodes[-1]["t1"] <= 2.0:
            e = episodes[-1]
        else:
            e = {"t0": t, "t1": t, "sweeps": 0, "samples": 0, "streams": []}
            episodes.append(e)
        e["t1"], e["sweeps"], e["samples"] = t, e["sweeps"] + 1, e["samples"] + n
        if r["stream"] not in e["streams"]:
            e["streams"].append(r["stream"])
    return episodes


def technical_events(store: Any, cid: int) -> list[str]:
    """The technical-events section: stimulation stops, technical alarms, lost samples (counts and times) and
    restarts, counted first, then listed in time order."""
    notes = [n for n in store.rows("notes", cid) if n["kind"] == "technical"]
    audit = store.rows("audit", cid)
    programs = [p for p in store.rows("programs", cid) if p["kind"] == "stimulation"
                and (p["body"].get("command") or {}).get("action") == "stop_all"]
    items: list[tuple[float, str, str]] = []
    board_stops = [n for n in notes if "stimulation stopped" in n["text"] and n["text"].startswith("TECHNICAL")]
    for n in board_stops:
        items.append((n["t_s"], "stim stop", n["text"]))
    for p in programs:
        items.append((p["t_s"], "stim stop", "all stimulation stopped by %s" % p["user"]))
    raised = [n for n in notes if n["text"].startswith("TECHNICAL ALARM") and n not in board_stops]
    for n in notes:
        if n in board_stops:
            continue
        kind = "alarm" if n["text"].startswith("TECHNICAL ALARM") else "cleared" if n["text"].startswith(
            "technical alarm cleared") else "board"
        items.append((n["t_s"], kind, n["text"]))
    episodes = lost_samples(store, cid)
    for e in episodes:
        items.append((e["t0"], "lost", "%d samples missing from %d sweeps, %s-%s (%s)" % (
            e["samples"], e["sweeps"], _mmss(e["t0"]), _mmss(e["t1"]), ", ".join(e["streams"]))))
    resumes = [a for a in audit if a["action"] == "case.resume"]
    clocks = [a for a in audit if a["action"] == "source.clock"]
    for a in resumes:
        items.append((float(a["detail"].get("t_s", 0.0)), "restart", "console restarted; the case resumed (%s)"
                      % _when(a["wall"])))
    for a in clocks:
        items.append((float(a["detail"].get("case_t_s", 0.0)), "restart",
                      "the source's clock restarted (board reset or console restart)"))
    lines = ["Stimulation stops:   %d (by the board %d, by a user %d)" % (len(board_stops) + len(programs),
                                                                        len(board_stops), len(programs)),
             "Technical alarms:    %d raised" % (len(raised) + len(board_stops)),
             "Lost samples:        %d missing from recorded sweeps, in %d episode(s)" % (
                 sum(e["samples"] for e in episodes), len(episodes)),
             "Restarts:            %d (console %d, source clock %d)" % (len(resumes) + len(clocks), len(resumes),
                                                                       len(clocks)),
             ""]
    items.sort(key=lambda i: i[0])
    lines += ["%s  %-9s %s" % (_mmss(t), kind, text) for t, kind, text in items] or ["(no technical events)"]
    return lines


def unacknowledged_by_channel(alerts: list[dict[str, Any]], acks: dict[str, Any]) -> list[str]:
    """Alerts left unacknowledged, one line per channel: how many, first and last, the criteria, the lowest
    amplitude and highest latency in % of baseline."""
    from ionm.case.timeline import short_name

    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for a in alerts:
        if a["uid"] not in acks:
            groups.setdefault((a["stream"], int(a["channel"])), []).append(a)
    lines = []
    for (stream, _), rows in sorted(groups.items(), key=lambda g: g[1][0]["t_s"]):
        amps = [a["amplitude_ratio"] for a in rows if a["amplitude_ratio"] is not None]
        lats = [a["latency_ratio"] for a in rows if a["latency_ratio"] is not None]
        worst = ", ".join(([("amplitude down to %d %%" % round(100 * min(amps)))] if amps else []) +
                          ([("latency up to %d %%" % round(100 * max(lats)))] if lats else []))
        lines.append("  %s %s: %d alert%s, %s-%s (%s%s)" % (
            stream, short_name(rows[0]["channel_name"]), len(rows), "" if len(rows) == 1 else "s",
            _mmss(rows[0]["t_s"]), _mmss(rows[-1]["t_s"]), ", ".join(sorted({a["criterion"] for a in rows})),
            "; " + worst if worst else ""))
    return lines


def screw_lines(store: Any, cid: int) -> list[str]:
    """The screw page: one row per screw tested (a dynamic test: its lowest threshold over the session), in the
    order tested, then the rules the rows were read against. Empty when no screw was tested."""
    rows = [p for p in store.rows("programs", cid) if p["kind"] == "screw_test"]
    if not rows:
        return []
    tests: dict[Any, list[dict[str, Any]]] = {}
    for p in rows:
        b = p["body"]
        key = ("dyn", b["test"]) if b.get("dynamic") else ("one", b["uid"])
        tests.setdefault(key, []).append(b)
    lines = ["%d screw tests (%d hunts). Threshold: the lowest probe current that evoked >= the criterion on a "
             "muscle of the screw's side; the band is read against the level's rule." % (len(tests), len(rows)), "",
             "  %-6s %-9s %-6s %-20s %-30s %-15s %-10s %s" % ("time", "screw", "band", "reading", "threshold (muscle)",
                                                             "rule", "by", "mode")]
    rules: dict[str, str] = {}
    for (kind, _), hunts in tests.items():
        done = [h for h in hunts if h.get("complete")] or hunts
        best = min(done, key=lambda h: (h["lowest"] is None, h["lowest"]["threshold_ma"] if h["lowest"] else 0))
        low = best["lowest"]
        thr = ("none <= %g mA" % best["hi_ma"] if low is None else
               "%.1f mA %s" % (low["threshold_ma"], low["channel"].split(" ")[0]))
        if best.get("error"):
            thr = "failed"
        mode = "dynamic, %d hunts" % len(hunts) if kind == "dyn" else "%d pulses" % best["pulses"]
        lines.append("  %-6s %-9s %-6s %-20s %-30s %-15s %-10s %s" % (
            _mmss(hunts[0]["t_s"]), best["screw"], best["colour"].upper(), best["label"][:20], thr[:30],
            (best["rule"] or "none")[:15], best["user"][:10], mode))
        if best.get("rule"):
            rules[best["rule"]] = best.get("rule_source") or ""
    lines += ["", "Rules used:"] + ["- %s: %s" % kv for kv in rules.items()]
    return lines


def tof_lines(store: Any, cid: int) -> list[str]:
    """The train-of-four page: every TOF in order (count, T4/T1, the four responses), and the MEP and EMG alerts
    raised while the last count was below 2 with the TOF they carry. Empty when no TOF was delivered."""

    programs = store.rows("programs", cid)
    rows = [p["body"] for p in programs if p["kind"] == "tof"]
    if not rows:
        return []
    lines = ["%d trains-of-four (4 pulses at 2 Hz, at most one per 15 s). Count: responses present (>= 5 %% of the "
             "unblocked T1, above the noise); below 2 MEP and EMG are unreliable (%s)." % (len(rows), rows[0]["rule"]),
             "", "  %-6s %-5s %-6s %-28s %-26s %-10s %s" % ("time", "count", "T4/T1", "stimulus -> muscle",
                                                         "T1..T4 uV", "by", "")]
    for r in rows:
        p2p = " ".join("%.0f" % v for v in r["p2p_uv"]) if r.get("p2p_uv") else "failed: %s" % r.get("error")
        lines.append("  %-6s %-5s %-6s %-28s %-26s %-10s %s" % (
            _mmss(r["t_s"]), "-" if r["count"] is None else "%d/4" % r["count"],
            "-" if r.get("ratio") is None else "%.2f" % r["ratio"],
            ("%s -> %s" % (r["site"], r["channel_name"].split(" ")[0]))[:28], p2p[:26], r["user"][:10],
            "UNRELIABLE MEP/EMG" if r.get("reliable") is False else ""))
    attached = [p["body"] for p in programs if p["kind"] == "alert_tof"]
    if attached:
        lines += ["", "Alerts raised while the last TOF count was below 2 (each carries that TOF):"]
        lines += ["  %s: TOF %d/4 at %s" % (b["alert"], b["tof"]["count"], _mmss(b["tof"]["t_s"])) for b in attached]
    return lines


def probe_lines(store: Any, cid: int) -> list[str]:
    """The manual probe page (nerve mapping): one row per session with its current, whether a response was
    present and on which muscles (amplitude, latency). Empty when the probe was not used."""
    rows = [p["body"] for p in store.rows("programs", cid) if p["kind"] == "probe"]
    if not rows:
        return []
    lines = ["%d manual probe sessions. A response is present at >= %g uV peak to peak on a muscle channel."
             % (len(rows), rows[0]["criterion_uv"]), "",
             "  %-6s %-20s %-6s %-8s %-7s %s" % ("time", "target", "mA", "response", "pulses", "muscles (uV, ms)")]
    for r in rows:
        what = "failed" if r.get("error") else "PRESENT" if r["response"] else "none"
        muscles = ", ".join("%s (%.0f, %s)" % (n.split(" ")[0], v["p2p_uv"], "?" if v.get("lat_ms") is None else
                                                "%.1f" % v["lat_ms"]) for n, v in r["present"].items())
        lines.append("  %-6s %-20s %-6.1f %-8s %-7d %s" % (_mmss(r["t_s"]), (r.get("label") or "-")[:20], r["ma"],
                                                          what, r["pulses"], muscles or "-"))
    return lines


def emg_lines(store: Any, cid: int) -> list[str]:
    """The free-run EMG page: per channel the events by kind and the cumulative A-train time, the A-train warnings,
    then every neurotonic discharge and A-train in order. Empty when the case had no free-run EMG event."""
    from ionm.case.timeline import EMG_TIMELINE_KINDS, describe_emg

    rows = [p["body"] for p in store.rows("programs", cid) if p["kind"] == "emg"]
    if not rows:
        return []
    kinds = ("a_train", "neurotonic", "burst", "spike", "cautery")
    per: dict[str, dict[str, float]] = {}
    for r in rows:
        c = per.setdefault(r["channel"], dict.fromkeys((*kinds, "a_train_s"), 0.0))
        c[r["kind"]] = c.get(r["kind"], 0.0) + 1
        if r["kind"] == "a_train":
            c["a_train_s"] += float(r["end_s"]) - float(r["t_s"])
    lines = ["%d free-run EMG events (every one stored; spikes, bursts and cautery are not in the timeline)."
             % len(rows), "", "  %-28s %7s %7s %7s %7s %7s  %s" % ("channel", *kinds, "A-train time")]
    for name, c in per.items():
        counts = " ".join("%7d" % int(c[k]) for k in kinds)
        lines.append("  %-28s %s  %.1f s" % (name[:28], counts, c["a_train_s"]))
    warn = [a for a in store.rows("alerts", cid) if a["stream"].startswith("emg/")]
    if warn:
        lines += ["", "A-train warnings"] + ["  %s %s: %s" % (_mmss(a["t_s"]), a["channel_name"], a["criterion"])
                                            for a in warn]
    lines += ["", "Neurotonic discharges and A-trains"]
    lines += ["  %s %s" % (_mmss(r["t_s"]), describe_emg(r)) for r in rows if r["kind"] in EMG_TIMELINE_KINDS]
    return lines


def eeg_baep_lines(store: Any, cid: int) -> list[str]:
    """The EEG and BAEP page: baselines, alerts and recoveries in order, and the BAEP averages stored. Empty when the
    case had neither."""
    from ionm.case.timeline import describe_baep_baseline, describe_eeg_baseline, describe_eeg_recovery

    kinds = ("eeg_baseline", "baep_baseline", "eeg_event", "baep_event")
    programs = [p for p in store.rows("programs", cid) if p["kind"] in kinds]
    alerts = [a for a in store.rows("alerts", cid) if a["stream"].split("/")[0] in ("eeg", "baep")]
    if not programs and not alerts:
        return []
    lines = ["EEG: indices every 2 s per hemisphere, judged against the baseline (ionm.pipeline.eeg); the raw EEG",
             "is in the record and `ionm export --edf` writes it. BAEP: wave V judged on the ipsilateral channel",
             "(ionm.pipeline.baep); its averages are in the record.", ""]
    for p in programs:
        b = p["body"]
        if p["kind"] == "eeg_baseline":
            lines.append("  %s %s (%s)" % (_mmss(p["t_s"]), describe_eeg_baseline(b), p["user"]))
        elif p["kind"] == "baep_baseline":
            lines.append("  %s %s (%s)" % (_mmss(p["t_s"]), describe_baep_baseline(b), p["user"]))
        elif p["kind"] == "eeg_event" and b["kind"] == "recovered":
            lines.append("  %s %s" % (_mmss(p["t_s"]), describe_eeg_recovery(b)))
        elif p["kind"] == "baep_event" and b["kind"] == "recovered":
            lines.append("  %s BAEP: wave V recovered (%d %% of baseline, %+.2f ms)"
                         % (_mmss(p["t_s"]), round(100 * b["amplitude_ratio"]), b["latency_shift_ms"]))
    lines += ["", "Alerts"] + ["  %s %s %s: %s [%s]" % (_mmss(a["t_s"]), a["stream"], a["channel_name"],
                                                        a["criterion"], a["scope"]) for a in alerts]
    for s in store.streams(cid):
        if s["modality"] == "baep":
            avgs = store.averages(cid, s["key"])
            whys = sorted({w for _, w, _ in avgs})
            lines += ["", "%s: %d averages stored (%s)" % (s["key"], len(avgs), ", ".join(
                "%s %d" % (w, sum(1 for _, w2, _ in avgs if w2 == w)) for w in whys))]
    return lines


def write_report(store: Any, case_ref: Any, out: str) -> int:
    """Write the PDF; returns the number of pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    from ionm.case.timeline import alert_label, short_name, timeline_from_store

    case = store.case(case_ref)
    cid = int(case["id"])
    streams = {s["key"]: s for s in store.streams(cid)}
    counts = {r["stream"]: (r["n"], r["rej"], r["t0"], r["t1"]) for r in store.query(
        "SELECT stream, COUNT(*) AS n, SUM(n_accepted < json_array_length(reasons)) AS rej, MIN(t_s) AS t0, "
        "MAX(t_s) AS t1 FROM sweeps WHERE case_id = ? GROUP BY stream", (cid,))}
    alerts = store.rows("alerts", cid)
    alert_tofs = {p["body"]["alert"]: p["body"]["tof"] for p in store.rows("programs", cid) if p["kind"] == "alert_tof"}
    acks = {a["alert_uid"]: a for a in store.rows("acks", cid)}
    audit = store.rows("audit", cid)
    closing = next((a for a in reversed(audit) if a["action"] == "case.close"), None)
    baselines = store.baselines(cid)
    measurements = store.rows("measurements", cid)
    timeline = timeline_from_store(store, cid)
    t_end = max([c[3] for c in counts.values()] + [0.0])
    pages = 0

    with PdfPages(out, metadata={"Title": "IONM case report %s" % case["uid"], "Creator": "ionm report"}) as pdf:
        # 1. summary
        lines = ["Case            %s (id %d)" % (case["uid"], cid),
                 "Patient ID      %s" % (case["patient_id"] or "(not given)"),
                 "Procedure       %s" % (case["procedure"] or "(not given)"),
                 "Opened          %s" % _when(case["created"]),
                 "Recorded        %s of case time" % _mmss(t_end),
                 "Source          %s" % ", ".join("%s=%s" % kv for kv in case["meta"].items() if kv[1] is not None),
                 "Status          %s" % ("closed %s by %s" % (_when(closing["wall"]), closing["user"]) if closing
                                        else "OPEN (not closed)"),
                 "", "Streams (stimulated site: sweeps, sweeps with a rejected channel)"]
        for key, (n, n_rej, t0, t1) in counts.items():
            lines.append("  %-24s %6d sweeps  %5d rejected   %s - %s" % (key, n, n_rej or 0, _mmss(t0), _mmss(t1)))
        unacked = [a for a in alerts if a["uid"] not in acks]
        by_channel = unacknowledged_by_channel(alerts, acks)
        lines += ["", "Alerts          %d (%d acknowledged, %d not acknowledged)" % (
            len(alerts), len(alerts) - len(unacked), len(unacked))]
        if unacked:
            lines += ["", "Unacknowledged alerts by channel (%d channels)" % len(by_channel)] + by_channel
        users = sorted({a["user"] for a in audit if a["user"] != "system"})
        lines += ["", "People on the record: %s" % (", ".join(users) or "-"),
                  "Baselines set: %d" % len(baselines),
                  "Notes: %d" % sum(1 for t in timeline if t["kind"] == "note")]
        pages += _text_page(pdf, "IONM case report — summary", lines)

        # 2. baselines
        if baselines:
            latest = {}
            for b in baselines:
                latest[b["stream"]] = b
            fig, axes = plt.subplots(len(latest), 1, figsize=A4, squeeze=False)
            fig.suptitle("Baselines (latest per stream; %d set in all)" % len(baselines), fontsize=14, weight="bold")
            for ax, (key, b) in zip(axes[:, 0], latest.items(), strict=True):
                st = streams[key]
                span = np.nanmax(np.abs(b["mean"])) or 1.0
                for c, name in enumerate(st["channel_names"]):
                    ref = b["refs"][c]
                    _trace_axes(ax, st, b["mean"][c] + 2.2 * span * c, "", "C%d" % c)  # channel 0 on top
                    ax.text(1.01, 1 - (c + 0.5) / len(st["channel_names"]),
                            "%s\n%s µV  %s ms%s" % (short_name(name)[:34], ref["amp_uv"], ref["lat_ms"],
                                                    _baseline_note(ref)),
                            transform=ax.transAxes, fontsize=6, va="center", color="C%d" % c)
                ax.set_title("%s — set at %s by %s from sweeps %s-%s" % (key, _mmss(b["t_s"]), b["user"],
                                                                         _mmss(b["first_t"]), _mmss(b["last_t"])),
                             fontsize=8)
                ax.set_yticks([])
                ax.set_xlabel("ms", fontsize=7)
                ax.tick_params(labelsize=7)
            fig.subplots_adjust(right=0.7, hspace=0.6, top=0.93, bottom=0.05, left=0.06)
            pdf.savefig(fig)
            plt.close(fig)
            pages += 1

        # 3. one page per alert
        for a in alerts:
            if a["stream"] not in streams:  # free-run EMG's A-train warning: no sweeps; on the free-run EMG page
                continue
            if streams[a["stream"]]["modality"] in ("eeg", "baep"):  # on the EEG and BAEP page
                continue
            st = streams[a["stream"]]
            c = int(a["channel"])
            avgs = store.averages(cid, a["stream"])
            base = next((b for b in reversed(baselines) if b["stream"] == a["stream"] and b["t_s"] <= a["t_s"]), None)
            before = next((x for x in reversed(avgs) if x[0] <= a["t_s"] - BEFORE_S), None)
            at = next((x for x in avgs if x[1] == "alert" and abs(x[0] - a["t_s"]) < 1e-6), None)
            after = next((x for x in avgs if x[0] >= a["t_s"] + AFTER_S), None)
            fig = plt.figure(figsize=A4)
            fig.suptitle("Alert %s at %s" % (a["uid"], _mmss(a["t_s"])), fontsize=14, weight="bold")
            fig.text(0.07, 0.925, alert_label(a | {"tof": alert_tofs.get(a["uid"])}), fontsize=9)
            ax = fig.add_axes((0.08, 0.55, 0.86, 0.33))
            if base is not None:
                _trace_axes(ax, st, base["mean"][c], "baseline %s" % _mmss(base["t_s"]), "green", "--")
            for item, name, color in ((before, "before", "0.45"), (at, "at alert", "red"), (after, "after", "C0")):
                if item is not None:
                    _trace_axes(ax, st, item[2][c], "%s (%s)" % (name, _mmss(item[0])), color)
            ax.set_title("%s · %s" % (a["stream"], short_name(a["channel_name"])), fontsize=9)
            ax.set_xlabel("ms after stimulus", fontsize=8)
            ax.set_ylabel("µV (negative up)", fontsize=8)
            ax.legend(fontsize=7, loc="upper right")
            ax.tick_params(labelsize=7)
            ax2 = fig.add_axes((0.08, 0.27, 0.86, 0.2))
            pts = [(m["t_s"], m["body"]["amp"][c], m["body"]["lat"][c]) for m in measurements
                   if m["stream"] == a["stream"] and abs(m["t_s"] - a["t_s"]) <= 300]
            if pts:
                t = np.array([p[0] for p in pts])
                amp = np.array([np.nan if p[1] is None else p[1] for p in pts], dtype=float)
                lat = np.array([np.nan if p[2] is None else p[2] for p in pts], dtype=float)
                ax2.plot(t, 100 * amp, label="amplitude %", color="C0")
                ax2.plot(t, 100 * lat, label="latency %", color="C1")
            ax2.axvline(a["t_s"], color="red", lw=0.8)
            ax2.axhline(100, color="0.7", lw=0.6)
            ax2.set_xlabel("case time, s", fontsize=8)
            ax2.set_ylabel("% of baseline", fontsize=8)
            ax2.legend(fontsize=7, loc="lower left")
            ax2.tick_params(labelsize=7)
            ack = acks.get(a["uid"])
            ack_text = ("Acknowledged %s (case %s) by %s:\n%s" % (_when(ack["wall"]), _mmss(ack["t_s"]), ack["user"],
                                                                    textwrap.fill(ack["note"], 100))
                        if ack else "NOT ACKNOWLEDGED")
            fig.text(0.07, 0.2, ack_text, fontsize=9, va="top", color="black" if ack else "red")
            pdf.savefig(fig)
            plt.close(fig)
            pages += 1

        # 3b. pedicle-screw tests: a table of every screw (only when screws were tested)
        screws = screw_lines(store, cid)
        if screws:
            pages += _text_page(pdf, "Pedicle screw tests", screws)

        # 3c'. manual probe sessions (only when the probe was used)
        probes = probe_lines(store, cid)
        if probes:
            pages += _text_page(pdf, "Manual probe (nerve mapping)", probes)

        # 3c'''. EEG and BAEP (only when the case had any)
        neuro = eeg_baep_lines(store, cid)
        if neuro:
            pages += _text_page(pdf, "EEG and BAEP", neuro)

        # 3c''. free-run EMG (only when the case had any)
        emg = emg_lines(store, cid)
        if emg:
            pages += _text_page(pdf, "Free-run EMG", emg)

        # 3c. trains-of-four (only when delivered)
        tofs = tof_lines(store, cid)
        if tofs:
            pages += _text_page(pdf, "Train-of-four (neuromuscular blockade)", tofs)

        # 4. technical events: the equipment, not the patient
        pages += _text_page(pdf, "Technical events", technical_events(store, cid))

        # 5. interventions and notes
        lines = ["%s  %-8s %-14s %s" % (_mmss(i["t_s"]), i["kind"], i["user"][:14], i["text"]) for i in timeline]
        pages += _text_page(pdf, "Interventions, events and notes", lines or ["(none)"])

        # 6. closing status
        last: dict[str, dict[str, Any]] = {}
        for m in measurements:
            last[m["stream"]] = m
        lines = ["Status: %s" % ("closed %s by %s%s" % (_when(closing["wall"]), closing["user"],
                                                        (": " + closing["detail"].get("note", ""))
                                                        if closing["detail"].get("note") else "")
                                 if closing else "OPEN: the case was not closed"), ""]
        lines.append("Final state per channel (amplitude / latency in % of baseline):")
        for key, m in last.items():
            lines.append("  %s at %s" % (key, _mmss(m["t_s"])))
            for c, name in enumerate(streams[key]["channel_names"]):
                a_, l_ = m["body"]["amp"][c], m["body"]["lat"][c]
                if a_ is None and l_ is None:
                    continue
                lines.append("    %-44s %-8s %5s %%  %5s %%" % (short_name(name)[:44], m["body"]["states"][c],
                                                               "-" if a_ is None else round(100 * a_),
                                                               "-" if l_ is None else round(100 * l_)))
        lines += ["", "Alerts not acknowledged: %d, by channel:" % len(unacked)] + (by_channel or ["  (none)"])
        lines += ["", "Audit trail: %d entries for this case; hash chain %s." % (
            len(audit), "intact" if store.verify_audit() else "BROKEN (the record was altered outside the console)")]
        led = store.verify(cid)
        lines += ["", "Record ledger (every row of the case, chained; `ionm verify` checks it): %d records, %s." % (
            led["entries"], "intact" if led["ok"] else "NOT INTACT: %s" % led["first"]),
                  "Ledger head: %s" % (led["head"] or "-"),
                  "Anchored in %s.anchor.json at %s records." % (
                      str(store.path).rsplit("/", 1)[-1], led["anchor"]["rows"] if led["anchor"] else "no")]
        lines += ["", "Report written %s." % _when(datetime.datetime.now().timestamp()), "",
                  "Reviewed by (physician): ______________________________   Date: ____________"]
        pages += _text_page(pdf, "Closing status", lines)
    return pages
