"""The health checks' step bodies, engine-free: the daily fan-out (steps taken through the
engine's step object, events sent through a callable) and one customer's check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, NoReturn

import asyncpg

import db
from support_worker.core.events import HealthCheckRequested
from support_worker.core.settings import Settings
from support_worker.durable.gates import Step
from support_worker.durable.outputs import HealthGathered
from support_worker.store import activity, agent_journal
from support_worker.workflows import health

SendEvents = Callable[[list[dict[str, Any]]], Awaitable[None]]


async def daily_health_check(
    step: Step, pool: asyncpg.Pool, settings: Settings, *, day: str, send: SendEvents
) -> dict[str, Any]:
    """Fan out one health-check event per paying customer not contacted lately, in chunks
    whose steps each load their own slice: every step output stays a few bytes."""
    cooldown = settings.health_check_contact_cooldown_days
    planned = partial(health.plan_fan_out, pool, day=day, cooldown_days=cooldown)
    plan = await step.run("plan-fan-out", planned, output_type=health.FanOutPlan)
    chunk = health.FanOutChunk(sent=0, last_id="", more=plan.counts.eligible > 0)
    scheduled, number = 0, 0
    while chunk.more:
        number += 1
        send_chunk = partial(
            health.send_chunk,
            pool,
            plan,
            after_id=chunk.last_id,
            size=settings.health_check_fanout_chunk,
            cooldown_days=cooldown,
            send=send,
        )
        chunk = await step.run(f"fan-out-{number}", send_chunk, output_type=health.FanOutChunk)
        scheduled += chunk.sent
    # The daily chore that rides along: the agent's journal past its retention.
    clean = partial(agent_journal.delete_older_than, pool, days=settings.agent_journal_retention_days)
    cleaned = await step.run("clean-agent-journal", clean)
    return health.fan_out_report(plan, scheduled=scheduled, cooldown_days=cooldown) | {"journal_rows_deleted": cleaned}


async def gather_activity(
    pool: asyncpg.Pool, request: HealthCheckRequested, *, today: str, reject: Callable[[str], Awaitable[NoReturn]]
) -> HealthGathered:
    customer = await db.get_customer(pool, customer_id=request.customer_id)
    if customer is None:
        await reject(f"unknown customer: customer_id {request.customer_id}")
    recent = await activity.customer_activity(pool, customer_id=customer.id)
    return HealthGathered(customer=customer, activity=recent, day=request.day_or(today))


async def customer_health_check(
    step: Step, pool: asyncpg.Pool, gather: Callable[[], Awaitable[HealthGathered]], *, run_id: str
) -> dict[str, Any]:
    gathered = await step.run("gather-activity", gather, output_type=HealthGathered)
    summary = health.summarize(gathered.customer, gathered.activity, day=gathered.day)
    first = await step.run("record-health-check", partial(health.record_summary, pool, summary, run_id=run_id))
    if summary.outreach_note:
        # The next morning's cron sees this and leaves the customer alone for a while.
        await step.run("record-outreach", partial(health.record_outreach, pool, summary, run_id=run_id))
    return summary.model_dump() | {"recorded": first}
