"""The escalation workflow, written once: open an escalation, tell reviewers, record a
decision, and settle it (post to the senior support channel, or not), exactly once.

Engine-free and model-free, like `refunds.py`: the terminal runner and the durable layer call
these functions and neither re-implements them. An escalation is opened when the agent calls
`escalate_to_human`, or by the runners themselves when the model cannot go on (a refusal, a
tool that does not exist, invalid tool arguments, the turn limit, the token budget): retrying
cannot fix those, so the customer gets a holding reply and a person takes over.

Postgres is the judge: the first decision recorded on a live, pending escalation wins,
wherever it came from (desk, CLI, event). Settling writes exactly one audit row per
escalation (`escalation_approved`, `escalation_edited`, `escalation_rejected` or
`escalation_posted_via_timeout`) with the reviewer, or `timeout`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import db
from support_worker.core.fields import CustomerIdText, StorableText
from support_worker.core.identity import ReviewerName
from support_worker.core.settings import Settings
from support_worker.store import escalations as store
from support_worker.store.escalations import Escalation, Source, Urgency
from support_worker.workflows import decision_targets as targets
from support_worker.workflows import notify

logger = logging.getLogger("support_worker.escalations")

ESCALATE_TOOL = "escalate_to_human"
REVIEWERS = "reviewers"  # delivery channels, each at most once per escalation
SENIOR = "senior"
NO_REVIEW_HEADER = "⚠️ Escalation posted with NO HUMAN REVIEW (no reviewer decided in time)"
DecisionKind = Literal["approve", "edit", "reject"]

# What the customer reads when a person takes over; the reply guard still checks it.
HOLDING_REPLY = (
    "Hi {first_name},\n\nthank you for your message. We have passed it to a senior member of our "
    "support team, who will look into it personally and get back to you. You do not need to do "
    "anything else in the meantime.\n\nBest regards,\nThe Support Team"
)

# Why a run escalated by itself, as the audit trail and the reviewer read it.
FAULT_REASONS = {
    "model_refusal": "The model refused to answer this email.",
    "unknown_tool": "The model called a tool that does not exist.",
    "invalid_tool_arguments": "The model sent tool arguments that are not valid JSON.",
    "model_behavior": "The model's output could not be used.",
    "max_turns": "The agent reached its turn limit (AGENT_MAX_TURNS) without finishing.",
    "token_budget": "The conversation reached its token budget (CONVERSATION_TOKEN_BUDGET).",
}


class EscalationAsk(BaseModel):
    """A hand-off a run asks for: from the agent's tool call, or from a fault. `key` is the
    tool-call id or the fault's name, so a redelivered step finds the same escalation."""

    key: str
    source: Source
    reason: str
    urgency: Urgency = "normal"
    summary: str = ""


class Decision(BaseModel):
    """A reviewer's decision on one escalation (the data of `escalation/decision.made`).
    As for refunds, `request_id` is the recommended key; `customer_id` alone means their one
    pending escalation, and a missing reviewer is filled in by decision_targets.py."""

    model_config = ConfigDict(extra="ignore")

    request_id: StorableText | None = Field(default=None, min_length=1, max_length=100)
    customer_id: CustomerIdText | None = None
    decision: DecisionKind
    # One identity however spelled (`core.identity`); None: the course's decision that names no
    # one, recorded as `event:<id>` (decision_targets.py).
    reviewer: ReviewerName | None = None
    edited_text: StorableText | None = Field(default=None, max_length=20_000)
    decision_id: StorableText | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _names_an_escalation(self) -> Decision:
        if self.request_id is None and self.customer_id is None:
            raise ValueError("give request_id (recommended), or customer_id for their one pending escalation")
        return self


class DecisionOutcome(BaseModel):
    applied: bool
    reason: Literal["recorded", "same_decision", "unknown_request", "already_decided", "expired", "no_text"]
    escalation: Escalation | None


class Settled(BaseModel):
    """What became of an escalation: its final status, and whether the senior channel got it."""

    escalation_id: str
    status: str
    posted: bool
    reviewer: str | None


# --------------------------------------------------------------------------- asking


def ask_from_tool_call(call_id: str, raw_arguments: str | None) -> EscalationAsk:
    """The agent's `escalate_to_human` arguments; unreadable ones still escalate."""
    try:
        data = json.loads(raw_arguments or "{}")
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    urgency: Urgency = data["urgency"] if data.get("urgency") in ("low", "normal", "high", "urgent") else "normal"
    return EscalationAsk(
        key=call_id,
        source="agent",
        reason=str(data.get("reason") or "The agent asked for a human.")[:1000],
        urgency=urgency,
        summary=str(data.get("summary") or "")[:4000],
    )


