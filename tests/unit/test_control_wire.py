"""A request that does not have tailcfg's shape is refused whole: HTTP 400
naming the field, and nothing is written."""

from __future__ import annotations

from pathlib import Path

from tests.unit.control_client import (
    ControlClient,
    Device,
    async_test,
    join,
    preauth_key,
    running_server,
)


@async_test
async def test_a_bad_map_request_is_a_400_naming_the_field_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        client = await join(srv, dev)
        before = srv.store.list_nodes()
        hostinfo = {"Hostname": "laptop", "RoutableIPs": ["10.0.0.0/8", 3]}
        body = dev.map_body(stream=False, endpoints=["192.0.2.1:41641"], hostinfo=hostinfo)
        status, text = await client.map_lite(body)
        assert status == 400
        assert b"MapRequest.Hostinfo.RoutableIPs[1]" in text
        assert srv.store.list_nodes() == before


@async_test
async def test_a_bad_register_request_creates_no_node(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = Device("laptop")
        async with await ControlClient.connect(srv.port, dev.machine) as client:
            body = dev.register_body(preauth_key(srv))
            body["Hostinfo"]["Hostname"] = "h" * 300
            status, text = await client.register(body)
            assert status == 400
            assert "RegisterRequest.Hostinfo.Hostname" in text
        assert srv.store.list_nodes() == []
