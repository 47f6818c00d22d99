"""The load generator's requests against what the real tailscale 1.96.4 client
sends: tailscaled logs its RegisterRequest (TS_DEBUG_REGISTER, indented JSON)
and every MapRequest (TS_DEBUG_MAP, one line), and each field the simulated
clients send must be one the real client sends, with the same fixed values.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from bench.loadgen.client import Device
from bench.loadgen.local import local_server
from tests.e2e.harness import TailscaleNode, wait_for

USERS = "users:\n  - {name: alice, email: alice@example.com, display_name: Alice}\n"


def logged_requests(log: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the first RegisterRequest, every MapRequest) from a whole tailscaled log:
    its tail alone can lose the RegisterRequest once the debug netmaps pile up."""
    register = re.search(r"RegisterRequest: (\{\n.*?\n\})", log, re.S)
    assert register, "no RegisterRequest in the tailscaled log"
    maps = [json.loads(m) for m in re.findall(r"MapRequest: (\{.*\})\s*$", log, re.M)]
    return json.loads(register.group(1)), maps


def is_endpoint_update(request: dict[str, Any]) -> bool:
    return bool(request.get("OmitPeers") and request.get("Endpoints"))


def test_loadgen_requests_use_the_real_clients_fields() -> None:
    with local_server({"users.yaml": USERS}) as server, tempfile.TemporaryDirectory() as tmp:
        node = TailscaleNode("real", Path(tmp))
        node.extra_env = {"TS_DEBUG_REGISTER": "1", "TS_DEBUG_MAP": "1"}
        node.start()
        try:
            node.up(server.process, server.key("alice"))
            # The endpoint update comes after the client's first netcheck, which
            # can finish after the stream has started: wait for both.
            wait_for(
                lambda: any(m.get("Stream") for m in logged_requests(node.log())[1]),
                30,
                "the real client's streaming MapRequest in its log",
            )
            wait_for(
                lambda: any(is_endpoint_update(m) for m in logged_requests(node.log())[1]),
                60,
                "the real client's endpoint update (OmitPeers with Endpoints) in its log",
            )
            real_register, real_maps = logged_requests(node.log())
        finally:
            node.stop()

    device = Device("sim0")
    ours = device.register_body("tskey-auth-x")
    assert set(ours) <= set(real_register), set(ours) - set(real_register)
    assert set(ours["Auth"]) <= set(real_register["Auth"])
    assert set(ours["Hostinfo"]) <= set(real_register["Hostinfo"])
    for key in ("OldNodeKey", "Expiry", "Followup"):
        assert ours[key] == real_register[key], key

    real_stream = next(m for m in real_maps if m.get("Stream"))
    real_lite = next(m for m in real_maps if is_endpoint_update(m))
    for ours_map, real in (
        (device.map_body(), real_stream),
        (device.map_body(stream=False, endpoints=["127.0.0.1:41641"]), real_lite),
    ):
        assert set(ours_map) - {"Endpoints"} <= set(real), set(ours_map) - set(real)
        for key in ("Version", "Compress", "KeepAlive", "Stream", "OmitPeers"):
            assert ours_map.get(key) == real.get(key), key
