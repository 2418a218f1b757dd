"""Building blocks of the virtual patient (hardware/ionm_hw/patient.py).

- montage: which derivation each amplifier channel records, and its background noise levels
- responses: evoked-response definitions (SSEP, M-wave, TcMEP), recruitment, per-patient draws
- scenario: scenario files, defaults, and the scripted timeline (truth) they describe
- noise: random-access background noise (EEG/EMG/floor) and mains
- interference: cautery, electrode pops, neurotonic EMG bursts, stimulus artefact, lead-off
- freerun: continuous free-running EMG (MUPs, spikes, bursts, neurotonic trains, A-trains, cautery,
  stimulus artefacts, transection) rendered whole from a seed, with the scripted truth of every event

Everything random is drawn from RNGs keyed by (seed, stream, position), never from a running
generator, so any sample range can be rendered on its own and block boundaries do not matter.
"""
