"""The human gates' durable waits, engine-free: a paused refund opened and reviewers told
(inside the agent's step), a decision awaited in slices that re-read Postgres; the same slices
for escalations.

This module takes the engine's step object as a parameter (`Step`: `run` and
`wait_for_event`, which Inngest's `ctx.step` has) and never imports the engine; what is
engine-specific (Slack's Retry-After as a retry of the step) arrives as a callable. Every
step id comes from data (`await-approval-<request>-<round>`, `settle-refund-<request>-<round>`),
never from call order, so a new release never shifts the steps of a run paused for hours.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

import asyncpg
from agents import ToolApprovalItem
from pydantic import BaseModel, ValidationError

import db
import worker
from support_worker.core.events import APPROVAL_DECIDED, ESCALATION_DECIDED, ApprovalDecided, describe_error
from support_worker.core.settings import Settings
from support_worker.workflows import decision_targets, decisions, escalations, refunds

# Decisions a waiting gate hears that do not settle it (malformed, refused, a first of two
# approvals) before it stops listening to the event: from then on it sleeps slice by slice and
# re-reads Postgres, where the recorder functions write every decision, until the deadline. A
# flood therefore costs at most this many steps, and never any of the wait's time.
MAX_IGNORED_DECISIONS = 20
# Tells reviewers about a request; the engine decides what a rate limit means (a step retry).
TellReviewers = Callable[[str], Awaitable[dict[str, Any]]]


class Step(Protocol):
    """What a gate needs from a durable engine: memoized steps and waits for an event."""

    async def run(self, step_id: str, handler: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any: ...

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        if_exp: str | None = None,
        timeout: timedelta,  # noqa: ASYNC109 (the engine's signature: a durable wait, not a deadline)
    ) -> Any: ...

    async def sleep(self, step_id: str, duration: int | timedelta) -> None: ...


class DecisionCheck(BaseModel):
    """A waiting request as Postgres has it, read before each slice of the wait."""

    status: str  # a refund request's or an escalation's status; "pending" while it waits
    seconds_left: float


class OpenedRefund(BaseModel):
    """One step's work for a paused refund: the request opened (or refused), reviewers told,
    and the request's status read once, so an early decision skips the wait."""

    outcome: refunds.GateOutcome
    notified: dict[str, Any] | None = None
    check: DecisionCheck | None = None


async def open_refund(
    context: worker.SupportContext,
    item: ToolApprovalItem,
    *,
    pool: asyncpg.Pool,
    settings: Settings,
    tell: TellReviewers,
) -> OpenedRefund:
    """Open a request for a paused `issue_refund` call (the policy first), tell reviewers, and
    read the request once. Called inside the agent's step, which journals the result."""
    open_request = partial(
        refunds.open_request,
        pool,
        run_id=context.run_id,
        customer_id=context.customer_id,
        customer_message=context.customer_message,
        call_id=item.call_id or "unknown-call",
        raw_arguments=item.arguments,
        ttl_seconds=settings.refund_approval_timeout_seconds,
        four_eyes_cents=settings.refund_four_eyes_cents,
        four_eyes_window_days=settings.refund_four_eyes_window_days,
    )
    return await _open_refund(pool, open_request, tell)


async def await_opened(
    step: Step, opened: OpenedRefund, *, pool: asyncpg.Pool, settings: Settings, customer_id: str
) -> refunds.GateOutcome:
    """The engine's half of the gate: wait for a decision on an opened request in slices that
    re-read Postgres, so a decision recorded anywhere settles within one slice even if its
    announcement never arrived. A request that was not left pending needs no wait."""
    if opened.outcome.status != "pending" or opened.outcome.request_id is None or opened.check is None:
        return opened.outcome
    request_id = opened.outcome.request_id
    return await _await_decision(step, pool, settings, request_id, customer_id=customer_id, first_check=opened.check)


async def _open_refund(pool: asyncpg.Pool, open_request: partial[Any], tell: TellReviewers) -> OpenedRefund:
    """Open the request, tell reviewers, read its status: each side effect idempotent by key
    (the request by run and call, the notice by request and channel), so a retried step
    repeats none. A failing notifier retries the step (Slack's Retry-After honoured); on the
    step's last attempt it is audited and given up, never costing the refund."""
    outcome: refunds.GateOutcome = await open_request()
    if outcome.status != "pending" or outcome.request_id is None:
        return OpenedRefund(outcome=outcome)
    notified = await tell(outcome.request_id)
    check = await _check_decision(pool, outcome.request_id)
    return OpenedRefund(outcome=outcome, notified=notified, check=check)


