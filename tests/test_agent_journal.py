"""The agent's journal (issue 19): one step runs the agent, every model turn and tool result is
written to Postgres before it goes on, and a retried, redelivered or resumed step reads it back
instead of asking the model again. Driven over HTTP like the engine, with real Postgres."""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from datetime import timedelta

import asyncpg
import httpx
import pytest
from agents.testing import assistant_message, function_call
from tests_support import GRACE, CountingModel, Engine, scripted, serve, trail, used_up

from support_worker.cli import journal_view
from support_worker.core.settings import Settings
from support_worker.store import agent_journal

CHARGED_TWICE = {"customer_id": GRACE, "subject": "Double charge", "body": "I was charged twice for order 1003"}


def ten_turns() -> list[list[object]]:
    """Nine tool calls, one a turn, then the answer: a ten-turn conversation."""
    looks = [[function_call("lookup_orders", {}, call_id=f"look-{n}")] for n in range(1, 10)]
    return [*looks, [assistant_message("Hi Grace, I checked everything twice over. The Support Team")]]


async def test_a_ten_turn_email_is_one_agent_step_and_three_engine_calls_with_a_small_output(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    model = scripted(*ten_turns())
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        run = await engine.email({"customer_id": GRACE, "body": "Please check my orders carefully."})
    assert run.status == "completed", run.error
    used_up(model)
    # One agent step, then the course's save-draft-reply (issue 20), then the final call.
    assert trail(run) == ["run-agent", "save-draft-reply"] and len(run.calls) == 3
    [summary] = [memo["data"] for memo in run.memo.values() if "ended" in memo["data"]]
    assert (summary["turns"], summary["tool_calls"], summary["asked"]) == (10, 9, 10)
    assert len(json.dumps(summary)) < 8 * 1024  # the dashboard's summary, not the conversation
    kinds = Counter(e.kind for e in await agent_journal.entries(pool, run_id=run.run_id))
    assert kinds == Counter({"intake": 1, "model": 10, "tool": 9})


async def test_a_retried_step_asks_the_model_only_for_the_turn_it_lacks(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    model = CountingModel(fail=lambda turn, nth: turn == 2 and nth == 1)  # the second turn, once
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        run = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True))
    assert run.status == "completed", run.error
    assert run.runs_of("run-agent") == 2
    # Turn 1 came from the journal on the retry; turn 2 failed once and was asked again.
    assert model.calls == Counter({1: 1, 2: 2, 3: 1})


@pytest.mark.parametrize("mode", [True, "concurrently"], ids=["sequentially", "concurrently"])
async def test_every_call_delivered_twice_keeps_one_journal_and_one_refund(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, mode: object
) -> None:
    model = CountingModel()
    async with serve(settings, monkeypatch, pool, model=model) as engine:
        run = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True), deliver_twice=mode)
    assert run.status == "completed", run.error
    entries = await agent_journal.entries(pool, run_id=run.run_id)
    assert [(e.segment, e.turn, e.kind) for e in entries] == [
        (0, 0, "intake"),
        (0, 1, "model"),
        (0, 1, "tool"),
        (0, 2, "model"),
        (0, 2, "gate"),
        (1, 2, "tool"),
        (1, 3, "model"),
    ]
    if mode is True:  # a copy that comes after the first reads the journal: nothing re-billed
        assert model.calls == Counter({1: 1, 2: 1, 3: 1})
    assert len(await pool.fetch("SELECT id FROM refunds")) == 1
    assert "has been issued" in run.output["reply"]


async def test_a_second_copy_of_an_entry_gets_the_first_ones_payload(pool: asyncpg.Pool) -> None:
    """Two deliveries racing to journal the same turn: both go on with the first one written."""
    write = [
        agent_journal.write_once(
            pool, run_id="run-race", turn=1, kind="model", call_id="", segment=0, payload={"copy": n}
        )
        for n in (1, 2)
    ]
    first, second = await asyncio.gather(*write)
    assert first == second and first in ({"copy": 1}, {"copy": 2})
    assert len(await agent_journal.entries(pool, run_id="run-race")) == 1


async def test_support_worker_run_prints_the_journal_of_a_run(
    engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    run = await engine.email(CHARGED_TWICE, resolver=engine.reviewer(approved=True))
    assert await journal_view.run_journal(settings, run.run_id) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split() == ["step", "turn", "entry", "said", "at"]
    assert "calls lookup_orders({})" in printed and "tool lookup_orders" in printed
    assert "gate issue_refund" in printed and ": pending" in printed
    assert [line.split()[0] for line in lines[1:]] == ["run-agent"] * 5 + ["resume-agent"] * 2
    assert "A refund of $499.00" in lines[-1]
    assert await journal_view.run_journal(settings, "no-such-run") == 1
    assert "No journal for run no-such-run" in capsys.readouterr().out


async def test_the_desk_shows_a_runs_journal_to_reviewers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    desk = settings.model_copy(update={"review_desk_users": "alice:alice-pw"})
    async with serve(desk, monkeypatch, pool) as engine:
        run = await engine.email({"customer_id": GRACE, "body": "Do you ship to Canada?"})
        http: httpx.AsyncClient = engine.driver.http
        assert (await http.get(f"/runs/{run.run_id}/journal")).status_code == 401
        shown = (await http.get(f"/runs/{run.run_id}/journal", auth=("alice", "alice-pw"))).json()
    assert [(e["step"], e["turn"], e["entry"]) for e in shown["entries"]] == [
        ("run-agent", 0, "intake"),
        ("run-agent", 1, "model"),
    ]


async def test_the_daily_check_deletes_journal_entries_past_their_retention(engine: Engine) -> None:
    for run_id, age in (("old-run", timedelta(days=15)), ("new-run", timedelta(days=13))):
        await engine.pool.execute(
            "INSERT INTO agent_journal (run_id, turn, kind, segment, payload, recorded_at)"
            " VALUES ($1, 1, 'model', 0, '{}', now() - $2::interval)",
            run_id,
            age,
        )
    run = await engine.driver.run("daily-customer-health-check", {"name": "inngest/scheduled.timer", "data": {}})
    assert run.status == "completed", run.error
    assert run.output["journal_rows_deleted"] == 1
    assert [r["run_id"] for r in await engine.pool.fetch("SELECT run_id FROM agent_journal")] == ["new-run"]


def test_the_journal_must_outlast_a_refund_waiting_for_its_reviewer(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"AGENT_JOURNAL_RETENTION_DAYS \(1\) must be longer than"):
        settings.model_copy(update={"agent_journal_retention_days": 1, "refund_approval_timeout_hours": 24})


async def test_the_host_freezes_what_start_up_built(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    async with serve(settings, monkeypatch, pool):
        assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's way
    assert gc.get_freeze_count() == 0


async def test_the_journal_holds_whatever_a_model_wrote(pool: asyncpg.Pool) -> None:
    """NUL and a lone surrogate, which Postgres `jsonb` and `text` refuse, come back as written."""
    said = {"output": [{"type": "message", "text": "nul \u0000, lone \ud800, caf\u00e9"}]}
    stored = await agent_journal.write_once(
        pool, run_id="run-odd", turn=1, kind="model", call_id="", segment=0, payload=said
    )
    assert stored == said == (await agent_journal.load(pool, run_id="run-odd"))[(1, "model", "")]
