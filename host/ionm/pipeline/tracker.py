"""The fast change tracker: a template fit on every sweep, pooled per response, a Kalman state, and a sequential
change test.

Model (docs/EVALUATION.md has the derivation and assumptions): a conditioned sweep's post-stimulus part is
    x(t) = a * T(t / s) + noise,
with T the channel's baseline average (the template, low-passed where that lowers the variance of the fit), a the
amplitude ratio and s the latency ratio against baseline (a stretch about the stimulus), and noise stationary and
Gaussian with a Toeplitz covariance C estimated from the baseline residuals.

Per sweep, for a grid of s, the generalised-least-squares amplitude y(s) = T_s' C^-1 x / (g T_s' C^-1 T_s) (a bank
of matched filters; g calibrates y to 1 for the baseline response). Channels that record the same response (same
site, same side or the midline) are pooled: each channel's decisions use the inverse-variance combination of its
pool's y. Two consumers:
- a Kalman filter of a for every s on the grid, s itself a hidden Markov chain (GridKalman): smooth estimates of
  (a, s) with their standard deviations, for display and per-trial output;
- a sequential test for decisions (WindowTest): for windows of the last n accepted sweeps (16 to 1024), the
  window's estimate, and its change from the sweeps before it (references of 128 to 1024 sweeps, or everything
  since the baseline), each measured at the latency the reference had.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from ionm.pipeline.modalities import is_midline, side_of

S_GRID = np.round(np.arange(0.80, 1.5001, 0.01), 4)  # latency ratios searched (stretch about the stimulus)
I1 = int(np.argmin(np.abs(S_GRID - 1.0)))
WINDOW_LENGTHS = np.array([16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024])
# References: the m accepted sweeps before a window; 0 stands for everything since the last restart (and the
# baseline itself while no restart happened).
REFERENCE_LENGTHS = np.array([128, 256, 512, 1024, 0])
# Template low-pass cut-offs tried at baseline (None: the conditioned band). A cortical SEP has little above
# 200 Hz, while the template's noise fills the band: the cut-off that minimises the predicted variance of the
# per-sweep amplitude is kept (it is often 100-300 Hz on the scalp, none on a nerve).
TEMPLATE_CUTOFFS_HZ: tuple[float | None, ...] = (None, 500.0, 300.0, 200.0, 150.0, 100.0)
# A channel is tracked when its baseline response is present at 3 standard errors: its level (amplitude ratio 1)
# is known to 1/3 or better.
MAX_BASELINE_SE = 1.0 / 3.0
# Nerve action potentials (Erb's point N9, popliteal fossa) are sharp: ~0.8 ms wide at half height (~1.1 ms once
# averaged with 0.3 ms of jitter), the spinal N13 ~2 ms, cortical components 3-7 ms. A latency move of a fraction of a
# millisecond, trial-to-trial jitter averaged over a window or a slow wander short of the latency criterion, then
# costs a fit at the old latency most of the response: the baseline response measured 0.2 ms (2 % of 9.7 ms) off its
# latency reads 0.88, 0.4 ms off 0.58 and 0.6 ms off ~0 (the fit is whitened by the noise covariance, which weighs the
# peak's edges). Measured where the reference's response was, such a response reads as an acute amplitude drop of tens
# of standard errors (its per-sweep SNR is high), which turned the latency test into "one 16-sweep window beyond 110
# %" and raised latency alerts at a true +9 % (tests/test_narrow_peripheral.py).
NARROW_PEAK_MS = 2.5  # a template whose main peak is at most this wide at half height is sharp (not cortical)
# Their change test may measure the window at its best latency within this move of the reference's (in test-grid
# steps at the peak's latency), so that a response that moved by less than that and kept its amplitude is not
# read as smaller. Wider responses are measured exactly where the reference's response was: one that shrinks and
# moves reads as a larger change there.
LATENCY_TOLERANCE_MS = 0.8
# Never as far as the latency criterion (110 %): a response that moved that far is the latency test's.
MAX_TOLERANCE_RATIO = 0.08


# A sweep weighs less when its noise exceeds the baseline sweeps' by more than this many of their own robust SDs
# (Tracker._noise_scale). Gaussian noise on ~125 fit samples scatters by a relative SD of ~0.13 (chi-square); the
# virtual patient's sweeps by 0.15-0.18, so 1.45-1.55 times the baseline's noise variance. Below it the difference
# is chance, and down-weighting it would only cost sensitivity.
NOISE_ALLOWANCE_SD = 3.0


def decimation_for(fs: float, hi_hz: float) -> int:
    """Keep at least 2.5x the band's upper edge: the tracker does not need 16 kSPS for a 1 kHz band."""
    return max(1, int(fs // (2.5 * hi_hz)))


# -- Toeplitz algebra without dense factorisations ----------------------------------------------------------------
# A dense Cholesky of each channel's covariance cost ~60 ms per channel when the BLAS threads compete with other
# work; Levinson-Durbin plus the Gohberg-Semencul formula costs O(n^2) once and O(n log n) per right-hand side.

def toeplitz_inverse_column(acov: np.ndarray) -> np.ndarray:
    """First column of the inverse of the symmetric positive-definite Toeplitz matrices with first rows acov
    [..., n] (Levinson-Durbin, vectorised over the leading axes)."""
    r = np.asarray(acov, dtype=np.float64)
    n = r.shape[-1]
    a = np.zeros(r.shape)
    a[..., 0] = 1.0
    e = r[..., 0].copy()
    for k in range(1, n):
        acc = r[..., k] + np.einsum("...j,...j->...", a[..., 1:k], r[..., k - 1:0:-1])
        lam = -acc / e
        prev = a[..., 1:k].copy()
        a[..., 1:k] += lam[..., None] * prev[..., ::-1]
        a[..., k] = lam
        e = e * (1.0 - lam**2)
    return np.asarray(a / e[..., None])


class ToeplitzSolver:
    """C^-1 b for the Toeplitz matrix C with first row acov [n], b [..., n] (Gohberg-Semencul: C^-1 =
    (L(x) L(x)' - L(Zx~) L(Zx~)') / x0, with x the inverse's first column and L lower-triangular Toeplitz,
    each product a convolution done by FFT)."""

    def __init__(self, acov: np.ndarray):
        x = toeplitz_inverse_column(acov)
        self.column = x  # the first column of C^-1
        self.n = len(x)
        self.nf = 1 << int(np.ceil(np.log2(2 * self.n)))
        self.x0 = float(x[0])
        self.f1 = np.fft.rfft(x, self.nf)
        self.f2 = np.fft.rfft(np.concatenate([[0.0], x[:0:-1]]), self.nf)

    def _low(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.fft.irfft(f * np.fft.rfft(y, self.nf), self.nf)[..., : self.n]

    def _low_t(self, f: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._low(f, y[..., ::-1])[..., ::-1]  # a Toeplitz matrix is persymmetric: L' = J L J

    def __call__(self, b: np.ndarray) -> np.ndarray:
        yb = np.asarray(b, dtype=np.float64)
        return np.asarray((self._low(self.f1, self._low_t(self.f1, yb))
                           - self._low(self.f2, self._low_t(self.f2, yb))) / self.x0)

    def quadratic(self, b: np.ndarray) -> np.ndarray:
        """b' C^-1 b for b [..., n] (see NoiseForms)."""
        return NoiseForms(self.column[None])(np.asarray(b, dtype=np.float64)[..., None, :])[..., 0]


class NoiseForms:
    """b_c' C_c^-1 b_c for channels c with Toeplitz covariances C_c, given the first columns x_c of their inverses
    [ch, n] (Gohberg-Semencul, as ToeplitzSolver: b' C^-1 b = (|L(x)' b|^2 - |L(Zx~)' b|^2) / x0, and since a
    Toeplitz L' = J L J, the norms are those of L applied to b reversed): the whitened energy of a sweep, which
    is what the variance of a generalised-least-squares fit scales with."""

    def __init__(self, columns: np.ndarray):
        x = np.asarray(columns, dtype=np.float64)
        self.n = x.shape[-1]
        self.nf = 1 << int(np.ceil(np.log2(2 * max(self.n, 1))))
        self.x0 = np.where(x[..., 0] > 0, x[..., 0], np.inf)
        self.f1 = np.fft.rfft(x, self.nf)
        self.f2 = np.fft.rfft(np.concatenate([np.zeros(x.shape[:-1] + (1,)), x[..., :0:-1]], axis=-1), self.nf)

    def __call__(self, b: np.ndarray) -> np.ndarray:
        """b [..., ch, n] -> [..., ch]."""
        fb = np.fft.rfft(np.asarray(b, dtype=np.float64)[..., ::-1], self.nf)
        u1 = np.fft.irfft(self.f1 * fb, self.nf)[..., : self.n]
        u2 = np.fft.irfft(self.f2 * fb, self.nf)[..., : self.n]
        return np.asarray((np.einsum("...n,...n->...", u1, u1) - np.einsum("...n,...n->...", u2, u2)) / self.x0)


def toeplitz_solve(acov: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C^-1 b for the Toeplitz matrix with first row acov (see ToeplitzSolver)."""
    return ToeplitzSolver(acov)(b)


def noise_autocovariance(residuals: np.ndarray, loading: float = 0.01) -> np.ndarray:
    """Stationary noise model from residual sweeps [k, n]: the averaged biased autocovariance (the first row of a
    positive semi-definite Toeplitz covariance) with `loading` x variance added at lag 0."""
    k, n = residuals.shape
    spec = np.mean(np.abs(np.fft.rfft(residuals, 2 * n, axis=1)) ** 2, axis=0)
    acov = np.fft.irfft(spec, 2 * n)[:n] / n
    acov[0] *= 1.0 + loading
    return np.asarray(acov)


def noise_covariance(residuals: np.ndarray, loading: float = 0.01) -> np.ndarray:
    """The dense Toeplitz covariance of noise_autocovariance (for inspection and tests)."""
    from scipy import linalg

    return np.asarray(linalg.toeplitz(noise_autocovariance(residuals, loading)))


# -- the bank of one channel ---------------------------------------------------------------------------------------

@dataclass
class Bank:
    """Matched-filter banks of the channels of a recording (leading axis: channels)."""

    filters: np.ndarray  # [ch, n_s, n]: y(s) = filters[s] @ x, amplitude ratio at latency ratio s
    var: np.ndarray  # [ch, n_s]: variance of one sweep's y(s)
    rho: np.ndarray  # [ch, n_s]: the baseline response measured at s (1 at s = 1): how y(s) falls off the latency
    gain: np.ndarray  # [ch]: E[c(1)] / 1 for the baseline response (template-noise calibration, split halves)
    kappa: np.ndarray  # [ch]: measured / modelled variance of y(1) over baseline sweeps
    baseline_se: np.ndarray  # [ch]: standard error of the baseline level (amplitude ratio)
    cutoff_hz: np.ndarray  # [ch]: template low-pass (NaN: none)
    valid: np.ndarray  # [ch] bool: the baseline reproduced well enough to track
    peak_ms: np.ndarray  # [ch]: latency of the template's largest excursion in the fit window, ms from the stimulus
    width_ms: np.ndarray  # [ch]: that peak's full width at half its height, ms
    noise_column: np.ndarray  # [ch, n]: first column of the inverse noise covariance (NoiseForms)
    projection: np.ndarray  # [ch]: gain^2 T' C^-1 T at s = 1: y(1)^2 times it is the template's part of a sweep's form
    noise_level: np.ndarray  # [ch]: median over the baseline sweeps of their residual whitened energy
    noise_spread: np.ndarray  # [ch]: robust SD of a baseline sweep's residual energy relative to that median


def empty_bank(n_s: int, n: int) -> Bank:
    """The bank of a channel without a reproducible baseline (never tracked)."""
    return Bank(np.zeros((1, n_s, n)), np.full((1, n_s), np.inf), np.ones((1, n_s)), np.zeros(1), np.ones(1),
                np.full(1, np.inf), np.full(1, np.nan), np.zeros(1, dtype=bool), np.full(1, np.nan), np.full(1, np.nan),
                np.zeros((1, n)), np.zeros(1), np.ones(1), np.zeros(1))


def residual_energy(forms: np.ndarray, y1: np.ndarray, projection: np.ndarray | float) -> np.ndarray:
    """A sweep's whitened energy x' C^-1 x less its template part at latency ratio 1 (the GLS residual's energy,
    (T' C^-1 x)^2 / T' C^-1 T = y(1)^2 gain^2 T' C^-1 T): what is left is noise, whatever the response's size."""
    return np.asarray(forms - y1 * y1 * projection)


def _stretch_matrix(template: np.ndarray, fs: float, pre: int, idx: np.ndarray) -> np.ndarray:
    """T(t / s) at the fit indices for every s on the grid, [n_s, len(idx)] (t from the stimulus)."""
    t_full = (np.arange(len(template)) - pre) / fs
    t = (idx - pre) / fs
    return np.stack([np.interp(t / s, t_full, template, left=0.0, right=0.0) for s in S_GRID])


@lru_cache(maxsize=32)
def _lowpass_sos(fs: float, cutoff: float) -> np.ndarray:
    return np.asarray(signal.butter(4, cutoff, fs=fs, output="sos"))


def _lowpass(x: np.ndarray, fs: float, cutoff: float | None) -> np.ndarray:
    """Zero-phase 4th-order Butterworth low-pass of the last axis (None: unchanged)."""
    if cutoff is None or cutoff >= 0.45 * fs:
        return np.asarray(x)
    return np.asarray(signal.sosfiltfilt(_lowpass_sos(float(fs), float(cutoff)), x, axis=-1))


def build_bank(template: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, stack: np.ndarray, fs: float,
               pre: int, idx: np.ndarray, n_baseline: int | None = None) -> Bank:
    """The bank of one channel from its baseline: template and split halves [n_samples] (full rate), and recent
    baseline sweeps `stack` [k, len(idx)] at the fit indices. n_baseline: sweeps in the template (default k)."""
    n_b = int(n_baseline or len(stack))
    solve = ToeplitzSolver(noise_autocovariance(stack - template[idx]))
    ci_a, ci_b = solve(np.stack([half_a[idx], half_b[idx]]))
    best: tuple[float, float | None, np.ndarray, float, float, float] | None = None
    for cutoff in TEMPLATE_CUTOFFS_HZ:
        tf_full, af_full, bf_full = _lowpass(np.stack([template, half_a, half_b]), fs, cutoff)
        tf, af, bf = tf_full[idx], af_full[idx], bf_full[idx]
        ci_t = solve(tf)
        energy = float(tf @ ci_t)
        # E[<F A, C^-1 B>] is the filtered template against the response alone: the halves' noises are
        # independent. y is calibrated by it, so that the baseline response reads 1.
        signal_proj = 0.5 * float(af @ ci_b + bf @ ci_a)
        if energy <= 0 or signal_proj <= 0:
            continue
        gain = signal_proj / energy
        c1 = stack @ (ci_t / energy)
        mad = float(np.median(np.abs(c1 - np.median(c1)))) * 1.4826
        kappa = max(mad**2 * energy, 0.5) if len(c1) >= 8 else 1.0
        var1 = kappa / (gain**2 * energy)
        # The calibration itself is uncertain: the response-times-noise and noise-times-noise parts of the split
        # halves' product, with the template's noise dimensions counted through the low-pass (sum of |H|^4).
        cal_var = (energy / n_b + 2.0 * _noise_dims(len(idx), fs / (idx[1] - idx[0] if len(idx) > 1 else 1),
                                                     cutoff) / n_b**2) / signal_proj**2
        if best is None or var1 < best[0]:
            best = (var1, cutoff, tf_full, gain, kappa, cal_var)
    n_s, n = len(S_GRID), len(idx)
    if best is None:  # no reproducible response at any cut-off
        return empty_bank(n_s, n)
    var1, cutoff, tf_full, gain, kappa, cal_var = best
    ts = _stretch_matrix(tf_full, fs, pre, idx)  # [n_s, n]
    ci = solve(ts)
    energy = np.maximum(np.einsum("sn,sn->s", ts, ci), 1e-30)
    filters = ci / (energy * gain)[:, None]
    var = kappa / (gain**2 * energy)
    rho = filters @ tf_full[idx]
    rho = rho / rho[I1] if rho[I1] > 0 else np.ones(n_s)
    se_b = float(np.sqrt(cal_var))
    peak_ms, width_ms = _main_peak(tf_full, fs, pre, int(idx[0]))
    # The baseline sweeps' own residual energies: the reference a live sweep's noise is measured against
    # (Tracker.update), and how much it scatters among sweeps of the same noise (chi-square with ~n degrees of
    # freedom for Gaussian noise, more where the background's power itself varies from sweep to sweep).
    projection = float(energy[I1] * gain**2)
    res = residual_energy(solve.quadratic(stack), stack @ filters[I1], projection)
    level = float(np.median(res))
    spread = float(1.4826 * np.median(np.abs(res / level - 1.0))) if level > 0 else 0.0
    return Bank(filters[None], var[None], rho[None], np.array([gain]), np.array([kappa]), np.array([se_b]),
                np.array([np.nan if cutoff is None else cutoff]), np.array([se_b <= MAX_BASELINE_SE]),
                np.array([peak_ms]), np.array([width_ms]), solve.column[None], np.array([projection]),
                np.array([level if level > 0 else 1.0]), np.array([spread]))


def _main_peak(template: np.ndarray, fs: float, pre: int, start: int) -> tuple[float, float]:
    """(latency ms, full width at half height ms) of the template's largest excursion from sample `start` on.
    The half height is half the peak's value (not of its prominence over the opposite phases beside it, which
    would widen a sharp N9 between its two positive phases)."""
    x = np.asarray(template[start:], dtype=float)
    if len(x) < 3 or not np.any(x):
        return float("nan"), float("nan")
    i = int(np.argmax(np.abs(x)))
    y = np.sign(x[i]) * x
    width = signal.peak_widths(y, [i], rel_height=0.5, prominence_data=(np.array([y[i]]), np.array([0]),
                                                                          np.array([len(y) - 1])))[0][0]
    return (start + i - pre) / fs * 1e3, float(width) / fs * 1e3


def _noise_dims(n: int, fs_fit: float, cutoff: float | None) -> float:
    """Effective number of noise dimensions a template low-pass keeps in an n-sample fit window, from the
    window's frequencies. The forward-backward filter's response is |H|^2, and the noise-times-noise
    variance of <F a, C^-1 b> is the sum of its square (for F commuting with the stationary C)."""
    if cutoff is None:
        return float(n)
    f = np.fft.rfftfreq(n, 1.0 / fs_fit)
    h2 = 1.0 / (1.0 + (f / cutoff) ** 8)  # 4th-order Butterworth, |H|^2 of one pass
    w = np.full(len(f), 2.0)  # rfft bins stand for a positive and a negative frequency...
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0  # ...except DC and Nyquist
    return float(np.sum(w * h2**2))


def stack_banks(banks: list[Bank]) -> Bank:
    return Bank(*(np.concatenate([getattr(b, f) for b in banks]) for f in Bank.__dataclass_fields__))


# -- pooling channels that record the same response ----------------------------------------------------------------

def pool_members(sites: list[str], sides: list[str | None], midline: list[bool], information: np.ndarray
                 ) -> list[list[int]]:
    """For each channel, the channels whose fits it pools: those of the same recording site (cortical,
    subcortical, peripheral) on the same side, plus midline ones (Cz'-Fpz). One recording is one stimulated
    site, so a midline derivation carries that site's response; it joins the side that responds (the side whose
    channels carry the most baseline information, i.e. the stimulated limb's). A channel whose side is unknown
    (no L/R in its name, no 10-20 electrodes) is pooled with nothing."""
    n = len(sites)
    info = np.nan_to_num(np.asarray(information, dtype=float), nan=0.0, posinf=0.0)
    by_side = {s: float(sum(info[c] for c in range(n) if sides[c] == s)) for s in ("left", "right")}
    responding = max(by_side, key=lambda s: by_side[s]) if max(by_side.values()) > 0 else None
    out = []
    for c in range(n):
        mem = [c]
        for k in range(n):
            if k == c or sites[k] != sites[c]:
                continue
            if sides[c] is not None and sides[k] is not None:
                joins = sides[k] == sides[c]
            elif midline[c] and midline[k]:
                joins = True
            elif midline[c] or midline[k]:  # one sided, one midline: the midline carries the responding side's
                joins = (sides[c] or sides[k]) == responding and responding is not None
            else:
                joins = False
            if joins:
                mem.append(k)
        out.append(mem)
    return out


class Pooling:
    """Inverse-covariance combination of each channel's pool: y_P(s) = sum_k w_k(s) y_k(s) over the pool's
    accepted channels, with variance 1 / (1' S(s)^-1 1), S(s) = D(s) R D(s), D(s) the channels' per-sweep SDs
    and R their correlation measured on the baseline sweeps."""

    def __init__(self, members: list[list[int]], var: np.ndarray, corr: np.ndarray, valid: np.ndarray):
        self.var = np.asarray(var)
        self.corr = np.asarray(corr)
        self.members = [[k for k in mem if valid[k]] for mem in members]
        self.single = all(len(m) <= 1 and (not m or m[0] == c) for c, m in enumerate(self.members))
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def _inverse(self, mem: tuple[int, ...]) -> np.ndarray:
        """S(s)^-1 of a set of channels, [n_s, k, k] (cached per set)."""
        if mem not in self._cache:
            idx = list(mem)
            sd = np.sqrt(self.var[idx])  # [k, n_s]
            r = self.corr[np.ix_(idx, idx)]
            cov = sd.T[:, :, None] * r[None] * sd.T[:, None, :]  # [n_s, k, k]
            self._cache[mem] = np.linalg.inv(cov)
        return self._cache[mem]

    def _weights(self, mem: tuple[int, ...], scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weights [k, n_s] and pooled variance [n_s] of a set of channels, their variances times `scale` [k]."""
        inv = self._inverse(mem)
        u = np.ones(len(mem)) if scale is None else 1.0 / np.sqrt(scale)
        raw = u[None, :] * (inv @ u)  # S_r^-1 1 with S_r = diag(1/u) S diag(1/u)
        tot = raw.sum(axis=1)
        return (raw / tot[:, None]).T, 1.0 / tot

    def combine(self, y: np.ndarray, accepted: np.ndarray, scale: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per channel: pooled y [ch, n_s], its variance [ch, n_s] and whether any pool member was accepted.
        scale [ch]: this sweep's variance of each channel relative to the baseline noise model (>= 1)."""
        n_ch = len(self.members)
        sc = np.ones(n_ch) if scale is None else np.asarray(scale, dtype=float)
        if self.single:
            ok = accepted & np.array([bool(m) for m in self.members])
            return y, self.var * sc[:, None], ok
        yp = np.zeros_like(y)
        vp = np.full_like(y, np.inf)
        ok = np.zeros(n_ch, dtype=bool)
        for c, mem in enumerate(self.members):
            acc = tuple(k for k in mem if accepted[k])
            if not acc:
                continue
            if len(acc) == 1:
                yp[c], vp[c] = y[acc[0]], self.var[acc[0]] * sc[acc[0]]
            else:
                w, v = self._weights(acc, sc[list(acc)])
                yp[c] = np.einsum("ks,ks->s", w, y[list(acc)])
                vp[c] = v
            ok[c] = True
        return yp, vp, ok


# -- Kalman state --------------------------------------------------------------------------------------------------

@dataclass
class KalmanState:
    amplitude: np.ndarray  # [ch] ratio to baseline
    latency: np.ndarray  # [ch] ratio to baseline
    amplitude_sd: np.ndarray
    latency_sd: np.ndarray


class GridKalman:
    """Kalman filter of the amplitude ratio for every latency ratio on the grid, with the latency a hidden
    Markov chain over the grid: the exact Bayesian filter of (a, s) for this model (conditionally Gaussian).

    Per sweep, given s = s_j, the sweep's likelihood in a is Gaussian with mean y_j and variance r_j, so each
    grid point runs a scalar Kalman update of a, and its weight is multiplied by the marginal likelihood
    exp(y_j^2 / 2 r_j) sqrt(r_j / S_j) exp(-(y_j - m_j)^2 / 2 S_j),  S_j = v_j + r_j.
    Dynamics per sweep: a random walk of SD q_a; the latency moves one grid step (0.01) with probability
    p_step each way, or jumps anywhere with probability p_jump (acute changes)."""

    def __init__(self, n_channels: int, q_a: float = 0.01, p_step: float = 0.05, p_jump: float = 1e-3):
        n_s = len(S_GRID)
        self.q_a = q_a
        trans = np.eye(n_s) * (1 - 2 * p_step) + np.eye(n_s, k=1) * p_step + np.eye(n_s, k=-1) * p_step
        trans[0, 0] += p_step
        trans[-1, -1] += p_step
        self.trans_t = np.ascontiguousarray(((1 - p_jump) * trans + p_jump / n_s).T)
        self.n_channels = n_channels
        self.w = np.zeros((n_channels, n_s))
        self.m = np.ones((n_channels, n_s))
        self.v = np.full((n_channels, n_s), 0.05**2)
        self.reset(np.arange(n_channels))

    def reset(self, ch: int | np.ndarray) -> None:
        self._state: KalmanState | None = None
        ch = np.atleast_1d(ch)
        prior = np.exp(-0.5 * ((S_GRID - 1.0) / 0.01) ** 2)
        self.w[ch] = prior / prior.sum()
        self.m[ch] = 1.0
        self.v[ch] = 0.05**2

    def update(self, y: np.ndarray, r: np.ndarray, accepted: np.ndarray) -> None:
        """One sweep's amplitude fits y [ch, n_s] with variances r [ch, n_s]; only accepted channels move."""
        ch = np.flatnonzero(accepted)
        if len(ch) == 0:
            return
        self._state = None
        every = len(ch) == self.n_channels  # the usual case: no gathers and scatters of the state rows
        w, m, v = (self.w, self.m, self.v) if every else (self.w[ch], self.m[ch], self.v[ch])
        # Predict: latency transition with moment matching of the amplitude Gaussians, then amplitude walk.
        n = len(ch)
        moved = np.concatenate([w, w * m, w * (v + m**2)]) @ self.trans_t  # the three moments in one product
        w = moved[:n]
        safe = np.maximum(w, 1e-300)
        m = moved[n: 2 * n] / safe
        v = np.maximum(moved[2 * n:] / safe - m**2, 1e-12) + self.q_a**2
        yc, rc = (y, r) if every else (y[ch], r[ch])
        s_tot = v + rc
        logl = yc**2 / (2 * rc) + 0.5 * np.log(rc / s_tot) - (yc - m) ** 2 / (2 * s_tot)
        k = v / s_tot
        m = m + k * (yc - m)
        v = (1 - k) * v
        logw = np.log(safe) + logl
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=1, keepdims=True)
        if every:
            self.w, self.m, self.v = w, m, v
        else:
            self.w[ch], self.m[ch], self.v[ch] = w, m, v

    def state(self) -> KalmanState:
        """Posterior means and SDs of (a, s) per channel (computed once per update: the window test and the
        display both read it)."""
        if self._state is not None:
            return self._state
        w, m, v = self.w, self.m, self.v
        a = np.sum(w * m, axis=1)
        a_var = np.sum(w * (v + m**2), axis=1) - a**2
        s = w @ S_GRID
        s_var = w @ S_GRID**2 - s**2
        self._state = KalmanState(a, s, np.sqrt(np.maximum(a_var, 0)), np.sqrt(np.maximum(s_var, 0)))
        return self._state


# -- the window test -----------------------------------------------------------------------------------------------

# The window test works on every other latency of the grid (0.02 steps): a fit 0.01 off the response's latency
# loses ~1 % of its amplitude, and the test's cost halves.
TEST_GRID = S_GRID[::2]
TEST_I1 = int(np.argmin(np.abs(TEST_GRID - 1.0)))  # the test latency at ratio 1
TEST_STEP = float(TEST_GRID[1] - TEST_GRID[0])  # latency ratio between test latencies
REFERENCE_LATENCIES = 6  # test latencies the reference's latency posterior is kept on


def to_test_grid(w: np.ndarray) -> np.ndarray:
    """Latency weights [..., n_s] on S_GRID -> [..., len(TEST_GRID)], odd points split between their neighbours."""
    out = np.array(w[..., ::2], dtype=np.float64)
    odd = w[..., 1::2]
    out[..., : odd.shape[-1]] += 0.5 * odd
    out[..., 1: odd.shape[-1] + 1] += 0.5 * odd
    return out


@dataclass
class WindowEstimates:
    """Per channel and window length: estimates over the last n accepted sweeps of the channel's pool."""

    n: np.ndarray  # [n_w]
    valid: np.ndarray  # [ch, n_w]: the window fits since the last restart
    amplitude: np.ndarray  # [ch, n_w] ratio, latency marginalised (prior: the Kalman latency)
    amplitude_se: np.ndarray  # [ch, n_w]: the window's (the baseline's calibration comes on top: calibration_se)
    latency: np.ndarray  # [ch, n_w] ratio (posterior mean)
    zsq: np.ndarray  # [ch, n_w, n_t]: squared z of a positive amplitude fitted at each latency of TEST_GRID
    drop_z: np.ndarray  # [ch, n_w]: largest z of a drop from a reference, beyond the drift tolerance
    drop_ref: np.ndarray  # [ch, n_w]: the reference level of that largest drop (ratio)
    calibration_se: np.ndarray  # [ch]: relative SE of the baseline level (a ratio L to the baseline is known to
    #                               hypot(amplitude_se, L * calibration_se))

    def level_se(self, level: float) -> np.ndarray:
        """[ch, n_w] SE of the window amplitude against the level (ratio): the window's and the calibration's."""
        cache = self.__dict__.setdefault("_se", {})
        if level not in cache:
            cache[level] = np.asarray(np.hypot(self.amplitude_se, level * self.calibration_se[:, None]))
        return np.asarray(cache[level])

    def latency_lr(self, level: float) -> np.ndarray:
        """[ch, n_w] log-likelihood-ratio statistic (x2) for latency above `level` against at or below it:
        the best fit with s > level minus the best with s <= level. Unlike (s - level) / se it stays small
        when the response is too weak to place (a maximum over latencies of noise alone)."""
        cache = self.__dict__.setdefault("_lr", {})
        if level not in cache:
            cache[level] = self._latency_lr(level)
        return np.asarray(cache[level])

    def _latency_lr(self, level: float) -> np.ndarray:
        j = int(np.searchsorted(TEST_GRID, level + 1e-9, side="right"))  # TEST_GRID[j:] > level (it ascends)
        hi = self.zsq[..., j:].max(axis=-1) if j < len(TEST_GRID) else np.zeros(self.zsq.shape[:2])
        lo = self.zsq[..., :j].max(axis=-1) if j > 0 else np.zeros(self.zsq.shape[:2])
        return np.asarray(hi - lo)


class WindowTest:
    """Weighted cumulative sums of the pooled fits (sum y/v, sum 1/v, sum y^2/v per latency, and the stimulus
    times), so that every window ending at the newest sweep, and every reference before it, costs O(n_s).

    The change test measures each window where its reference's response was: at the Kalman latency posterior
    held just before the window started. The reference is the m accepted sweeps before the window (the
    baseline stands in for sweeps before the baseline end while no restart happened). A drop counts beyond a
    drift tolerance delta0 + drift_per_s x (time between the centres of reference and window): gradual,
    anaesthetic-like declines are not acute changes."""

    def __init__(self, n_channels: int, lengths: np.ndarray = WINDOW_LENGTHS,
                 references: np.ndarray = REFERENCE_LENGTHS, delta0: float = 0.05,
                 drift_per_s: float = 0.05 / 60.0, min_reference: int = 16):
        self.lengths = np.asarray(lengths)
        self.references = np.asarray(references)
        self.delta0, self.drift_per_s, self.min_reference = float(delta0), float(drift_per_s), int(min_reference)
        finite = self.references[self.references > 0]
        self.size = int(self.lengths.max() + (finite.max() if len(finite) else 0) + 1)
        n_t, k = len(TEST_GRID), REFERENCE_LATENCIES
        self.n_channels = n_channels
        # Rings of running totals, rows = channel * (size + 1) + position: (y / v, 1 / v, y^2 / v) per latency
        # (the three side by side, so that one gather fetches a latency's three), and the stimulus times.
        # Row channel * (size + 1) + size holds the running totals at the channel's last restart.
        rows = n_channels * (self.size + 1)
        self.ring = np.zeros((rows, n_t, 3))
        self.ring_t = np.zeros(rows)
        # The Kalman latency posterior after each sweep, as the reference measure reads it: the REFERENCE_LATENCIES
        # test latencies around its mode (from ring_first; the mode itself in ring_mode), their weights normalised,
        # and what a response at the mode reads under those weights (ring_rho). Kept per row when the row is
        # written, not per window when read.
        self.ring_first = np.zeros(rows, dtype=np.int64)
        self.ring_mode = np.zeros(rows, dtype=np.int64)
        self.ring_wk = np.zeros((rows, k))
        self.ring_rho = np.full(rows, 1e-3)
        self._row_channel = np.arange(rows) // (self.size + 1)
        self.rho = np.ones((n_channels, n_t))  # the baseline response measured at each test latency
        self._k = np.arange(k)
        self.base = np.arange(n_channels) * (self.size + 1)
        # Before any sweep, and at the baseline: the response at latency ratio 1.
        start = np.zeros((1, n_t))
        start[0, TEST_I1] = 1.0
        for row in (self.base, self.base + self.size):
            self._set_posterior(row, np.repeat(start, n_channels, axis=0))
        self.count = np.zeros(n_channels, dtype=np.int64)
        self.start = np.zeros(n_channels, dtype=np.int64)
        self.restarted = np.zeros(n_channels, dtype=bool)
        # Per channel: how many test-grid steps either way the change test may move the window's latency from the
        # reference's (set_baseline; 0: measured exactly where the reference's response was).
        self.shift_steps = np.zeros(n_channels, dtype=np.int64)
        # The baseline as a reference (set_baseline): its SE, sweep count, mean interval and end time.
        self.baseline_se = np.zeros(n_channels)  # the calibration's SE (amplitude ratio)
        self._se_b = np.zeros((n_channels, 1))  # the same, infinite ones as 1e6
        self.baseline_var1 = np.ones(n_channels)  # one sweep's variance of y(1)
        self.baseline_n = np.zeros(n_channels)
        self.baseline_dt = 1.0
        self.baseline_end = 0.0
        # Index helpers for estimates(): reference lengths, the K latencies, and each (channel, window)'s row of
        # the window means [ch, n_w, n_t] flattened.
        self._m_req = self.references[None, None, :]
        self._m_finite = self._m_req > 0
        n_w = len(self.lengths)
        self._cw = (np.arange(n_channels * n_w).reshape(n_channels, n_w) * n_t)[:, :, None]
        self._cwm = np.arange(n_channels * n_w).reshape(n_channels, n_w) * len(self.references)

    def set_baseline(self, se: np.ndarray, var1: np.ndarray, n: np.ndarray, dt_s: float, end_s: float,
                     rho: np.ndarray, shift_steps: np.ndarray | None = None) -> None:
        """The baseline as a reference: the calibration's SE [ch], one sweep's variance of y(1) [ch], its sweep
        count [ch], mean interval and end time (s), and its response at each test latency [ch, n_t]; shift_steps
        [ch]: the change test's latency tolerance in test-grid steps (default none)."""
        self.shift_steps = (np.zeros(self.n_channels, dtype=np.int64) if shift_steps is None
                            else np.asarray(shift_steps, dtype=np.int64))
        self.baseline_se = np.asarray(se, dtype=float)
        self._se_b = np.nan_to_num(self.baseline_se, posinf=1e6)[:, None]
        self.baseline_var1 = np.asarray(var1, dtype=float)
        self.baseline_n = np.asarray(n, dtype=float)
        self.baseline_dt, self.baseline_end = float(dt_s), float(end_s)
        self.rho = np.asarray(rho, dtype=float)
        self.ring_rho = self._response_read(np.arange(len(self.ring_rho)), self.ring_first, self.ring_mode,
                                            self.ring_wk)

    def _response_read(self, rows: np.ndarray, first: np.ndarray, mode: np.ndarray, wk: np.ndarray) -> np.ndarray:
        """What a response at the posterior's mode reads under the weights wk [len(rows), K] on the test latencies
        first + k: the baseline response measured that far from its own latency (rho at 1 + (first + k - mode)
        grid steps). It turns the reference's measure into amplitude ratios wherever its response was. (Measured
        against the baseline's latency instead, rho(first + k), a response that had moved would be divided by the
        baseline response's fit at the new latency: on a 0.8 ms wide nerve peak that is ~0 or negative only 0.4 ms
        away, and the reference and window read hundreds of times their amplitude.)"""
        n_t = self.rho.shape[1]
        at = np.clip(TEST_I1 + first[:, None] + self._k - mode[:, None], 0, n_t - 1)
        rho = np.take(self.rho, self._row_channel[rows][:, None] * n_t + at)
        return np.asarray(np.maximum(np.sum(wk * rho, axis=-1), 1e-3))

    def _set_posterior(self, rows: np.ndarray, w: np.ndarray) -> None:
        """Store the latency posterior w [len(rows), n_t] (test grid) of these rows, as estimates() reads it."""
        n_t = w.shape[-1]
        mode = np.argmax(w, axis=-1)
        first = np.clip(mode - REFERENCE_LATENCIES // 2, 0, n_t - REFERENCE_LATENCIES)
        top = first[:, None] + self._k
        wk = np.take(w, np.arange(len(w))[:, None] * n_t + top)
        wk /= np.maximum(wk.sum(axis=-1, keepdims=True), 1e-300)
        self.ring_first[rows] = first
        self.ring_mode[rows] = mode
        self.ring_wk[rows] = wk
        self.ring_rho[rows] = self._response_read(rows, first, mode, wk)

    def push(self, y: np.ndarray, v: np.ndarray, accepted: np.ndarray, t_s: float, kalman_w: np.ndarray) -> None:
        """One sweep's pooled fits y [ch, n_s] with variances v [ch, n_s] (full grid), and the Kalman latency
        posterior after it [ch, n_s]."""
        ch = np.flatnonzero(accepted)
        if len(ch) == 0:
            return
        now = self.base[ch] + self.count[ch] % self.size
        nxt = self.base[ch] + (self.count[ch] + 1) % self.size
        yt, inv = y[ch, ::2], 1.0 / v[ch, ::2]
        self.ring[nxt] = self.ring[now] + np.stack([yt * inv, inv, yt * yt * inv], axis=-1)
        self.ring_t[nxt] = self.ring_t[now] + t_s
        self._set_posterior(nxt, to_test_grid(kalman_w[ch]))
        self.count[ch] += 1

    def reset(self, ch: int | np.ndarray) -> None:
        """Windows of these channels start afresh from the next sweep (after a state change)."""
        ch = np.atleast_1d(ch)
        self.start[ch] = self.count[ch]
        self.restarted[ch] = True
        now = self.base[ch] + self.count[ch] % self.size
        keep = self.base[ch] + self.size
        for ring in (self.ring, self.ring_t, self.ring_first, self.ring_mode, self.ring_wk, self.ring_rho):
            ring[keep] = ring[now]

    @staticmethod
    def _moments(sums: np.ndarray, nn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the mean per latency, from weighted sums [..., n_t, 3] over nn sweeps [...]. The
        variance is the model's, or larger when the window's own scatter says so (non-stationary noise,
        trial-to-trial variability)."""
        s1, sw, s2 = sums[..., 0], np.maximum(sums[..., 1], 1e-300), sums[..., 2]
        mean = s1 / sw
        var = s2 - s1 * mean  # the weighted scatter (chi-square), turned into the variance in place
        np.maximum(var, 0.0, out=var)
        var /= np.maximum(nn - 1.0, 1.0)[..., None]
        np.maximum(var, 1.0, out=var)
        var /= sw
        return mean, var

    def estimates(self, prior_center: np.ndarray, prior_sd: np.ndarray) -> WindowEstimates:
        """Estimates for every window length ending at the newest sweep. The latency prior: a normal around
        prior_center with SD prior_sd (at least 0.03), plus 1 % spread over the grid so that an acute jump can
        still be found."""
        ln = self.lengths
        n_t = len(TEST_GRID)
        sd = np.maximum(np.asarray(prior_sd), 0.03)
        dens = np.exp(-0.5 * ((TEST_GRID[None, :] - np.asarray(prior_center)[:, None]) / sd[:, None]) ** 2)
        dens /= dens.sum(axis=1, keepdims=True)
        log_prior = np.log(0.99 * dens + 0.01 / n_t)[:, None, :]
        base = self.base[:, None]
        avail = (self.count - self.start)[:, None]
        n_eff = np.minimum(ln[None, :], avail)  # windows shorter than asked for when there is not enough
        valid = ln[None, :] <= avail
        now = base + (self.count % self.size)[:, None]
        begin = self.count[:, None] - n_eff
        past = base + begin % self.size
        # [ch, n_w, n_t] each (np.take: a gather along the first axis, several times faster than fancy indexing)
        mean, var = self._moments(np.take(self.ring, now, 0) - np.take(self.ring, past, 0), n_eff.astype(float))
        zsq = np.where(mean > 0, mean * mean / var, 0.0)
        logw = log_prior + 0.5 * zsq
        logw -= logw.max(axis=-1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=-1, keepdims=True)
        amp = np.einsum("cwt,cwt->cw", w, mean)
        dev = mean - amp[..., None]
        amp_se = np.sqrt(np.einsum("cwt,cwt->cw", w, var + dev * dev))
        se_b = self._se_b
        lat = w @ TEST_GRID
        t_past = self.ring_t[past]
        t_win = (self.ring_t[now] - t_past) / np.maximum(n_eff, 1)
        # References, all at once on a third axis [ch, n_w, n_m]: the m sweeps before each window, or (m = 0)
        # everything since the last restart (its running totals sit in the ring's extra row per channel).
        at_baseline = ~self.restarted[:, None, None]
        avail_ref = (begin - self.start[:, None])[..., None]
        m_req, finite = self._m_req, self._m_finite
        m_eff = np.where(finite, np.minimum(avail_ref, m_req), avail_ref)
        r_past = np.where(finite, base[..., None] + (begin[..., None] - m_eff) % self.size,
                          (base + self.size)[..., None])
        # Reference and window are measured where the reference's response was: the Kalman latency posterior at
        # the reference's start (before any change the window may hold), on the REFERENCE_LATENCIES test
        # latencies around its mode (it is concentrated: the rest carries ~1 %).
        first = np.take(self.ring_first, r_past)  # [ch, n_w, n_m]: the K latencies are first + self._k
        wk, rho_k = np.take(self.ring_wk, r_past, 0), np.take(self.ring_rho, r_past)
        k = self._k
        dot = "cwmk,cwmk->cwm"  # a weighted sum over the K latencies (einsum: ~3x a sum of products here)
        flat = self.ring.reshape(-1, 3)
        sums = (np.take(flat, (past[..., None] * n_t + first)[..., None] + k, 0)
                - np.take(flat, (r_past * n_t + first)[..., None] + k, 0))
        t_sum = t_past[..., None] - self.ring_t[r_past]
        n_b = self.baseline_n[:, None, None]
        # The baseline fills a reference that reaches back to it, up to m sweeps (all of it for m = 0).
        fill = np.where(at_baseline, np.where(finite, np.minimum(np.maximum(m_req - m_eff, 0), n_b), n_b), 0.0)
        rmean, rvar = self._moments(sums, m_eff.astype(float))
        have = m_eff >= self.min_reference
        ref = np.where(have, np.einsum(dot, wk, rmean) / rho_k, 0.0)
        ref_var = np.where(have, np.einsum(dot, wk, rvar) / rho_k**2, np.inf)
        # The baseline's part: level 1, sampled like `fill` sweeps of the pool's per-sweep variance. Its
        # calibration is a scale on the window (and on the sweeps after the baseline) rather than an offset:
        # the window's fit, times the baseline's share of the reference, times the calibration's SE.
        wr = 1.0 / ref_var
        wb = fill / self.baseline_var1[:, None, None]
        tot = wr + wb
        level = (ref * wr + wb) / np.maximum(tot, 1e-300)
        share = wb / np.maximum(tot, 1e-300)
        t_fill = self.baseline_end - 0.5 * fill * self.baseline_dt
        t_centre = (np.where(m_eff > 0, t_sum, 0.0) + t_fill * fill) / np.maximum(m_eff + fill, 1.0)
        delta = self.delta0 + self.drift_per_s * np.maximum(t_win[..., None] - t_centre, 0.0)
        # The window, at the reference's latencies, moved by as many test-grid steps as its own latency (posterior
        # mean) lies from the reference's mode, up to the channel's latency tolerance (shift_steps; 0 but for
        # sharp responses): a nerve response that wandered by a fraction of a millisecond and kept its amplitude is
        # measured where it now is, not read as smaller. (Following the window's latency, not maximising over the
        # tolerance: a maximum over 9 latencies would lift a weak window by about a standard error.)
        mode = np.take(self.ring_mode, r_past)  # [ch, n_w, n_m]
        tol = self.shift_steps[:, None, None]
        moved = np.clip(np.rint((lat[..., None] - TEST_GRID[mode]) / TEST_STEP), -tol, tol).astype(np.int64)
        at = self._cw[..., None] + np.clip(first + moved, 0, n_t - REFERENCE_LATENCIES)[..., None] + k
        y_k = np.einsum(dot, wk, np.take(mean, at)) / rho_k
        y_k_se = np.sqrt(np.einsum(dot, wk, np.take(var, at))) / rho_k
        cal = share * np.clip(y_k, 0.0, 1.5) * se_b[..., None]
        level_se = np.sqrt(1.0 / np.maximum(tot, 1e-300) + cal**2)
        # A window cannot read less than no response: a negative fit is noise, or a phase of opposite sign that moved
        # under the reference's latency (long references of a sharp response that wandered read ~0 at their start
        # latency), not a drop below a reference that is itself ~0.
        z = (level - delta - np.maximum(y_k, 0.0)) / np.hypot(y_k_se, level_se)
        z = np.where(valid[..., None] & (tot > 0), z, -np.inf)
        drop_z = z.max(axis=-1)
        best = np.argmax(z, axis=-1) + self._cwm  # in the flattened [ch, n_w, n_m]
        drop_ref = np.where(np.isfinite(drop_z), np.take(level, best), np.nan)
        return WindowEstimates(ln, valid, amp, amp_se, lat, zsq, drop_z, drop_ref, se_b[:, 0])


class Tracker:
    """Template tracker for all channels of a recording (the evaluator drives it one sweep at a time)."""

    def __init__(self, fs: float, n_samples: int, pre_samples: int, fit_start: int, band_hi_hz: float,
                 n_channels: int, q_a: float = 0.01):
        self.fs, self.pre = float(fs), int(pre_samples)
        q = decimation_for(fs, band_hi_hz)
        self.idx = np.arange(max(fit_start, pre_samples + 1), n_samples, q)
        self._decimate = slice(int(self.idx[0]) if len(self.idx) else n_samples, n_samples, q)  # idx as a view
        self.n_channels = n_channels
        self.bank: Bank | None = None
        self.pooling: Pooling | None = None
        self.members: list[list[int]] = [[c] for c in range(n_channels)]
        self.q_a = q_a
        self.kalman = GridKalman(n_channels, q_a)
        self.windows = WindowTest(n_channels)
        self.pooled_ok = np.zeros(n_channels, dtype=bool)  # per channel: its pool had an accepted sweep
        self._filters32 = np.zeros((n_channels, len(S_GRID), len(self.idx)), dtype=np.float32)
        self._forms = NoiseForms(np.zeros((n_channels, len(self.idx))))
        self.noise_scale = np.ones(n_channels)  # the last sweep's variance scale per channel (update())

    def estimates(self) -> WindowEstimates:
        """The window estimates now, with the latency prior from the Kalman state."""
        ks = self.kalman.state()
        return self.windows.estimates(ks.latency, ks.latency_sd)

    def set_baseline(self, template: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, stack: np.ndarray,
                     stack_ok: np.ndarray, n_baseline: np.ndarray, sites: list[str], names: list[str],
                     baseline_end_s: float = 0.0, baseline_dt_s: float = 1.0) -> None:
        """template, halves: [ch, n_samples]; stack: [k, ch, len(idx)] recent baseline sweeps (decimated, aligned
        across channels) with stack_ok [k, ch] their acceptance; n_baseline [ch]: sweeps in each template."""
        banks = []
        for c in range(self.n_channels):
            rows = np.asarray(stack[stack_ok[:, c], c], dtype=np.float64)
            if len(rows) < 2:
                banks.append(empty_bank(len(S_GRID), len(self.idx)))
                continue
            banks.append(build_bank(template[c], half_a[c], half_b[c], rows, self.fs, self.pre, self.idx,
                                    int(n_baseline[c])))
        bank = stack_banks(banks)
        self.bank = bank
        self._filters32 = np.ascontiguousarray(bank.filters, dtype=np.float32)
        self._forms = NoiseForms(bank.noise_column)
        # Correlation of the channels' baseline fits on the same sweeps (shared electrodes, common trial-to-trial
        # variability); shrunk towards independence by the number of sweeps in common.
        y1 = np.einsum("kcn,cn->kc", np.asarray(stack, dtype=np.float64), bank.filters[:, I1])
        corr = np.eye(self.n_channels)
        for i in range(self.n_channels):
            for j in range(i + 1, self.n_channels):
                both = stack_ok[:, i] & stack_ok[:, j]
                if both.sum() >= 16 and bank.valid[i] and bank.valid[j]:
                    r = float(np.corrcoef(y1[both, i], y1[both, j])[0, 1])
                    r *= both.sum() / (both.sum() + 50.0)
                    corr[i, j] = corr[j, i] = float(np.clip(r, -0.9, 0.9))
        sides = [side_of(nm) for nm in names]
        info = np.where(bank.valid, 1.0 / bank.var[:, I1], 0.0)
        self.members = pool_members(sites, sides, [is_midline(nm) for nm in names], info)
        self.pooling = Pooling(self.members, bank.var, corr, bank.valid)
        self.kalman = GridKalman(self.n_channels, self.q_a)
        self.windows = WindowTest(self.n_channels)
        pooled_var = np.array([self.pooling._weights(tuple(m))[1][I1] if m else np.inf
                               for m in self.pooling.members])
        n_b = np.array([max((n_baseline[k] for k in m), default=0) for m in self.pooling.members], dtype=float)
        cal = np.array([np.sqrt(np.sum(self.pooling._weights(tuple(m))[0][:, I1] ** 2 * bank.baseline_se[m] ** 2))
                        if m else np.inf for m in self.pooling.members])
        rho = np.array([np.einsum("ks,ks->s", *self._rho_weights(m))[::2] if m else np.ones(len(TEST_GRID))
                        for m in self.pooling.members])
        self.windows.set_baseline(cal, np.where(np.isfinite(pooled_var), pooled_var, 1e12), n_b,
                                  baseline_dt_s, baseline_end_s, rho, self._latency_tolerance_steps())

    def _latency_tolerance_steps(self) -> np.ndarray:
        """Per channel, the change test's latency tolerance in test-grid steps (0.02 of the latency each): for a
        pool whose most informative member's template has a sharp main peak (at most NARROW_PEAK_MS wide),
        LATENCY_TOLERANCE_MS at that peak's latency, at most MAX_TOLERANCE_RATIO; none otherwise. At the N9 (9.7
        ms) and the popliteal response (8.7 ms) that is 4 steps, 0.78 and 0.70 ms."""
        bank, pooling = self.bank, self.pooling
        assert bank is not None and pooling is not None
        most = min(TEST_I1, len(TEST_GRID) - 1 - TEST_I1, int(MAX_TOLERANCE_RATIO / TEST_STEP + 1e-9))
        out = np.zeros(self.n_channels, dtype=np.int64)
        for c, mem in enumerate(pooling.members):
            if not mem:
                continue
            best = min(mem, key=lambda m: float(bank.var[m, I1]))
            peak_ms, width_ms = float(bank.peak_ms[best]), float(bank.width_ms[best])
            if peak_ms > 0 and width_ms <= NARROW_PEAK_MS:  # False for NaN (no peak)
                out[c] = min(most, int(LATENCY_TOLERANCE_MS / (peak_ms * TEST_STEP) + 1e-9))
        return out

    def _rho_weights(self, mem: list[int]) -> tuple[np.ndarray, np.ndarray]:
        assert self.pooling is not None and self.bank is not None
        w, _ = self.pooling._weights(tuple(mem))
        return w, self.bank.rho[mem]

    def _noise_scale(self, x: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Per channel, how many times the baseline sweeps' noise variance this sweep [ch, n] (fit indices) holds,
        in the metric the fits use: its residual whitened energy against the baseline's median, y(1) the fits at
        latency ratio 1. The rejector's running median cannot say it: when cautery fills more than half of its
        last 100 sweeps (21 s), that median is the cautery's, and a burst's tail of 70-80 µV RMS (18 times a clean
        sweep's 4 µV) reads quieter than usual and passes; weighed as clean sweeps, three of them moved a sharp
        nerve response's amplitude estimate from 0.94 to 4.8 (cautery_heavy). 1 within NOISE_ALLOWANCE_SD of the
        baseline sweeps' own scatter: an ordinary sweep keeps its full weight."""
        assert self.bank is not None
        res = residual_energy(self._forms(np.asarray(x, dtype=np.float64)), y1, self.bank.projection)
        ratio = res / self.bank.noise_level
        return np.asarray(np.where(ratio > 1.0 + NOISE_ALLOWANCE_SD * self.bank.noise_spread, ratio, 1.0))

    @property
    def tracked(self) -> np.ndarray:
        """Per channel: its pool has a channel whose baseline reproduced."""
        if self.pooling is None:
            return np.zeros(self.n_channels, dtype=bool)
        return np.array([bool(m) for m in self.pooling.members])

    def update(self, sweep: np.ndarray, accepted: np.ndarray, t_s: float = 0.0,
               noise_ratio: np.ndarray | None = None) -> None:
        """One conditioned sweep [ch, n_samples]; only accepted channels move. A sweep noisier than the baseline's
        sweeps, that was not noisy enough to reject (the edge or the tail of a cautery burst, an EMG burst), weighs
        less by its noise variance against theirs (noise_scale). noise_ratio [ch]: the sweep's noise RMS against
        its running median (ArtifactRejector.noise_ratio); a sweep weighs less by its square when that says more."""
        if self.bank is None or self.pooling is None:
            return
        ok = np.asarray(accepted, dtype=bool) & self.bank.valid
        x = np.asarray(sweep[:, self._decimate], dtype=np.float32)
        # float32 bank (7 digits for fits whose noise is ~1e-2 of the baseline; a batched product, not einsum)
        y = np.matmul(self._filters32, x[..., None])[..., 0].astype(np.float64)
        self.noise_scale = self._noise_scale(x, y[:, I1])
        scale = self.noise_scale
        if noise_ratio is not None:
            scale = np.maximum(scale, np.asarray(noise_ratio, dtype=float) ** 2)
        yp, vp, pok = self.pooling.combine(y, ok, scale)
        self.kalman.update(yp, vp, pok)
        self.windows.push(yp, vp, pok, t_s, self.kalman.w)
        self.pooled_ok = pok
