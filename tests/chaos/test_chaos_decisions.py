"""Twenty decisions at once on one waiting request, through the engine, the desk and the CLI,
approvals and rejections mixed; and every call of a run delivered twice."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import asyncpg
import httpx
import pytest
from inngest_driver import InngestDriver, StubInngestServer, WaitOp, stub_resolver, timeout_resolver
from tests_support import DECISION_FN, EMAIL_FN

import db
import inngest_app
from chaos.chaos_support import CHARGED_TWICE, DESK_USERS, Host, Ledger, assert_story
from support_worker.cli import main as cli
from support_worker.core.settings import Settings

# Deselected by default (minutes of fault injection); CI runs `pytest -n auto -m chaos`.
pytestmark = pytest.mark.chaos

EVENT = {"name": inngest_app.EMAIL_RECEIVED, "id": "evt-chaos-2", "data": CHARGED_TWICE, "ts": 1_790_000_000_000}


async def _desk_token(http: httpx.AsyncClient, reviewer: str, request_id: str) -> str:
    page = await http.get("/reviews", auth=(reviewer, DESK_USERS[reviewer]))
    assert page.status_code == 200, page.text
    form = page.text.split(f'action="/reviews/{html.escape(request_id)}"', 1)[1]
    found = re.search(r'name="csrf" value="([^"]+)"', form)
    assert found, "the desk shows no form for the waiting request"
    return found.group(1)


def _engine_event(request_id: str, n: int, approved: bool) -> dict[str, Any]:
    return {
        "name": inngest_app.APPROVAL_DECIDED,
        "id": f"storm-engine-{n}",
        "data": {"request_id": request_id, "approved": approved, "reviewer": f"engine-{n}@example.com"},
    }


@pytest.mark.parametrize("seed", [0, 1])
async def test_twenty_concurrent_decisions_through_engine_desk_and_cli(
    seed: int,
    host: Host,
    driver: InngestDriver,
    stub: StubInngestServer,
    pool: asyncpg.Pool,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """Postgres picks one winner; nineteen are audited as ignored; the run settles as the winner said."""
    for key, value in stub.env().items():  # the CLI announces to the stub engine
        monkeypatch.setenv(key, value)
    cli_settings = settings.model_copy(update={"inngest_dev": stub.url})
    counts: dict[str, int] = {}

    async def storm(op: WaitOp) -> None:
        request_id = await pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'")
        tokens = {r: await _desk_token(driver.http, r, request_id) for r in DESK_USERS}
        shots: list[Any] = []
        for n in range(20):
            approved = (n + seed) % 2 == 0
            door = ("engine", "desk", "cli")[n % 3]
            counts[door] = counts.get(door, 0) + 1
            if door == "engine":
                event = _engine_event(request_id, n, approved)
                shots.append(_engine_decision(driver, stub, event))
            elif door == "desk":
                reviewer = list(DESK_USERS)[n % len(DESK_USERS)]
                form = {"decision": "approve" if approved else "reject", "csrf": tokens[reviewer]}
                auth = (reviewer, DESK_USERS[reviewer])
                shots.append(driver.http.post(f"/reviews/{request_id}", data=form, auth=auth))
            else:
                verb = "approve" if approved else "reject"
                args = cli.parser().parse_args([verb, request_id, "--reviewer", f"cli-{n}@example.com"])
                shots.append(cli.run_async(args, cli_settings))
        await asyncio.gather(*shots)
        ledger.fault("concurrent decision", 20)

    run = await driver.run(EMAIL_FN, EVENT, resolver=stub_resolver(stub, when_waiting=storm))
    # The engine starts the recorder for every decision the desk and the CLI announced, too.
    announced = [e for e in stub.events if e.name == inngest_app.APPROVAL_DECIDED and e.data.get("decision_id")]
    recorders = await asyncio.gather(*(driver.run(DECISION_FN, e) for e in announced))
    assert all(r.status == "completed" for r in recorders)
    ledger.runs += 1 + counts["engine"] + len(recorders)
    [winner] = await pool.fetch("SELECT status FROM refund_requests")
    outcome = winner["status"]
    assert outcome in ("approved", "rejected")
    await assert_story(pool, run, outcome)
    assert len(announced) <= 1  # only a decision that was recorded is announced
    assert len(await db.list_audit(pool, action=db.AuditAction.DECISION_IGNORED)) == 19
    print(await ledger.report(request.node, pool))


async def _engine_decision(driver: InngestDriver, stub: StubInngestServer, event: dict[str, Any]) -> None:
    """A decision sent to the engine: captured (so a waiting run can hear it) and recorded."""
    async with httpx.AsyncClient(base_url=stub.url) as http:
        (await http.post("/e/key", json=event)).raise_for_status()
    recorded = await driver.run(DECISION_FN, event)
    assert recorded.status == "completed", recorded.error


@pytest.mark.parametrize("outcome", ["approved", "rejected", "expired"])
@pytest.mark.parametrize("mode", [True, "concurrently"], ids=["sequentially", "concurrently"])
async def test_every_call_delivered_twice(
    outcome: str,
    mode: Any,
    host: Host,
    driver: InngestDriver,
    stub: StubInngestServer,
    pool: asyncpg.Pool,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """At-least-once delivery, both copies answered: the second copy of every call (of the
    email run and of the decision run) changes nothing."""

    async def decide(op: WaitOp) -> dict[str, Any] | None:
        if outcome == "expired":
            return await timeout_resolver(op)
        request_id = await pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'")
        event = {
            "name": inngest_app.APPROVAL_DECIDED,
            "id": f"dec-{request_id}",
            "data": {"request_id": request_id, "approved": outcome == "approved", "reviewer": "ops@example.com"},
        }
        recorded = await driver.run(DECISION_FN, event, deliver_twice=mode)
        assert recorded.status == "completed", recorded.error
        ledger.fault("duplicate delivery", len(recorded.calls) // 2)
        return event

    run = await driver.run(EMAIL_FN, EVENT, resolver=decide, deliver_twice=mode)
    ledger.fault("duplicate delivery", len(run.calls) // 2)
    ledger.runs += 1 if outcome == "expired" else 2
    assert all(c.status_code in (200, 206) for c in run.calls)
    await assert_story(pool, run, outcome)
    print(await ledger.report(request.node, pool))
