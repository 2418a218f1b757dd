"""A console engine's output as oversight messages: what a remote physician needs, not the display's detail.

attach(engine, publisher) subscribes to the engine (ionm.console.engine.CaseEngine.subscribe) and publishes:
the case header once; every timeline event (alerts, acknowledgements, notes, baselines, board events) as
"event"; the alert list, the technical alarms and the stimulation state as "alerts", "technical" and
"stimulation" whenever they change; the pedicle-screw tests as "screws" (without the rules' legend), the
train-of-four as "tof" (results and the count < 2 warning) and the manual probe as "probe" (its records); trend
points as "trend"; periodic averages (the stack's traces) and each baseline's waveform as "average"; link
health as "link" when it changes, at most once per LINK_EVERY_S; the EEG's state as "eeg" when it changes (its clock
aside) and each 2-s epoch (the DSA columns of both hemispheres, the indices' trend point, and the raw EEG since the
epoch before as the console draws it: band-passed, at 125 Hz, in steps of 0.5 µV) as "eegepoch"; the
BAEP's state (the newest average with waves I, III and V marked, the baseline, the wave V trend) as "baep" with each
new average, without the stack of earlier averages; the free-run EMG's channels (cumulative A-train time, the
warning, discharges counted per kind) as "emg" when a count or a warning changes, and during an A-train each time a
channel's A-train time has grown by EMG_STEP_S (not with every 20-ms block); an A-train is counted when it ends, so
its final time is sent exact. Live display frames (streams, raw EMG, sound) stay in the room; the raw EEG travels with
the epochs, so that the physician reads the trace every 2 s without a message of its own every 0.25 s.
Each average carries what the hub's case view needs to draw it (stream_info: the channels' names, the time of the
first point relative to the stimulus, the modality, the alert criteria), which the console's own frames leave to
the stream frame.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ionm.hub.publisher import Publisher

LINK_EVERY_S = 1.0
EMG_STEP_S = 0.1  # A-train time (s) a channel gains before the hub is sent it again during a train
EEG_RAW_HELD = 40  # raw EEG items (0.25 s each) held for the next epoch at most: 10 s (an epoch is 2 s)
STATE_FRAMES = {"alerts": "alerts", "technical": "technical", "stim": "stimulation", "screws": "screws", "tof": "tof",
                "probe": "probe", "eeg": "eeg", "baep": "baep", "emg": "emg"}
# What of the room's panels the hub gets: the results and the state, not the controls' choices
SCREW_KEYS = ("available", "running", "results", "count")  # the frame without its rules (the legend)
TOF_KEYS = ("available", "running", "every", "warning", "results", "count")  # not the outputs, channels, clock
PROBE_KEYS = ("available", "running", "records", "count")  # the session without its newest pulse's responses
# the EEG frame without its clock (sent with every epoch, which "eegepoch" carries), the BAEP's without its stack
EEG_KEYS = ("fs", "channels", "sides", "state", "mode", "baseline", "criteria", "dsa", "trend_fields", "artefact",
            "clamp")
BAEP_KEYS = ("stream", "t_s", "channels", "side", "fs", "pre_ms", "rate_hz", "sweeps", "rejected", "state", "current",
             "baseline", "trend", "criteria")
EMG_KEYS = ("warn_s", "channels")  # the free-run frame without its clock, the discharges under way and the sound
PANEL_KEYS = {"screws": SCREW_KEYS, "tof": TOF_KEYS, "probe": PROBE_KEYS, "eeg": EEG_KEYS, "baep": BAEP_KEYS,
              "emg": EMG_KEYS}


class Bridge:
    def __init__(self, engine: Any, publisher: Publisher) -> None:
        self.engine, self.publisher = engine, publisher
        self._last: dict[str, str] = {}  # per kind, what was last published (a panel's frame as the hub gets it)
        self._raw: dict[str, str] = {}  # per state frame, the engine's last text, to skip a repeat without parsing it
        self._link_at = 0.0
        self._emg_sent: tuple[list[Any], list[float]] | None = None  # the last free-run frame sent: marks, times
        self._eegraw: list[dict[str, Any]] = []  # the raw EEG items since the last epoch sent
        case = getattr(engine, "case", None) or {}
        publisher.publish("header", {k: v for k, v in dict(case).items() if _plain(v)})
        stim = getattr(engine, "stimulation", None)
        if stim is not None:  # the program as the case starts (the engine sends its frame only on a change)
            publisher.publish("stimulation", {"program": stim.state(), "limits": stim.limits(), "board_stopped": None})
        engine.subscribe(self._on_output)

    def _on_output(self, frames: list[tuple[str, str, float | None]], appends: list[str]) -> None:
        for key, js, _arrival in frames:
            if key in STATE_FRAMES:
                if self._raw.get(key) == js:  # the engine sent the same frame again (EMG every few blocks): nothing
                    continue
                self._raw[key] = js
                body = json.loads(js)
                if key in PANEL_KEYS:
                    body = {k: body.get(k) for k in PANEL_KEYS[key]}
                    if key == "probe" and isinstance(body.get("running"), dict):
                        body["running"] = {k: v for k, v in body["running"].items() if k != "last"}
                text = json.dumps(body, sort_keys=True) if key in PANEL_KEYS else js
                if self._last.get(key) != text and (key != "emg" or self._emg_due(body)):
                    self._last[key] = text
                    self.publisher.publish(STATE_FRAMES[key], body)
            elif key.startswith("base:"):  # a stream's baseline waveform, once per baseline
                body = json.loads(js)
                self.publisher.publish("average", body | self.stream_info(body.get("key")) | {"baseline": True})
            elif key == "link":
                body = json.loads(js)
                body.pop("t_s", None)  # changes with every frame; the message's own time says when
                text = json.dumps(body, sort_keys=True)
                now = time.monotonic()
                if self._last.get(key) != text and now - self._link_at >= LINK_EVERY_S:
                    self._last[key], self._link_at = text, now
                    self.publisher.publish("link", body)
        for js in appends:
            item = json.loads(js)
            if item.get("k") == "eegraw":
                self._eegraw.append(item)
                del self._eegraw[:-EEG_RAW_HELD]
                continue
            kind = {"trend": "trend", "event": "event", "stack": "average", "eegep": "eegepoch"}.get(item.get("k"))
            if kind == "average":
                item |= self.stream_info(item.get("s"))
            elif kind == "eegepoch" and self._eegraw:
                item["raw"] = merge_raw(self._eegraw)
                self._eegraw = []
            if kind:
                self.publisher.publish(kind, item)

    def _emg_due(self, body: dict[str, Any]) -> bool:
        """A changed free-run frame is sent when a channel's counts or warning changed, or its A-train time grew by
        EMG_STEP_S since the last one sent."""
        chans = body.get("channels") or []
        marks = [(c.get("name"), c.get("warned"), c.get("counts")) for c in chans]
        times = [float(c.get("a_train_s") or 0.0) for c in chans]
        last = self._emg_sent
        if last is not None and last[0] == marks and len(last[1]) == len(times) and \
                all(t - t0 < EMG_STEP_S - 1e-6 for t, t0 in zip(times, last[1], strict=True)):  # (times in ms)
            return False
        self._emg_sent = (marks, times)
        return True

    def stream_info(self, key: Any) -> dict[str, Any]:
        """A stream's channel names (short, as the console shows them), the first point's time relative to the
        stimulus (ms), its modality and alert criteria; {} for a stream the engine does not know. Called on the
        engine thread (the engine's subscribers are), so the stream is read as it is."""
        st = getattr(self.engine, "streams", {}).get(key)
        if st is None:
            return {}
        from ionm.case.timeline import short_name

        m = st.evaluator.modality
        return {"names": [short_name(n) for n in st.names], "x0_ms": -st.pre / st.fs * 1000.0,
                "modality": st.modality, "criteria": {"amp_alert": _finite(m.amplitude_ratio_alert),
                                                      "lat_alert": _finite(m.latency_ratio_alert)}}


def attach(engine: Any, publisher: Publisher) -> Bridge:
    return Bridge(engine, publisher)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def merge_raw(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive raw EEG items of the console ({"t0", "dt", "q", "v": [per channel: samples]}) as one."""
    first = items[0]
    v = [sum((list(it["v"][c]) for it in items), []) for c in range(len(first["v"]))]
    return {"t0": first["t0"], "dt": first["dt"], "q": first["q"], "v": v}


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, dict))
