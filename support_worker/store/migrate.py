"""Versioned SQL migrations: `migrations/NNNN_what_it_does.sql`, applied in order by one command.

The way Alembic, Django and sqitch do it: `support-worker migrate` applies the files not
applied yet, each in its own transaction, under a session-level advisory lock so migrators
started at once (two deploys, parallel test workers) queue instead of racing. Each applied
file's sha256 is kept in `schema_migrations`; an applied file that changed is refused, because
the database would silently differ from what the file now says. Nothing else migrates: opening
a pool only calls `check_current`, which says what to run when the schema is behind.

Plain asyncpg and no knowledge of the store's tables or of any durable engine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Found next to this module, so an installed copy finds the files it was installed with.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Every migrator in every process waits on this key (session-level, so it spans the
# per-file transactions).
ADVISORY_LOCK_KEY = 7262611
_FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Connection = asyncpg.Connection | PoolConnectionProxy

_CREATE_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version     int PRIMARY KEY,
        filename    text NOT NULL,
        checksum    text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""

_LEGACY_DATABASE = (
    "This database was set up by the in-code migrations that came before versioned SQL files "
    "(its schema_migrations table has no checksums), and there is no upgrade path from them. "
    "Recreate it: for the embedded PostgreSQL delete the EMBEDDED_PG_DIR directory (default ./.pgdata), "
    "otherwise drop and create the database named in DATABASE_URL; then run: support-worker migrate"
)


class MigrationError(RuntimeError):
    """The database and the migration files disagree; the message says what to do about it."""


class SchemaNotCurrentError(MigrationError):
    """The database has not been migrated to what this code expects."""


@dataclass(frozen=True)
class Migration:
    version: int
    filename: str
    sql: str
    checksum: str  # sha256 of the file's bytes


@dataclass(frozen=True)
class _Applied:
    filename: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every `NNNN_name.sql` file in `directory`, in version order.

    A stray or misnamed `.sql` file is an error rather than skipped: a migration that is
    silently never applied is worse than a command that refuses to run.
    """
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path}: migration files are named NNNN_what_it_does.sql (four digits, lower case); rename it"
            )
        data = path.read_bytes()
        migrations.append(Migration(int(match[1]), path.name, data.decode(), hashlib.sha256(data).hexdigest()))
    if not migrations:
        raise MigrationError(f"no migration files in {directory}: reinstall with pip install -e .")
    versions = [m.version for m in migrations]
    shared = sorted({v for v in versions if versions.count(v) > 1})
    if shared:
        raise MigrationError(f"two migration files share version {shared[0]:04d}: renumber the newer one")
    return migrations


async def _applied(conn: Connection) -> dict[int, _Applied]:
    """What `schema_migrations` says was applied; empty when the table does not exist yet."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    columns = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'schema_migrations'"
    )
    if "checksum" not in {c["column_name"] for c in columns}:
        raise MigrationError(_LEGACY_DATABASE)
    rows = await conn.fetch("SELECT version, filename, checksum FROM schema_migrations")
    return {r["version"]: _Applied(r["filename"], r["checksum"]) for r in rows}


def _pending(applied: Mapping[int, _Applied], migrations: Sequence[Migration]) -> list[Migration]:
    """The files still to apply, after refusing a database the files no longer describe."""
    on_disk = {m.version: m for m in migrations}
    unknown = sorted(set(applied) - set(on_disk))
    if unknown:
        names = ", ".join(applied[v].filename for v in unknown)
        raise MigrationError(
            f"the database has migrations this code does not have ({names}): it was migrated by newer code. "
            "Update this checkout (git pull) before using this database."
        )
    for version, row in sorted(applied.items()):
        migration = on_disk[version]
        if row.checksum != migration.checksum:
            raise MigrationError(
                f"migrations/{migration.filename} was changed after it was applied to this database "
                f"(sha256 applied {row.checksum[:12]}…, file now {migration.checksum[:12]}…). Applied "
                f"migrations must not change: restore it (git checkout -- migrations/{migration.filename}) "
                "and put the change in a new migration file."
            )
    return [m for m in migrations if m.version not in applied]


async def apply_pending(conn: Connection, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply the files not applied yet, in version order, each in its own transaction.

    Returns what was applied (empty when the schema was current). Holds the advisory lock
    for the whole run, so a second migrator waits and then finds nothing to do.
    """
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        pending = _pending(await _applied(conn), migrations)
        for migration in pending:
            await _apply_one(conn, migration)
        return pending
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


async def _apply_one(conn: Connection, migration: Migration) -> None:
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, filename, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.filename,
                migration.checksum,
            )
    except asyncpg.PostgresError as error:
        raise MigrationError(
            f"migrations/{migration.filename} failed and was rolled back: {error}. "
            "Fix the file (it was not applied) and run support-worker migrate again."
        ) from error


async def check_current(conn: Connection, migrations: Sequence[Migration] | None = None) -> None:
    """Raise `SchemaNotCurrentError` naming the command to run unless every file is applied.

    Cheap enough for every pool: one catalog lookup and one small table read.
    """
    migrations = load_migrations() if migrations is None else migrations
    pending = _pending(await _applied(conn), migrations)
    if pending:
        names = ", ".join(m.filename for m in pending)
        raise SchemaNotCurrentError(
            f"The database schema is not current (not applied: {names}). Run: support-worker migrate"
        )
