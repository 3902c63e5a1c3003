"""The daily health check: the morning fan-out's plan and chunks, and its judgement, from a
customer's recent activity to a short summary.

Engine-free: the durable layer runs `plan_fan_out`, each `send_chunk` (with the engine's
`send` injected), `record_summary` and `record_outreach` as steps. `summarize` is a pure
function over `activity.Activity`, so the rules are testable without a database or an engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

import db
from support_worker.core.events import HEALTH_CHECK_REQUESTED
from support_worker.core.money import format_money
from support_worker.store import activity

Signal = Literal["refund_heavy", "unanswered", "quiet", "blocked_refunds"]

CHECKED_TIERS = ("pro", "enterprise")  # free-tier customers are not health-checked
REFUND_HEAVY_COUNT = 2  # two or more refunds in 30 days
QUIET_DAYS = 30  # no email at all in the window


# Sends a batch of events ({"name", "id", "data"}) to the engine; ids make a resend a no-op.
SendEvents = Callable[[list[dict[str, Any]]], Awaitable[Any]]


class FanOutPlan(BaseModel):
    day: str
    as_of: str  # contacts before this instant count as recent: the tick's day, not today
    counts: activity.FanOutCounts


class FanOutChunk(BaseModel):
    sent: int
    last_id: str  # the keyset cursor: the next chunk starts after this customer
    more: bool


def scheduled_day(data: Any, ts_ms: int | None) -> str:
    """The day a health check is for: from the tick, never from the clock at retry time. A
    dashboard invocation may name `data.date` (or `data.day`)."""
    named = (data.get("date") or data.get("day")) if isinstance(data, dict) else None
    if isinstance(named, str) and len(named) == 10:
        return named
    when = datetime.fromtimestamp(ts_ms / 1000, UTC) if ts_ms else datetime.now(UTC)
    return when.date().isoformat()


async def plan_fan_out(pool: asyncpg.Pool, *, day: str, cooldown_days: int) -> FanOutPlan:
    """Counts only: who the morning covers and why the rest are left out, as of the tick's day."""
    as_of = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    counts = await activity.health_check_counts(pool, tiers=list(CHECKED_TIERS), days=cooldown_days, as_of=as_of)
    return FanOutPlan(day=day, as_of=as_of.isoformat(), counts=counts)


async def send_chunk(
    pool: asyncpg.Pool, plan: FanOutPlan, *, after_id: str, size: int, cooldown_days: int, send: SendEvents
) -> FanOutChunk:
    """Load the next slice of eligible customers (keyset pagination) and send their events.
    The ids make the engine drop a second send of the same customer-day, so a retried chunk
    is harmless, and no list of ids ever rides in a step output."""
    batch = await activity.health_check_batch(
        pool,
        tiers=list(CHECKED_TIERS),
        days=cooldown_days,
        as_of=datetime.fromisoformat(plan.as_of),
        after_id=after_id,
        limit=size,
    )
    events = [
        {
            "name": HEALTH_CHECK_REQUESTED,
            "id": f"health-check-{cid}-{plan.day}",
            "data": {"customer_id": cid, "date": plan.day},  # 003 D5's shape
        }
        for cid in batch
    ]
    if events:
        await send(events)
    return FanOutChunk(sent=len(batch), last_id=batch[-1] if batch else after_id, more=len(batch) == size)


def fan_out_report(plan: FanOutPlan, *, scheduled: int, cooldown_days: int) -> dict[str, Any]:
    """The cron run's output in the dashboard: how many were scheduled, who was left out, why."""
    return {
        "day": plan.day,
        "scheduled": scheduled,
        "skipped": {"free_tier": plan.counts.skipped_free, "contacted_recently": plan.counts.skipped_contacted},
        "skipped_reasons": {
            "free_tier": "free-tier customers are not health-checked",
            "contacted_recently": f"got a reply or an outreach note in the last {cooldown_days} days",
        },
    }


class HealthSummary(BaseModel):
    customer_id: db.CustomerId
    day: str
    status: Literal["healthy", "watch", "at_risk"]
    signals: list[Signal]
    summary: str
    outreach_note: str | None


def summarize(customer: db.Customer, activity: activity.Activity, *, day: str) -> HealthSummary:
    """Name the signals, grade the customer, and draft an outreach note for at-risk ones.

    The note is a template, not a model call: the morning fan-out must not compete with live
    customer email for the model's rate limit.
    """
    signals: list[Signal] = []
    if activity.refunds_issued >= REFUND_HEAVY_COUNT:
        signals.append("refund_heavy")
    if activity.unanswered > 0:
        signals.append("unanswered")
    if activity.refunds_blocked > 0:
        signals.append("blocked_refunds")
    if activity.emails == 0:
        signals.append("quiet")
    at_risk = {"refund_heavy", "unanswered"} & set(signals) or len(signals) >= 2
    status: Literal["healthy", "watch", "at_risk"] = "at_risk" if at_risk else ("watch" if signals else "healthy")
    summary = (
        f"{customer.name} ({customer.tier}): {activity.emails} emails, {activity.replies} replies, "
        f"{activity.unanswered} unanswered, {activity.refunds_issued} refunds "
        f"({format_money(activity.refunded_cents)}), {activity.refunds_blocked} blocked in the last {QUIET_DAYS} days."
    )
    note = None
    if status == "at_risk":
        first_name = customer.name.split()[0]
        note = (
            f"Hi {first_name},\n\nwe noticed a few bumps with your recent orders and wanted to check in "
            "personally. If anything is still unresolved, reply to this email and we will put it right.\n\n"
            "Best regards,\nThe Support Team"
        )
    return HealthSummary(
        customer_id=customer.id, day=day, status=status, signals=signals, summary=summary, outreach_note=note
    )


async def record_summary(pool: asyncpg.Pool, summary: HealthSummary, *, run_id: str) -> bool:
    """One `health_check_completed` row per customer and day, whoever retries or replays."""
    return await db.record_audit(
        pool,
        action=db.AuditAction.HEALTH_CHECK_COMPLETED,
        run_id=run_id,
        customer_id=summary.customer_id,
        detail=summary.model_dump(),
        idempotency_key=f"health_check_completed:{summary.customer_id}:{summary.day}",
    )


async def record_outreach(pool: asyncpg.Pool, summary: HealthSummary, *, run_id: str) -> bool:
    """The drafted note, recorded so the next mornings leave the customer alone a while."""
    return await db.record_audit(
        pool,
        action=db.AuditAction.OUTREACH_RECORDED,
        run_id=run_id,
        customer_id=summary.customer_id,
        detail={"day": summary.day, "note": summary.outreach_note, "signals": summary.signals},
        idempotency_key=f"outreach_recorded:{summary.customer_id}:{summary.day}",
    )
