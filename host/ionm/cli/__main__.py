"""`python -m ionm.cli COMMAND ...`: the same as `ionm COMMAND ...` (for a venv whose scripts are not on PATH)."""

import sys

from ionm.cli import main

sys.exit(main())
