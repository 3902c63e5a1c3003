"""The reviewers' approval desk: a small server-rendered page to approve or reject refunds.

Reviewers sign in with HTTP basic auth against REVIEW_DESK_USERS; the user name is the
reviewer identity recorded with each decision. A decision is recorded in Postgres first (the
first decision on a live request wins) and then announced through `announce`, which the host
wires to the engine's `refund/approval.decided` event. This module knows nothing about Inngest.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import asyncpg
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

import db
import notify
import refunds
from ingress import basic_auth_matches
from money import format_money
from settings import Settings
from store import reviews

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
    "reply_sent": "reply sent",
    "run_failed": "failed",
    "event_rejected": "rejected",
    "event_duplicate": "duplicate, already answered",
}
FINAL_ACTIONS = {"reply_sent", "run_failed", "event_rejected", "event_duplicate"}


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
    return int(whole) * 100 + int((fraction + "00")[:2])


async def status_events(
    pool: asyncpg.Pool, run_id: str, *, poll_seconds: float = 0.5, max_seconds: float = 900
) -> AsyncIterator[str]:
    """Server-sent events for one run, fed by its audit rows, ending when the run does.

    The audit trail is already the run's story, written once per step; streaming it needs
    no engine feature and works the same against the dev server, Cloud or self-hosted.
    """
    last_id, waited = 0, 0.0
    while waited < max_seconds:
        for entry in await db.list_audit(pool, run_id=run_id, after_id=last_id):
            last_id, action = entry.id, entry.action.value
            payload = {"run_id": run_id, "action": action, "line": STATUS_LINES.get(action, action), "at": entry.at}
            yield f"data: {json.dumps(payload)}\n\n"
            if action in FINAL_ACTIONS:
                return
        await asyncio.sleep(poll_seconds)
        waited += poll_seconds


def describe_outcome(outcome: refunds.DecisionOutcome, announced: bool) -> str:
    """One sentence for the reviewer about what their click did."""
    request = outcome.request
    if outcome.applied and request is not None:
        verb = "Approved" if request.status == "approved" else "Rejected"
        edit = ""
        if request.approved_amount_cents is not None:
            edit = (
                f" at {format_money(request.approved_amount_cents)} (lowered from {format_money(request.amount_cents)})"
            )
        if request.edited_reply:
            edit += " with your reply"
        tail = "" if announced else " (recorded; the waiting run will pick it up when it next checks)"
        return f"{verb} refund {request.id} for order {request.order_id}{edit}{tail}."
    message = IGNORED_REASONS[outcome.reason]
    if outcome.reason == "already_decided" and request is not None:
        message += f": {request.status} by {request.reviewer}. Nothing was changed."
    return message


def _time_left(seconds: int) -> str:
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours}h {rest // 60:02d}m left" if hours else f"{rest // 60}m left"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Refund reviews · support-worker</title>
<style>
 body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; }}
 .flash {{ padding: .6rem .9rem; background: #eef6ff; border: 1px solid #9cc3f0; border-radius: 6px; }}
 article {{ border: 1px solid #ccc; border-radius: 8px; padding: 1rem; margin: 1rem 0; }}
 blockquote {{ margin: .5rem 0; padding-left: .8rem; border-left: 3px solid #ddd; white-space: pre-wrap; }}
 .meta {{ color: #555; }} button {{ margin-right: .5rem; }}
</style></head><body>
<h1>Refund reviews</h1>
<p class="meta">Signed in as <strong>{reviewer}</strong>.</p>
{flash}
{body}
<script>
  // Each pending request's run reports its progress live (server-sent events from the audit trail).
  for (const el of document.querySelectorAll(".live-status")) {{
    const events = new EventSource("/runs/" + encodeURIComponent(el.dataset.run) + "/status");
    events.onmessage = (message) => {{ el.textContent = JSON.parse(message.data).line; }};
  }}
</script>
</body></html>"""


