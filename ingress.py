"""Door 1: inbound email by webhook (Postmark's inbound JSON) turned into an email event.

The route answers fast: it checks the shared secret, the size and the shape, looks the sender
up (so the event carries the customer id and tier that flow control keys on), and hands one
event to `send`. The work happens in the durable function, never in the request. The engine
is injected as `send`, so this module knows nothing about Inngest.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from email.utils import parseaddr
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import db
from settings import Settings

logger = logging.getLogger("support_worker.ingress")

SendEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FindCustomer = Callable[[str], Awaitable[db.Customer | None]]


class PostmarkAddress(BaseModel):
    model_config = ConfigDict(extra="ignore")

    Email: str = Field(min_length=3)
    Name: str = ""


class PostmarkInbound(BaseModel):
    """The fields of Postmark's inbound webhook this service uses."""

    model_config = ConfigDict(extra="ignore")

    From: str = ""
    FromFull: PostmarkAddress | None = None
    Subject: str = ""
    TextBody: str = ""
    StrippedTextReply: str = ""
    MessageID: str = Field(min_length=1, max_length=200)
    Date: str = ""

    @property
    def sender(self) -> str:
        if self.FromFull is not None:
            return self.FromFull.Email.strip()
        return parseaddr(self.From)[1].strip()

    @property
    def text(self) -> str:
        # The customer's new words, without the quoted thread, when Postmark could separate them.
        return (self.StrippedTextReply or self.TextBody).strip()


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


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past `limit` bytes (never buffering more than that)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_router(settings: Settings, *, find_customer: FindCustomer, send: SendEvent, event_name: str) -> APIRouter:
    router = APIRouter()

    @router.post("/webhooks/email", status_code=202)
    async def inbound_email(request: Request) -> JSONResponse:
        """Postmark inbound webhook. Configure the provider's URL with basic auth:
        https://<WEBHOOK_USERNAME>:<WEBHOOK_PASSWORD>@your-host/webhooks/email"""
        if not settings.webhook_password:
            return _error(503, "the email webhook is disabled: set WEBHOOK_PASSWORD (and WEBHOOK_USERNAME)")
        if not basic_auth_matches(
            request.headers.get("authorization"), username=settings.webhook_username,
            password=settings.webhook_password.get_secret_value(),
        ):
            return _error(401, "missing or wrong webhook credentials", **{"WWW-Authenticate": 'Basic realm="webhook"'})
        raw = await _read_limited(request, settings.webhook_max_bytes)
        if raw is None:
            return _error(413, f"body is larger than {settings.webhook_max_bytes} bytes")
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "body must be a JSON object (Postmark's inbound format)")
        try:
            inbound = PostmarkInbound.model_validate(payload)
        except ValidationError as error:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            return _error(400, f"not a Postmark inbound message: {fields}")
        if "@" not in inbound.sender:
            return _error(400, "From/FromFull.Email: no sender address")
        if not inbound.text:
            return _error(400, "TextBody: the email has no text")
        customer = await find_customer(inbound.sender)
        data: dict[str, Any] = {
            "from_email": inbound.sender,
            "subject": inbound.Subject or None,
            "body": inbound.text,
            "message_id": inbound.MessageID,
            "received_at": inbound.Date or None,
        }
        if customer is not None:
            data |= {"customer_id": customer.id, "tier": customer.tier}
        event_id = f"postmark-{inbound.MessageID}"
        try:
            await send(event_name, event_id, data)
        except Exception:
            logger.exception("could not hand the email to the engine")
            # Non-2xx makes Postmark retry; the event id keeps a retry from doubling the email.
            return _error(503, "could not queue the email; the provider will retry")
        return JSONResponse(
            {"status": "accepted", "event_id": event_id, "customer_id": data.get("customer_id")}, status_code=202
        )

    return router
