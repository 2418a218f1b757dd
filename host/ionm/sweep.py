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


@dataclass(frozen=True)
class EmgBlock:
    """A block of continuous free-running EMG: what a free-run source yields and the console's EMG path consumes
    (ionm.console.freerun). Blocks of one source follow each other without gap or overlap."""

    t_s: float  # time of the first sample, seconds from case start, from the source's sample clock
    first_index: int  # sample index of the first sample (counted from the source's start)
    fs: float  # Hz
    channel_names: tuple[str, ...]
    data_uv: np.ndarray  # float32 [n_channels, n_samples], raw and unfiltered, µV
    stim_times_s: tuple[float, ...] = ()  # stimuli (case s) whose artefacts start in or just after this block
    evoked_times_s: tuple[float, ...] = ()  # of those, stimuli that evoke a muscle response (vagal)
    acquired_wall: float = 0.0  # host wall clock (time.time()) when the last sample was acquired

    @property
    def n(self) -> int:
        return int(self.data_uv.shape[1])


@dataclass(frozen=True)
class EegBlock:
    """A block of continuous EEG: what an EEG source yields and the console's EEG path consumes (ionm.console.eeg).
    Blocks of one source follow each other without gap or overlap."""

    t_s: float  # time of the first sample, seconds from case start, from the source's sample clock
    first_index: int  # sample index of the first sample (counted from the source's start)
    fs: float  # Hz
    channel_names: tuple[str, ...]  # bipolar 10-20 derivations ("F3-C3": odd numbers left, even right)
    data_uv: np.ndarray  # float32 [n_channels, n_samples], raw, µV
    acquired_wall: float = 0.0  # host wall clock (time.time()) when the last sample was acquired

    @property
    def n(self) -> int:
        return int(self.data_uv.shape[1])


@dataclass(frozen=True)
class BaepBlock:
    """Click-locked BAEP sweeps: what a BAEP source yields and the console's BAEP path consumes (ionm.console.baep)."""

    t_s: float  # time of the first sweep's click, seconds from case start
    first_sweep: int  # index of the first sweep (counted from the source's start)
    rate_hz: float  # click rate
    fs: float  # Hz, within a sweep
    pre_samples: int  # samples before the click in each sweep
    channel_names: tuple[str, ...]  # ipsilateral first (Cz-Ai), then contralateral (Cz-Ac)
    side: str  # the stimulated ear, "L" or "R"
    sweeps_uv: np.ndarray  # float32 [n_channels, n_sweeps, n_samples], µV
    acquired_wall: float = 0.0
