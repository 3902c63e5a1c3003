"""Shared fixtures: a real PostgreSQL database per xdist worker (on the embedded server unless
TEST_DATABASE_URL names a server), a clean seeded dataset for every test, and a guard that
fails any real model call."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import agents
import asyncpg
import pytest
from tests_support import Engine, serve

import db
from support_worker.core.settings import Settings, get_settings
from support_worker.store import migrate, postgres, sample_data, schema

# A developer's own `.env` never changes a test's outcome (subprocesses inherit this).
os.environ["SUPPORT_WORKER_ENV_FILE"] = os.devnull
# Tracing would upload prompts when a key is set; tests never trace.
agents.set_tracing_disabled(True)

# One embedded server per checkout, and database names carrying the checkout: two checkouts
# testing at once (or sharing TEST_DATABASE_URL) never touch each other's databases.
_CHECKOUT = hashlib.sha1(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:10]
_EMBEDDED_DIR = Path(tempfile.gettempdir()) / f"support-worker-test-pg-{_CHECKOUT}"
# "gw0", "gw1", ... under pytest-xdist; one name when run without it.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# Workers starting together queue here: one builds the template, and nobody copies a
# template while another session is connected to it (CREATE DATABASE ... TEMPLATE refuses).
_TEMPLATE_LOCK_KEY = 7262613

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run setup code outside pytest-asyncio's session loop, which must stay the current one."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def _server_url() -> str:
    """TEST_DATABASE_URL (a server where the tests may create databases) or the embedded one."""
    return os.environ.get("TEST_DATABASE_URL") or postgres.start_embedded_postgres(_EMBEDDED_DIR / "data")


def with_database(server_url: str, name: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def _admin(server_url: str) -> asyncpg.Connection:
    dsn, options = db.connect_options(server_url)
    return await asyncpg.connect(dsn, **options)


def _template_name() -> str:
    """Named after what it holds, so a new migration or audit action builds a new template."""
    digest = hashlib.sha256()
    for migration in migrate.load_migrations():
        digest.update(migration.checksum.encode())
    digest.update(",".join(a.value for a in db.AuditAction).encode())
    return f"sw_template_{_CHECKOUT}_{digest.hexdigest()[:10]}"


async def _build_template(admin: asyncpg.Connection, server_url: str, template: str) -> None:
    """Migrate a fresh database, then rename it: a crash midway never leaves a half template."""
    building = f"{template}_building"
    await admin.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{building}"')
    conn = await _admin(with_database(server_url, building))
    try:
        await schema.migrate_database(conn)
    finally:
        await conn.close()
    # Templates of older migration files are no use to anyone; only this checkout's are dropped.
    stale = await admin.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1 AND datname <> $2",
        f"sw_template_{_CHECKOUT}_%",
        building,
    )
    for row in stale:
        await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    await admin.execute(f'ALTER DATABASE "{building}" RENAME TO "{template}"')


# Test data is thrown away, so the embedded test server (never a developer's ./.pgdata, never
# TEST_DATABASE_URL) skips waiting for the disk: every commit, CREATE DATABASE and checkpoint
# otherwise waits on fsync, which on a busy machine is most of a test's setup.
_DISPOSABLE_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


async def _create_worker_database(server_url: str, name: str) -> None:
    template = _template_name()
    admin = await _admin(server_url)
    try:
        await admin.execute("SELECT pg_advisory_lock($1)", _TEMPLATE_LOCK_KEY)
        if not os.environ.get("TEST_DATABASE_URL"):
            for setting, value in _DISPOSABLE_SERVER_SETTINGS.items():
                await admin.execute(f"ALTER SYSTEM SET {setting} = {value}")
            await admin.execute("SELECT pg_reload_conf()")
        if not await admin.fetchval("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", template):
            await _build_template(admin, server_url, template)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()  # also releases the advisory lock


async def _drop_database(server_url: str, name: str) -> None:
    admin = await _admin(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def server_url() -> str:
    return _server_url()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """This worker's own database, copied from the migrated template (fast: a file copy)."""
    name = f"sw_test_{_CHECKOUT}_{_WORKER}"
    _run(_create_worker_database(server_url, name))
    yield with_database(server_url, name)
    _run(_drop_database(server_url, name))


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A brand-new database with no tables at all, for tests of migrating itself."""
    name = f"sw_empty_{_CHECKOUT}_{_WORKER}_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = await _admin(server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    _run(create())
    yield with_database(server_url, name)
    _run(_drop_database(server_url, name))


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        openai_api_key=None,
        openai_base_url=None,
        db_pool_max_size=5,
        # One slice per wait: the driver's timeouts are instant, slices are tested on their own.
        decision_recheck_minutes=24 * 60,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with db.open_pool(settings) as session_pool:
        yield session_pool


async def reset_data(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "TRUNCATE audit_log, model_usage, agent_journal, refunds, refund_requests, orders, customers, messages"
        " RESTART IDENTITY CASCADE"
    )
    await sample_data.seed(pool)


@pytest.fixture(autouse=True)
async def clean_data(pool: asyncpg.Pool) -> None:
    await reset_data(pool)


@pytest.fixture
async def engine(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    async with serve(settings, monkeypatch, pool) as served:
        yield served


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fake_openai: the test's OpenAI models talk HTTP to tests/fake_openai.py, so real calls are allowed"
    )


@pytest.fixture(autouse=True)
def no_real_model_calls(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Any call to a real OpenAI model fails the test: tests run offline and deterministic.
    Tests marked ``fake_openai`` keep the real model classes, pointed at the loopback fake."""

    async def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to call a real OpenAI model")

    from agents.models.openai_chatcompletions import OpenAIChatCompletionsModel
    from agents.models.openai_responses import OpenAIResponsesModel

    if request.node.get_closest_marker("fake_openai") is None:
        monkeypatch.setattr(OpenAIResponsesModel, "get_response", refuse)
        monkeypatch.setattr(OpenAIChatCompletionsModel, "get_response", refuse)
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per chaos scenario (faults injected, runs, money moved). The lines travel in
    the reports' user_properties, so they reach this summary from xdist workers too, and
    are printed whether or not output is captured."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", [])
        if name == "chaos"
    ]
    if lines:
        terminalreporter.section("chaos")
        for line in sorted(lines):
            terminalreporter.write_line(line)
