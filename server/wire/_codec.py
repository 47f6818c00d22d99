"""Strict decoding and encoding of the tailcfg-shaped wire types.

msgspec does the work (types, counts and lengths are checked while decoding,
unknown keys are skipped as Go's encoding/json does); this module adds the
typed keys, the text forms of prefixes and addresses, and turns msgspec's
errors into one `WireError` whose message names the field path.
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

import msgspec

from server.protocol.keys import (
    ChallengePublic,
    DiscoPublic,
    KeyFormatError,
    MachinePublic,
    NLPublic,
    NodePublic,
)

__all__ = ["AddrPort", "Prefix", "WireError", "WireStruct", "decode", "decode_json", "encode"]

_KEYS = (MachinePublic, NodePublic, DiscoPublic, NLPublic, ChallengePublic)
ZERO_TIME = datetime.fromisoformat("0001-01-01T00:00:00+00:00")


class WireError(ValueError):
    """A request does not have the shape tailcfg gives it; the text names the field."""


class WireStruct(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """Base of every wire type: immutable, slotted, default (absent) fields left out."""


class Prefix(str):
    """An IP prefix in text form ("10.0.0.0/24"), as netip.Prefix marshals.

    Host bits may be set, as Go's netip.ParsePrefix allows; the text is kept.
    """

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> Prefix:
        if "/" not in text:
            raise ValueError(f"{text!r} is not an IP prefix")
        ip_network(text, strict=False)  # ValueError names the text
        return cls(text)


class AddrPort(str):
    """An "ip:port" or "[ipv6]:port" in text form, as netip.AddrPort marshals."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> AddrPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{text!r} is not an ip:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address must be in brackets")
        ip_address(host)
        return cls(text)


_PARSERS: dict[type, Any] = {cls: cls.parse for cls in (*_KEYS, Prefix, AddrPort)}


def _dec_hook(kind: type, value: Any) -> Any:
    parse = _PARSERS.get(kind)
    if parse is None:
        raise NotImplementedError(f"no wire decoding for {kind!r}")
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    try:
        return parse(value)
    except KeyFormatError as exc:
        raise ValueError(str(exc)) from None


def _enc_hook(value: Any) -> Any:
    if isinstance(value, _KEYS):
        return value.text
    if isinstance(value, str):  # Prefix, AddrPort
        return str(value)
    raise NotImplementedError(f"no wire encoding for {type(value).__name__}")


def _error(kind: type, exc: msgspec.MsgspecError) -> WireError:
    text = str(exc)
    message, sep, where = text.rpartition(" - at ")
    if not sep:
        message, where = text, "$"
    where = where.replace("`", "").replace("$", kind.__name__)
    message = message.replace("`", "")
    if message.startswith(("Expected ", "Invalid ", "Input ")):  # msgspec's words
        message = message[:1].lower() + message[1:]
    return WireError(f"{where}: {message}")


T = TypeVar("T", bound=WireStruct)


def decode(kind: type[T], value: Any) -> T:
    """A wire value from decoded JSON (dicts, lists, strings, numbers)."""
    try:
        return msgspec.convert(value, kind, strict=True, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _error(kind, exc) from None


def decode_json(kind: type[T], data: bytes | str, *, limit: int) -> T:
    """A wire value from JSON text, refused before parsing if over `limit` bytes."""
    if len(data) > limit:
        raise WireError(f"{kind.__name__}: {len(data)} bytes is more than the {limit} allowed")
    try:
        return msgspec.json.decode(data, type=kind, strict=True, dec_hook=_dec_hook)
    except msgspec.DecodeError as exc:
        raise _error(kind, exc) from None


def encode(value: WireStruct) -> dict[str, Any]:
    """The JSON object (as Python values) tailcfg would marshal; absent fields left out."""
    out = msgspec.to_builtins(value, enc_hook=_enc_hook)
    assert isinstance(out, dict)
    return out


def encode_json(value: WireStruct) -> bytes:
    return msgspec.json.encode(value, enc_hook=_enc_hook, order="sorted")