def decision_match(request_id: str, customer_id: str | None = None) -> str:
    """The wait's CEL match: a decision about this request or, naming no request at all (the
    course's `{"customer_id": "c-4429", "approved": true}`), one about this customer, whose
    one pending request it then decides (decision_targets.py). Ids are quoted as JSON, which
    is a valid CEL string literal for any text (astral characters written as themselves)."""
    by_request = f"async.data.request_id == {_cel_text(request_id)}"
    if customer_id is None:
        return by_request
    return f"{by_request} || (!has(async.data.request_id) && async.data.customer_id == {_cel_text(customer_id)})"


def _cel_text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


async def _check_decision(pool: asyncpg.Pool, request_id: str) -> DecisionCheck:
    request = await db.get_refund_request(pool, request_id=request_id)
    if request is None:
        raise LookupError(f"refund request {request_id} vanished")
    return DecisionCheck(status=request.status, seconds_left=request.seconds_left)


@dataclasses.dataclass(frozen=True)
class SlicedWait:
    """One human gate's wait: which event decides it, how its steps are named, how long it
    may take, how to re-read Postgres, and what to do with a decision that arrives."""

    subject_id: str
    customer_id: str  # a decision naming only the customer reaches the wait too
    event: str
    check_prefix: str  # e.g. "check-decision": step `check-decision-<id>-<round>`
    await_prefix: str  # e.g. "await-approval": wait `await-approval-<id>-<round>`
    sleep_prefix: str  # e.g. "recheck-approval": sleep `recheck-approval-<id>-<round>` once deaf
    timeout_seconds: int
    check: Callable[[], Awaitable[DecisionCheck]]
    # Handles one matching event inside its own steps; True when that settled the gate.
    on_event: Callable[[Any, int], Awaitable[bool]]


async def wait_in_slices(
    step: Step, wait: SlicedWait, *, recheck_seconds: int, first_check: DecisionCheck | None = None
) -> None:
    """Wait for a decision in slices of DECISION_RECHECK_MINUTES that re-read Postgres between
    them, so a decision recorded anywhere (its event lost, or sent before the wait began: the
    engine never looks back) settles within one slice.

    Only time the engine waited with nothing heard counts towards the deadline (`waited`), so
    events never shorten the wait: after MAX_IGNORED_DECISIONS events that did not settle it,
    the gate stops listening and sleeps its slices instead, still re-reading Postgres. It returns
    when Postgres says the subject is no longer pending, or the deadline has passed (by Postgres'
    clock, or by the engine having waited it out). Every step id carries the subject and round."""
    slice_seconds = recheck_seconds
    heard = waited = 0
    max_rounds = math.ceil(wait.timeout_seconds / slice_seconds) + MAX_IGNORED_DECISIONS + 1
    for round_no in range(1, max_rounds + 1):
        check = first_check if round_no == 1 and first_check else None
        if check is None:
            step_id = f"{wait.check_prefix}-{wait.subject_id}-{round_no}"
            check = await step.run(step_id, wait.check, output_type=DecisionCheck)
        if check.status != "pending" or check.seconds_left <= 0:
            return
        wait_seconds = min(math.ceil(check.seconds_left), slice_seconds, max(1, wait.timeout_seconds - waited))
        event = None
        if heard < MAX_IGNORED_DECISIONS:
            event = await step.wait_for_event(
                f"{wait.await_prefix}-{wait.subject_id}-{round_no}",
                event=wait.event,
                if_exp=decision_match(wait.subject_id, wait.customer_id),
                timeout=timedelta(seconds=wait_seconds),
            )
        else:
            await step.sleep(f"{wait.sleep_prefix}-{wait.subject_id}-{round_no}", timedelta(seconds=wait_seconds))
        if event is None:
            waited += wait_seconds
            if wait_seconds >= check.seconds_left or waited >= wait.timeout_seconds:
                return  # the engine waited out the whole deadline
            continue  # a slice ran out: re-read Postgres, then wait for what time is left
        heard += 1
        if await wait.on_event(event, round_no):
            return


