"""The course's decisions, sent exactly as written: 001 D5's `refund/approval.decided` with
`{"customer_id": "c-4429", "approved": true}` (no request id, no reviewer) and 003 D7's
`escalation/decision.made` without a reviewer. They decide the customer's one pending
request; with none or several they change nothing and say to send `request_id`."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from inngest_driver import WaitOp, cel_match, timeout_resolver
from tests_support import ADA, DECISION_FN, GRACE, Engine, open_request, serve

import db
from support_worker.core import events
from support_worker.core.settings import Settings
from support_worker.workflows import escalations

CHARGED_TWICE = {"customer_id": GRACE, "subject": "Double charge", "body": "I was charged twice for order 1003"}
ESCALATION_FN = "escalate-with-human-approval"
ESCALATION_RECORDER_FN = "record-escalation-decision"


def course_approval(event_id: str, *, approved: bool = True, customer_id: str = GRACE) -> dict[str, Any]:
    """001 D5's decision, as the course tells the student to send it."""
    data = {"customer_id": customer_id, "approved": approved}
    return {"name": events.APPROVAL_DECIDED, "id": event_id, "ts": 1_790_000_100_000, "data": data}


def by_request(request_id: str, event_id: str, *, reviewer: str = "ops@example.com") -> dict[str, Any]:
    data = {"request_id": request_id, "approved": True, "reviewer": reviewer}
    return {"name": events.APPROVAL_DECIDED, "id": event_id, "ts": 1_790_000_100_000, "data": data}


def deliver(engine: Engine, *events_in_order: dict[str, Any]) -> Any:
    """The engine delivering each decision in turn, one per wait: to the recorder function, and
    to the waiting run when its match says so (None, a timeout, when it does not)."""
    queue = list(events_in_order)

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        if not queue:
            return None
        event = queue.pop(0)
        recorded = await engine.driver.run(DECISION_FN, event)
        assert recorded.status == "completed", recorded.error
        return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

    return resolve


async def rows(pool: asyncpg.Pool, action: db.AuditAction) -> list[db.AuditEntry]:
    return await db.list_audit(pool, action=action)


async def test_the_courses_approval_naming_only_the_customer_issues_their_one_pending_refund(engine: Engine) -> None:
    run = await engine.email(CHARGED_TWICE, resolver=deliver(engine, course_approval("course-approve")))
    assert run.status == "completed", run.error
    assert len(await rows(engine.pool, db.AuditAction.REFUND_ISSUED)) == 1
    [recorded] = await rows(engine.pool, db.AuditAction.DECISION_RECORDED)
    # Recorded as coming from the event, never as a named person.
    assert recorded.detail["reviewer"] == "event:course-approve"
    assert recorded.detail["approved"] is True
    request = await engine.pool.fetchrow("SELECT status, reviewer FROM refund_requests")
    assert dict(request) == {"status": "approved", "reviewer": "event:course-approve"}


async def test_the_courses_rejection_naming_only_the_customer_blocks_the_refund(engine: Engine) -> None:
    resolver = deliver(engine, course_approval("course-reject", approved=False))
    run = await engine.email(CHARGED_TWICE, resolver=resolver)
    assert run.status == "completed", run.error
    assert await rows(engine.pool, db.AuditAction.REFUND_ISSUED) == []
    [blocked] = await rows(engine.pool, db.AuditAction.REFUND_BLOCKED)
    assert blocked.detail["why"] == "rejected by reviewer"


