"""The durable functions' step and run outputs: small typed models, plain JSON."""

from __future__ import annotations

from pydantic import BaseModel

import db
from support_worker.store import activity
from support_worker.workflows import refunds, replies


class EmailRunResult(BaseModel):
    """The run's output in the dashboard: the reply as drafted (003 D3: `{"status": "drafted",
    "draft_id": …}`), whether it was sent, and each refund's fate."""

    # "drafted" | "sent" | "send_failed" | "escalated" | "duplicate" | "merged" | "nothing_waiting"
    status: str
    draft_id: str | None = None
    sent: replies.Sent | None = None  # with sending configured: Postmark's MessageID or refusal
    first_run_id: str | None = None
    escalation_id: str | None = None
    reply: str | None = None
    replaced_unsafe_reply: bool = False
    refund_ids: list[int] = []
    edited_by_reviewer: bool = False
    gate: list[refunds.GateOutcome] = []


class DecisionRecorded(BaseModel):
    applied: bool
    reason: str


class HealthGathered(BaseModel):
    customer: db.Customer
    activity: activity.Activity
    day: str


class EscalationOpened(BaseModel):
    request_id: str
    reason: str
    customer_id: str | None = None  # None in runs paused before it was recorded