async def _await_decision(
    step: Step,
    pool: asyncpg.Pool,
    settings: Settings,
    request_id: str,
    *,
    customer_id: str,
    first_check: DecisionCheck,
) -> refunds.GateOutcome:
    """The refund gate's wait. A malformed decision is audited and the wait goes on; one
    Postgres refuses (an edit raising the amount) leaves the request pending: also goes on."""
    settle = partial(refunds.settle, pool, request_id=request_id)
    settled: list[refunds.GateOutcome] = []

    async def on_event(event: Any, round_no: int) -> bool:
        try:
            decision = ApprovalDecided.model_validate(dict(event.data))
        except ValidationError as error:
            why = f"malformed decision: {describe_error(error)}"
            event_id = event.id or f"{request_id}-{round_no}"
            ignore = partial(_ignore_malformed, pool, request_id, event_id=event_id, why=why)
            await step.run(f"ignore-decision-{request_id}-{round_no}", ignore)
            return False
        event_id = event.id or f"{request_id}-{round_no}"
        apply = partial(
            _settle_event, pool, request_id, decision, event_id=event_id, require=settings.require_named_reviewer
        )
        outcome = await step.run(f"settle-refund-{request_id}-{round_no}", apply, output_type=refunds.GateOutcome)
        settled.append(outcome)
        return outcome.status != "pending"

    wait = SlicedWait(
        subject_id=request_id,
        customer_id=customer_id,
        event=APPROVAL_DECIDED,
        check_prefix="check-decision",
        await_prefix="await-approval",
        sleep_prefix="recheck-approval",
        timeout_seconds=settings.refund_approval_timeout_seconds,
        check=partial(_check_decision, pool, request_id),
        on_event=on_event,
    )
    await wait_in_slices(step, wait, recheck_seconds=settings.decision_recheck_minutes * 60, first_check=first_check)
    if settled and settled[-1].status != "pending":
        return settled[-1]
    final = partial(settle, decision=None, decision_id=None, time_is_up=True)
    return await step.run(f"settle-refund-{request_id}", final, output_type=refunds.GateOutcome)


async def _settle_event(
    pool: asyncpg.Pool, request_id: str, decision: decisions.Decision, *, event_id: str, require: bool
) -> refunds.GateOutcome:
    """Settle the request with a decision that reached its wait, once the decision is resolved
    (decision_targets.py); one meaning another request, or none, leaves this one as it is (the
    recorder function audits why)."""
    decision_id = decision.decision_id or event_id
    resolved = await decision_targets.resolve_refund(
        pool, decision, decision_id=decision_id, event_id=event_id, require_reviewer=require
    )
    if isinstance(resolved, decision_targets.Unresolved) or resolved.request_id != request_id:
        return await refunds.settle(pool, request_id=request_id, decision=None, decision_id=None)
    return await refunds.settle(pool, request_id=request_id, decision=resolved, decision_id=decision_id)


async def _ignore_malformed(pool: asyncpg.Pool, request_id: str, *, event_id: str, why: str) -> None:
    request = await db.get_refund_request(pool, request_id=request_id)
    await decisions.audit_decision_ignored(
        pool, key=f"wait:{event_id}", request_id=request_id, why=why, request=request, event_id=event_id
    )


async def _escalation_state(pool: asyncpg.Pool, escalation_id: str) -> DecisionCheck:
    state = await escalations.waiting_state(pool, escalation_id)
    return DecisionCheck(status=state.status, seconds_left=state.seconds_left)


async def await_escalation_decision(
    step: Step, pool: asyncpg.Pool, settings: Settings, escalation_id: str, *, customer_id: str, run_id: str
) -> None:
    """The escalation's wait: the refund gate's slices; each decision is recorded (or its
    refusal audited) and the next round's check sees whether it settled the escalation."""

    async def on_event(event: Any, round_no: int) -> bool:
        record = partial(
            escalations.record_event,
            pool,
            dict(event.data),
            event_id=event.id or f"{escalation_id}-{round_no}",
            run_id=run_id,
            expected_id=escalation_id,
            require_reviewer=settings.require_named_reviewer,
        )
        step_id = f"record-escalation-decision-{escalation_id}-{round_no}"
        await step.run(step_id, record, output_type=escalations.EventRecorded)
        return False

    wait = SlicedWait(
        subject_id=escalation_id,
        customer_id=customer_id,
        event=ESCALATION_DECIDED,
        check_prefix="check-escalation",
        await_prefix="await-escalation",
        sleep_prefix="recheck-escalation",
        timeout_seconds=settings.escalation_timeout_seconds,
        check=partial(_escalation_state, pool, escalation_id),
        on_event=on_event,
    )
    await wait_in_slices(step, wait, recheck_seconds=settings.decision_recheck_minutes * 60)
