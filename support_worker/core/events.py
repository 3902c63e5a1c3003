"""The events this service answers and sends: names and data schemas, engine-free.

One contract for every door: the durable functions validate with these schemas, and the
webhook and the CLI build their events with them, so a message a door accepts is a message
the function accepts. What happens after is the functions' business (inngest_app.py).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from support_worker.core.fields import MAX_ID, CustomerIdText, StorableText
from support_worker.workflows import decisions, escalations

EMAIL_RECEIVED = "customer/email.received"
APPROVAL_DECIDED = "refund/approval.decided"
REFUND_WITHDRAWN = "customer/refund.withdrawn"
HEALTH_CHECK_REQUESTED = "customer/health_check.requested"
ESCALATION_REQUESTED = "customer/escalation.requested"
ESCALATION_DECIDED = "escalation/decision.made"
# Sent by the app itself: a customer has emails waiting that no coming run is sure to answer.
EMAILS_WAITING = "customer/emails.waiting"
ISO_DAY = r"^\d{4}-\d{2}-\d{2}$"


class EmailReceived(BaseModel):
    """`customer/email.received` data. Name the customer by id or by the address they wrote from,
    and give the text inline (`body`, the course's shape) or by reference (`message_id`, a
    message the webhook stored once in Postgres: store/messages.py). The reference keeps every
    event small (at most MAX_EVENT_BYTES); `excerpt` and the attachment list are for people
    reading the event, the function reads the stored message."""

    model_config = ConfigDict(extra="ignore")

    customer_id: CustomerIdText | None = None
    from_email: StorableText | None = Field(default=None, min_length=3, max_length=320)
    subject: StorableText | None = Field(default=None, max_length=500)
    body: StorableText | None = Field(default=None, min_length=1)
    message_id: StorableText | None = Field(default=None, min_length=1, max_length=300)
    excerpt: StorableText | None = Field(default=None, max_length=1000)
    thread_key: StorableText | None = Field(default=None, max_length=300)

    @model_validator(mode="after")
    def _needs_a_sender(self) -> EmailReceived:
        if self.customer_id is None and not self.from_email:
            raise ValueError("give customer_id or from_email")
        if self.body is None and self.message_id is None:
            raise ValueError("body: Field required (or give message_id, a stored message)")
        if self.body is not None and not self.body.strip():
            raise ValueError("body is empty")
        return self


# `refund/approval.decided` data is the workflow's own typed decision.
ApprovalDecided = decisions.Decision


class RefundWithdrawn(BaseModel):
    """`customer/refund.withdrawn` data: the request id, or the customer and the order."""

    model_config = ConfigDict(extra="ignore")

    request_id: StorableText | None = Field(default=None, min_length=1, max_length=100)
    customer_id: CustomerIdText | None = None
    order_id: StrictInt | None = Field(default=None, gt=0, le=MAX_ID)
    reason: StorableText | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _names_a_request(self) -> RefundWithdrawn:
        if self.request_id is None and (self.customer_id is None or self.order_id is None):
            raise ValueError("give request_id, or customer_id and order_id")
        return self


class EmailsWaiting(BaseModel):
    """`customer/emails.waiting` data: whose waiting emails a run of the email function answers."""

    model_config = ConfigDict(extra="ignore")

    customer_id: CustomerIdText


class HealthCheckRequested(BaseModel):
    """`customer/health_check.requested` data, sent by the daily cron (one per customer) as
    003 D5 does: `customer_id` and `date`. `day` (this project's earlier name) is the same
    field; with neither, the check is for the event's own day (001 D3 sends the id alone)."""

    model_config = ConfigDict(extra="ignore")

    customer_id: CustomerIdText
    date: str | None = Field(default=None, pattern=ISO_DAY)
    day: str | None = Field(default=None, pattern=ISO_DAY)

    @model_validator(mode="after")
    def _one_day(self) -> HealthCheckRequested:
        if self.date and self.day and self.date != self.day:
            raise ValueError(f"date and day differ ({self.date}, {self.day}): send date only")
        return self

    def day_or(self, event_day: str) -> str:
        """The day this check is for: the one named, else the event's own (never the clock)."""
        return self.date or self.day or event_day


class EscalationRequested(BaseModel):
    """`customer/escalation.requested` data: the escalation the email run recorded."""

    model_config = ConfigDict(extra="ignore")

    request_id: StorableText = Field(min_length=1, max_length=100)


# `escalation/decision.made` data: `request_id`, `decision` (approve | edit | reject),
# `reviewer`, optional `edited_text`; the workflow's own typed decision.
EscalationDecided = escalations.Decision


def describe_error(error: ValidationError) -> str:
    """One line a person can act on, e.g. "body: Field required; customer_id: ..."."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "data"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def check_size(max_bytes: int, name: str, data: dict[str, Any]) -> None:
    """No event above MAX_EVENT_BYTES leaves the app (Inngest Cloud's free plan refuses
    events over 256 KiB): large messages travel as a `message_id` reference instead."""
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > max_bytes:
        raise ValueError(
            f"{name}: event data is {size} bytes, above MAX_EVENT_BYTES={max_bytes}; "
            "send large messages through the email webhook, which stores them and sends a reference"
        )
