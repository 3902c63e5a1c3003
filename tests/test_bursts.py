"""One answer to a burst: a customer's emails less than EMAIL_BURST_SECONDS apart are answered
together, by one run of the email function (Inngest debounce keyed on the customer).

The driver routes events as the engine does (`InngestDriver.deliver`): the recorder runs for
every event at once, the debounced email function once per burst with its last event. Every
message is answered exactly once: who answers it is its `message_received` row.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
from agents.testing import assistant_message
from inngest_driver import DriverError, Run
from tests_support import EMAIL_FN, GRACE, Engine, scripted, serve, used_up

import db
from support_worker.conversation import loop as conversation
from support_worker.core.events import EMAIL_RECEIVED, EMAILS_WAITING
from support_worker.core.settings import Settings
from support_worker.store import inbox
from support_worker.store.sample_data import ADA

RECORDER_FN = "record-customer-email"
T0 = 1_790_000_000_000  # ms
QUESTIONS = [
    ("Shipping", "Do you ship to Canada?"),
    ("Order 1004", "Also, where is my order 1004?"),
    ("Email", "And can I change the address you email me at?"),
]


def email(body: str, *, event_id: str, at_seconds: int, customer: str = GRACE, subject: str = "") -> dict[str, Any]:
    data = {"customer_id": customer, "subject": subject or None, "body": body}
    return {"name": EMAIL_RECEIVED, "id": event_id, "ts": T0 + at_seconds * 1000, "data": data}


def answers(runs: list[Run]) -> list[Run]:
    """The email function's runs that sent a reply."""
    return [r for r in runs if r.fn_id.endswith(EMAIL_FN) and (r.output or {}).get("status") == "drafted"]


async def owners(pool: asyncpg.Pool) -> dict[str, str]:
    """Event id -> the run that answers its message (its `message_received` row)."""
    rows = await pool.fetch(
        "SELECT detail->>'event_id' AS event_id, run_id FROM audit_log WHERE action = 'message_received'"
    )
    counted = Counter(r["event_id"] for r in rows)
    assert all(n == 1 for n in counted.values()), f"a message was claimed twice: {counted}"
    return {r["event_id"]: r["run_id"] for r in rows}


