"""Fixtures for the chaos suite: a stub engine, the host in its own process, and an admin
connection to the test database for injecting faults and watching locks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

pytest.register_assert_rewrite("chaos.chaos_support")

from inngest_driver import InngestDriver, StubInngestServer  # noqa: E402

import db  # noqa: E402
from chaos.chaos_support import Host, Ledger  # noqa: E402  (after the rewrite hook)


@pytest.fixture
def stub() -> Iterator[StubInngestServer]:
    with StubInngestServer() as server:
        yield server


@pytest.fixture
async def host(database_url: str, stub: StubInngestServer, tmp_path: Path) -> AsyncIterator[Host]:
    served = Host(database_url, stub, tmp_path)
    await served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
async def driver(host: Host, stub: StubInngestServer) -> AsyncIterator[InngestDriver]:
    async with httpx.AsyncClient(base_url=host.url, timeout=60) as http:
        served = InngestDriver(http, stub=stub)
        await served.sync()
        yield served


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, for locks and `pg_terminate_backend`."""
    dsn, options = db.connect_options(database_url)
    conn = await asyncpg.connect(dsn, **options)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def holder(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection, to hold locks in an open transaction while `admin` watches
    (`pg_stat_activity` read inside a transaction is a snapshot that never changes)."""
    dsn, options = db.connect_options(database_url)
    conn = await asyncpg.connect(dsn, **options)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Ledger:
    return Ledger(request.node.name)