def ask_from_fault(kind: str, detail: str = "") -> EscalationAsk:
    """A run that cannot go on hands over; the reason says why, the detail what the model did."""
    reason = FAULT_REASONS.get(kind, FAULT_REASONS["model_behavior"])
    return EscalationAsk(
        key=f"fault-{kind}",
        source="budget" if kind == "token_budget" else "model_fault",
        reason=reason,
        urgency="normal",
        summary=f"{reason} {detail}".strip()[:4000],
    )


def holding_reply(customer: db.Customer) -> str:
    return HOLDING_REPLY.format(first_name=customer.name.split()[0])


def draft_for_senior(customer: db.Customer, ask: EscalationAsk, *, customer_message: str, run_id: str) -> str:
    """What the senior support channel reads: who, why, how urgent, what they wrote."""
    quoted = "\n".join(f"> {line}" for line in customer_message.strip().splitlines()[:20])
    return (
        f"Escalation ({ask.urgency}) for {customer.name} <{customer.email}> (customer {customer.id})\n"
        f"Reason: {ask.reason}\nSummary: {ask.summary or '(none given)'}\n"
        f"Customer wrote:\n{quoted}\nRun: {run_id}"
    )


async def open_escalation(
    pool: asyncpg.Pool,
    *,
    ask: EscalationAsk,
    run_id: str,
    customer: db.Customer,
    customer_message: str,
    ttl_seconds: int,
) -> Escalation:
    """Record the escalation and its `escalation_requested` row, together, once per run and key."""
    draft = draft_for_senior(customer, ask, customer_message=customer_message, run_id=run_id)
    async with db.transaction(pool) as conn:
        escalation, created = await store.insert_escalation(
            conn,
            customer_id=customer.id,
            run_id=run_id,
            source_key=ask.key,
            source=ask.source,
            reason=ask.reason,
            urgency=ask.urgency,
            summary=ask.summary,
            draft=draft,
            customer_message=customer_message[:4000],
            ttl_seconds=ttl_seconds,
        )
        if created:
            await db.record_audit(
                conn,
                action=db.AuditAction.ESCALATION_REQUESTED,
                run_id=run_id,
                customer_id=customer.id,
                detail={
                    "request_id": escalation.id,
                    "source": ask.source,
                    "reason": ask.reason,
                    "urgency": ask.urgency,
                    "summary": ask.summary,
                    "expires_at": escalation.expires_at,
                },
                idempotency_key=f"escalation_requested:{escalation.id}",
            )
    return escalation


# --------------------------------------------------------------------------- telling people


async def post_once(pool: asyncpg.Pool, url: str | None, *, escalation_id: str, channel: str, text: str) -> bool:
    """POST `{"text": …}` to a Slack-compatible webhook at most once per escalation and
    channel (remembered in Postgres). A failed POST raises, so the engine retries the step.
    Returns whether the channel has the message (False when no URL is configured)."""
    if not url:
        return False
    if await store.delivered(pool, escalation_id=escalation_id, channel=channel):
        return True
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(url, json={"text": text})
        response.raise_for_status()
    await store.mark_delivered(pool, escalation_id=escalation_id, channel=channel)
    return True


async def notify_reviewers(pool: asyncpg.Pool, settings: Settings, *, escalation_id: str) -> dict[str, Any]:
    """Tell the on-call reviewers (REVIEWER_WEBHOOK_URL) that an escalation waits on the desk."""
    escalation = await _require(pool, escalation_id)
    link = f"{settings.public_url.rstrip('/')}/reviews#{escalation.id}"
    text = (
        f"Escalation waiting for review ({escalation.urgency}): {escalation.reason}\n"
        f"{escalation.summary}\nDecide by {escalation.expires_at} (UTC) at {link}"
    )
    sent = await post_once(
        pool, settings.reviewer_webhook_url, escalation_id=escalation_id, channel=REVIEWERS, text=text
    )
    if not sent:
        return {"sent": False, "why": "REVIEWER_WEBHOOK_URL is not set, so no one was notified"}
    await notify.audit_notified(
        pool,
        run_id=escalation.run_id,
        customer_id=escalation.customer_id,
        subject_id=escalation_id,
        link=link,
        channel=REVIEWERS,
    )
    return {"sent": True, "why": "delivered"}


async def _require(pool: asyncpg.Pool, escalation_id: str) -> Escalation:
    escalation = await store.get_escalation(pool, escalation_id=escalation_id)
    if escalation is None:
        raise LookupError(f"escalation {escalation_id} does not exist")
    return escalation


# --------------------------------------------------------------------------- deciding


