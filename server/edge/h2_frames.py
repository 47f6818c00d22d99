"""The DATA and HEADERS frames of a control response, framed straight onto
the connection's output with the codec's windows and stream states charged
(h2_codec.py): no frame objects on the path every map delta takes.

Sans-IO: frames are appended to, or returned as, bytes for the caller to seal.
"""

from __future__ import annotations

from server.edge.control_types import ControlResponse
from server.edge.h2_codec import CodecStream, ServerCodec
from server.edge.h2_wire import DATA, FRAME_HEAD, Flag
from server.protocol.h2head import response_head

__all__ = ["DATA", "FRAME_HEAD", "frame_data", "headers_frame", "sendable", "whole_response"]


def sendable(conn: ServerCodec, stream_id: int) -> CodecStream | None:
    """The stream, if it and the connection are open for us to send on."""
    return conn.sendable(stream_id)


def frame_data(
    conn: ServerCodec,
    stream: CodecStream,
    stream_id: int,
    chunk: bytes,
    out: bytearray,
    *,
    end: bool = False,
) -> None:
    """The DATA frame onto `out`, its size charged to the windows; what the
    codec queued before (acks, updates) stays before. `end`: it ends our
    side of the stream (no empty DATA frame after it)."""
    if end:
        conn.end_local(stream_id, stream)
    size = len(chunk)
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
    out += conn.data_to_send()
    out += FRAME_HEAD.pack(size >> 8, size & 0xFF, DATA, Flag.END_STREAM if end else 0, stream_id)
    out += chunk


def headers_frame(
    conn: ServerCodec,
    stream_id: int,
    status: int,
    content_type: str,
    length: int | None,
    *,
    end: bool,
) -> bytes | None:
    """A response's HEADERS frame, ending the stream if `end` (None: the
    stream can no longer send); `length`: its content-length, None for a
    streaming response. The block is server/protocol/h2head.py's, which
    indexes nothing, so unless a table size update is owed
    (`conn.table_update_owed`) the frame may leave after frames queued
    later on other streams."""
    stream = conn.sendable(stream_id)
    if stream is None:
        return None
    block = response_head(status, content_type, length)
    return conn.headers_frame(stream_id, stream, block, end=end)


def whole_response(
    conn: ServerCodec, stream_id: int, response: ControlResponse, out: bytearray
) -> bool:
    """A response that is not streamed onto `out` (its HEADERS and, unless
    its body is empty, one DATA frame ending the stream), when the windows
    take all of the body now. False: nothing queued (a streaming response,
    a stream that can no longer send, or a body that must wait for window)."""
    stream = conn.sendable(stream_id)
    body = response.body
    size = len(body)
    if (
        response.stream is not None
        or stream is None
        or size
        > min(
            stream.outbound_flow_control_window,
            conn.outbound_flow_control_window,
            conn.max_outbound_frame_size,
        )
    ):
        return False
    block = response_head(response.status, response.content_type, size)
    frame = conn.headers_frame(stream_id, stream, block, end=not body)
    out += conn.data_to_send()
    out += frame
    if body:
        frame_data(conn, stream, stream_id, body, out, end=True)
    return True
