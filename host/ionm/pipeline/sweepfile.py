"""The sweep-file interchange format (.npz): read, validate, write.

Keys (docs/EVALUATION.md, "Sweep files"):
  fs              Hz, scalar
  pre_samples     samples before the stimulus in each sweep, integer scalar
  sweeps          µV, raw (unfiltered), [n_sweeps, n_samples] or [n_sweeps, n_channels, n_samples]
  stim_time_s     seconds from case start of each sweep's stimulus, [n_sweeps], non-decreasing
  modality        'ssep-upper', 'ssep-lower' or 'mep' (str, or a 0-d / 1-element string or bytes array)
  baseline_end_s  the recording up to this time is the stable baseline, scalar
  channel_names   optional, [n_channels] strings
  stimulated      optional, the stimulated site (e.g. 'L median'): channels on the other side of a one-sided
                  stimulus are not monitored (modalities.monitored)
Any numeric dtype is accepted (float32 is the native one). Files are read with allow_pickle=False.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ionm.pipeline.modalities import MODALITIES

REQUIRED = ("fs", "pre_samples", "sweeps", "stim_time_s", "modality", "baseline_end_s")


class SweepFileError(ValueError):
    """A sweep file that cannot be evaluated; the message names the key at fault."""


@dataclass
class SweepFile:
    fs: float
    pre_samples: int
    sweeps: np.ndarray  # [n_sweeps, n_channels, n_samples], float32 or float64 as stored
    stim_time_s: np.ndarray  # float64 [n_sweeps]
    modality: str
    baseline_end_s: float
    channel_names: list[str]
    stimulated: str | None = None

    @property
    def n_sweeps(self) -> int:
        return int(self.sweeps.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.sweeps.shape[1])

    @property
    def n_samples(self) -> int:
        return int(self.sweeps.shape[2])

    def until(self, t_s: float) -> SweepFile:
        """The recording cut after time t_s (sweeps whose stimulus is at or before it)."""
        keep = self.stim_time_s <= t_s
        return SweepFile(self.fs, self.pre_samples, self.sweeps[keep], self.stim_time_s[keep], self.modality,
                         self.baseline_end_s, self.channel_names, self.stimulated)


def _scalar(d: Mapping[str, Any], key: str) -> float:
    v = np.asarray(d[key])
    if v.size != 1 or v.dtype.kind not in "iufb":
        raise SweepFileError("key '%s' must be a single number, got %s of shape %s" % (key, v.dtype, v.shape))
    x = float(v.reshape(()))
    if not np.isfinite(x):
        raise SweepFileError("key '%s' is not finite (%r)" % (key, x))
    return x


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def from_mapping(d: Mapping[str, Any]) -> SweepFile:
    """Validate a mapping of the interchange keys (an NpzFile, or the dict a simulator returns)."""
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise SweepFileError("missing key%s: %s (a sweep file needs %s)" % (
            "s" if len(missing) > 1 else "", ", ".join("'%s'" % k for k in missing), ", ".join(REQUIRED)))
    fs = _scalar(d, "fs")
    if fs <= 0:
        raise SweepFileError("key 'fs' must be positive (Hz), got %g" % fs)
    sweeps = np.asarray(d["sweeps"])
    if sweeps.dtype.kind not in "iuf":
        raise SweepFileError("key 'sweeps' must be numeric (µV), got dtype %s" % sweeps.dtype)
    if sweeps.ndim == 2:
        sweeps = sweeps[:, None, :]
    if sweeps.ndim != 3:
        raise SweepFileError("key 'sweeps' must be [n_sweeps, n_samples] or [n_sweeps, n_channels, n_samples], "
                             "got shape %s" % (sweeps.shape,))
    if sweeps.dtype.kind in "iu":
        sweeps = sweeps.astype(np.float64)
    n_sweeps, n_channels, n_samples = sweeps.shape
    if n_channels == 0 or n_samples < 8:
        raise SweepFileError("key 'sweeps' has shape %s: no channels or fewer than 8 samples" % (sweeps.shape,))
    pre = _scalar(d, "pre_samples")
    if pre != int(pre) or not 0 <= pre < n_samples:
        raise SweepFileError("key 'pre_samples' must be an integer in [0, %d), got %g" % (n_samples, pre))
    stim = np.asarray(d["stim_time_s"])
    if stim.dtype.kind not in "iuf" or stim.ndim != 1 or len(stim) != n_sweeps:
        raise SweepFileError("key 'stim_time_s' must be %d numbers (one per sweep), got %s of shape %s"
                             % (n_sweeps, stim.dtype, stim.shape))
    stim = stim.astype(np.float64)
    if not np.all(np.isfinite(stim)) or np.any(np.diff(stim) < 0):
        raise SweepFileError("key 'stim_time_s' must be finite and non-decreasing")
    mod = np.asarray(d["modality"])
    if mod.size != 1 or mod.dtype.kind not in "USO":
        raise SweepFileError("key 'modality' must be one string (%s), got %s of shape %s"
                             % (", ".join(MODALITIES), mod.dtype, mod.shape))
    modality = _text(mod.reshape(()).item()).strip().lower()
    if modality not in MODALITIES:
        raise SweepFileError("key 'modality' is %r; expected one of %s" % (modality, ", ".join(MODALITIES)))
    baseline_end = _scalar(d, "baseline_end_s")
    names = ["ch%d" % c for c in range(n_channels)]
    if "channel_names" in d:
        cn = np.asarray(d["channel_names"])
        if cn.dtype.kind not in "USO" or cn.size != n_channels:
            raise SweepFileError("key 'channel_names' must be %d strings, got %s of shape %s"
                                 % (n_channels, cn.dtype, cn.shape))
        names = [_text(v) for v in cn.reshape(-1).tolist()]
    stimulated = None
    if "stimulated" in d:
        sv = np.asarray(d["stimulated"])
        if sv.size != 1 or sv.dtype.kind not in "USO":
            raise SweepFileError("key 'stimulated' must be one string (the stimulated site, e.g. 'L median'), "
                                 "got %s of shape %s" % (sv.dtype, sv.shape))
        stimulated = _text(sv.reshape(()).item()).strip() or None
    return SweepFile(fs, int(pre), sweeps, stim, modality, baseline_end, names, stimulated)


def load(path: str | Path) -> SweepFile:
    """Read and validate a sweep file; SweepFileError names what is wrong."""
    try:
        obj = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SweepFileError("no such file: %s" % path) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SweepFileError("cannot read %s as a NumPy .npz file: %s" % (path, exc)) from None
    if not hasattr(obj, "files"):
        raise SweepFileError("%s is a single .npy array, not an .npz archive of named keys" % path)
    data: dict[str, Any] = {}
    with obj:
        for key in obj.files:
            try:
                data[key] = obj[key]
            except ValueError as exc:  # object arrays (pickles) are refused
                raise SweepFileError("key '%s' cannot be read without pickle: %s" % (key, exc)) from None
    return from_mapping(data)


def save(path: str | Path, sf: SweepFile | Mapping[str, Any]) -> None:
    """Write the interchange keys (extra keys of a mapping, such as a simulator's 'truth', are left out)."""
    if isinstance(sf, SweepFile):
        d: dict[str, Any] = {"fs": np.float64(sf.fs), "pre_samples": np.int64(sf.pre_samples),
                             "sweeps": np.asarray(sf.sweeps, dtype=np.float32), "stim_time_s": sf.stim_time_s,
                             "modality": np.array(sf.modality), "baseline_end_s": np.float64(sf.baseline_end_s),
                             "channel_names": np.array(sf.channel_names)}
        if sf.stimulated:
            d["stimulated"] = np.array(sf.stimulated)
    else:
        d = {k: sf[k] for k in (*REQUIRED, "channel_names", "stimulated") if k in sf}
    np.savez(path, **d)
