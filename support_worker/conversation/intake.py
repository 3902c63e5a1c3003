"""The email function's first step, engine-free: the messages one run answers.

An email event becomes a stored message of a known customer (a claim check: what the step
returns, and what every later call resends, is a reference with a digest and an excerpt, never
the body), or a refusal saying why. With bursts gathered (EMAIL_BURST_SECONDS), every event's
message first waits in the inbox (store/inbox.py), and the run that answers takes everything
its customer has waiting, so three emails in a minute get one answer. Who answers a message is
its `message_received` row, written once per message (conversation.record_message_once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel

import db
from support_worker.conversation import loop as conversation
from support_worker.core.events import EmailReceived
from support_worker.store import drafts, inbox, messages


class Refused(Exception):
    """An email that can never be answered as sent; `why` goes into the audit trail."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Answering(BaseModel):
    """One message the run answers: its event, subject and claim ticket (never the body: the
    conversation loads the text from Postgres, outside any step output)."""

    event_id: str
    event_ms: int  # the event's own time (ms since the epoch): the order the customer wrote in
    subject: str | None = None
    message: messages.MessageRef


class Intake(BaseModel):
    """What the first step learned; memoized, so later calls reuse it."""

    # "accepted": answer `answering`; "duplicate": this event was delivered again and another
    # run answers it; "merged": another run took this email into its answer to a burst;
    # "nothing_waiting": a run asked for waiting messages found them answered already.
    status: Literal["accepted", "duplicate", "merged", "nothing_waiting"]
    customer: db.Customer
    answering: list[Answering] = []  # oldest first
    first_run_id: str | None = None
    more_waiting: bool = False  # more than the burst's cap was waiting: ask for another run
    # The conversation before these messages, by reference (conversation/thread.py, 003 D3's
    # load-thread), loaded in this same step: one engine call less per email.
    thread: list[drafts.ThreadItem] = []


class Stored(BaseModel):
    """What the recorder function learned about one event's message."""

    customer_id: db.CustomerId
    message_id: str
    passed_over: bool  # a run gathered past it before it was stored: it needs a run of its own


async def record(
    pool: asyncpg.Pool, email: EmailReceived, *, event_id: str, event_at: datetime, max_body_chars: int
) -> Stored:
    """Store an event's message in the inbox, whether or not a run of its own will come
    (with debounce, only a burst's last event starts one)."""
    customer, ref = await _store(pool, email, event_id=event_id, max_body_chars=max_body_chars)
    await _into_inbox(pool, event_id=event_id, customer=customer, ref=ref, subject=email.subject, event_at=event_at)
    return Stored(
        customer_id=customer.id, message_id=ref.message_id, passed_over=await inbox.passed_over(pool, event_id=event_id)
    )


async def receive(
    pool: asyncpg.Pool,
    email: EmailReceived,
    *,
    event_id: str,
    event_at: datetime,
    run_id: str,
    max_body_chars: int,
    gather: int = 0,
) -> Intake:
    """Store the event's message and claim it for this run, or learn that another run answers
    it. With `gather` > 0, also take up to `gather` more messages the customer has waiting.
    Raises `Refused` for an email that can never be answered (audited by the durable layer)."""
    customer, ref = await _store(pool, email, event_id=event_id, max_body_chars=max_body_chars)
    if gather:
        # Marked before anything is taken: a message stored after this, but older, sees the
        # mark and asks for a run of its own (inbox.passed_over), so none is left waiting.
        await inbox.mark_swept(pool, customer_id=customer.id, through=event_at)
    own = Answering(event_id=event_id, event_ms=_ms(event_at), subject=email.subject, message=ref)
    async with db.transaction(pool) as conn:
        # Into the inbox already claimed: never visible unclaimed, so a concurrent run of the
        # same customer cannot gather this run's own email (the recorder's copy may be gathered).
        await _into_inbox(conn, event_id=event_id, customer=customer, ref=ref, subject=email.subject, event_at=event_at)
        owner = await _claim(conn, own, customer, run_id=run_id, answered_with=None)
    if owner != run_id:
        return await _answered_elsewhere(pool, customer, event_id=event_id, owner=owner, run_id=run_id)
    taken, more = (
        await _gather(pool, customer, run_id=run_id, answered_with=event_id, limit=gather) if gather else ([], False)
    )
    answering = sorted([own, *taken], key=lambda a: (a.event_ms, a.event_id))
    return Intake(status="accepted", customer=customer, answering=answering, more_waiting=more)


