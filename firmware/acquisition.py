# The acquisition engine: validates a configuration against the board definition and the link budget,
# programs the ADS1299 chain, and moves DRDY-paced blocks from the board support to the host as data
# frames. step() is the hot path: it runs under micropython.heap_lock() and allocates nothing.
import framing
import messages as m
import micropython
from ads1299 import MUX
from frame_writer import FrameWriter

_CBOR_PREFIX_MAX = 19  # longest CBOR head of a data message: array, type, cfg, index, lead-off, bstr head
ENCODINGS = ("raw", "rice")  # configure's `encoding`: data (16) or data-rice (18) messages (SPEC 5.4.1)


class Config:
    def __init__(self, cfg_id, rate_hz, channels, gains, inputs, samples_per_frame, leadoff, pre=0, post=0,
                 encoding="raw", expected_pct=100):
        self.cfg_id = cfg_id
        self.encoding = encoding
        self.expected_pct = expected_pct  # rice: link.rice_expected_pct, the block size expected, % of raw
        self.rate_hz = rate_hz
        self.channels = channels
        self.gains = gains  # per selected channel
        self.inputs = inputs  # per selected channel
        self.samples_per_frame = samples_per_frame
        self.leadoff = leadoff
        self.pre = pre  # epoch mode: samples kept before each stimulus (0 with post 0: continuous)
        self.post = post  # epoch mode: samples kept from each stimulus on
    def block_bytes(self):
        """The samples' bytes in one frame at worst: a rice block is its mode byte and at most the raw samples."""
        return 3 * len(self.channels) * self.samples_per_frame + (1 if self.encoding == "rice" else 0)

    def wire_bytes_per_s(self):
        """The link load at worst (raw blocks), B/s (SPEC 5.3)."""
        frame = framing.OVERHEAD + _CBOR_PREFIX_MAX + self.block_bytes()
        return self.rate_hz * frame // self.samples_per_frame

    def expected_bytes_per_s(self):
        """The link load expected, B/s: with rice, blocks of expected_pct % of their worst case (SPEC 5.3)."""
        frame = framing.OVERHEAD + _CBOR_PREFIX_MAX + self.block_bytes() * self.expected_pct // 100
        return self.rate_hz * frame // self.samples_per_frame


def _per_channel(value, n, name, allowed):
    values = value if isinstance(value, list) else [value] * n
    if len(values) != n:
        raise m.ProtocolError(m.E_BAD_FIELD, "%s: %d values for %d channels" % (name, len(values), n))
    for v in values:
        if v not in allowed:
            raise m.ProtocolError(m.E_BAD_FIELD, "%s %r is not one of %r" % (name, v, allowed))
    return values


