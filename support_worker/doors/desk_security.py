"""What every desk response carries and what its status line may say: the security headers,
set by an ASGI middleware on every response under the desk's paths (errors, redirects and the
router's own 404/405 included), and the signed flash (a status line only the desk can write).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import MutableHeaders

from support_worker.core.settings import Settings

logger = logging.getLogger("support_worker.desk")

# Every desk response carries these, refusals included: the desk is a page that decides
# money, so it may not be framed (clickjacking), leak its URLs, or run any inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# The desk's paths: everything under them gets SECURITY_HEADERS (`DeskSecurityHeaders`).
DESK_PATHS = ("/reviews", "/runs/")


class DeskSecurityHeaders:
    """ASGI middleware: every response under the desk's paths carries SECURITY_HEADERS, the
    router's own 404, 405 and 307 included, and an unhandled error becomes a 500 page that
    carries them too (logged here, since it never reaches the server's error handler)."""

    def __init__(self, app: Any, *, prefixes: tuple[str, ...] = DESK_PATHS) -> None:
        self.app, self.prefixes = app, prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            logger.exception("the desk failed to answer %s %s", scope.get("method"), scope["path"])
            if started:
                raise
            page = HTMLResponse("<!doctype html><title>Error</title><p>The desk failed; nothing was changed.", 500)
            await page(scope, receive, send_secured)


def _flash_signature(settings: Settings, *, reviewer: str, message: str) -> str:
    secret = settings.desk_form_secret.get_secret_value().encode()
    return hmac.new(secret, f"flash:{reviewer}:{message}".encode(), hashlib.sha256).hexdigest()


def flash_redirect(settings: Settings, *, reviewer: str, message: str) -> RedirectResponse:
    """Back to the desk with a status line: signed for this reviewer, so the page shows only
    messages the desk wrote (a link carrying any other `msg` shows nothing)."""
    sig = _flash_signature(settings, reviewer=reviewer, message=message)
    return RedirectResponse(f"/reviews?{urlencode({'msg': message, 'sig': sig})}", status_code=303)


def verified_flash(settings: Settings, *, reviewer: str, msg: str, sig: str) -> str:
    """The status line a link carries, when the desk signed it for this reviewer; else nothing."""
    expected = _flash_signature(settings, reviewer=reviewer, message=msg)
    return msg if msg and secrets.compare_digest(sig.encode(), expected.encode()) else ""
