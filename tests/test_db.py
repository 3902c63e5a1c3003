"""The store: the closed audit vocabulary, seed, Neon URLs, idempotent writes (migrations: test_migrate.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

import db
from support_worker.core.settings import Settings
from support_worker.store import sample_data, schema
from support_worker.store.sample_data import ADA

ROOT = Path(__file__).resolve().parent.parent


async def test_audit_vocabulary_in_python_equals_the_database_table(pool: asyncpg.Pool) -> None:
    assert await schema.audit_action_names(pool) == {a.value for a in db.AuditAction}


async def test_an_unknown_audit_action_fails_loudly_in_both_places(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError):
        db.AuditAction("refund_isued")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO audit_log (action) VALUES ('refund_isued')")


async def test_adding_an_audit_action_takes_no_lock_that_blocks_audit_writers(pool: asyncpg.Pool) -> None:
    """A run is mid-transaction with an audit row written; a new action still goes in at once."""
    writer = await pool.acquire()
    syncer = await pool.acquire()
    writing = writer.transaction()
    await writing.start()
    try:
        await writer.execute("INSERT INTO audit_log (action) VALUES ('reply_sent')")
        await syncer.execute("SET lock_timeout = '1s'")
        # The control: what the old CHECK constraint needed cannot get its lock right now.
        with pytest.raises(asyncpg.LockNotAvailableError):
            await syncer.execute(
                "ALTER TABLE audit_log ADD CONSTRAINT audit_log_action_probe CHECK (action <> '') NOT VALID"
            )
        adding = syncer.transaction()
        await adding.start()
        try:
            await schema.sync_audit_actions(syncer, names=[*db.AuditAction, "refund_reconsidered"])
            assert "refund_reconsidered" in await schema.audit_action_names(syncer)
            # (No audit row from `syncer` here: audit writers queue on the hash chain's head
            # until the writer's transaction ends, by design; see tests/test_controls.py.)
            # And the other way round: with the new action uncommitted, the writer goes on writing.
            await writer.execute("SET LOCAL lock_timeout = '1s'")
            await writer.execute("INSERT INTO audit_log (action) VALUES ('message_received')")
        finally:
            # Rolled back, so the table keeps equalling the enum for the tests after this one.
            await adding.rollback()
    finally:
        await writing.rollback()
        await syncer.execute("RESET lock_timeout")
        await pool.release(syncer)
        await pool.release(writer)
    assert await schema.audit_action_names(pool) == {a.value for a in db.AuditAction}


async def test_seed_never_lands_on_existing_data(pool: asyncpg.Pool) -> None:
    assert await sample_data.seed(pool) is False
    tiers = [c.tier for c in await db.list_customers(pool)]
    assert len(tiers) == 6 and set(tiers) == {"free", "pro", "enterprise"}
    for customer in await db.list_customers(pool):
        assert len(await db.list_orders(pool, customer_id=customer.id)) >= 2


async def test_audit_writes_with_the_same_key_land_once(pool: asyncpg.Pool) -> None:
    first = await db.record_audit(
        pool, action=db.AuditAction.REPLY_SENT, run_id="r", customer_id=ADA, idempotency_key="k"
    )
    again = await db.record_audit(
        pool, action=db.AuditAction.REPLY_SENT, run_id="r", customer_id=ADA, idempotency_key="k"
    )
    assert (first, again) == (True, False)
    assert len(await db.list_audit(pool, run_id="r")) == 1


async def test_audit_write_errors_reach_the_caller(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "INSERT INTO refunds (idempotency_key, customer_id, order_id, amount_cents, reason)"
            " VALUES ('x', 999, 1001, 1, 'r')"
        )
    with pytest.raises(ValueError):
        await db.record_audit(pool, action="bogus", run_id=None, customer_id=None)  # type: ignore[arg-type]


def test_neon_pooled_url_turns_off_the_statement_cache_and_drops_channel_binding() -> None:
    url = (
        "postgresql://neondb_owner:npg_secret@ep-cool-darkness-a1b2c3d4-pooler.us-east-2.aws.neon.tech/neondb"
        "?sslmode=require&channel_binding=require"
    )
    dsn, options = db.connect_options(url)
    assert "channel_binding" not in dsn and "sslmode=require" in dsn
    assert options == {"statement_cache_size": 0}


def test_migrations_use_neons_direct_endpoint_because_pgbouncer_drops_session_locks() -> None:
    pooled = "postgresql://u:x-pooler.y@ep-cool-darkness-a1b2c3d4-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require"
    assert db.direct_url(pooled) == (
        "postgresql://u:x-pooler.y@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech/neondb?sslmode=require"
    )
    assert db.direct_url("postgresql://u:p@localhost/app") == "postgresql://u:p@localhost/app"


def test_neon_direct_url_keeps_the_statement_cache() -> None:
    url = "postgresql://u:p@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require"
    dsn, options = db.connect_options(url)
    assert dsn == "postgresql://u:p@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech/neondb?sslmode=require"
    assert options == {}


async def test_a_url_with_libpq_only_options_still_connects(database_url: str) -> None:
    separator = "&" if "?" in database_url else "?"
    settings = Settings(_env_file=None, database_url=f"{database_url}{separator}channel_binding=prefer")  # type: ignore[call-arg]
    async with db.open_pool(settings, max_size=1) as pool:
        assert await pool.fetchval("SELECT 1") == 1


# The doors on top of the durable layer: they send events through `inngest_app`.
ABOVE_THE_ENGINE = ("support_worker.cli", "support_worker.ops.bench", "support_worker.__main__")


def test_worker_db_and_the_package_never_import_inngest() -> None:
    """Importing the agent, the store and every room below the durable layer loads no engine."""
    code = (
        "import pkgutil, importlib, sys, worker, db, support_worker\n"
        "for m in pkgutil.walk_packages(support_worker.__path__, 'support_worker.'):\n"
        f"    if not m.name.startswith({ABOVE_THE_ENGINE!r}): importlib.import_module(m.name)\n"
        "print('inngest' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_inngest_app_imports_inngest() -> None:
    """The swap-the-engine promise: every other module of the product, in any folder, is engine-free."""
    import ast

    offenders = []
    product = [*ROOT.glob("*.py"), *(ROOT / "support_worker").rglob("*.py")]
    assert len(product) > 40, "the scan must see the whole package"
    for path in sorted(product):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if "inngest" in names and path.name != "inngest_app.py":
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
