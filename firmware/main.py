# Board entry point (and the virtual board's script). Everything lives in app.py, imported from the slot
# that bootslot chooses.
import micropython

micropython.kbd_intr(-1)  # the link is binary: a 0x03 byte must not raise KeyboardInterrupt

import bootslot  # noqa: E402

slot, rolled_back = bootslot.select()

import app  # noqa: E402

app.main(slot, rolled_back)
