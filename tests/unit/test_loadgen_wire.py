"""The load generator's requests use tailscale's own field names and values.

Field lists: tailscale tailcfg/tailcfg.go (`RegisterRequest`, `MapRequest`,
`Hostinfo`) as protocol.md §4.1.1 / §4.2.1 record them from the 1.96.4 client;
tests/e2e/test_loadgen_wire.py checks the same against requests the real
client sends.
"""

from __future__ import annotations

from bench.loadgen.client import CAPVER, Device
from server.protocol.keys import NodePrivate

REGISTER_REQUEST = {
    "Version", "NodeKey", "OldNodeKey", "NLKey", "Auth", "Expiry", "Followup", "Hostinfo",
    "Ephemeral", "NodeKeySignature", "SignatureType", "Timestamp", "DeviceCert", "Signature",
    "Tailnet",
}  # fmt: skip
REGISTER_AUTH = {"Provider", "LoginName", "Oauth2Token", "AuthKey"}
MAP_REQUEST = {
    "Version", "Compress", "KeepAlive", "NodeKey", "DiscoKey", "Stream", "Hostinfo",
    "MapSessionHandle", "MapSessionSeq", "Endpoints", "EndpointTypes", "TKAHead", "ReadOnly",
    "OmitPeers", "DebugFlags", "ConnectionHandleForTest", "HardwareAttestationKey",
    "HardwareAttestationKeySignature", "HardwareAttestationKeySignatureTimestamp",
}  # fmt: skip
HOSTINFO_SOME = {"Hostname", "OS", "OSVersion", "IPNVersion", "BackendLogID", "NetInfo"}


def test_register_request_speaks_tailcfg() -> None:
    body = Device("sim0").register_body("tskey-auth-x")
    assert set(body) <= REGISTER_REQUEST
    assert set(body["Auth"]) <= REGISTER_AUTH
    assert set(body["Hostinfo"]) <= HOSTINFO_SOME
    assert body["Version"] == CAPVER == 133
    assert body["NodeKey"].startswith("nodekey:") and body["OldNodeKey"].startswith("nodekey:")
    assert body["Expiry"] == "0001-01-01T00:00:00Z" and body["Followup"] == ""


def test_map_requests_speak_tailcfg() -> None:
    device = Device("sim0")
    stream = device.map_body()
    lite = device.map_body(stream=False, endpoints=["127.0.0.1:41641"])
    for body in (stream, lite):
        assert set(body) <= MAP_REQUEST
        assert body["Compress"] == "zstd" and body["KeepAlive"] is True
        assert body["DiscoKey"].startswith("discokey:")
    assert stream["Stream"] is True and "OmitPeers" not in stream
    assert lite["OmitPeers"] is True and "Stream" not in lite


def test_request_bodies_name_the_current_node_key_after_a_rotation() -> None:
    # The public key text is derived once per node key, not per body; a
    # rotated key (tests assign `device.node`) is named from then on.
    device = Device("sim0")
    first = device.node.public().text
    assert device.register_body()["NodeKey"] == device.map_body()["NodeKey"] == first
    old, device.node = device.node, NodePrivate.generate()
    body = device.register_body(old_node=old)
    assert body["NodeKey"] == device.node.public().text != first
    assert body["OldNodeKey"] == first
    assert device.map_body()["NodeKey"] == device.node.public().text
