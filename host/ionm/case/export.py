"""`ionm export CASE --edf OUT` / `--csv OUT`: a recorded case for other tools.

EDF+/BDF+ (by OUT's suffix: .bdf writes 24-bit BDF+, anything else 16-bit EDF+): one file per stream (a
stimulated site, e.g. "ssep-lower/L tibial"), because each stream has its own window and channels. Every
data record is one raw sweep (µV). By default the file is EDF+C with the sweeps end to end, which every EDF
reader opens (EDFlib/pyedflib refuse EDF+D): file time is then not case time, so each "stim <site> t=<case
time>" annotation, at the stimulus of its record, says when it really was. --discontinuous writes EDF+D
instead: each record's time-keeping annotation is its window's true onset in the case. Other annotations:
"rejected: <reasons>" for rejected sweeps; "samples lost: N (channels)", with its duration, over every stretch
of samples lost on the link (written as 0 µV: EDF has no "no value", and a NaN must never reach a file); and
the case events (each once) (alerts, acknowledgements, notes, baselines,
stimulation changes) with the user who made them. With several streams OUT is a name pattern:
case.edf -> case.ssep-lower_L-tibial.edf, ...

EEG (stream "eeg/EEG", stored in 1-s records at 250 SPS): the same writer makes it a continuous EEG, one signal per
derivation labelled as the montage names it ("F3-C3"), with no stimulus annotations; EDF+C's time is then case time
from the first record on (an "EEG ... t=" annotation at 0 says when that was) as long as the records follow each other,
and the case events are annotated at their own time. BAEP streams keep their averages only: no EDF.

CSV: one tidy table: the trend measurements (per stream, channel and case second: amplitude, latency, ratios
to baseline, state) and the events, distinguished by the "kind" column.
"""

from __future__ import annotations

import csv
import datetime
import math
import re
from pathlib import Path
from typing import Any

import numpy as np


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "_")).strip("-")


def _edf_text(text: str) -> str:
    """EDF+ annotation text: printable, no TAL separators."""
    return re.sub(r"[\x00-\x1f]", " ", text)[:200]


def sw_time(stim_t: float, i: int, pre: int, fs: float) -> float:
    """Case time of sample i of the sweep whose stimulus was at stim_t."""
    return stim_t + (i - pre) / fs


def lost_spans(lost: np.ndarray, names: list[str]) -> list[tuple[int, int, int, str]]:
    """Runs of lost samples [k, ch, n] -> (sweep k, first sample, end sample, annotation text), one per run of
    samples where some channel was lost (the link loses whole frames: every channel at once)."""
    out = []
    any_lost: np.ndarray = np.any(lost, axis=1)  # [k, n]
    for k in np.flatnonzero(np.any(any_lost, axis=1)):
        row = np.concatenate([[False], any_lost[k], [False]])
        edges = np.flatnonzero(row[1:] != row[:-1])
        for i0, i1 in zip(edges[::2], edges[1::2], strict=True):
            chans = np.flatnonzero(np.any(lost[k, :, i0:i1], axis=1))
            which = "all channels" if len(chans) == len(names) else ", ".join(
                names[c].split(" (")[0] for c in chans)
            out.append((int(k), int(i0), int(i1), "samples lost: %d (%s), written as 0 uV" % (i1 - i0, which)))
    return out


