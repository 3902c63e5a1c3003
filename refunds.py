"""The refund workflow, written once: open a request, record a decision, settle it, pay it.

Engine-free and model-free. The terminal runner (`conversation.answer_email`) and the durable
layer (`inngest_app.py`) both call these functions and neither re-implements any of them:
the durable layer only wraps each call in a step. The rules:

- `refund_policy` is the one answer to "may this be paid, and must a human ask first?".
  It is consulted when a request is opened and again, under the order's lock, when paying.
- Postgres is the judge of decisions: the first decision recorded on a live, pending request
  wins, wherever it came from (desk, CLI, event, terminal prompt).
- Each audit outcome has one writer here (`_audit_blocked`, `audit_decision_ignored`, ...),
  so the same outcome always reads the same in the trail.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

import db
from fields import MAX_ID, StorableText
from store import approvals
from store.reviews import TERMINAL_RUN_PREFIX

logger = logging.getLogger("support_worker.refunds")


GateStatus = Literal["approved", "rejected", "expired", "blocked", "withdrawn", "pending"]
BlockedStage = Literal["request", "review", "payment"]


class Decision(BaseModel):
    """A reviewer's decision on one request (the data of `refund/approval.decided`)."""

    model_config = ConfigDict(extra="ignore")

    request_id: StorableText = Field(min_length=1, max_length=100)
    approved: StrictBool
    reviewer: StorableText = Field(min_length=1, max_length=200)
    note: StorableText | None = Field(default=None, max_length=2000)
    # Set by whoever records the decision before announcing it (desk, CLI), so every path
    # that sees the same decision recognises it as one.
    decision_id: StorableText | None = Field(default=None, max_length=200)
    # Approve with edits: a lower amount and/or a reply written by the reviewer.
    amount_cents: StrictInt | None = None
    reply: StorableText | None = Field(default=None, max_length=20_000)
    # Set when the customer called the request off (announced like a decision).
    withdrawn: StrictBool = False


class PolicyVerdict(BaseModel):
    """May this refund be paid, and must a human approve it first? The explanation is
    written for the model, which turns it into the customer's reply."""

    allowed: bool
    needs_human: bool
    explanation: str
    order_id: int | None
    amount_cents: int
    refundable_cents: int = 0
    approvals_needed: int = 1  # distinct reviewers who must approve: 2 above the four-eyes limit


class GateOutcome(BaseModel):
    """What became of one paused `issue_refund` call; what the reply guard and audit need."""

    call_id: str
    status: GateStatus
    request_id: str | None
    message_for_model: str = ""
    edited_reply: str | None = None  # a reviewer's replacement for the agent's reply


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
    ]
    request: db.RefundRequest | None
    approvers: list[str] = []  # four eyes: who has approved so far, first approver first


def _refused(explanation: str, *, order_id: int | None, amount_cents: int, refundable: int = 0) -> PolicyVerdict:
    return PolicyVerdict(
        allowed=False,
        needs_human=False,
        explanation=explanation,
        order_id=order_id,
        amount_cents=amount_cents,
        refundable_cents=refundable,
    )


# The default of REFUND_FOUR_EYES_CENTS: refunds above $500.00 need two different reviewers.
DEFAULT_FOUR_EYES_CENTS = 50_000


def refund_policy(
    order: db.Order | None,
    *,
    customer_id: db.CustomerId,
    order_id: Any,
    amount_cents: Any,
    four_eyes_cents: int = DEFAULT_FOUR_EYES_CENTS,
) -> PolicyVerdict:
    """The refund policy, in code: an order of this customer's, a positive whole number of
    cents, no more than what was paid minus what was already refunded. Every refund the
    policy allows is asked of a human first, and of two different humans when it is above
    `four_eyes_cents` (strictly greater: exactly the limit needs one)."""
    if isinstance(order_id, bool) or not isinstance(order_id, int) or not 0 < order_id <= MAX_ID:
        return _refused("Refund refused: the order id must be a positive whole number.", order_id=None, amount_cents=0)
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or not 0 < amount_cents <= MAX_ID:
        return _refused(
            "Refund refused: the amount must be a positive whole number of cents.", order_id=order_id, amount_cents=0
        )
    if order is None or order.customer_id != customer_id:
        return _refused(
            f"Refund refused: order {order_id} does not belong to this customer.",
            order_id=order_id,
            amount_cents=amount_cents,
        )
    if order.refundable_cents <= 0:
        return _refused(
            f"Refund refused: order {order_id} has already been fully refunded.",
            order_id=order_id,
            amount_cents=amount_cents,
        )
    if amount_cents > order.refundable_cents:
        return _refused(
            f"Refund refused: {amount_cents} cents is more than the {order.refundable_cents}"
            f" cents still refundable on order {order_id}.",
            order_id=order_id,
            amount_cents=amount_cents,
            refundable=order.refundable_cents,
        )
    four_eyes = amount_cents > four_eyes_cents
    return PolicyVerdict(
        allowed=True,
        needs_human=True,
        explanation=(
            "Refund is within policy; two different reviewers must approve it."
            if four_eyes
            else "Refund is within policy; a reviewer decides."
        ),
        order_id=order_id,
        amount_cents=amount_cents,
        refundable_cents=order.refundable_cents,
        approvals_needed=2 if four_eyes else 1,
    )


