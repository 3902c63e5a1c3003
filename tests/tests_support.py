"""Helpers shared by test modules: a free port, and the served app driven like the engine."""

from __future__ import annotations

import json
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
from inngest_driver import InngestDriver, Run, StubInngestServer, WaitOp, cel_match

import db
import inngest_app
import refunds
from offline_model import OfflineSupportModel
from sample_data import ADA, ALAN, GRACE, KATHERINE, LINUS  # noqa: F401  (re-exported for tests)
from settings import Settings

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
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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
    """History for the health check: a refund requested, approved and issued."""
    request = await open_request(pool, customer_id=customer_id, order_id=order_id, cents=cents)
    decision = refunds.Decision(request_id=request.id, approved=True, reviewer="r")
    await refunds.record_decision(pool, decision, decision_id=f"d{order_id}")
    await refunds.pay_for_call(pool, run_id=request.run_id, customer_id=customer_id, tool_call_id=request.tool_call_id)
