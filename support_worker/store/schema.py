"""The schema's state: apply the migration files, fill the audit vocabulary, check both.

`support-worker migrate` (and `up`) call `migrate_database`, the only way the schema changes;
`db.create_pool` calls `check_schema_current` so a pool refuses a database behind this code.
The SQL files themselves are applied by `migrate.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

from support_worker.store import migrate
from support_worker.store.audit_actions import AuditAction


async def migrate_database(conn: migrate.Connection) -> list[str]:
    """Apply pending migration files, then add missing audit actions; the applied file names.

    The only way the schema changes (`support-worker migrate`, `up`). Safe to run from several
    processes at once: the files queue on an advisory lock and the sync only inserts.
    """
    applied = await migrate.apply_pending(conn)
    await sync_audit_actions(conn)
    return [m.filename for m in applied]


async def sync_audit_actions(conn: migrate.Connection, *, names: Iterable[str] | None = None) -> None:
    """Insert the `AuditAction` names (or `names`) that `audit_actions` lacks.

    INSERT ... ON CONFLICT DO NOTHING takes a row-exclusive lock on `audit_actions` only,
    which no writer of `audit_log` conflicts with (their foreign-key checks share-lock the
    referenced rows), so adding an action never waits for, or blocks, the audit trail.
    Names that left the enum stay: old audit rows still refer to them.
    """
    wanted = [a.value for a in AuditAction] if names is None else list(names)
    await conn.execute(
        "INSERT INTO audit_actions (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING", wanted
    )


async def audit_action_names(conn: migrate.Connection) -> set[str]:
    """The action names the database accepts in `audit_log.action`."""
    return {r["name"] for r in await conn.fetch("SELECT name FROM audit_actions")}


async def check_schema_current(conn: migrate.Connection) -> None:
    """Raise `migrate.SchemaNotCurrentError` (saying what to run) unless migrations are applied
    and every `AuditAction` is in the database. Three small queries; runs on every pool."""
    await migrate.check_current(conn)
    missing = await conn.fetchval(
        "SELECT array(SELECT unnest($1::text[]) EXCEPT SELECT name FROM audit_actions ORDER BY 1)",
        [a.value for a in AuditAction],
    )
    if missing:
        raise migrate.SchemaNotCurrentError(
            f"db.AuditAction has actions the database does not accept yet ({', '.join(missing)}). "
            "Run: support-worker migrate"
        )
