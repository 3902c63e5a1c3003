"""Reviewers' decisions on refund requests: record one, withdraw one, submit one from a door.

Engine-free and model-free. Postgres is the judge: the first decision recorded on a live,
pending request wins, wherever it came from (desk, CLI, event, terminal prompt). Four eyes:
a request above REFUND_FOUR_EYES_CENTS needs two distinct reviewers (`refund_approvals`).
The one writers of `decision_recorded`, `decision_ignored` and `refund_withdrawn` live here.
The workflow around a decision (open, settle, pay) is `refunds.py`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

import db
from support_worker.core.fields import MAX_ID, CustomerIdText, StorableText
from support_worker.core.identity import ReviewerName, same_reviewer
from support_worker.store import approvals
from support_worker.store.reviews import TERMINAL_RUN_PREFIX

logger = logging.getLogger("support_worker.refunds")
# The reviewer of a decision that named no one: `event:<event id>` (decision_targets.py).
EVENT_REVIEWER_PREFIX = "event:"


class Decision(BaseModel):
    """A reviewer's decision on one request (the data of `refund/approval.decided`).

    `request_id` names the request (recommended: the desk and the CLI send it); the course's
    shape names only the customer, meaning their one pending request, and may leave out the
    reviewer (decision_targets.py fills both in before anything is recorded)."""

    model_config = ConfigDict(extra="ignore")

    request_id: StorableText | None = Field(default=None, min_length=1, max_length=100)
    customer_id: CustomerIdText | None = None
    approved: StrictBool
    # One identity however spelled (`core.identity`): "Alice " and "alice" are one reviewer.
    # None: the course's decision that names no one, recorded as `event:<id>` (decision_targets.py).
    reviewer: ReviewerName | None = None
    note: StorableText | None = Field(default=None, max_length=2000)
    # Set by whoever records the decision before announcing it (desk, CLI), so every path
    # that sees the same decision recognises it as one.
    decision_id: StorableText | None = Field(default=None, max_length=200)
    # Approve with edits: a lower amount and/or a reply written by the reviewer.
    amount_cents: StrictInt | None = None
    reply: StorableText | None = Field(default=None, max_length=20_000)
    # Set when the customer called the request off (announced like a decision).
    withdrawn: StrictBool = False

    @model_validator(mode="after")
    def _names_a_request(self) -> Decision:
        if self.request_id is None and self.customer_id is None:
            raise ValueError("give request_id (recommended), or customer_id for their one pending request")
        return self


class DecisionOutcome(BaseModel):
    """What recording a decision did. `applied` is False when it changed nothing."""

    applied: bool
    reason: Literal[
        "recorded",
        "same_decision",
        "unknown_request",
        "already_decided",
        "expired",
        "amount_raised",
        "bad_amount",
        "same_reviewer",
        "no_waiting_run",
        "named_reviewer_needed",
    ]
    request: db.RefundRequest | None
    approvers: list[str] = []  # four eyes: who has approved so far, first approver first


async def audit_decision_ignored(
    conn: db.Executor,
    *,
    key: str,
    request_id: str | None,
    why: str,
    request: db.RefundRequest | None = None,
    customer_id: db.CustomerId | None = None,
    run_id: str | None = None,
    **detail: Any,
) -> None:
    """The one writer of `decision_ignored`: a decision or withdrawal that changed nothing."""
    await db.record_audit(
        conn,
        action=db.AuditAction.DECISION_IGNORED,
        run_id=request.run_id if request else run_id,
        customer_id=request.customer_id if request else customer_id,
        detail={
            "request_id": request_id,
            "why": why,
            "current_status": request.status if request else None,
            **detail,
        },
        idempotency_key=f"decision_ignored:{key}",
    )


def _edit_refusal(decision: Decision, current: db.RefundRequest) -> Literal["amount_raised", "bad_amount"] | None:
    """An edit may only lower the amount, to a positive whole number of cents."""
    amount = decision.amount_cents
    if amount is None:
        return None
    if amount <= 0 or amount > MAX_ID:
        return "bad_amount"
    return "amount_raised" if amount > current.amount_cents else None


def _already(current: db.RefundRequest, decision_id: str, given: list[approvals.Approval]) -> DecisionOutcome:
    approvers = [a.reviewer for a in given]
    if current.decision_id == decision_id or any(a.decision_id == decision_id for a in given):
        return DecisionOutcome(applied=False, reason="same_decision", request=current, approvers=approvers)
    reason: Literal["expired", "already_decided"] = "expired" if current.status == "expired" else "already_decided"
    return DecisionOutcome(applied=False, reason=reason, request=current, approvers=approvers)


async def record_decision(
    pool: asyncpg.Pool, decision: Decision, *, decision_id: str, terminal: bool = False
) -> DecisionOutcome:
    """Record a reviewer's decision: the first decision on a live, pending request wins.

    Four eyes: a request that needs two approvals stays pending after the first, and only a
    second approval from a different reviewer approves it; a rejection by anyone ends it.
    `decision_id` makes a redelivered decision a no-op instead of a conflict. Unknown,
    already-decided and expired requests change nothing (the caller audits why, with
    `audit_decision_ignored`, because only it knows where the decision came from). A request
    the terminal runner opened is decided at its prompt only (`terminal=True`): no run waits
    for anyone else's decision, so one from a door would be recorded and never paid.
    """
    if decision.request_id is None or decision.reviewer is None:
        raise ValueError("resolve the decision first (decision_targets.resolve_refund)")
    async with db.transaction(pool) as conn:
        current = await db.lock_refund_request(conn, request_id=decision.request_id)
        if current is None:
            return DecisionOutcome(applied=False, reason="unknown_request", request=None)
        given = await approvals.list_approvals(conn, request_id=current.id)
        if current.status != "pending":
            return _already(current, decision_id, given)
        if current.seconds_left <= 0:
            return DecisionOutcome(applied=False, reason="expired", request=current)
        if current.run_id.startswith(TERMINAL_RUN_PREFIX) and not terminal:
            return DecisionOutcome(applied=False, reason="no_waiting_run", request=current)
        refusal = _edit_refusal(decision, current)
        if refusal is not None:
            return DecisionOutcome(applied=False, reason=refusal, request=current)
        if decision.approved and current.approvals_needed > 1:
            return await _record_approval(conn, current, decision, decision_id, given)
        request = await db.set_refund_decision(
            conn,
            request_id=current.id,
            status="approved" if decision.approved else "rejected",
            reviewer=decision.reviewer,
            note=decision.note,
            decision_id=decision_id,
            approved_amount_cents=_lowered(current, decision.amount_cents if decision.approved else None),
            edited_reply=decision.reply or None,
        )
        extra = {"approvals": f"{len(given)} of {current.approvals_needed}"} if current.approvals_needed > 1 else {}
        await _audit_decision(conn, request, decision, decision_id, key=f"decision_recorded:{request.id}", **extra)
        return DecisionOutcome(applied=True, reason="recorded", request=request, approvers=[a.reviewer for a in given])


def _lowered(current: db.RefundRequest, amount_cents: int | None) -> int | None:
    """The approved amount to store: None unless an edit lowered the requested one."""
    return amount_cents if amount_cents is not None and amount_cents != current.amount_cents else None


async def _record_approval(
    conn: db.Executor,
    current: db.RefundRequest,
    decision: Decision,
    decision_id: str,
    given: list[approvals.Approval],
) -> DecisionOutcome:
    """One approval of a request that needs several, from distinct reviewers.

    The same reviewer approving again counts once (the table's primary key says so too).
    When the last approval needed arrives the request is approved. Edits combine as the
    safer reading of both: the lowest amount any approver named is paid, and the reply of the
    latest approver who wrote one is sent (later approvers see earlier edits on the desk).
    """
    if decision.reviewer is None or decision.reviewer.startswith(EVENT_REVIEWER_PREFIX):
        # Four eyes needs two named, different people; a decision that names no one is neither.
        return DecisionOutcome(
            applied=False, reason="named_reviewer_needed", request=current, approvers=[a.reviewer for a in given]
        )
    # Compared as identities, so approvals stored before names were normalized count too.
    mine = next((a for a in given if same_reviewer(a.reviewer, decision.reviewer)), None)
    if mine is not None:
        reason: Literal["same_decision", "same_reviewer"] = (
            "same_decision" if mine.decision_id == decision_id else "same_reviewer"
        )
        return DecisionOutcome(applied=False, reason=reason, request=current, approvers=[a.reviewer for a in given])
    approval = approvals.Approval(
        request_id=current.id,
        reviewer=decision.reviewer,
        decision_id=decision_id,
        amount_cents=decision.amount_cents,
        reply=decision.reply or None,
        note=decision.note,
    )
    await approvals.add_approval(conn, **approval.model_dump())
    given = [*given, approval]
    approvers, count = [a.reviewer for a in given], len(given)
    request = current
    if count >= current.approvals_needed:
        request = await db.set_refund_decision(
            conn,
            request_id=current.id,
            status="approved",
            reviewer=decision.reviewer,
            note=decision.note,
            decision_id=decision_id,
            approved_amount_cents=_lowered(current, min(a.amount_cents or current.amount_cents for a in given)),
            edited_reply=next((a.reply for a in reversed(given) if a.reply), None),
        )
    await _audit_decision(
        conn,
        request,
        decision,
        decision_id,
        key=f"decision_recorded:{current.id}:approval-{count}",
        approvals=f"{count} of {current.approvals_needed}",
        approvers=approvers,
    )
    return DecisionOutcome(applied=True, reason="recorded", request=request, approvers=approvers)


async def _audit_decision(
    conn: db.Executor, request: db.RefundRequest, decision: Decision, decision_id: str, *, key: str, **extra: Any
) -> None:
    """The one writer of `decision_recorded`: who decided what, and what they edited."""
    edits: dict[str, Any] = {}
    if decision.approved and decision.amount_cents is not None and decision.amount_cents != request.amount_cents:
        edits["amount_cents"] = {"requested": request.amount_cents, "approved": decision.amount_cents}
    if decision.reply:
        edits["reply"] = "replaced by the reviewer"
    await db.record_audit(
        conn,
        action=db.AuditAction.DECISION_RECORDED,
        run_id=request.run_id,
        customer_id=request.customer_id,
        detail={
            "request_id": request.id,
            "approved": decision.approved,
            "reviewer": decision.reviewer,
            "note": decision.note,
            "decision_id": decision_id,
            "edits": edits,
            **extra,
        },
        idempotency_key=key,
    )


async def withdraw(pool: asyncpg.Pool, *, request_id: str, withdrawal_id: str, why: str) -> DecisionOutcome:
    """The customer calls a pending request off; decided or expired requests stay as they are."""
    async with db.transaction(pool) as conn:
        current = await db.lock_refund_request(conn, request_id=request_id)
        if current is None:
            return DecisionOutcome(applied=False, reason="unknown_request", request=None)
        if current.status != "pending":
            same = current.status == "withdrawn" and current.decision_id == withdrawal_id
            reason: Literal["same_decision", "already_decided"] = "same_decision" if same else "already_decided"
            return DecisionOutcome(applied=False, reason=reason, request=current)
        request = await db.set_refund_decision(
            conn,
            request_id=request_id,
            status="withdrawn",
            reviewer="customer",
            note=why,
            decision_id=withdrawal_id,
            approved_amount_cents=None,
            edited_reply=None,
        )
        await db.record_audit(
            conn,
            action=db.AuditAction.REFUND_WITHDRAWN,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={"request_id": request_id, "order_id": request.order_id, "why": why},
            idempotency_key=f"refund_withdrawn:{request_id}",
        )
        return DecisionOutcome(applied=True, reason="recorded", request=request)


# --------------------------------------------------------------------------- decide from a door

Announce = Callable[[dict[str, Any]], Awaitable[None]]


async def submit_decision(
    pool: asyncpg.Pool, decision: Decision, *, announce: Announce, via: str
) -> tuple[DecisionOutcome, bool]:
    """A decision from a door (the desk, the CLI): record it, then announce it to the
    waiting run. Returns the outcome and whether the announcement went out. A decision that
    changes nothing is audited and not announced; a recorded decision whose announcement
    fails still settles, because the waiting run re-reads Postgres between slices."""
    decision_id = f"decision-{uuid.uuid4().hex}"
    decision = decision.model_copy(update={"decision_id": decision_id})
    outcome = await record_decision(pool, decision, decision_id=decision_id)
    if not outcome.applied and outcome.request is None:
        return outcome, False  # no such request: nothing to attach a row to (no run, no customer)
    if not outcome.applied:
        await audit_decision_ignored(
            pool,
            key=decision_id,
            request_id=decision.request_id,
            why=outcome.reason,
            request=outcome.request,
            approved=decision.approved,
            reviewer=decision.reviewer,
            via=via,
            amount_cents=decision.amount_cents,
        )
        return outcome, False
    try:
        await announce(decision.model_dump())
    except Exception as error:
        # One line, no traceback: the decision is safe in Postgres and the run re-reads it.
        logger.warning("decision %s recorded but not announced (%s); the waiting run will read it", decision_id, error)
        return outcome, False
    return outcome, True


class Withdrawal(BaseModel):
    """What a customer's withdrawal did: withdrawn (now or before), or why not."""

    withdrawn: bool
    request_id: str | None
    reason: str


async def withdraw_as_asked(
    pool: asyncpg.Pool,
    *,
    request_id: str | None,
    customer_id: db.CustomerId | None,
    order_id: int | None,
    reason: str | None,
    withdrawal_id: str,
    run_id: str,
    event_id: str | None,
    asked: dict[str, Any],
) -> Withdrawal:
    """A withdrawal naming the request, or the customer and order of a pending one: withdraw
    it, or audit once why nothing changed (unknown, already decided)."""
    if request_id is None and customer_id is not None and order_id is not None:
        pending = await db.find_pending_request(pool, customer_id=customer_id, order_id=order_id)
        request_id = pending.id if pending else None
    why = reason or "withdrawn by the customer"
    outcome = (
        await withdraw(pool, request_id=request_id, withdrawal_id=withdrawal_id, why=why)
        if request_id is not None
        else DecisionOutcome(applied=False, reason="unknown_request", request=None)
    )
    withdrawn = outcome.applied or outcome.reason == "same_decision"
    if not withdrawn:
        await audit_decision_ignored(
            pool,
            key=event_id or run_id,
            request_id=request_id,
            why=outcome.reason,
            request=outcome.request,
            customer_id=customer_id,
            run_id=run_id,
            event_id=event_id,
            withdrawal=asked,
        )
    return Withdrawal(withdrawn=withdrawn, request_id=request_id, reason=outcome.reason)
