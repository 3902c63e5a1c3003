"""The chaos suite's tools: the host as a separate process that can be SIGKILLed and
restarted, a throwaway Postgres that can be restarted, the faults themselves, and the ledger
each scenario reports from (one summary line per scenario, printed at the end of the session
by `tests/conftest.py`, also under xdist)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from inngest_driver import InngestDriver, StubInngestServer
from tests_support import free_port

import db
from support_worker.core.money import format_money

ROOT = Path(__file__).resolve().parents[2]
DESK_USERS = {"ada": "pw-ada", "alan": "pw-alan", "grace": "pw-grace"}
# Long enough for a host to import and open its pool on a loaded CI machine; polled, not slept.
HOST_START_SECONDS = 60


def with_application_name(database_url: str, name: str) -> str:
    """The URL with `application_name` set, so the test can find the host's backends."""
    parts = urlsplit(database_url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"application_name": name})))


async def wait_until(check: Callable[[], Awaitable[Any]], *, what: str, seconds: float = 30) -> Any:
    """Poll observable state until `check` returns something truthy; fail loudly after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


class Host:
    """`uvicorn inngest_app:app` in its own process, on one port for its whole life, so a
    restarted host is reached at the same address (as the engine would reach it)."""

    def __init__(self, database_url: str, stub: StubInngestServer, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app_name = f"chaos-host-{uuid.uuid4().hex[:8]}"
        self.database_url = database_url
        self.stub, self.workdir = stub, workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = workdir / "host.log"

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "OPENAI_", "DATABASE_"))}
        return (
            keep
            | self.stub.env()
            | {
                "PYTHONPATH": str(ROOT),
                "DATABASE_URL": with_application_name(self.database_url, self.app_name),
                "DB_POOL_MAX_SIZE": "5",
                "DECISION_RECHECK_MINUTES": str(24 * 60),  # one slice per wait, as in tests/conftest.py
                "REVIEW_DESK_USERS": ",".join(f"{u}:{p}" for u, p in DESK_USERS.items()),
            }
        )

    def spawn(self) -> None:
        """Start the host from an empty folder (no developer .env); `start` also waits for it."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "inngest_app:app", "--port", str(self.port), "--no-access-log"],
                cwd=self.workdir,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    async def start(self) -> None:
        """Start the host and wait until /readyz says it reaches Postgres."""
        self.spawn()
        what = f"the host on port {self.port} (log: {self.log})"
        await wait_until(self._ready, what=what, seconds=HOST_START_SECONDS)

    async def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the host exited:\n{self.log.read_text(errors='replace')[-3000:]}")
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{self.url}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no pool close, open transactions left to Postgres."""
        assert self.process is not None and self.process.poll() is None, "the host is not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    async def restart(self) -> None:
        self.kill()
        await self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


# One admin connection serves the driver's hooks and a background killer at once; asyncpg
# runs one operation per connection at a time, so they take turns.
ADMIN_TURN = asyncio.Lock()


async def host_backends(admin: asyncpg.Connection, host: Host) -> list[asyncpg.Record]:
    """The host's Postgres backends (any host process: the killed one's orphans too)."""
    async with ADMIN_TURN:
        return await _host_backends(admin, host)


async def _host_backends(admin: asyncpg.Connection, host: Host) -> list[asyncpg.Record]:
    return await admin.fetch(
        "SELECT pid, state, wait_event_type, query FROM pg_stat_activity WHERE application_name = $1",
        host.app_name,
    )


async def terminate_host_backends(admin: asyncpg.Connection, host: Host) -> int:
    """`pg_terminate_backend` on every connection the host holds; how many were ended."""
    async with ADMIN_TURN:
        ended = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            host.app_name,
        )
    return int(ended or 0)


async def blocked_backend(admin: asyncpg.Connection, host: Host, query_prefix: str) -> int | None:
    """The pid of a host backend waiting on a lock while running `query_prefix...`."""
    async with ADMIN_TURN:
        return await _blocked_backend(admin, host, query_prefix)


async def _blocked_backend(admin: asyncpg.Connection, host: Host, query_prefix: str) -> int | None:
    return await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'"
        " AND query LIKE $2 LIMIT 1",
        host.app_name,
        query_prefix + "%",
    )


@dataclass
class Ledger:
    """What one scenario did, for its summary line: faults injected, runs, money moved."""

    name: str
    faults: dict[str, int] = field(default_factory=dict)
    runs: int = 0

    def fault(self, kind: str, times: int = 1) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + times

    async def report(self, node: pytest.Item, pool: asyncpg.Pool) -> str:
        """Add the summary line to the test's report (shown at session end) and return it."""
        moved = await db.list_refunds(pool)
        faults = ", ".join(f"{kind} x{n}" for kind, n in sorted(self.faults.items())) or "none"
        line = (
            f"{self.name}: faults {sum(self.faults.values())} ({faults}); runs {self.runs};"
            f" money moved {format_money(sum(r.amount_cents for r in moved))} in {len(moved)} refund(s)"
        )
        node.user_properties.append(("chaos", line))
        return line


