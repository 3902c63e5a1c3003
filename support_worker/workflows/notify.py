"""Tell reviewers a refund is waiting, through a Slack-compatible incoming webhook.

Plain Python (httpx), so any engine can call it from a retried step. Delivery is remembered
in Postgres per request and channel: a retried or redelivered step that finds the mark sends
nothing. The refund request itself is already stored and stays on the desk either way.

Slack's contract for incoming webhooks, answered here:
- 429 with Retry-After: raise `RetryLater(seconds)`; the durable layer turns it into the
  engine's own retry-after error (this module never imports the engine).
- 5xx and network errors: raise, so the engine retries the step with its backoff.
- 400, 403, 404, 410 (a wrong or revoked URL, an archived channel): a configuration error.
  Audited once per request (`notifier_misconfigured`), shown at the top of the desk and in
  `support-worker up`, never retried, and never in the refund gate's way.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import httpx

import db
from support_worker.core.money import format_money
from support_worker.core.settings import Settings
from support_worker.store import notifier

CHANNEL = "webhook"
logger = logging.getLogger("support_worker.notify")
# Answers that mean the webhook is misconfigured (Slack: invalid_token, no_service,
# channel_is_archived, action_prohibited...); retrying cannot help.
CONFIGURATION_ERRORS = frozenset({400, 403, 404, 410})


class RetryLater(Exception):
    """Slack is rate limiting (429): try again after `seconds`."""

    def __init__(self, seconds: int, status: int = 429) -> None:
        super().__init__(f"reviewer webhook answered {status}; retry after {seconds}s")
        self.seconds = seconds


def retry_after_seconds(header: str | None, *, default: int = 30, cap: int = 600) -> int:
    """Retry-After as whole seconds (delta-seconds or an HTTP date), within 1..cap."""
    value = (header or "").strip()
    seconds: float = default
    if value.isdigit():
        seconds = int(value)
    elif value:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            seconds = default
    return int(min(max(seconds, 1), cap))


async def notify_reviewers(pool: asyncpg.Pool, settings: Settings, *, request_id: str) -> dict[str, Any]:
    if not settings.reviewer_webhook_url:
        return {"sent": False, "why": "REVIEWER_WEBHOOK_URL is not set, so no one was notified"}
    if await notifier.notification_sent(pool, request_id=request_id, channel=CHANNEL):
        return {"sent": True, "why": "already notified"}
    if await notifier.misconfiguration_recorded(pool, key=_misconfigured_key(request_id)):
        return {"sent": False, "why": "REVIEWER_WEBHOOK_URL was refused for this request; not retried"}
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
    if response.status_code == 429:
        cap = settings.reviewer_webhook_max_retry_after_seconds
        raise RetryLater(retry_after_seconds(response.headers.get("retry-after"), cap=cap))
    if response.status_code in CONFIGURATION_ERRORS:
        return await _misconfigured(pool, request, response)
    response.raise_for_status()  # 5xx (and anything unexpected): the engine retries with backoff
    if await notifier.mark_notification_sent(pool, request_id=request_id, channel=CHANNEL):
        await audit_notified(
            pool, run_id=request.run_id, customer_id=request.customer_id, subject_id=request_id, link=desk_link
        )
    return {"sent": True, "why": "delivered"}


async def _misconfigured(pool: asyncpg.Pool, request: db.RefundRequest, response: httpx.Response) -> dict[str, Any]:
    """Record once that the webhook is misconfigured; the refund goes on without the notice."""
    why = f"REVIEWER_WEBHOOK_URL answered {response.status_code} {response.text[:200]!r}"
    await db.record_audit(
        pool,
        action=db.AuditAction.NOTIFIER_MISCONFIGURED,
        run_id=request.run_id,
        customer_id=request.customer_id,
        detail={"request_id": request.id, "channel": CHANNEL, "status": response.status_code, "why": why},
        idempotency_key=_misconfigured_key(request.id),
    )
    return {"sent": False, "why": f"{why}: fix REVIEWER_WEBHOOK_URL; the request waits on the desk"}


def _misconfigured_key(request_id: str) -> str:
    return f"notifier_misconfigured:{request_id}:{CHANNEL}"


async def configuration_problem(pool: asyncpg.Pool) -> str | None:
    """One line for the desk and `support-worker up` while reviewer notifications fail for
    configuration: the latest `notifier_misconfigured` row not followed by a delivery."""
    latest = await notifier.latest_misconfiguration(pool)
    if latest is None:
        return None
    return (
        f"Reviewer notifications are failing: {latest.why} (since {latest.at:%Y-%m-%d %H:%M} UTC). "
        "Fix REVIEWER_WEBHOOK_URL; refunds still wait here."
    )


async def notify_or_record_failure(
    pool: asyncpg.Pool, settings: Settings, *, request_id: str, give_up: bool
) -> dict[str, Any]:
    """`notify_reviewers` for the step that also opens the request: a few quick tries for
    5xx and network errors. Still failing, it raises, so the engine retries the step with its
    backoff, unless `give_up` (the step's last attempt): then the failure is audited
    (`reviewer_notify_failed`) and returned, because a dead notifier must never cost the
    refund. A 429 raises `RetryLater` for the caller to honour; misconfiguration is never retried."""
    attempts = settings.reviewer_notify_attempts
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(0.2 * 2 ** (attempt - 1))
        try:
            return await notify_reviewers(pool, settings, request_id=request_id)
        except (httpx.HTTPError, OSError) as error:
            if attempt + 1 < attempts:
                continue
            if not give_up:
                raise
            return await record_failure(pool, request_id=request_id, why=f"{type(error).__name__}: {error}")
    raise AssertionError("unreachable: the loop returns or raises")


async def record_failure(pool: asyncpg.Pool, *, request_id: str, why: str) -> dict[str, Any]:
    """Audit once that reviewers could not be told; the request waits on the desk anyway."""
    why = why[:500]
    logger.warning("could not notify reviewers about %s: %s", request_id, why)
    request = await db.get_refund_request(pool, request_id=request_id)
    await db.record_audit(
        pool,
        action=db.AuditAction.REVIEWER_NOTIFY_FAILED,
        run_id=request.run_id if request else None,
        customer_id=request.customer_id if request else None,
        detail={"request_id": request_id, "channel": CHANNEL, "error": why},
        idempotency_key=f"reviewer_notify_failed:{request_id}:{CHANNEL}",
    )
    return {"sent": False, "why": f"not delivered: {why}"}


async def audit_notified(
    pool: asyncpg.Pool, *, run_id: str, customer_id: db.CustomerId, subject_id: str, link: str, channel: str = CHANNEL
) -> None:
    """The one writer of `reviewer_notified`, for a refund request or an escalation: once per
    subject and channel, whoever retries."""
    await db.record_audit(
        pool,
        action=db.AuditAction.REVIEWER_NOTIFIED,
        run_id=run_id,
        customer_id=customer_id,
        detail={"request_id": subject_id, "channel": channel, "desk": link},
        idempotency_key=f"reviewer_notified:{subject_id}:{channel}",
    )
