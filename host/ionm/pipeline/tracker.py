"""The fast change tracker: a template fit on every sweep, a Kalman state, and a sequential window test.

Model (docs/EVALUATION.md has the derivation and assumptions): a conditioned sweep's post-stimulus part is
    x(t) = a * T(t / s) + noise,
with T the channel's baseline average (the template), a the amplitude ratio and s the latency ratio against
baseline (a stretch about the stimulus: every component's latency scales by s), and noise stationary and
Gaussian with a covariance C estimated from the baseline residuals (Toeplitz, from their autocovariance).

Per sweep, for a grid of s, the generalised-least-squares amplitude c(s) = T_s' C^-1 x / T_s' C^-1 T_s
(a bank of matched filters). Two consumers:
- a Kalman filter of a for every s on the grid, s itself a hidden Markov chain (GridKalman): smooth
  estimates of (a, s) with their standard deviations, for display and per-trial output;
- a sequential test for decisions: for windows of the last n accepted sweeps (n from 8 to 512, never
  reaching back past the last state change), the window's maximum-likelihood s and a from the summed bank,
  with standard errors from the baseline noise (or the window's own scatter when larger). A window whose
  estimate is beyond a criterion by z standard errors is evidence; short windows react to a step within a
  few sweeps, long ones resolve small changes, so no single averaging length has to be chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

S_GRID = np.round(np.arange(0.80, 1.5001, 0.01), 4)  # latency ratios searched (stretch about the stimulus)
WINDOW_LENGTHS = np.array([8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512])


def decimation_for(fs: float, hi_hz: float) -> int:
    """Keep at least 2.5x the band's upper edge: the tracker does not need 16 kSPS for a 1 kHz band."""
    return max(1, int(fs // (2.5 * hi_hz)))


@dataclass
class Bank:
    """Matched-filter bank of one or more channels (leading axis: channels)."""

    filters: np.ndarray  # [ch, n_s, n]: c(s) = filters[s] @ x
    energy: np.ndarray  # [ch, n_s]: T_s' C^-1 T_s
    deriv_info: np.ndarray  # [ch, n_s]: |dT_s/ds| in the C^-1 metric, orthogonal to T_s (latency Fisher info)
    gain: np.ndarray  # [ch]: E[c(1)] for an unchanged response (template-noise shrinkage, from split halves)
    kappa: np.ndarray  # [ch]: measured / modelled variance of c(1) over baseline sweeps
    valid: np.ndarray  # [ch] bool: the baseline was reproducible enough to track


def _stretched(template: np.ndarray, fs: float, pre: int, idx: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """T(t/s) and d/ds T(t/s) = -(t/s^2) T'(t/s) at sample indices idx (t from the stimulus, seconds)."""
    t_full = (np.arange(len(template)) - pre) / fs
    d_full = np.gradient(template, 1.0 / fs)
    t = (idx - pre) / fs
    ts = t / s
    val = np.interp(ts, t_full, template, left=0.0, right=0.0)
    der = -(t / s**2) * np.interp(ts, t_full, d_full, left=0.0, right=0.0)
    return val, der


def noise_covariance(residuals: np.ndarray, loading: float = 0.01) -> np.ndarray:
    """Stationary (Toeplitz) noise covariance from residual sweeps [k, n]: the averaged biased autocovariance
    (positive semi-definite by construction) plus `loading` x variance on the diagonal."""
    k, n = residuals.shape
    spec = np.mean(np.abs(np.fft.rfft(residuals, 2 * n, axis=1)) ** 2, axis=0)
    acov = np.fft.irfft(spec, 2 * n)[:n] / n
    cov = linalg.toeplitz(acov)
    cov[np.diag_indices(n)] += loading * acov[0]
    return np.asarray(cov)


def build_bank(template: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, stack: np.ndarray, fs: float,
               pre: int, idx: np.ndarray) -> Bank:
    """Filters for one channel from its baseline: template and halves [n_samples] (full rate), and recent
    baseline sweeps `stack` [k, len(idx)] sampled at idx (the decimated fit window)."""
    cov = noise_covariance(stack - template[idx])
    cho = linalg.cho_factor(cov)
    vals, ders = zip(*(_stretched(template, fs, pre, idx, float(s)) for s in S_GRID), strict=True)
    tv = np.array(vals).T  # [n, n_s]
    td = np.array(ders).T
    ci_t = linalg.cho_solve(cho, tv)
    ci_d = linalg.cho_solve(cho, td)
    energy = np.einsum("ns,ns->s", tv, ci_t)
    cross = np.einsum("ns,ns->s", td, ci_t)
    dd = np.einsum("ns,ns->s", td, ci_d)
    safe_e = np.maximum(energy, 1e-30)
    filters = (ci_t / safe_e).T
    deriv_info = np.maximum(dd - cross**2 / safe_e, 1e-30)
    i1 = int(np.argmin(np.abs(S_GRID - 1.0)))
    # Split-half shrinkage: E[<A,B>] is the response energy alone, E[<T,T>] adds the template's noise.
    a_dec, b_dec = half_a[idx], half_b[idx]
    gain = float(a_dec @ linalg.cho_solve(cho, b_dec) / safe_e[i1])
    c1 = stack @ filters[i1]
    mad = np.median(np.abs(c1 - np.median(c1))) * 1.4826
    kappa = float(mad**2 * energy[i1]) if len(c1) >= 8 else 1.0
    valid = bool(gain > 0.2 and energy[i1] > 0 and np.isfinite(kappa))
    return Bank(filters[None], energy[None], deriv_info[None],
                np.array([max(gain, 0.2)]), np.array([max(kappa, 0.5)]), np.array([valid]))


def stack_banks(banks: list[Bank]) -> Bank:
    return Bank(*(np.concatenate([getattr(b, f) for b in banks]) for f in Bank.__dataclass_fields__))


@dataclass
class KalmanState:
    amplitude: np.ndarray  # [ch] ratio to baseline
    latency: np.ndarray  # [ch] ratio to baseline
    amplitude_sd: np.ndarray
    latency_sd: np.ndarray


class GridKalman:
    """Kalman filter of the amplitude ratio for every latency ratio on the grid, with the latency a hidden
    Markov chain over the grid: the exact Bayesian filter of (a, s) for this model (conditionally Gaussian).

    Per sweep, given s = s_j, the sweep's likelihood in a is Gaussian with mean y_j = c(s_j) / g and variance
    r_j = kappa / (g^2 E_j), so each grid point runs a scalar Kalman update of a, and its weight is multiplied by
    the marginal likelihood  exp(y_j^2 / 2 r_j) sqrt(r_j / S_j) exp(-(y_j - m_j)^2 / 2 S_j),  S_j = v_j + r_j.
    Dynamics per sweep: a random walk of SD q_a; the latency moves one grid step (0.01) with probability
    p_step each way, or jumps anywhere with probability p_jump (acute changes). Unlike a linearised (extended)
    filter it cannot lock onto a wrong latency when the response shrinks and moves at once."""

    def __init__(self, n_channels: int, q_a: float = 0.01, p_step: float = 0.05, p_jump: float = 1e-3):
        n_s = len(S_GRID)
        self.q_a = q_a
        trans = np.eye(n_s) * (1 - 2 * p_step) + np.eye(n_s, k=1) * p_step + np.eye(n_s, k=-1) * p_step
        trans[0, 0] += p_step
        trans[-1, -1] += p_step
        self.trans = (1 - p_jump) * trans + p_jump / n_s  # columns: from; rows: to
        self.n_channels = n_channels
        self.reset(np.arange(n_channels))

    def reset(self, ch: int | np.ndarray) -> None:
        ch = np.atleast_1d(ch)
        if not hasattr(self, "w"):
            n_s = len(S_GRID)
            self.w = np.zeros((self.n_channels, n_s))
            self.m = np.ones((self.n_channels, n_s))
            self.v = np.full((self.n_channels, n_s), 0.05**2)
        prior = np.exp(-0.5 * ((S_GRID - 1.0) / 0.01) ** 2)
        self.w[ch] = prior / prior.sum()
        self.m[ch] = 1.0
        self.v[ch] = 0.05**2

    def update(self, bank: Bank, c: np.ndarray, accepted: np.ndarray) -> None:
        """c: bank outputs [ch, n_s] of this sweep."""
        ch = np.flatnonzero(accepted & bank.valid)
        if len(ch) == 0:
            return
        w, m, v = self.w[ch], self.m[ch], self.v[ch]
        # Predict: latency transition with moment matching of the amplitude Gaussians, then amplitude walk.
        wm, wq = w * m, w * (v + m**2)
        w = w @ self.trans.T
        safe = np.maximum(w, 1e-300)
        m = (wm @ self.trans.T) / safe
        v = np.maximum((wq @ self.trans.T) / safe - m**2, 1e-12) + self.q_a**2
        # Update every latency hypothesis with its own amplitude measurement.
        g = bank.gain[ch, None]
        y = c[ch] / g
        r = bank.kappa[ch, None] / (g**2 * bank.energy[ch])
        s_tot = v + r
        logl = y**2 / (2 * r) + 0.5 * np.log(r / s_tot) - (y - m) ** 2 / (2 * s_tot)
        gain = v / s_tot
        m = m + gain * (y - m)
        v = (1 - gain) * v
        logw = np.log(safe) + logl
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        self.w[ch] = w / w.sum(axis=1, keepdims=True)
        self.m[ch], self.v[ch] = m, v

    def state(self) -> KalmanState:
        w, m, v = self.w, self.m, self.v
        a = np.sum(w * m, axis=1)
        a_var = np.sum(w * (v + m**2), axis=1) - a**2
        s = w @ S_GRID
        s_var = w @ S_GRID**2 - s**2
        return KalmanState(a, s, np.sqrt(np.maximum(a_var, 0)), np.sqrt(np.maximum(s_var, 0)))


@dataclass
class WindowEstimates:
    """Per channel and window length: estimates over the last n accepted sweeps."""

    n: np.ndarray  # [n_w]
    valid: np.ndarray  # [ch, n_w]: the window fits since the last reset
    amplitude: np.ndarray  # [ch, n_w] ratio
    amplitude_se: np.ndarray
    latency: np.ndarray  # [ch, n_w] ratio
    latency_se: np.ndarray
    zsq: np.ndarray  # [ch, n_w, n_s]: squared z of a positive amplitude fitted at each latency on the grid
    ref_amplitude: np.ndarray  # [ch, n_w]: amplitude over the sweeps just before the window (NaN: none)
    ref_amplitude_se: np.ndarray

    def latency_lr(self, level: float) -> np.ndarray:
        """[ch, n_w] log-likelihood-ratio statistic (x2) for latency above `level` against at or below it:
        the best fit with s > level minus the best with s <= level. Unlike (s - level) / se it stays small
        when the response is too weak to place (a maximum over latencies of noise alone)."""
        above = S_GRID > level + 1e-9
        hi = self.zsq[..., above].max(axis=-1) if above.any() else np.zeros(self.zsq.shape[:2])
        lo = self.zsq[..., ~above].max(axis=-1) if (~above).any() else np.zeros(self.zsq.shape[:2])
        return np.asarray(hi - lo)


class WindowTest:
    """Cumulative sums of the bank outputs, so every window ending at the newest sweep costs O(n_s).

    Each window also gets a reference: the amplitude over the `ref_length` accepted sweeps just before it
    (at least `ref_min`, none reaching back past the last reset), or the baseline itself (1, with the
    baseline's own uncertainty) when the window starts at the baseline — what an acute change is measured
    against."""

    def __init__(self, n_channels: int, lengths: np.ndarray = WINDOW_LENGTHS, ref_length: int = 256,
                 ref_min: int = 32):
        self.lengths = np.asarray(lengths)
        self.ref_length, self.ref_min = ref_length, ref_min
        self.size = int(self.lengths.max()) + ref_length + 1
        self.baseline_se = np.zeros(n_channels)  # amplitude-ratio SE of the baseline level
        n_s = len(S_GRID)
        self.s1 = np.zeros((n_channels, self.size, n_s))
        self.s2 = np.zeros((n_channels, self.size, n_s))
        self.count = np.zeros(n_channels, dtype=np.int64)
        self.start = np.zeros(n_channels, dtype=np.int64)

    def push(self, c: np.ndarray, accepted: np.ndarray) -> None:
        ch = np.flatnonzero(accepted)
        now = self.count[ch] % self.size
        nxt = (self.count[ch] + 1) % self.size
        self.s1[ch, nxt] = self.s1[ch, now] + c[ch]
        self.s2[ch, nxt] = self.s2[ch, now] + c[ch] ** 2
        self.count[ch] += 1

    def reset(self, ch: int | np.ndarray) -> None:
        """Windows of these channels start afresh from the next sweep (after a state change)."""
        self.start[ch] = self.count[ch]

    @staticmethod
    def _posterior(sum1: np.ndarray, sum2: np.ndarray, nn: np.ndarray, bank: Bank, log_prior: np.ndarray
                   ) -> tuple[np.ndarray, ...]:
        """Window estimates with the latency marginalised: for sums over windows of nn sweeps [ch, w, n_s],
        (amplitude, its SE, latency, its SD, zsq) where amplitude and latency are posterior means over the
        latency grid. Taking the best-fitting latency instead would bias a weak or absent response upwards
        by the maximum of many noisy fits; the prior (centred on the tracked latency) limits the search."""
        mean = sum1 / nn
        energy = bank.energy[:, None, :]
        model_var = bank.kappa[:, None, None] / energy  # one sweep's c(s) variance under the baseline noise
        scatter = np.maximum(sum2 / nn - mean**2, 0.0) * nn / np.maximum(nn - 1, 1)
        var = model_var * np.maximum(1.0, scatter / model_var) / nn  # of the window mean, per latency
        zsq = np.where(mean > 0, mean**2 / var, 0.0)
        logw = log_prior[:, None, :] + 0.5 * zsq
        logw -= logw.max(axis=-1, keepdims=True)
        w = np.exp(logw)
        w /= w.sum(axis=-1, keepdims=True)
        g = bank.gain[:, None, None]
        amp_s = mean / g
        amp = np.sum(w * amp_s, axis=-1)
        amp_se = np.sqrt(np.sum(w * (var / g**2 + (amp_s - amp[..., None]) ** 2), axis=-1))
        lat = w @ S_GRID
        lat_sd = np.sqrt(np.maximum(w @ S_GRID**2 - lat**2, 0.0))
        return amp, amp_se, lat, lat_sd, zsq

    def estimates(self, bank: Bank, prior_center: np.ndarray | None = None,
                  prior_sd: np.ndarray | None = None) -> WindowEstimates:
        """Estimates for every window length ending at the newest sweep. The latency prior: a normal
        around prior_center (default 1) with SD prior_sd (at least 0.03), plus 1 % spread over the grid
        so that an acute jump can still be found."""
        n_ch = len(self.count)
        ln = self.lengths
        center = np.ones(n_ch) if prior_center is None else np.asarray(prior_center)
        sd = np.full(n_ch, 0.03) if prior_sd is None else np.maximum(np.asarray(prior_sd), 0.03)
        dens = np.exp(-0.5 * ((S_GRID[None, :] - center[:, None]) / sd[:, None]) ** 2)
        dens /= dens.sum(axis=1, keepdims=True)
        log_prior = np.log(0.99 * dens + 0.01 / len(S_GRID))
        now = (self.count % self.size)[:, None]
        past = (self.count[:, None] - ln[None, :]) % self.size
        rows = np.arange(n_ch)[:, None]
        nn = ln[None, :, None].astype(float)
        sum1 = self.s1[rows, now] - self.s1[rows, past]  # [ch, n_w, n_s]
        sum2 = self.s2[rows, now] - self.s2[rows, past]
        amp, amp_se, latency, lat_se, zsq = self._posterior(sum1, sum2, nn, bank, log_prior)
        avail = (self.count - self.start)[:, None]
        valid = ln[None, :] <= avail
        # Reference before each window: up to ref_length sweeps.
        m_ref = np.minimum(self.ref_length, avail - ln[None, :])  # [ch, n_w]
        has_ref = m_ref >= self.ref_min
        m_safe = np.maximum(m_ref, 1)
        past2 = (self.count[:, None] - ln[None, :] - m_safe) % self.size
        r1 = self.s1[rows, past] - self.s1[rows, past2]
        r2 = self.s2[rows, past] - self.s2[rows, past2]
        rm, rse, _, _, _ = self._posterior(r1, r2, m_safe[..., None].astype(float), bank, log_prior)
        at_baseline = (self.start == 0)[:, None] & (avail - ln[None, :] == 0)
        ref_amp = np.where(has_ref, rm, np.where(at_baseline, 1.0, np.nan))
        ref_se = np.where(has_ref, rse, np.where(at_baseline, self.baseline_se[:, None], np.nan))
        return WindowEstimates(ln, valid, amp, amp_se, latency, lat_se, zsq, ref_amp, ref_se)


class Tracker:
    """Template tracker for all channels of a recording (the evaluator drives it one sweep at a time)."""

    def estimates(self) -> WindowEstimates:
        """The window estimates now, with the latency prior from the Kalman state."""
        assert self.bank is not None
        ks = self.kalman.state()
        return self.windows.estimates(self.bank, ks.latency, ks.latency_sd)

    def __init__(self, fs: float, n_samples: int, pre_samples: int, fit_start: int, band_hi_hz: float,
                 n_channels: int, q_a: float = 0.01):
        self.fs, self.pre = float(fs), int(pre_samples)
        q = decimation_for(fs, band_hi_hz)
        self.idx = np.arange(max(fit_start, pre_samples + 1), n_samples, q)
        self.n_channels = n_channels
        self.bank: Bank | None = None
        self.q_a = q_a
        self.kalman = GridKalman(n_channels, q_a)
        self.windows = WindowTest(n_channels)
        self.last_single = np.full((n_channels, 2), np.nan)  # (a, s) from this sweep alone

    def set_baseline(self, template: np.ndarray, half_a: np.ndarray, half_b: np.ndarray,
                     stack: np.ndarray) -> None:
        """template, halves: [ch, n_samples]; stack: [k, ch, len(idx)] recent baseline sweeps (decimated)."""
        banks = [build_bank(template[c], half_a[c], half_b[c], stack[:, c], self.fs, self.pre, self.idx)
                 for c in range(self.n_channels)]
        self.bank = stack_banks(banks)
        self.kalman = GridKalman(self.n_channels, self.q_a)
        self.windows = WindowTest(self.n_channels)
        i1 = int(np.argmin(np.abs(S_GRID - 1.0)))
        n_base = max(len(stack), 1)
        self.windows.baseline_se = np.sqrt(self.bank.kappa / self.bank.energy[:, i1] / n_base) / self.bank.gain

    def update(self, sweep: np.ndarray, accepted: np.ndarray) -> None:
        """One conditioned sweep [ch, n_samples]; only accepted channels move."""
        if self.bank is None:
            return
        ok = np.asarray(accepted, dtype=bool) & self.bank.valid
        x = sweep[:, self.idx]
        c = np.einsum("csn,cn->cs", self.bank.filters, x)
        self.windows.push(c, ok)
        self.kalman.update(self.bank, c, ok)
        i = np.argmax(np.where(c > 0, c**2 * self.bank.energy, 0.0), axis=1)
        single = np.stack([c[np.arange(len(i)), i] / self.bank.gain, S_GRID[i]], -1)
        self.last_single = np.where(ok[:, None], single, np.nan)
