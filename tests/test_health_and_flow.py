"""The daily health-check fan-out and flow control, driven like the engine drives them."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest
from engine.registration import sync_errors
from inngest_driver import cron_tick
from tests_support import EMAIL_FN, Engine, pay_refund, serve

import db
import inngest_app
from support_worker.core.settings import Settings
from support_worker.store import activity, sample_data
from support_worker.store.sample_data import ADA, ALAN, GRACE
from support_worker.workflows import health

CRON_FN = "daily-customer-health-check"
CHILD_FN = "process-customer-health-check"
# The tick as the engine fires it (id: the scheduled time; data: cron, scheduledAt, fireAt).
TICK = cron_tick("0 9 * * *", datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
ELIGIBLE = [ADA, GRACE, ALAN]  # Ada (enterprise), Grace and Alan (pro); Katherine, Linus and c-test-1 are free


def functions_by_id(payload: dict[str, object]) -> dict[str, dict[str, object]]:
    return {fn["id"].removeprefix("support-worker-"): fn for fn in payload["functions"]}  # type: ignore[index,union-attr]


async def test_registration_carries_the_cron_and_flow_control_as_configured(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    tuned = settings.model_copy(
        update={
            "email_concurrency": 7,
            "email_concurrency_per_customer": 3,
            "email_throttle_per_minute": 42,
            "health_check_cron": "TZ=Europe/Paris 30 8 * * *",
            "health_check_concurrency": 4,
            "health_check_throttle_per_minute": 9,
            "email_burst_seconds": 45,
            "email_burst_timeout_seconds": 240,
        }
    )
    async with serve(tuned, monkeypatch, pool) as engine:
        fns = functions_by_id(engine.stub.registrations[-1])
        # The stub validates every sync as the engine does (tests/engine/registration.py).
        assert engine.stub.refused == [] and sync_errors(engine.stub.registrations[-1]) == []
    email = fns[EMAIL_FN]
    # One run per customer's burst, with its last event; the recorder stores every event first.
    assert email["debounce"] == {"key": inngest_app.CUSTOMER_KEY, "period": "45s", "timeout": "4m"}
    assert email["triggers"] == [{"event": "customer/email.received"}, {"event": "customer/emails.waiting"}]
    assert fns["record-customer-email"]["triggers"] == [{"event": "customer/email.received"}]
    assert "debounce" not in fns["record-customer-email"]
    assert email["concurrency"] == [{"limit": 7}, {"limit": 3, "key": inngest_app.CUSTOMER_KEY}]
    assert email["throttle"] == {"limit": 42, "period": "1m", "burst": 1}
    assert email["priority"] == {"run": inngest_app.PRIORITY_BY_TIER}
    assert fns[CRON_FN]["triggers"] == [{"cron": "TZ=Europe/Paris 30 8 * * *"}]
    assert fns[CHILD_FN]["concurrency"] == [{"limit": 4}]
    assert fns[CHILD_FN]["throttle"] == {"limit": 9, "period": "1m", "burst": 1}
    assert fns[CHILD_FN]["triggers"] == [{"event": "customer/health_check.requested"}]


async def test_with_bursts_off_every_email_runs_at_once_and_nothing_records_it_twice(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    async with serve(settings.model_copy(update={"email_burst_seconds": 0}), monkeypatch, pool) as engine:
        fns = functions_by_id(engine.stub.registrations[-1])
    assert "debounce" not in fns[EMAIL_FN]
    assert fns[EMAIL_FN]["triggers"] == [{"event": "customer/email.received"}]
    assert "record-customer-email" not in fns


async def test_the_cron_fans_out_one_event_per_paying_customer_with_stable_ids(engine: Engine) -> None:
    run = await engine.driver.run(CRON_FN, TICK)
    assert run.status == "completed", run.error
    assert run.output["day"] == "2026-11-23" and run.output["scheduled"] == 3
    assert run.output["skipped"] == {"free_tier": 3, "contacted_recently": 0}
    assert run.output["skipped_reasons"]["free_tier"] == "free-tier customers are not health-checked"
    sent = [(e.name, e.idempotency_id, e.data["customer_id"]) for e in engine.stub.events]
    assert sent == [("customer/health_check.requested", f"health-check-{cid}-2026-11-23", cid) for cid in ELIGIBLE]
    assert run.trail == ["plan-fan-out", "fan-out-1", "clean-agent-journal"]  # three customers: one chunk

    retried_tick = await engine.driver.run(CRON_FN, TICK)  # the same tick delivered again
    again = engine.stub.events[3:]
    assert [e.idempotency_id for e in again] == [f"health-check-{cid}-2026-11-23" for cid in ELIGIBLE]
    assert all(e.duplicate for e in again)  # the engine drops them: no customer is checked twice
    assert retried_tick.output == run.output


async def test_large_lists_go_out_in_chunks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    async with serve(settings.model_copy(update={"health_check_fanout_chunk": 2}), monkeypatch, pool) as engine:
        run = await engine.driver.run(CRON_FN, TICK)
        assert run.trail[:-1] == ["plan-fan-out", "fan-out-1", "fan-out-2"]  # 2 + 1: the short chunk is the last
        assert [e.data["customer_id"] for e in engine.stub.events] == ELIGIBLE


async def test_the_child_writes_one_health_row_per_customer_per_day(engine: Engine) -> None:
    await engine.driver.run(CRON_FN, TICK)
    for captured in engine.stub.events:
        for _ in range(2):  # delivered twice: still one row
            child = await engine.driver.run(CHILD_FN, captured.as_event())
            assert child.status == "completed", child.error
    rows = await db.list_audit(engine.pool, action=db.AuditAction.HEALTH_CHECK_COMPLETED)
    assert sorted(r.customer_id for r in rows) == ELIGIBLE
    assert all(r.detail["day"] == "2026-11-23" for r in rows)
    quiet = rows[0].detail
    assert quiet["status"] == "watch" and quiet["signals"] == ["quiet"] and quiet["outreach_note"] is None


async def test_a_refund_heavy_customer_is_at_risk_and_gets_an_outreach_draft(engine: Engine) -> None:
    for order_id, cents in ((1003, 49_900), (1004, 1_999)):
        await pay_refund(engine.pool, customer_id=GRACE, order_id=order_id, cents=cents)
    child = await engine.driver.run(
        CHILD_FN,
        {"name": inngest_app.HEALTH_CHECK_REQUESTED, "id": "h", "data": {"customer_id": GRACE, "day": "2026-11-23"}},
    )
    assert child.output["status"] == "at_risk"
    assert "refund_heavy" in child.output["signals"]
    assert child.output["outreach_note"].startswith("Hi Grace")


async def test_a_malformed_health_check_event_is_rejected(engine: Engine) -> None:
    run = await engine.driver.run(CHILD_FN, {"name": inngest_app.HEALTH_CHECK_REQUESTED, "data": {"customer_id": "x"}})
    assert run.status == "failed" and run.calls[0].no_retry
    assert await engine.actions() == ["event_rejected"]


def test_health_rules_grade_unanswered_mail_as_at_risk() -> None:
    customer = db.Customer(id=ADA, email="a@example.com", name="Ada Lovelace", tier="enterprise")
    recent = activity.Activity(
        customer_id=ADA,
        since="",
        emails=3,
        replies=2,
        unanswered=1,
        refunds_issued=0,
        refunded_cents=0,
        refunds_blocked=0,
        last_email_at=None,
    )
    summary = health.summarize(customer, recent, day="2026-11-23")
    assert summary.status == "at_risk" and summary.signals == ["unanswered"]


async def test_a_burst_of_twenty_emails_through_a_small_pool_completes_exactly_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    """Twenty runs across five customers at once, one host process, a pool of three."""
    bodies = ["Where is order {order}?", "Do you ship to Canada?", "Thanks for the quick help!"]
    customers = [c[0] for c in sample_data.CUSTOMERS][:5]  # the course's five (001 D4)
    orders = dict(zip(customers, (1001, 1004, 1006, 1008, 1010), strict=True))
    async with serve(settings.model_copy(update={"db_pool_max_size": 3}), monkeypatch, pool) as engine:
        emails = [
            engine.email(
                {"customer_id": customers[n % 5], "body": bodies[n % 3].format(order=orders[customers[n % 5]])},
                event_id=f"evt-burst-{n}",
            )
            for n in range(20)
        ]
        runs = await asyncio.gather(*emails)
    assert [r.status for r in runs] == ["completed"] * 20, [r.error for r in runs if r.status != "completed"]
    audit = await db.list_audit(pool)
    per_event = Counter((e.action.value, e.detail.get("event_id") or e.run_id) for e in audit)
    received = [e for e in audit if e.action == db.AuditAction.MESSAGE_RECEIVED]
    assert sorted(e.detail["event_id"] for e in received) == sorted(f"evt-burst-{n}" for n in range(20))
    assert Counter(e.action.value for e in audit) == {"message_received": 20, "email_drafted": 20}
    assert max(per_event.values()) == 1
    assert {e.run_id for e in audit if e.action == db.AuditAction.EMAIL_DRAFTED} == {r.run_id for r in runs}