async def check_policy(
    conn: db.Executor,
    *,
    customer_id: db.CustomerId,
    order_id: Any,
    amount_cents: Any,
    four_eyes_cents: int = DEFAULT_FOUR_EYES_CENTS,
) -> PolicyVerdict:
    """`refund_policy` against the order as the database has it now."""
    in_range = isinstance(order_id, int) and not isinstance(order_id, bool) and 0 < order_id <= MAX_ID
    order = await db.get_order(conn, order_id=order_id) if in_range else None
    return refund_policy(
        order, customer_id=customer_id, order_id=order_id, amount_cents=amount_cents, four_eyes_cents=four_eyes_cents
    )


# --------------------------------------------------------------------------- audit writers


async def _audit_blocked(
    conn: db.Executor,
    *,
    stage: BlockedStage,
    key: str,
    run_id: str,
    customer_id: db.CustomerId,
    why: str,
    **detail: Any,
) -> None:
    """The one writer of `refund_blocked`. `stage` says where it stopped: at the request
    (the policy refused), at review (rejected or expired) or at payment (re-check under lock)."""
    await db.record_audit(
        conn,
        action=db.AuditAction.REFUND_BLOCKED,
        run_id=run_id,
        customer_id=customer_id,
        detail={"why": why, "stage": stage, **detail},
        idempotency_key=f"refund_blocked:{key}",
    )


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


# --------------------------------------------------------------------------- open


