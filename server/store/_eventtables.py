"""The audit trail and the webhook outbox, in SQL both backends run.

A mixin of `SqlStore`. Both tables are bounded: the audit trail keeps the
newest `AUDIT_KEEP` entries (an unauthenticated caller's refused requests are
recorded too, so a flood must not grow the file without end), the outbox the
newest `OUTBOX_KEEP`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from server.store import _rows as rows
from server.store._db import SqlBackend
from server.store.model import AuditEntry, OutboxItem

__all__ = ["AUDIT_KEEP", "OUTBOX_KEEP", "EventTables"]

AUDIT_KEEP = 100_000
OUTBOX_KEEP = 100_000
_AUDIT_COLUMNS = "id, at, actor, action, target, params, status, result, detail"
_OUTBOX_COLUMNS = "id, url, queue, body, attempts"


class EventTables(SqlBackend):
    # Audit trail

    def record_audit(
        self,
        *,
        at: datetime,
        actor: str,
        action: str,
        target: str | None,
        params: dict[str, Any],
        status: int,
        result: str,
        detail: str | None = None,
    ) -> AuditEntry:
        with self._write() as db:
            cursor = db.execute(
                f"INSERT INTO audit_log ({_AUDIT_COLUMNS.removeprefix('id, ')})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (rows.ts(at), actor, action, target, json.dumps(params), status, result, detail),
            )
            entry_id = int(cursor.fetchone()[0])
            if entry_id > AUDIT_KEEP:
                db.execute("DELETE FROM audit_log WHERE id <= ?", (entry_id - AUDIT_KEEP,))
        return AuditEntry(entry_id, at, actor, action, target, params, status, result, detail)

    def list_audit(self, *, since: datetime | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries at or after `since`, newest first."""
        where, params = ("WHERE at >= ? ", [rows.ts(since)]) if since is not None else ("", [])
        with self._read() as db:
            found = db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log {where}ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [
            AuditEntry(
                int(r[0]), rows.dt_required(r[1]), r[2], r[3], r[4], json.loads(r[5]),
                int(r[6]), r[7], r[8],
            )
            for r in found
        ]  # fmt: skip

    # Webhook outbox

    def add_outbox(self, items: Sequence[tuple[str, str, bytes]]) -> list[OutboxItem]:
        """Append (url, queue, body) deliveries; the stored items, in order."""
        added = []
        with self._write() as db:
            for url, queue, body in items:
                cursor = db.execute(
                    "INSERT INTO webhook_outbox (url, queue, body) VALUES (?, ?, ?) RETURNING id",
                    (url, queue, body.decode()),
                )
                added.append(OutboxItem(int(cursor.fetchone()[0]), url, queue, body))
            if added and added[-1].id > OUTBOX_KEEP:
                db.execute(
                    "DELETE FROM webhook_outbox WHERE id <= ?", (added[-1].id - OUTBOX_KEEP,)
                )
        return added

    def list_outbox(self) -> list[OutboxItem]:
        """Every delivery not yet acknowledged, oldest first."""
        with self._read() as db:
            found = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox ORDER BY id"
            ).fetchall()
        return [OutboxItem(int(r[0]), r[1], r[2], r[3].encode(), int(r[4])) for r in found]

    def outbox_attempted(self, item_id: int) -> None:
        with self._write() as db:
            db.execute("UPDATE webhook_outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    def remove_outbox(self, item_id: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM webhook_outbox WHERE id = ?", (item_id,))

    def count_outbox(self) -> int:
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0])