async def test_three_emails_within_a_minute_get_one_answer_that_reads_all_three(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    model = scripted([assistant_message("Yes, we ship to Canada; order 1004 is on its way; and yes, you can.")])
    burst = [
        email(body, event_id=f"evt-{n}", at_seconds=20 * n, subject=subj) for n, (subj, body) in enumerate(QUESTIONS)
    ]
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        runs = await engine.driver.deliver(burst)
    recorded = [r for r in runs if r.fn_id.endswith(RECORDER_FN)]
    emailed = [r for r in runs if r.fn_id.endswith(EMAIL_FN)]
    assert len(recorded) == 3 and all(r.status == "completed" for r in recorded)
    assert len(emailed) == 1, "debounce: one run for the burst"
    (answer,) = answers(runs)
    assert answer.event["id"] == "evt-2"  # the run gets the burst's last event
    # The model read all three, oldest first, in one input, and was asked once.
    used_up(model)
    (call,) = model.calls
    text = str(call.input)
    positions = [text.index(body) for _, body in QUESTIONS]
    assert positions == sorted(positions) and "3 emails in a row" in text
    assert await owners(pool) == {f"evt-{n}": answer.run_id for n in range(3)}
    replies = await pool.fetch("SELECT run_id FROM audit_log WHERE action = 'email_drafted'")
    assert [r["run_id"] for r in replies] == [answer.run_id]


async def test_emails_further_apart_than_the_period_are_answered_on_their_own(engine: Engine) -> None:
    runs = await engine.driver.deliver(
        [
            email("Do you ship to Canada?", event_id="evt-a", at_seconds=0),
            email("Thanks!", event_id="evt-b", at_seconds=120),
        ]
    )
    first, second = answers(runs)
    assert (first.event["id"], second.event["id"]) == ("evt-a", "evt-b")
    assert await owners(engine.pool) == {"evt-a": first.run_id, "evt-b": second.run_id}


async def test_each_customer_has_a_burst_of_their_own(engine: Engine) -> None:
    runs = await engine.driver.deliver(
        [
            email("Do you ship to Canada?", event_id="evt-grace", at_seconds=0),
            email("Do you ship to Peru?", event_id="evt-ada", at_seconds=5, customer=ADA),
        ]
    )
    assert sorted(r.event["id"] for r in answers(runs)) == ["evt-ada", "evt-grace"]


async def test_a_customer_who_keeps_writing_is_answered_by_the_timeout(engine: Engine) -> None:
    """Every 50 s for 7 minutes: the 5-minute timeout answers what came so far, then the rest."""
    steady = [email(f"Update {n}: still waiting.", event_id=f"evt-{n}", at_seconds=50 * n) for n in range(9)]
    runs = await engine.driver.deliver(steady)
    done = answers(runs)
    assert len(done) == 2
    owned = await owners(engine.pool)
    assert sorted(owned) == sorted(f"evt-{n}" for n in range(9))  # every message answered, once
    assert set(owned.values()) == {r.run_id for r in done}


async def test_a_message_stored_after_its_burst_was_gathered_asks_for_a_run_of_its_own(engine: Engine) -> None:
    """The recorder of an earlier email is late (a retried step, a slow database): the burst's
    run has already gathered. The recorder sees the sweep mark and asks for a run."""
    early, last = (
        email("Do you ship to Canada?", event_id="evt-early", at_seconds=0),
        email("Hello again.", event_id="evt-last", at_seconds=10),
    )
    gathered = await engine.driver.run(EMAIL_FN, last)
    assert gathered.output["status"] == "drafted"
    late = await engine.driver.run(RECORDER_FN, early)
    assert late.output["passed_over"] is True
    asked = [e for e in engine.stub.events if e.name == EMAILS_WAITING]
    assert [(e.idempotency_id, e.data) for e in asked] == [("waiting-evt-early", {"customer_id": GRACE})]
    rescue = await engine.driver.run(EMAIL_FN, asked[0])
    assert rescue.output["status"] == "drafted"
    assert await owners(engine.pool) == {"evt-last": gathered.run_id, "evt-early": rescue.run_id}


async def test_a_recorder_on_time_asks_for_nothing(engine: Engine) -> None:
    early = email("Do you ship to Canada?", event_id="evt-early", at_seconds=0)
    recorded = await engine.driver.run(RECORDER_FN, early)
    assert recorded.output["passed_over"] is False
    assert len(recorded.calls) == 2  # what bursts add per email: run the one step, then finish
    assert not [e for e in engine.stub.events if e.name == EMAILS_WAITING]


async def test_a_burst_that_ends_in_a_refused_email_still_answers_the_rest(engine: Engine) -> None:
    runs = await engine.driver.deliver(
        [
            email("Do you ship to Canada?", event_id="evt-good", at_seconds=0),
            email("   ", event_id="evt-empty", at_seconds=10),
        ]
    )
    (answer,) = answers(runs)
    assert answer.event["name"] == EMAILS_WAITING
    assert await owners(engine.pool) == {"evt-good": answer.run_id}
    rejected = await engine.pool.fetch("SELECT detail FROM audit_log WHERE action = 'event_rejected'")
    # The recorder and the email function both refused it: one row for the one event.
    assert [r["detail"]["event_id"] for r in rejected] == ["evt-empty"]


async def test_more_than_the_cap_waiting_are_answered_by_another_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    capped = settings.model_copy(update={"email_burst_max_messages": 2})
    burst = [email(body, event_id=f"evt-{n}", at_seconds=10 * n) for n, (_, body) in enumerate(QUESTIONS)]
    async with serve(capped, monkeypatch, pool) as engine:
        runs = await engine.driver.deliver(burst)
    first, second = answers(runs)
    owned = await owners(pool)
    assert Counter(owned.values()) == {first.run_id: 2, second.run_id: 1}
    assert second.event["name"] == EMAILS_WAITING


async def test_an_email_gathered_into_another_answer_ends_as_merged(engine: Engine) -> None:
    """Without debounce (or across two bursts racing), a run may find its email already taken
    into another run's answer: it ends as "merged", which is not a duplicate delivery."""
    first, second = email("Hi", event_id="evt-1", at_seconds=0), email("Hello?", event_id="evt-2", at_seconds=5)
    await engine.driver.run(RECORDER_FN, first)
    gathered = await engine.driver.run(EMAIL_FN, second)
    late = await engine.driver.run(EMAIL_FN, first)
    assert (late.output["status"], late.output["first_run_id"]) == ("merged", gathered.run_id)
    assert "event_duplicate" not in await engine.actions()


async def test_every_call_delivered_twice_still_answers_the_burst_once(engine: Engine) -> None:
    burst = [email(body, event_id=f"evt-{n}", at_seconds=10 * n) for n, (_, body) in enumerate(QUESTIONS)]
    runs = await engine.driver.deliver(burst, deliver_twice=True)
    (answer,) = answers(runs)
    assert set((await owners(engine.pool)).values()) == {answer.run_id}
    assert (await engine.actions()).count("email_drafted") == 1


async def test_a_replay_of_a_failed_burst_answers_every_message_it_had_gathered(engine: Engine) -> None:
    burst = [email(body, event_id=f"evt-{n}", at_seconds=10 * n) for n, (_, body) in enumerate(QUESTIONS)]
    for event in burst:
        await engine.driver.run(RECORDER_FN, event)
    with pytest.raises(DriverError):  # the first step gathered the burst, then the run was lost
        await engine.driver.run(EMAIL_FN, burst[-1], run_id="run-failed", max_calls=1)
    await db.record_audit(
        engine.pool,
        action=db.AuditAction.RUN_FAILED,
        run_id="run-failed",
        customer_id=GRACE,
        detail={"why": "test: retries exhausted"},
        idempotency_key="run_failed:run-failed",
    )
    replay = await engine.driver.run(EMAIL_FN, burst[-1])
    assert replay.output["status"] == "drafted"
    taken_over = await engine.pool.fetch(
        "SELECT detail->>'event_id' AS event_id FROM audit_log WHERE action = 'message_received' AND run_id = $1",
        replay.run_id,
    )
    assert sorted(r["event_id"] for r in taken_over) == ["evt-0", "evt-1", "evt-2"]


async def test_a_runs_own_email_is_never_up_for_grabs_before_the_run_claims_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without debounce (bursts off at the engine, or two bursts racing) runs of one customer
    overlap. A run's own email must enter the inbox already claimed: were it visible unclaimed
    for a moment, a concurrent run could gather it, and its own run would end "merged"."""
    seen_unclaimed: list[str] = []
    record_once = conversation.record_message_once

    async def peek_then_claim(conn: Any, **kwargs: Any) -> str:
        waiting = await inbox.waiting(engine.pool, customer_id=GRACE, limit=10)  # another connection
        seen_unclaimed.extend(entry.event_id for entry in waiting)
        return await record_once(conn, **kwargs)

    monkeypatch.setattr(conversation, "record_message_once", peek_then_claim)
    run = await engine.driver.run(EMAIL_FN, email("Do you ship to Canada?", event_id="evt-own", at_seconds=0))
    assert run.output["status"] == "drafted"
    assert seen_unclaimed == []


@pytest.mark.parametrize(
    ("data", "why"),
    [({"customer_id": "c-nobody"}, "unknown customer: customer_id c-nobody"), ({}, "customer_id: Field required")],
)
async def test_a_waiting_event_for_no_known_customer_is_rejected_once_with_why(
    engine: Engine, data: dict[str, Any], why: str
) -> None:
    run = await engine.driver.run(EMAIL_FN, {"name": EMAILS_WAITING, "id": "waiting-x", "ts": T0, "data": data})
    assert run.status == "failed" and run.calls[-1].no_retry
    rejected = await engine.pool.fetch("SELECT detail FROM audit_log WHERE action = 'event_rejected'")
    assert [(r["detail"]["event_id"], r["detail"]["why"]) for r in rejected] == [("waiting-x", why)]


async def test_a_resent_waiting_event_runs_again_and_finds_nothing_waiting(engine: Engine) -> None:
    """A retried `ask-for-a-run` step resends `waiting-…` under the same id. Inngest debounces
    before it checks the id (pkg/execution/executor/executor.go), so the email function takes
    the resend: inside the burst it extends it, after it another run answers nothing."""
    await engine.driver.run(RECORDER_FN, email("Do you ship to Canada?", event_id="evt-early", at_seconds=0))
    waiting = {"name": EMAILS_WAITING, "id": "waiting-evt-early", "data": {"customer_id": GRACE}}
    runs = await engine.driver.deliver(
        [waiting | {"ts": T0 + 10_000}, waiting | {"ts": T0 + 30_000}, waiting | {"ts": T0 + 300_000}]
    )
    emailed = [r for r in runs if r.fn_id.endswith(EMAIL_FN)]
    assert [r.output["status"] for r in emailed] == ["drafted", "nothing_waiting"]
    assert await owners(engine.pool) == {"evt-early": emailed[0].run_id}
    assert (await engine.actions()).count("email_drafted") == 1
