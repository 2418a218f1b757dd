# The host link: frames in and out with the protocol codec. Control traffic only; the data frames are
# built by frame_writer (the hot path) and share this link's sequence counter.
import cbor
import framing
import messages as m

_RX_CHUNK = 256  # bytes read from the host per poll


class Link:
    def __init__(self, bsp, max_payload):
        self.bsp = bsp
        self.decoder = framing.Decoder(m.SCHEMA, max_payload)
        self.rx = bytearray(_RX_CHUNK)
        self.rx_view = memoryview(self.rx)
        self.tx_seq = 0
        self.rx_seq = -1
        self.rx_seq_gaps = 0
        self.bad_messages = 0

    def poll(self):
        """Messages that arrived since the last call: a list of (type, rid, body), already validated as
        envelopes. Malformed ones are answered with an error and counted, never raised."""
        n = self.bsp.host_read(self.rx)
        if not n:
            return ()
        out = []
        for seq, payload in self.decoder.feed(self.rx_view[:n]):
            if self.rx_seq >= 0 and seq != (self.rx_seq + 1) & 0xFFFF:
                self.rx_seq_gaps += 1
            self.rx_seq = seq
            try:
                msg = cbor.loads(payload)
            except Exception as exc:  # any decode failure is the sender's problem, reported as such
                self.bad_messages += 1
                self.error(0, m.E_MALFORMED, "payload is not CBOR: %s" % exc)
                continue
            if (not isinstance(msg, list) or len(msg) != 3 or not isinstance(msg[0], int)
                    or not isinstance(msg[1], int) or not isinstance(msg[2], dict)):
                self.bad_messages += 1
                self.error(0, m.E_MALFORMED, "a request is [type, rid, {body}]")
                continue
            out.append(msg)
        return out

    def send(self, msg):
        frame = framing.encode(cbor.dumps(msg), self.tx_seq, m.SCHEMA)
        self.tx_seq = (self.tx_seq + 1) & 0xFFFF
        self.bsp.host_write(frame, 0, len(frame))

    def ack(self, rid, body):
        self.send([m.ACK, rid, body])

    def error(self, rid, code, detail):
        self.send([m.ERROR, rid, m.error_body(code, detail)])

    def event(self, body):
        self.send([m.EVENT, 0, body])
