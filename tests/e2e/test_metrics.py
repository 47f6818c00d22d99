"""What an operator's Prometheus sees of a real tailnet: two tailscale 1.96.4
clients join and ping each other through the embedded DERP; /metrics (on the
--metrics-listen port, never on the control port) counts them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Member, Tailnet, free_port, tailnet_fixture

USERS = "users:\n  - {name: alice, email: alice@example.com}\n"


METRICS_PORT = free_port()

net = tailnet_fixture(
    {"users.yaml": USERS},
    members=[Member("m1", key=("--reusable",)), Member("m2", key=("--reusable",))],
    server_args=["--metrics-listen", f"127.0.0.1:{METRICS_PORT}", "--log-format", "json"],
)


def scrape() -> dict[str, float]:
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.name + json.dumps(s.labels, sort_keys=True) * bool(s.labels): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_clients_that_pinged_over_derp_are_counted(net: Tailnet) -> None:
    # The fixture logged m1 and m2 in.
    out = net.nodes["m1"].ping("m2")
    assert "pong from m2" in out and "via DERP(tailnetd)" in out, out

    seen = scrape()
    assert seen['tailnetd_registrations_total{"outcome": "ok"}'] == 2
    assert seen["tailnetd_nodes_streaming"] == 2
    assert seen["tailnetd_derp_clients"] >= 2
    assert seen["tailnetd_derp_packets_relayed_total"] > 0
    assert seen["tailnetd_derp_bytes_relayed_total"] > 0
    assert seen['tailnetd_map_messages_total{"kind": "full"}'] >= 2


def test_metrics_stay_off_the_control_port_and_the_logs_are_json(net: Tailnet) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(net.server.url + "/metrics", timeout=5)
    assert refused.value.code == 404
    refused.value.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/ready", timeout=5) as r:
        assert json.loads(r.read())["ready"] is True
    events = [json.loads(line) for line in net.server.log().splitlines() if line.startswith("{")]
    joined = [e for e in events if e["event"] == "node.registered"]
    assert sorted(e["node_name"] for e in joined) == ["m1", "m2"]
    assert {e["user"] for e in joined} == {"alice"}
