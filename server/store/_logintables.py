"""People and their logins in SQL both backends run: pending interactive
logins, the groups an identity provider last gave each person, and the people
admitted at runtime. A mixin of `SqlStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from server.protocol.keys import MachinePublic, NodePublic
from server.store import _rows as rows
from server.store._db import SqlBackend
from server.store._rand import LOWER_ALNUM, random_text
from server.store.model import PendingLogin, Rng, RuntimeUser

__all__ = ["LoginTables"]

_AUTH_ID_LEN = 32


class LoginTables(SqlBackend):
    # Pending interactive logins

    def create_pending_login(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        ephemeral: bool,
        now: datetime,
        rng: Rng,
    ) -> str:
        auth_id = random_text(rng, LOWER_ALNUM, _AUTH_ID_LEN)
        with self._write() as db:
            db.execute(
                f"INSERT INTO pending_logins ({rows.LOGIN_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (auth_id, machine_key.raw, node_key.raw, ephemeral, rows.ts(now)),
            )
        return auth_id

    def get_pending_login(self, auth_id: str) -> PendingLogin | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {rows.LOGIN_COLUMNS} FROM pending_logins WHERE auth_id = ?", (auth_id,)
            ).fetchone()
        return None if row is None else rows.login_from_row(row)

    def delete_pending_login(self, auth_id: str) -> bool:
        with self._write() as db:
            cursor = db.execute("DELETE FROM pending_logins WHERE auth_id = ?", (auth_id,))
            return cursor.rowcount > 0

    def delete_pending_logins_before(self, before: datetime) -> int:
        with self._write() as db:
            cursor = db.execute("DELETE FROM pending_logins WHERE created < ?", (rows.ts(before),))
            return cursor.rowcount

    # -- identity-provider groups ----------------------------------------------------

    def set_login_groups(self, email: str, groups: Sequence[str], now: datetime) -> None:
        with self._write() as db:
            db.execute("DELETE FROM login_groups WHERE email = ?", (email,))
            db.execute(
                "INSERT INTO login_groups (email, groups, updated) VALUES (?, ?, ?)",
                (email, rows.json_list(sorted(groups)), rows.ts(now)),
            )

    def login_groups(self) -> dict[str, tuple[str, ...]]:
        with self._read() as db:
            found = db.execute("SELECT email, groups FROM login_groups ORDER BY email").fetchall()
        return {str(row[0]): rows.str_tuple(row[1]) for row in found}

    def last_logins(self) -> dict[str, datetime]:
        with self._read() as db:
            found = db.execute("SELECT email, updated FROM login_groups ORDER BY email").fetchall()
        return {str(row[0]): rows.dt_required(row[1]) for row in found}

    # -- people admitted at runtime ----------------------------------------------------

    def admit_runtime_user(self, email: str, now: datetime) -> tuple[RuntimeUser, bool]:
        with self._write() as db:
            row = db.execute(
                "SELECT created FROM runtime_users WHERE email = ?", (email,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO runtime_users (email, created, last_login) VALUES (?, ?, ?)",
                    (email, rows.ts(now), rows.ts(now)),
                )
                return RuntimeUser(email, now, now), True
            db.execute(
                "UPDATE runtime_users SET last_login = ? WHERE email = ?", (rows.ts(now), email)
            )
            return RuntimeUser(email, rows.dt_required(row[0]), now), False

    def delete_runtime_user(self, email: str) -> bool:
        with self._write() as db:
            cursor = db.execute("DELETE FROM runtime_users WHERE email = ?", (email,))
            return cursor.rowcount > 0

    def runtime_users(self) -> list[RuntimeUser]:
        with self._read() as db:
            found = db.execute(
                "SELECT email, created, last_login FROM runtime_users ORDER BY email"
            ).fetchall()
        return [
            RuntimeUser(str(r[0]), rows.dt_required(r[1]), rows.dt_required(r[2])) for r in found
        ]
