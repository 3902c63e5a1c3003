"""The reviewers' approval desk: a small server-rendered page to approve or reject refunds.

Reviewers sign in with HTTP basic auth (FastAPI's `HTTPBasic`) against REVIEW_DESK_USERS;
the user name is the reviewer identity recorded with each decision. A decision is recorded in
Postgres first (the first decision on a live request wins) and then announced through
`announce`, which the host wires to the engine's `refund/approval.decided` event. Pages come
from Jinja2 templates in `templates/` with autoescaping, so customer text can never become
markup; every response carries a Content-Security-Policy without 'unsafe-inline' (the page's
script and styles are files in `static/`). This module knows nothing about Inngest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.templating import Jinja2Templates
from itsdangerous import BadData, URLSafeTimedSerializer
from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import db
from support_worker.core.fields import MAX_ID
from support_worker.core.identity import reviewer_identity
from support_worker.core.money import format_money
from support_worker.core.settings import Settings
from support_worker.doors.auth_limits import AuthLimiter
from support_worker.doors.desk_security import (
    flash_redirect,
    verified_flash,
)
from support_worker.doors.ingress import credentials_match
from support_worker.durable import journal
from support_worker.store import agent_journal, approvals, drafts, reviews
from support_worker.store import escalations as escalation_store
from support_worker.workflows import decisions, escalations, notify, replies

logger = logging.getLogger("support_worker.desk")

Announce = Callable[[dict[str, Any]], Awaitable[None]]

IGNORED_REASONS = {
    "unknown_request": "There is no such refund request.",
    "already_decided": "This request was already decided",
    "expired": "This request expired before a decision; nothing was changed.",
    "same_decision": "This decision was already recorded.",
    "amount_raised": "An edit may only lower the amount, never raise it; nothing was changed.",
    "bad_amount": "The edited amount must be a positive amount of money; nothing was changed.",
    "recorded": "Recorded.",
    "same_reviewer": (
        "You have already approved this refund; the second approval must come from a different reviewer."
        " Nothing was changed."
    ),
    "no_waiting_run": (
        "This request was opened by a terminal session (support-worker answer), which decides it at its own "
        "prompt; no run waits for another decision, so nothing was changed and nothing will be paid."
    ),
}

# What each audit action means to someone watching a run, for the live status stream.
STATUS_LINES = {
    "message_received": "received, drafting a reply",
    "refund_requested": "waiting for approval",
    "reviewer_notified": "waiting for approval (reviewers notified)",
    "decision_recorded": "decision recorded",
    "refund_withdrawn": "withdrawn by the customer",
    "refund_issued": "refund issued",
    "refund_blocked": "refund not issued",
    "email_drafted": "reply drafted",
    "reply_sent": "reply sent",
    "reply_send_failed": "reply not sent (Postmark refused it)",
    "run_failed": "failed",
    "event_rejected": "rejected",
    "event_duplicate": "duplicate, already answered",
    "escalation_requested": "handed to a person (escalated)",
    "model_unavailable": "the model did not answer",
}
FINAL_ACTIONS = {"email_drafted", "run_failed", "event_rejected", "event_duplicate"}


def parse_dollars(text: str) -> int | None:
    """Dollars as a reviewer types them ("12.34", "$1,299") to cents; None for an empty field."""
    cleaned = text.strip().removeprefix("$")
    if not cleaned:
        return None
    # Commas only as thousands separators: "1,299.00" yes, "12,3.4" no.
    if not re.fullmatch(r"(\d{1,3}(,\d{3})+|\d+)(\.\d{1,2})?", cleaned):
        raise ValueError(f"not an amount: {text!r}")
    cleaned = cleaned.replace(",", "")
    whole, _, fraction = cleaned.partition(".")
    cents = int(whole) * 100 + int((fraction + "00")[:2])
    if cents > MAX_ID:
        raise ValueError(f"too large to be an amount of money: {text!r}")
    return cents


async def status_events(
    pool: asyncpg.Pool, run_id: str, *, poll_seconds: float = 0.5, max_seconds: float = 900
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events for one run, fed by its audit rows, ending when the run does.

    The audit trail is already the run's story, written once per step; streaming it needs
    no engine feature and works the same against the dev server, Cloud or self-hosted.
    """
    last_id, waited = 0, 0.0
    while waited < max_seconds:
        for entry in await db.list_audit(pool, run_id=run_id, after_id=last_id):
            last_id, action = entry.id, entry.action.value
            payload = {"run_id": run_id, "action": action, "line": STATUS_LINES.get(action, action), "at": entry.at}
            yield {"data": json.dumps(payload)}
            if action in FINAL_ACTIONS:
                return
        await asyncio.sleep(poll_seconds)
        waited += poll_seconds


