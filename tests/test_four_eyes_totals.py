"""Four eyes on what an order, and a customer over REFUND_FOUR_EYES_WINDOW_DAYS, get refunded in
total (issue 21): asking in parts never lets one reviewer pay more than the limit."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from conftest import reset_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import ADA, GRACE

import db
from support_worker.workflows import decisions, refunds
from support_worker.workflows.policy import DEFAULT_FOUR_EYES_CENTS

LIMIT = DEFAULT_FOUR_EYES_CENTS  # $500.00


async def ask(
    pool: asyncpg.Pool, cents: int, call: str, *, order_id: int = 1001, customer_id: str = ADA
) -> db.RefundRequest:
    """A refund request as a paused run opens it; each call id is its own request."""
    opened = await refunds.open_request(
        pool,
        run_id=f"run-{call}",
        customer_id=customer_id,
        customer_message="",
        call_id=call,
        raw_arguments=json.dumps({"order_id": order_id, "amount_cents": cents, "reason": "in parts"}),
        ttl_seconds=3600,
    )
    assert opened.status == "pending" and opened.request_id, opened
    request = await db.get_refund_request(pool, request_id=opened.request_id)
    assert request is not None
    return request


async def approve(pool: asyncpg.Pool, request: db.RefundRequest, reviewer: str) -> decisions.DecisionOutcome:
    decision = decisions.Decision(request_id=request.id, approved=True, reviewer=reviewer)
    return await decisions.record_decision(pool, decision, decision_id=f"{request.id}:{reviewer}")


async def pay(pool: asyncpg.Pool, request: db.RefundRequest) -> refunds.Payment:
    return await refunds.pay_for_call(
        pool, run_id=request.run_id, customer_id=request.customer_id, tool_call_id=request.tool_call_id
    )


async def test_an_order_refunded_in_three_parts_needs_a_second_reviewer_for_the_part_crossing_the_limit(
    pool: asyncpg.Pool,
) -> None:
    first = await ask(pool, 45_000, "part-1")
    assert first.approvals_needed == 1
    assert (await approve(pool, first, "alice")).request.status == "approved"  # type: ignore[union-attr]
    assert (await pay(pool, first)).issued

    second = await ask(pool, 45_000, "part-2")
    assert second.approvals_needed == 2  # $450 issued + $450 asked = $900 on the order
    outcome = await approve(pool, second, "alice")
    assert outcome.applied and outcome.request and outcome.request.status == "pending"
    again = await approve(pool, second, "Alice ")
    assert (again.applied, again.reason) == (False, "same_reviewer")
    refused = await pay(pool, second)
    assert not refused.issued
    assert [r.amount_cents for r in await db.list_refunds(pool)] == [45_000]

    assert (await approve(pool, second, "bob")).request.status == "approved"  # type: ignore[union-attr]
    assert (await pay(pool, second)).issued
    third = await ask(pool, 39_900, "part-3")
    assert third.approvals_needed == 2
    requested = await db.list_audit(pool, action=db.AuditAction.REFUND_REQUESTED)
    assert [e.detail["four_eyes"]["order_total_cents"] for e in requested] == [45_000, 90_000, 129_900]


async def test_parts_asked_for_at_once_count_each_other(pool: asyncpg.Pool) -> None:
    parts = await asyncio.gather(*(ask(pool, 45_000, f"part-{n}") for n in range(3)))
    assert sorted(p.approvals_needed for p in parts) == [1, 2, 2]


async def test_a_refused_part_no_longer_counts(pool: asyncpg.Pool) -> None:
    first = await ask(pool, 45_000, "part-1")
    reject = decisions.Decision(request_id=first.id, approved=False, reviewer="alice")
    assert (await decisions.record_decision(pool, reject, decision_id="no")).applied
    assert (await ask(pool, 45_000, "part-2")).approvals_needed == 1


async def test_a_customer_refunded_across_orders_within_the_window_needs_two_reviewers(pool: asyncpg.Pool) -> None:
    license_refund = await ask(pool, 49_900, "license", order_id=1003, customer_id=GRACE)
    assert license_refund.approvals_needed == 1
    await approve(pool, license_refund, "alice")
    assert (await pay(pool, license_refund)).issued
    moth_kit = await ask(pool, 1_999, "moth-kit", order_id=1004, customer_id=GRACE)
    assert moth_kit.approvals_needed == 2  # $499.00 + $19.99 to Grace within 30 days


async def test_a_customer_refund_older_than_the_window_counts_only_on_its_own_order(pool: asyncpg.Pool) -> None:
    license_refund = await ask(pool, 49_900, "license", order_id=1003, customer_id=GRACE)
    await approve(pool, license_refund, "alice")
    assert (await pay(pool, license_refund)).issued
    await pool.execute("UPDATE refunds SET created_at = now() - interval '31 days'")
    assert (await ask(pool, 1_999, "moth-kit", order_id=1004, customer_id=GRACE)).approvals_needed == 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.integers(min_value=1_000, max_value=60_000), min_size=1, max_size=6), at_once=st.booleans())
async def test_one_reviewer_alone_never_pays_more_than_the_limit_however_it_is_asked_for(
    pool: asyncpg.Pool, parts: list[int], at_once: bool
) -> None:
    """Any split of an order's refund, asked in turn or all at once, each approved by alice
    alone: what is paid on her approval alone stays within the limit."""
    await reset_data(pool)
    calls = [f"part-{n}" for n in range(len(parts))]
    if at_once:
        opened = list(await asyncio.gather(*(ask(pool, c, call) for c, call in zip(parts, calls, strict=True))))
    else:
        opened = []
    for n, cents in enumerate(parts):
        request = opened[n] if at_once else await ask(pool, cents, calls[n])
        await approve(pool, request, "alice")
        await pay(pool, request)
    paid = sum(r.amount_cents for r in await db.list_refunds(pool))
    assert paid <= LIMIT, (parts, paid)
