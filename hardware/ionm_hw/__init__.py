"""Simulated hardware for the reference board: ADS1299 chain, stimulator, virtual patient, signal generator."""
