"""Real 1.96.4 clients through the node registry: routes and exit nodes that
autoApprovers approve, approvals bound to a machine, and clients that are told
when their node is deleted, expired or its user leaves git.

One server and one set of daemons for the module; tests run in file order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.e2e.harness import Member, Tailnet, TailscaleNode, tailnet_fixture, wait_for

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
POLICY = """\
{
  "tagOwners": {"tag:router": ["alice@example.com"]},
  "autoApprovers": {
    "routes": {"10.77.0.0/16": ["tag:router"]},
    "exitNode": ["tag:router"],
  },
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}
"""


tailnet = tailnet_fixture(
    {"users.yaml": USERS, "policy.hujson": POLICY},
    members=[
        Member(
            "router1",
            key=("--tag", "tag:router", "--reusable"),
            up=("--advertise-routes=10.77.1.0/24", "--advertise-exit-node"),
        ),
        Member("laptop1", key=("--reusable",)),
        Member("spare1", key=("--reusable",)),
    ],
)


def machine_key(tailnet: Tailnet, name: str) -> str:
    (node,) = [n for n in tailnet.server.nodes_json() if n["name"] == name]
    return str(node["machine_key"])


def backend_state(node: TailscaleNode) -> str:
    return str(node.status().get("BackendState"))


def test_autoapprovers_approve_a_real_client_s_route_and_exit_node(tailnet: Tailnet) -> None:
    # The fixture logged router1 in advertising a subnet and an exit node.
    laptop = tailnet.nodes["laptop1"]

    def served() -> bool:
        entry = laptop.peer("router1")
        return bool(entry) and entry.get("PrimaryRoutes") == ["10.77.1.0/24"]

    wait_for(served, 30, "laptop1 to see router1's auto-approved subnet route")
    entry = laptop.peer("router1")
    assert entry is not None and entry.get("ExitNodeOption") is True
    listed = laptop.cli("exit-node", "list").stdout
    assert "router1" in listed, listed


def test_a_route_approved_for_a_machine_stays_with_it(tailnet: Tailnet) -> None:
    laptop, spare = tailnet.nodes["laptop1"], tailnet.nodes["spare1"]
    spare.cli("set", "--advertise-routes=192.168.50.0/24")
    key = machine_key(tailnet, "spare1")
    routes = f"routes:\n  - {{machine: {key}, node: spare1, routes: [192.168.50.0/24]}}\n"
    tailnet.repo.commit({"routes.yaml": routes}, "approve spare1's subnet by machine")

    def primary(name: str) -> list[str] | None:
        """The routes laptop1 is told the node named `name` (its DNS label) serves."""
        for entry in (laptop.status().get("Peer") or {}).values():
            if entry["DNSName"].split(".")[0] == name:
                return list(entry.get("PrimaryRoutes") or [])
        return None

    wait_for(lambda: primary("spare1") == ["192.168.50.0/24"], 30, "the approved route")
    # A rename keeps the approval: it is bound to the machine, not the name.
    tailnet.server.admin("nodes", "rename", "spare1", "renamed1")
    wait_for(lambda: primary("renamed1") == ["192.168.50.0/24"], 30, "the renamed router")
    # Another machine taking the freed name, and advertising the same subnet, gets nothing.
    thief = tailnet.node("thief", hostname="spare1")
    thief.start()
    thief.up(tailnet.server, tailnet.server.create_key("alice"),
             "--advertise-routes=192.168.50.0/24")  # fmt: skip
    wait_for(lambda: primary("spare1") is not None, 30, "laptop1 to see the newcomer")
    assert primary("spare1") == []
    assert primary("renamed1") == ["192.168.50.0/24"]


def test_a_deleted_node_s_client_needs_login(tailnet: Tailnet) -> None:
    thief = tailnet.nodes["thief"]
    (node,) = [n for n in tailnet.server.nodes_json() if n["name"] == "spare1"]
    tailnet.server.admin("nodes", "delete", str(node["id"]))
    wait_for(lambda: backend_state(thief) == "NeedsLogin", 30, "the deleted node to need login")
    assert tailnet.server.log().count("told to log in again") == 1


def test_an_expired_node_s_client_needs_login(tailnet: Tailnet) -> None:
    spare = tailnet.nodes["spare1"]
    tailnet.server.admin("nodes", "expire", "renamed1")
    wait_for(lambda: backend_state(spare) == "NeedsLogin", 30, "the expired node to need login")


def test_an_expiring_grant_reaches_a_connected_client_at_its_instant(tailnet: Tailnet) -> None:
    laptop = tailnet.nodes["laptop1"]
    bob = tailnet.node("bob1")
    bob.start()
    bob.up(tailnet.server, tailnet.server.create_key("bob"))
    wait_for(lambda: laptop.peer("bob1") is not None, 30, "laptop1 to see bob1")
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    stamp = ends.isoformat().replace("+00:00", "Z")
    expiring = POLICY.replace(
        '"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],',
        '"acls": [{"action": "accept", "src": ["alice@example.com", "tag:router"],'
        ' "dst": ["alice@example.com:*", "tag:router:*"]}],'
        ' "grants": [{"src": ["bob@example.com"], "dst": ["alice@example.com"], "ip": ["*"],'
        f' "expires": "{stamp}"}}],',
    )
    assert expiring != POLICY
    tailnet.repo.commit({"policy.hujson": expiring}, "bob may reach alice for 20 s")
    assert bob.peer("laptop1") is not None  # still allowed
    wait_for(lambda: bob.peer("laptop1") is None, 60, "bob1 to lose laptop1 when the rule ends")
    assert datetime.now(UTC) >= ends  # not before its instant
    assert "policy.expired" in tailnet.server.log() or "expired at" in tailnet.server.log()


def test_removing_a_user_from_git_cuts_their_nodes_off(tailnet: Tailnet) -> None:
    laptop = tailnet.nodes["laptop1"]
    bob = tailnet.nodes["bob1"]
    tailnet.repo.commit({"policy.hujson": POLICY}, "everyone again")
    wait_for(lambda: laptop.peer("bob1") is not None, 30, "laptop1 to see bob1")
    alice_only = "".join(line for line in USERS.splitlines(True) if "bob" not in line)
    tailnet.repo.commit({"users.yaml": alice_only}, "bob leaves")
    wait_for(lambda: laptop.peer("bob1") is None, 30, "laptop1 to lose bob1")
    wait_for(lambda: backend_state(bob) == "NeedsLogin", 30, "bob1 to need login")
    status = tailnet.server.status()
    assert [(n["name"], n["user"]) for n in status["cut_off"]] == [("bob1", "bob")]