async def test_a_customer_decision_with_two_pending_requests_is_ignored_and_the_run_waits_on(engine: Engine) -> None:
    # Another run's request for Grace is pending too, so "the customer's request" means nothing.
    other = await open_request(engine.pool, order_id=1004, cents=1_999)

    # With the other request pending, Grace's total is over REFUND_FOUR_EYES_CENTS, so four eyes
    # on totals (issue 21) asks two named reviewers of this run's request.
    reviewers = iter(["ops@example.com", "second@example.com"])

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        mine = await engine.pool.fetchval("SELECT id FROM refund_requests WHERE id <> $1", other.id)
        # The first delivery names only the customer; the run must hear it out and go on waiting.
        if op.display_name.endswith("-1"):
            event = course_approval("ambiguous")
        else:
            reviewer = next(reviewers)
            event = by_request(mine, f"named-{reviewer}", reviewer=reviewer)
        recorded = await engine.driver.run(DECISION_FN, event)
        assert recorded.status == "completed", recorded.error
        return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

    run = await engine.email(CHARGED_TWICE, resolver=resolve)
    assert run.status == "completed", run.error
    [ignored] = await rows(engine.pool, db.AuditAction.DECISION_IGNORED)
    assert ignored.customer_id == GRACE
    assert "2 pending refund requests" in ignored.detail["why"] and "send request_id" in ignored.detail["why"]
    # The run heard the ambiguous decision, left its request pending, and waited for the next
    # (then for the second of the two named approvals four eyes needs).
    waits = [wait.display_name for wait, _ in run.waits]
    assert len(waits) == 3, waits
    mine = await engine.pool.fetchrow("SELECT status, approvals_needed FROM refund_requests WHERE id <> $1", other.id)
    assert dict(mine) == {"status": "approved", "approvals_needed": 2}
    assert await engine.pool.fetchval("SELECT status FROM refund_requests WHERE id = $1", other.id) == "pending"
    assert len(await rows(engine.pool, db.AuditAction.REFUND_ISSUED)) == 1


async def test_a_customer_decision_with_nothing_pending_is_ignored_saying_to_send_request_id(engine: Engine) -> None:
    recorded = await engine.driver.run(DECISION_FN, course_approval("nothing-pending", customer_id=ADA))
    assert recorded.status == "completed", recorded.error
    assert recorded.output == {"applied": False, "reason": "no_pending_request"}
    [ignored] = await rows(engine.pool, db.AuditAction.DECISION_IGNORED)
    assert ignored.customer_id == ADA
    assert ignored.detail["why"] == (
        f"customer {ADA} has no pending refund request: send request_id to name the one you mean"
    )


