"""Electrode montage: what each amplifier channel records, where it sits, and its background noise.

Default 16-channel montage (a scenario may replace it with its own "montage" list):

  ch  derivation      what it is for
  0   C3'-Fz          R median cortical N20/P25 (hemisphere contralateral to the right arm)
  1   C4'-Fz          L median cortical N20/P25
  2   CPz-CP4         L tibial cortical P37/N45 (CPz–CPc: ~2x the SNR of CPz–Fpz, MacDonald 2005;
                      the P37 is paradoxically ipsilateral, so the contralateral CP is the reference)
  3   CPz-CP3         R tibial cortical P37/N45
  4   Cv5-Fz          cervical N13 (both arms)
  5   EpL-Fz          L Erb's point N9
  6   EpR-Fz          R Erb's point N9
  7   PFLp-PFLd       L popliteal fossa (tibial nerve action potential)
  8   PFRp-PFRd       R popliteal fossa
  9   APBL1-APBL2     L abductor pollicis brevis: TcMEP; thenar M-wave on L median stimulation
  10  APBR1-APBR2     R abductor pollicis brevis
  11  AHL1-AHL2       L abductor hallucis: TcMEP; M-wave on L tibial stimulation
  12  AHR1-AHR2       R abductor hallucis
  13  TAL1-TAL2       L tibialis anterior: TcMEP
  14  TAR1-TAR2       R tibialis anterior
  15  Cz'-Fpz         tibial cortical P37, both sides (the standard derivation: backup and EEG)

Procedure montages (PROCEDURE_MONTAGES, a scenario's "montage" by name, `ionm console --montage`): "default" above,
and "carotid" (CAROTID_MONTAGE): channels 0-7 the median cortical, cervical, both Erb's, the tibial Cz'-Fpz and both
APBs, channels 8-15 the EEG derivations F3-C3, C3-P3, P3-O1, T3-C3, F4-C4, C4-P4, P4-O2, T4-C4 (kind "eeg"), which
record the scenario's "eeg" (physiology/eeg.py) instead of the generic background; and "posterior_fossa"
(POSTERIOR_FOSSA_MONTAGE): channels 0-13 the default's but the tibialis anteriors, 14-15 the BAEP's Cz-A1 and Cz-A2
(kind "baep"), which record the scenario's "baep" (physiology/baep.py) on every click of the earphones.

A channel is named "derivation (label)", e.g. "C3'-Fz (R median cortical N20)". Its electrodes are the
two sides of the derivation; an electrode that comes off affects every channel that uses it (Fz!).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MONTAGE: list[dict[str, str]] = [
    {"derivation": "C3'-Fz", "label": "R median cortical N20", "kind": "scalp", "modality": "ssep-upper"},
    {"derivation": "C4'-Fz", "label": "L median cortical N20", "kind": "scalp", "modality": "ssep-upper"},
    {"derivation": "CPz-CP4", "label": "L tibial cortical P37", "kind": "scalp", "modality": "ssep-lower"},
    {"derivation": "CPz-CP3", "label": "R tibial cortical P37", "kind": "scalp", "modality": "ssep-lower"},
    {"derivation": "Cv5-Fz", "label": "cervical N13", "kind": "spine", "modality": "ssep-upper"},
    {"derivation": "EpL-Fz", "label": "L Erb's point N9", "kind": "nerve", "modality": "ssep-upper"},
    {"derivation": "EpR-Fz", "label": "R Erb's point N9", "kind": "nerve", "modality": "ssep-upper"},
    {"derivation": "PFLp-PFLd", "label": "L popliteal fossa", "kind": "nerve", "modality": "ssep-lower"},
    {"derivation": "PFRp-PFRd", "label": "R popliteal fossa", "kind": "nerve", "modality": "ssep-lower"},
    {"derivation": "APBL1-APBL2", "label": "L APB", "kind": "muscle", "modality": "mep"},
    {"derivation": "APBR1-APBR2", "label": "R APB", "kind": "muscle", "modality": "mep"},
    {"derivation": "AHL1-AHL2", "label": "L abductor hallucis", "kind": "muscle", "modality": "mep"},
    {"derivation": "AHR1-AHR2", "label": "R abductor hallucis", "kind": "muscle", "modality": "mep"},
    {"derivation": "TAL1-TAL2", "label": "L tibialis anterior", "kind": "muscle", "modality": "mep"},
    {"derivation": "TAR1-TAR2", "label": "R tibialis anterior", "kind": "muscle", "modality": "mep"},
    {"derivation": "Cz'-Fpz", "label": "tibial cortical P37, both sides", "kind": "scalp", "modality": "ssep-lower"},
]

# Carotid endarterectomy (and other vascular cases): EEG over both hemispheres for ischaemia at clamping, with the
# upper-limb SSEPs (the median cortical N20 falls with the same ischaemia), one tibial cortical channel and the hand
# muscles for TcMEP on demand. The 8 EEG derivations are those hardware/scenarios/eeg renders (physiology/eeg.py):
# their signal comes from the scenario's "eeg", not from the generic background.
EEG_DERIVATIONS = ("F3-C3", "C3-P3", "P3-O1", "T3-C3", "F4-C4", "C4-P4", "P4-O2", "T4-C4")
CAROTID_MONTAGE: list[dict[str, str]] = [
    *DEFAULT_MONTAGE[:2], DEFAULT_MONTAGE[4], DEFAULT_MONTAGE[5], DEFAULT_MONTAGE[6], DEFAULT_MONTAGE[15],
    DEFAULT_MONTAGE[9], DEFAULT_MONTAGE[10],
    *({"derivation": d, "label": "EEG %s" % ("left" if int(d[-1]) % 2 else "right"), "kind": "eeg", "modality": "eeg"}
      for d in EEG_DERIVATIONS),
]
# Posterior fossa (microvascular decompression, cerebellopontine-angle tumours): the BAEP from the vertex to each
# ear's mastoid (Cz-A1, Cz-A2; the stimulated ear's is the ipsilateral derivation, kind "baep", recording the
# scenario's "baep" when the earphones click), with the upper- and lower-limb SSEPs and hand and foot TcMEPs.
POSTERIOR_FOSSA_MONTAGE: list[dict[str, str]] = [
    *DEFAULT_MONTAGE[:13], DEFAULT_MONTAGE[15],
    {"derivation": "Cz-A1", "label": "BAEP left mastoid", "kind": "baep", "modality": "baep"},
    {"derivation": "Cz-A2", "label": "BAEP right mastoid", "kind": "baep", "modality": "baep"},
]
PROCEDURE_MONTAGES = {"default": DEFAULT_MONTAGE, "carotid": CAROTID_MONTAGE,
                      "posterior_fossa": POSTERIOR_FOSSA_MONTAGE}

SCALP_ELECTRODES = {"C3'", "C4'", "Cz'", "CPz", "CP3", "CP4", "Fz", "Fpz", "Cz", "C3", "C4", "Fp1", "Fp2"}

# Body region of each electrode: decides how much stimulus artefact a channel sees from each output.
ELECTRODE_REGION = {
    **{e: "head" for e in SCALP_ELECTRODES},
    "Cv5": "neck", "Cv2": "neck",
    "EpL": "arm_L", "EpR": "arm_R",
    "PFLp": "leg_L", "PFLd": "leg_L", "PFRp": "leg_R", "PFRd": "leg_R",
    "APBL1": "arm_L", "APBL2": "arm_L", "APBR1": "arm_R", "APBR2": "arm_R",
    "AHL1": "leg_L", "AHL2": "leg_L", "AHR1": "leg_R", "AHR2": "leg_R",
    "TAL1": "leg_L", "TAL2": "leg_L", "TAR1": "leg_R", "TAR2": "leg_R",
    # muscles of the lumbar and thoracic myotomes (triggered EMG, physiology/screws.py)
    **{f"{m}{side}{k}": ("trunk" if m == "RA" else f"leg_{side}") for m in ("VM", "EHL", "GAS", "RA")
       for side in "LR" for k in (1, 2)},
}  # fmt: skip

# Background rms per kind, µV (lo, hi; the patient draws within): EEG-like 1/f, EMG band, white floor.
# Scalp EEG of a few µV rms under anaesthesia; spontaneous EMG low but present (partial relaxation).
EEG_UV = (3.5, 7.0)
EMG_UV = {"eeg": (0.3, 1.0), "baep": (0.3, 1.0), "scalp": (0.3, 1.0), "spine": (1.0, 3.0), "nerve": (0.5, 1.5),
          "muscle": (3.0, 10.0)}
FLOOR_UV = (0.2, 0.4)  # electrode thermal noise (the amplifier adds its own)


@dataclass(frozen=True)
class Channel:
    index: int
    derivation: str
    label: str
    kind: str  # scalp | spine | nerve | muscle | eeg (a 10-20 EEG derivation: its EEG is the scenario's "eeg") |
    # baep (vertex to a mastoid: the BAEP when the earphones click)
    modality: str  # the evaluate modality the channel serves (ssep-upper, ssep-lower, mep, eeg)
    electrodes: tuple[str, str]
    region: str

    @property
    def name(self) -> str:
        return f"{self.derivation} ({self.label})"


def build(entries: list[dict[str, Any]] | str | None, n_channels: int) -> list[Channel]:
    """The montage for n_channels: the given (or default, or named procedure) entries, truncated or padded with
    spare EEG."""
    if isinstance(entries, str):
        if entries not in PROCEDURE_MONTAGES:
            raise ValueError(f"no procedure montage {entries!r}; available: {', '.join(PROCEDURE_MONTAGES)}")
        entries = PROCEDURE_MONTAGES[entries]
    entries = list(entries if entries is not None else DEFAULT_MONTAGE)[:n_channels]
    while len(entries) < n_channels:
        entries.append({"derivation": f"X{len(entries)}-Fz", "label": "spare", "kind": "scalp", "modality": "eeg"})
    out = []
    for i, e in enumerate(entries):
        parts = str(e["derivation"]).split("-")
        if len(parts) != 2:
            raise ValueError(f"montage channel {i}: derivation must be 'active-reference', got {e['derivation']!r}")
        kind = str(e.get("kind", "scalp"))
        if kind not in EMG_UV:
            raise ValueError(f"montage channel {i}: kind must be one of {sorted(EMG_UV)}")
        region = str(e.get("region", ELECTRODE_REGION.get(parts[0],
                                                          "head" if kind in ("scalp", "eeg", "baep") else "trunk")))
        out.append(
            Channel(i, str(e["derivation"]), str(e.get("label", "")), kind, str(e.get("modality", "eeg")),
                    (parts[0], parts[1]), region)
        )  # fmt: skip
    return out


def noise_levels(channels: list[Channel], g: np.random.Generator,
                 scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:  # fmt: skip
    """(n_channels, 3) µV rms of EEG, EMG and floor per channel, drawn for this patient (times `scale`).

    EEG enters through every scalp electrode of the derivation (Erb's–Fz carries Fz's EEG), and is
    absent from bipolar limb derivations.
    """
    out = np.zeros((len(channels), 3))
    for ch in channels:
        n_scalp = sum(e in SCALP_ELECTRODES for e in ch.electrodes)
        eeg = g.uniform(*EEG_UV) * (1.0 if n_scalp == 2 else 0.6 if n_scalp == 1 else 0.0)
        if ch.kind == "eeg":
            eeg = 0.0  # the scenario's EEG model supplies it (the draw above is kept: the others' stay as they were)
        out[ch.index] = np.array((eeg, g.uniform(*EMG_UV[ch.kind]), g.uniform(*FLOOR_UV))) * scale
    return out
