# Board entry point (and the virtual board's script). Everything lives in app.py.
import micropython

micropython.kbd_intr(-1)  # the link is binary: a 0x03 byte must not raise KeyboardInterrupt

import app  # noqa: E402

app.main()
