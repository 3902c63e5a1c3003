"""The durable refund gate: step ids from data, malformed decisions, and decisions that
reach a waiting run through Postgres when their announcement never does."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from agents.testing import ScriptedModel, assistant_message, function_call
from inngest_driver import Run, WaitOp
from tests_support import GRACE, Engine, serve, trail, used_up

import db
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.store import agent_journal
from support_worker.workflows import decisions

TWO_REFUNDS = {"customer_id": GRACE, "body": "Orders 1003 and 1004 were both charged twice."}


def request_of(op: WaitOp) -> str:
    """The request a wait listens for, read from its match expression."""
    match = re.search(r'"(rr_[0-9a-f]+)"', op.if_exp or "")
    assert match, op.if_exp
    return match.group(1)


def approval(request_id: str, event_id: str, **data: Any) -> dict[str, Any]:
    body = {"request_id": request_id, "approved": True, "reviewer": "ops@example.com"} | data
    return {"name": "refund/approval.decided", "id": event_id, "ts": 1_790_000_100_000, "data": body}


async def approve_each(op: WaitOp) -> dict[str, Any]:
    return approval(request_of(op), f"dec-{request_of(op)}")


def two_refund_model() -> ScriptedModel:
    # $400.00 + $19.99: together under the four-eyes limit, so one reviewer approves each.
    return ScriptedModel(
        [
            [
                function_call(
                    "issue_refund", {"order_id": 1003, "amount_cents": 40_000, "reason": "dup"}, call_id="c1"
                ),
                function_call("issue_refund", {"order_id": 1004, "amount_cents": 1_999, "reason": "dup"}, call_id="c2"),
            ],
            [assistant_message("Hi Grace, both refunds have been issued.")],
        ]
    )


def executed_steps(run: Run) -> list[str]:
    return [name for name, op in run.ops if op == "StepRun"]


async def test_two_refunds_from_one_email_have_unique_step_ids_that_never_shift(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    model = two_refund_model()
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        run = await engine.email(TWO_REFUNDS, resolver=approve_each)
    assert run.status == "completed", run.error
    used_up(model)  # every scripted turn was used, none twice
    # The agent's step opens both requests (reviewers told of both at once); each is waited on
    # and settled in turn; then the agent resumes from its journal and both are paid.
    assert trail(run) == [
        "run-agent",
        "await-approval-<request-1>-1",
        "settle-refund-<request-1>-1",
        "await-approval-<request-2>-1",
        "settle-refund-<request-2>-1",
        "resume-agent-<request-1>",
        "save-draft-reply",
    ]
    steps = executed_steps(run)
    assert len(steps) == len(set(steps)), steps  # no id repeats, so none depends on call order
    assert all(run.runs_of(name) == 1 for name in steps)  # each ran once: ids were stable across calls
    request_ids = sorted(r.request_id or "" for r in await db.list_refunds(pool))
    assert len(request_ids) == 2
    for request_id in request_ids:
        assert any(s.startswith(f"settle-refund-{request_id}") for s in steps), (request_id, steps)
    # Both tool calls were paid once each, in the resuming step, and journaled there.
    paid = [(e.segment, e.call_id) for e in await agent_journal.entries(pool, run_id=run.run_id) if e.kind == "tool"]
    assert paid == [(1, "c1"), (1, "c2")]
    # The agent's step opened each call's own request, told reviewers and read it once.
    [summary] = [memo["data"] for memo in run.memo.values() if isinstance(memo, dict) and "waiting" in memo["data"]][:1]
    opened = summary["waiting"]
    assert sorted(o["outcome"]["request_id"] for o in opened) == request_ids
    assert all(o["notified"] is not None and o["check"]["status"] == "pending" for o in opened)
    assert sorted(w.display_name for w, _ in run.waits) == sorted(f"await-approval-{r}-1" for r in request_ids)


async def test_a_malformed_decision_is_ignored_and_the_run_keeps_waiting_for_a_valid_one(engine: Engine) -> None:
    answers = iter(
        [
            lambda rid: approval(rid, "bad-1", approved="yes"),  # a stray event: wrong type, no effect
            lambda rid: approval(rid, "good-1"),
        ]
    )

    async def resolve(op: WaitOp) -> dict[str, Any]:
        return next(answers)(request_of(op))

    run = await engine.email({"customer_id": GRACE, "body": "I was charged twice for order 1003"}, resolver=resolve)
    assert run.status == "completed", run.error
    assert len(await db.list_refunds(engine.pool)) == 1
    [ignored] = await db.list_audit(engine.pool, action=db.AuditAction.DECISION_IGNORED)
    assert ignored.detail["why"].startswith("malformed decision: approved:")
    assert ignored.detail["current_status"] == "pending"
    # The stray event is set aside, Postgres re-read, and a second round waits for the valid one.
    assert trail(run)[1:] == [
        "await-approval-<request>-1",
        "ignore-decision-<request>-1",
        "check-decision-<request>-2",
        "await-approval-<request>-2",
        "settle-refund-<request>-2",
        "resume-agent-<request>",
        "save-draft-reply",
    ]
    first, second = (wait for wait, _ in run.waits)
    # The second wait is a new round for what is left of the original deadline, never more.
    assert first.timeout == "4h" and second.timeout in ("4h", "3h59m59s")
    assert [g["status"] for g in run.output["gate"]] == ["approved"]
    assert conversation.claims_refund(run.output["reply"]) and run.output["refund_ids"]


async def decide_in_postgres_only(pool: asyncpg.Pool, request_id: str) -> None:
    """A decision the desk recorded but whose announcement never reached the engine."""

    async def event_api_down(data: dict[str, Any]) -> None:
        raise ConnectionError("event API unreachable")

    decision = decisions.Decision(request_id=request_id, approved=True, reviewer="alice")
    outcome, announced = await decisions.submit_decision(pool, decision, announce=event_api_down, via="desk")
    assert outcome.applied and not announced


@pytest.mark.parametrize("when", ["announcement lost", "recorded between the check and the wait"])
async def test_a_decision_only_postgres_knows_settles_within_one_recheck_interval(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, when: str
) -> None:
    tuned = settings.model_copy(update={"decision_recheck_minutes": 10})
    async with serve(tuned, monkeypatch, pool) as engine:

        async def slice_passes_after_a_silent_decision(op: WaitOp) -> None:
            # Either way the engine never sees an event for this wait: it only times out.
            await decide_in_postgres_only(engine.pool, request_of(op))

        run = await engine.email(
            {"customer_id": GRACE, "body": "I was charged twice for order 1003"},
            resolver=slice_passes_after_a_silent_decision,
        )
    assert run.status == "completed", run.error
    assert [w.timeout for w, _ in run.waits] == ["10m"]  # one slice, then Postgres answered
    assert len(await db.list_refunds(pool)) == 1
    assert [e.action.value for e in await db.list_audit(pool, run_id=run.run_id)] == [
        "message_received",
        "refund_requested",
        "decision_recorded",
        "refund_issued",
        "email_drafted",
    ]