def describe_outcome(outcome: decisions.DecisionOutcome, announced: bool) -> str:
    """One sentence for the reviewer about what their click did."""
    request = outcome.request
    if outcome.applied and request is not None:
        verb = "Rejected" if request.status == "rejected" else "Approved"
        edit = ""
        if request.approved_amount_cents is not None:
            lowered, requested = format_money(request.approved_amount_cents), format_money(request.amount_cents)
            edit = f" at {lowered} (lowered from {requested})"
        if request.edited_reply:
            edit += " with your reply"
        tail = "" if announced else " (recorded; the waiting run will pick it up when it next checks)"
        if request.approvals_needed > 1 and request.status != "rejected":
            count = f"{len(outcome.approvers)} of {request.approvals_needed} approvals: {', '.join(outcome.approvers)}"
            if request.status == "pending":
                count += "; a different reviewer must approve before anything is paid"
            edit = f" ({count}){edit}"
        return f"{verb} refund {request.id} for order {request.order_id}{edit}{tail}."
    message = IGNORED_REASONS[outcome.reason]
    if outcome.reason == "already_decided" and request is not None:
        message += f": {request.status} by {request.reviewer}. Nothing was changed."
    return message


def time_left(seconds: int) -> str:
    """What a reviewer reads for the time a request has left: "3h 59m left", "59m left"."""
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}h {rest // 60:02d}m left" if hours else f"{rest // 60}m left"


STATIC_FILES = {"desk.js": "text/javascript", "desk.css": "text/css"}
REFUSAL_TITLES = {
    400: "Nothing was changed",
    401: "Sign in to review refunds",
    429: "Too many wrong sign-ins",
    403: "This form cannot be used",
    503: "The review desk is closed",
}
REALM = "refund reviews"
# Module level, not inside a factory: FastAPI resolves these postponed annotations from the
# module's globals. auto_error=False so the closed desk answers 503 before asking to sign in.
basic_credentials = HTTPBasic(realm=REALM, auto_error=False)

# Package data, installed beside this module (pyproject), so the desk works from any folder.
DOORS_DIR = Path(__file__).resolve().parent
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(DOORS_DIR / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
)
templates.env.filters["money"] = format_money
templates.env.filters["time_left"] = time_left


def refusal_page(request: Request, error: StarletteHTTPException) -> Response:
    """An HTML page for a refused desk request, keeping the error's headers (WWW-Authenticate)."""
    context = {"title": REFUSAL_TITLES.get(error.status_code, "Refused"), "detail": error.detail}
    return templates.TemplateResponse(
        request, "refusal.html", context, status_code=error.status_code, headers=error.headers
    )


class DeskRoute(APIRoute):
    """A route whose refusals are pages: an HTTP error raised anywhere (a dependency included)
    keeps its status, and input the desk cannot take (a missing field, NUL, a reply over the
    limit) is a 400 saying which field, never a 500. The headers come from `DeskSecurityHeaders`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def refused_as_pages(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as error:
                return refusal_page(request, error)
            except (RequestValidationError, ValidationError) as error:
                why = "; ".join(_field_problem(e) for e in error.errors()) or "the form could not be read"
                return refusal_page(request, StarletteHTTPException(400, f"Nothing was changed: {why}."))

        return refused_as_pages


def _field_problem(error: Any) -> str:
    where = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    return f"{'.'.join(where) or 'form'}: {error.get('msg', 'not accepted')}"


STALE_FORM = "This form is stale or was not sent from the desk. Reload the desk."


def _form_signer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.desk_form_secret.get_secret_value(), salt="desk-form")


def form_token(settings: Settings, *, reviewer: str, request_id: str) -> str:
    """The token a desk form carries, bound to the reviewer and the request, with its time.

    Basic-auth credentials are sent by the browser automatically, so without it another site
    could post a decision. Signed with DESK_FORM_SECRET (itsdangerous), so any process sharing
    the setting accepts a form another one rendered.
    """
    return _form_signer(settings).dumps([reviewer, request_id])


def form_max_age_seconds(settings: Settings) -> int:
    """How long a rendered form stays good: as long as anything on it can still be waiting."""
    return max(settings.refund_approval_timeout_seconds, settings.escalation_timeout_seconds)


def form_token_is_valid(settings: Settings, token: str, *, reviewer: str, request_id: str) -> bool:
    """Whether `token` is one the desk signed for this reviewer and request, and not too old."""
    try:
        signed = _form_signer(settings).loads(token, max_age=form_max_age_seconds(settings))
    except BadData:  # a bad signature, an expired token, or not a token at all
        return False
    return bool(signed == [reviewer, request_id])


def signed_in_reviewer(settings: Settings, limits: AuthLimiter | None = None) -> Callable[..., Awaitable[str]]:
    """A dependency: the signed-in reviewer's name, or a 503 (desk closed), 429 (locked out
    after repeated wrong credentials, `auth_limits`) or 401 refusal."""
    limits = limits or AuthLimiter(
        "desk", max_failures=settings.auth_max_failures, window_seconds=settings.auth_failure_window_seconds
    )

    async def reviewer(
        request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(basic_credentials)]
    ) -> str:
        users = settings.reviewers
        if not users:
            raise HTTPException(503, "Set REVIEW_DESK_USERS (e.g. alice:a-long-password) to open it.")
        client = AuthLimiter.client_of(request)
        tried = reviewer_identity(credentials.username) if credentials else None
        limits.check(client, tried)
        # Every pair is compared, so the time taken does not say which names exist.
        matches = [
            name
            for name, password in users.items()
            if credentials is not None and credentials_match(credentials, username=name, password=password)
        ]
        if not matches:
            if credentials is not None and tried is not None:
                await limits.failed(client, tried)
            raise HTTPException(
                401, "Sign in with your desk name and password.", {"WWW-Authenticate": f'Basic realm="{REALM}"'}
            )
        # The reviewer's identity (`core.identity`), the same one the CLI's --reviewer maps to.
        identity = reviewer_identity(matches[0])
        limits.succeeded(client, identity)
        return identity

    return reviewer


class PendingEscalation(BaseModel):
    escalation: escalation_store.Escalation
    customer_name: str


async def pending_escalations(pool: asyncpg.Pool) -> list[PendingEscalation]:
    return [
        PendingEscalation(escalation=e, customer_name=name)
        for e, name in await escalation_store.list_pending_escalations(pool)
    ]


ESCALATION_REASONS = {
    "unknown_request": "There is no such escalation.",
    "already_decided": "This escalation was already decided",
    "expired": "This escalation timed out before a decision; nothing was changed.",
    "same_decision": "This decision was already recorded.",
    "no_text": "Edit needs the text to post; nothing was changed.",
}


def describe_escalation_outcome(outcome: escalations.DecisionOutcome, announced: bool) -> str:
    """One sentence for the reviewer about what their decision on an escalation did."""
    escalation = outcome.escalation
    if outcome.applied and escalation is not None:
        tail = "" if announced else " (recorded; the waiting run will pick it up when it next checks)"
        return f"Escalation {escalation.id}: {escalation.status}{tail}."
    message = ESCALATION_REASONS[outcome.reason]
    if outcome.reason == "already_decided" and escalation is not None:
        message += f": {escalation.status} by {escalation.reviewer}. Nothing was changed."
    return message


async def _page_context(settings: Settings, pool: asyncpg.Pool, *, reviewer: str, msg: str) -> dict[str, Any]:
    """What the desk page shows: waiting refunds with their approvals, escalations, a flash."""
    waiting = await reviews.list_pending_reviews(pool)
    return {
        "reviews": waiting,
        "approvals": await approvals.approvals_by_request(pool, request_ids=[r.request.id for r in waiting]),
        "escalations": await pending_escalations(pool),
        # Drafts nobody sends: every reply when Postmark's outbound API is not configured.
        "drafts": [] if replies.sending_configured(settings) else await drafts.list_waiting(pool),
        "reviewer": reviewer,
        # A notifier Slack refuses (a revoked URL) is said at the top until it works again.
        "flash": " ".join(filter(None, [await notify.configuration_problem(pool), msg[:300]])),
        "token_for": lambda request_id: form_token(settings, reviewer=reviewer, request_id=request_id),
    }


def _check_form(settings: Settings, *, reviewer: str, request_id: str, csrf: str, decision: str) -> None:
    """Refuse a decision form the desk did not send (403) or that chose nothing (400)."""
    if not form_token_is_valid(settings, csrf, reviewer=reviewer, request_id=request_id):
        raise HTTPException(403, STALE_FORM)
    if decision not in ("approve", "reject"):
        raise HTTPException(400, "Choose Approve or Reject.")


def _form_decision(
    request_id: str, decision: str, *, reviewer: str, note: str, amount_cents: int | None, reply: str
) -> decisions.Decision:
    """The desk form's fields as a reviewer's decision (note and reply trimmed)."""
    return decisions.Decision(
        request_id=request_id,
        approved=decision == "approve",
        reviewer=reviewer,
        note=note.strip()[:2000] or None,
        amount_cents=amount_cents,
        reply=reply.strip() or None,
    )


def build_router(
    settings: Settings,
    *,
    get_pool: Callable[[], asyncpg.Pool],
    announce: Announce,
    announce_escalation: Announce | None = None,
) -> APIRouter:
    """The desk's routes: the page, its static files, the live status stream and decisions."""
    router = APIRouter(route_class=DeskRoute)
    limits = AuthLimiter(
        "desk",
        max_failures=settings.auth_max_failures,
        window_seconds=settings.auth_failure_window_seconds,
        get_pool=get_pool,
    )
    signed_in = signed_in_reviewer(settings, limits)

    @router.get("/reviews")
    async def reviews_page(
        request: Request, reviewer: str = Depends(signed_in), msg: str = "", sig: str = ""
    ) -> Response:
        flash = verified_flash(settings, reviewer=reviewer, msg=msg, sig=sig)
        context = await _page_context(settings, get_pool(), reviewer=reviewer, msg=flash)
        return templates.TemplateResponse(request, "desk.html", context)

    @router.post("/reviews/{request_id}")
    async def decide(
        request_id: str,
        decision: Annotated[str, Form()],
        # A default, not Annotated: `signed_in` is local, and annotations here are strings
        # FastAPI resolves from the module's globals.
        reviewer: str = Depends(signed_in),
        csrf: Annotated[str, Form()] = "",
        note: Annotated[str, Form()] = "",
        amount: Annotated[str, Form()] = "",
        reply: Annotated[str, Form()] = "",
    ) -> Response:
        _check_form(settings, reviewer=reviewer, request_id=request_id, csrf=csrf, decision=decision)
        try:
            amount_cents = parse_dollars(amount) if decision == "approve" else None
        except ValueError:
            message = f"{amount!r} is not an amount; write it like 12.34. Nothing was changed."
            return flash_redirect(settings, reviewer=reviewer, message=message)
        choice = _form_decision(
            request_id, decision, reviewer=reviewer, note=note, amount_cents=amount_cents, reply=reply
        )
        outcome, announced = await decisions.submit_decision(get_pool(), choice, announce=announce, via="desk")
        message = describe_outcome(outcome, announced)
        return flash_redirect(settings, reviewer=reviewer, message=message)

    _add_read_only_routes(router, signed_in, get_pool)
    _add_escalation_routes(router, settings, signed_in, get_pool, announce_escalation or _nobody)
    return router


