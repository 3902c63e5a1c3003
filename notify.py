"""Tell reviewers a refund is waiting, through a Slack-compatible incoming webhook.

Plain Python (httpx), so any engine can call it from a retried step. Delivery is remembered
in Postgres per request and channel: a retried or redelivered step that finds the mark sends
nothing. A failed POST raises, so the engine retries it; the refund request itself is already
stored and stays on the desk either way.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

import db
from money import format_money
from settings import Settings

CHANNEL = "webhook"


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
