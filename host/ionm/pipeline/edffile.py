"""Continuous recordings in EDF, EDF+ or BDF (README, "Continuous recordings"): read and validate for
free-running EMG analysis (ionm.pipeline.emg).

Every ordinary signal is a channel: it needs a label (unique), one sample rate shared by all channels
(at least emg.MIN_FS_HZ) and a physical dimension of uV (µV), mV or V. EDF+ annotations whose text starts
with "stim" (any case: "stim", "Stimulus", "stim 12 mA") give stimulus times, measured from the start of
the recording; those starting with "stim vagal" are stimuli that evoke a muscle response on the channels
(continuous vagal stimulation and the vocalis CMAP, ionm.pipeline.rln): they are stimuli too, and their
times are also in vagal_times_s. The others are ignored. A file that does not meet this raises EdfFileError
with a message naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ionm.pipeline.emg import MIN_FS_HZ

UNITS_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6}
VAGAL_ANNOTATION = "stim vagal"
EDF_MAGIC = b"0       "
BDF_MAGIC = b"\xffBIOSEMI"


class EdfFileError(ValueError):
    """A recording that cannot be analysed; the message says what is wrong."""


@dataclass
class ContinuousRecording:
    fs: float
    samples_uv: np.ndarray  # [n_channels, n_samples], µV
    channel_names: list[str]
    stim_times_s: list[float]
    vagal_times_s: list[float] = field(default_factory=list)  # stimuli that evoke a response ("stim vagal")

    @property
    def duration_s(self) -> float:
        return self.samples_uv.shape[1] / self.fs


def _int_field(header: bytes, lo: int, hi: int, what: str) -> int:
    try:
        return int(header[lo:hi].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise EdfFileError("header field '%s' is not a number: %r" % (what, header[lo:hi])) from None


def _check_size(path: Path, raw: bytes, bytes_per_sample: int) -> None:
    """A file shorter than its header announces is truncated (edfio would read a partial record or fail
    obscurely)."""
    if len(raw) < 256:
        raise EdfFileError("truncated: %d bytes, shorter than the 256-byte EDF header" % len(raw))
    header_bytes = _int_field(raw, 184, 192, "number of bytes in header")
    n_records = _int_field(raw, 236, 244, "number of data records")
    n_signals = _int_field(raw, 252, 256, "number of signals")
    if len(raw) < header_bytes or header_bytes != 256 * (n_signals + 1):
        raise EdfFileError("truncated or malformed header: %d signals need %d header bytes, the file has %d"
                           % (n_signals, 256 * (n_signals + 1), min(len(raw), header_bytes)))
    base = 256 + n_signals * 216
    per_record = sum(_int_field(raw, base + 8 * i, base + 8 * i + 8, "samples per record of signal %d" % i)
                     for i in range(n_signals))
    expected = header_bytes + n_records * per_record * bytes_per_sample
    if n_records < 0:
        raise EdfFileError("the header gives no number of data records (-1: the recording was not closed)")
    if len(raw) < expected:
        raise EdfFileError("truncated: the header announces %d data records (%d bytes), the file holds %d bytes"
                           % (n_records, expected, len(raw)))


def load(path: str | Path) -> ContinuousRecording:
    import edfio

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EdfFileError("cannot read the file: %s" % (exc.strerror or exc)) from None
    if not raw:
        raise EdfFileError("the file is empty")
    if raw[:8] == EDF_MAGIC:
        bdf, bytes_per_sample = False, 2
    elif raw[:8] == BDF_MAGIC:
        bdf, bytes_per_sample = True, 3
    else:
        raise EdfFileError("not an EDF or BDF file (its first 8 bytes are %r, not '0       ' or '\\xffBIOSEMI')"
                           % raw[:8])
    _check_size(path, raw, bytes_per_sample)
    try:
        edf: edfio.Edf | edfio.Bdf = edfio.read_bdf(raw) if bdf else edfio.read_edf(raw)
        signals: list[edfio.EdfSignal | edfio.BdfSignal] = list(edf.signals)
        annotations: list[edfio.EdfAnnotation] = list(edf.annotations)
    except Exception as exc:  # edfio's errors are ValueError, IndexError, UnicodeDecodeError, ...
        raise EdfFileError("not a valid %s file: %s" % ("BDF" if bdf else "EDF", exc)) from None
    if not signals:
        raise EdfFileError("the file has no signals (only annotations)")
    if not edf.is_continuous:
        raise EdfFileError("the recording is discontinuous (EDF+D/BDF+D: its data records have gaps); "
                           "free-run EMG needs one continuous stretch")
    names: list[str] = []
    for i, sig in enumerate(signals):
        label = sig.label.strip()
        if not label:
            raise EdfFileError("signal %d has no label: every channel needs one (e.g. 'L orbicularis oris')" % i)
        if label in names:
            raise EdfFileError("two signals are labelled %r: labels must be unique" % label)
        names.append(label)
    rates = sorted({float(s.sampling_frequency) for s in signals})
    if len(rates) > 1:
        raise EdfFileError("channels have different sample rates (%s Hz): free-run EMG needs one rate"
                           % ", ".join("%g" % r for r in rates))
    fs = rates[0]
    if not fs >= MIN_FS_HZ:
        raise EdfFileError("sample rate %g Hz is too low: free-run EMG needs at least %g Hz (cautery is told "
                           "from discharges above 1.5 kHz)" % (fs, MIN_FS_HZ))
    scale = []
    for name, sig in zip(names, signals, strict=True):
        unit = sig.physical_dimension.strip().lower()
        if unit not in UNITS_TO_UV:
            raise EdfFileError("channel %r has physical dimension %r: expected uV, mV or V"
                               % (name, sig.physical_dimension))
        scale.append(UNITS_TO_UV[unit])
    data = np.stack([np.asarray(s.data, dtype=np.float64) * k for s, k in zip(signals, scale, strict=True)])
    if data.shape[1] == 0:
        raise EdfFileError("the file holds no samples")
    stims = sorted(float(a.onset) for a in annotations if a.text.strip().lower().startswith("stim"))
    vagal = sorted(float(a.onset) for a in annotations if a.text.strip().lower().startswith(VAGAL_ANNOTATION))
    return ContinuousRecording(fs, data, names, stims, vagal)


def save(path: str | Path, samples_uv: np.ndarray, fs: float, channel_names: list[str],
         stim_times_s: list[float] | None = None, *, bdf: bool = False, vagal_times_s: list[float] | None = None
         ) -> None:
    """Write a recording as EDF+ (16 bit) or BDF+ (24 bit): µV, stimulus times as 'stim' annotations (those in
    vagal_times_s as 'stim vagal')."""
    import edfio

    x = np.asarray(samples_uv, dtype=float)
    lim = float(np.max(np.abs(x))) * 1.01 + 1.0  # the physical range; resolution lim/2^15 (EDF) µV
    vagal = {round(float(t), 6) for t in (vagal_times_s or [])}
    annotations = [edfio.EdfAnnotation(float(t), None, VAGAL_ANNOTATION if round(float(t), 6) in vagal else "stim")
                   for t in sorted(set(stim_times_s or []) | set(vagal_times_s or []))]
    if bdf:
        bdf_signals = [edfio.BdfSignal(x[i], fs, label=name, physical_dimension="uV", physical_range=(-lim, lim))
                       for i, name in enumerate(channel_names)]
        edfio.Bdf(bdf_signals, annotations=annotations).write(path)
    else:
        edf_signals = [edfio.EdfSignal(x[i], fs, label=name, physical_dimension="uV", physical_range=(-lim, lim))
                       for i, name in enumerate(channel_names)]
        edfio.Edf(edf_signals, annotations=annotations).write(path)
