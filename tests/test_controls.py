"""Issue 13's controls: four eyes on large refunds, and a tamper-evident, append-only audit trail.

The durable scenarios run the served app through `tests/inngest_driver.py`; the chain is
checked by `store.ledger.verify_chain` and by `support-worker audit verify`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from inngest_driver import WaitOp, cel_match
from tests_support import GRACE, Engine, open_request

import db
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.cli import main as cli
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.store import ledger
from support_worker.store.sample_data import ADA
from support_worker.workflows import decisions, policy, refunds

ADA_CHARGED_TWICE = {"customer_id": ADA, "subject": "Double charge", "body": "I was charged twice for order 1001"}


def _order(amount_cents: int) -> db.Order:
    return db.Order(
        id=1001, customer_id=ADA, description="x", amount_cents=amount_cents, status="paid", refunded_cents=0,
        created_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


# --------------------------------------------------------------------------- four eyes


@pytest.mark.parametrize(("cents", "needed"), [(49_999, 1), (50_000, 1), (50_001, 2), (129_900, 2)])
def test_the_policy_asks_two_reviewers_only_strictly_above_the_limit(cents: int, needed: int) -> None:
    verdict = policy.refund_policy(_order(129_900), customer_id=ADA, order_id=1001, amount_cents=cents)
    assert verdict.allowed and verdict.needs_human
    assert verdict.approvals_needed == needed


def _seconds(duration: str | None) -> int:
    """A wait's timeout as the SDK writes it ("4h", "3h59m59s") in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration or "")
    assert match and duration, duration
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _reviewers(engine: Engine, decisions: list[tuple[str, bool]]) -> Any:
    """A resolver playing one reviewer per wait, each deciding while the run waits."""
    queue = list(decisions)

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        if not queue:
            return None
        request_id = await engine.pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'")
        name, approved = queue.pop(0)
        event_id = f"dec-{len(queue)}-{name}"
        event, _ = await engine.decide(request_id, approved=approved, event_id=event_id, reviewer=name)
        return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

    return resolve


async def test_a_large_refund_is_paid_once_only_after_two_different_reviewers_approve(engine: Engine) -> None:
    run = await engine.email(ADA_CHARGED_TWICE, resolver=_reviewers(engine, [("alice", True), ("bob", True)]))
    assert run.status == "completed", run.error
    paid = await db.list_refunds(engine.pool)
    assert [(r.order_id, r.amount_cents) for r in paid] == [(1001, 129_900)]
    request_id = paid[0].request_id
    # The run waited twice, within the one deadline: the second wait is shorter than the first.
    names = [wait.display_name for wait, _ in run.waits]
    assert names == [f"await-approval-{request_id}-1", f"await-approval-{request_id}-2"]
    assert [_seconds(wait.timeout) <= 4 * 3600 for wait, _ in run.waits] == [True, True]
    deadline = await engine.pool.fetchval("SELECT expires_at - created_at FROM refund_requests")
    assert deadline.total_seconds() == 4 * 3600  # never extended by the first approval
    recorded = await db.list_audit(engine.pool, action=db.AuditAction.DECISION_RECORDED)
    assert [(e.detail["reviewer"], e.detail["approvals"]) for e in recorded] == [("alice", "1 of 2"), ("bob", "2 of 2")]
    issued = await db.list_audit(engine.pool, action=db.AuditAction.REFUND_ISSUED)
    assert issued[0].detail["approvers"] == ["alice", "bob"]
    assert "has been issued" in run.output["reply"]
    assert (await ledger.verify_chain(engine.pool)).broken is None


async def test_the_same_reviewer_approving_twice_counts_once(engine: Engine) -> None:
    run = await engine.email(ADA_CHARGED_TWICE, resolver=_reviewers(engine, [("alice", True), ("alice", True)]))
    request = await engine.pool.fetchrow("SELECT id, status FROM refund_requests")
    assert await db.list_refunds(engine.pool) == []
    ignored = await db.list_audit(engine.pool, action=db.AuditAction.DECISION_IGNORED)
    assert [(e.detail["why"], e.detail["reviewer"]) for e in ignored] == [("same_reviewer", "alice")]
    recorded = await db.list_audit(engine.pool, action=db.AuditAction.DECISION_RECORDED)
    assert [e.detail["approvals"] for e in recorded] == ["1 of 2"]
    # Nobody else approved before the deadline: it expired, and nothing was paid.
    assert run.status == "completed" and request["status"] == "expired"


