"""The escalation function's steps after loading, engine-free: tell the on-call reviewers,
wait for a decision (or the deadline), settle. The engine's step-failure type arrives as a
parameter; this module never imports the engine."""

from __future__ import annotations

import logging
from functools import partial

import asyncpg

from support_worker.core.settings import Settings
from support_worker.durable import gates
from support_worker.durable.outputs import EscalationOpened
from support_worker.workflows import escalations

logger = logging.getLogger("support_worker.inngest")


async def notify_wait_settle(
    step: gates.Step,
    pool: asyncpg.Pool,
    settings: Settings,
    loaded: EscalationOpened,
    *,
    run_id: str,
    step_error: type[Exception],
) -> escalations.Settled:
    escalation_id = loaded.request_id
    try:
        notify_step = partial(escalations.notify_reviewers, pool, settings, escalation_id=escalation_id)
        await step.run(f"notify-reviewers-{escalation_id}", notify_step)
    except step_error as error:
        # The escalation is stored and on the desk; a dead notifier must not lose it.
        logger.warning("could not notify reviewers about %s: %s", escalation_id, error)
    await gates.await_escalation_decision(
        step, pool, settings, escalation_id, customer_id=loaded.customer_id or "", run_id=run_id
    )
    settle = partial(escalations.settle, pool, settings, escalation_id=escalation_id, time_is_up=True)
    settled: escalations.Settled = await step.run(
        f"settle-escalation-{escalation_id}", settle, output_type=escalations.Settled
    )
    return settled