def _unique_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The case events, each (time, kind, user, text) once: a baseline rebuilt by itself repeats its request's
    time and wording, and must not become a second annotation."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for item in events:
        key = (round(float(item["t_s"]), 2), item["kind"], item["user"], item["text"])
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def write_edf(store: Any, case_id: int, stream: str, out: Path, bdf: bool = False, discontinuous: bool = False) -> int:
    """One stream of a case as EDF+ / BDF+ (one sweep per data record); returns the number of sweeps."""
    import edfio
    from edfio import edf_annotations as ea  # the TAL helpers (pinned edfio): edfio itself writes only EDF+C

    from ionm.case.timeline import timeline_from_store

    case = store.case(case_id)
    meta = next(s for s in store.streams(case_id) if s["key"] == stream)
    fs, pre, n = float(meta["fs"]), int(meta["pre_samples"]), int(meta["n_samples"])
    sweeps = list(store.iter_sweeps(case_id, stream))
    if not sweeps:
        return 0
    data = np.stack([sw.data_uv for sw, _ in sweeps]).astype(np.float64)  # [k, ch, n]
    lost = ~np.isfinite(data)  # samples lost on the link (NaN): written as 0 µV and marked by an annotation
    data[lost] = 0.0
    duration = n / fs
    signal_cls: Any = edfio.BdfSignal if bdf else edfio.EdfSignal
    signals = []
    for c, name in enumerate(meta["channel_names"]):
        x = data[:, c, :].reshape(-1)
        lo, hi = float(np.floor(min(x.min(), 0.0))) - 1.0, float(np.ceil(max(x.max(), 0.0))) + 1.0
        signals.append(signal_cls(x, fs, label=name.split(" (")[0][:16], transducer_type="AgCl electrode",
                                  physical_dimension="uV",
                                  physical_range=(lo, hi), prefiltering="none (raw)",
                                  **({"digital_range": (-8388608, 8388607)} if bdf else {})))
    stims = np.array([sw.t_s for sw, _ in sweeps])
    events = _unique_events(timeline_from_store(store, case_id))
    gaps = lost_spans(lost, meta["channel_names"])
    if discontinuous:
        # Every record at its true time: the time-keeping TAL of record k is its window's onset in the case.
        onsets = stims - pre / fs
        records: list[list[Any]] = [[ea._EdfTAL(float(round(o, 6)), None, [""])] for o in onsets]
        for k, (sw, reasons) in enumerate(sweeps):
            if meta["modality"] == "eeg":  # continuous EEG: no stimulus
                continue
            records[k].append(ea._EdfTAL(float(round(sw.t_s, 6)), None, ["stim " + meta["source"]]))
            bad = sorted({r for r in reasons if r})
            if bad:
                records[k].append(ea._EdfTAL(float(round(sw.t_s, 6)), None, ["rejected: " + ", ".join(bad)]))
        for k, i0, i1, text in gaps:
            records[k].append(ea._EdfTAL(float(round(onsets[k] + i0 / fs, 6)), float(round((i1 - i0) / fs, 6)),
                                         [text]))
        for item in events:
            k = max(0, int(np.searchsorted(onsets, item["t_s"], side="right")) - 1)
            text = "%s (%s): %s" % (item["kind"], item["user"], item["text"])
            records[k].append(ea._EdfTAL(float(round(max(item["t_s"], onsets[0]), 6)), None, [_edf_text(text)]))
        raw = [ea._EdfAnnotationsDataRecord(r).to_bytes() for r in records]
        signals.append(ea._data_records_to_annotations_signal(raw, signal_cls, duration))
        annotations = None
    else:
        # Sweeps end to end (file time is not case time): each stimulus annotation carries its case time.
        annotations = []
        eeg = meta["modality"] == "eeg"  # continuous EEG in 1-s records: no stimulus; events at their sample
        if eeg:
            annotations.append(edfio.EdfAnnotation(0.0, None, "EEG %s t=%.4f" % (meta["source"], stims[0])))
        for k, (sw, reasons) in enumerate(sweeps):
            if eeg:
                continue
            annotations.append(edfio.EdfAnnotation(k * duration + pre / fs, None,
                                                   "stim %s t=%.4f" % (meta["source"], sw.t_s)))
            bad = sorted({r for r in reasons if r})
            if bad:
                annotations.append(edfio.EdfAnnotation(k * duration + pre / fs, None, "rejected: " + ", ".join(bad)))
        for k, i0, i1, text in gaps:
            annotations.append(edfio.EdfAnnotation(k * duration + i0 / fs, (i1 - i0) / fs,
                                                   "%s t=%.4f" % (text, sw_time(stims[k], i0, pre, fs))))
        for item in events:
            if eeg:  # the record holding the event's time, and the event at its sample in it
                k = max(int(np.searchsorted(stims, item["t_s"], side="right")) - 1, 0)
                onset = k * duration + min(max(float(item["t_s"]) - stims[k], 0.0), duration)
            else:
                k = min(int(np.searchsorted(stims, item["t_s"], side="left")), len(sweeps) - 1)
                onset = k * duration
            annotations.append(edfio.EdfAnnotation(onset, None, _edf_text("%s (%s) t=%.2f: %s" % (
                item["kind"], item["user"], item["t_s"], item["text"]))))
    start = datetime.datetime.fromtimestamp(case["created"])
    recording = edfio.Recording(startdate=start.date(), hospital_administration_code=case["uid"],
                                equipment_code="ionm-console")
    patient = edfio.Patient(code=(case["patient_id"] or "X").replace(" ", "_"))
    cls: Any = edfio.Bdf if bdf else edfio.Edf
    edf = cls(signals, patient=patient, recording=recording, starttime=start.time().replace(microsecond=0),
              data_record_duration=duration, annotations=annotations)
    if discontinuous:
        edf._set_reserved("BDF+D" if bdf else "EDF+D")  # edfio writes +C itself; the TALs above make it +D
    edf.write(out)
    return len(sweeps)


def write_csv(store: Any, case_id: int, out: Path, stream: str | None = None) -> int:
    """Measurements and events of a case as one CSV; returns the number of rows."""
    from ionm.case.timeline import timeline_from_store

    names = {s["key"]: s["channel_names"] for s in store.streams(case_id)}
    cols = ["t_s", "kind", "stream", "channel", "amplitude_uv", "latency_ms", "amplitude_ratio", "latency_ratio",
            "state", "user", "text"]
    rows = 0

    def num(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else "%g" % v

    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for m in store.rows("measurements", case_id):
            if stream and m["stream"] != stream:
                continue
            b = m["body"]
            for c, name in enumerate(names.get(m["stream"], [])):
                w.writerow(["%.4f" % m["t_s"], "measurement", m["stream"], name, num(b["amp_uv"][c]),
                            num(b["lat_ms"][c]), num(b["amp"][c]), num(b["lat"][c]), b["states"][c], "", ""])
                rows += 1
        for item in timeline_from_store(store, case_id):
            w.writerow(["%.4f" % item["t_s"], item["kind"], "", "", "", "", "", "", "", item["user"], item["text"]])
            rows += 1
    return rows
