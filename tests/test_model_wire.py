"""What the durable layer sends to a real OpenAI endpoint, checked by the strict fake.

A model turn is stored in a step as JSON and validated back on the next call; the SDK then
replays it to the API as input. Anything the Responses API does not define in that replay is
a 400 in production, so these tests run the real ``OpenAIResponsesModel`` over HTTP against
``tests/fake_openai.py``, which validates every request against the ``openai`` package's own
request params.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import openai
import pytest
from agents import ModelResponse, OpenAIResponsesModel, Usage
from conftest import reset_data
from fake_openai import FakeOpenAI, Turn, answer, call
from openai.types.responses import Response
from tests_support import GRACE, serve

import db
from support_worker.conversation import loop as conversation
from support_worker.core.settings import Settings
from support_worker.durable import journal
from support_worker.workflows import decisions

pytestmark = pytest.mark.fake_openai

CHARGED_TWICE = {"customer_id": GRACE, "subject": "Double charge", "body": "I was charged twice for order 1003"}
EVENT_TS = 1_790_000_000_000  # tests_support.Engine.email's trigger timestamp


def refund_script() -> list[Turn]:
    """A reasoning model's turns for the double-charge email: look, ask to refund, confirm.
    Reasoning items ride along because real reasoning models return them, and their
    optional fields are where a careless dump goes wrong."""
    return [
        call("lookup_orders", reasoning=True),
        call(
            "issue_refund", order_id=1003, amount_cents=49_900, reason="Charged twice for order 1003.", reasoning=True
        ),
        answer("A refund of $499.00 for order 1003 has been issued.", reasoning=True),
    ]


def responses_model(fake: FakeOpenAI) -> OpenAIResponsesModel:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
    return OpenAIResponsesModel("gpt-test", client)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(refund_script()) as server:
        yield server


async def approved_durable_run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, fake: FakeOpenAI
) -> Any:
    async with serve(settings, monkeypatch, pool, model=responses_model(fake)) as engine:
        run = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True))
    return run


def rejections(fake: FakeOpenAI) -> list[str]:
    return [r.error.message for r in fake.rejected if r.error]


async def test_a_durable_refund_replays_only_what_the_responses_api_defines(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, fake: FakeOpenAI
) -> None:
    run = await approved_durable_run(settings, monkeypatch, pool, fake)
    assert rejections(fake) == []
    assert run.status == "completed", run.error
    refunds = await db.list_refunds(pool)
    assert [(r.order_id, r.amount_cents) for r in refunds] == [(1003, 49_900)]
    # Each turn's request went out once: the engine's replays came from the journal.
    assert len(fake.received) == 3
    assert len({json.dumps(r.body, sort_keys=True) for r in fake.received}) == 3
    fake.assert_script_used_up()


async def test_a_stored_turn_replays_to_the_wire_json_it_came_from(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, fake: FakeOpenAI
) -> None:
    await approved_durable_run(settings, monkeypatch, pool, fake)
    assert rejections(fake) == []
    assert len(fake.served) == 3
    for rec in fake.served:
        sent = rec.answer["output"]
        # What the SDK builds from the HTTP answer, stored and loaded as the journal does it.
        parsed = Response.model_validate(rec.answer)
        turn = ModelResponse(output=parsed.output, usage=Usage(), response_id=parsed.id)
        stored = json.loads(journal.dump_model_response(turn).model_dump_json())  # the engine's JSON round trip
        loaded = journal.load_model_response(journal.StoredTurn.model_validate(stored))
        replayed = [item.model_dump(mode="json", exclude_unset=True, by_alias=True) for item in loaded.output]
        assert replayed == sent
        # And what the SDK itself replays as input from the loaded turn is what it would
        # have replayed from the original.
        assert loaded.to_input_items() == turn.to_input_items()


async def test_the_terminal_and_durable_paths_send_identical_requests(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    # Seeding stamps orders with now(); pin it so both runs read the same orders.
    pin_order_dates = "UPDATE orders SET created_at = '2026-11-01T09:00:00Z'"
    await pool.execute(pin_order_dates)
    with FakeOpenAI(refund_script()) as durable_fake:
        run = await approved_durable_run(settings, monkeypatch, pool, durable_fake)
    assert run.status == "completed", run.error
    await reset_data(pool)
    await pool.execute(pin_order_dates)

    async def approve(request: db.RefundRequest) -> decisions.Decision:
        return decisions.Decision(request_id=request.id, approved=True, reviewer="ops@example.com")

    with FakeOpenAI(refund_script()) as terminal_fake:
        await conversation.answer_email(
            pool,
            customer_id=GRACE,
            subject=CHARGED_TWICE["subject"],
            body=CHARGED_TWICE["body"],
            decide=approve,
            settings=settings,
            model=responses_model(terminal_fake),
            now=datetime.fromtimestamp(EVENT_TS / 1000, UTC),
        )
    terminal_fake.assert_script_used_up()
    assert rejections(durable_fake) == []
    assert [r.body for r in durable_fake.received] == [r.body for r in terminal_fake.received]
