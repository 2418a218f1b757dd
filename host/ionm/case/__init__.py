"""The case record: the append-only store with its audit chain, the timeline read from it, and what is made
from a recorded case (replay source, EDF+/CSV export, PDF report). Knows nothing of the web console."""
