"""The sqlite backend of the store: one file, one connection (`_store.py`),
and how its migrations are applied (`_migrate.py`). The SQL itself is the
backend-neutral `server.store._sqlstore`."""

from server.store.sqlite._migrate import apply_migrations
from server.store.sqlite._store import SqliteStore, data_version, open_sqlite

__all__ = ["SqliteStore", "apply_migrations", "data_version", "open_sqlite"]
