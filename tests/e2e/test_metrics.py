"""What an operator's Prometheus sees of a real tailnet: two tailscale 1.96.4
clients join and ping each other through the embedded DERP; /metrics (on the
--metrics-listen port, never on the control port) counts them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import ServerProcess, TailnetRepo, TailscaleNode, free_port, in_parallel

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"


class Net:
    def __init__(self, tmp: Path) -> None:
        repo = TailnetRepo(tmp / "repo", {"users.yaml": USERS})
        self.metrics_port = free_port()
        self.server = ServerProcess(
            repo.path,
            tmp / "data",
            tmp / "tailnetd.log",
            extra=["--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--log-format", "json"],
        )
        self.nodes = [TailscaleNode(name, tmp / "nodes") for name in ("m1", "m2")]
        for node in self.nodes:
            node.extra_env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}

    def scrape(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {
            s.name + json.dumps(s.labels, sort_keys=True) * bool(s.labels): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = Net(tmp_path_factory.mktemp("metrics"))
    net.server.start()
    try:
        yield net
    finally:
        for node in net.nodes:
            node.stop()
        net.server.stop()


def test_two_clients_that_pinged_over_derp_are_counted(net: Net) -> None:
    key = net.server.create_key("alice", "--reusable")
    in_parallel(node.start for node in net.nodes)
    in_parallel((lambda n=node: n.up(net.server, key)) for node in net.nodes)
    out = net.nodes[0].ping("m2")
    assert "pong from m2" in out and "via DERP(tailnetd)" in out, out

    seen = net.scrape()
    assert seen['tailnetd_registrations_total{"outcome": "ok"}'] == 2
    assert seen["tailnetd_nodes_streaming"] == 2
    assert seen["tailnetd_derp_clients"] >= 2
    assert seen["tailnetd_derp_packets_relayed_total"] > 0
    assert seen["tailnetd_derp_bytes_relayed_total"] > 0
    assert seen['tailnetd_map_messages_total{"kind": "full"}'] >= 2


def test_metrics_stay_off_the_control_port_and_the_logs_are_json(net: Net) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(net.server.url + "/metrics", timeout=5)
    assert refused.value.code == 404
    refused.value.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{net.metrics_port}/ready", timeout=5) as r:
        assert json.loads(r.read())["ready"] is True
    events = [json.loads(line) for line in net.server.log().splitlines() if line.startswith("{")]
    joined = [e for e in events if e["event"] == "node.registered"]
    assert sorted(e["node_name"] for e in joined) == ["m1", "m2"]
    assert {e["user"] for e in joined} == {"alice"}
