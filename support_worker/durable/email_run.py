"""The email run's engine-free pieces: the texts the agent reads, telling reviewers, opening
an escalation, saving the draft and the run's result. What is engine-specific (a Retry-After
as a retry of the step) arrives as a callable; this module never imports the engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg
from agents import Agent, RunConfig

import db
import worker
from support_worker.conversation import intake
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.doors import inbound
from support_worker.durable import agent_run, gates
from support_worker.durable.outputs import EmailRunResult, EscalationOpened
from support_worker.store import message_cache
from support_worker.workflows import escalations, notify, refunds, replies

# Builds the engine's "retry this step after `seconds`" error from a message.
RetryAfter = Callable[[str, float], Exception]


def agent_steps(
    settings: Settings, agent: Agent[worker.SupportContext], run_config: RunConfig, pool: asyncpg.Pool
) -> agent_run.AgentSteps:
    async def read(answering: list[intake.Answering]) -> list[tuple[str | None, str]]:
        return await texts(pool, answering, limit=settings.max_email_body_chars)

    return agent_run.AgentSteps(agent=agent, run_config=run_config, settings=settings, pool=pool, read_texts=read)


async def texts(pool: asyncpg.Pool, answering: list[intake.Answering], *, limit: int) -> list[tuple[str | None, str]]:
    """Subject and text of each message the run answers, needed on each call and never memoized
    (step outputs stay small): read from Postgres once per process, then from
    store/message_cache.py."""
    found = []
    for item in answering:
        text = await message_cache.text_of(pool, item.message)
        found.append((item.subject, inbound.agent_text(text, item.message, limit=limit)))
    return found


async def tell_reviewers(
    pool: asyncpg.Pool, settings: Settings, request_id: str, *, last_attempt: bool, retry_after: RetryAfter
) -> dict[str, Any]:
    """notify.py, with Slack's 429 turned into the engine's retry (notify.py stays engine-free).
    On the step's last attempt a failure is recorded instead: a notification must never cost
    the refund its run."""
    try:
        return await notify.notify_or_record_failure(pool, settings, request_id=request_id, give_up=last_attempt)
    except notify.RetryLater as wait:
        if last_attempt:
            return await notify.record_failure(pool, request_id=request_id, why=f"gave up on the last attempt: {wait}")
        raise retry_after(str(wait), wait.seconds) from wait


async def open_escalation(
    pool: asyncpg.Pool,
    settings: Settings,
    ask: escalations.EscalationAsk,
    run_id: str,
    customer: db.Customer,
    customer_message: str,
) -> EscalationOpened:
    """Record the hand-off in Postgres (the step `open-escalation-<key>`)."""
    escalation = await escalations.open_escalation(
        pool,
        ask=ask,
        run_id=run_id,
        customer=customer,
        customer_message=customer_message,
        ttl_seconds=settings.escalation_timeout_seconds,
    )
    return EscalationOpened(request_id=escalation.id, reason=escalation.reason)


def save_draft(
    pool: asyncpg.Pool, received: intake.Intake, *, run_id: str, draft: str, gate: list[refunds.GateOutcome]
) -> Callable[[], Any]:
    """003 D3's `save-draft-reply` body: the draft and its `email_drafted` row, once per run."""
    last = received.answering[-1] if received.answering else None

    async def save() -> conversation.SentReply:
        return await conversation.send_reply(
            pool,
            run_id=run_id,
            customer=received.customer,
            draft=draft,
            gate=gate,
            subject=last.subject if last else None,
            answering=[item.message.message_id for item in received.answering],
            thread_key=last.message.thread_key if last else None,
        )

    return save


def run_result(
    saved: conversation.SentReply,
    sent: replies.Sent | None,
    *,
    escalation_id: str | None,
    gate: list[refunds.GateOutcome],
) -> EmailRunResult:
    """The run's output: escalated, sent (or refused by Postmark), or drafted."""
    status = "escalated" if escalation_id else (sent.status if sent and sent.status != "not_configured" else "drafted")
    return EmailRunResult(status=status, escalation_id=escalation_id, gate=gate, sent=sent, **saved.model_dump())


async def send_draft(pool: asyncpg.Pool, settings: Settings, *, draft_id: str, retry_after: RetryAfter) -> replies.Sent:
    """The `send-reply` body: Postmark's 5xx and 429 retry the step, honouring its Retry-After."""
    try:
        return await replies.send_draft(pool, settings, draft_id=draft_id)
    except replies.PostmarkUnavailable as error:
        if error.retry_after:
            raise retry_after(str(error), error.retry_after) from error
        raise


async def through_gates(
    step: gates.Step,
    steps: agent_run.AgentSteps,
    talk: agent_run.AgentSummary,
    *,
    received: intake.Intake,
    run_id: str,
    now: datetime,
    tell: gates.TellReviewers,
) -> agent_run.AgentSummary:
    """Each waiting refund through the gate's waits, then `resume-agent-<request>` goes on from
    the journal, until the agent waits for no one."""
    known: dict[str, refunds.GateOutcome] = {}
    while talk.waiting:
        for opened in talk.waiting:
            known[opened.outcome.call_id] = await gates.await_opened(
                step, opened, pool=steps.pool, settings=steps.settings, customer_id=received.customer.id
            )
        resume = partial(
            agent_run.resume_agent,
            steps,
            run_id=run_id,
            now=now,
            received=received,
            segment=talk.segment + 1,
            known=dict(known),
            tell=tell,
        )
        talk = await step.run(agent_run.resume_step_id(talk), resume, output_type=agent_run.AgentSummary)
    return talk
