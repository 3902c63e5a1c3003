"""One email, from the customer's words to the reply: run the agent through its refund pauses,
guard the reply, audit it. Engine-free.

`converse` is the loop both runners share: the terminal runner (`answer_email`, below) and
the durable layer (`inngest_app.handle_customer_email`) hand it the same agent and differ only
in the `gate` they pass: a person at a prompt, or a durable wait for a reviewer. What a gate
does with a paused refund is the refund workflow (`refunds.py`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
from agents import Agent, Model, RunConfig, Runner, RunState, ToolApprovalItem
from pydantic import BaseModel

import db
import refunds
import worker
from settings import Settings

Gate = Callable[[ToolApprovalItem], Awaitable[refunds.GateOutcome]]
Decider = Callable[[db.RefundRequest], Awaitable[refunds.Decision | None]]


class Conversation(BaseModel):
    """The agent's final draft and what became of each refund it asked for."""

    draft: str
    gate: list[refunds.GateOutcome]


def apply_gate_outcome(state: RunState[Any, Any], item: ToolApprovalItem, outcome: refunds.GateOutcome) -> None:
    """Approved calls run the tool (which pays); everything else reaches the model as text."""
    if outcome.status == "approved":
        state.approve(item)
    else:
        state.reject(item, rejection_message=outcome.message_for_model)


async def converse(
    agent: Agent[worker.SupportContext],
    email: str,
    *,
    context: worker.SupportContext,
    run_config: RunConfig,
    gate: Gate,
    max_turns: int,
) -> Conversation:
    """Run the agent; each paused refund goes through `gate`; resume until it answers."""
    result = await Runner.run(agent, email, context=context, run_config=run_config, max_turns=max_turns)
    outcomes: list[refunds.GateOutcome] = []
    while result.interruptions:
        state = result.to_state()
        for item in state.get_interruptions():
            outcome = await gate(item)
            outcomes.append(outcome)
            apply_gate_outcome(state, item, outcome)
        result = await Runner.run(agent, state, run_config=run_config, max_turns=max_turns)
    return Conversation(draft=str(result.final_output), gate=outcomes)


# --------------------------------------------------------------------------- reply guard

_CLAIMS_REFUND = re.compile(
    r"refund (of (?:[^.\n]|\.\d)*?)?(has been|was|is being|will be) (issued|processed|sent|approved)"
    r"|(have|has|'ve) (issued|processed|sent) (you )?(a|the|your) refund|(have|'ve) refunded|refunded you",
    re.I,
)
_NEGATION = re.compile(r"\b(no|not|never|cannot|can't|couldn't|unable)\b|n't\b", re.I)


def _is_affirmative(text: str, match: re.Match[str]) -> bool:
    """A claim counts unless the same sentence negates it ("no refund has been issued")."""
    ends = [m.end() for m in re.finditer(r"\.(?!\d)|\n", text[: match.start()])]
    sentence_start = ends[-1] if ends else 0
    return not _NEGATION.search(text[sentence_start : match.end()])


def claims_refund(reply: str) -> bool:
    """Whether the reply tells the customer a refund was issued (negated claims do not count)."""
    return any(_is_affirmative(reply, m) for m in _CLAIMS_REFUND.finditer(reply))


def guard_reply(reply: str, *, refund_issued: bool, customer_name: str) -> tuple[str, bool]:
    """Never send a reply that claims a refund when none was issued in this run.

    Enforced in code because a model (or an injected email) can write anything. Returns the
    reply to send and whether it had to be replaced.
    """
    if refund_issued or not claims_refund(reply):
        return reply, False
    safe = (
        f"Hi {customer_name.split()[0]},\n\nthank you for your patience. We have not issued a refund "
        "for this request. If you believe this is a mistake, reply to this email and a member of "
        "our team will take another look.\n\nBest regards,\nThe Support Team"
    )
    return safe, True


class SentReply(BaseModel):
    reply: str
    replaced_unsafe_reply: bool
    refund_ids: list[int]
    edited_by_reviewer: bool


async def send_reply(
    pool: asyncpg.Pool, *, run_id: str, customer: db.Customer, draft: str, gate: list[refunds.GateOutcome]
) -> SentReply:
    """The last word of every run: a reviewer's edited reply replaces the agent's draft, the
    refund-claim guard checks whichever it is against the refunds actually issued, and the
    reply is audited once per run."""
    edited = [g.edited_reply for g in gate if g.edited_reply]
    approved = [g.request_id for g in gate if g.status == "approved" and g.request_id]
    refund_ids = [r.id for r in await db.refunds_for_requests(pool, request_ids=approved)] if approved else []
    reply, replaced = guard_reply(
        edited[-1] if edited else draft, refund_issued=bool(refund_ids), customer_name=customer.name
    )
    sent = SentReply(
        reply=reply, replaced_unsafe_reply=replaced, refund_ids=refund_ids, edited_by_reviewer=bool(edited)
    )
    key = f"reply_sent:{run_id}"
    detail = sent.model_dump()
    action = db.AuditAction.REPLY_SENT
    if await db.record_audit(
        pool, action=action, run_id=run_id, customer_id=customer.id, detail=detail, idempotency_key=key
    ):
        return sent
    # A repeated call (a redelivery, a retried final call) answers with what was sent first.
    stored = await db.audit_detail(pool, idempotency_key=key)
    return SentReply.model_validate(stored) if stored is not None else sent


async def record_message_once(
    pool: asyncpg.Pool, *, run_id: str, message_key: str, customer_id: db.CustomerId, detail: dict[str, Any]
) -> str:
    """Write `message_received` once per message; return the run that owns the message.

    A second run for the same message (a duplicate delivery, a replay of a run that already
    answered) finds the owner's row and stands down. A replay of a run that *failed* is the
    recovery path, so it takes the message over with a row of its own. A redelivered call of
    the same run finds its own row and carries on.
    """
    key = f"message_received:{message_key}"
    action = db.AuditAction.MESSAGE_RECEIVED
    await db.record_audit(
        pool, action=action, run_id=run_id, customer_id=customer_id, detail=detail, idempotency_key=key
    )
    owner = await db.audit_run_id(pool, idempotency_key=key) or run_id
    if owner == run_id or not await db.run_has_action(pool, run_id=owner, action=db.AuditAction.RUN_FAILED):
        return owner
    await db.record_audit(
        pool,
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
    reply. The refund workflow is the same one the durable layer runs."""
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
    context = worker.SupportContext(
        pool=pool, customer_id=customer.id, run_id=run_id, now=now or datetime.now(UTC), customer_message=body
    )

    gate = partial(
        _decide_here, pool, run_id=run_id, customer_id=customer.id, body=body, decide=decide, settings=settings
    )
    conversation = await converse(
        worker.build_agent(model or worker.build_model(settings), store=settings.openai_store),
        worker.format_email(customer, subject=subject, body=body),
        context=context,
        run_config=worker.build_run_config(settings.openai_agents_tracing),
        gate=gate,
        max_turns=settings.agent_max_turns,
    )
    sent = await send_reply(pool, run_id=run_id, customer=customer, draft=conversation.draft, gate=conversation.gate)
    return EmailOutcome(
        run_id=run_id,
        reply=sent.reply,
        reply_replaced=sent.replaced_unsafe_reply,
        refunds_issued=sent.refund_ids,
        gate=conversation.gate,
    )
