"""The health check as the course sends it: `{"customer_id"}` alone (001 D3, a check for the
event's day), `{"customer_id", "date"}` (003 D5's fan-out) and this project's `day`."""

from __future__ import annotations

from typing import Any

import pytest
from tests_support import GRACE, Engine

import db
from support_worker.core import events

CHILD_FN = "process-customer-health-check"
CRON_FN = "daily-customer-health-check"
# 2026-11-23T09:00:00Z, the tick's time.
TS = 1_795_424_400_000


def health_event(event_id: str, **data: Any) -> dict[str, Any]:
    return {"name": events.HEALTH_CHECK_REQUESTED, "id": event_id, "ts": TS, "data": data}


@pytest.mark.parametrize(
    ("data", "day"),
    [
        ({"customer_id": GRACE}, "2026-11-23"),  # the event's own day: the same on every retry
        ({"customer_id": GRACE, "date": "2026-11-20"}, "2026-11-20"),  # 003 D5's field
        ({"customer_id": GRACE, "day": "2026-11-21"}, "2026-11-21"),  # this project's field
    ],
)
async def test_the_health_check_takes_each_shape_the_course_sends(
    engine: Engine, data: dict[str, Any], day: str
) -> None:
    run = await engine.driver.run(CHILD_FN, health_event("h1", **data))
    assert run.status == "completed", run.error
    [row] = await db.list_audit(engine.pool, action=db.AuditAction.HEALTH_CHECK_COMPLETED)
    assert row.customer_id == GRACE and row.detail["day"] == day


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"customer_id": GRACE, "date": "yesterday"}, "date: String should match pattern"),
        ({"customer_id": GRACE, "date": "2026-11-20", "day": "2026-11-21"}, "date and day differ"),
        ({"date": "2026-11-20"}, "customer_id: Field required"),
    ],
)
async def test_a_health_check_event_that_cannot_mean_one_day_is_rejected_once(
    engine: Engine, data: dict[str, Any], why: str
) -> None:
    run = await engine.driver.run(CHILD_FN, health_event("bad", **data))
    assert run.status == "failed" and run.calls[0].no_retry
    [rejected] = await db.list_audit(engine.pool)
    assert rejected.action == db.AuditAction.EVENT_REJECTED and why in rejected.detail["why"]


async def test_the_morning_fan_out_sends_the_courses_date_field(engine: Engine) -> None:
    tick = {"name": "inngest/scheduled.timer", "id": "tick", "ts": TS, "data": {"cron": "0 9 * * *"}}
    run = await engine.driver.run(CRON_FN, tick)
    assert run.status == "completed", run.error
    sent = [e for e in engine.stub.events if e.name == events.HEALTH_CHECK_REQUESTED]
    assert sent and all(e.data == {"customer_id": e.data["customer_id"], "date": "2026-11-23"} for e in sent)
    assert all(e.idempotency_id == f"health-check-{e.data['customer_id']}-2026-11-23" for e in sent)


async def test_the_sample_data_has_the_customers_the_course_writes_from(engine: Engine) -> None:
    for customer_id in ("c-4429", "c-test-1"):
        customer = await db.get_customer(engine.pool, customer_id=customer_id)
        assert customer is not None and await db.list_orders(engine.pool, customer_id=customer_id)
    # 003 D8 Part A, as written: c-test-1's email is answered, not rejected as unknown.
    body = "Hi, my refund hasn't arrived and I'm getting worried about my upcoming bill."
    run = await engine.email({"customer_id": "c-test-1", "body": body})
    assert run.status == "completed", run.error
    assert "event_rejected" not in await engine.actions()
