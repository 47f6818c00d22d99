"""server/edge/h2_codec.py takes what a real tailscaled 1.96.4 sends on its
control connection (tests/fixtures/h2_client_1.96.4.json: its SETTINGS and
1 GiB connection window, register and map requests, window updates and a
poll cancelled with RST_STREAM) as h2, the library it replaced, does: the
same requests, bodies and resets, fed as read, byte at a time and whole."""

from __future__ import annotations

import json
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from server.edge.h2_codec import ServerCodec
from server.edge.h2_wire import DataReceived, RequestReceived, StreamReset

CAPTURE = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "h2_client_1.96.4.json").read_text()
)
CONNECTIONS = [[bytes.fromhex(c) for c in reads] for reads in CAPTURE["connections"]]

Seen = tuple[list[tuple[int, tuple[tuple[str, str], ...]]], dict[int, bytes], list[tuple[int, int]]]


def _codec(reads: list[bytes]) -> Seen:
    server = ServerCodec(1 << 20)
    server.initiate()
    requests, bodies, resets = [], {}, []
    for data in reads:
        for event in server.receive_data(data):
            if isinstance(event, RequestReceived):
                requests.append((event.stream_id, event.headers))
            elif isinstance(event, DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
            elif isinstance(event, StreamReset):
                resets.append((event.stream_id, event.code))
    assert server.open
    return requests, bodies, resets


def _h2(reads: list[bytes]) -> Seen:
    config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    server = h2.connection.H2Connection(config=config)
    server.initiate_connection()
    requests, bodies, resets = [], {}, []
    for data in reads:
        for event in server.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                headers = tuple((str(k), str(v)) for k, v in event.headers or [])
                requests.append((event.stream_id or 0, headers))
            elif isinstance(event, h2.events.DataReceived):
                sid = event.stream_id or 0
                bodies[sid] = bodies.get(sid, b"") + (event.data or b"")
                server.acknowledge_received_data(event.flow_controlled_length or 0, sid)
            elif isinstance(event, h2.events.StreamReset):
                resets.append((event.stream_id or 0, int(event.error_code or 0)))
    return requests, bodies, resets


@pytest.mark.parametrize("reads", CONNECTIONS)
def test_a_real_clients_connection_is_taken_as_h2_takes_it(reads: list[bytes]) -> None:
    seen = _codec(reads)
    assert seen == _h2(reads)
    requests, bodies, _ = seen
    paths = [dict(headers)[":path"] for _, headers in requests]
    assert paths[0] == "/machine/register" and set(paths[1:]) == {"/machine/map"}
    for stream_id, headers in requests:
        assert len(bodies[stream_id]) == int(dict(headers)["content-length"])


@pytest.mark.parametrize("reads", CONNECTIONS)
def test_a_real_clients_bytes_byte_at_a_time_and_whole(reads: list[bytes]) -> None:
    wire = b"".join(reads)
    expected = _codec(reads)
    assert _codec([wire[i : i + 1] for i in range(len(wire))]) == expected
    assert _codec([wire]) == expected


def test_the_capture_has_a_cancelled_poll() -> None:
    _, _, resets = _codec(CONNECTIONS[0])
    assert resets == [(5, 8)]  # RST_STREAM(CANCEL)
