"""The store: migrations, seed, the closed audit vocabulary, Neon URLs, idempotent writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

import db
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def test_audit_vocabulary_in_python_equals_the_database_constraint(pool: asyncpg.Pool) -> None:
    assert await db.audit_action_constraint_values(pool) == {a.value for a in db.AuditAction}


async def test_an_unknown_audit_action_fails_loudly_in_both_places(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError):
        db.AuditAction("refund_isued")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("INSERT INTO audit_log (action) VALUES ('refund_isued')")


async def test_migrations_are_idempotent_and_seed_never_lands_on_existing_data(pool: asyncpg.Pool) -> None:
    assert await db.migrate(pool) == []
    assert await db.seed_sample_data(pool) is False
    tiers = [c.tier for c in await db.list_customers(pool)]
    assert len(tiers) == 5 and set(tiers) == {"free", "pro", "enterprise"}
    for customer in await db.list_customers(pool):
        assert len(await db.list_orders(pool, customer_id=customer.id)) >= 2


async def test_audit_writes_with_the_same_key_land_once(pool: asyncpg.Pool) -> None:
    first = await db.record_audit(
        pool, action=db.AuditAction.REPLY_SENT, run_id="r", customer_id=1, idempotency_key="k"
    )
    again = await db.record_audit(
        pool, action=db.AuditAction.REPLY_SENT, run_id="r", customer_id=1, idempotency_key="k"
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


def test_worker_and_db_never_import_inngest() -> None:
    code = "import sys, worker, db, settings, offline_model; print('inngest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_inngest_app_imports_inngest() -> None:
    """The swap-the-engine promise: every other top-level module is engine-free."""
    import ast

    offenders = []
    for path in sorted(ROOT.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if "inngest" in names and path.name != "inngest_app.py":
            offenders.append(path.name)
    assert offenders == []