async def test_a_decision_without_a_reviewer_is_refused_where_one_is_required(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    request = await open_request(pool, order_id=1003, cents=49_900)
    strict = settings.model_copy(update={"decisions_require_reviewer": True})
    async with serve(strict, monkeypatch, pool) as engine:
        recorded = await engine.driver.run(DECISION_FN, course_approval("no-reviewer"))
    assert recorded.output == {"applied": False, "reason": "reviewer_required"}
    [ignored] = await rows(pool, db.AuditAction.DECISION_IGNORED)
    assert "send reviewer" in ignored.detail["why"]
    assert await pool.fetchval("SELECT status FROM refund_requests WHERE id = $1", request.id) == "pending"


def test_reviewers_are_required_by_default_in_production_only(settings: Settings) -> None:
    assert settings.require_named_reviewer is False
    assert settings.model_copy(update={"decisions_require_reviewer": True}).require_named_reviewer is True
    assert Settings.model_fields["decisions_require_reviewer"].default is None  # production decides: on


async def test_four_eyes_is_not_satisfied_by_decisions_that_name_no_reviewer(engine: Engine) -> None:
    # Above REFUND_FOUR_EYES_CENTS: two named, different reviewers must approve.
    request = await open_request(engine.pool, order_id=1003, cents=49_900)
    await engine.pool.execute("UPDATE refund_requests SET approvals_needed = 2 WHERE id = $1", request.id)
    for n in (1, 2):
        recorded = await engine.driver.run(DECISION_FN, course_approval(f"anonymous-{n}"))
        assert recorded.output == {"applied": False, "reason": "named_reviewer_needed"}
    assert await engine.pool.fetchval("SELECT status FROM refund_requests WHERE id = $1", request.id) == "pending"
    assert await engine.pool.fetchval("SELECT count(*) FROM refund_approvals") == 0


async def test_a_named_approval_and_an_unnamed_one_are_not_four_eyes(engine: Engine) -> None:
    # The controls' reviewer identity (issue 21) and the course's optional reviewer together:
    # the named approval is recorded under its identity, the unnamed one is `event:<id>`, never
    # a second person, and a name spelled like an event reviewer is not a person either.
    request = await open_request(engine.pool, order_id=1003, cents=49_900)
    await engine.pool.execute("UPDATE refund_requests SET approvals_needed = 2 WHERE id = $1", request.id)
    first = await engine.driver.run(DECISION_FN, by_request(request.id, "named-alice", reviewer="  Alice "))
    assert first.output["applied"] is True
    for event in (course_approval("anonymous"), by_request(request.id, "posing", reviewer="EVENT:anonymous")):
        recorded = await engine.driver.run(DECISION_FN, event)
        assert recorded.output == {"applied": False, "reason": "named_reviewer_needed"}
    assert await engine.pool.fetchval("SELECT status FROM refund_requests WHERE id = $1", request.id) == "pending"
    assert [r["reviewer"] for r in await engine.pool.fetch("SELECT reviewer FROM refund_approvals")] == ["alice"]


async def test_the_wait_hears_a_customer_only_decision_for_its_customer_and_no_other(engine: Engine) -> None:
    run = await engine.email(CHARGED_TWICE, resolver=timeout_resolver)
    assert run.status == "completed", run.error
    wait, _ = run.waits[0]
    request_id = await engine.pool.fetchval("SELECT id FROM refund_requests")
    assert cel_match(wait.if_exp, candidate=course_approval("a"), trigger=wait.trigger)
    assert not cel_match(wait.if_exp, candidate=course_approval("b", customer_id=ADA), trigger=wait.trigger)
    # A decision naming another request of the same customer is that request's, not this one's.
    other = {**course_approval("c"), "data": {"customer_id": GRACE, "request_id": "rr_other", "approved": True}}
    assert not cel_match(wait.if_exp, candidate=other, trigger=wait.trigger)
    assert cel_match(wait.if_exp, candidate=by_request(request_id, "d"), trigger=wait.trigger)


# --------------------------------------------------------------------------- escalations


async def open_escalation(pool: asyncpg.Pool, key: str = "call_1") -> str:
    customer = await db.get_customer(pool, customer_id=GRACE)
    assert customer is not None
    ask = escalations.EscalationAsk(key=key, source="agent", reason="legal threat", summary="Threatens to sue.")
    opened = await escalations.open_escalation(
        pool, ask=ask, run_id=f"run-{key}", customer=customer, customer_message="My lawyer will call.", ttl_seconds=3600
    )
    return opened.id


def escalation_decision(event_id: str, **data: Any) -> dict[str, Any]:
    return {"name": events.ESCALATION_DECIDED, "id": event_id, "ts": 1_790_000_100_000, "data": data}


async def test_the_courses_escalation_decision_without_a_reviewer_settles_the_escalation(engine: Engine) -> None:
    escalation_id = await open_escalation(engine.pool)
    decision = escalation_decision("esc-approve", request_id=escalation_id, decision="approve")

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        recorded = await engine.driver.run(ESCALATION_RECORDER_FN, decision)
        assert recorded.status == "completed", recorded.error
        return decision if cel_match(op.if_exp, candidate=decision, trigger=op.trigger) else None

    requested = {"name": events.ESCALATION_REQUESTED, "id": "e1", "ts": 1_790_000_000_000}
    run = await engine.driver.run(ESCALATION_FN, requested | {"data": {"request_id": escalation_id}}, resolver=resolve)
    assert run.status == "completed", run.error
    assert run.output["status"] == "approved" and run.output["reviewer"] == "event:esc-approve"
    [approved] = await rows(engine.pool, db.AuditAction.ESCALATION_APPROVED)
    assert approved.detail["reviewer"] == "event:esc-approve"


async def test_an_escalation_decision_naming_only_the_customer_decides_their_one_escalation(engine: Engine) -> None:
    escalation_id = await open_escalation(engine.pool)
    decision = escalation_decision("esc-reject", customer_id=GRACE, decision="reject")
    recorded = await engine.driver.run(ESCALATION_RECORDER_FN, decision)
    assert recorded.output == {"applied": True, "reason": "recorded"}
    row = await engine.pool.fetchrow("SELECT status, reviewer FROM escalations WHERE id = $1", escalation_id)
    assert dict(row) == {"status": "rejected", "reviewer": "event:esc-reject"}


async def test_an_escalation_decision_naming_a_customer_with_two_is_ignored(engine: Engine) -> None:
    await open_escalation(engine.pool, "call_1")
    await open_escalation(engine.pool, "call_2")
    recorded = await engine.driver.run(
        ESCALATION_RECORDER_FN, escalation_decision("x", customer_id=GRACE, decision="approve")
    )
    assert recorded.output == {"applied": False, "reason": "several_pending_requests"}
    [ignored] = await rows(engine.pool, db.AuditAction.DECISION_IGNORED)
    assert "2 pending escalations: send request_id" in ignored.detail["why"]
    assert await engine.pool.fetchval("SELECT count(*) FROM escalations WHERE status = 'pending'") == 2