def render_desk(
    waiting: list[reviews.PendingReview], *, reviewer: str, flash: str, token_for: Callable[[str], str]
) -> str:
    items = []
    for review in waiting:
        r = review.request
        esc = html.escape
        items.append(f"""
<article id="{esc(r.id)}">
  <h2>{esc(format_money(r.amount_cents))} on order {r.order_id} <small class="meta">({esc(review.order_description)},
  paid {esc(format_money(review.order_amount_cents))})</small></h2>
  <p class="meta">{esc(review.customer_name)} &lt;{esc(review.customer_email)}&gt; · request {esc(r.id)} ·
  <span class="time-left">{esc(_time_left(review.seconds_left))}</span></p>
  <p><strong>Agent's reason:</strong> {esc(r.reason)}</p>
  <p><strong>Customer wrote:</strong></p><blockquote>{esc(r.customer_message)}</blockquote>
  <p class="meta">Live: <span class="live-status" data-run="{esc(r.run_id)}">connecting…</span></p>
  <form method="post" action="/reviews/{esc(r.id)}">
    <input type="hidden" name="csrf" value="{esc(token_for(r.id))}">
    <p><label>Note <input name="note" maxlength="2000" size="50"></label>
    <label>Approve a lower amount <input name="amount" inputmode="decimal" size="10"
      placeholder="{esc(f"{r.amount_cents / 100:.2f}")}"></label></p>
    <p><label>Reply to the customer instead of the agent's (optional)<br>
    <textarea name="reply" rows="3" cols="70" maxlength="20000"></textarea></label></p>
    <button name="decision" value="approve">Approve</button>
    <button name="decision" value="reject">Reject</button>
  </form>
</article>""")
    body = "\n".join(items) if items else "<p>No refunds are waiting for review.</p>"
    flash_html = f'<p class="flash" role="status">{html.escape(flash)}</p>' if flash else ""
    return PAGE.format(reviewer=html.escape(reviewer), flash=flash_html, body=body)


def build_router(settings: Settings, *, get_pool: Callable[[], asyncpg.Pool], announce: Announce) -> APIRouter:
    router = APIRouter()
    # Forms carry a token bound to the reviewer and the request: basic-auth credentials are
    # sent by the browser automatically, so without it another site could post a decision.
    form_secret = secrets.token_bytes(32)

    def token_for(reviewer: str, request_id: str) -> str:
        return hmac.new(form_secret, f"{reviewer}:{request_id}".encode(), hashlib.sha256).hexdigest()

    def signed_in(request: Request) -> str | Response:
        users = settings.reviewers
        if not users:
            return HTMLResponse(
                "<h1>The review desk is closed</h1><p>Set REVIEW_DESK_USERS (e.g. alice:secret) to open it.</p>",
                status_code=503,
            )
        header = request.headers.get("authorization")
        for name, password in users.items():
            if basic_auth_matches(header, username=name, password=password):
                return name
        return Response(
            "Sign in to review refunds.", status_code=401, headers={"WWW-Authenticate": 'Basic realm="refund reviews"'}
        )

    @router.get("/reviews", response_class=HTMLResponse)
    async def reviews_page(request: Request, msg: str = "") -> Response:
        reviewer = signed_in(request)
        if isinstance(reviewer, Response):
            return reviewer
        waiting = await reviews.list_pending_reviews(get_pool())
        flash = " ".join(filter(None, [await notify.configuration_problem(get_pool()), msg[:300]]))
        return HTMLResponse(
            render_desk(waiting, reviewer=reviewer, flash=flash, token_for=lambda rid: token_for(reviewer, rid))
        )

    @router.get("/runs/{run_id}/status")
    async def run_status(request: Request, run_id: str) -> Response:
        """Live status lines for one run, as server-sent events (reviewers only)."""
        reviewer = signed_in(request)
        if isinstance(reviewer, Response):
            return reviewer
        return StreamingResponse(
            status_events(get_pool(), run_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/reviews/{request_id}")
    async def decide(
        request: Request,
        request_id: str,
        decision: str = Form(...),
        csrf: str = Form(""),
        note: str = Form(""),
        amount: str = Form(""),
        reply: str = Form(""),
    ) -> Response:
        reviewer = signed_in(request)
        if isinstance(reviewer, Response):
            return reviewer
        if not hmac.compare_digest(csrf, token_for(reviewer, request_id)):
            return HTMLResponse("<p>This form is stale or was not sent from the desk. Reload the desk.</p>", 403)
        if decision not in ("approve", "reject"):
            return HTMLResponse("<p>Choose Approve or Reject.</p>", 400)
        try:
            amount_cents = parse_dollars(amount) if decision == "approve" else None
        except ValueError:
            message = f"{amount!r} is not an amount; write it like 12.34. Nothing was changed."
            return RedirectResponse(f"/reviews?{urlencode({'msg': message})}", status_code=303)
        choice = refunds.Decision(
            request_id=request_id,
            approved=decision == "approve",
            reviewer=reviewer,
            note=note.strip()[:2000] or None,
            amount_cents=amount_cents,
            reply=reply.strip() or None,
        )
        outcome, announced = await refunds.submit_decision(get_pool(), choice, announce=announce, via="desk")
        message = describe_outcome(outcome, announced)
        return RedirectResponse(f"/reviews?{urlencode({'msg': message})}", status_code=303)

    return router
