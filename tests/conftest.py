"""Shared fixtures: one real PostgreSQL for the session (embedded unless TEST_DATABASE_URL is
set), a clean seeded dataset for every test, and a guard that fails any real model call."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import agents
import asyncpg
import pytest
from tests_support import Engine, serve

import db
from settings import Settings, get_settings

# Tracing would upload prompts when a key is set; tests never trace.
agents.set_tracing_disabled(True)

# One embedded server per checkout: two checkouts testing at once must not truncate each
# other's tables.
_CHECKOUT = hashlib.sha1(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:10]
_EMBEDDED_DIR = Path(tempfile.gettempdir()) / f"support-worker-test-pg-{_CHECKOUT}"


def _test_database_url() -> str:
    """TEST_DATABASE_URL (a throwaway database: tests truncate it) or the embedded server."""
    return os.environ.get("TEST_DATABASE_URL") or db.start_embedded_postgres(_EMBEDDED_DIR / "data")


@pytest.fixture(scope="session")
def database_url() -> str:
    return _test_database_url()


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
    await pool.execute("TRUNCATE audit_log, refunds, refund_requests, orders, customers RESTART IDENTITY CASCADE")
    await db.seed_sample_data(pool)


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
