"""Case store with the tamper-evident ledger: how much recording rate it sustains, against the live rate.

run(quick=False) -> dict. A live case writes ~20 sweeps/s (four SSEP sites at 4.7 Hz and TcMEP) plus an average
per stream every 10 s, measurements, alerts and audit rows. Every one of those rows now also gets a ledger entry
(a digest: SHA-256 over the row, the samples by their own SHA-256; a chained hash; an INSERT) and every commit
rewrites the anchor file. Reported, never asserted in tests (timing depends on the machine):

- ledger_us_per_sweep: the digest and link of one 16-channel sweep row alone (µs), best of PASSES;
- sweeps_per_s: sweeps (16 channels x 800 samples, as the virtual board's SSEP windows) written and committed
  through CaseStore, ledger and anchor included, with an average every 50 sweeps;
- headroom: sweeps_per_s / LIVE_SWEEPS_PER_S, the margin over a live case's rate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LIVE_SWEEPS_PER_S = 20.0
PASSES = 3


def run(quick: bool = False) -> dict[str, Any]:
    from ionm.case import ledger
    from ionm.case.store import CODEC, CaseStore, _pack
    from ionm.sweep import Sweep

    n = 300 if quick else 2000
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((16, 800)) * 5).astype(np.float32)
    blob = _pack(data)
    row = [1, "ssep-upper/L median", 7, 12.3456, 98765, time.time(), 16, "[null]", CODEC, blob]
    best = float("inf")
    for _ in range(PASSES):
        t0 = time.perf_counter()
        for k in range(1000):
            ledger.link("0" * 64, k, 1, "sweeps", k, ledger.digest("sweeps", row))
        best = min(best, (time.perf_counter() - t0) / 1000 * 1e6)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(PASSES):
            store = CaseStore(Path(tmp) / ("b%d.db" % p))
            cid = store.open_case()
            sw = Sweep(0.0, 0, "ssep", "L median", 8000.0, 200, tuple(range(16)), tuple("ch%d" % c for c in range(16)),
                       data)
            t0 = time.perf_counter()
            for k in range(n):
                store.add_sweep(cid, "ssep-upper/L median", k, Sweep(k * 0.2128, k, sw.modality, sw.source, sw.fs,
                                                                     sw.pre_samples, sw.channels, sw.channel_names,
                                                                     data), [None] * 16)
                if k % 50 == 49:
                    store.add_average(cid, "ssep-upper/L median", k * 0.2128, "periodic", [50.0] * 16, data)
            store.flush(timeout=600)
            rates.append(n / (time.perf_counter() - t0))
            ok = store.verify(cid)["ok"]
            store.close()
            assert ok
    rate = max(rates)
    return {"ledger_us_per_sweep": round(best, 1), "sweeps_per_s": round(rate, 1),
            "sweeps_per_s_passes": [round(r, 1) for r in rates], "headroom": round(rate / LIVE_SWEEPS_PER_S, 1),
            "summary": ["ledger digest+link per 16-ch sweep row: %.1f µs" % best,
                        "store with ledger and anchor: %.0f sweeps/s (passes %s) = %.0fx a live case's %g sweeps/s"
                        % (rate, ", ".join("%.0f" % r for r in rates), rate / LIVE_SWEEPS_PER_S, LIVE_SWEEPS_PER_S)]}
