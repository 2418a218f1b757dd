"""Shared helpers of the board tools (`ionm flash`, `ionm calibrate`, `ionm bench`): a tool session on a
board's protocol link that records fixed-length captures, the host side of the calibration, signal
analysis with known truth, the bench generator over VISA, the bench limits and a text progress bar."""
