"""The email function's first step, engine-free: an email event becomes a claimed, stored
message of a known customer, or a refusal saying why.

The message is stored once in Postgres (a claim check): what the step returns, and what every
later call resends, is a reference with a digest and an excerpt, never the body.
"""

from __future__ import annotations

import asyncpg
from pydantic import BaseModel

import conversation
import db
from events import EmailReceived
from store import messages


class Refused(Exception):
    """An email that can never be answered as sent; `why` goes into the audit trail."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Intake(BaseModel):
    """What the first step learned about the email; memoized, so later calls reuse it."""

    status: str  # "accepted" | "duplicate"
    customer: db.Customer
    subject: str | None = None
    # The claim ticket: id, digest, excerpt, sizes, attachment names. Never the body: the
    # conversation loads the text from Postgres (store/messages.py), outside any step output.
    message: messages.MessageRef | None = None
    first_run_id: str | None = None


async def receive(
    pool: asyncpg.Pool, email: EmailReceived, *, event_id: str, run_id: str, max_body_chars: int
) -> Intake:
    """Find the customer, claim-check an inline body (store it once), and claim the message
    for this run, or learn that another run already answered it. Raises `Refused` for an
    email that can never be answered (the durable layer audits it and does not retry)."""
    if email.body is not None and len(email.body) > max_body_chars:
        raise Refused(f"body: longer than {max_body_chars} characters")
    customer = (
        await db.get_customer(pool, customer_id=email.customer_id)
        if email.customer_id is not None
        else await db.find_customer_by_email(pool, email=email.from_email or "")
    )
    if customer is None:
        who = f"customer_id {email.customer_id}" if email.customer_id is not None else email.from_email
        raise Refused(f"unknown customer: {who}")
    ref = await _claim_check(pool, email, customer, event_id=event_id)
    owner = await conversation.record_message_once(
        pool,
        run_id=run_id,
        message_key=event_id,
        customer_id=customer.id,
        detail={
            "event_id": event_id,
            "subject": email.subject,
            "message_id": ref.message_id,
            "digest": ref.digest,
            "excerpt": ref.excerpt,
            "text_chars": ref.text_chars,
            "thread_key": ref.thread_key,
            "attachments": ref.attachment_count,
        },
    )
    if owner != run_id:
        await db.record_audit(
            pool,
            action=db.AuditAction.EVENT_DUPLICATE,
            run_id=run_id,
            customer_id=customer.id,
            detail={"event_id": event_id, "first_run_id": owner},
            idempotency_key=f"event_duplicate:{run_id}",
        )
        return Intake(status="duplicate", customer=customer, first_run_id=owner)
    return Intake(status="accepted", customer=customer, subject=email.subject, message=ref)


async def _claim_check(
    pool: asyncpg.Pool, email: EmailReceived, customer: db.Customer, *, event_id: str
) -> messages.MessageRef:
    """The stored message the event names, or the inline body stored once under the event id."""
    if email.body is None:
        ref = await messages.get_ref(pool, message_id=email.message_id or "")
        if ref is None:
            raise Refused(f"message_id: no stored message {email.message_id!r}")
        return ref
    inline = messages.NewMessage(
        # The event id names the message; the digest keeps a reused id from reading another text.
        id=f"event:{event_id}:{messages.digest(email.body)[:12]}",
        source="event",
        customer_id=customer.id,
        sender=email.from_email or customer.email,
        subject=email.subject,
        text_body=email.body,
        thread_key=email.thread_key,
    )
    ref, _ = await messages.store_message(pool, inline)
    return ref