def parse_config(body, defn, cfg_id):
    """A Config from a CONFIGURE body, or ProtocolError saying exactly what is wrong."""
    adc = defn["adc"]
    n_all = adc["chips"] * adc["channels_per_chip"]
    rate = body.get("rate_hz")
    if rate not in adc["rates_hz"]:
        raise m.ProtocolError(m.E_BAD_FIELD, "rate_hz %r is not one of %r" % (rate, adc["rates_hz"]))
    channels = body.get("channels", list(range(n_all)))
    if (not isinstance(channels, list) or not channels or len(channels) > n_all
            or any(not isinstance(c, int) or c < 0 or c >= n_all for c in channels)
            or len(set(channels)) != len(channels)):
        raise m.ProtocolError(m.E_BAD_FIELD, "channels must be distinct integers 0..%d" % (n_all - 1))
    gains = _per_channel(body.get("gain", 24), len(channels), "gain", adc["gains"])
    inputs = _per_channel(body.get("input", "normal"), len(channels), "input", list(MUX.keys()))
    encoding = body.get("encoding", "raw")
    if encoding not in ENCODINGS:
        raise m.ProtocolError(m.E_BAD_FIELD, "encoding %r is not one of %r" % (encoding, ENCODINGS))
    rice = encoding == "rice"
    spf = body.get("samples_per_frame", 32)
    max_spf = (framing.MAX_PAYLOAD - _CBOR_PREFIX_MAX - (1 if rice else 0)) // (3 * len(channels))
    if not isinstance(spf, int) or spf < 1 or spf > max_spf:
        raise m.ProtocolError(m.E_BAD_FIELD, "samples_per_frame must be 1..%d for %d channels (max payload %d bytes)"
                              % (max_spf, len(channels), framing.MAX_PAYLOAD))
    leadoff = body.get("leadoff", True)
    if not isinstance(leadoff, bool):
        raise m.ProtocolError(m.E_BAD_FIELD, "leadoff must be true or false")
    pre = post = 0
    epochs = body.get("epochs")
    if epochs is not None:
        if (not isinstance(epochs, dict) or not isinstance(epochs.get("pre_ms"), int)
                or not isinstance(epochs.get("post_ms"), int) or not 0 <= epochs["pre_ms"] <= 50
                or not 1 <= epochs["post_ms"] <= 500):
            raise m.ProtocolError(m.E_BAD_FIELD, "epochs must be {pre_ms: 0..50, post_ms: 1..500}")
        pre = epochs["pre_ms"] * rate // 1000
        post = epochs["post_ms"] * rate // 1000
    # Raw: the load is known and must fit. Rice: the load depends on the signal; the configuration is
    # accepted when the load expected at link.rice_expected_pct of raw fits. Blocks the link then cannot
    # carry (a signal that does not compress) hold up the loop until the DMA ring overruns: the samples are
    # counted lost (overrun event, a gap in first_index), never dropped silently (SPEC 5.3).
    pct = defn["link"].get("rice_expected_pct", 100) if rice else 100
    cfg = Config(cfg_id, rate, channels, gains, inputs, spf, leadoff, pre, post, encoding, pct)
    need = cfg.expected_bytes_per_s()
    budget = defn["link"]["budget_bytes_per_s"]
    if need > budget:
        raise m.ProtocolError(m.E_LINK_BUDGET, "needs %d B/s%s, the link budget is %d B/s: %d B/s (%d %%) over"
                              % (need, " (rice, expected at %d %% of raw)" % pct if rice else "", budget,
                                 need - budget, (need - budget) * 100 // budget))
    return cfg


class Acquisition:
    def __init__(self, bsp, adc, link, cfg, chips, arena=None):
        self.bsp = bsp
        self.adc = adc
        self.link = link
        self.cfg = cfg
        self.writer = FrameWriter(chips, cfg.channels, cfg.samples_per_frame, m.SCHEMA, arena, cfg.encoding == "rice")
        self.running = False
        self.next_index = 0  # index of the next sample expected from the board support
        self.blocks = 0
        self.samples_lost = 0  # overruns seen in the DMA block indices
        self.latched = 0  # pulse latches in the most recent block
        # epoch mode: send a block only if it overlaps [stimulus - pre, stimulus + post) of a known stimulus
        self.epochs = cfg.post > 0
        self.windows = []  # stimulus indices whose windows are not over yet
        self.skip_start = 0
        self.skipped = 0  # samples skipped on purpose since the last block sent
        self.chips = chips
        self.program_adc()

    def program_adc(self):
        """Write the configuration into the ADS1299 chain (also after the impedance check reprogrammed it)."""
        cfg = self.cfg
        # every channel gets a (gain, mux, enabled) triple; unselected ones are powered down
        per = [(24, "shorted", False)] * (self.chips * 8)
        for i, ch in enumerate(cfg.channels):
            per[ch] = (cfg.gains[i], cfg.inputs[i], True)
        self.adc.stop()
        self.adc.configure(cfg.rate_hz, per, leadoff=cfg.leadoff)

    def start(self):
        # The block reader must be listening before conversions start (on the RP2350 it owns SCLK).
        self.next_index = 0
        self.bsp.start_stream(self.writer.raw, self.cfg.rate_hz)
        self.adc.start()
        self.running = True

    def stop(self):
        self.bsp.stop_stream()  # gives SCLK back to the SPI peripheral before the SDATAC command
        self.adc.stop()
        self.running = False

    def window(self, index):
        """Epoch mode: a stimulus is armed at index (ahead of its pre-stimulus samples): keep its window."""
        self.windows.append(index)

    def step(self):
        """Read one DMA block and send it as one data frame (in epoch mode only when it overlaps a stimulus
        window). The block read and the frame build allocate nothing."""
        w = self.writer
        link = self.link
        h = self.bsp.head
        micropython.heap_lock()
        try:
            self.latched = self.bsp.read_block(w.raw)
        finally:
            micropython.heap_unlock()
        first = (h[0] << 24) | (h[1] << 16) | (h[2] << 8) | h[3]
        if self.epochs and not self._wanted(first, first + w.nsamp):
            if not self.skipped:
                self.skip_start = first
            self.skipped += w.nsamp
        else:
            if self.skipped:  # announced before the data, so the host never counts it as lost
                link.event({"kind": "skip", "index": self.skip_start, "count": self.skipped})
                self.skipped = 0
            micropython.heap_lock()
            try:
                start = w.build(h, self.cfg.cfg_id, link.tx_seq)
                link.tx_seq = (link.tx_seq + 1) & 0xFFFF
                self.bsp.host_write(w.frame, start, w.end - start)
            finally:
                micropython.heap_unlock()
        if first != self.next_index & 0xFFFFFFFF:
            lost = (first - self.next_index) & 0xFFFFFFFF
            self.samples_lost += lost
            link.event({"kind": "overrun", "index": self.next_index, "lost": lost})
            self.next_index += lost
        self.next_index += w.nsamp
        self.blocks += 1

    def _wanted(self, lo, hi):
        """Does the block [lo, hi) overlap a stimulus window? Forgets the windows that are over."""
        pre, post = self.cfg.pre, self.cfg.post
        wanted = False
        keep = []
        for index in self.windows:
            if index + post <= lo:
                continue
            keep.append(index)
            if index - pre < hi:
                wanted = True
        self.windows = keep
        return wanted

