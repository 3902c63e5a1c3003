"""The migration runner: versioned files applied once, in order, under a lock, never edited."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import db
from support_worker.core.settings import Settings
from support_worker.store import migrate, sample_data, schema
from support_worker.store.sample_data import ADA

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def empty_db(empty_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(empty_database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _recorded(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch("SELECT version, filename, checksum FROM schema_migrations ORDER BY version")
    return [(r["version"], r["filename"], r["checksum"]) for r in rows]


def _write(directory: Path, files: dict[str, str]) -> list[migrate.Migration]:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return migrate.load_migrations(directory)


async def test_migrating_an_empty_database_applies_the_baseline_once(empty_db: asyncpg.Connection) -> None:
    files = migrate.load_migrations()
    assert await schema.migrate_database(empty_db) == [m.filename for m in files]
    assert [(v, f) for v, f, _ in await _recorded(empty_db)] == [(m.version, m.filename) for m in files]
    assert [c for _, _, c in await _recorded(empty_db)] == [m.checksum for m in files]
    assert await schema.audit_action_names(empty_db) == {a.value for a in db.AuditAction}
    indexes = {r["indexname"] for r in await empty_db.fetch("SELECT indexname FROM pg_indexes")}
    assert {"refunds_order_idx", "refund_requests_status_expires_idx"} <= indexes
    await schema.check_schema_current(empty_db)


async def test_a_second_migrate_applies_nothing(empty_db: asyncpg.Connection) -> None:
    await schema.migrate_database(empty_db)
    before = await _recorded(empty_db)
    assert await schema.migrate_database(empty_db) == []
    assert await _recorded(empty_db) == before


async def test_files_apply_in_version_order_each_in_its_own_transaction(
    empty_db: asyncpg.Connection, tmp_path: Path
) -> None:
    files = _write(
        tmp_path,
        {
            "0002_fill.sql": "INSERT INTO t VALUES (2);",
            "0001_create.sql": "CREATE TABLE t (n int);",
            "0003_broken.sql": "INSERT INTO t VALUES (3); INSERT INTO no_such_table VALUES (1);",
        },
    )
    with pytest.raises(migrate.MigrationError, match=r"0003_broken\.sql failed and was rolled back"):
        await migrate.apply_pending(empty_db, files)
    assert [v for v, _, _ in await _recorded(empty_db)] == [1, 2]
    assert await empty_db.fetchval("SELECT array_agg(n) FROM t") == [2]  # 0003's insert rolled back


async def test_two_concurrent_migrators_apply_each_file_once(empty_database_url: str, tmp_path: Path) -> None:
    # CREATE TABLE without IF NOT EXISTS fails if applied twice, and the counter counts.
    files = _write(
        tmp_path,
        {
            "0001_create.sql": "CREATE TABLE applied (file text);",
            "0002_count.sql": "INSERT INTO applied VALUES ('0002');",
        },
    )
    holder, first, second = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        # Hold the lock so both migrators are provably queued at once, then let them go.
        await holder.execute("SELECT pg_advisory_lock($1)", migrate.ADVISORY_LOCK_KEY)
        runs = [asyncio.create_task(migrate.apply_pending(c, files)) for c in (first, second)]
        await _until_waiting_on_the_lock(holder, count=2)
        await holder.execute("SELECT pg_advisory_unlock($1)", migrate.ADVISORY_LOCK_KEY)
        applied = await asyncio.gather(*runs)
        assert sorted(len(a) for a in applied) == [0, 2]
        assert await holder.fetchval("SELECT count(*) FROM applied") == 1
        assert [v for v, _, _ in await _recorded(holder)] == [1, 2]
    finally:
        for conn in (holder, first, second):
            await conn.close()


async def _until_waiting_on_the_lock(conn: asyncpg.Connection, *, count: int) -> None:
    for _ in range(500):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted",
            migrate.ADVISORY_LOCK_KEY,
        )
        if waiting == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} migrators never queued on the advisory lock")


async def test_an_applied_file_that_changed_is_refused_by_name(empty_db: asyncpg.Connection, tmp_path: Path) -> None:
    files = _write(tmp_path, {"0001_create.sql": "CREATE TABLE t (n int);"})
    await migrate.apply_pending(empty_db, files)
    edited = _write(tmp_path, {"0001_create.sql": "CREATE TABLE t (n bigint);"})
    with pytest.raises(migrate.MigrationError, match=r"migrations/0001_create\.sql was changed after it was applied"):
        await migrate.apply_pending(empty_db, edited)
    with pytest.raises(migrate.MigrationError, match=r"0001_create\.sql was changed"):
        await migrate.check_current(empty_db, edited)


async def test_a_misnamed_migration_file_is_refused(tmp_path: Path) -> None:
    shutil.copy(migrate.MIGRATIONS_DIR / "0001_baseline.sql", tmp_path / "0001_baseline.sql")
    (tmp_path / "2_add_column.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match=r"2_add_column\.sql: migration files are named NNNN_"):
        migrate.load_migrations(tmp_path)


async def test_opening_a_pool_on_an_unmigrated_database_says_to_run_migrate(empty_database_url: str) -> None:
    settings = Settings(_env_file=None, database_url=empty_database_url)  # type: ignore[call-arg]
    with pytest.raises(migrate.SchemaNotCurrentError, match=r"0001_baseline\.sql.*Run: support-worker migrate"):
        await db.create_pool(settings, max_size=1)
    # Opening the pool changed nothing: no migration ran as a side effect.
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_a_new_audit_action_not_yet_migrated_is_named(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await schema.check_schema_current(conn)
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("DELETE FROM audit_actions WHERE name = 'outreach_recorded'")
            with pytest.raises(migrate.SchemaNotCurrentError, match=r"outreach_recorded.*support-worker migrate"):
                await schema.check_schema_current(conn)
        finally:
            await tx.rollback()


async def test_a_database_from_the_old_in_code_migrations_gets_told_to_recreate(empty_db: asyncpg.Connection) -> None:
    await empty_db.execute("CREATE TABLE schema_migrations (version int PRIMARY KEY, applied_at timestamptz)")
    with pytest.raises(migrate.MigrationError, match=r"no upgrade path.*support-worker migrate"):
        await migrate.check_current(empty_db)


async def test_migrate_and_seed_commands_on_a_fresh_database(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from support_worker.cli import main as cli

    settings = Settings(_env_file=None, database_url=empty_database_url)  # type: ignore[call-arg]
    # Only the environment matters here; the production checks on secrets are tested in test_settings.
    production = Settings.model_construct(**(dict(settings) | {"environment": "production"}))

    async def run(argv: list[str], with_settings: Settings = settings) -> tuple[int, str]:
        code = await cli.run_async(cli.parser().parse_args(argv), with_settings)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    with pytest.raises(migrate.SchemaNotCurrentError, match="Run: support-worker migrate"):
        await run(["seed"])
    every_file = ", ".join(m.filename for m in migrate.load_migrations())
    assert every_file.startswith("0001_baseline.sql")
    assert await run(["migrate"]) == (0, f"migrated: applied {every_file}\n")
    assert await run(["migrate"]) == (0, "migrated: nothing to apply, the schema is current\n")
    code, said = await run(["seed"], production)
    assert code == 1 and "ENVIRONMENT is production" in said
    assert await run(["seed"]) == (0, "seeded: 6 sample customers (c-4428 to c-test-1) with orders (ids from 1001)\n")
    code, said = await run(["seed"])
    assert code == 0 and said.startswith("seed: nothing to do")
    async with db.open_pool(settings, max_size=1) as pool:
        assert [c.id for c in await db.list_customers(pool)] == [c[0] for c in sample_data.CUSTOMERS]
        assert [o.id for o in await db.list_orders(pool, customer_id=ADA)] == [1001, 1002]


def test_a_command_on_an_unmigrated_database_prints_what_to_run_not_a_traceback(empty_database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "INNGEST"))}
    done = subprocess.run(
        [sys.executable, "-m", "support_worker", "pending"],
        cwd=ROOT,
        env=env | {"DATABASE_URL": empty_database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    every_file = ", ".join(m.filename for m in migrate.load_migrations())
    assert done.stderr.strip() == (
        f"The database schema is not current (not applied: {every_file}). Run: support-worker migrate"
    )
