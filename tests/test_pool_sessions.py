"""The host's pool skips asyncpg's reset round trip on release (store.postgres.keep_no_session_state), so
its connections must come back from every flow without session state: no settings changed by
`SET`, no other role, no advisory locks, no `LISTEN`, no open cursors, no temporary tables."""

from __future__ import annotations

from typing import Any

import asyncpg
from tests_support import GRACE, Engine

import inngest_app

SESSION_STATE = """
SELECT (SELECT count(*) FROM pg_settings WHERE source = 'session') AS settings_changed,
       current_user = session_user AS own_role,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
       (SELECT count(*) FROM pg_listening_channels()) AS listening,
       (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,  -- '' is this query's own portal
       (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()) AS temp_tables
"""
CLEAN = {
    "settings_changed": 0,
    "own_role": True,
    "advisory_locks": 0,
    "listening": 0,
    "cursors": 0,
    "temp_tables": 0,
}
CHARGED_TWICE = {"customer_id": GRACE, "subject": "Double charge", "body": "I was charged twice for order 1003"}


async def _every_connection(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """The session state of as many connections as the pool holds, all taken at once."""
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        return [dict(await conn.fetchrow(SESSION_STATE)) for conn in held]
    finally:
        for conn in held:
            await pool.release(conn)


async def test_the_hosts_connections_keep_no_session_state_after_a_refund_and_the_fan_out(engine: Engine) -> None:
    refund = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True))
    assert refund.status == "completed", refund.error
    fan_out = await engine.driver.run("daily-customer-health-check", {"name": "inngest/scheduled.timer", "data": {}})
    assert fan_out.status == "completed", fan_out.error
    assert await _every_connection(inngest_app.runtime().require_pool()) == [CLEAN] * 5


async def test_the_check_sees_a_setting_left_behind_because_the_host_pool_does_not_reset(engine: Engine) -> None:
    # The control: a `SET` outside a transaction survives the release; host code must not do it.
    pool = inngest_app.runtime().require_pool()
    async with pool.acquire() as conn:
        await conn.execute("SET statement_timeout = 12345")
    try:
        states = await _every_connection(pool)
        assert sum(state["settings_changed"] for state in states) == 1
    finally:
        for _ in range(pool.get_max_size()):
            async with pool.acquire() as conn:
                await conn.execute("RESET ALL")
