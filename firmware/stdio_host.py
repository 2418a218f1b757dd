# The host link as MicroPython sees it on both boards: this process's stdin/stdout, which is USB CDC on the
# RP2350 and a pseudo-terminal on the virtual board. stdin's readinto() waits for the whole buffer, so
# bytes are taken one at a time while poll says more are ready (command traffic is small; the data path
# only writes).
import select
import sys


class StdioHost:
    def __init__(self):
        self.inp = sys.stdin.buffer
        self.out = sys.stdout.buffer
        self._poll = select.poll()
        self._poll.register(self.inp, select.POLLIN)
        self._one = bytearray(1)

    def wait(self, timeout_ms):
        """Block until host bytes are available or timeout_ms passes (the idle loop's only wait)."""
        for _ in self._poll.ipoll(timeout_ms):
            return True
        return False

    def read(self, buf, off, limit):
        """Copy the host bytes available now (at most limit) into buf at off; returns the count. Never blocks."""
        n = 0
        poll = self._poll
        inp = self.inp
        one = self._one
        while n < limit:
            ready = False
            for _ in poll.ipoll(0):
                ready = True
            if not ready or inp.readinto(one) != 1:
                break
            buf[off + n] = one[0]
            n += 1
        return n

    def write(self, buf, off, n):
        self.out.write(buf, off, n)