async def record_decision(pool: asyncpg.Pool, decision: Decision, *, decision_id: str) -> DecisionOutcome:
    """The first decision on a live, pending escalation wins; a repeat of it is a no-op."""
    if decision.request_id is None or decision.reviewer is None:
        raise ValueError("resolve the decision first (decision_targets.resolve_escalation)")
    if decision.decision == "edit" and not (decision.edited_text or "").strip():
        return DecisionOutcome(applied=False, reason="no_text", escalation=None)
    async with db.transaction(pool) as conn:
        current = await store.lock_escalation(conn, escalation_id=decision.request_id)
        if current is None:
            return DecisionOutcome(applied=False, reason="unknown_request", escalation=None)
        if current.status != "pending":
            same = current.decision_id == decision_id
            return DecisionOutcome(
                applied=False, reason="same_decision" if same else "already_decided", escalation=current
            )
        if current.seconds_left <= 0:
            return DecisionOutcome(applied=False, reason="expired", escalation=current)
        status: Literal["approved", "edited", "rejected"] = {
            "approve": "approved",
            "edit": "edited",
            "reject": "rejected",
        }[decision.decision]  # type: ignore[assignment]
        escalation = await store.set_escalation_decision(
            conn,
            escalation_id=current.id,
            status=status,
            reviewer=decision.reviewer,
            edited_text=decision.edited_text if status == "edited" else None,
            decision_id=decision_id,
        )
    return DecisionOutcome(applied=True, reason="recorded", escalation=escalation)


async def audit_ignored(
    pool: asyncpg.Pool,
    *,
    key: str,
    request_id: str | None,
    why: str,
    escalation: Escalation | None,
    run_id: str | None = None,
    customer_id: str | None = None,
    **detail: Any,
) -> None:
    """A decision that changed nothing, in the same `decision_ignored` vocabulary as refunds."""
    await db.record_audit(
        pool,
        action=db.AuditAction.DECISION_IGNORED,
        run_id=escalation.run_id if escalation else run_id,
        customer_id=escalation.customer_id if escalation else customer_id,
        detail={
            "kind": "escalation",
            "request_id": request_id,
            "why": why,
            "current_status": escalation.status if escalation else None,
            **detail,
        },
        idempotency_key=f"decision_ignored:{key}",
    )


Announce = Callable[[dict[str, Any]], Awaitable[None]]


async def submit_decision(
    pool: asyncpg.Pool, decision: Decision, *, announce: Announce, via: str
) -> tuple[DecisionOutcome, bool]:
    """A decision from a door (desk, CLI): record it, then announce it to the waiting run.
    A recorded decision whose announcement fails still settles: the run re-reads Postgres."""
    decision_id = f"decision-{uuid.uuid4().hex}"
    decision = decision.model_copy(update={"decision_id": decision_id})
    outcome = await record_decision(pool, decision, decision_id=decision_id)
    if not outcome.applied:
        await audit_ignored(
            pool,
            key=decision_id,
            request_id=decision.request_id,
            why=outcome.reason,
            escalation=outcome.escalation,
            decision=decision.decision,
            reviewer=decision.reviewer,
            via=via,
        )
        return outcome, False
    try:
        await announce(decision.model_dump())
    except Exception:
        logger.exception("escalation decision %s recorded but not announced", decision_id)
        return outcome, False
    return outcome, True


def parse_decision(data: Any) -> Decision | str:
    """An event's data as a decision, or one line saying what is wrong with it."""
    if not isinstance(data, dict):
        return "malformed decision: data: must be a JSON object"
    try:
        return Decision.model_validate(dict(data))
    except ValidationError as error:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}" for e in error.errors()]
        return f"malformed decision: {'; '.join(parts)}"


# --------------------------------------------------------------------------- settling

_OUTCOME_ACTIONS = {
    "approved": db.AuditAction.ESCALATION_APPROVED,
    "edited": db.AuditAction.ESCALATION_EDITED,
    "rejected": db.AuditAction.ESCALATION_REJECTED,
    "timed_out": db.AuditAction.ESCALATION_POSTED_VIA_TIMEOUT,
}


def text_to_post(escalation: Escalation) -> str | None:
    """What the senior channel gets for a decided escalation; None for a rejection."""
    if escalation.status == "approved":
        return escalation.draft
    if escalation.status == "edited":
        return escalation.edited_text or escalation.draft
    if escalation.status == "timed_out":
        return f"{NO_REVIEW_HEADER}\n\n{escalation.draft}"
    return None


