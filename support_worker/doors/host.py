"""The host's own HTTP pieces, engine-free: the doors (webhook and desk), health probes, and
refusing replayed signed calls.

inngest_app.py mounts them beside the engine's endpoint, with the engine injected as `send`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import db
from support_worker.core.events import APPROVAL_DECIDED, EMAIL_RECEIVED, ESCALATION_DECIDED
from support_worker.core.settings import Settings
from support_worker.doors import desk, desk_security, ingress

# Send one event: name, id (a resend with the same id is a no-op), data.
Send = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class RefuseStaleSignatures:
    """ASGI middleware: a signed call to the Inngest endpoint whose signature timestamp
    (`X-Inngest-Signature: t=<unix seconds>&s=...`) is missing or further than
    `max_age_seconds` from now gets 401 before the SDK sees it. The SDK verifies the HMAC
    but never the age, so without this a captured request could be replayed forever."""

    def __init__(self, app: Any, *, max_age_seconds: int, path: str = "/api/inngest") -> None:
        self.app, self.max_age_seconds, self.path = app, max_age_seconds, path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            why = self.refusal(dict(scope.get("headers") or []).get(b"x-inngest-signature"))
            if why is not None:
                await JSONResponse({"error": why}, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, header: bytes | None, now: float | None = None) -> str | None:
        """Why this signature header is refused, or None (no header is the SDK's to refuse)."""
        if header is None:
            return None
        stamp = parse_qs(header.decode("latin-1")).get("t", [""])[0]
        if not stamp.isdigit() or int(stamp) <= 0:
            return "X-Inngest-Signature has no timestamp"
        age = (time.time() if now is None else now) - int(stamp)
        if abs(age) > self.max_age_seconds:
            return f"X-Inngest-Signature is {int(age)} seconds old; at most {self.max_age_seconds} are accepted"
        return None


def add_probes(app: FastAPI, settings: Settings, get_pool: Callable[[], asyncpg.Pool]) -> None:
    """`/healthz` says the process lives; `/readyz` says it can reach Postgres."""

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "ok": True,
            "dev_mode": settings.inngest_dev_mode,
            "model": "offline-rules" if settings.uses_offline_model else settings.openai_model,
        }

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await db.ping(get_pool(), within_seconds=2)
        except Exception as error:  # any failure to reach the database means not ready
            return JSONResponse({"ok": False, "database": f"unreachable: {type(error).__name__}"}, status_code=503)
        return JSONResponse({"ok": True, "database": "reachable"})


def mount_doors(app: FastAPI, settings: Settings, *, get_pool: Callable[[], asyncpg.Pool], send: Send) -> None:
    """The email webhook and the review desk, which announce what they record through `send`."""

    async def find_customer(email: str) -> db.Customer | None:
        return await db.find_customer_by_email(get_pool(), email=email)

    async def announce_decision(data: dict[str, Any]) -> None:
        await send(APPROVAL_DECIDED, str(data["decision_id"]), data)

    async def announce_escalation_decision(data: dict[str, Any]) -> None:
        await send(ESCALATION_DECIDED, str(data["decision_id"]), data)

    app.include_router(
        ingress.build_router(
            settings, find_customer=find_customer, send=send, event_name=EMAIL_RECEIVED, get_pool=get_pool
        )
    )
    app.add_middleware(desk_security.DeskSecurityHeaders)
    app.include_router(
        desk.build_router(
            settings, get_pool=get_pool, announce=announce_decision, announce_escalation=announce_escalation_decision
        )
    )
