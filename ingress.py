"""Door 1: inbound email by webhook (Postmark's inbound JSON) turned into an email event.

The route answers fast: it checks the shared secret, the size and the shape, looks the sender
up (so the event carries the customer id and tier that flow control keys on), and hands one
event to `send`. The work happens in the durable function, never in the request. The engine
is injected as `send`, so this module knows nothing about Inngest.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import parseaddr
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def credentials_match(given: HTTPBasicCredentials, *, username: str, password: SecretStr) -> bool:
    """Whether basic-auth credentials are these, compared in constant time.

    Compared as UTF-8 bytes: `compare_digest` raises on non-ASCII `str` (a 500 for anyone
    who types an umlaut), and both halves are always compared so timing says nothing.
    """
    user_ok = secrets.compare_digest(given.username.encode(), username.encode())
    password_ok = secrets.compare_digest(given.password.encode(), password.get_secret_value().encode())
    return user_ok & password_ok


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


class WebhookRoute(APIRoute):
    """Refusals raised by the auth dependency answer in the webhook's JSON shape, {"error": …}."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answered(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as error:
                # HTTPBasic's own refusal of a malformed header says "Not authenticated".
                message = WRONG_CREDENTIALS if error.status_code == 401 else str(error.detail)
                return _error(error.status_code, message, **(error.headers or {}))

        return answered


WRONG_CREDENTIALS = "missing or wrong webhook credentials"
# Module level: FastAPI resolves the postponed annotation below from the module's globals.
# auto_error=False so an unconfigured webhook answers 503 before asking for credentials.
provider_credentials = HTTPBasic(realm="webhook", auto_error=False)


def webhook_caller(settings: Settings) -> Callable[..., None]:
    """A dependency that lets only the configured provider in: 503 when no password is set."""

    def authorized(credentials: Annotated[HTTPBasicCredentials | None, Depends(provider_credentials)]) -> None:
        if not settings.webhook_password:
            raise HTTPException(503, "the email webhook is disabled: set WEBHOOK_PASSWORD (and WEBHOOK_USERNAME)")
        if credentials is None or not credentials_match(
            credentials, username=settings.webhook_username, password=settings.webhook_password
        ):
            raise HTTPException(401, WRONG_CREDENTIALS, {"WWW-Authenticate": 'Basic realm="webhook"'})

    return authorized


def build_router(settings: Settings, *, find_customer: FindCustomer, send: SendEvent, event_name: str) -> APIRouter:
    router = APIRouter(route_class=WebhookRoute)

    @router.post("/webhooks/email", status_code=202, dependencies=[Depends(webhook_caller(settings))])
    async def inbound_email(request: Request) -> JSONResponse:
        """Postmark inbound webhook. Configure the provider's URL with basic auth:
        https://<WEBHOOK_USERNAME>:<WEBHOOK_PASSWORD>@your-host/webhooks/email"""
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
