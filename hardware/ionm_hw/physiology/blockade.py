"""Neuromuscular blockade (a non-depolarising relaxant) and the train-of-four.

Scenario events {"type": "relaxant", "onset_s", "peak_concentration" (at the effect site, in multiples of the
concentration that occupies half the receptors; default 4, an intubating dose), "onset_to_peak_s" (default 120),
"recovery_tau_s" (default 1800)} give the concentration over time (a linear rise to the peak, then an
exponential fall; boluses add) and the receptor occupancy from it, a steep Hill curve (n = 4.5): with the
defaults the count stays 0 for about 17 min after the peak, is 4 again after about 24 min and T4/T1 is above 0.9
after about 35 min, as after rocuronium 0.6 mg/kg.

A muscle's response is depressed only above 75 % occupancy (the margin of safety of the neuromuscular
junction): the first twitch is (1 - occupancy) / 0.25 of its unblocked size. Repeated stimulation at 2 Hz fades:
the k-th response of a train loses c_k x s of the unblocked size, c = (0, 0.10, 0.20, 0.25) and s rising from 0 at
60 % occupancy to 1 at about 94 %, so that, as in the clinic, the fourth response disappears when the first is
depressed by 75 %, the third at 80 %, the second at 90 % (count 0-4), and T4/T1 falls before T1 does.
"""

from __future__ import annotations

import math
from typing import Any

FADE = (0.0, 0.10, 0.20, 0.25)
FADE_FROM = 0.6  # occupancy where fade begins
FADE_FULL = 0.9375  # occupancy where fade is complete (T1 at 25 %)
TRAIN_WINDOW_S = 1.6  # pulses on one output closer than this count as one train (TOF: 4 at 0.5 s)


HILL = 4.5


class Blockade:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.boluses = [(float(e["onset_s"]), float(e.get("peak_concentration", 4.0)),
                         float(e.get("onset_to_peak_s", 120.0)), float(e.get("recovery_tau_s", 1800.0)))
                        for e in events if e.get("type") == "relaxant"]  # fmt: skip

    def concentration(self, t_s: float) -> float:
        c = 0.0
        for on, peak, rise, tau in self.boluses:
            if t_s < on:
                continue
            c += peak * (t_s - on) / rise if t_s < on + rise else peak * math.exp(-(t_s - on - rise) / tau)
        return c

    def depth(self, t_s: float) -> float:
        """Receptor occupancy 0..1 at t_s."""
        c = self.concentration(t_s)
        return c**HILL / (c**HILL + 1.0) if c > 0 else 0.0


def twitch(depth: float, k: int = 1) -> float:
    """Size of the k-th response (1..4) of a train, as a fraction of the unblocked response."""
    h1 = min(1.0, max(0.0, (1.0 - depth) / 0.25))
    s = min(1.0, max(0.0, (depth - FADE_FROM) / (FADE_FULL - FADE_FROM)))
    return max(0.0, h1 - FADE[min(max(k, 1), 4) - 1] * s)


def tof(depth: float, present: float = 0.05) -> tuple[int, float]:
    """(count, T4/T1) a train-of-four gives at this occupancy (a response present above `present` of unblocked)."""
    h = [twitch(depth, k) for k in (1, 2, 3, 4)]
    count = sum(1 for x in h if x >= present)
    return count, (h[3] / h[0] if h[0] > 0 else 0.0)
