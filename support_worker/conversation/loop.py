"""One email, from the customer's words to the reply: run the agent through its refund pauses,
guard the reply, audit it. Engine-free.

`converse` is the loop both runners share: the terminal runner (`answer_email`, below) and
the durable layer (`inngest_app.handle_customer_email`) hand it the same agent and differ only
in the `gate` they pass: a person at a prompt, or a durable wait for a reviewer. What a gate
does with a paused refund is the refund workflow (`refunds.py`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
import openai
from agents import (
    Agent,
    MaxTurnsExceeded,
    Model,
    ModelBehaviorError,
    ModelRefusalError,
    RunConfig,
    Runner,
    RunState,
    ToolApprovalItem,
)
from pydantic import BaseModel

import db
import worker
from support_worker.conversation import reply_guard
from support_worker.core.settings import Settings
from support_worker.workflows import budget, decisions, escalations, refunds, replies

Gate = Callable[[ToolApprovalItem], Awaitable[refunds.GateOutcome]]
Decider = Callable[[db.RefundRequest], Awaitable[decisions.Decision | None]]


class Conversation(BaseModel):
    """The agent's final draft and what became of each refund it asked for; or, when the agent
    asked for a human or the model could not go on, the escalation to open instead; or, when a
    gate answered "pending" (a durable run's reviewer decides later), a pause."""

    draft: str
    gate: list[refunds.GateOutcome]
    escalation: escalations.EscalationAsk | None = None
    paused: bool = False


def apply_gate_outcome(state: RunState[Any, Any], item: ToolApprovalItem, outcome: refunds.GateOutcome) -> None:
    """Approved calls run the tool (which pays); everything else reaches the model as text."""
    if outcome.status == "approved":
        state.approve(item)
    else:
        state.reject(item, rejection_message=outcome.message_for_model)


# What retrying cannot fix: the same memoized output would fail the same way again.
MODEL_FAULTS = (ModelRefusalError, ModelBehaviorError, MaxTurnsExceeded, budget.OverBudget)


def fault_escalation(error: Exception) -> escalations.EscalationAsk:
    """The hand-off for a model fault, named for the audit trail and the reviewer."""
    text = str(error)[:500]
    if isinstance(error, ModelRefusalError):
        return escalations.ask_from_fault("model_refusal", f"It said: {error.refusal[:500]}")
    if isinstance(error, MaxTurnsExceeded):
        return escalations.ask_from_fault("max_turns", text)
    if isinstance(error, budget.OverBudget):
        return escalations.ask_from_fault("token_budget", text)
    if "not found in agent" in text:
        return escalations.ask_from_fault("unknown_tool", text.split(" not found")[0])
    if text.startswith("Invalid JSON input for tool"):
        return escalations.ask_from_fault("invalid_tool_arguments", text.split(":")[0])
    return escalations.ask_from_fault("model_behavior", text)


async def converse(
    agent: Agent[worker.SupportContext],
    email: str,
    *,
    context: worker.SupportContext,
    run_config: RunConfig,
    gate: Gate,
    max_turns: int,
    token_budget: int | None = None,
) -> Conversation:
    """Run the agent; each paused refund goes through `gate`; resume until it answers. A call
    to `escalate_to_human`, or a fault retrying cannot fix, ends it with an escalation. A gate
    that answers "pending" ends it paused, once every call of that pause went through `gate`."""
    outcomes: list[refunds.GateOutcome] = []
    meter = budget.metering(context.pool, run_id=context.run_id, budget=token_budget) if token_budget else nullcontext()
    with meter:
        try:
            return await _run_through_gates(agent, email, context, run_config, gate, max_turns, outcomes)
        except MODEL_FAULTS as error:
            return Conversation(draft="", gate=outcomes, escalation=fault_escalation(error))


async def _run_through_gates(
    agent: Agent[worker.SupportContext],
    email: str,
    context: worker.SupportContext,
    run_config: RunConfig,
    gate: Gate,
    max_turns: int,
    outcomes: list[refunds.GateOutcome],
) -> Conversation:
    result = await Runner.run(agent, email, context=context, run_config=run_config, max_turns=max_turns)
    while result.interruptions:
        state = result.to_state()
        for item in state.get_interruptions():
            if item.name == escalations.ESCALATE_TOOL:
                ask = escalations.ask_from_tool_call(item.call_id or "unknown-call", item.arguments)
                return Conversation(draft="", gate=outcomes, escalation=ask)
            if refunds.refund_arguments(item.arguments)[1] is not None:
                # As the SDK treats every other tool: unreadable arguments are a model fault.
                raise ModelBehaviorError(f"Invalid JSON input for tool {item.name}")
            outcome = await gate(item)
            outcomes.append(outcome)
            if outcome.status != "pending":
                apply_gate_outcome(state, item, outcome)
        if any(outcome.status == "pending" for outcome in outcomes):
            return Conversation(draft="", gate=outcomes, paused=True)
        result = await Runner.run(agent, state, run_config=run_config, max_turns=max_turns)
    return Conversation(draft=str(result.final_output), gate=outcomes)


# --------------------------------------------------------------------------- reply guard


def claims_refund(reply: str) -> bool:
    """Whether the reply tells the customer money moved (negated claims do not count);
    `reply_guard.check_reply` is the guard itself, which also checks amounts and orders."""
    return any(reply_guard.claims_money_moved(clause) for clause in reply_guard.clauses(reply))


class SentReply(BaseModel):
    reply: str
    replaced_unsafe_reply: bool
    refund_ids: list[int]
    edited_by_reviewer: bool
    guard_problems: list[str] = []  # why the guard replaced the reply (`reply_guard.check_reply`)
    draft_id: str | None = None  # the saved draft (workflows/replies.py)


async def send_reply(
    pool: asyncpg.Pool,
    *,
    run_id: str,
    customer: db.Customer,
    draft: str,
    gate: list[refunds.GateOutcome],
    subject: str | None = None,
    answering: list[str] | None = None,
    thread_key: str | None = None,
) -> SentReply:
    """The last word of every run: a reviewer's edited reply replaces the agent's draft, the
    reply guard (`reply_guard.py`) checks whichever it is against the refunds this run actually
    issued (claims, amounts, orders) and replaces it when it says otherwise, and the reply is
    saved as a draft with its `email_drafted` row (with the guard's reasons when it replaced
    one), once per run: the draft is what would be sent (replies.py sends it when sending is
    configured)."""
    edited = [g.edited_reply for g in gate if g.edited_reply]
    approved = [g.request_id for g in gate if g.status == "approved" and g.request_id]
    issued = await db.refunds_for_requests(pool, request_ids=approved) if approved else []
    paid = [reply_guard.PaidRefund(id=r.id, order_id=r.order_id, amount_cents=r.amount_cents) for r in issued]
    unpaid = await _unpaid(pool, [g for g in gate if g.status != "approved"])
    reply, verdict = reply_guard.guard(
        edited[-1] if edited else draft, paid, customer_name=customer.name, unpaid=unpaid
    )
    sent = SentReply(
        reply=reply,
        replaced_unsafe_reply=not verdict.allowed,
        refund_ids=[r.id for r in issued],
        edited_by_reviewer=bool(edited),
        guard_problems=[p[:300] for p in verdict.problems[:10]],
    )
    to_save = replies.SaveDraft(
        run_id=run_id,
        customer_id=customer.id,
        to_email=customer.email,
        subject=replies.reply_subject(subject),
        body=reply,
        answering=answering or [],
        thread_key=thread_key,
        detail=sent.model_dump(exclude={"draft_id"}),
    )
    # A repeated call (a redelivery, a retried final call) answers with what was drafted first.
    saved, detail = await replies.save_draft(pool, to_save)
    return SentReply.model_validate(detail | {"draft_id": saved.id})


async def _unpaid(pool: asyncpg.Pool, gate: list[refunds.GateOutcome]) -> list[reply_guard.Unpaid]:
    """The refunds this run asked for and did not pay, with their orders, for the safe reply."""
    found = []
    for outcome in gate:
        request = await db.get_refund_request(pool, request_id=outcome.request_id) if outcome.request_id else None
        found.append(
            reply_guard.Unpaid(
                status=outcome.status,
                order_id=request.order_id if request else None,
                explanation=outcome.message_for_model,
            )
        )
    return found


async def record_message_once(
    conn: db.Executor, *, run_id: str, message_key: str, customer_id: db.CustomerId, detail: dict[str, Any]
) -> str:
    """Write `message_received` once per message; return the run that owns the message.

    A second run for the same message (a duplicate delivery, a replay of a run that already
    answered) finds the owner's row and stands down. A replay of a run that *failed* is the
    recovery path, so it takes the message over with a row of its own. A redelivered call of
    the same run finds its own row and carries on.
    """
    key = f"message_received:{message_key}"
    action = db.AuditAction.MESSAGE_RECEIVED
    if await db.record_audit(
        conn, action=action, run_id=run_id, customer_id=customer_id, detail=detail, idempotency_key=key
    ):
        return run_id  # the row is this run's: nothing to look up
    owner = await db.audit_run_id(conn, idempotency_key=key) or run_id
    if owner == run_id or not await db.run_has_action(conn, run_id=owner, action=db.AuditAction.RUN_FAILED):
        return owner
    await db.record_audit(
        conn,
        action=action,
        run_id=run_id,
        customer_id=customer_id,
        detail=detail | {"recovery_of": owner},
        idempotency_key=f"{key}:{run_id}",
    )
    return run_id


# --------------------------------------------------------------------------- the terminal runner


async def _decide_here(
    pool: asyncpg.Pool,
    item: ToolApprovalItem,
    *,
    run_id: str,
    customer_id: db.CustomerId,
    body: str,
    decide: Decider,
    settings: Settings,
) -> refunds.GateOutcome:
    """The terminal's gate: open the request, ask `decide` at once and settle with its answer
    (no answer means the time is up). A four-eyes request asks `decide` once per approval it
    needs; when those answers do not approve it (the same reviewer twice), it expires here,
    since no one else can approve it after this run ends."""
    opened = await refunds.open_request(
        pool,
        run_id=run_id,
        customer_id=customer_id,
        customer_message=body,
        call_id=item.call_id or "unknown-call",
        raw_arguments=item.arguments,
        ttl_seconds=settings.refund_approval_timeout_seconds,
        four_eyes_cents=settings.refund_four_eyes_cents,
        four_eyes_window_days=settings.refund_four_eyes_window_days,
    )
    if opened.status != "pending" or opened.request_id is None:
        return opened
    request_id = opened.request_id
    request = await db.get_refund_request(pool, request_id=request_id)
    try:
        for round_no in range(1, (request.approvals_needed if request else 1) + 1):
            decision = await decide(request) if request else None
            if decision is None:
                break
            decision_id = f"local:{request_id}" if round_no == 1 else f"local:{request_id}:{round_no}"
            outcome = await refunds.settle(
                pool, request_id=request_id, decision=decision, decision_id=decision_id, terminal=True
            )
            if outcome.status != "pending":
                return outcome
            request = await db.get_refund_request(pool, request_id=request_id)
    except BaseException as ended:  # Ctrl-C, end of input, a closed terminal, cancellation
        await refunds.end_terminal_request(pool, request_id=request_id)
        if isinstance(ended, KeyboardInterrupt | EOFError):
            raise TerminalSessionEnded(request_id) from ended
        raise
    return await refunds.settle(pool, request_id=request_id, decision=None, decision_id=None, time_is_up=True)


class TerminalSessionEnded(Exception):
    """The person at the prompt left (Ctrl-C, end of input, a closed terminal) before deciding."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"Stopped before a decision: refund request {request_id} was closed (expired) and nothing was paid."
        )
        self.request_id = request_id


class EmailOutcome(BaseModel):
    run_id: str
    reply: str
    reply_replaced: bool
    refunds_issued: list[int]
    gate: list[refunds.GateOutcome]
    escalation_id: str | None = None
    escalation_reason: str | None = None


class ModelUnavailable(Exception):
    """The model could not be reached or answered garbage, after the client's own retries.
    Nothing was sent to the customer; the audit trail has a `model_unavailable` row."""

    def __init__(self, run_id: str, error: Exception, *, where: str = "the OpenAI API") -> None:
        self.run_id = run_id
        kind = type(error).__name__
        if isinstance(error, openai.APIConnectionError) and not isinstance(error, openai.APITimeoutError):
            # No route at all: the fix is configuration or the network, not patience.
            said = (
                f"Cannot reach {where} ({kind}: {str(error)[:200]}). Check the network or OPENAI_BASE_URL "
                "(without OPENAI_API_KEY and OPENAI_BASE_URL the offline rule-based model answers instead)."
            )
        else:
            said = f"The model did not answer ({kind}: {str(error)[:200]}); try again later."
        super().__init__(f"{said} Nothing was sent to the customer (run {run_id}, audited as model_unavailable).")


# What the client already retried (429, 500, timeouts) or cannot parse (malformed JSON).
TRANSIENT_MODEL_ERRORS = (openai.APIError, json.JSONDecodeError)


async def answer_email(
    pool: asyncpg.Pool,
    *,
    customer_id: db.CustomerId,
    body: str,
    subject: str | None = None,
    decide: Decider,
    settings: Settings,
    model: Model | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> EmailOutcome:
    """Answer one email end to end without a durable engine: audit it, run the agent, take
    each paused refund to `decide` (a person at a terminal, or a test), guard and audit the
    reply. The refund and escalation workflows are the ones the durable layer runs."""
    run_id = run_id or f"local-{uuid.uuid4().hex[:12]}"
    customer = await db.get_customer(pool, customer_id=customer_id)
    if customer is None:
        raise LookupError(f"No customer with id {customer_id}. List them with: support-worker list")
    await record_message_once(
        pool,
        run_id=run_id,
        message_key=run_id,
        customer_id=customer.id,
        detail={"subject": subject, "body": body, "channel": "cli"},
    )
    gate = partial(
        _decide_here, pool, run_id=run_id, customer_id=customer.id, body=body, decide=decide, settings=settings
    )
    conversation = await _converse_here(
        pool, customer, subject=subject, body=body, gate=gate, settings=settings, model=model, run_id=run_id, now=now
    )
    escalation = None
    if conversation.escalation is not None:
        escalation = await escalations.open_escalation(
            pool,
            ask=conversation.escalation,
            run_id=run_id,
            customer=customer,
            customer_message=body,
            ttl_seconds=settings.escalation_timeout_seconds,
        )
    draft = escalations.holding_reply(customer) if escalation else conversation.draft
    sent = await send_reply(pool, run_id=run_id, customer=customer, draft=draft, gate=conversation.gate)
    return EmailOutcome(
        run_id=run_id,
        reply=sent.reply,
        reply_replaced=sent.replaced_unsafe_reply,
        refunds_issued=sent.refund_ids,
        gate=conversation.gate,
        escalation_id=escalation.id if escalation else None,
        escalation_reason=escalation.reason if escalation else None,
    )


async def _converse_here(
    pool: asyncpg.Pool,
    customer: db.Customer,
    *,
    subject: str | None,
    body: str,
    gate: Gate,
    settings: Settings,
    model: Model | None,
    run_id: str,
    now: datetime | None,
) -> Conversation:
    """The agent's conversation about this email; a model that does not answer after the
    client's retries is audited (`model_unavailable`) and raised as `ModelUnavailable`."""
    context = worker.SupportContext(
        pool=pool, customer_id=customer.id, run_id=run_id, now=now or datetime.now(UTC), customer_message=body
    )
    try:
        return await converse(
            worker.build_agent(budget.MeteredModel(model or worker.build_model(settings)), store=settings.openai_store),
            worker.format_email(customer, subject=subject, body=body),
            context=context,
            run_config=worker.build_run_config(settings.openai_agents_tracing),
            gate=gate,
            max_turns=settings.agent_max_turns,
            token_budget=settings.conversation_token_budget,
        )
    except TRANSIENT_MODEL_ERRORS as error:
        await audit_model_unavailable(pool, run_id=run_id, customer_id=customer.id, error=error)
        raise ModelUnavailable(run_id, error, where=settings.openai_base_url or "the OpenAI API") from error


async def audit_model_unavailable(
    pool: asyncpg.Pool, *, run_id: str, customer_id: db.CustomerId, error: Exception
) -> None:
    await db.record_audit(
        pool,
        action=db.AuditAction.MODEL_UNAVAILABLE,
        run_id=run_id,
        customer_id=customer_id,
        detail={"error": type(error).__name__, "message": str(error)[:500], "reply_sent": False},
        idempotency_key=f"model_unavailable:{run_id}",
    )
