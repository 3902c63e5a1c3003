"""Helpers shared by test modules: a free port, the served app driven like the engine, a
scripted model that proves the journal replays finished turns, and a run's step trail by name."""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from agents import Model
from agents.testing import ScriptedModel
from inngest_driver import InngestDriver, Run, StubInngestServer, WaitOp, cel_match

import db
import inngest_app
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.core.settings import Settings
from support_worker.store.sample_data import ADA, ALAN, GRACE, KATHERINE, LINUS  # noqa: F401  (re-exported for tests)
from support_worker.workflows import decisions, refunds

EMAIL_FN = "handle-customer-email"
DECISION_FN = "record-refund-decision"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingModel(OfflineSupportModel):
    """The offline model, counting calls per turn and able to fail chosen calls."""

    def __init__(self, fail: Callable[[int, int], bool] | None = None) -> None:
        self.calls: Counter[int] = Counter()  # turn number (1-based) -> times called
        self._fail = fail or (lambda turn, nth: False)

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> Any:
        turn = sum(1 for i in input if isinstance(i, dict) and i.get("type") == "function_call_output") + 1
        self.calls[turn] += 1
        if self._fail(turn, self.calls[turn]):
            raise RuntimeError(f"model unavailable (turn {turn}, call {self.calls[turn]})")
        return await super().get_response(system_instructions, input, *args, **kwargs)


def scripted(*turns: list[Any]) -> ScriptedModel:
    """A model that answers each turn from the script, in order: `function_call(...)` and
    `assistant_message(...)` items from `agents.testing`. Pair it with `used_up`."""
    return ScriptedModel(list(turns))


def used_up(model: ScriptedModel) -> None:
    """Every scripted turn was asked for, and none twice: on a replay the journal must answer
    finished turns from the memo. (The script raises on a call past its end, so a repeated
    turn would also fail the run; this says so plainly.)"""
    model.assert_complete()
    turns = [
        sum(1 for i in call.input if isinstance(i, dict) and i.get("type") == "function_call_output")
        for call in model.calls
    ]
    assert len(turns) == len(set(turns)), f"a turn was asked for twice: tool results seen per call {turns}"


def trail(run: Run) -> list[str]:
    """The run's steps by name, in order (retries repeat), with the ids that come from data
    replaced by placeholders: each tool call id by `<call>` and each refund request id by
    `<request>` (`<call-1>`, `<call-2>`, ... when there are several, in order of first use).
    The ids are read from the run itself: tool calls in step outputs and the requests the
    agent steps opened."""
    calls: list[str] = []
    requests: list[str] = []
    for memo in run.memo.values():
        data = memo.get("data") if isinstance(memo, dict) else None
        if not isinstance(data, dict):
            continue
        for item in data.get("output") or []:
            if isinstance(item, dict) and item.get("type") == "function_call" and item["call_id"] not in calls:
                calls.append(item["call_id"])
        # A waiting agent step names the requests it opened; a settle step, the one it settled.
        for opened in [data, *(data.get("waiting") or [])]:
            request_id = (opened.get("outcome") or {}).get("request_id") if isinstance(opened, dict) else None
            if request_id and request_id not in requests:
                requests.append(request_id)

    def placeholders(ids: list[str], kind: str) -> dict[str, str]:
        if len(ids) == 1:
            return {ids[0]: f"<{kind}>"}
        return {found: f"<{kind}-{n}>" for n, found in enumerate(ids, start=1)}

    replace = placeholders(calls, "call") | placeholders(requests, "request")
    # An id is a whole dash-separated part of a name: `open-refund-c1`, `await-approval-rr_…-1`.
    pattern = re.compile("|".join(rf"(?<=-){re.escape(found)}(?=-|$)" for found in replace) or "(?!)")
    return [pattern.sub(lambda m: replace[m.group(0)], name) for name in run.trail]


