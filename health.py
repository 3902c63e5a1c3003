"""The daily health check's judgement: from a customer's recent activity to a short summary.

`summarize` is a pure function over `activity.Activity`, so the rules are testable without a
database or an engine; `record_summary`/`record_outreach` are the two audit writes the
durable layer runs as steps.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from pydantic import BaseModel

import db
from money import format_money
from store import activity

Signal = Literal["refund_heavy", "unanswered", "quiet", "blocked_refunds"]

CHECKED_TIERS = ("pro", "enterprise")  # free-tier customers are not health-checked
REFUND_HEAVY_COUNT = 2  # two or more refunds in 30 days
QUIET_DAYS = 30  # no email at all in the window


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
