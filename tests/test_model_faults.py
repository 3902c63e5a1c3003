"""Model faults get defined outcomes (issue 10), each against the strict fake OpenAI server,
through the durable path (the served app, driven like the engine) and the terminal path.

What retrying cannot fix (a refusal, a tool that does not exist, tool arguments that are not
JSON, the turn limit, the token budget) ends the run at once with a holding reply and an
escalation; what retrying can fix (429, 500, a timeout, a malformed body) is retried, and in
the terminal runner ends in one clear line and a `model_unavailable` row.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import openai
import pytest
from agents import Model, OpenAIChatCompletionsModel, OpenAIResponsesModel
from fake_openai import (
    FakeOpenAI,
    Hang,
    MalformedBody,
    RateLimited,
    ServerError,
    Turn,
    answer,
    call,
    call_undeclared,
    call_with_raw_arguments,
    refuse,
)
from tests_support import GRACE, Engine, serve

import db
from support_worker.cli import main as cli
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.store import escalations as escalation_store
from support_worker.workflows import decisions, escalations

pytestmark = pytest.mark.fake_openai

EMAIL = {"customer_id": GRACE, "subject": "Hello", "body": "I was charged twice for order 1003"}


def model_on(fake: FakeOpenAI, kind: str = "responses", **client: Any) -> Model:
    http = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", **{"max_retries": 0, **client})
    if kind == "chat":
        return OpenAIChatCompletionsModel("gpt-test", http)
    return OpenAIResponsesModel("gpt-test", http)


async def only_escalation(pool: asyncpg.Pool) -> escalation_store.Escalation:
    rows = await pool.fetch("SELECT id FROM escalations")
    assert len(rows) == 1, rows
    found = await escalation_store.get_escalation(pool, escalation_id=rows[0]["id"])
    assert found is not None
    return found


def holding(reply: str) -> bool:
    return "senior member of our support team" in reply


FAULTS: list[tuple[str, str, list[Turn], str]] = [
    ("refusal-responses", "responses", [refuse("I can't help with that.")], "model refused"),
    ("refusal-chat", "chat", [refuse("I can't help with that.")], "model refused"),
    ("unknown-tool", "responses", [call_undeclared("launch_rockets", count=3)], "tool that does not exist"),
    ("invalid-arguments", "responses", [call_with_raw_arguments("lookup_orders", '{"x": ')], "not valid JSON"),
    ("invalid-refund-args", "chat", [call_with_raw_arguments("issue_refund", '{"order_id": 1')], "not valid JSON"),
]


@pytest.mark.parametrize(("name", "kind", "script", "reason"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_a_fault_retrying_cannot_fix_ends_the_durable_run_at_once_with_a_holding_reply(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    pool: asyncpg.Pool,
    name: str,
    kind: str,
    script: list[Turn],
    reason: str,
) -> None:
    with FakeOpenAI(script) as fake:
        async with serve(settings, monkeypatch, pool, model=model_on(fake, kind)) as engine:
            run = await engine.email(EMAIL)
    assert run.status == "completed", run.error
    assert run.output["status"] == "escalated" and holding(run.output["reply"])
    # No identical retries: each scripted turn was asked for once.
    assert len(fake.received) == len(script) and [r.status for r in fake.received] == [200] * len(script)
    escalation = await only_escalation(pool)
    assert run.output["escalation_id"] == escalation.id and escalation.source == "model_fault"
    assert reason in escalation.reason
    assert await engine.actions() == ["message_received", "escalation_requested", "email_drafted"]
    requested = [e for e in engine.stub.events if e.name == escalations_event()]
    assert [e.idempotency_id for e in requested] == [f"escalation-{escalation.id}"]


def escalations_event() -> str:
    from support_worker.core import events

    return events.ESCALATION_REQUESTED


async def test_the_turn_limit_escalates_instead_of_failing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    script = [call("lookup_orders"), call("lookup_customer"), call("lookup_orders")]
    with FakeOpenAI(script) as fake:
        limited = settings.model_copy(update={"agent_max_turns": 2})
        async with serve(limited, monkeypatch, pool, model=model_on(fake)) as engine:
            run = await engine.email(EMAIL)
    assert run.status == "completed", run.error
    assert run.output["status"] == "escalated"
    assert "turn limit" in (await only_escalation(pool)).reason
    assert len(fake.received) == 2


async def test_a_run_over_its_token_budget_stops_calling_the_model_and_escalates(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    # The fake reports 120 tokens a turn: after two turns (240), a third would pass 300.
    script = [call("lookup_orders"), call("lookup_customer"), answer("never asked for")]
    with FakeOpenAI(script) as fake:
        capped = settings.model_copy(update={"conversation_token_budget": 300})
        async with serve(capped, monkeypatch, pool, model=model_on(fake)) as engine:
            run = await engine.email(EMAIL)
    assert run.status == "completed", run.error
    assert run.output["status"] == "escalated" and holding(run.output["reply"])
    # The agent's step stopped before turn 3, from the first two turns' usage: the model was
    # never asked a third time.
    assert len(fake.received) == 2
    summary = run.memo[next(iter(run.memo))]["data"]
    assert (summary["ended"], summary["turns"], summary["asked"]) == ("escalated", 2, 2)
    escalation = await only_escalation(pool)
    assert escalation.source == "budget" and "token budget" in escalation.reason
    usage = await pool.fetch("SELECT turn, total_tokens FROM model_usage WHERE run_id = $1 ORDER BY turn", run.run_id)
    assert [(r["turn"], r["total_tokens"]) for r in usage] == [(1, 120), (2, 120)]


@pytest.mark.parametrize("fault", [ServerError(), MalformedBody()], ids=["server-error", "malformed-json"])
async def test_a_500_or_a_malformed_body_is_retried_by_the_step_and_the_run_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, fault: Any
) -> None:
    with FakeOpenAI([call("lookup_orders"), answer("Hi Grace, all good.")], faults={0: fault}) as fake:
        async with serve(settings, monkeypatch, pool, model=model_on(fake)) as engine:
            run = await engine.email(EMAIL)
    assert run.status == "completed", run.error
    assert run.output["status"] == "drafted"
    assert len(fake.received) == 3 and [r.status for r in fake.received][1:] == [200, 200]
    # The failed turn failed the step; its retry asked for that turn again, and for the next.
    assert run.runs_of("run-agent") == 2
    fake.assert_script_used_up()


async def test_a_429_with_retry_after_is_retried_by_the_client_first(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    with FakeOpenAI([answer("Hi Grace.")], faults={0: RateLimited(retry_after_seconds=0)}) as fake:
        async with serve(settings, monkeypatch, pool, model=model_on(fake, max_retries=1)) as engine:
            run = await engine.email(EMAIL)
    assert run.status == "completed", run.error
    assert [r.status for r in fake.received] == [429, 200]
    assert run.runs_of("run-agent") == 1  # the client's retry, inside the step


async def test_a_timeout_is_retried_by_the_step_and_the_run_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    with FakeOpenAI([answer("Hi Grace.")], faults={0: Hang()}) as fake:
        async with serve(settings, monkeypatch, pool, model=model_on(fake, timeout=0.3)) as engine:
            run = await engine.email(EMAIL)
        assert run.status == "completed", run.error
        assert run.output["status"] == "drafted" and len(fake.received) == 2
    assert run.runs_of("run-agent") == 2


# --------------------------------------------------------------------------- the terminal path


async def approve(request: db.RefundRequest) -> decisions.Decision:
    return decisions.Decision(request_id=request.id, approved=True, reviewer="ops@example.com")


@pytest.mark.parametrize(("name", "kind", "script", "reason"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_a_fault_retrying_cannot_fix_escalates_in_the_terminal_too(
    settings: Settings, pool: asyncpg.Pool, name: str, kind: str, script: list[Turn], reason: str
) -> None:
    with FakeOpenAI(script) as fake:
        outcome = await conversation.answer_email(
            pool, customer_id=GRACE, body=EMAIL["body"], decide=approve, settings=settings, model=model_on(fake, kind)
        )
    assert holding(outcome.reply) and outcome.escalation_id
    assert reason in (outcome.escalation_reason or "")
    actions = [e.action.value for e in await db.list_audit(pool, run_id=outcome.run_id)]
    assert actions == ["message_received", "escalation_requested", "email_drafted"]


# (name, fault, the error the audit row names, requests made: the client retries all but a
# malformed body, which arrives with status 200)
TRANSIENT = [
    ("rate-limited", RateLimited(retry_after_seconds=0), "RateLimitError", 2),
    ("server-error", ServerError(), "InternalServerError", 2),
    ("timeout", Hang(), "APITimeoutError", 2),
    ("malformed-json", MalformedBody(), "Error", 1),
]


@pytest.mark.parametrize(("name", "fault", "error", "requests"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
async def test_the_terminal_prints_one_line_when_the_model_stays_unavailable(
    settings: Settings,
    pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
    name: str,
    fault: Any,
    error: str,
    requests: int,
) -> None:
    with FakeOpenAI([answer("never")], faults={0: fault, 1: fault}) as fake:
        pointed = settings.model_copy(
            update={
                "openai_base_url": fake.base_url,
                "openai_api_key": "test",
                "openai_max_retries": 1,
                "openai_timeout_seconds": 0.5,
            }
        )
        code = await cli.run_async(cli.parser().parse_args(["answer", "--customer", GRACE, "hi"]), pointed)
    captured = capsys.readouterr()
    assert code == 1
    problem = [line for line in captured.err.splitlines() if line.strip()]
    assert len(problem) == 1 and "Traceback" not in captured.err, captured.err
    assert "The model did not answer" in problem[0] and "Nothing was sent to the customer" in problem[0]
    assert len(fake.received) == requests  # the client's own retry, then the clear line
    rows = await db.list_audit(pool, action=db.AuditAction.MODEL_UNAVAILABLE)
    assert len(rows) == 1 and error in rows[0].detail["error"]
    assert await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED) == []


@pytest.mark.parametrize(
    ("order_id", "cents", "why"),
    [(1001, 1_000, "does not belong to this customer"), (1003, 99_999_00, "more than the")],
    ids=["another-customers-order", "above-the-paid-amount"],
)
async def test_refund_arguments_aimed_elsewhere_are_policy_refusals(
    settings: Settings, pool: asyncpg.Pool, order_id: int, cents: int, why: str
) -> None:
    script = [
        call("issue_refund", order_id=order_id, amount_cents=cents, reason="Please refund."),
        answer("Hi Grace, we could not refund that order."),
    ]
    with FakeOpenAI(script) as fake:
        outcome = await conversation.answer_email(
            pool, customer_id=GRACE, body=EMAIL["body"], decide=approve, settings=settings, model=model_on(fake)
        )
    fake.assert_script_used_up()
    assert outcome.refunds_issued == [] and [g.status for g in outcome.gate] == ["blocked"]
    blocked = await db.list_audit(pool, action=db.AuditAction.REFUND_BLOCKED)
    assert len(blocked) == 1 and why in blocked[0].detail["why"] and blocked[0].detail["order_id"] == order_id
    assert await db.list_refunds(pool) == []
    # The model heard the refusal as the tool's result.
    assert why in json.dumps(fake.served[1].body["input"])


async def test_an_escalation_asked_for_by_the_agent_is_recorded_with_its_arguments(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    ask = call("escalate_to_human", summary="Threatens to sue over order 1003.", reason="legal threat", urgency="high")
    with FakeOpenAI([ask]) as fake:
        outcome = await conversation.answer_email(
            pool,
            customer_id=GRACE,
            body="My lawyer will call you.",
            decide=approve,
            settings=settings,
            model=model_on(fake),
        )
    fake.assert_script_used_up()
    escalation = await only_escalation(pool)
    assert (escalation.source, escalation.reason, escalation.urgency) == ("agent", "legal threat", "high")
    assert "Threatens to sue" in escalation.draft and "My lawyer will call you." in escalation.draft
    assert outcome.escalation_id == escalation.id and holding(outcome.reply)
    assert escalations.ESCALATE_TOOL == "escalate_to_human"


async def test_the_token_budget_escalates_in_the_terminal_too(settings: Settings, pool: asyncpg.Pool) -> None:
    script = [call("lookup_orders"), call("lookup_customer"), answer("never asked for")]
    capped = settings.model_copy(update={"conversation_token_budget": 300})
    with FakeOpenAI(script) as fake:
        outcome = await conversation.answer_email(
            pool, customer_id=GRACE, body=EMAIL["body"], decide=approve, settings=capped, model=model_on(fake)
        )
    assert len(fake.received) == 2 and holding(outcome.reply)
    assert (await only_escalation(pool)).source == "budget"
    assert await pool.fetchval("SELECT sum(total_tokens) FROM model_usage WHERE run_id = $1", outcome.run_id) == 240


async def test_the_terminal_hands_its_escalation_to_the_engine_when_one_answers(
    engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAI([refuse("I can't help with that.")]) as fake:
        pointed = settings.model_copy(
            update={"openai_base_url": fake.base_url, "openai_api_key": "test", "inngest_dev": engine.stub.url}
        )
        code = await cli.run_async(cli.parser().parse_args(["answer", "--customer", GRACE, "hi"]), pointed)
    out = capsys.readouterr().out
    assert code == 0 and "senior member of our support team" in out
    escalation = await only_escalation(engine.pool)
    assert f"escalated {escalation.id}: The model refused" in out
    assert "sent customer/escalation.requested" in out
    assert [(e.name, e.idempotency_id) for e in engine.stub.events] == [
        (escalations_event(), f"escalation-{escalation.id}")
    ]
