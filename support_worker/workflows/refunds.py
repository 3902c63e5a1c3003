"""The refund workflow, written once: open a request, settle it, pay it.

Engine-free and model-free. The terminal runner (`conversation.answer_email`) and the durable
layer (`inngest_app.py`) both call these functions and neither re-implements any of them:
the durable layer only wraps each call in a step. The rules:

- `policy.refund_policy` is the one answer to "may this be paid, and must a human ask first?".
  It is consulted when a request is opened and again, under the order's lock, when paying.
- Postgres is the judge of decisions (`decisions.record_decision`): the first decision
  recorded on a live, pending request wins, wherever it came from.
- Each audit outcome has one writer (`_audit_blocked` here, `decisions.audit_decision_ignored`,
  ...), so the same outcome always reads the same in the trail.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel

import db
from support_worker.core.fields import MAX_ID
from support_worker.store import approvals, refund_totals
from support_worker.workflows.decisions import Decision, record_decision
from support_worker.workflows.policy import (
    DEFAULT_FOUR_EYES_CENTS,
    DEFAULT_FOUR_EYES_WINDOW_DAYS,
    PolicyVerdict,
    approvals_needed,
    check_policy,
)

GateStatus = Literal["approved", "rejected", "expired", "blocked", "withdrawn", "pending"]
BlockedStage = Literal["request", "review", "payment"]


class GateOutcome(BaseModel):
    """What became of one paused `issue_refund` call; what the reply guard and audit need."""

    call_id: str
    status: GateStatus
    request_id: str | None
    message_for_model: str = ""
    edited_reply: str | None = None  # a reviewer's replacement for the agent's reply


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


async def _audit_request_blocked(
    conn: db.Executor, request: db.RefundRequest, *, stage: BlockedStage, why: str, **detail: Any
) -> None:
    """`_audit_blocked` for a request that exists: keyed by its stage and id, naming its order
    and (unless `detail` says otherwise) its requested amount."""
    await _audit_blocked(
        conn,
        stage=stage,
        key=f"{stage}:{request.id}",
        run_id=request.run_id,
        customer_id=request.customer_id,
        why=why,
        **({"request_id": request.id, "order_id": request.order_id, "amount_cents": request.amount_cents} | detail),
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
    four_eyes_window_days: int = DEFAULT_FOUR_EYES_WINDOW_DAYS,
) -> GateOutcome:
    """Turn a paused `issue_refund` call into a pending request, once the policy agrees.

    The model's arguments name the order and amount; the customer id and the request id are
    the server's. A call the policy refuses opens nothing and is audited as blocked at the
    request stage. A redelivered call finds the request the first delivery opened. How many
    reviewers must approve is fixed here, from `four_eyes_cents` (REFUND_FOUR_EYES_CENTS) on
    totals: the order's and the customer's (over `four_eyes_window_days`), this request
    included (`policy.approvals_needed`).
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
        four_eyes=(four_eyes_cents, four_eyes_window_days),
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
    four_eyes: tuple[int, int],
) -> GateOutcome:
    """The request and its `refund_requested` row, together or not at all. The customer's and
    the order's rows are locked first, so requests opened at once count each other: of three
    parts opened together, at most the first stays under the four-eyes limit."""
    four_eyes_cents, window_days = four_eyes
    order_id = verdict.order_id or 0
    async with db.transaction(pool) as conn:
        await refund_totals.lock_customer(conn, customer_id=customer_id)
        await db.lock_order(conn, order_id=order_id)
        exposure = await refund_totals.refund_exposure(
            conn, customer_id=customer_id, order_id=order_id, window_days=window_days
        )
        needed = max(
            verdict.approvals_needed, approvals_needed(verdict.amount_cents, exposure, four_eyes_cents=four_eyes_cents)
        )
        request, created = await db.insert_refund_request(
            conn,
            customer_id=customer_id,
            order_id=order_id,
            amount_cents=verdict.amount_cents,
            reason=reason,
            customer_message=customer_message[:4000],
            run_id=run_id,
            tool_call_id=call_id,
            ttl_seconds=ttl_seconds,
            approvals_needed=needed,
        )
        if created:
            await db.record_audit(
                conn,
                action=db.AuditAction.REFUND_REQUESTED,
                run_id=run_id,
                customer_id=customer_id,
                detail=_requested_detail(request, exposure, four_eyes),
                idempotency_key=f"refund_requested:{request.id}",
            )
    return GateOutcome(call_id=call_id, status="pending", request_id=request.id)


def _requested_detail(
    request: db.RefundRequest, exposure: refund_totals.Exposure, four_eyes: tuple[int, int]
) -> dict[str, Any]:
    """The `refund_requested` row's detail, with what four eyes counted: the totals and the rule."""
    four_eyes_cents, window_days = four_eyes
    return {
        "request_id": request.id,
        "order_id": request.order_id,
        "amount_cents": request.amount_cents,
        "reason": request.reason,
        "expires_at": request.expires_at,
        "approvals_needed": request.approvals_needed,
        "four_eyes": {
            "order_total_cents": exposure.order_cents + request.amount_cents,
            "customer_total_cents": exposure.customer_cents + request.amount_cents,
            "window_days": window_days,
            "limit_cents": four_eyes_cents,
        },
    }


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
    request = await _reread(pool, request_id)
    if request.status == "pending" and time_is_up:
        # None: another copy of this step (a duplicate delivery) closed it since the read above;
        # answer with what it is now, never with the stale "pending".
        request = await db.expire_refund_request(pool, request_id=request_id) or await _reread(pool, request_id)
    return await outcome_of(pool, request)


async def _reread(pool: asyncpg.Pool, request_id: str) -> db.RefundRequest:
    request = await db.get_refund_request(pool, request_id=request_id)
    if request is None:
        raise LookupError(f"refund request {request_id} vanished")
    return request


async def end_terminal_request(
    pool: asyncpg.Pool, *, request_id: str, why: str = "the terminal session ended before a decision"
) -> db.RefundRequest | None:
    """Close a request whose terminal runner is going away (Ctrl-C, end of input, a closed
    terminal): nothing will ever settle it, so it must not stay pending. Expired, with one
    `refund_blocked` row saying why; None when it was no longer pending."""
    async with db.transaction(pool) as conn:
        request = await db.expire_refund_request(conn, request_id=request_id)
        if request is not None:
            await _audit_request_blocked(conn, request, stage="review", why=why, terminal_session_ended=True)
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
    await _audit_request_blocked(
        pool,
        request,
        stage="review",
        why="rejected by reviewer" if rejected else "approval expired",
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
    await _audit_request_blocked(conn, request, stage="payment", why=why, amount_cents=request.payable_cents)