def driver_for(host: Host, stub: StubInngestServer, http: httpx.AsyncClient) -> InngestDriver:
    """The test driver, over real HTTP to the host process."""
    return InngestDriver(http, stub=stub)


# --------------------------------------------------------------------------- what each scenario asserts

CHARGED_TWICE = {"customer_id": "c-4429", "subject": "Double charge", "body": "I was charged twice for order 1003"}
STORIES = {
    "approved": ["message_received", "refund_requested", "decision_recorded", "refund_issued", "email_drafted"],
    "rejected": ["message_received", "refund_requested", "decision_recorded", "refund_blocked", "email_drafted"],
    "expired": ["message_received", "refund_requested", "refund_blocked", "email_drafted"],
}
REPLIES = {
    "approved": "A refund of $499.00 for order 1003 has been issued",
    "rejected": "we were not able to approve a refund",
    "expired": "could not complete the review of your refund in time",
}


async def assert_story(pool: asyncpg.Pool, run: Any, outcome: str) -> None:
    """Exactly one refund (or none), one decision recorded (none when it expired), no audit
    row written twice, and a reply that says what happened."""
    assert run.status == "completed", run.error
    # Ignored decisions (a storm's losers) are filed under the request's run; they may repeat.
    trail = [e.action.value for e in await db.list_audit(pool, run_id=run.run_id)]
    assert [a for a in trail if a != "decision_ignored"] == STORIES[outcome]
    refunds = await db.list_refunds(pool)
    expected = [(1003, 49_900)] if outcome == "approved" else []
    assert [(r.order_id, r.amount_cents) for r in refunds] == expected
    assert run.output["refund_ids"] == [r.id for r in refunds]
    decisions = await db.list_audit(pool, action=db.AuditAction.DECISION_RECORDED)
    assert len(decisions) == (0 if outcome == "expired" else 1)
    assert await duplicated_audit_rows(pool) == []
    assert REPLIES[outcome] in run.output["reply"], run.output["reply"]
    assert await turns_asked(run) == await turns_journaled(pool, run.run_id), "a journaled turn was asked again"


async def turns_asked(run: Any) -> int:
    """Model turns the run's agent steps asked the model for, as their outputs say (`asked`):
    a step replaying a turn from the journal does not count it."""
    summaries = [m["data"] for m in run.memo.values() if isinstance(m, dict) and "asked" in (m.get("data") or {})]
    assert summaries, "the run has no agent step"
    return sum(int(s["asked"]) for s in summaries)


async def turns_journaled(pool: asyncpg.Pool, run_id: str) -> int:
    """Model turns in the run's journal: each is billed once, by the step that wrote it."""
    return int(await pool.fetchval("SELECT count(*) FROM agent_journal WHERE run_id = $1 AND kind = 'model'", run_id))


async def duplicated_audit_rows(pool: asyncpg.Pool) -> list[tuple[str | None, str, int]]:
    """(run, action, count) for every action written more than once for one run, where only
    one may exist. `decision_ignored` may repeat: each ignored decision is its own row."""
    rows = await pool.fetch(
        "SELECT run_id, action, count(*) AS n FROM audit_log WHERE action <> 'decision_ignored'"
        " GROUP BY run_id, action HAVING count(*) > 1"
    )
    return [(r["run_id"], r["action"], r["n"]) for r in rows]
