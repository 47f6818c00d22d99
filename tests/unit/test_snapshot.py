"""Snapshots: the example tailnet loads, fragments merge, and a broken commit is never served."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from gitctl.snapshot import (
    ALLOW_ALL_POLICY,
    LoadResult,
    load_from_directory,
    load_from_git,
    load_snapshot,
)
from gitctl.sources import Documents
from gitctl.tailnet import DnsSpec, ExtraRecord, TailnetSettings, parse_duration
from tests.unit.test_sources import commit_files

EXAMPLE = Path(__file__).resolve().parents[2] / "tailnet.d"


def load(files: dict[str, str]) -> LoadResult:
    return load_snapshot(
        Documents(
            "tailnet.d",
            {f"tailnet.d/{name}": text.encode() for name, text in sorted(files.items())},
            None,
        )
    )


def messages(result: LoadResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def test_the_example_tailnet_loads_cleanly() -> None:
    result = load_from_directory(EXAMPLE)
    assert messages(result) == []
    snap = result.snapshot
    assert snap is not None
    assert [(u.name, u.email) for u in snap.users] == [
        ("alice", "alice@example.com"),
        ("bob", "bob@example.com"),
    ]
    assert snap.dns.magic_dns and snap.dns.base_domain == "tailnet.example"
    # A newcomer's lookups are not forwarded off the machine by default.
    assert snap.dns.nameservers == () and not snap.dns.override_local_dns
    assert snap.dns.extra_records == (ExtraRecord("wiki.tailnet.example", "A", "100.64.0.10"),)
    assert snap.settings == TailnetSettings()  # the example spells out the defaults
    assert snap.routes[0].tag == "tag:server"
    assert snap.routes[0].routes == (IPv4Network("10.99.0.0/24"),)
    assert snap.policy_doc["acls"] != ALLOW_ALL_POLICY["acls"]  # the default is not allow-all
    assert snap.id.startswith("sha256:") and snap.revision is None
    assert set(snap.sources) == {str(p) for p in sorted(EXAMPLE.iterdir())}


def test_snapshots_are_frozen() -> None:
    snap = load({}).snapshot
    assert snap is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.id = "x"  # type: ignore[misc]


def test_defaults_with_an_empty_tailnet_and_allow_all() -> None:
    snap = load({}).snapshot
    assert snap is not None
    assert snap.policy_doc == ALLOW_ALL_POLICY
    assert snap.dns == DnsSpec()
    s = snap.settings
    assert (str(s.ipv4_prefix), str(s.ipv6_prefix)) == ("100.64.0.0/10", "fd7a:115c:a1e0::/48")
    assert s.ip_allocation == "sequential"
    assert s.node_key_expiry == timedelta(days=180)
    assert s.ephemeral_inactivity_timeout == timedelta(seconds=120)
    assert (
        s.embedded_derp.region_id,
        s.embedded_derp.region_code,
        s.embedded_derp.region_name,
    ) == (999, "tailnetd", "tailnetd embedded")


def test_an_explicit_empty_acl_list_is_not_replaced_by_allow_all() -> None:
    snap = load({"policy.hujson": '{"acls": []}'}).snapshot
    assert snap is not None and snap.policy_doc == {"acls": []}


def test_settings_null_key_expiry_means_never() -> None:
    snap = load({"settings.yaml": "node_key_expiry: null\nip_allocation: random\n"}).snapshot
    assert snap is not None
    assert snap.settings.node_key_expiry is None and snap.settings.ip_allocation == "random"


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    with pytest.raises(ValueError):
        parse_duration("10 days")


def test_fragments_merge_across_files_in_file_name_order() -> None:
    result = load(
        {
            "b-policy.hujson": '{"groups": {"group:b": ["bob@example.com"]},\n'
            ' "acls": [{"action": "accept", "src": ["group:b"], "dst": ["*:22"]}]}',
            "a-policy.yaml": "groups:\n  group:a: [alice@example.com]\n"
            "acls:\n  - {action: accept, src: [group:a], dst: ['*:80']}\n"
            "users:\n  - {name: alice, email: alice@example.com}\n",
            "users.yaml": "users:\n  - {name: bob, email: bob@example.com}\n",
            "zz.yaml": "dns:\n  search_domains: [corp.example]\n",
            "dns.yaml": "search_domains: [a.example]\n"
            "nameservers: {split: {x.example: [10.0.0.1]}}\n",
        }
    )
    assert messages(result) == []
    snap = result.snapshot
    assert snap is not None
    assert snap.policy_doc["groups"] == {
        "group:a": ["alice@example.com"],
        "group:b": ["bob@example.com"],
    }
    assert [a["dst"] for a in snap.policy_doc["acls"]] == [["*:80"], ["*:22"]]
    assert [u.name for u in snap.users] == ["alice", "bob"]
    assert snap.dns.search_domains == ("a.example", "corp.example")
    assert dict(snap.dns.split) == {"x.example": ("10.0.0.1",)}


def test_a_map_key_defined_twice_names_both_places() -> None:
    result = load(
        {
            "a.yaml": "groups:\n  group:other: []\n  group:eng: [alice@example.com]\n",
            "b.hujson": '{\n\t"groups": {\n\t\t"group:eng": ["bob@example.com"],\n\t},\n}',
        }
    )
    assert result.snapshot is None
    assert messages(result) == [
        'tailnet.d/a.yaml:3:3: group "group:eng" is also defined at tailnet.d/b.hujson:3:3'
    ]


def test_a_scalar_set_in_two_files_is_a_conflict() -> None:
    result = load({"dns.yaml": "magic_dns: false\n", "more.yaml": "dns:\n  magic_dns: true\n"})
    assert messages(result) == [
        'tailnet.d/dns.yaml:1:1: "dns.magic_dns" is also defined at tailnet.d/more.yaml:2:3'
    ]


def test_unknown_top_level_keys_suggest_the_close_one() -> None:
    result = load({"p.yaml": "users: []\nacl: []\ntagowners: {}\nfrobnicate: 1\n"})
    assert messages(result) == [
        'tailnet.d/p.yaml:2:1: unknown top-level key "acl" (did you mean "acls"?)',
        'tailnet.d/p.yaml:3:1: unknown top-level key "tagowners" (did you mean "tagOwners"?)',
        'tailnet.d/p.yaml:4:1: unknown top-level key "frobnicate"',
    ]


def test_a_dns_wrapper_inside_dns_yaml_is_explained() -> None:
    result = load({"dns.yaml": "dns:\n  magic_dns: true\n"})
    assert messages(result) == [
        'tailnet.d/dns.yaml:1:1: unexpected key "dns": a file named dns.yaml holds the dns '
        "keys at its top level, without a dns: wrapper"
    ]


def test_problems_in_every_file_are_reported_together() -> None:
    result = load(
        {
            "a.hujson": '{"acls": [\n  {"action": "accept" "src": []}]}',
            "b.yaml": "users:\n  - {name: carol}\n",
            "c.yaml": "routes: [{node: a, routes: 5}]\n",
        }
    )
    assert result.snapshot is None
    assert messages(result) == [
        "tailnet.d/a.hujson:2:23: expected ',' or '}' after object member",
        'tailnet.d/b.yaml:2:5: users[0]: missing required key "email"',
        "tailnet.d/c.yaml:1:28: routes[0].routes: expected a list, found a number",
    ]


def test_meaning_errors_point_into_the_right_file() -> None:
    result = load(
        {
            "dns.yaml": "magic_dns: true\nextra_records: [{name: x, type: AAAA, value: 1.2.3.4}]\n",
            "users.yaml": "users:\n  - {name: a, email: a@example.com}\n"
            "  - {name: b, email: A@example.com}\n",
        }
    )
    assert messages(result) == [
        "tailnet.d/dns.yaml:1:1: magic_dns: MagicDNS needs a base_domain",
        'tailnet.d/dns.yaml:2:46: extra_records[0].value: "1.2.3.4" is not an IPv6 address',
        'tailnet.d/users.yaml:2:22: users[0].email: user email "A@example.com" is also used at '
        "tailnet.d/users.yaml:3:22",
    ]


def test_policy_errors_are_mapped_to_the_fragment_that_defined_them() -> None:
    pytest.importorskip("gitctl.policy")
    result = load(
        {
            "a.yaml": "acls:\n  - {action: accept, src: ['*'], dst: ['*:*']}\n",
            "b.hujson": '{"acls": [\n\t{"action": "accept", "src": ["group:missing"], '
            '"dst": ["*:*"]},\n]}',
        }
    )
    assert result.snapshot is None
    [d] = result.diagnostics
    assert (d.file, d.line, d.col) == ("tailnet.d/b.hujson", 2, 31)
    assert d.key_path == ("policy", "acls", 1, "src", 0)
    assert "group:missing" in d.message


def test_git_revisions_load_at_each_commit_and_a_broken_commit_is_not_served(
    tmp_path: Path,
) -> None:
    first = commit_files(
        tmp_path,
        {"tailnet.d/users.yaml": "users:\n  - {name: alice, email: alice@example.com}\n"},
        "alice",
    )
    second = commit_files(
        tmp_path,
        {
            "tailnet.d/users.yaml": "users:\n  - {name: alice, email: alice@example.com}\n"
            "  - {name: bob, email: bob@example.com}\n"
        },
        "bob",
    )
    broken = commit_files(tmp_path, {"tailnet.d/users.yaml": "users:\n  - {name: carol\n"}, "oops")
    one, two, bad = (load_from_git(tmp_path, rev) for rev in (first, second, broken))
    assert one.snapshot is not None and two.snapshot is not None
    assert one.snapshot.id == first and two.snapshot.id == second
    assert [u.name for u in one.snapshot.users] == ["alice"]
    assert [u.name for u in two.snapshot.users] == ["alice", "bob"]
    assert bad.snapshot is None
    assert [d.file for d in bad.diagnostics] == ["tailnet.d/users.yaml"]
    assert load_from_git(tmp_path, "HEAD").snapshot is None


def test_unreadable_sources_are_diagnostics_not_exceptions(tmp_path: Path) -> None:
    result = load_from_git(tmp_path)
    assert result.snapshot is None
    assert [d.message for d in result.diagnostics] == ["not a git repository"]


def test_a_second_commit_reads_only_the_files_it_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    import gitctl.snapshot as snapshot_mod

    users = "users:\n  - {name: cached-user, email: cached@example.com}\n"
    policy = '{"acls": [{"action": "accept", "src": ["cached@example.com"], "dst": ["*:22"]}]}'
    first = load({"users.yaml": users, "policy.hujson": policy})
    assert first.snapshot is not None
    parsed: list[str] = []
    real = snapshot_mod.parse_file
    monkeypatch.setattr(snapshot_mod, "parse_file", lambda p, d: parsed.append(p) or real(p, d))
    second = load({"users.yaml": users, "policy.hujson": policy.replace("22", "443")})
    assert parsed == ["tailnet.d/policy.hujson"]
    assert second.snapshot is not None and second.snapshot.users == first.snapshot.users
    # What one load made of a cached file is its own: the next load starts clean.
    assert first.snapshot.policy_doc is not second.snapshot.policy_doc
    broken = load({"users.yaml": users + "  - {name: x, emial: x@example.com}\n"})
    assert broken.snapshot is None
    assert load({"users.yaml": users}).snapshot is not None


def test_turning_off_the_embedded_derp_needs_another_relay_region() -> None:
    users = "users:\n  - {name: a, email: a@example.com}\n"
    off = load({"users.yaml": users, "settings.yaml": "embedded_derp: null\n"})
    assert off.snapshot is None
    assert messages(off) == [
        "tailnet.d/settings.yaml:1:16: embedded_derp: turns off the embedded DERP relay "
        "while derp.regions lists no other: clients would have no relay"
    ]
    relay = (
        "embedded_derp: {enabled: false}\nderp:\n  regions:\n    '901':\n      regionID: 901\n"
        "      regionCode: fra\n      nodes: [{name: 901a, hostName: derp.example}]\n"
    )
    ok = load({"users.yaml": users, "settings.yaml": relay})
    assert ok.snapshot is not None, messages(ok)
    assert [r.region_id for r in ok.snapshot.settings.derp_regions] == [901]