def refund_arguments(raw: str | None) -> tuple[dict[str, Any], str | None]:
    """The model's `issue_refund` arguments, or why they cannot be read."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}, "the refund call's arguments are not valid JSON"
    if not isinstance(data, dict):
        return {}, "the refund call's arguments are not a JSON object"
    return data, None


async def open_request(
    pool: asyncpg.Pool,
    *,
    run_id: str,
    customer_id: db.CustomerId,
    customer_message: str,
    call_id: str,
    raw_arguments: str | None,
    ttl_seconds: int,
    four_eyes_cents: int = DEFAULT_FOUR_EYES_CENTS,
) -> GateOutcome:
    """Turn a paused `issue_refund` call into a pending request, once the policy agrees.

    The model's arguments name the order and amount; the customer id and the request id are
    the server's. A call the policy refuses opens nothing and is audited as blocked at the
    request stage. A redelivered call finds the request the first delivery opened. How many
    reviewers must approve is fixed here, from `four_eyes_cents` (REFUND_FOUR_EYES_CENTS).
    """
    arguments, unreadable = refund_arguments(raw_arguments)
    order_id, amount = arguments.get("order_id"), arguments.get("amount_cents")
    verdict = await check_policy(
        pool, customer_id=customer_id, order_id=order_id, amount_cents=amount, four_eyes_cents=four_eyes_cents
    )
    if unreadable or not verdict.allowed:
        why = f"Refund refused: {unreadable}." if unreadable else verdict.explanation
        await _audit_blocked(
            pool,
            stage="request",
            key=f"{run_id}:{call_id}",
            run_id=run_id,
            customer_id=customer_id,
            why=why,
            order_id=verdict.order_id,
            amount_cents=amount if isinstance(amount, int) and abs(amount) <= MAX_ID else None,
            tool_call_id=call_id,
            raw_arguments=(raw_arguments or "")[:500] if unreadable or verdict.order_id is None else None,
        )
        return GateOutcome(call_id=call_id, status="blocked", request_id=None, message_for_model=why)
    return await _insert_request(
        pool,
        verdict,
        run_id=run_id,
        customer_id=customer_id,
        customer_message=customer_message,
        call_id=call_id,
        reason=str(arguments.get("reason", ""))[:500],
        ttl_seconds=ttl_seconds,
    )


async def _insert_request(
    pool: asyncpg.Pool,
    verdict: PolicyVerdict,
    *,
    run_id: str,
    customer_id: db.CustomerId,
    customer_message: str,
    call_id: str,
    reason: str,
    ttl_seconds: int,
) -> GateOutcome:
    """The request and its `refund_requested` row, together or not at all."""
    async with db.transaction(pool) as conn:
        request, created = await db.insert_refund_request(
            conn,
            customer_id=customer_id,
            order_id=verdict.order_id or 0,
            amount_cents=verdict.amount_cents,
            reason=reason,
            customer_message=customer_message[:4000],
            run_id=run_id,
            tool_call_id=call_id,
            ttl_seconds=ttl_seconds,
            approvals_needed=verdict.approvals_needed,
        )
        if created:
            await db.record_audit(
                conn,
                action=db.AuditAction.REFUND_REQUESTED,
                run_id=run_id,
                customer_id=customer_id,
                detail={
                    "request_id": request.id,
                    "order_id": request.order_id,
                    "amount_cents": request.amount_cents,
                    "reason": request.reason,
                    "expires_at": request.expires_at,
                    "approvals_needed": request.approvals_needed,
                },
                idempotency_key=f"refund_requested:{request.id}",
            )
    return GateOutcome(call_id=call_id, status="pending", request_id=request.id)


# --------------------------------------------------------------------------- decide


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
    mine = next((a for a in given if a.reviewer == decision.reviewer), None)
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


# --------------------------------------------------------------------------- settle


async def settle(
    pool: asyncpg.Pool,
    *,
    request_id: str,
    decision: Decision | None,
    decision_id: str | None,
    time_is_up: bool = False,
    terminal: bool = False,
) -> GateOutcome:
    """Resolve a request from a decision that reached the run or one recorded earlier; with
    neither and `time_is_up`, expire it. The first decision recorded wins."""
    if decision is not None and not decision.withdrawn:  # a withdrawal is recorded by whoever announced it
        await record_decision(pool, decision, decision_id=decision_id or f"inline:{request_id}", terminal=terminal)
    request = await db.get_refund_request(pool, request_id=request_id)
    if request is None:
        raise LookupError(f"refund request {request_id} vanished")
    if request.status == "pending" and time_is_up:
        request = await db.expire_refund_request(pool, request_id=request_id) or request
    return await outcome_of(pool, request)


async def end_terminal_request(
    pool: asyncpg.Pool, *, request_id: str, why: str = "the terminal session ended before a decision"
) -> db.RefundRequest | None:
    """Close a request whose terminal runner is going away (Ctrl-C, end of input, a closed
    terminal): nothing will ever settle it, so it must not stay pending. Expired, with one
    `refund_blocked` row saying why; None when it was no longer pending."""
    async with db.transaction(pool) as conn:
        request = await db.expire_refund_request(conn, request_id=request_id)
        if request is not None:
            await _audit_blocked(
                conn,
                stage="review",
                key=f"review:{request.id}",
                run_id=request.run_id,
                customer_id=request.customer_id,
                why=why,
                request_id=request.id,
                order_id=request.order_id,
                amount_cents=request.amount_cents,
                terminal_session_ended=True,
            )
    return request


async def outcome_of(pool: asyncpg.Pool, request: db.RefundRequest) -> GateOutcome:
    """The gate's answer for a request as it stands, auditing a refusal or expiry once."""
    base = {"call_id": request.tool_call_id, "request_id": request.id}
    if request.status == "pending":
        return GateOutcome(**base, status="pending")
    if request.status == "approved":
        return GateOutcome(
            **base, status="approved", message_for_model="Approved by a reviewer.", edited_reply=request.edited_reply
        )
    if request.status == "withdrawn":
        message = "Refund withdrawn: the customer withdrew this request, so no refund was issued."
        return GateOutcome(**base, status="withdrawn", message_for_model=message)
    rejected = request.status == "rejected"
    await _audit_blocked(
        pool,
        stage="review",
        key=f"review:{request.id}",
        run_id=request.run_id,
        customer_id=request.customer_id,
        why="rejected by reviewer" if rejected else "approval expired",
        request_id=request.id,
        order_id=request.order_id,
        amount_cents=request.amount_cents,
        **({"reviewer": request.reviewer, "note": request.note} if rejected else {"expired": True}),
    )
    if rejected:
        note = f" Reviewer's note: {request.note}" if request.note else ""
        message = f"Refund declined by a reviewer; no refund was issued.{note}"
        return GateOutcome(**base, status="rejected", message_for_model=message, edited_reply=request.edited_reply)
    message = "Refund not issued: the approval request expired before a reviewer decided."
    return GateOutcome(**base, status="expired", message_for_model=message)