def _add_read_only_routes(router: APIRouter, signed_in: Any, get_pool: Callable[[], asyncpg.Pool]) -> None:
    """The page's static files, a run's live status stream and its agent journal."""

    @router.get("/reviews/static/{name}")
    async def static_file(name: str) -> Response:
        """The page's script and stylesheet (files, so the CSP needs no 'unsafe-inline')."""
        if name not in STATIC_FILES:
            raise HTTPException(404, "No such file.")
        return FileResponse(DOORS_DIR / "static" / name, media_type=STATIC_FILES[name])

    @router.get("/runs/{run_id}/status")
    async def run_status(run_id: str, reviewer: str = Depends(signed_in)) -> Response:
        """Live status lines for one run, as server-sent events (reviewers only)."""
        # sse-starlette frames the events, keeps proxies from closing an idle stream with
        # pings, and stops reading the audit trail when the reviewer leaves or the host stops.
        return EventSourceResponse(status_events(get_pool(), run_id))

    @router.get("/runs/{run_id}/journal")
    async def run_journal(run_id: str, reviewer: str = Depends(signed_in)) -> dict[str, Any]:
        """The run's agent journal, entry by entry (what `support-worker run <id>` prints)."""
        entries = await agent_journal.entries(get_pool(), run_id=run_id)
        return {"run_id": run_id, "entries": journal.describe(entries)}


