"""Tell reviewers a refund is waiting, through a Slack-compatible incoming webhook.

Plain Python (httpx), so any engine can call it from a retried step. Delivery is remembered
in Postgres per request and channel: a retried or redelivered step that finds the mark sends
nothing. A failed POST raises, so the engine retries it; the refund request itself is already
stored and stays on the desk either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import httpx

import db
from money import format_money
from settings import Settings

CHANNEL = "webhook"
logger = logging.getLogger("support_worker.notify")


async def notify_reviewers(pool: asyncpg.Pool, settings: Settings, *, request_id: str) -> dict[str, Any]:
    if not settings.reviewer_webhook_url:
        return {"sent": False, "why": "REVIEWER_WEBHOOK_URL is not set, so no one was notified"}
    if await db.notification_sent(pool, request_id=request_id, channel=CHANNEL):
        return {"sent": True, "why": "already notified"}
    request = await db.get_refund_request(pool, request_id=request_id)
    if request is None:
        raise LookupError(f"refund request {request_id} does not exist")
    customer = await db.get_customer(pool, customer_id=request.customer_id)
    who = f"{customer.name} <{customer.email}>" if customer else f"customer {request.customer_id}"
    desk_link = f"{settings.public_url.rstrip('/')}/reviews#{request.id}"
    text = (
        f"Refund waiting for review: {format_money(request.amount_cents)} on order {request.order_id} for {who}.\n"
        f"Reason: {request.reason}\nDecide by {request.expires_at} (UTC) at {desk_link}"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(settings.reviewer_webhook_url, json={"text": text})
        response.raise_for_status()
    if await db.mark_notification_sent(pool, request_id=request_id, channel=CHANNEL):
        await db.record_audit(
            pool,
            action=db.AuditAction.REVIEWER_NOTIFIED,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={"request_id": request_id, "channel": CHANNEL, "desk": desk_link},
            idempotency_key=f"reviewer_notified:{request_id}:{CHANNEL}",
        )
    return {"sent": True, "why": "delivered"}


async def notify_or_record_failure(pool: asyncpg.Pool, settings: Settings, *, request_id: str) -> dict[str, Any]:
    """`notify_reviewers` for a step that also opens the request: a few quick tries, then
    the failure is audited (`reviewer_notify_failed`) and returned instead of raised, so a
    dead notifier never fails the step that holds the request. The request is stored and on
    the desk either way; a database error still raises, so the engine retries the step."""
    attempts = settings.reviewer_notify_attempts
    failure: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        try:
            return await notify_reviewers(pool, settings, request_id=request_id)
        except (httpx.HTTPError, OSError) as error:
            failure = error
    why = f"{type(failure).__name__}: {failure}"[:500]
    logger.warning("could not notify reviewers about %s after %d tries: %s", request_id, attempts, why)
    request = await db.get_refund_request(pool, request_id=request_id)
    await db.record_audit(
        pool,
        action=db.AuditAction.REVIEWER_NOTIFY_FAILED,
        run_id=request.run_id if request else None,
        customer_id=request.customer_id if request else None,
        detail={"request_id": request_id, "channel": CHANNEL, "tries": attempts, "error": why},
        idempotency_key=f"reviewer_notify_failed:{request_id}:{CHANNEL}",
    )
    return {"sent": False, "why": f"not delivered after {attempts} tries: {why}"}