async def test_a_rejection_by_either_reviewer_ends_a_four_eyes_refund(engine: Engine) -> None:
    run = await engine.email(ADA_CHARGED_TWICE, resolver=_reviewers(engine, [("alice", True), ("bob", False)]))
    assert run.status == "completed", run.error
    assert await db.list_refunds(engine.pool) == []
    assert await engine.pool.fetchval("SELECT status FROM refund_requests") == "rejected"
    blocked = await db.list_audit(engine.pool, action=db.AuditAction.REFUND_BLOCKED)
    assert blocked[0].detail["reviewer"] == "bob"
    assert "no refund has been issued" in run.output["reply"]


async def test_two_edited_amounts_pay_the_lower_and_the_later_reply(pool: asyncpg.Pool) -> None:
    request = await open_request(pool, customer_id=ADA, order_id=1001, cents=129_900)
    assert request.approvals_needed == 2
    first = decisions.Decision(request_id=request.id, approved=True, reviewer="alice", amount_cents=100_000)
    second = decisions.Decision(
        request_id=request.id, approved=True, reviewer="bob", amount_cents=110_000, reply="Bob's reply"
    )
    one = await decisions.record_decision(pool, first, decision_id="d-alice")
    assert one.applied and one.request and one.request.status == "pending" and one.approvers == ["alice"]
    two = await decisions.record_decision(pool, second, decision_id="d-bob")
    assert two.request and two.request.status == "approved" and two.approvers == ["alice", "bob"]
    assert two.request.approved_amount_cents == 100_000 and two.request.edited_reply == "Bob's reply"
    paid = await refunds.pay_for_call(pool, run_id=request.run_id, customer_id=ADA, tool_call_id=request.tool_call_id)
    assert paid.refund is not None and paid.refund.amount_cents == 100_000
    # A redelivered first approval is the same decision, not a conflict.
    again = await decisions.record_decision(pool, first, decision_id="d-alice")
    assert again.reason == "same_decision"


async def test_a_refund_at_the_limit_needs_one_reviewer(pool: asyncpg.Pool) -> None:
    request = await open_request(pool, customer_id=GRACE, order_id=1003, cents=49_900)
    decision = decisions.Decision(request_id=request.id, approved=True, reviewer="alice")
    outcome = await decisions.record_decision(pool, decision, decision_id="d1")
    assert outcome.request and outcome.request.status == "approved" and request.approvals_needed == 1


async def test_payment_refuses_a_four_eyes_request_approved_behind_the_workflow(pool: asyncpg.Pool) -> None:
    request = await open_request(pool, customer_id=ADA, order_id=1001, cents=129_900)
    await pool.execute("UPDATE refund_requests SET status = 'approved' WHERE id = $1", request.id)
    paid = await refunds.pay_for_call(pool, run_id=request.run_id, customer_id=ADA, tool_call_id=request.tool_call_id)
    assert not paid.issued and "2 different reviewers" in paid.explanation
    assert await db.list_refunds(pool) == []


async def test_the_terminal_runner_asks_for_two_approvals(pool: asyncpg.Pool, settings: Settings) -> None:
    asked: list[str] = []

    async def two_people(request: db.RefundRequest) -> decisions.Decision:
        name = ["alice", "bob"][len(asked)]
        asked.append(name)
        return decisions.Decision(request_id=request.id, approved=True, reviewer=name)

    outcome = await conversation.answer_email(
        pool, customer_id=ADA, body=ADA_CHARGED_TWICE["body"], decide=two_people, settings=settings,
        model=OfflineSupportModel(),
    )  # fmt: skip
    assert asked == ["alice", "bob"]
    assert [g.status for g in outcome.gate] == ["approved"] and len(outcome.refunds_issued) == 1


async def test_the_terminal_runner_never_pays_one_reviewer_twice(pool: asyncpg.Pool, settings: Settings) -> None:
    async def one_person(request: db.RefundRequest) -> decisions.Decision:
        return decisions.Decision(request_id=request.id, approved=True, reviewer="command-line")

    outcome = await conversation.answer_email(
        pool, customer_id=ADA, body=ADA_CHARGED_TWICE["body"], decide=one_person, settings=settings,
        model=OfflineSupportModel(),
    )  # fmt: skip
    assert [g.status for g in outcome.gate] == ["expired"] and outcome.refunds_issued == []


# --------------------------------------------------------------------------- the audit chain


async def _write(pool: asyncpg.Pool, n: int, *, key: str | None = None) -> None:
    await db.record_audit(
        pool, action=db.AuditAction.REPLY_SENT, run_id=f"run-{n}", customer_id=GRACE, detail={"n": n},
        idempotency_key=key,
    )  # fmt: skip


