"""The host SIGKILLed between calls and in the middle of paying, and its Postgres connections
terminated under it: the engine resumes with the same memo and the money moves once."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from inngest_driver import UNREACHABLE, CallRecord, InngestDriver, StubInngestServer
from tests_support import EMAIL_FN, Engine

import inngest_app
from chaos import chaos_support
from chaos.chaos_support import (
    CHARGED_TWICE,
    Host,
    Ledger,
    assert_story,
    blocked_backend,
    host_backends,
    terminate_host_backends,
    wait_until,
)

# Deselected by default (minutes of fault injection); CI runs `pytest -n auto -m chaos`.
pytestmark = pytest.mark.chaos

EVENT = {"name": inngest_app.EMAIL_RECEIVED, "id": "evt-chaos-1", "data": CHARGED_TWICE, "ts": 1_790_000_000_000}


def engine_of(driver: InngestDriver, stub: StubInngestServer, pool: asyncpg.Pool) -> Engine:
    return Engine(driver=driver, stub=stub, pool=pool)


async def test_sigkill_between_calls_resumes_with_the_same_memo(
    host: Host,
    driver: InngestDriver,
    stub: StubInngestServer,
    pool: asyncpg.Pool,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """Every other call finds a freshly restarted host: nothing in memory survives, the memo
    and the journal do."""
    seen = 0

    async def kill_every_other(rec: CallRecord) -> None:
        nonlocal seen
        seen += 1
        if seen % 2 == 0:
            await host.restart()
            ledger.fault("SIGKILL between calls")

    engine = engine_of(driver, stub, pool)
    run = await driver.run(EMAIL_FN, EVENT, resolver=engine.reviewer(approved=True), before_call=kill_every_other)
    ledger.runs += 2  # the email and the decision
    assert ledger.faults["SIGKILL between calls"] >= 2  # an approved email is five calls
    await assert_story(pool, run, "approved")
    # Finished steps never ran again: each executed once although the host died between calls.
    executed = [name for name, op in run.ops if op == "StepRun"]
    assert executed and all(run.runs_of(name) == 1 for name in executed), executed
    print(await ledger.report(request.node, pool))


async def _hold(holder: asyncpg.Connection, how: str) -> Any:
    """Open a transaction that makes the host's payment block where `how` says."""
    tx = holder.transaction()
    await tx.start()
    if how == "host-holds-order-lock":
        # The host locks the request and the order, re-checks the policy, then waits to insert
        # its refund: it is killed while its transaction holds the order lock.
        await holder.execute("LOCK TABLE refunds IN SHARE MODE")
    else:
        # The host locks the request, then waits for the order lock the test holds.
        await holder.execute("SELECT id FROM orders WHERE id = 1003 FOR UPDATE")
    return tx


BLOCKED_ON = {"host-holds-order-lock": "INSERT INTO refunds", "host-waits-for-order-lock": "SELECT id FROM orders"}


@pytest.mark.parametrize("how", list(BLOCKED_ON))
async def test_sigkill_while_a_payment_transaction_holds_the_lock(
    how: str,
    host: Host,
    driver: InngestDriver,
    stub: StubInngestServer,
    pool: asyncpg.Pool,
    admin: asyncpg.Connection,
    holder: asyncpg.Connection,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """The payment's transaction is mid-flight when the host dies. Postgres rolls it back when
    the orphaned backend finds its client gone; the retried call pays exactly once."""
    engine = engine_of(driver, stub, pool)
    approve = engine.reviewer(approved=True)
    chaos: dict[str, Any] = {}

    async def kill_mid_payment() -> None:
        pid = await wait_until(lambda: blocked_backend(admin, host, BLOCKED_ON[how]), what="the payment to block")
        if how == "host-holds-order-lock":  # the blocked transaction holds the order row lock
            assert await admin.fetchval(
                "SELECT bool_or(granted) FROM pg_locks WHERE pid = $1 AND relation = 'orders'::regclass"
                " AND mode = 'RowShareLock'",
                pid,
            )
        host.kill()
        chaos["fired"] = True
        ledger.fault(f"SIGKILL mid-payment ({how})")
        await chaos["tx"].rollback()
        # The orphan ends when it next reads from its dead client, rolling its transaction back.
        await wait_until(lambda: _gone(admin, pid), what=f"the killed host's backend {pid} to end", seconds=30)
        await host.start()

    async def decide_then_block(op: Any) -> Any:
        event = await approve(op)
        chaos["tx"] = await _hold(holder, how)
        chaos["killer"] = asyncio.create_task(kill_mid_payment())
        return event

    async def wait_for_restart(rec: CallRecord) -> None:
        if (chaos.get("fired") and rec.attempt > 0) or (chaos.get("killer") and chaos["killer"].done()):
            await chaos["killer"]  # a retry goes to the restarted host, as the engine's backoff would

    run = await driver.run(EMAIL_FN, EVENT, resolver=decide_then_block, before_call=wait_for_restart)
    ledger.runs += 2
    await chaos["killer"]
    assert any(c.status_code == UNREACHABLE for c in run.calls), "the host was not killed mid-call"
    await assert_story(pool, run, "approved")
    assert host.starts == 2
    print(await ledger.report(request.node, pool))


async def _gone(admin: asyncpg.Connection, pid: int) -> bool:
    return not await admin.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid)


async def test_terminated_connections_between_calls_and_inside_the_payment_transaction(
    host: Host,
    driver: InngestDriver,
    stub: StubInngestServer,
    pool: asyncpg.Pool,
    admin: asyncpg.Connection,
    holder: asyncpg.Connection,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """`pg_terminate_backend` on every connection of the host before every other call, and
    once on the backend that is inside the payment transaction: steps fail, are retried, and
    the refund is paid once."""
    engine = engine_of(driver, stub, pool)
    approve = engine.reviewer(approved=True)
    seen = 0
    chaos: dict[str, Any] = {}

    async def terminate_every_other(rec: CallRecord) -> None:
        nonlocal seen
        seen += 1
        if (chaos.get("fired") and rec.attempt > 0) or (chaos.get("killer") and chaos["killer"].done()):
            await chaos["killer"]  # the retry of the payment runs once the test's lock is gone
        if seen % 2 == 0 and await host_backends(admin, host):
            ledger.fault("pg_terminate_backend between calls", await terminate_host_backends(admin, host))

    async def terminate_mid_payment() -> None:
        pid = await wait_until(lambda: blocked_backend(admin, host, "INSERT INTO refunds"), what="the payment")
        async with chaos_support.ADMIN_TURN:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        chaos["fired"] = True
        ledger.fault("pg_terminate_backend mid-payment")
        await chaos["tx"].rollback()

    async def decide_then_block(op: Any) -> Any:
        event = await approve(op)
        chaos["tx"] = await _hold(holder, "host-holds-order-lock")
        chaos["killer"] = asyncio.create_task(terminate_mid_payment())
        return event

    run = await driver.run(EMAIL_FN, EVENT, resolver=decide_then_block, before_call=terminate_every_other)
    ledger.runs += 2
    await chaos["killer"]
    assert ledger.faults["pg_terminate_backend mid-payment"] == 1
    await assert_story(pool, run, "approved")
    assert host.starts == 1  # the host itself never died
    print(await ledger.report(request.node, pool))