@dataclass
class Engine:
    driver: InngestDriver
    stub: StubInngestServer
    pool: asyncpg.Pool

    async def email(self, data: dict[str, Any], *, event_id: str = "evt-email-1", **kwargs: Any) -> Run:
        event = {"name": inngest_app.EMAIL_RECEIVED, "id": event_id, "data": data, "ts": 1_790_000_000_000}
        return await self.driver.run(EMAIL_FN, event, **kwargs)

    async def decide(
        self,
        request_id: str,
        *,
        approved: bool,
        event_id: str,
        reviewer: str = "ops@example.com",
        note: str | None = None,
    ) -> tuple[dict[str, Any], Run]:
        """Send a decision as the engine delivers it: to the recorder function (and, via the
        returned event, to any waiting run)."""
        event = {
            "name": inngest_app.APPROVAL_DECIDED,
            "id": event_id,
            "ts": 1_790_000_100_000,
            "data": {"request_id": request_id, "approved": approved, "reviewer": reviewer, "note": note},
        }
        return event, await self.driver.run(DECISION_FN, event)

    def reviewer(self, *, approved: bool, note: str | None = None) -> Callable[[WaitOp], Any]:
        """A resolver playing a reviewer who decides while the run waits."""

        async def resolve(op: WaitOp) -> dict[str, Any] | None:
            request_id = await self.pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'")
            event, _ = await self.decide(request_id, approved=approved, event_id=f"dec-{request_id}", note=note)
            return event if cel_match(op.if_exp, candidate=event, trigger=op.trigger) else None

        return resolve

    async def actions(self, run_id: str | None = None) -> list[str]:
        return [e.action.value for e in await db.list_audit(self.pool, run_id=run_id)]


@asynccontextmanager
async def serve(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool, model: Model | None = None
) -> AsyncIterator[Engine]:
    with StubInngestServer() as stub:
        for key, value in stub.env().items():
            monkeypatch.setenv(key, value)
        app = inngest_app.create_app(
            settings.model_copy(update={"inngest_dev": stub.url}), model=model or OfflineSupportModel()
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                driver = InngestDriver(http, stub=stub)
                await driver.sync()
                yield Engine(driver=driver, stub=stub, pool=pool)


class CaptureServer:
    """A loopback HTTP server that records every POST (a Slack webhook, a Sentry ingest) and
    answers 500 to the first `fail_first` of them, so tests can prove retries."""

    def __init__(self, *, fail_first: int = 0) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, bytes]] = []
        self.fail_first = fail_first
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.requests.append((self.path, body))
                failing = len(owner.requests) <= owner.fail_first
                self.send_response(500 if failing else 200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": false}' if failing else b'{"ok": true}')

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() otherwise waits up to half a second for the loop.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


async def open_request(
    pool: asyncpg.Pool,
    *,
    order_id: int,
    cents: int,
    customer_id: int = GRACE,
    ttl_seconds: int = 3600,
    message: str = "",
) -> db.RefundRequest:
    """A pending refund request as a paused run would open it (one per order here)."""
    opened = await refunds.open_request(
        pool,
        run_id=f"run-{order_id}",
        customer_id=customer_id,
        customer_message=message,
        call_id="call-1",
        raw_arguments=json.dumps(
            {"order_id": order_id, "amount_cents": cents, "reason": f"Charged twice for {order_id}."}
        ),
        ttl_seconds=ttl_seconds,
    )
    assert opened.status == "pending" and opened.request_id, opened
    request = await db.get_refund_request(pool, request_id=opened.request_id)
    assert request is not None
    return request


async def pay_refund(pool: asyncpg.Pool, *, customer_id: int, order_id: int, cents: int) -> None:
    """History for the health check: a refund requested, approved (by two reviewers when four
    eyes asks for them) and issued."""
    request = await open_request(pool, customer_id=customer_id, order_id=order_id, cents=cents)
    for reviewer in ("r", "s")[: request.approvals_needed]:
        decision = decisions.Decision(request_id=request.id, approved=True, reviewer=reviewer)
        await decisions.record_decision(pool, decision, decision_id=f"d{order_id}-{reviewer}")
    await refunds.pay_for_call(pool, run_id=request.run_id, customer_id=customer_id, tool_call_id=request.tool_call_id)
