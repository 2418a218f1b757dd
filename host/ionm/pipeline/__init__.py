"""The evoked-potential pipeline: plain numpy/scipy functions and small stateful trackers over sweeps.

Stages, one module each (data flows top to bottom; every stage takes arrays shaped [..., n_samples] or
[n_channels, n_samples] for one sweep, so the live path and the offline path are the same code):

- conditioning: counts -> µV with the board calibration, stimulus blanking, mains cancellation,
  per-modality band-pass (zero-phase within one sweep), artifact rejection with per-channel counts.
- averaging: block / moving-window / exponentially weighted averages with split-half noise and SNR.
- tracker: the fast change tracker (template bank per sweep, Kalman state of amplitude and latency,
  sequential window test for decisions).
- peaks: named components per modality, automatic marking with manual override; MEP trial features.
- alerts: baselines, ACNS criteria, persistence, states normal/warning/alert, global vs focal scope.
- evaluator: ties the stages together for one recording, causally, sweep by sweep.
- sweepfile: the .npz interchange format (read, validate, write).
- emg: free-running EMG (continuous, not sweeps): spikes, bursts, neurotonic trains, A-trains, cautery;
  causal and block-size independent. edffile reads continuous EDF/EDF+/BDF recordings for it.

docs/EVALUATION.md describes the method and its assumptions.
"""
