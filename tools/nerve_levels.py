"""Levels of one nerve held near the SSEP criterion: how often the evaluator alerts each level, with and without
corroboration (ionm.pipeline.alerts, module docstring "Corroboration"). docs/EVALUATION.md quotes it.

Each case is the right median nerve recorded at three levels (ionm.pipeline.synthetic.make_ssep): a cortical
N20 at -18 dB and a cervical N13 at -20 dB per sweep (baselines known to about +-8 % and +-10 %, as on the virtual
patient's default montage) and a precise Erb's point N9 at 0 dB. Baseline 90 s, then every level declines from
150 s to 270 s to its held level, until --duration. A --levels argument is "cortical,cervical,erb". Per level
set, per channel: the share of seeds alerted, and the median time of the first alert; with corroboration (as
the evaluator runs) and without it (SsepAlerts._corroborated disabled).

    .venv/bin/python tools/nerve_levels.py --levels 0.45,0.45,0.45 0.62,0.62,0.3 --seeds 8
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ionm.pipeline.alerts import SsepAlerts
from ionm.pipeline.evaluator import Evaluator
from ionm.pipeline.synthetic import make_ssep

NAMES = ["C3'-Fz (R median cortical N20)", "Cv5-Fz (cervical N13)", "EpR-Fz (R Erb's point N9)"]
SNR_DB = np.array([-18.0, -20.0, 0.0])


@contextmanager
def _without_corroboration() -> Iterator[None]:
    real = SsepAlerts._corroborated

    def never(self: SsepAlerts, est: Any, tracked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.names)
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=int)

    SsepAlerts._corroborated = never  # type: ignore[method-assign]
    try:
        yield
    finally:
        SsepAlerts._corroborated = real  # type: ignore[method-assign]


def _first_alerts(levels: list[float], seed: int, duration_s: float) -> list[float | None]:
    def amp(t: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(t, [150.0, 270.0], [1.0, lv]) for lv in levels], 1)

    d = make_ssep(int(duration_s * 4.7), seed=seed, snr_db=SNR_DB, n_channels=3, amplitude=amp,
                  baseline_end_s=90.0, channel_names=NAMES)
    sw = d["sweeps"]
    ev = Evaluator(float(d["fs"]), int(d["pre_samples"]), sw.shape[-1], str(d["modality"]), NAMES,
                   float(d["baseline_end_s"]))
    for i in range(len(sw)):
        ev.process(sw[i], float(d["stim_time_s"][i]))
    return [next((a.t_s for a in ev.alerts if a.channel == c), None) for c in range(3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", nargs="+", default=["0.45,0.45,0.45", "0.62,0.62,0.3"],
                    help="held levels cortical,cervical,erb (ratios)")
    ap.add_argument("--seeds", type=int, default=8, help="cases per level set (seeds from --seed)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=600.0, help="case length, s")
    a = ap.parse_args()
    print("levels (cortical, cervical, erb) | rule | alerted: cortical, cervical, erb (median first alert, s)")
    for spec in a.levels:
        levels = [float(v) for v in spec.split(",")]
        for label in ("corroborated", "without"):
            firsts = []
            for seed in range(a.seed, a.seed + a.seeds):
                if label == "without":
                    with _without_corroboration():
                        firsts.append(_first_alerts(levels, seed, a.duration))
                else:
                    firsts.append(_first_alerts(levels, seed, a.duration))
            cells = []
            for c in range(3):
                t = [v for f in firsts if (v := f[c]) is not None]
                med = "%.0f" % np.median(t) if t else "-"
                cells.append("%d/%d (%s)" % (len(t), len(firsts), med))
            print("%s | %s | %s" % (spec, label, ", ".join(cells)), flush=True)


if __name__ == "__main__":
    main()
