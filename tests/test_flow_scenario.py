"""A morning rush with the app's own flow control on, run as the engine would run it.

`InngestDriver.deliver` applies the registration's concurrency limits, throttle, priority and
debounce (tests/engine/flow.py; each rule's Go source is cited there and in
tests/test_engine_fidelity.py). Here the app's real settings meet them: a hundred emails from
ten customers in ten seconds, and the morning health-check fan-out to every paying customer.
What is checked is what a user would check: each customer's calls in flight at once (measured
from the calls' own send and answer times), and every email answered exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest
from inngest_driver import CallRecord, Run, cron_tick
from tests_support import EMAIL_FN, serve

import db
from support_worker.core.events import EMAIL_RECEIVED
from support_worker.core.settings import Settings

T0 = 1_790_000_000_000  # ms
RUSH = [(f"c-rush-{n}", ("free", "pro", "enterprise")[n % 3]) for n in range(10)]


async def add_rush_customers(pool: asyncpg.Pool) -> None:
    for customer_id, tier in RUSH:
        await pool.execute(
            "INSERT INTO customers (id, email, name, tier) VALUES ($1, $2, $3, $4)",
            customer_id,
            f"{customer_id}@example.com",
            customer_id.title(),
            tier,
        )


def rush() -> list[dict[str, object]]:
    """Ten emails from each of ten customers, all in the same second."""
    return [
        {
            "name": EMAIL_RECEIVED,
            "id": f"rush-{customer_id}-{n}",
            "ts": T0,
            "data": {"customer_id": customer_id, "tier": tier, "subject": f"Question {n}", "body": f"Question {n}?"},
        }
        for n in range(10)
        for customer_id, tier in RUSH
    ]


def most_in_flight(calls: list[CallRecord]) -> int:
    """The most calls whose [sent, answered] intervals overlap: what the app really served at once."""
    edges = sorted([(c.sent_at, 1) for c in calls] + [(c.answered_at, -1) for c in calls], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def email_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.fn_id.endswith(EMAIL_FN)]


@pytest.mark.parametrize("burst_seconds", [0, 60], ids=["bursts-off", "bursts-on"])
async def test_a_rush_of_100_emails_keeps_each_customer_within_its_share_and_answers_each_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, burst_seconds: int
) -> None:
    await add_rush_customers(pool)
    tuned = settings.model_copy(update={"email_burst_seconds": burst_seconds})
    async with serve(tuned, monkeypatch, pool) as engine:
        runs = await engine.driver.deliver(rush())
        flow = engine.driver.flow
    answered = email_runs(runs)
    assert all(r.status == "completed" for r in runs)
    for customer_id, _ in RUSH:
        calls = [c for r in answered if r.event["data"].get("customer_id") == customer_id for c in r.calls]
        assert most_in_flight(calls) <= settings.email_concurrency_per_customer, customer_id
    assert most_in_flight([c for r in answered for c in r.calls]) <= settings.email_concurrency
    # Every email answered once: one owner each, and that owner sent the one reply for it.
    owners = await pool.fetch(
        "SELECT detail->>'event_id' AS event_id, run_id FROM audit_log WHERE action = 'message_received'"
    )
    assert sorted(o["event_id"] for o in owners) == sorted(str(e["id"]) for e in rush())
    replied = {r.run_id for r in answered if r.output["status"] == "drafted"}
    assert {o["run_id"] for o in owners} == replied
    assert len(await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED)) == len(replied)
    assert flow is not None
    if burst_seconds:  # one run per customer's burst, with everything it had waiting
        assert len(replied) == len(RUSH)
    else:  # a run per email: the per-customer limit made them queue, and the throttle paced them
        assert len(replied) == 100
        assert max(flow.peak[f"support-worker-{EMAIL_FN}:{c}"] for c, _ in RUSH) == 2
        assert sum(flow.queued.values()) > 0
        starts = sorted(r.started_ms or 0 for r in answered)
        per_minute, burst = settings.email_throttle_per_minute, 1
        assert starts[per_minute + burst] - starts[0] >= 60_000 // per_minute  # the first over the burst waits
        assert starts[-1] - starts[0] >= (100 - per_minute - burst) * 60_000 // per_minute


async def test_the_morning_fan_out_is_paced_by_the_childs_throttle(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    """29 paying customers (3 sampled, 6 of the rush, 20 more): the child's throttle lets
    limit + burst start at once and the rest one per period / limit; its concurrency cap holds."""
    await add_rush_customers(pool)
    await pool.execute(
        "INSERT INTO customers (id, email, name, tier)"
        " SELECT 'c-more-' || i, 'more' || i || '@example.com', 'More ' || i, 'pro' FROM generate_series(1, 20) AS i"
    )
    # A throttle below the 29 customers, so the pacing shows (the default is the course's 30).
    settings = settings.model_copy(update={"health_check_throttle_per_minute": 10})
    async with serve(settings, monkeypatch, pool) as engine:
        tick = cron_tick(settings.health_check_cron, datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
        runs = await engine.driver.deliver([tick])
        flow = engine.driver.flow
    children = [r for r in runs if r.fn_id.endswith("process-customer-health-check")]
    assert len(children) == 3 + sum(1 for _, tier in RUSH if tier != "free") + 20
    assert all(r.status == "completed" for r in children)
    limit = settings.health_check_throttle_per_minute
    starts = sorted((r.started_ms or 0) - tick["ts"] for r in children)  # type: ignore[operator]
    assert starts[: limit + 1] == [0] * (limit + 1)
    assert starts[limit + 1 :] == [60_000 // limit * k for k in range(1, len(children) - limit)]
    peak = flow.peak["support-worker-process-customer-health-check"] if flow is not None else None
    assert peak is not None and peak <= settings.health_check_concurrency
    assert most_in_flight([c for r in children for c in r.calls]) <= settings.health_check_concurrency
