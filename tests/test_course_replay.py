"""003 D8 Part B, the replay verification, with the driver: the agent step broken, five emails
from five customers fail at it after their retries, the break is fixed, the five failed runs
are replayed, and each customer ends with exactly one `email_drafted` row (five in all).

Inngest's Replay starts each run again from the top as a new run (001 D6: "both start a fresh
run from the top"); the replay takes the failed run's email over (`message_received`
`recovery_of`), so nothing is answered twice and nothing is lost."""

from __future__ import annotations

from collections import Counter

import asyncpg
import pytest
from tests_support import ADA, ALAN, GRACE, KATHERINE, LINUS, CountingModel, serve

import db
from support_worker.core.settings import Settings

CUSTOMERS = [ADA, GRACE, ALAN, KATHERINE, LINUS]
BODY = "Hi, my refund hasn't arrived and I'm getting worried about my upcoming bill."


async def test_five_failed_runs_replayed_after_the_fix_draft_one_reply_each(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    events = [
        {"name": "customer/email.received", "id": f"d8-{cid}", "ts": 1_790_000_000_000, "data": {"customer_id": cid, "body": BODY}}  # noqa: E501
        for cid in CUSTOMERS
    ]
    broken = CountingModel(fail=lambda turn, nth: True)  # "simulated agent failure"
    async with serve(settings, monkeypatch, pool, model=broken) as engine:
        failed = [await engine.driver.run("handle-customer-email", event) for event in events]
    for run in failed:
        assert run.status == "failed"
        # The agent's one step (the intake, then the agent) used every attempt; no draft.
        assert run.runs_of("run-agent") == 5 and "save-draft-reply" not in run.trail
    assert await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED) == []
    assert len(await db.list_audit(pool, action=db.AuditAction.RUN_FAILED)) == 5

    async with serve(settings, monkeypatch, pool, model=CountingModel()) as engine:  # the fix
        replayed = [await engine.driver.run("handle-customer-email", run.event) for run in failed]
    assert all(run.status == "completed" and run.output["status"] == "drafted" for run in replayed)
    drafted = await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED)
    assert Counter(row.customer_id for row in drafted) == Counter(CUSTOMERS)  # exactly one each, five in all
    assert await pool.fetchval("SELECT count(*) FROM drafts") == 5
    received = await db.list_audit(pool, action=db.AuditAction.MESSAGE_RECEIVED)
    # One ingress row per failed run, and one per replay taking its email over.
    assert sorted(bool(r.detail.get("recovery_of")) for r in received) == [False] * 5 + [True] * 5
