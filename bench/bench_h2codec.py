"""`python -m bench.bench_h2codec [--connections N]`: the server's HTTP/2
receive path of one registration, in process, by CPU clock: the control
connection's codec (server/edge/h2_codec.py) against h2 4.x configured as
the server ran it before (docs/bench/NOTE-regpath3.md's table).

A registration is a connection and two requests: the server makes its
connection and preface, then takes what a client sends in separate reads
(its preface and SETTINGS, the ACK of ours, each request's HEADERS and its
DATA), as the loader's h2 client writes them. Each server connection is
fresh and is fed the same client bytes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.settings

from server.edge.h2_codec import ServerCodec

WINDOW = 1 << 20
REQUESTS = (("/machine/register", 600), ("/machine/map", 900))


def client_reads() -> list[bytes]:
    """The client's writes of one registration, as the server reads them."""
    config = h2.config.H2Configuration(client_side=True)
    client = h2.connection.H2Connection(config=config)
    client.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.ENABLE_PUSH: 0}
    )
    client.initiate_connection()
    server = ServerCodec(WINDOW)
    server.initiate()
    reads = [client.data_to_send()]
    client.receive_data(server.data_to_send())
    reads.append(client.data_to_send())  # the ACK of our settings
    for n, (path, size) in enumerate(REQUESTS):
        stream_id = 2 * n + 1
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "127.0.0.1:8080"),
            (":path", path),
            ("content-length", str(size)),
        ]
        client.send_headers(stream_id, headers)
        reads.append(client.data_to_send())
        client.send_data(stream_id, b"x" * size, end_stream=True)
        reads.append(client.data_to_send())
    return reads


def _codec(reads: list[bytes]) -> None:
    server = ServerCodec(WINDOW)
    server.initiate()
    server.data_to_send()
    for data in reads:
        server.receive_data(data)
    server.data_to_send()


_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding="utf-8",
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _h2(reads: list[bytes]) -> None:
    conn = h2.connection.H2Connection(config=_H2_CONFIG)
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        },
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW)
    conn.data_to_send()
    for data in reads:
        for event in conn.receive_data(data):
            length = getattr(event, "flow_controlled_length", None)
            if length is not None:
                conn.acknowledge_received_data(length, event.stream_id)  # type: ignore[attr-defined]
    conn.data_to_send()


def _per_registration(run: Callable[[list[bytes]], None], reads: list[bytes], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        run(reads)
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reads = client_reads()
    for _ in range(args.rounds):
        h2_us = _per_registration(_h2, reads, args.connections)
        codec_us = _per_registration(_codec, reads, args.connections)
        load = os.getloadavg()[0]
        print(
            f"{time.strftime('%H:%M:%S', time.gmtime())} HTTP/2 receive path per registration"
            f" ({args.connections} connections): h2 {h2_us:.0f} us, codec {codec_us:.0f} us,"
            f" load {load:.1f}"
        )


if __name__ == "__main__":
    main()