async def gather_waiting(
    pool: asyncpg.Pool, *, customer_id: db.CustomerId, event_id: str, event_at: datetime, run_id: str, limit: int
) -> Intake:
    """A run asked for by a recorder (or by a run that hit the cap): take what is waiting."""
    customer = await db.get_customer(pool, customer_id=customer_id)
    if customer is None:
        raise Refused(f"unknown customer: customer_id {customer_id}")
    await inbox.mark_swept(pool, customer_id=customer.id, through=event_at)
    taken, more = await _gather(pool, customer, run_id=run_id, answered_with=event_id, limit=limit)
    if not taken:
        return Intake(status="nothing_waiting", customer=customer)
    return Intake(status="accepted", customer=customer, answering=taken, more_waiting=more)


async def left_waiting_by_refusal(pool: asyncpg.Pool, *, customer_id: db.CustomerId | None, event_at: datetime) -> bool:
    """A burst's last event was refused: its run answers nothing, so whatever the customer has
    waiting needs a run of its own. True when something is waiting."""
    if customer_id is None or await db.get_customer(pool, customer_id=customer_id) is None:
        return False
    await inbox.mark_swept(pool, customer_id=customer_id, through=event_at)
    return bool(await inbox.waiting(pool, customer_id=customer_id, limit=1))


# --------------------------------------------------------------------------- internals


async def _store(
    pool: asyncpg.Pool, email: EmailReceived, *, event_id: str, max_body_chars: int
) -> tuple[db.Customer, messages.MessageRef]:
    """Find the customer and claim-check an inline body (store it once)."""
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
    return customer, await _claim_check(pool, email, customer, event_id=event_id)


async def _into_inbox(
    conn: db.Executor,
    *,
    event_id: str,
    customer: db.Customer,
    ref: messages.MessageRef,
    subject: str | None,
    event_at: datetime,
) -> None:
    await inbox.add(
        conn, event_id=event_id, customer_id=customer.id, message_id=ref.message_id, subject=subject, event_at=event_at
    )


async def _claim(
    conn: db.Executor, item: Answering, customer: db.Customer, *, run_id: str, answered_with: str | None
) -> str:
    """Write the message's `message_received` row once; the run that owns it answers it."""
    ref = item.message
    detail = {
        "event_id": item.event_id,
        "subject": item.subject,
        "message_id": ref.message_id,
        "digest": ref.digest,
        "excerpt": ref.excerpt,
        "text_chars": ref.text_chars,
        "thread_key": ref.thread_key,
        "attachments": ref.attachment_count,
    }
    if answered_with is not None:
        detail["answered_with"] = answered_with  # taken into the answer to another event
    return await conversation.record_message_once(
        conn, run_id=run_id, message_key=item.event_id, customer_id=customer.id, detail=detail
    )


async def _answered_elsewhere(
    pool: asyncpg.Pool, customer: db.Customer, *, event_id: str, owner: str, run_id: str
) -> Intake:
    """This event's message is another run's: merged into its answer, or a duplicate delivery."""
    if await inbox.answered_with(pool, event_id=event_id) is not None:
        return Intake(status="merged", customer=customer, first_run_id=owner)
    await db.record_audit(
        pool,
        action=db.AuditAction.EVENT_DUPLICATE,
        run_id=run_id,
        customer_id=customer.id,
        detail={"event_id": event_id, "first_run_id": owner},
        idempotency_key=f"event_duplicate:{run_id}",
    )
    return Intake(status="duplicate", customer=customer, first_run_id=owner)


async def _gather(
    pool: asyncpg.Pool, customer: db.Customer, *, run_id: str, answered_with: str, limit: int
) -> tuple[list[Answering], bool]:
    """Claim up to `limit` messages for this run (inbox.for_run); True as well when more wait."""
    entries = await inbox.for_run(
        pool, customer_id=customer.id, run_id=run_id, answered_with=answered_with, limit=limit + 1
    )
    taken: list[Answering] = []
    for entry in entries[:limit]:
        item = await _answering(pool, entry)
        if await _claim(pool, item, customer, run_id=run_id, answered_with=answered_with) == run_id:
            taken.append(item)
    return taken, len(entries) > limit


async def _answering(pool: asyncpg.Pool, entry: inbox.Entry) -> Answering:
    ref = await messages.get_ref(pool, message_id=entry.message_id)
    if ref is None:
        raise LookupError(f"inbox entry {entry.event_id} names message {entry.message_id}, which is not stored")
    return Answering(event_id=entry.event_id, event_ms=_ms(entry.event_at), subject=entry.subject, message=ref)


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


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
