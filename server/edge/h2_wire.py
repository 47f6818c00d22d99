"""HTTP/2 (RFC 9113) as the control connection's server codec sees it: the
frame header, frame types, flags, error codes, settings, the events the
codec hands up and its error taxonomy. Values only; the machine is
h2_codec.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CONTINUATION",
    "DATA",
    "FRAME_HEAD",
    "GOAWAY",
    "HEADERS",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "Event",
    "Flag",
    "H2Error",
    "RemoteProtocolError",
    "RequestReceived",
    "Setting",
    "SettingsChanged",
    "StreamReset",
    "WindowUpdated",
    "frame_head",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# 24-bit length (as 16 + 8 bits), type, flags, stream id (its top bit reserved).
FRAME_HEAD = struct.Struct(">HBBBL")
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
MIN_FRAME_SIZE = 1 << 14
MAX_FRAME_SIZE = (1 << 24) - 1
DEFAULT_TABLE_SIZE = 4096

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9


class Flag:
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6
    ENABLE_CONNECT_PROTOCOL = 0x8


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return FRAME_HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


class H2Error(Exception):
    """Root of the codec's errors."""


class RemoteProtocolError(H2Error):
    """The client broke the protocol; the codec has queued its GOAWAY.
    The message is ours, never the client's bytes."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    # Validated (h2_request_headers.py): lowercase names, pseudo-headers first.
    headers: tuple[tuple[str, str], ...]
    ended: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    ended: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset the stream, or the codec did (a malformed request)."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    stream_id: int  # 0: the connection's window


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The client's settings, applied (windows of open streams moved)."""


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The client sent GOAWAY."""

    code: int
    last_stream_id: int


Event = (
    RequestReceived
    | DataReceived
    | StreamReset
    | WindowUpdated
    | SettingsChanged
    | ConnectionTerminated
)
