"""What the durable functions share in one process, engine-free: the engine's client is typed
`Any` here, so this module never imports the engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from agents import Agent, RunConfig

import worker
from support_worker.core.settings import Settings


@dataclasses.dataclass
class Runtime:
    """What the functions share in one process: settings, the agent and its run config (built
    once: building a RunConfig resolves type hints, a millisecond a call), and the pool the
    host's lifespan opens."""

    settings: Settings
    agent: Agent[worker.SupportContext]
    run_config: RunConfig
    client: Any = None  # the engine's client (inngest.Inngest), set by create_app
    pool: asyncpg.Pool | None = None

    def require_client(self) -> Any:
        if self.client is None:
            raise RuntimeError("the Inngest client is not set; build the app with create_app()")
        return self.client

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the database pool is not open; serve the app through its FastAPI lifespan")
        return self.pool
