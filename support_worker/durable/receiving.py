"""The email run's first step and the recorder's, engine-free: an event's data parsed or
refused, the messages a run answers with the thread before them, and a refusal's audit row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from pydantic import BaseModel, ValidationError

import db
from support_worker.conversation import intake, thread
from support_worker.core.events import EMAIL_RECEIVED, EMAILS_WAITING, EmailReceived, EmailsWaiting, describe_error
from support_worker.core.fields import customer_id_or_none
from support_worker.core.settings import Settings

Schema = TypeVar("Schema", bound=BaseModel)
# Asks for another run for a customer; the key makes a resend a no-op.
AskForARun = Callable[..., Awaitable[None]]


def parse(data: Any, schema: type[Schema]) -> Schema:
    """The event's data as `schema`, or `intake.Refused` saying what is wrong with it."""
    if not isinstance(data, dict):
        raise intake.Refused("data: must be a JSON object")
    try:
        return schema.model_validate(dict(data))
    except ValidationError as error:
        raise intake.Refused(describe_error(error)) from error


async def audit_rejection(
    pool: asyncpg.Pool, *, name: str, data: Any, event_id: str | None, run_id: str, why: str
) -> None:
    """The `event_rejected` row saying why an event was refused."""
    raw = data.get("customer_id") if isinstance(data, dict) else None
    await db.record_audit(
        pool,
        action=db.AuditAction.EVENT_REJECTED,
        run_id=run_id,
        customer_id=customer_id_or_none(raw),
        detail={"event": name, "event_id": event_id, "why": why},
        # One row per event, however many functions it starts (the email recorder and handler).
        idempotency_key=f"event_rejected:{event_id or run_id}",
    )


async def with_thread(pool: asyncpg.Pool, received: intake.Intake) -> intake.Intake:
    """The thread before the messages a run answers (003 D3's load-thread, in the first step)."""
    if received.status == "accepted" and received.answering:
        earlier = await thread.load_thread(
            pool,
            customer_id=received.customer.id,
            thread_key=received.answering[-1].message.thread_key,
            answering=[item.message.message_id for item in received.answering],
        )
        received.thread = earlier.items
    return received


async def receive(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    name: str,
    data: Any,
    event_id: str,
    event_at: datetime,
    run_id: str,
    ask_for_a_run: AskForARun,
) -> intake.Intake:
    """The messages this run answers, or `intake.Refused` (after asking for a run for what a
    refused burst event left waiting)."""
    gather = settings.email_burst_max_messages if settings.email_burst_seconds else 0
    try:
        if name == EMAILS_WAITING:
            waiting = parse(data, EmailsWaiting)
            return await intake.gather_waiting(
                pool, customer_id=waiting.customer_id, event_id=event_id, event_at=event_at, run_id=run_id, limit=gather
            )
        return await intake.receive(
            pool,
            parse(data, EmailReceived),
            event_id=event_id,
            event_at=event_at,
            run_id=run_id,
            max_body_chars=settings.max_email_body_chars,
            gather=max(gather - 1, 0),
        )
    except intake.Refused:
        if gather and name == EMAIL_RECEIVED:
            customer_id = customer_id_or_none(data.get("customer_id") if isinstance(data, dict) else None)
            if customer_id and await intake.left_waiting_by_refusal(pool, customer_id=customer_id, event_at=event_at):
                await ask_for_a_run(customer_id, key=f"after-refusal-{event_id}")
        raise


async def record(
    pool: asyncpg.Pool, settings: Settings, data: Any, *, event_id: str, event_at: datetime
) -> intake.Stored:
    """The recorder's `store-message` body: the event's message stored, or `intake.Refused`."""
    email = parse(data, EmailReceived)
    return await intake.record(
        pool, email, event_id=event_id, event_at=event_at, max_body_chars=settings.max_email_body_chars
    )
