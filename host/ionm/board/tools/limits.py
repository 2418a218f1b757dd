"""Pass/fail limits of the bench checks and of the calibration's verification pass: hardware/board.json
`bench_limits`, the single source of truth like every other limit. What each one means:

- amplitude_accuracy_pct: |measured / applied − 1| per channel at every PGA gain, board calibration applied
  (generator sine through the divider, 10 Hz, 2 kSPS); includes the generator's and the divider's accuracy.
- channel_match_pct: |channel / median of the channels − 1|, one capture at gain 24, independent of the
  generator's level; two channels each within the ADS1299's maximum gain error (±0.5 %) can differ by 1 %.
- noise_rate_hz, noise_uvrms_max, noise_uvrms_min: shorted inputs at gain 24 (ADS1299 typ. 0.41 µVrms at
  2 kSPS, datasheet Table 1); a channel far below the amplifier's own floor is not converting.
- frequency_response_rate_hz, upper_3db_hz_min, flat_band_hz, flatness_db: the ADS1299's sinc³ filter is
  −3 dB at 0.262 × rate (2096 Hz at 8 kSPS).
- mains_sweeps, mains_rejection_db_min: 50/60 Hz at the input, stimulus-locked averaging of mains_sweeps
  sweeps at 4.7 Hz, against a single sweep (a rate that divides mains would give 0 dB).
- timing_tolerance_samples: onset of a generator burst triggered by the board's trigger output, against
  the stimulus index.
- averaging_slope: log(rms of an N-sweep average) against log(N); −0.5 for independent noise.
- stimulator_accuracy_pct: |current-sense readback − request| / request, every output, 5/10/20 mA.
- calibration_verify: ionm calibrate's verification pass after the new calibration is applied.
"""

from __future__ import annotations

from typing import Any

from ionm import board


def bench_limits(defn: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """(limits, source): board.json `bench_limits`."""
    d = defn or board.load()
    if "bench_limits" not in d:
        raise KeyError("the board definition has no bench_limits section: the bench has nothing to check against")
    return dict(d["bench_limits"]), "board.json bench_limits"