def _add_escalation_routes(
    router: APIRouter,
    settings: Settings,
    signed_in: Callable[..., Awaitable[str]],
    get_pool: Callable[[], asyncpg.Pool],
    announce_escalation: Announce,
) -> None:
    """The escalation decision beside the refund one: the same sign-in and form tokens."""

    @router.post("/reviews/escalations/{escalation_id}")
    async def decide_escalation(
        escalation_id: str,
        decision: Annotated[str, Form()],
        reviewer: str = Depends(signed_in),
        csrf: Annotated[str, Form()] = "",
        edited_text: Annotated[str, Form()] = "",
    ) -> Response:
        if not form_token_is_valid(settings, csrf, reviewer=reviewer, request_id=escalation_id):
            raise HTTPException(403, STALE_FORM)
        if decision not in ("approve", "edit", "reject"):
            raise HTTPException(400, "Choose Approve, Edit or Reject.")
        choice = escalations.Decision(
            request_id=escalation_id,
            decision=decision,  # type: ignore[arg-type]
            reviewer=reviewer,
            edited_text=edited_text.strip() or None,
        )
        outcome, announced = await escalations.submit_decision(
            get_pool(), choice, announce=announce_escalation, via="desk"
        )
        message = describe_escalation_outcome(outcome, announced)
        return flash_redirect(settings, reviewer=reviewer, message=message)


async def _nobody(data: dict[str, Any]) -> None:
    raise RuntimeError("no engine to announce escalation decisions to")
