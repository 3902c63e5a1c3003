"""The escalation gate through the served app, driven like the engine: each branch (approve,
edit, reject, timeout), a decision whose announcement was lost, a redelivered run posting
once, and the doors (CLI and desk) deciding escalations beside refunds."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from agents import OpenAIResponsesModel
from fake_openai import FakeOpenAI, call
from inngest_driver import WaitOp, cel_match, timeout_resolver
from tests_support import GRACE, CaptureServer, Engine, serve

import db
from support_worker.cli import main as cli
from support_worker.core import events
from support_worker.core.settings import Settings
from support_worker.durable import gates
from support_worker.store import escalations as escalation_store
from support_worker.workflows import escalations

ESCALATION_FN = "escalate-with-human-approval"
RECORDER_FN = "record-escalation-decision"
ALICE = ("alice", "alice-pw")


@pytest.fixture
def senior() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture
def on_call() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


def gate_settings(settings: Settings, senior: CaptureServer, on_call: CaptureServer, **more: Any) -> Settings:
    return settings.model_copy(
        update={
            "senior_support_webhook_url": f"{senior.url}/senior",
            "reviewer_webhook_url": f"{on_call.url}/reviewers",
            "review_desk_users": "alice:alice-pw",
            **more,
        }
    )


@pytest.fixture
async def gate(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    pool: asyncpg.Pool,
    senior: CaptureServer,
    on_call: CaptureServer,
) -> AsyncIterator[Engine]:
    async with serve(gate_settings(settings, senior, on_call), monkeypatch, pool) as engine:
        yield engine


async def open_one(pool: asyncpg.Pool, *, ttl_seconds: int = 4 * 3600) -> escalation_store.Escalation:
    customer = await db.get_customer(pool, customer_id=GRACE)
    assert customer is not None
    ask = escalations.EscalationAsk(
        key="call_1", source="agent", reason="legal threat", urgency="high", summary="Threatens to sue."
    )
    return await escalations.open_escalation(
        pool,
        ask=ask,
        run_id="run-email-1",
        customer=customer,
        customer_message="My lawyer will call.",
        ttl_seconds=ttl_seconds,
    )


def requested(escalation_id: str) -> dict[str, Any]:
    return {
        "name": events.ESCALATION_REQUESTED,
        "id": f"escalation-{escalation_id}",
        "ts": 1_790_000_000_000,
        "data": {"request_id": escalation_id},
    }


def decision_event(
    escalation_id: str, decision: str, *, edited_text: str | None = None, event_id: str = "dec-1"
) -> dict[str, Any]:
    data: dict[str, Any] = {"request_id": escalation_id, "decision": decision, "reviewer": "ops@example.com"}
    if edited_text is not None:
        data["edited_text"] = edited_text
    return {"name": events.ESCALATION_DECIDED, "id": event_id, "ts": 1_790_000_100_000, "data": data}


def reviewer_deciding(engine: Engine, decision: str, **kwargs: Any) -> Any:
    """A reviewer who decides while the run waits: the event goes to the recorder function and
    to the waiting run, as the engine delivers it."""

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        escalation_id = await engine.pool.fetchval("SELECT id FROM escalations")
        event = decision_event(escalation_id, decision, **kwargs)
        recorded = await engine.driver.run(RECORDER_FN, event)
        assert recorded.status == "completed", recorded.error
        return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

    return resolve


def posts(server: CaptureServer) -> list[str]:
    return [json.loads(body)["text"] for _, body in server.requests]


async def outcome_rows(pool: asyncpg.Pool) -> list[db.AuditEntry]:
    outcome_actions = {
        "escalation_approved",
        "escalation_edited",
        "escalation_rejected",
        "escalation_posted_via_timeout",
    }
    return [e for e in await db.list_audit(pool) if e.action.value in outcome_actions]


async def test_approve_posts_the_draft_once_even_when_every_call_is_delivered_twice(
    gate: Engine, senior: CaptureServer, on_call: CaptureServer
) -> None:
    escalation = await open_one(gate.pool)
    run = await gate.driver.run(
        ESCALATION_FN, requested(escalation.id), resolver=reviewer_deciding(gate, "approve"), deliver_twice=True
    )
    assert run.status == "completed", run.error
    assert run.output["status"] == "approved" and run.output["posted"] is True
    assert posts(senior) == [escalation.draft]
    assert len(on_call.requests) == 1 and escalation.id in posts(on_call)[0]
    [row] = await outcome_rows(gate.pool)
    assert row.action.value == "escalation_approved" and row.detail["reviewer"] == "ops@example.com"
    assert [w.display_name for w, _ in run.waits][:1] == [f"await-escalation-{escalation.id}-1"]


async def test_edit_posts_the_reviewers_text(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    resolver = reviewer_deciding(gate, "edit", edited_text="Legal: please call Grace today.")
    run = await gate.driver.run(ESCALATION_FN, requested(escalation.id), resolver=resolver)
    assert run.status == "completed", run.error
    assert posts(senior) == ["Legal: please call Grace today."]
    [row] = await outcome_rows(gate.pool)
    assert row.action.value == "escalation_edited" and row.detail["reviewer"] == "ops@example.com"


async def test_reject_posts_nothing_and_closes_it(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    run = await gate.driver.run(ESCALATION_FN, requested(escalation.id), resolver=reviewer_deciding(gate, "reject"))
    assert run.status == "completed", run.error
    assert run.output["status"] == "rejected" and posts(senior) == []
    [row] = await outcome_rows(gate.pool)
    assert row.action.value == "escalation_rejected" and row.detail["reviewer"] == "ops@example.com"
    assert await escalation_store.list_pending_escalations(gate.pool) == []


async def test_a_timeout_posts_the_draft_under_a_no_human_review_header(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    run = await gate.driver.run(ESCALATION_FN, requested(escalation.id), resolver=timeout_resolver)
    assert run.status == "completed", run.error
    assert posts(senior) == [f"{escalations.NO_REVIEW_HEADER}\n\n{escalation.draft}"]
    [row] = await outcome_rows(gate.pool)
    assert row.action.value == "escalation_posted_via_timeout" and row.detail["reviewer"] == "timeout"
    [(wait, memo)] = run.waits
    assert memo is None and wait.if_exp == gates.decision_match(escalation.id, GRACE)


async def test_a_decision_whose_announcement_was_lost_settles_within_one_slice(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    pool: asyncpg.Pool,
    senior: CaptureServer,
    on_call: CaptureServer,
) -> None:
    sliced = gate_settings(settings, senior, on_call, decision_recheck_minutes=10)
    async with serve(sliced, monkeypatch, pool) as engine:
        escalation = await open_one(pool)

        async def desk_records_but_the_event_api_is_down(op: WaitOp) -> None:
            decision = escalations.Decision(request_id=escalation.id, decision="approve", reviewer="bob")

            async def event_api_down(data: dict[str, Any]) -> None:
                raise httpx.ConnectError("event API unreachable")

            outcome, announced = await escalations.submit_decision(pool, decision, announce=event_api_down, via="desk")
            assert outcome.applied and not announced
            return None  # the slice runs out with no event

        run = await engine.driver.run(
            ESCALATION_FN, requested(escalation.id), resolver=desk_records_but_the_event_api_is_down
        )
    assert run.status == "completed", run.error
    assert len(run.waits) == 1  # one slice, then the re-read found the decision
    assert posts(senior) == [escalation.draft]
    [row] = await outcome_rows(pool)
    assert row.action.value == "escalation_approved" and row.detail["reviewer"] == "bob"


async def test_a_second_decision_changes_nothing_and_is_audited(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    await gate.driver.run(ESCALATION_FN, requested(escalation.id), resolver=reviewer_deciding(gate, "reject"))
    late = await gate.driver.run(RECORDER_FN, decision_event(escalation.id, "approve", event_id="dec-late"))
    assert late.output == {"applied": False, "reason": "already_decided"}
    ignored = await db.list_audit(gate.pool, action=db.AuditAction.DECISION_IGNORED)
    assert [(e.detail["kind"], e.detail["why"]) for e in ignored] == [("escalation", "already_decided")]
    assert posts(senior) == []


async def test_an_unknown_escalation_is_rejected_once_without_retries(gate: Engine) -> None:
    run = await gate.driver.run(ESCALATION_FN, requested("esc_nope"))
    assert run.status == "failed" and run.calls[-1].no_retry
    rejected = await db.list_audit(gate.pool, action=db.AuditAction.EVENT_REJECTED)
    assert len(rejected) == 1 and "unknown escalation: esc_nope" in rejected[0].detail["why"]


@pytest.mark.fake_openai
async def test_an_email_the_agent_escalates_reaches_the_senior_channel_once_approved(
    gate: Engine, senior: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ask = call(
        "escalate_to_human", summary="Says the account was taken over.", reason="account takeover", urgency="urgent"
    )
    with FakeOpenAI([ask]) as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
        model = OpenAIResponsesModel("gpt-test", client)
        async with serve(gate_settings_of(gate), monkeypatch, gate.pool, model=model) as engine:
            email = await engine.email({"customer_id": GRACE, "body": "Someone changed my password and email!"})
            [announced] = [e for e in engine.stub.events if e.name == events.ESCALATION_REQUESTED]
            run = await engine.driver.run(
                ESCALATION_FN, announced.as_event(), resolver=reviewer_deciding(engine, "approve")
            )
    assert email.status == "completed" and email.output["status"] == "escalated"
    assert run.status == "completed", run.error
    [posted] = posts(senior)
    assert "account takeover" in posted and "Someone changed my password" in posted and "(urgent)" in posted
    trail = [e.action.value for e in await db.list_audit(gate.pool, run_id=email.run_id)]
    assert trail == [
        "message_received",
        "escalation_requested",
        "email_drafted",
        "reviewer_notified",
        "escalation_approved",
    ]


def gate_settings_of(engine: Engine) -> Settings:
    import inngest_app

    return inngest_app.runtime().settings


# --------------------------------------------------------------------------- the doors


def args(*argv: str) -> Any:
    return cli.parser().parse_args(list(argv))


async def test_cli_lists_escalations_beside_refunds_and_decides_them_without_an_engine(
    settings: Settings,
    pool: asyncpg.Pool,
    senior: CaptureServer,
    on_call: CaptureServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = await open_one(pool)
    configured = gate_settings(settings, senior, on_call, inngest_dev="http://127.0.0.1:9")  # nothing listens
    assert await cli.run_async(args("pending", "--json"), configured) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["request"]) for r in rows] == [("escalation", first.id)]

    assert await cli.run_async(args("edit", first.id, "--reviewer", "carol", "--text", "Call her."), configured) == 0
    out = capsys.readouterr().out
    assert f"Escalation {first.id}: edited" in out and "posted to the senior support channel" in out
    assert posts(senior) == ["Call her."]
    assert await cli.run_async(args("reject", first.id, "--reviewer", "dave"), configured) == 1
    assert "already decided: edited by carol" in capsys.readouterr().out
    [row] = await outcome_rows(pool)
    assert row.action.value == "escalation_edited" and row.detail["reviewer"] == "carol"


async def test_the_desk_shows_an_escalation_and_decides_it(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    http = gate.driver.http
    page = (await http.get("/reviews", auth=ALICE)).text
    assert escalation.id in page and "legal threat" in page and "Threatens to sue." in page
    match = re.search(
        rf'action="/reviews/escalations/{escalation.id}">\s*<input type="hidden" name="csrf" value="([^"]+)"', page
    )
    assert match, page
    form = {"decision": "approve", "csrf": match.group(1)}
    res = await http.post(f"/reviews/escalations/{escalation.id}", data=form, auth=ALICE, follow_redirects=True)
    assert f"Escalation {escalation.id}: approved." in res.text
    decided = [e for e in gate.stub.events if e.name == events.ESCALATION_DECIDED]
    assert [e.data["request_id"] for e in decided] == [escalation.id]
    assert escalation.id not in (await http.get("/reviews", auth=ALICE)).text.split("<h1>Escalations</h1>")[1]


async def test_a_malformed_decision_is_audited_and_the_wait_goes_on(gate: Engine, senior: CaptureServer) -> None:
    escalation = await open_one(gate.pool)
    answers = [
        decision_event(escalation.id, "maybe", event_id="dec-bad"),
        decision_event(escalation.id, "approve", event_id="dec-good"),
    ]

    async def resolve(op: WaitOp) -> dict[str, Any] | None:
        return answers.pop(0)

    run = await gate.driver.run(ESCALATION_FN, requested(escalation.id), resolver=resolve)
    assert run.status == "completed", run.error
    assert len(run.waits) == 2 and posts(senior) == [escalation.draft]
    [ignored] = await db.list_audit(gate.pool, action=db.AuditAction.DECISION_IGNORED)
    assert ignored.detail["kind"] == "escalation"
    assert ignored.detail["why"] == "malformed decision: decision: Input should be 'approve', 'edit' or 'reject'"
    [row] = await outcome_rows(gate.pool)
    assert row.action.value == "escalation_approved"
