"""The PostgreSQL backend of the store, for replicas sharing one database: the
pooled store (`_store.py`) and how its migrations are applied (`_migrate.py`).
The SQL itself is the backend-neutral `server.store._sqlstore`. Importing this
package imports psycopg: `server.store.open_store` does so only for a
`postgresql://` URL."""

from server.store.postgres._migrate import apply_postgres_migrations
from server.store.postgres._store import PostgresStore, open_postgres

__all__ = ["PostgresStore", "apply_postgres_migrations", "open_postgres"]
