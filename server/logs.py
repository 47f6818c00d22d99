"""Log lines people and log shippers can both read (`--log-format`).

Important events carry a stable `event` name and their fields (node, user,
commit, …) through the standard library's `extra=`:

    log.info("node %d joined", node.id, extra=event("node.registered", node=node.id))

`json` writes one object per line — `time`, `level`, `event`, `msg`, then the
fields — and `text` the usual line with the fields appended as `key=value`.
Lines without an event name are `"event": "log"`.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["EventFormatter", "LogFormat", "event", "log_handler"]

LogFormat = Literal["json", "text"]
# What every LogRecord has; anything else on a record came through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The `extra=` of a log call: the event's stable name and its fields.
    (Field names must not be LogRecord attributes: `node_name`, not `name`.)"""
    return {"event": name, **fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k != "event"}


class EventFormatter(logging.Formatter):
    def __init__(self, style: LogFormat = "text") -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        name = getattr(record, "event", None) or "log"
        fields = _fields(record)
        message = record.getMessage()
        error = self.formatException(record.exc_info) if record.exc_info else None
        if self._json:
            line = {"time": stamp, "level": record.levelname.lower(), "event": name}
            line |= {"msg": message, **fields}
            if error:
                line["error"] = error
            return json.dumps(line, default=str, ensure_ascii=False)
        pairs = "".join(f" {k}={_text(v)}" for k, v in {"event": name, **fields}.items())
        # The fields end the first line; a multi-line message (a rejected
        # commit's errors) follows it.
        first, newline, rest = message.partition("\n")
        text = f"{stamp} {record.levelname} {first}"
        text += (pairs if name != "log" or fields else "") + newline + rest
        return text + (f"\n{error}" if error else "")


# What makes a `text` field value need quoting; one search, not a generator
# per character class (a registration's line has five fields).
_NEEDS_QUOTES = re.compile('[ "=\n]')


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif type(value) is int:
        return str(value)  # what json.dumps writes, and never quoted
    else:
        text = json.dumps(value, default=str)
    return json.dumps(text) if not text or _NEEDS_QUOTES.search(text) else text


def log_handler(style: LogFormat, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `style` lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(style))
    return handler
