"""The recorder functions' step bodies, engine-free: a refund decision, a withdrawal, an
escalation decision and a failed run, each landing in Postgres whether or not a run waits."""

from __future__ import annotations

from typing import Any

import asyncpg

import db
from support_worker.core.events import ApprovalDecided, RefundWithdrawn
from support_worker.core.fields import customer_id_or_none
from support_worker.durable.flow_keys import REJECTION_PREFIX
from support_worker.durable.gates import Step
from support_worker.durable.outputs import DecisionRecorded
from support_worker.workflows import decision_targets, decisions, escalations


async def record_refund_decision(
    pool: asyncpg.Pool,
    asked: ApprovalDecided,
    *,
    event_id: str,
    run_id: str,
    real_event_id: str | None,
    require_reviewer: bool,
) -> DecisionRecorded:
    """One that names only the customer decides their one pending request (decision_targets.py)."""
    if asked.withdrawn:  # recorded by the withdrawal function that announced it
        return DecisionRecorded(applied=False, reason="withdrawal")
    decision_id = asked.decision_id or event_id
    decision = await decision_targets.resolve_refund(
        pool, asked, decision_id=decision_id, event_id=event_id, require_reviewer=require_reviewer
    )
    if isinstance(decision, decision_targets.Unresolved):
        await decisions.audit_decision_ignored(
            pool,
            key=event_id,
            request_id=asked.request_id,
            why=decision.why,
            customer_id=asked.customer_id,
            run_id=run_id,
            event_id=real_event_id,
            approved=asked.approved,
            reviewer=asked.reviewer,
        )
        return DecisionRecorded(applied=False, reason=decision.reason)
    outcome = await decisions.record_decision(pool, decision, decision_id=decision_id)
    if not outcome.applied and outcome.reason != "same_decision":
        await decisions.audit_decision_ignored(
            pool,
            key=event_id,
            request_id=decision.request_id,
            why=outcome.reason,
            request=outcome.request,
            run_id=run_id,
            event_id=real_event_id,
            approved=decision.approved,
            reviewer=decision.reviewer,
        )
    return DecisionRecorded(applied=outcome.applied, reason=outcome.reason)


async def record_withdrawal(
    pool: asyncpg.Pool, withdrawal: RefundWithdrawn, *, withdrawal_id: str, run_id: str, event_id: str | None
) -> decisions.Withdrawal:
    return await decisions.withdraw_as_asked(
        pool,
        request_id=withdrawal.request_id,
        customer_id=withdrawal.customer_id,
        order_id=withdrawal.order_id,
        reason=withdrawal.reason,
        withdrawal_id=withdrawal_id,
        run_id=run_id,
        event_id=event_id,
        asked=withdrawal.model_dump(),
    )


def waking_decision(result: decisions.Withdrawal, withdrawal_id: str) -> decisions.Decision | None:
    """The decision that wakes the run waiting on a withdrawn request (it listens for decisions
    on its request; a withdrawal is one), or None when nothing was withdrawn."""
    if not (result.withdrawn and result.request_id):
        return None
    return decisions.Decision(
        request_id=result.request_id, approved=False, reviewer="customer", withdrawn=True, decision_id=withdrawal_id
    )


async def record_escalation_decision(
    pool: asyncpg.Pool, data: Any, *, event_id: str, run_id: str, require_reviewer: bool
) -> DecisionRecorded:
    recorded = await escalations.record_event(
        pool, data, event_id=event_id, run_id=run_id, require_reviewer=require_reviewer
    )
    return DecisionRecorded(applied=recorded.applied, reason=recorded.reason)


async def audit_run_failure(step: Step, pool: asyncpg.Pool, data: dict[str, Any], *, run_id: str) -> None:
    """A run of this app that exhausted its retries shows in Postgres as `run_failed`. The
    write is a retried step of a retried function, so one database error cannot lose it."""
    original: dict[str, Any] = data["event"] if isinstance(data.get("event"), dict) else {}
    original_data: dict[str, Any] = original["data"] if isinstance(original.get("data"), dict) else {}
    error: dict[str, Any] = (
        data["error"] if isinstance(data.get("error"), dict) else {"message": str(data.get("error"))}
    )
    if str(error.get("message", "")).startswith(REJECTION_PREFIX):
        return  # a refused event is already audited as event_rejected; nothing failed
    failed_run = str(data.get("run_id") or run_id)
    customer_id = original_data.get("customer_id")

    async def record_run_failed() -> bool:
        return await db.record_audit(
            pool,
            action=db.AuditAction.RUN_FAILED,
            run_id=failed_run,
            customer_id=customer_id_or_none(customer_id),
            detail={"function_id": data.get("function_id"), "error": error, "event_name": original.get("name")},
            idempotency_key=f"run_failed:{failed_run}",
        )

    await step.run("record-run-failed", record_run_failed)
