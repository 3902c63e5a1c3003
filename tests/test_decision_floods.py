"""A flood of malformed or refused decisions never shortens a wait (issue 21): the request (or
the escalation) stays open until its own deadline, and a valid decision sent after the flood
still decides it. Driven like the engine, whose timeouts the driver answers at once: what a
run waited is read from its waits and sleeps, never from a clock."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from inngest_driver import Run, WaitOp
from test_escalation_gate import ESCALATION_FN, RECORDER_FN, decision_event, open_one, outcome_rows, requested
from tests_support import GRACE, Engine, serve

import db
import inngest_app
from support_worker.core.settings import Settings
from support_worker.durable import gates
from support_worker.durable.gates import MAX_IGNORED_DECISIONS

DEADLINE_SECONDS = 4 * 3600
SLICE_MINUTES = 10
CHARGED_TWICE = {"customer_id": GRACE, "body": "I was charged twice for order 1003"}


@pytest.fixture
async def sliced(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    tuned = settings.model_copy(update={"decision_recheck_minutes": SLICE_MINUTES})
    async with serve(tuned, monkeypatch, pool) as engine:
        yield engine


def _seconds(duration: str | None) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration or "")
    assert match and duration, duration
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def waited_out(run: Run, started: datetime) -> int:
    """Seconds the run spent waiting with nothing heard: waits that timed out, and sleeps."""
    timed_out = sum(_seconds(wait.timeout) for wait, memo in run.waits if memo is None)
    slept = sum(
        max(0, round((datetime.fromisoformat(wake.replace("Z", "+00:00")) - started).total_seconds()))
        for _, wake in run.sleeps
    )
    return timed_out + slept


def _malformed(request_id: str, n: int) -> dict[str, Any]:
    data = {"request_id": request_id, "approved": "yes", "reviewer": "flood@example.com"}
    return {"name": inngest_app.APPROVAL_DECIDED, "id": f"flood-{n}", "ts": 1_790_000_100_000, "data": data}


def _request_of(op: WaitOp) -> str:
    found = re.search(r'"(rr_[0-9a-f]+)"', op.if_exp or "")
    assert found, op.if_exp
    return found.group(1)


async def test_a_hundred_malformed_decisions_never_expire_a_request_before_its_deadline(sliced: Engine) -> None:
    heard = 0

    async def flood(op: WaitOp) -> dict[str, Any] | None:
        nonlocal heard
        heard += 1
        return _malformed(_request_of(op), heard) if heard <= 100 else None

    started = datetime.now().astimezone()
    run = await sliced.email(CHARGED_TWICE, resolver=flood)
    assert run.status == "completed", run.error
    assert await sliced.pool.fetchval("SELECT status FROM refund_requests") == "expired"
    # The run listened to a bounded number of them, then re-read Postgres slice by slice until
    # the whole deadline had passed: the flood cost it no waiting time at all.
    assert heard == MAX_IGNORED_DECISIONS
    assert waited_out(run, started) >= DEADLINE_SECONDS
    assert len(await db.list_audit(sliced.pool, action=db.AuditAction.DECISION_IGNORED)) == MAX_IGNORED_DECISIONS


async def test_a_valid_approval_sent_after_a_flood_still_decides_the_request(sliced: Engine) -> None:
    heard = 0

    async def flood_then_approve(op: WaitOp) -> dict[str, Any] | None:
        nonlocal heard
        heard += 1
        request_id = _request_of(op)
        if heard == MAX_IGNORED_DECISIONS:
            # The listening has stopped by the time a reviewer approves: the event reaches only
            # the recorder function, which writes it to Postgres, where the next slice reads it.
            await sliced.decide(request_id, approved=True, event_id="the-real-one", reviewer="alice")
        return _malformed(request_id, heard)

    run = await sliced.email(CHARGED_TWICE, resolver=flood_then_approve)
    assert run.status == "completed", run.error
    assert await sliced.pool.fetchval("SELECT status FROM refund_requests") == "approved"
    assert len(await db.list_refunds(sliced.pool)) == 1
    assert [g["status"] for g in run.output["gate"]] == ["approved"]


@pytest.mark.parametrize("approved_after_the_flood", [False, True])
async def test_a_flood_of_malformed_escalation_decisions_never_posts_without_review_early(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, approved_after_the_flood: bool
) -> None:
    tuned = settings.model_copy(update={"decision_recheck_minutes": SLICE_MINUTES})
    async with serve(tuned, monkeypatch, pool) as engine:
        escalation = await open_one(engine.pool)
        heard = 0

        async def flood(op: WaitOp) -> dict[str, Any] | None:
            nonlocal heard
            heard += 1
            if approved_after_the_flood and heard == MAX_IGNORED_DECISIONS:
                recorded = await engine.driver.run(RECORDER_FN, decision_event(escalation.id, "approve"))
                assert recorded.status == "completed", recorded.error
            return decision_event(escalation.id, "maybe", event_id=f"flood-{heard}") if heard <= 100 else None

        started = datetime.now().astimezone()
        run = await engine.driver.run(ESCALATION_FN, requested(escalation.id), resolver=flood)
    assert run.status == "completed", run.error
    assert heard == MAX_IGNORED_DECISIONS
    [row] = await outcome_rows(pool)
    if approved_after_the_flood:
        assert row.action.value == "escalation_approved"
    else:
        assert row.action.value == "escalation_posted_via_timeout"
        assert waited_out(run, started) >= DEADLINE_SECONDS


# --------------------------------------------------------------------------- the wait, on a virtual clock


class VirtualEngine:
    """A `gates.Step` on a virtual clock: a wait hears the next flood event at once (if any
    remain), or times out after its whole timeout; a sleep passes its duration. Postgres is a
    status and a deadline on the same clock, with a valid decision landing at `decided_at`."""

    def __init__(self, *, flood: int, decided_at: float | None, deadline: float) -> None:
        self.now = 0.0
        self.flood = flood
        self.decided_at = decided_at
        self.deadline = deadline
        self.step_ids: list[str] = []

    def status(self) -> str:
        return "approved" if self.decided_at is not None and self.decided_at <= self.now else "pending"

    async def run(self, step_id: str, handler: Any, *args: Any, **kwargs: Any) -> Any:
        self.step_ids.append(step_id)
        return await handler(*args)

    async def wait_for_event(self, step_id: str, *, event: str, if_exp: str | None, timeout: Any) -> Any:  # noqa: ASYNC109
        self.step_ids.append(step_id)
        if self.flood > 0:
            self.flood -= 1
            self.now += 1  # a flood event arrives a second into the wait
            return {"malformed": True}
        until = self.now + timeout.total_seconds()
        if self.decided_at is not None and self.now < self.decided_at <= until:
            # A decision whose event the gate hears (or that Postgres shows at the next check).
            self.now = self.decided_at
            return {"valid": True}
        self.now = until
        return None

    async def sleep(self, step_id: str, duration: Any) -> None:
        self.step_ids.append(step_id)
        self.now += duration.total_seconds()


@given(
    flood=st.integers(min_value=0, max_value=500),
    decided_at=st.one_of(st.none(), st.integers(min_value=1, max_value=DEADLINE_SECONDS - 1)),
    slice_minutes=st.integers(min_value=1, max_value=120),
)
@hypothesis_settings(max_examples=300, deadline=None)
async def test_no_flood_ends_a_wait_before_its_deadline_and_a_later_decision_still_settles_it(
    flood: int, decided_at: int | None, slice_minutes: int
) -> None:
    engine = VirtualEngine(flood=flood, decided_at=decided_at, deadline=DEADLINE_SECONDS)

    async def check() -> gates.DecisionCheck:
        return gates.DecisionCheck(status=engine.status(), seconds_left=engine.deadline - engine.now)

    async def on_event(event: Any, round_no: int) -> bool:
        return bool(event.get("valid"))  # a malformed event settles nothing

    wait = gates.SlicedWait(
        subject_id="rr_1",
        customer_id="c-4429",
        event="refund/approval.decided",
        check_prefix="check",
        await_prefix="await",
        sleep_prefix="recheck",
        timeout_seconds=DEADLINE_SECONDS,
        check=check,
        on_event=on_event,
    )
    await gates.wait_in_slices(engine, wait, recheck_seconds=slice_minutes * 60)
    if decided_at is None:
        assert engine.now >= DEADLINE_SECONDS  # it ended only when the deadline had passed
    else:
        assert engine.status() == "approved"  # the valid decision, however late, was heard or read
        assert engine.now <= decided_at + slice_minutes * 60 + MAX_IGNORED_DECISIONS
    assert len(engine.step_ids) == len(set(engine.step_ids))  # step ids never repeat