async def settle(pool: asyncpg.Pool, settings: Settings, *, escalation_id: str, time_is_up: bool) -> Settled:
    """Resolve an escalation as Postgres has it (a pending one times out when `time_is_up`),
    post what its branch posts at most once, and write its one outcome row."""
    escalation = await _require(pool, escalation_id)
    if escalation.status == "pending":
        if not time_is_up:
            return Settled(escalation_id=escalation_id, status="pending", posted=False, reviewer=None)
        escalation = await store.time_out_escalation(pool, escalation_id=escalation_id) or await _require(
            pool, escalation_id
        )
    text = text_to_post(escalation)
    url = settings.senior_support_webhook_url.get_secret_value() if settings.senior_support_webhook_url else None
    posted = (
        await post_once(pool, url, escalation_id=escalation_id, channel=SENIOR, text=text)
        if text is not None
        else False
    )
    await db.record_audit(
        pool,
        action=_OUTCOME_ACTIONS[escalation.status],
        run_id=escalation.run_id,
        customer_id=escalation.customer_id,
        detail={
            "request_id": escalation.id,
            "reviewer": escalation.reviewer or "timeout",
            "decision_id": escalation.decision_id,
            "posted": posted,
            "posted_text": text if posted else None,
            "why_not_posted": None if posted or text is None else "SENIOR_SUPPORT_WEBHOOK_URL is not set",
        },
        idempotency_key=f"escalation_outcome:{escalation.id}",
    )
    return Settled(escalation_id=escalation_id, status=escalation.status, posted=posted, reviewer=escalation.reviewer)


# --------------------------------------------------------------------------- the durable wait's pieces


class WaitingState(BaseModel):
    """An escalation as Postgres has it, read before each slice of the wait."""

    status: str
    seconds_left: float


async def waiting_state(pool: asyncpg.Pool, escalation_id: str) -> WaitingState:
    escalation = await store.get_escalation(pool, escalation_id=escalation_id)
    if escalation is None:
        raise LookupError(f"escalation {escalation_id} vanished")
    return WaitingState(status=escalation.status, seconds_left=escalation.seconds_left)


class EventRecorded(BaseModel):
    applied: bool
    reason: str


async def record_event(
    pool: asyncpg.Pool,
    data: Any,
    *,
    event_id: str,
    run_id: str,
    expected_id: str | None = None,
    require_reviewer: bool = False,
) -> EventRecorded:
    """An `escalation/decision.made` event into Postgres: the first decision wins; anything
    that changes nothing (malformed, unknown, already decided, expired, a customer with no
    or several pending escalations, no reviewer where one is required) is audited once."""
    decision = parse_decision(data)
    key = f"escalation:{event_id}"
    if isinstance(decision, str):
        request_id = expected_id or (data.get("request_id") if isinstance(data, dict) else None)
        escalation = await store.get_escalation(pool, escalation_id=str(request_id)) if request_id else None
        await audit_ignored(pool, key=key, request_id=request_id, why=decision, escalation=escalation, run_id=run_id)
        return EventRecorded(applied=False, reason="malformed")
    decision_id = decision.decision_id or event_id
    resolved = await _resolve(
        pool, decision, decision_id=decision_id, event_id=event_id, require_reviewer=require_reviewer
    )
    if isinstance(resolved, targets.Unresolved):
        await audit_ignored(
            pool,
            key=key,
            request_id=decision.request_id,
            why=resolved.why,
            escalation=None,
            run_id=run_id,
            customer_id=decision.customer_id,
            decision=decision.decision,
        )
        return EventRecorded(applied=False, reason=resolved.reason)
    outcome = await record_decision(pool, resolved, decision_id=decision_id)
    if not outcome.applied and outcome.reason != "same_decision":
        await audit_ignored(
            pool,
            key=key,
            request_id=resolved.request_id,
            why=outcome.reason,
            escalation=outcome.escalation,
            run_id=run_id,
            decision=resolved.decision,
            reviewer=resolved.reviewer,
        )
    return EventRecorded(applied=outcome.applied, reason=outcome.reason)


async def _resolve(
    pool: asyncpg.Pool, decision: Decision, *, decision_id: str, event_id: str, require_reviewer: bool
) -> Decision | targets.Unresolved:
    """The decision with its escalation and reviewer filled in (decision_targets.py)."""
    refusal = targets.reviewer_refusal(decision.reviewer, require_reviewer=require_reviewer)
    if refusal is not None:
        return refusal
    request_id = decision.request_id
    if request_id is None and decision.customer_id is not None:
        found = await store.decidable_escalation_ids(pool, customer_id=decision.customer_id, decision_id=decision_id)
        target = targets.by_customer("escalation", decision.customer_id, found)
        if isinstance(target, targets.Unresolved):
            return target
        request_id = target
    reviewer = decision.reviewer or targets.event_reviewer(event_id)
    return decision.model_copy(update={"request_id": request_id, "reviewer": reviewer})
