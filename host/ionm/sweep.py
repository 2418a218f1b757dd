"""One stimulus-locked sweep: what every sweep source yields and what the pipeline, the case store and
the console consume. Sources: the live board (ionm.board.acquire), and scenario recordings (ionm_hw.sweeps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sweep:
    t_s: float  # stimulus time, seconds from case start, from the board's sample clock (never host time)
    stim_index: int  # board sample index at which the stimulus was delivered (latched by the board)
    modality: str  # "ssep-upper" | "ssep-lower" | "mep"
    source: str  # what was stimulated, e.g. "L median", "R tibial", "TcMEP"
    fs: float  # Hz
    pre_samples: int  # samples before the stimulus
    channels: tuple[int, ...]  # board channel numbers
    channel_names: tuple[str, ...]
    data_uv: np.ndarray  # float32 [n_channels, n_samples], raw and unfiltered, µV
