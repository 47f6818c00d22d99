"""--log-format: one line per event that a log shipper can parse, and the
events an operator searches for carry their node, user and commit."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.logs import EventFormatter, event, log_handler
from tests.unit.control_client import Device, async_test, join, running_server


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("t").makeRecord("t", logging.INFO, "f.py", 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    rec.created = 1767225600.25  # 2026-01-01T00:00:00.250Z
    return rec


def test_json_is_one_object_per_line_with_time_level_event_msg_and_fields() -> None:
    line = EventFormatter("json").format(
        record("node %d joined", 3, **event("node.registered", node=3, user="alice", tags=[]))
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-01T00:00:00.250Z",
        "level": "info",
        "event": "node.registered",
        "msg": "node 3 joined",
        "node": 3,
        "user": "alice",
        "tags": [],
    }


def test_json_lines_without_an_event_are_plain_logs_and_errors_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("t").makeRecord(
            "t",
            logging.ERROR,
            "f.py",
            1,
            "failed\nbadly",
            (),
            exc_info=__import__("sys").exc_info(),
        )
    line = EventFormatter("json").format(rec)
    parsed = json.loads(line)
    assert "\n" not in line
    assert (parsed["event"], parsed["level"], parsed["msg"]) == ("log", "error", "failed\nbadly")
    assert "ValueError: boom" in parsed["error"]


def test_text_appends_the_fields_as_key_value_pairs() -> None:
    fmt = EventFormatter("text")
    line = fmt.format(record("rejected", **event("snapshot.rejected", commit="ab12", reason="a b")))
    assert line == (
        '2026-01-01T00:00:00.250Z INFO rejected event=snapshot.rejected commit=ab12 reason="a b"'
    )
    assert fmt.format(record("hello %s", "you")) == "2026-01-01T00:00:00.250Z INFO hello you"
    lines = fmt.format(record("rejected:\n  a.yaml:1:1: bad", **event("x", commit="c")))
    assert lines.splitlines() == [
        "2026-01-01T00:00:00.250Z INFO rejected: event=x commit=c",
        "  a.yaml:1:1: bad",
    ]


@async_test
async def test_a_registration_is_one_event_naming_node_user_and_commit(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = log_handler("json", out)
    log = logging.getLogger("tailnetd.test")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        async with running_server(tmp_path) as srv:
            client = await join(srv, Device("alice-laptop"))
            await client.close()
            commit = srv.status.serving
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    [joined] = [e for e in events if e["event"] == "node.registered"]
    assert (joined["node_name"], joined["user"], joined["commit"]) == (
        "alice-laptop",
        "alice",
        commit,
    )


@pytest.mark.parametrize("style", ["json", "text"])
def test_every_line_is_written_through_the_handler(style: str) -> None:
    out = io.StringIO()
    log = logging.getLogger(f"tailnetd.test.{style}")
    log.propagate = False
    log.addHandler(log_handler(style, out))  # type: ignore[arg-type]
    log.warning("one", extra=event("x.y", n=1))
    log.warning("two")
    assert len(out.getvalue().splitlines()) == 2


def _text_as_before(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


@given(
    st.one_of(
        st.text(),
        st.integers(),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False),
        st.lists(st.text(max_size=5), max_size=3),
    )
)
def test_text_field_values_are_written_as_they_always_were(value: object) -> None:
    from server.logs import _text

    assert _text(value) == _text_as_before(value)
