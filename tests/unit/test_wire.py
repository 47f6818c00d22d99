"""The typed wire model (server/wire/): what a 1.96.4 client sends decodes
whole, wrong shapes and oversized requests are refused with the field named,
absent stays apart from empty, and encode/decode round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import keys
from server.store._rows import hostinfo_from_text, hostinfo_text
from server.wire import (
    AddrPort,
    DERPMap,
    DNSConfig,
    Hostinfo,
    MapRequest,
    MapResponse,
    NetInfo,
    Node,
    Prefix,
    RegisterRequest,
    RegisterResponse,
    Service,
    WireError,
    WireStruct,
    decode,
    decode_json,
    encode,
    limits,
)

FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "wire_1.96.4.json").read_text())
WIRE_TYPES: list[type[WireStruct]] = [
    RegisterRequest,
    RegisterResponse,
    MapRequest,
    MapResponse,
    Node,
    Hostinfo,
    NetInfo,
    Service,
    DERPMap,
    DNSConfig,
]

# Every JSON field of these structs in tailscale's tailcfg/tailcfg.go (read at
# capability version 127, plus the 1.96 additions protocol.md §4 lists).
TAILCFG_FIELDS: dict[type[WireStruct], set[str]] = {
    RegisterRequest: {
        "Version", "NodeKey", "OldNodeKey", "NLKey", "Auth", "Expiry", "Followup",
        "Hostinfo", "Ephemeral", "NodeKeySignature", "SignatureType", "Timestamp",
        "DeviceCert", "Signature", "Tailnet",
    },
    MapRequest: {
        "Version", "Compress", "KeepAlive", "NodeKey", "DiscoKey", "HardwareAttestationKey",
        "HardwareAttestationKeySignature", "HardwareAttestationKeySignatureTimestamp",
        "Stream", "Hostinfo", "MapSessionHandle", "MapSessionSeq", "Endpoints",
        "EndpointTypes", "TKAHead", "ReadOnly", "OmitPeers", "DebugFlags",
        "ConnectionHandleForTest",
    },
    Hostinfo: {
        "IPNVersion", "FrontendLogID", "BackendLogID", "OS", "OSVersion", "Container", "Env",
        "Distro", "DistroVersion", "DistroCodeName", "App", "Desktop", "Package",
        "DeviceModel", "PushDeviceToken", "Hostname", "ShieldsUp", "ShareeNode",
        "NoLogsNoSupport", "WireIngress", "IngressEnabled", "AllowsUpdate", "Machine",
        "GoArch", "GoArchVar", "GoVersion", "RoutableIPs", "RequestTags", "WoLMACs",
        "Services", "NetInfo", "sshHostKeys", "Cloud", "Userspace", "UserspaceRouter",
        "AppConnector", "ServicesHash", "ExitNodeID", "Location", "TPM", "StateEncrypted",
        "PeerRelay",
    },
    NetInfo: {
        "MappingVariesByDestIP", "HairPinning", "WorkingIPv6", "OSHasIPv6", "WorkingUDP",
        "WorkingICMPv4", "HavePortMap", "UPnP", "PMP", "PCP", "PreferredDERP", "LinkType",
        "DERPLatency", "FirewallMode",
    },
}  # fmt: skip

# Fields the server does not decode, each with the reason. Unknown keys are
# skipped, as Go's encoding/json does; a peer never sees them.
DELIBERATELY_IGNORED: dict[tuple[type[WireStruct], str], str] = {
    (MapRequest, "HardwareAttestationKeySignatureTimestamp"): (
        "TPM-backed attestation only; tailnetd does not verify attestation keys"
    ),
    (Hostinfo, "PeerRelay"): (
        "1.96 addition whose shape is not in the tailcfg source read; dropped, not guessed"
    ),
}


def json_names(kind: type[WireStruct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(kind)}


@pytest.mark.parametrize("kind", list(TAILCFG_FIELDS), ids=lambda k: k.__name__)
def test_every_field_the_client_sends_is_decoded_or_deliberately_ignored(kind: type) -> None:
    missing = {
        name
        for name in TAILCFG_FIELDS[kind] - json_names(kind)
        if (kind, name) not in DELIBERATELY_IGNORED
    }
    assert not missing, f"{kind.__name__} does not decode {sorted(missing)}"
    stale = {name for (k, name) in DELIBERATELY_IGNORED if k is kind} & json_names(kind)
    assert not stale, f"{kind.__name__}: {sorted(stale)} is decoded, not ignored"


@pytest.mark.parametrize("name", ["RegisterRequest", "MapRequest"])
def test_what_a_1_96_4_client_sends_decodes_and_encodes_back_unchanged(name: str) -> None:
    kind = {"RegisterRequest": RegisterRequest, "MapRequest": MapRequest}[name]
    sent = FIXTURE[name]
    value = decode(kind, sent)
    _assert_carries(sent, json.loads(json.dumps(encode(value))), name)
    assert decode_json(kind, json.dumps(sent).encode(), limit=limits.MAX_REQUEST_BODY) == value


def _assert_carries(sent: Any, out: Any, path: str) -> None:
    """Every key the client sent comes back with its value, except Go zero
    values (null, "", 0, false for a plain bool), which mean "absent"."""
    if not isinstance(sent, dict):
        assert out == sent, path
        return
    assert isinstance(out, dict), path
    for key, value in sent.items():
        if key in out:
            _assert_carries(value, out[key], f"{path}.{key}")
        else:
            assert value in (None, "", 0, False) or value == "nodekey:" + "0" * 64, (
                f"{path}.{key} = {value!r} was dropped"
            )


def test_fixture_hostinfo_fields_reach_the_typed_value() -> None:
    hi = decode(MapRequest, FIXTURE["MapRequest"]).hostinfo
    assert hi is not None and hi.net_info is not None
    assert hi.hostname == "laptop" and hi.os == "linux"
    assert hi.routable_ips == ("10.1.0.0/24", "0.0.0.0/0", "::/0")
    assert [s.proto for s in hi.services or ()] == ["peerapi4", "peerapi6", "peerapi-dns-proxy"]
    assert hi.net_info.preferred_derp == 900 and hi.net_info.hair_pinning is None
    assert hi.container is True and hi.desktop is False


# Absent vs empty.


def test_absent_and_empty_lists_stay_apart() -> None:
    absent, empty = decode(Hostinfo, {}), decode(Hostinfo, {"RoutableIPs": []})
    assert absent.routable_ips is None and empty.routable_ips == ()
    assert "RoutableIPs" not in encode(absent)
    assert list(encode(empty)["RoutableIPs"]) == []
    assert decode(MapRequest, {}).endpoints is None
    assert decode(MapRequest, {"Endpoints": []}).endpoints == ()


def test_opt_bool_is_a_json_bool_or_null_never_a_string() -> None:
    assert decode(Hostinfo, {"Container": None}).container is None
    assert encode(decode(Hostinfo, {"Container": False})) == {"Container": False}
    with pytest.raises(WireError, match=r"^Hostinfo\.Container: expected bool"):
        decode(Hostinfo, {"Container": "false"})


def test_zero_expiry_is_no_request_and_a_past_one_is_a_logout() -> None:
    assert decode(RegisterRequest, {"Expiry": "0001-01-01T00:00:00Z"}).requested_expiry is None
    logout = decode(RegisterRequest, {"Expiry": "1970-01-01T00:02:03Z"}).requested_expiry
    assert logout == datetime(1970, 1, 1, 0, 2, 3, tzinfo=UTC)


# Errors name the field path.


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"Hostinfo": {"RoutableIPs": ["10.0.0.0/8", "::/0", "1.2.3.0/24", 7]}},
         r"^MapRequest\.Hostinfo\.RoutableIPs\[3\]: expected a string, got int"),
        ({"Hostinfo": {"RoutableIPs": ["10.0.0.300/8"]}},
         r"^MapRequest\.Hostinfo\.RoutableIPs\[0\]: .*10\.0\.0\.300"),
        ({"Endpoints": ["1.2.3.4"]},
         r"^MapRequest\.Endpoints\[0\]: '1\.2\.3\.4' is not an ip:port"),
        ({"Endpoints": ["::1:5"]}, r"^MapRequest\.Endpoints\[0\]: .*brackets"),
        ({"NodeKey": "mkey:" + "0" * 64},
         r"^MapRequest\.NodeKey: key must start with 'nodekey:'"),
        ({"DiscoKey": "discokey:12"}, r"^MapRequest\.DiscoKey: .*64 lowercase hex"),
        ({"Stream": "yes"}, r"^MapRequest\.Stream: expected bool, got str"),
        ({"Hostinfo": {"Services": [{"Proto": "tcp", "Port": 70000}]}},
         r"^MapRequest\.Hostinfo\.Services\[0\]\.Port: expected int <= 65535"),
        ({"Hostinfo": {"NetInfo": {"PreferredDERP": "900"}}},
         r"^MapRequest\.Hostinfo\.NetInfo\.PreferredDERP: expected int, got str"),
        ([], r"^MapRequest: expected object, got array"),
    ],
)  # fmt: skip
def test_a_wrong_type_is_an_error_naming_the_field(body: Any, error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode(MapRequest, body)


def test_malformed_json_is_a_wire_error() -> None:
    malformed = r"^RegisterRequest: (JSON is malformed|input data was truncated)"
    with pytest.raises(WireError, match=malformed):
        decode_json(RegisterRequest, b'{"Version": 1', limit=100)


# Bounds, checked while decoding.


def _over(limit: int, item: Any) -> list[Any]:
    return [item] * (limit + 1)


@pytest.mark.parametrize(
    ("hostinfo", "field"),
    [
        ({"Hostname": "h" * (limits.MAX_HOSTNAME + 1)}, "Hostname"),
        ({"OSVersion": "v" * (limits.MAX_TEXT + 1)}, "OSVersion"),
        ({"RoutableIPs": _over(limits.MAX_ROUTABLE_IPS, "10.0.0.0/8")}, "RoutableIPs"),
        ({"RequestTags": _over(limits.MAX_REQUEST_TAGS, "tag:x")}, "RequestTags"),
        ({"Services": _over(limits.MAX_SERVICES, {"Proto": "tcp", "Port": 1})}, "Services"),
        ({"sshHostKeys": _over(limits.MAX_SSH_HOST_KEYS, "ssh-ed25519 AAAA")}, "sshHostKeys"),
        ({"sshHostKeys": ["k" * (limits.MAX_SSH_HOST_KEY + 1)]}, r"sshHostKeys\[0\]"),
        ({"NetInfo": {"DERPLatency": {str(i): 0.1 for i in range(1025)}}}, "NetInfo.DERPLatency"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_list_and_string_has_a_bound(hostinfo: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError, match=rf"^MapRequest\.Hostinfo\.{field}: expected .* length <="):
        decode(MapRequest, {"Hostinfo": hostinfo})


def test_endpoint_count_is_bounded() -> None:
    with pytest.raises(WireError, match=r"^MapRequest\.Endpoints: expected array of length <="):
        decode(MapRequest, {"Endpoints": _over(limits.MAX_ENDPOINTS, "1.2.3.4:5")})


def test_a_hostinfo_over_its_byte_limit_is_refused_though_each_field_fits() -> None:
    per_service = limits.MAX_HOSTINFO_BYTES // limits.MAX_SERVICES + 1
    services = [
        {"Proto": "tcp", "Port": i % 65536, "Description": "d" * per_service}
        for i in range(limits.MAX_SERVICES)
    ]
    with pytest.raises(WireError, match=r"^RegisterRequest: Hostinfo is \d+ bytes encoded"):
        decode(RegisterRequest, {"Hostinfo": {"Services": services}})


def test_a_body_over_the_limit_is_refused_before_parsing() -> None:
    body = b" " * (limits.MAX_REQUEST_BODY + 1)  # not even JSON: never parsed
    with pytest.raises(WireError, match=r"^MapRequest: \d+ bytes is more than the \d+ allowed"):
        decode_json(MapRequest, body, limit=limits.MAX_REQUEST_BODY)


def test_limits_leave_room_for_what_a_real_client_sends() -> None:
    body = json.dumps(FIXTURE["MapRequest"]).encode()
    assert len(body) * 100 < limits.MAX_REQUEST_BODY
    hostinfo = FIXTURE["MapRequest"]["Hostinfo"]
    assert len(json.dumps(hostinfo)) * 100 < limits.MAX_HOSTINFO_BYTES


# The store: Hostinfo is JSON text in sqlite, typed everywhere else.


def test_stored_hostinfo_round_trips_through_its_text() -> None:
    hostinfo = decode(MapRequest, FIXTURE["MapRequest"]).hostinfo
    assert hostinfo is not None
    assert hostinfo_from_text(hostinfo_text(hostinfo)) == hostinfo


def test_a_stored_row_from_before_the_limits_keeps_every_field_that_still_decodes() -> None:
    old = json.dumps({"Hostname": "old", "DeviceModel": "x" * 100_000, "RoutableIPs": "junk"})
    assert hostinfo_from_text(old) == Hostinfo(hostname="old")
    assert hostinfo_from_text("not json") == Hostinfo()
    assert hostinfo_from_text("[1]") == Hostinfo()


# Every field has its tailcfg name, and survives encode -> decode (TestNodeEqual).


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
def test_every_field_has_a_tailcfg_json_name(kind: type[WireStruct]) -> None:
    for f in msgspec.structs.fields(kind):
        assert f.encode_name != f.name or f.name.isalpha() and not f.name.islower(), (
            f"{kind.__name__}.{f.name} has no explicit tailcfg JSON name"
        )


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
def test_encode_writes_every_field_that_is_set(kind: type[WireStruct]) -> None:
    """A field added to a wire type must be encoded and decoded: one value with
    every field set to a non-default comes back equal, every name present."""
    value = _all_set(msgspec.inspect.type_info(kind))
    out = encode(value)
    assert set(out) == json_names(kind)
    assert decode(kind, out) == value
    assert decode(kind, json.loads(json.dumps(out))) == value


_KEY_TYPES = {
    keys.NodePublic,
    keys.MachinePublic,
    keys.DiscoPublic,
    keys.NLPublic,
    keys.ChallengePublic,
}


def _all_set(t: msgspec.inspect.Type) -> Any:
    """A value of type `t` that differs from every field default."""
    i = msgspec.inspect
    if isinstance(t, i.StructType):
        return t.cls(**{f.name: _all_set(f.type) for f in t.fields})
    if isinstance(t, i.UnionType):
        return _all_set(next(x for x in t.types if not isinstance(x, i.NoneType)))
    if isinstance(t, i.StrType):
        return "s"
    if isinstance(t, i.BoolType):
        return True
    if isinstance(t, i.IntType):
        return 7
    if isinstance(t, i.FloatType):
        return 1.5
    if isinstance(t, i.BytesType):
        return b"\x01"
    if isinstance(t, i.DateTimeType):
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    if isinstance(t, i.VarTupleType):
        return (_all_set(t.item_type),)
    if isinstance(t, i.DictType):
        return {"1": _all_set(t.value_type)}
    if isinstance(t, i.AnyType):
        return {"any": [1, "json"]}
    if isinstance(t, i.CustomType):
        if t.cls in _KEY_TYPES:
            return t.cls(b"\x05" * 32)
        return {Prefix: Prefix("10.0.0.0/8"), AddrPort: AddrPort("1.2.3.4:5")}[t.cls]
    raise AssertionError(f"no test value for {t}")


def _strategy(t: msgspec.inspect.Type, depth: int = 0) -> st.SearchStrategy[Any]:
    i = msgspec.inspect
    if isinstance(t, i.StructType):
        return st.builds(t.cls, **{f.name: _strategy(f.type, depth + 1) for f in t.fields})
    if isinstance(t, i.UnionType):
        return st.one_of(*[_strategy(x, depth) for x in t.types])
    if isinstance(t, i.NoneType):
        return st.none()
    if isinstance(t, i.StrType):
        return st.text(max_size=min(t.max_length or 20, 20))
    if isinstance(t, i.BoolType):
        return st.booleans()
    if isinstance(t, i.IntType):
        return st.integers(
            min_value=-(2**53) if t.ge is None else t.ge, max_value=2**53 if t.le is None else t.le
        )
    if isinstance(t, i.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(t, i.BytesType):
        return st.binary(max_size=8)
    if isinstance(t, i.DateTimeType):
        return st.datetimes(timezones=st.just(UTC))
    if isinstance(t, i.VarTupleType):
        return st.lists(_strategy(t.item_type, depth + 1), max_size=2).map(tuple)
    if isinstance(t, i.DictType):
        return st.dictionaries(st.text(max_size=5), _strategy(t.value_type, depth + 1), max_size=2)
    if isinstance(t, i.AnyType):
        return st.recursive(
            st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=2)
                | st.dictionaries(st.text(max_size=3), inner, max_size=2)
            ),
            max_leaves=4,
        )
    if isinstance(t, i.CustomType):
        if t.cls in _KEY_TYPES:
            return st.binary(min_size=32, max_size=32).map(t.cls)
        if t.cls is Prefix:
            return st.sampled_from(["10.0.0.0/8", "192.168.1.7/24", "::/0", "fd7a::1/128"]).map(
                Prefix
            )
        if t.cls is AddrPort:
            return st.sampled_from(["1.2.3.4:41641", "[::1]:0", "[fe80::1]:65535"]).map(AddrPort)
    raise AssertionError(f"no strategy for {t}")


@pytest.mark.parametrize("kind", WIRE_TYPES, ids=lambda k: k.__name__)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_decode_of_encode_is_the_same_value(kind: type[WireStruct], data: st.DataObject) -> None:
    value = data.draw(_strategy(msgspec.inspect.type_info(kind)))
    assert decode(kind, encode(value)) == value
    assert decode(kind, json.loads(json.dumps(encode(value)))) == value
