"""Reviewer notifications, approve-with-edits, outreach rules, withdrawal, live status and
error monitoring: the production behaviours around the refund gate and the morning check."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import openai
import pytest
from agents import OpenAIResponsesModel
from agents.testing import assistant_message, function_call
from fake_openai import FakeOpenAI, answer
from inngest_driver import Run, WaitOp, cel_match, timeout_resolver
from tests_support import (
    GRACE,
    CaptureServer,
    CountingModel,
    Engine,
    open_request,
    pay_refund,
    scripted,
    serve,
    trail,
    used_up,
)

import db
import inngest_app
from support_worker.cli import main as cli
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.store import agent_journal, reviews
from support_worker.store.sample_data import ADA, ALAN

CHARGED_TWICE = {"customer_id": GRACE, "body": "I was charged twice for order 1003"}
ALICE = ("alice", "alice-pw")


def step_named(run: Run, prefix: str) -> str:
    """The one step whose id starts with `prefix` (ids carry the request id)."""
    [name] = {name for name, _ in run.ops if name.startswith(prefix)}
    return name


def decision(request_id: str, event_id: str, **data: Any) -> dict[str, Any]:
    body = {"request_id": request_id, "approved": True, "reviewer": "ops@example.com"} | data
    return {"name": inngest_app.APPROVAL_DECIDED, "id": event_id, "ts": 1_790_000_100_000, "data": body}


async def pending_id(pool: asyncpg.Pool) -> str:
    return str(await pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'"))


def decisions_in_turn(engine: Engine, *makers: Callable[[str], dict[str, Any]]) -> Callable[[WaitOp], Any]:
    """Each wait gets the next decision (also delivered to the recorder function)."""
    queue = list(makers)

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        event = queue.pop(0)(await pending_id(engine.pool))
        await engine.driver.run("record-refund-decision", event)
        return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

    return resolve


# --------------------------------------------------------------------------- notifications


async def test_reviewers_are_notified_once_with_what_they_need(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    with CaptureServer() as slack:
        tuned = settings.model_copy(
            update={"reviewer_webhook_url": f"{slack.url}/hooks/T0/B0/x", "public_url": "https://support.example"}
        )
        async with serve(tuned, monkeypatch, pool) as engine:
            run = await engine.email(
                CHARGED_TWICE, deliver_twice=True, resolver=decisions_in_turn(engine, lambda r: decision(r, "d1"))
            )
    assert run.status == "completed", run.error
    assert len(slack.requests) == 1  # every call was delivered twice; the notice went once
    path, body = slack.requests[0]
    text = json.loads(body)["text"]
    request = (await db.list_refunds(pool))[0].request_id
    for expected in (
        "$499.00",
        "order 1003",
        "Grace Hopper",
        "charged twice",
        f"https://support.example/reviews#{request}",
        "Decide by ",
    ):
        assert expected in text
    assert path == "/hooks/T0/B0/x"
    assert [e.action.value for e in await db.list_audit(pool)].count("reviewer_notified") == 1


async def test_a_failing_notifier_is_retried_and_never_loses_the_request(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    with CaptureServer(fail_first=2) as slack:
        tuned = settings.model_copy(update={"reviewer_webhook_url": slack.url, "reviewer_notify_attempts": 3})
        async with serve(tuned, monkeypatch, pool) as engine:
            run = await engine.email(CHARGED_TWICE, resolver=decisions_in_turn(engine, lambda r: decision(r, "d1")))
    assert run.status == "completed"
    # The notice is retried inside the step that opens the request: one step, three tries.
    assert trail(run).count("run-agent") == 1 and len(slack.requests) == 3
    assert [e.action.value for e in await db.list_audit(pool)].count("reviewer_notified") == 1
    assert len(await db.list_refunds(pool)) == 1


async def test_a_dead_notifier_does_not_stop_the_refund(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    with CaptureServer(fail_first=100) as slack:
        tuned = settings.model_copy(update={"reviewer_webhook_url": slack.url, "reviewer_notify_attempts": 3})
        async with serve(tuned, monkeypatch, pool) as engine:
            run = await engine.email(CHARGED_TWICE, resolver=decisions_in_turn(engine, lambda r: decision(r, "d1")))
    assert run.status == "completed", run.error
    # Three quick tries per attempt; every attempt but the last retried the step (the engine's
    # backoff), the last recorded the failure and went on: the request stood. Every retry
    # replayed the model's turns from the journal: each was asked for once.
    assert run.runs_of("run-agent") == 5 and len(slack.requests) == 5 * 3
    assert [e.kind for e in await agent_journal.entries(pool, run_id=run.run_id) if e.segment == 0] == [
        "intake",
        "model",
        "tool",
        "model",
        "gate",
    ]
    assert len(await db.list_refunds(pool)) == 1
    actions = [e.action.value for e in await db.list_audit(pool)]
    assert "reviewer_notified" not in actions
    [failed] = await db.list_audit(pool, action=db.AuditAction.REVIEWER_NOTIFY_FAILED)
    request_id = (await db.list_refunds(pool))[0].request_id
    assert failed.detail["request_id"] == request_id
    assert "500" in failed.detail["error"]


async def test_without_a_webhook_url_the_opening_step_says_no_one_was_notified(engine: Engine) -> None:
    run = await engine.email(CHARGED_TWICE, resolver=timeout_resolver)
    [summary] = [v["data"] for v in run.memo.values() if isinstance(v, dict) and (v.get("data") or {}).get("waiting")]
    [opened] = summary["waiting"]
    assert opened["notified"] == {"sent": False, "why": "REVIEWER_WEBHOOK_URL is not set, so no one was notified"}


# --------------------------------------------------------------------------- approve with edits


async def test_an_edited_approval_pays_the_lower_amount_and_sends_the_reviewers_reply(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    reply = "Hi Grace,\n\nwe have refunded $100.00 of order 1003 as a goodwill gesture.\n\nThe Support Team"
    draft = "Hi Grace, a refund of $499.00 for order 1003 has been issued."  # the agent's, now untrue
    model = scripted(
        [function_call("issue_refund", {"order_id": 1003, "amount_cents": 49_900, "reason": "dup"}, call_id="c1")],
        [assistant_message(draft)],
    )
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        run = await engine.email(
            CHARGED_TWICE,
            resolver=decisions_in_turn(engine, lambda r: decision(r, "d1", amount_cents=10_000, reply=reply)),
        )
    assert run.status == "completed", run.error
    used_up(model)
    assert trail(run) == [
        "run-agent",
        "await-approval-<request>-1",
        "settle-refund-<request>-1",
        "resume-agent-<request>",
        "save-draft-reply",
    ]
    assert [(r.order_id, r.amount_cents) for r in await db.list_refunds(engine.pool)] == [(1003, 10_000)]
    # The reviewer's words replace the agent's draft; the model still heard it was approved.
    assert run.output["reply"] == reply and run.output["edited_by_reviewer"] is True
    assert [g["status"] for g in run.output["gate"]] == ["approved"] and len(run.output["refund_ids"]) == 1
    recorded = (await db.list_audit(engine.pool, action=db.AuditAction.DECISION_RECORDED))[0].detail
    assert recorded["edits"] == {
        "amount_cents": {"requested": 49_900, "approved": 10_000},
        "reply": "replaced by the reviewer",
    }
    assert recorded["reviewer"] == "ops@example.com"
    issued = (await db.list_audit(engine.pool, action=db.AuditAction.REFUND_ISSUED))[0].detail
    assert (issued["amount_cents"], issued["requested_cents"]) == (10_000, 49_900)


async def test_an_edit_that_raises_the_amount_is_refused_and_the_run_keeps_waiting(engine: Engine) -> None:
    run = await engine.email(
        CHARGED_TWICE,
        resolver=decisions_in_turn(
            engine,
            lambda r: decision(r, "d-raise", amount_cents=99_900),
            lambda r: decision(r, "d-ok"),
        ),
    )
    assert run.status == "completed", run.error
    assert len(run.waits) == 2
    ignored = await db.list_audit(engine.pool, action=db.AuditAction.DECISION_IGNORED)
    assert [e.detail["why"] for e in ignored] == ["amount_raised"]
    assert [r.amount_cents for r in await db.list_refunds(engine.pool)] == [49_900]


async def test_the_desk_and_the_cli_offer_edited_approvals(doors_engine: Engine, settings: Settings) -> None:
    engine = doors_engine
    first = await open_request(engine.pool, order_id=1003, cents=49_900)
    # Another customer's: Grace's $499.00 and $19.99 together would need two reviewers.
    second = await open_request(engine.pool, customer_id=ALAN, order_id=1006, cents=1_999)
    http = engine.driver.http
    page = (await http.get("/reviews", auth=ALICE)).text
    token = re.search(rf'id="{first.id}".*?name="csrf" value="([^"]+)"', page, re.S)
    assert token is not None
    raised = {"decision": "approve", "amount": "600.00", "csrf": token.group(1)}
    res = await http.post(f"/reviews/{first.id}", data=raised, auth=ALICE, follow_redirects=True)
    assert "may only lower the amount" in res.text
    lowered = raised | {"amount": "$120.50", "reply": "Hi Grace, we refunded part of it."}
    res = await http.post(f"/reviews/{first.id}", data=lowered, auth=ALICE, follow_redirects=True)
    assert f"Approved refund {first.id} for order 1003 at $120.50 (lowered from $499.00) with your reply." in res.text
    assert engine.stub.events[-1].data["amount_cents"] == 12_050

    args = cli.parser().parse_args(["approve", second.id, "--reviewer", "carol", "--amount", "5"])
    assert await cli.run_async(args, settings) == 0
    stored = await db.get_refund_request(engine.pool, request_id=second.id)
    assert stored is not None and stored.approved_amount_cents == 500 and stored.reviewer == "carol"


@pytest.fixture
async def doors_engine(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> Any:
    async with serve(settings.model_copy(update={"review_desk_users": "alice:alice-pw"}), monkeypatch, pool) as e:
        yield e


# --------------------------------------------------------------------------- withdrawal


async def test_a_withdrawal_ends_the_waiting_run_without_a_refund(engine: Engine) -> None:
    async def customer_withdraws(op: WaitOp) -> dict[str, Any] | None:
        withdrawal = {
            "name": inngest_app.REFUND_WITHDRAWN,
            "id": "w1",
            "data": {"customer_id": GRACE, "order_id": 1003, "reason": "found the charge was a hold"},
        }
        recorded = await engine.driver.run("withdraw-refund-request", withdrawal)
        assert recorded.output["withdrawn"] is True
        wake = engine.stub.events[-1].as_event()
        return wake if cel_match(op.if_exp, candidate=wake, trigger=op.trigger) else None

    run = await engine.email(CHARGED_TWICE, resolver=customer_withdraws)
    assert run.status == "completed", run.error
    assert await db.list_refunds(engine.pool) == []
    assert [e.action.value for e in await db.list_audit(engine.pool, run_id=run.run_id)] == [
        "message_received",
        "refund_requested",
        "refund_withdrawn",
        "email_drafted",
    ]
    assert [g["status"] for g in run.output["gate"]] == ["withdrawn"] and run.output["refund_ids"] == []
    assert not conversation.claims_refund(run.output["reply"])
    assert trail(run)[-4:] == [
        "await-approval-<request>-1",
        "settle-refund-<request>-1",
        "resume-agent-<request>",
        "save-draft-reply",
    ]
    assert await reviews.list_pending_reviews(engine.pool) == []
    late = await engine.driver.run(
        "withdraw-refund-request", {"name": inngest_app.REFUND_WITHDRAWN, "id": "w2", "data": {"request_id": "rr_x"}}
    )
    assert late.output == {"withdrawn": False, "request_id": "rr_x", "reason": "unknown_request"}
    assert [e.detail["why"] for e in await db.list_audit(engine.pool, action=db.AuditAction.DECISION_IGNORED)] == [
        "unknown_request"
    ]


async def test_a_malformed_withdrawal_is_rejected(engine: Engine) -> None:
    run = await engine.driver.run("withdraw-refund-request", {"name": inngest_app.REFUND_WITHDRAWN, "data": {}})
    assert run.status == "failed" and run.calls[0].no_retry
    rejected = await db.list_audit(engine.pool)
    assert [(e.action.value, e.detail["why"]) for e in rejected] == [
        ("event_rejected", "data: Value error, give request_id, or customer_id and order_id")
    ]


# --------------------------------------------------------------------------- outreach rules


async def test_a_replayed_tick_for_a_past_day_ignores_contacts_made_after_it(engine: Engine) -> None:
    await engine.email({"customer_id": GRACE, "body": "Do you ship to Canada?"})  # Grace got a reply today
    last_week = (datetime.now(UTC).date() - timedelta(days=7)).isoformat()
    tick = {"name": "inngest/scheduled.timer", "data": {"day": last_week}}
    run = await engine.driver.run("daily-customer-health-check", tick)
    assert run.output["skipped"] == {"free_tier": 3, "contacted_recently": 0}


async def test_the_cron_skips_recently_contacted_customers_and_says_why(engine: Engine) -> None:
    await engine.email({"customer_id": GRACE, "body": "Do you ship to Canada?"})  # Grace got a reply today
    now_ms = int(datetime.now(UTC).timestamp() * 1000) + 60_000  # a tick just after the reply
    tick = {"name": "inngest/scheduled.timer", "id": "t", "ts": now_ms, "data": {}}
    run = await engine.driver.run("daily-customer-health-check", tick)
    assert run.output["scheduled"] == 2
    assert run.output["skipped"] == {"free_tier": 3, "contacted_recently": 1}
    assert "in the last 7 days" in run.output["skipped_reasons"]["contacted_recently"]
    assert sorted(e.data["customer_id"] for e in engine.stub.events) == [ADA, ALAN]


async def test_an_outreach_note_is_recorded_and_the_next_morning_leaves_the_customer_alone(engine: Engine) -> None:
    today = datetime.now(UTC).date().isoformat()
    next_day = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    for order_id, cents in ((1006, 15_000), (1007, 899)):  # Alan: refund-heavy, so at risk
        await pay_refund(engine.pool, customer_id=ALAN, order_id=order_id, cents=cents)
    child = await engine.driver.run(
        "process-customer-health-check",
        {"name": inngest_app.HEALTH_CHECK_REQUESTED, "id": "h3", "data": {"customer_id": ALAN, "day": today}},
    )
    assert child.output["status"] == "at_risk"
    outreach = await db.list_audit(engine.pool, action=db.AuditAction.OUTREACH_RECORDED)
    assert [(e.customer_id, e.detail["day"]) for e in outreach] == [(ALAN, today)]
    tomorrow = await engine.driver.run(
        "daily-customer-health-check", {"name": "inngest/scheduled.timer", "data": {"day": next_day}}
    )
    assert tomorrow.output["skipped"]["contacted_recently"] == 1
    assert 3 not in [e.data["customer_id"] for e in engine.stub.events]


# --------------------------------------------------------------------------- live status


async def test_the_status_stream_follows_a_run_live(doors_engine: Engine) -> None:
    engine = doors_engine
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def approve_after_stream_opens(op: WaitOp) -> dict[str, Any] | None:
        # The stream is opened while the run waits and must follow it to its end. Its lines come
        # from the run's audit rows in order, so no pause is needed for it to catch up.
        run_id = await engine.pool.fetchval("SELECT run_id FROM refund_requests LIMIT 1")
        started.set_result(run_id)
        return await decisions_in_turn(engine, lambda r: decision(r, "d1"))(op)

    async def watch() -> list[dict[str, Any]]:
        run_id = await started
        res = await engine.driver.http.get(f"/runs/{run_id}/status", auth=ALICE)
        assert res.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in res.text.splitlines() if line.startswith("data: ")]

    watcher = asyncio.create_task(watch())
    run = await engine.email(CHARGED_TWICE, resolver=approve_after_stream_opens)
    lines = await asyncio.wait_for(watcher, timeout=30)
    assert run.status == "completed"
    assert [line["line"] for line in lines] == [
        "received, drafting a reply",
        "waiting for approval",
        "decision recorded",
        "refund issued",
        "reply drafted",
    ]
    assert (await engine.driver.http.get(f"/runs/{run.run_id}/status")).status_code == 401


# --------------------------------------------------------------------------- error monitoring


@pytest.mark.fake_openai  # the first email goes through the OpenAI client, to a fake server
async def test_failures_are_reported_to_sentry_when_a_dsn_is_set(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    import sentry_sdk

    with CaptureServer() as sentry, FakeOpenAI([answer("Hi Alan, it is on its way.")]) as fake:
        tuned = settings.model_copy(update={"sentry_dsn": f"http://publickey@{sentry.url.removeprefix('http://')}/7"})
        try:
            # sentry-sdk's auto-enabled OpenAI Agents integration broke every model call of the
            # Agents SDK (an AttributeError in its span hook): the app turns that one off.
            real_model = OpenAIResponsesModel("gpt-test", openai.AsyncOpenAI(base_url=fake.base_url, api_key="test"))
            async with serve(tuned, monkeypatch, pool, model=CountingModel(fail=lambda turn, nth: True)) as engine:
                run = await engine.email(CHARGED_TWICE)
            async with serve(tuned, monkeypatch, pool, model=real_model) as engine:
                answered = await engine.email({"customer_id": ALAN, "body": "Where is my order?"})
            sentry_sdk.flush()
        finally:
            sentry_sdk.get_client().close()
    assert answered.status == "completed", answered.error
    fake.assert_script_used_up()
    assert run.status == "failed"
    envelopes = [
        gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        for path, body in sentry.requests
        if path == "/api/7/envelope/"
    ]
    assert envelopes and any(b"model unavailable" in body for body in envelopes)
    assert any(b'"inngest.function.id":"handle-customer-email"' in body for body in envelopes)
