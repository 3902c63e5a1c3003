"""Door 1: inbound email by webhook (Postmark's inbound JSON) turned into an email event.

The route answers fast: it checks the shared secret and reads the body under a size cap;
`inbound.py` stores the message once and hands one event (a reference, never the body) to
`send`, or refuses it with the answer Postmark's retry contract expects. The work happens
in the durable function, never in the request. The engine is injected as `send`, so this
module knows nothing about Inngest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import db
import inbound
from settings import Settings

logger = logging.getLogger("support_worker.ingress")

SendEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FindCustomer = Callable[[str], Awaitable[db.Customer | None]]
HEAD_BYTES = 65536


def basic_auth_matches(header: str | None, *, username: str, password: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    given_user, _, given_password = given.partition(":")
    return hmac.compare_digest(given_user, username) & hmac.compare_digest(given_password, password)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _read_limited(request: Request, limit: int) -> tuple[bytes | None, bytes]:
    """The body, or None once it grows past `limit` bytes (never buffering more than that),
    and its first 64 KB either way (where Postmark names the sender)."""
    declared = request.headers.get("content-length")
    too_large = bool(declared and declared.isdigit() and int(declared) > limit)
    chunks: list[bytes] = []
    head, size = b"", 0
    async for chunk in request.stream():
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        size += len(chunk)
        if too_large or size > limit:
            return None, head
        chunks.append(chunk)
    return b"".join(chunks), head


def build_router(
    settings: Settings,
    *,
    find_customer: FindCustomer,
    send: SendEvent,
    event_name: str,
    get_pool: Callable[[], asyncpg.Pool],
) -> APIRouter:
    router = APIRouter()

    @router.post("/webhooks/email", status_code=200)
    async def inbound_email(request: Request) -> JSONResponse:
        """Postmark inbound webhook. Configure the provider's URL with basic auth:
        https://<WEBHOOK_USERNAME>:<WEBHOOK_PASSWORD>@your-host/webhooks/email"""
        if not settings.webhook_password:
            return _error(503, "the email webhook is disabled: set WEBHOOK_PASSWORD (and WEBHOOK_USERNAME)")
        if not basic_auth_matches(
            request.headers.get("authorization"), username=settings.webhook_username, password=settings.webhook_password
        ):
            return _error(401, "missing or wrong webhook credentials", **{"WWW-Authenticate": 'Basic realm="webhook"'})
        pool = get_pool()
        try:
            raw, head = await _read_limited(request, settings.webhook_max_bytes)
            if raw is None:
                answer = await inbound.refuse(
                    pool,
                    why=f"the email is larger than {settings.webhook_max_bytes} bytes",
                    advice="Please send it again with smaller attachments (or links to them).",
                    key=f"too-large:{hashlib.sha256(head).hexdigest()[:32]}",
                    sender=inbound.sender_in_prefix(head),
                    find_customer=find_customer,
                )
            else:
                answer = await inbound.accept(
                    raw,
                    pool=pool,
                    find_customer=find_customer,
                    send=send,
                    event_name=event_name,
                    max_event_bytes=settings.max_event_bytes,
                )
        except Exception:
            logger.exception("could not take the email in")
            # Postgres or the event API is down: Postmark retries non-200 answers, and the
            # MessageID keeps a retry from doubling the email.
            return _error(503, "could not store or queue the email; the provider will retry")
        return JSONResponse(answer.body, status_code=answer.status)

    return router