# --------------------------------------------------------------------------- pay


class Payment(BaseModel):
    """The result of paying for one approved call: issued now, issued before, or refused."""

    issued: bool
    refund: db.Refund | None
    explanation: str


async def pay_for_call(pool: asyncpg.Pool, *, run_id: str, customer_id: db.CustomerId, tool_call_id: str) -> Payment:
    """Pay the request a reviewer approved for this tool call, exactly once.

    Server-owned values win: the approved request fixes the order and the amount, whatever
    the model sends. One transaction locks the request (so two copies of this call queue),
    looks for its refund, locks the order, re-checks the policy and inserts the refund under
    the request's unique key. A second copy, concurrent or later, answers "already issued".
    """
    async with db.transaction(pool) as conn:
        request = await db.lock_refund_request_for_call(conn, run_id=run_id, tool_call_id=tool_call_id)
        if request is None or request.status != "approved":
            status = request.status if request else "missing"
            why = f"Refund refused: it has not been approved by a reviewer (the request is {status})."
            await _audit_blocked(
                conn,
                stage="payment",
                key=f"payment:{run_id}:{tool_call_id}",
                run_id=run_id,
                customer_id=customer_id,
                why=why,
                request_id=request.id if request else None,
                tool_call_id=tool_call_id,
            )
            return Payment(issued=False, refund=None, explanation=why)
        existing = await db.refund_for_request(conn, request_id=request.id)
        if existing is not None:
            return Payment(issued=True, refund=existing, explanation="Refund already issued.")
        approvers = [a.reviewer for a in await approvals.list_approvals(conn, request_id=request.id)]
        if request.approvals_needed > 1 and len(approvers) < request.approvals_needed:
            # Defence in depth: `record_decision` never approves such a request, but the
            # payment is where money moves, so it checks the approvals itself.
            why = f"Refund refused: it needs {request.approvals_needed} different reviewers' approvals."
            await _block_payment(conn, request, why)
            return Payment(issued=False, refund=None, explanation=why)
        await db.lock_order(conn, order_id=request.order_id)
        verdict = await check_policy(
            conn, customer_id=request.customer_id, order_id=request.order_id, amount_cents=request.payable_cents
        )
        if not verdict.allowed:
            await _block_payment(conn, request, verdict.explanation)
            return Payment(issued=False, refund=None, explanation=verdict.explanation)
        refund = await db.insert_refund(conn, request=request)
        await db.record_audit(
            conn,
            action=db.AuditAction.REFUND_ISSUED,
            run_id=request.run_id,
            customer_id=request.customer_id,
            detail={
                "request_id": request.id,
                "refund_id": refund.id,
                "order_id": refund.order_id,
                "amount_cents": refund.amount_cents,
                "requested_cents": request.amount_cents,
                "reviewer": request.reviewer,
                **({"approvers": approvers} if request.approvals_needed > 1 else {}),
            },
            idempotency_key=f"refund_issued:{request.id}",
        )
        return Payment(issued=True, refund=refund, explanation="Refund issued.")


async def _block_payment(conn: db.Executor, request: db.RefundRequest, why: str) -> None:
    await _audit_blocked(
        conn,
        stage="payment",
        key=f"payment:{request.id}",
        run_id=request.run_id,
        customer_id=request.customer_id,
        why=why,
        request_id=request.id,
        order_id=request.order_id,
        amount_cents=request.payable_cents,
    )


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
