"""Train-of-four (issue 20 item 5): the count and T4/T1 from the four muscle responses of one TOF (4 pulses at
2 Hz from the board's `tof` program, at most one per 15 s), and whether muscle-based monitoring (MEP, EMG) can be
trusted at that depth of neuromuscular blockade.

A response is present when its peak to peak is at least `present_fraction` (5 %) of the reference (the unblocked
T1 taken before the relaxant, as a TOF-Watch is calibrated; without one, this train's own T1) and above the noise
floor. The count is the number present, in order from the first (T3 without T2 does not count: a twitch absent in
a fading train means the later ones are absent too; a later one present is noise). T4/T1 is given with count 4.
Below 2 the MEP and free-run EMG are unreliable (a response's absence may be the relaxant's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UNRELIABLE_BELOW = 2


@dataclass(frozen=True)
class TofResult:
    count: int  # 0..4
    ratio: float | None  # T4/T1, with count 4
    t1_fraction: float | None  # T1 over the reference (None without one)
    p2p_uv: tuple[float, float, float, float]

    @property
    def muscle_monitoring_reliable(self) -> bool:
        return self.count >= UNRELIABLE_BELOW


def evaluate(p2p_uv: Sequence[float], reference_t1_uv: float | None = None, *, present_fraction: float = 0.05,
             noise_uv: float = 50.0) -> TofResult:
    """The TOF's count and ratio from its four responses' peak to peak (µV)."""
    if len(p2p_uv) != 4:
        raise ValueError("a train-of-four has 4 responses, got %d" % len(p2p_uv))
    r = tuple(float(x) for x in p2p_uv)
    ref = reference_t1_uv if reference_t1_uv else r[0]
    floor = max(present_fraction * ref, noise_uv)
    count = 0
    for x in r:
        if x < floor:
            break
        count += 1
    return TofResult(count, r[3] / r[0] if count == 4 else None,
                     r[0] / reference_t1_uv if reference_t1_uv else None, (r[0], r[1], r[2], r[3]))


def responses(samples_uv: np.ndarray, pulse_indices: Sequence[int], fs_hz: float,
              window_ms: tuple[float, float] = (3.0, 15.0)) -> list[float]:
    """Peak to peak of one channel (µV, a 1-D array indexed by sample) in the window after each pulse: the
    M-wave after the stimulus artefact."""
    out = []
    for i in pulse_indices:
        a, b = int(i + window_ms[0] * fs_hz / 1000), int(i + window_ms[1] * fs_hz / 1000)
        out.append(float(np.ptp(samples_uv[a:b])))
    return out
