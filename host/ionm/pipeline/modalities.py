"""Per-modality defaults: filter band, stimulus blanking, component windows, alert criteria.

Figures from /work/shared/domain/IONM-REFERENCE.md (ACNS criteria; typical filters and latencies, which
that document marks as typical values: everything here is a default a caller can override).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

MODALITIES = ("ssep-upper", "ssep-lower", "mep")


@dataclass(frozen=True)
class Component:
    """A named peak: polarity -1 for N (negative), +1 for P, searched in [lo_ms, hi_ms] after the stimulus."""

    name: str
    polarity: int
    lo_ms: float
    hi_ms: float


@dataclass(frozen=True)
class Modality:
    name: str
    band_hz: tuple[float, float]  # band-pass edges; the upper edge is capped below Nyquist
    blank_ms: tuple[float, float]  # blanked interval around the stimulus (before, after), ms
    # Components by recording site; the amplitude pair is measured peak to peak.
    components: dict[str, tuple[Component, ...]] = field(default_factory=dict)
    amplitude_pair: dict[str, tuple[str, str]] = field(default_factory=dict)
    # ACNS defaults (IONM-REFERENCE "Alert criteria"): SSEP -50 % amplitude or +10 % latency.
    amplitude_ratio_alert: float = 0.5
    latency_ratio_alert: float = 1.10
    # Warning levels: half-way towards the alert criteria.
    amplitude_ratio_warning: float = 0.7
    latency_ratio_warning: float = 1.05
    # MEP only: "loss" is no response above this many µV peak to peak.
    loss_uv: float = 0.0
    single_trial: bool = False  # MEPs are judged per train, not averaged


_UPPER = {
    "cortical": (Component("N20", -1, 15.0, 25.0), Component("P25", +1, 20.0, 32.0)),
    "subcortical": (Component("N13", -1, 10.0, 16.0),),
    "peripheral": (Component("N9", -1, 7.0, 12.0),),
}
_LOWER = {
    "cortical": (Component("P37", +1, 30.0, 45.0), Component("N45", -1, 38.0, 55.0)),
    "subcortical": (Component("N34", -1, 27.0, 38.0),),
    "peripheral": (Component("PF", -1, 5.0, 12.0),),  # popliteal fossa
}

# Blanking: the artefact tail decays with tau ~0.4-1 ms from up to ~1.6 mV near the stimulated limb
# (Erb's point): 3 ms leaves ~1 µV there and nothing on the scalp, and every component starts later.
SSEP_UPPER = Modality("ssep-upper", (30.0, 1000.0), (0.5, 3.0), _UPPER,
                      {"cortical": ("N20", "P25")})
SSEP_LOWER = Modality("ssep-lower", (30.0, 1000.0), (0.5, 3.0), _LOWER,
                      {"cortical": ("P37", "N45")})
# MEP: a train of up to 9 pulses 1-4 ms apart (IONM-REFERENCE "TcMEP"); muscle responses start after
# ~15 ms (hand) to ~30 ms (leg), so blanking the train does not touch them. The stimulus time of an MEP
# sweep is the train's LAST pulse (as the simulator and most systems align them), so the blanking reaches
# back over the whole train (up to 8 gaps of 4 ms... the common 5 x 3 ms train needs 12 ms).
# -80 % is the MEP default (sensitivity 100 %, specificity 94.5 % in the meta-analysis quoted there).
# Onset latency is measured and reported but is not an MEP criterion unless configured (latency_ratio_alert).
# No high-pass: a polyphasic 1-2 mV response has a net area, and any high-pass inside a 100 ms window
# spreads it as a ~100 µV offset over the sweep; the offset is removed from the pre-train samples instead.
MEP = Modality("mep", (0.0, 3000.0), (13.0, 4.0), {}, {},
               amplitude_ratio_alert=0.2, latency_ratio_alert=float("inf"),
               amplitude_ratio_warning=0.5, latency_ratio_warning=float("inf"),
               loss_uv=50.0, single_trial=True)

_BY_NAME = {m.name: m for m in (SSEP_UPPER, SSEP_LOWER, MEP)}


def get(name: str, **overrides: object) -> Modality:
    """The defaults for a modality, with any field overridden (e.g. amplitude_ratio_alert=0.4)."""
    try:
        base = _BY_NAME[name]
    except KeyError:
        raise ValueError("unknown modality %r (expected one of %s)" % (name, ", ".join(MODALITIES))) from None
    return replace(base, **overrides) if overrides else base  # type: ignore[arg-type]


def site_of(channel_name: str, modality: str) -> str:
    """Recording site from a channel name: 'peripheral', 'subcortical' or 'cortical' (the default).

    Understands common montage labels: Erb's point (EP, Erb), popliteal fossa (PF, Pop), cervical (Cv, C5s,
    C2s, Cs) versus scalp (C3', CPz, Fz...)."""
    n = channel_name.lower().replace("'", "")
    if modality == "mep":
        return "muscle"
    if any(k in n for k in ("erb", "pf", "pop")) or n.startswith("ep"):
        return "peripheral"
    if any(k in n for k in ("cv", "c5s", "c2s", "cs5", "cs2", "cerv")):
        return "subcortical"
    return "cortical"


_MUSCLES = ("apb", "adm", "fdi", "ah", "ta", "tib", "gas", "quad", "vl", "med", "uln", "abd", "bic", "del")


def is_midline(channel_name: str) -> bool:
    """True for a derivation between midline 10-20 electrodes only (Cz'-Fpz): no side, but a known place."""
    electrodes = re.findall(r"[a-z]+[0-9]*", channel_name.split("(")[0].lower().replace("'", ""))
    return bool(electrodes) and all(re.fullmatch(r"(?:fp|af|f|fc|c|cp|p|po|o)z", e) for e in electrodes)


def monitored(stimulated: str | None, channel_names: list[str]) -> list[bool]:
    """Per channel: does it monitor a stimulus at `stimulated` (a site such as "L median", or None)? A channel
    on the other side of a one-sided stimulus records nothing of it (right Erb's point for the left median
    nerve): it is neither shown nor tracked, so nothing it picks up (another program's response, artefact) can
    raise an alert. Channels with no side (midline, cervical) and stimuli with no side (TcMEP) always count."""
    side = side_of(stimulated) if stimulated else None
    return [side is None or side_of(nm) in (None, side) for nm in channel_names]


def side_of(channel_name: str) -> str | None:
    """'left', 'right' or None from a channel name: L/R words or prefixes (L-APB, RTA, left tibial), else
    the 10-20 rule on the derivation's electrodes (odd numbers left, even right, z midline: C3'-Fz is left).
    The derivation is the text before any parenthesis, so that a component in a label ("Cz'-Fpz (tibial
    cortical P37)") is not read as electrode P37."""
    tokens = re.findall(r"[a-z0-9]+", channel_name.lower())
    for t in tokens:
        if t in ("l", "lt", "left") or (t[:1] == "l" and t[1:] in _MUSCLES):
            return "left"
        if t in ("r", "rt", "right") or (t[:1] == "r" and t[1:] in _MUSCLES):
            return "right"
    for t in re.findall(r"[a-z0-9]+", channel_name.split("(")[0].lower()):
        m = re.fullmatch(r"(?:fp|af|f|fc|c|cp|p|po|o|t|tp|ft)(\d+)", t)
        if m:
            return "left" if int(m.group(1)) % 2 == 1 else "right"
    return None
