# Board entry point (and the virtual board's script). Everything lives in app.py, imported from the slot
# that bootslot chooses.
import micropython

micropython.kbd_intr(-1)  # the link is binary: a 0x03 byte must not raise KeyboardInterrupt

import bootslot  # noqa: E402

slot, rolled_back = bootslot.select()

# The acquisition's block arena is allocated before the firmware's modules are loaded, while the heap is
# whole: loading them (compiling them, on the unix port) leaves it too fragmented for 8 kB in one piece.
import gc  # noqa: E402

import boardcfg  # noqa: E402

defn = boardcfg.load()
gc.collect()
arena = bytearray(defn["mcu"]["block_arena_bytes"])
import app  # noqa: E402

app.main(slot, rolled_back, defn, arena)
