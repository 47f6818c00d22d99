"""One-time work a load-generator process would otherwise pay inside its
first measured registration.

A fresh shard's first registration cost ~8 ms of CPU against ~2.5 for the
next ones (in process, load ~3): libsodium's bindings load on the first X25519,
h2 builds the connection preface once, the first Noise records and the first
map message meet cold code. At mesh 100 over 2 shards that is ~5 ms over 50
registrations each, charged to every registration's CPU though no client
protocol work is in it. A shard calls `warm_up` before it reports ready, as
it already imports its modules then; nothing goes over the network.
"""

from __future__ import annotations

from bench.loadgen.decode import SharedDecodes, decode_json
from bench.loadgen.device import CAPVER
from bench.loadgen.h2client import ClientCodec
from server.protocol.keys import MachinePrivate
from server.protocol.mapframe import MapFrameEncoder
from server.protocol.noise import ClientHandshake, accept_initiation

__all__ = ["warm_up"]


def warm_up() -> None:
    """A Noise handshake and a record each way, an HTTP/2 opening and a map
    message decoded: in memory, against the server's own functions."""
    server_key = MachinePrivate.generate()
    client = ClientHandshake(MachinePrivate.generate(), server_key.public(), CAPVER)
    accepted = accept_initiation(server_key, client.initiation())
    transport = client.finish(accepted.response)
    accepted.transport.send(b"warm")
    transport.receive_data(accepted.transport.data_to_send())
    transport.send(b"warm")
    accepted.transport.receive_data(transport.data_to_send())
    ClientCodec().initiate()
    SharedDecodes(decode_json)(MapFrameEncoder().encode(b'{"Peers":[]}'))
