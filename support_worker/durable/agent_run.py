"""The email function's agent steps, engine-free: `run-agent` and `resume-agent-<request>`.

One step runs the agent for as long as it can (the course's D1 shape): the run's intake, then
every model turn and tool call, each journaled in Postgres before the agent goes on
(journal.py). It ends where the engine is needed: a refund waiting for a reviewer (opened, and
reviewers told, inside the step), an escalation, or the agent's answer. After a reviewer
decided, `resume-agent-<request>` replays the run from the journal (no model call for a turn
it has) and goes on from the decision. Each step returns a summary, never the conversation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any, Literal

import asyncpg
from agents import Agent, RunConfig, ToolApprovalItem
from pydantic import BaseModel

import worker
from support_worker.conversation import loop as conversation
from support_worker.conversation import thread
from support_worker.conversation.intake import Answering, Intake
from support_worker.core.settings import Settings
from support_worker.durable import gates
from support_worker.durable.journal import Journal
from support_worker.workflows import escalations, refunds

# The agent's input texts for the messages a run answers: (subject, text), oldest first.
ReadTexts = Callable[[list[Answering]], Awaitable[list[tuple[str | None, str]]]]


class AgentSummary(BaseModel):
    """An agent step's output, as the dashboard shows it: how far the run got, and why the
    step ended (`answered`, `waiting` for reviewers, `escalated`, or the intake said there is
    nothing to answer). The conversation itself is in the journal (`support-worker run <id>`)."""

    ended: Literal["answered", "waiting", "escalated", "not_accepted"]
    segment: int  # 0 for run-agent, 1 for the first resume-agent step, ...
    turns: int = 0  # model turns in the run so far
    tool_calls: int = 0  # tool calls in the run so far
    asked: int = 0  # model turns this step asked the model for; the rest came from the journal
    intake: Intake | None = None  # run-agent only: the messages the run answers
    draft: str = ""  # the agent's reply, once it answered
    gate: list[refunds.GateOutcome] = []  # every refund call decided so far, in call order
    waiting: list[gates.OpenedRefund] = []  # the refund calls this pause waits on, reviewers told
    escalation: escalations.EscalationAsk | None = None


@dataclasses.dataclass(frozen=True)
class AgentSteps:
    """What the agent steps share in one process; the durable layer builds it once."""

    agent: Agent[worker.SupportContext]
    run_config: RunConfig
    settings: Settings
    pool: asyncpg.Pool
    read_texts: ReadTexts


async def run_agent(
    steps: AgentSteps,
    *,
    run_id: str,
    now: datetime,
    receive: Callable[[], Awaitable[Intake]],
    tell: gates.TellReviewers,
) -> AgentSummary:
    """`run-agent`: the run's intake (journaled too, so a retry answers the same messages),
    then the agent until it answers, escalates or waits for a reviewer."""
    journal = await Journal.open(steps.pool, run_id=run_id, segment=0)

    async def take_in() -> dict[str, Any]:
        return (await receive()).model_dump(mode="json")

    # Written with the first model turn: until then a retry may take the email in again.
    received = Intake.model_validate(await journal.once("intake", "", take_in, defer=True))
    if received.status != "accepted":
        return AgentSummary(ended="not_accepted", segment=0, intake=received)
    summary = await _advance(steps, journal, received, now=now, known={}, tell=tell)
    return summary.model_copy(update={"intake": received})


async def resume_agent(
    steps: AgentSteps,
    *,
    run_id: str,
    now: datetime,
    received: Intake,
    segment: int,
    known: dict[str, refunds.GateOutcome],
    tell: gates.TellReviewers,
) -> AgentSummary:
    """`resume-agent-<request>`: the run replayed from its journal, each refund call the engine
    settled answered with `known`, then the agent goes on as `run_agent` does."""
    journal = await Journal.open(steps.pool, run_id=run_id, segment=segment)
    return await _advance(steps, journal, received, now=now, known=known, tell=tell)


async def _advance(
    steps: AgentSteps,
    journal: Journal,
    received: Intake,
    *,
    now: datetime,
    known: dict[str, refunds.GateOutcome],
    tell: gates.TellReviewers,
) -> AgentSummary:
    emails = await steps.read_texts(received.answering)
    context = worker.SupportContext(
        pool=steps.pool,
        customer_id=received.customer.id,
        run_id=journal.run_id,
        now=now,
        customer_message="\n\n".join(text for _, text in emails),
    )
    waiting: list[gates.OpenedRefund] = []
    gate = partial(_gate, steps, journal, context, known, waiting, tell)
    with journal.recording():
        talk = await conversation.converse(
            steps.agent,
            # The new email(s) first, then the thread before them (003 D3's load-thread; the refs
            # are in the journaled intake and the texts never change, so every step reads the same).
            thread.with_thread(
                worker.format_burst(received.customer, emails),
                await thread.thread_block(steps.pool, thread.Thread(items=received.thread)),
            ),
            context=context,
            run_config=steps.run_config,
            gate=gate,
            max_turns=steps.settings.agent_max_turns,
            token_budget=steps.settings.conversation_token_budget,
        )
    ended: Literal["answered", "waiting", "escalated"] = (
        "escalated" if talk.escalation else "waiting" if talk.paused else "answered"
    )
    return AgentSummary(
        ended=ended,
        segment=journal.segment,
        turns=journal.turns,
        tool_calls=journal.tool_calls,
        asked=journal.asked,
        draft=talk.draft,
        gate=[outcome for outcome in talk.gate if outcome.status != "pending"],
        waiting=waiting,
        escalation=talk.escalation,
    )


async def _gate(
    steps: AgentSteps,
    journal: Journal,
    context: worker.SupportContext,
    known: dict[str, refunds.GateOutcome],
    waiting: list[gates.OpenedRefund],
    tell: gates.TellReviewers,
    item: ToolApprovalItem,
) -> refunds.GateOutcome:
    """The durable gate inside the step: what the engine's wait settled, or the request opened
    (once: journaled, each side effect keyed in Postgres too) and, when a reviewer must decide,
    "pending", which pauses the run so the engine can wait."""
    call_id = item.call_id or "unknown-call"
    if call_id in known:
        return known[call_id]

    async def open_request() -> dict[str, Any]:
        opened = await gates.open_refund(context, item, pool=steps.pool, settings=steps.settings, tell=tell)
        return opened.model_dump(mode="json")

    opened = gates.OpenedRefund.model_validate(await journal.once("gate", call_id, open_request))
    if opened.outcome.status == "pending":
        waiting.append(opened)
    return opened.outcome


def resume_step_id(summary: AgentSummary) -> str:
    """`resume-agent-<request>`: named after the first request the pause waited on."""
    first = summary.waiting[0].outcome
    return f"resume-agent-{first.request_id or first.call_id}"
