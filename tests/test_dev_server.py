"""End to end against a real Inngest dev server, when one is reachable.

These machines have no internet, so `npx inngest-cli@latest dev` cannot fetch its binary
here and these tests skip, saying why. On a machine with internet:

    npx inngest-cli@latest dev --no-discovery &      # dashboard on http://127.0.0.1:8288
    .venv/bin/pytest tests/test_dev_server.py

Set INNGEST_DEV_SERVER_URL when the dev server listens elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from tests_support import free_port

import db

ROOT = Path(__file__).resolve().parent.parent
DEV_SERVER = os.environ.get("INNGEST_DEV_SERVER_URL", "http://127.0.0.1:8288")
BURST_SECONDS = 3


def _dev_server_reachable() -> bool:
    try:
        httpx.get(DEV_SERVER, timeout=1)
    except httpx.HTTPError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _dev_server_reachable(),
    reason=f"no Inngest dev server at {DEV_SERVER}: start one with `npx inngest-cli@latest dev` (needs internet)",
)


@pytest.fixture
def served_app(database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "OPENAI_"))}
    env |= {"INNGEST_DEV": DEV_SERVER, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    env["EMAIL_BURST_SECONDS"] = str(BURST_SECONDS)  # the real debounce, short enough to wait for
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "inngest_app:app", "--port", str(port)], cwd=tmp_path, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        # Register with the dev server the way `inngest-cli dev -u` discovery does.
        httpx.put(f"{url}/api/inngest", timeout=10).raise_for_status()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def send(name: str, data: dict[str, object], *, event_id: str | None = None) -> None:
    event = {"name": name, "data": data} | ({"id": event_id} if event_id else {})
    async with httpx.AsyncClient() as http:
        res = await http.post(f"{DEV_SERVER}/e/dev", json=event, timeout=10)
        res.raise_for_status()


async def wait_for_action(pool: asyncpg.Pool, action: db.AuditAction, *, count: int = 1) -> list[db.AuditEntry]:
    for _ in range(300):
        rows = await db.list_audit(pool, action=action)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {action.value} row within 60 s; see the runs at {DEV_SERVER}")


async def test_refund_email_waits_for_approval_and_pays_once(served_app: str, pool: asyncpg.Pool) -> None:
    await send("customer/email.received", {"customer_id": "c-4429", "body": "I was charged twice for order 1003"})
    requested = await wait_for_action(pool, db.AuditAction.REFUND_REQUESTED)
    request_id = requested[0].detail["request_id"]
    await send("refund/approval.decided", {"request_id": request_id, "approved": True, "reviewer": "dev-test"})
    await wait_for_action(pool, db.AuditAction.EMAIL_DRAFTED)
    refunds = await db.list_refunds(pool)
    assert [(r.order_id, r.amount_cents, r.request_id) for r in refunds] == [(1003, 49_900, request_id)]


async def test_rejected_refund_pays_nothing(served_app: str, pool: asyncpg.Pool) -> None:
    await send("customer/email.received", {"customer_id": "c-4429", "body": "I was charged twice for order 1004"})
    request_id = (await wait_for_action(pool, db.AuditAction.REFUND_REQUESTED))[0].detail["request_id"]
    await send("refund/approval.decided", {"request_id": request_id, "approved": False, "reviewer": "dev-test"})
    reply = (await wait_for_action(pool, db.AuditAction.EMAIL_DRAFTED))[0]
    assert "no refund has been issued" in reply.detail["reply"]
    assert await db.list_refunds(pool) == []


async def test_three_quick_emails_get_one_answer_from_the_real_debounce(served_app: str, pool: asyncpg.Pool) -> None:
    for body in ("Do you ship to Canada?", "Also, where is order 1004?", "Thanks!"):
        await send("customer/email.received", {"customer_id": "c-4429", "body": body})
    (reply,) = await wait_for_action(pool, db.AuditAction.EMAIL_DRAFTED)
    received = await wait_for_action(pool, db.AuditAction.MESSAGE_RECEIVED, count=3)
    assert {row.run_id for row in received} == {reply.run_id}
    await asyncio.sleep(2 * BURST_SECONDS)  # nothing else answers them later
    assert len(await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED)) == 1


async def test_a_redelivered_email_joins_its_burst_or_runs_again_and_is_answered_once(
    served_app: str, pool: asyncpg.Pool
) -> None:
    """The driver's rule (tests/test_doors.py): the debounced email function takes a reused
    event id; inside the burst it extends it, after it another run finds the email answered."""
    email = {"customer_id": "c-4429", "body": "Do you ship to Canada?"}
    await send("customer/email.received", email, event_id="dev-redelivered")
    await send("customer/email.received", email, event_id="dev-redelivered")  # inside the burst
    await wait_for_action(pool, db.AuditAction.EMAIL_DRAFTED)
    await send("customer/email.received", email, event_id="dev-redelivered")  # after it fired
    await wait_for_action(pool, db.AuditAction.EVENT_DUPLICATE)
    assert len(await db.list_audit(pool, action=db.AuditAction.EMAIL_DRAFTED)) == 1
    assert len(await db.list_audit(pool, action=db.AuditAction.MESSAGE_RECEIVED)) == 1