async def test_the_chain_verifies_after_fifty_concurrent_writers(pool: asyncpg.Pool) -> None:
    # Every fifth write repeats a key: ON CONFLICT drops it, and the chain must not notice.
    await asyncio.gather(*(_write(pool, n, key="repeated" if n % 5 == 0 else None) for n in range(50)))
    rows = await pool.fetch("SELECT chain_seq FROM audit_log ORDER BY chain_seq")
    assert len(rows) == 41 and [r["chain_seq"] for r in rows] == list(range(1, 42))
    report = await ledger.verify_chain(pool)
    assert report.broken is None and report.verified == 41 and report.head_hash


async def _behind_the_apps_back(pool: asyncpg.Pool, sql: str, *args: Any) -> None:
    """What a superuser could do: switch the append-only trigger off, change a row, switch it on."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


async def test_verify_names_a_row_altered_behind_the_apps_back(
    pool: asyncpg.Pool, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(5):
        await _write(pool, n)
    assert await cli.run_async(cli.parser().parse_args(["audit", "verify"]), settings) == 0
    assert "audit chain verified: 5 rows" in capsys.readouterr().out
    altered = await pool.fetchval("SELECT id FROM audit_log WHERE chain_seq = 3")
    await _behind_the_apps_back(pool, "UPDATE audit_log SET detail = '{\"n\": 99}' WHERE id = $1", altered)
    report = await ledger.verify_chain(pool)
    assert report.broken and report.broken.audit_id == altered and report.verified == 2
    assert "altered" in report.broken.why
    assert await cli.run_async(cli.parser().parse_args(["audit", "verify"]), settings) == 1
    said = capsys.readouterr().out
    assert f"audit row {altered}" in said and "2 rows verified before it" in said


async def test_verify_names_the_row_after_a_removed_one_and_a_removed_tail(pool: asyncpg.Pool) -> None:
    for n in range(5):
        await _write(pool, n)
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM audit_log ORDER BY chain_seq")]
    await _behind_the_apps_back(pool, "DELETE FROM audit_log WHERE id = $1", ids[2])
    report = await ledger.verify_chain(pool)
    assert report.broken and report.broken.audit_id == ids[3] and "missing" in report.broken.why
    await _behind_the_apps_back(pool, "DELETE FROM audit_log WHERE id = ANY($1::bigint[])", ids[2:])
    tail = await ledger.verify_chain(pool)
    assert tail.broken and tail.broken.audit_id is None and "removed" in tail.broken.why


async def test_the_database_refuses_update_and_delete_on_the_audit_log(pool: asyncpg.Pool) -> None:
    await _write(pool, 1)
    for sql in ("UPDATE audit_log SET detail = '{}'", "DELETE FROM audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_log is append-only"):
            await pool.execute(sql)
    assert (await ledger.verify_chain(pool)).verified == 1


async def test_truncate_restarts_the_chain(pool: asyncpg.Pool) -> None:
    for n in range(3):
        await _write(pool, n)
    await pool.execute("TRUNCATE audit_log")
    await _write(pool, 9)
    assert await pool.fetchval("SELECT chain_seq FROM audit_log") == 1
    assert (await ledger.verify_chain(pool)).verified == 1


def _documented_grants(role: str) -> str:
    """The SQL block under docs/controls.md's "Grants on Neon", for this role."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "controls.md").read_text()
    after = page[page.index("## Grants on Neon") :]
    block = after[after.index("```sql\n") + len("```sql\n") : after.index("```", after.index("```sql\n") + 6)]
    return block.replace("support_app", role)


async def test_the_documented_grants_let_the_app_append_but_never_change_the_audit_log(pool: asyncpg.Pool) -> None:
    role = f"sw_app_{uuid.uuid4().hex[:10]}"  # roles belong to the whole server: one per test
    async with pool.acquire() as conn:
        await conn.execute(_documented_grants(role))
        try:
            await conn.execute(f'SET ROLE "{role}"')
            assert await db.record_audit(conn, action=db.AuditAction.REPLY_SENT, run_id="r", customer_id=GRACE)
            refused = [
                "UPDATE audit_log SET detail = '{}'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
                "UPDATE audit_chain_head SET last_seq = 0",
                "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
            ]
            for sql in refused:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
            assert (await ledger.verify_chain(pool)).verified == 1
        finally:
            await conn.execute("RESET ROLE")
            await conn.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
