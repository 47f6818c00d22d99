"""The HTTP/2 frames the control connection writes itself, not through h2:
a stream's DATA and a response's HEADERS. h2's own path (two state
machines, a frame object, its serialisation) cost more than the rest of a
mesh join's fan-out to each session. Framed only where h2 would send the
very same bytes; the windows and stream states h2 keeps are still charged
and moved, so h2 stays in step for whatever it frames itself.

Sans-IO: frames are appended to, or returned as, bytes for the caller to seal.
"""

from __future__ import annotations

import struct

import h2.connection
import h2.stream

from server.protocol.h2head import response_head

__all__ = ["DATA", "FRAME_HEAD", "frame_data", "headers_frame", "sendable"]

# An HTTP/2 frame header (RFC 9113 §4.1): 24-bit length, type, flags, stream id.
FRAME_HEAD = struct.Struct(">HBBBL")
DATA = 0x0
_HEADERS = 0x1
_END_STREAM = 0x1
_END_HEADERS = 0x4
# Stream states in which a server may send DATA (RFC 9113 §5.1).
_SENDING = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)


def sendable(conn: h2.connection.H2Connection, stream_id: int) -> h2.stream.H2Stream | None:
    """The stream, if it and the connection are open for us to send on
    (the frames of this module go only there)."""
    stream = conn.streams.get(stream_id)
    if (
        stream is None
        or stream.state_machine.state not in _SENDING
        or conn.state_machine.state is not h2.connection.ConnectionState.SERVER_OPEN
    ):
        return None
    return stream


def frame_data(
    conn: h2.connection.H2Connection,
    stream: h2.stream.H2Stream,
    stream_id: int,
    chunk: bytes,
    out: bytearray,
    *,
    end: bool = False,
) -> None:
    """The DATA frame onto `out`, its size charged to the windows h2 keeps;
    what h2 queued before stays before. Ending the stream on it saves the
    empty DATA frame h2's end_stream would add (and h2's path for it); the
    stream's state machine still takes the transition."""
    if end:
        stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
    size = len(chunk)
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    out += conn.data_to_send()
    out += FRAME_HEAD.pack(size >> 8, size & 0xFF, DATA, _END_STREAM if end else 0, stream_id)
    out += chunk


def headers_frame(
    conn: h2.connection.H2Connection,
    stream_id: int,
    status: int,
    content_type: str,
    length: int | None,
    *,
    end: bool,
) -> bytes | None:
    """A response's HEADERS frame, ending the stream if `end` (None: left to
    h2); `length`: its content-length, None for a streaming response. h2's
    stream state machine takes the transitions; the block is
    server/protocol/h2head.py's, which leaves the HPACK dynamic tables alone,
    so h2's encoder stays in step with the client. Made only where h2 would
    send the very same headers: an open stream, an open connection, no table
    size update owed. As it touches no HPACK table, the frame may leave after
    frames queued later on other streams."""
    h2_stream = sendable(conn, stream_id)
    if h2_stream is None or getattr(conn.encoder.header_table, "resized", True) is not False:
        return None
    try:
        block = response_head(status, content_type, length)
    except ValueError:  # not a three-digit status, or not ASCII: h2 decides
        return None
    if len(block) > conn.max_outbound_frame_size:
        return None
    h2_stream.state_machine.process_input(h2.stream.StreamInputs.SEND_HEADERS)
    flags = _END_HEADERS
    if end:
        h2_stream.state_machine.process_input(h2.stream.StreamInputs.SEND_END_STREAM)
        flags |= _END_STREAM
    size = len(block)
    return FRAME_HEAD.pack(size >> 8, size & 0xFF, _HEADERS, flags, stream_id) + block
