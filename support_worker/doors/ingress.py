"""Door 1: inbound email by webhook (Postmark's inbound JSON) turned into an email event.

The route answers fast: it checks the shared secret and reads the body under a size cap;
`inbound.py` stores the message once and hands one event (a reference, never the body) to
`send`, or refuses it with the answer Postmark's retry contract expects. The work happens
in the durable function, never in the request. The engine is injected as `send`, so this
module knows nothing about Inngest.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

import db
from support_worker.core.settings import Settings
from support_worker.doors import inbound

logger = logging.getLogger("support_worker.ingress")

SendEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
FindCustomer = Callable[[str], Awaitable[db.Customer | None]]
HEAD_BYTES = 65536


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


def build_router(
    settings: Settings,
    *,
    find_customer: FindCustomer,
    send: SendEvent,
    event_name: str,
    get_pool: Callable[[], asyncpg.Pool],
) -> APIRouter:
    router = APIRouter(route_class=WebhookRoute)

    @router.post("/webhooks/email", status_code=200, dependencies=[Depends(webhook_caller(settings))])
    async def inbound_email(request: Request) -> JSONResponse:
        """Postmark inbound webhook. Configure the provider's URL with basic auth:
        https://<WEBHOOK_USERNAME>:<WEBHOOK_PASSWORD>@your-host/webhooks/email"""
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
                    html_seconds=settings.webhook_html_seconds,
                )
        except Exception:
            logger.exception("could not take the email in")
            # Postgres or the event API is down: Postmark retries non-200 answers, and the
            # MessageID keeps a retry from doubling the email.
            return _error(503, "could not store or queue the email; the provider will retry")
        return JSONResponse(answer.body, status_code=answer.status)

    return router
