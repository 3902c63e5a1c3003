"""One typed settings object for the whole service.

Every module reads configuration from here and nowhere else, so a key is named, typed and
documented once (`.env.example` mirrors this file). Values come from the environment, then
from a `.env` file in the working directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from dotenv import load_dotenv
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent


class Settings(BaseSettings):
    """Configuration for the database, the model and the durable layer."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # `development` (the default) seeds sample data and allows dev-only conveniences;
    # `production` refuses placeholder secrets and unsafe defaults at startup.
    environment: Literal["development", "production"] = "development"

    # Database. Unset means: start the embedded PostgreSQL under `embedded_pg_dir`.
    database_url: str | None = None
    embedded_pg_dir: Path = PROJECT_ROOT / ".pgdata"
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)

    # Model. No key and no base URL means the deterministic offline model.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # Which OpenAI API the agent speaks; Responses unless told otherwise, also with a base URL.
    openai_api: Literal["responses", "chat_completions"] = "responses"
    openai_model: str = "gpt-5-mini"
    openai_timeout_seconds: float = Field(default=60, gt=0)
    openai_max_retries: int = Field(default=2, ge=0)
    agent_max_turns: int = Field(default=10, ge=1)
    # Tracing uploads prompts (customer emails) to OpenAI; it is opt-in.
    openai_agents_tracing: bool = False

    # Durable layer (inngest_app.py).
    inngest_dev: str | None = None
    inngest_signing_key: str | None = None
    inngest_event_key: str | None = None
    refund_approval_timeout_hours: float = Field(default=4.0, gt=0)
    max_email_body_chars: int = Field(default=20_000, ge=1)
    # A waiting refund run re-reads Postgres this often, so a decision whose announcement
    # was lost (or that landed just before the wait began) still settles within minutes.
    decision_recheck_minutes: int = Field(default=10, ge=1, le=24 * 60)

    # The doors (README "Doors"): the inbound-email webhook and the reviewers' desk.
    webhook_username: str = "postmark"
    webhook_password: str | None = None  # unset: the webhook refuses everything
    webhook_max_bytes: int = Field(default=40_000_000, ge=1_000)
    review_desk_users: str | None = None  # "alice:secret,bob:secret"; unset: the desk is closed
    public_url: str = "http://127.0.0.1:8000"  # where reviewers reach the host (links in notifications)
    # Slack-compatible incoming webhook told about each refund waiting for review; unset: skipped.
    reviewer_webhook_url: str | None = None
    # Sentry DSN; when set, function failures are reported through the SDK's Sentry middleware.
    sentry_dsn: str | None = None

    @property
    def reviewers(self) -> dict[str, str]:
        """Desk sign-ins from REVIEW_DESK_USERS, name -> password."""
        pairs = [p.strip() for p in (self.review_desk_users or "").split(",") if p.strip()]
        return dict(p.split(":", 1) for p in pairs if ":" in p)

    # Flow control for the email function (see README "Flow control"). In-flight steps each
    # hold at most one pool connection, so the two concurrency caps together should not
    # exceed DB_POOL_MAX_SIZE.
    email_concurrency: int = Field(default=8, ge=1)  # all email runs at once: protects the pool
    email_concurrency_per_customer: int = Field(default=2, ge=1)  # one noisy customer's share
    email_throttle_per_minute: int = Field(default=30, ge=1)  # run starts/min: the model's rate limit
    # The daily health check: when, and how gently it shares the model and the pool.
    health_check_cron: str = "0 9 * * *"  # Inngest crons are UTC unless prefixed with TZ=
    health_check_concurrency: int = Field(default=2, ge=1)
    health_check_throttle_per_minute: int = Field(default=10, ge=1)
    health_check_fanout_chunk: int = Field(default=1000, ge=1, le=5000)
    # Customers who got a reply or an outreach note this many days ago or less are not checked.
    health_check_contact_cooldown_days: int = Field(default=7, ge=0)

    # Providers (README "Webhook contract"): no event above this many bytes leaves the app
    # (Inngest Cloud's free plan caps an event at 256 KiB); messages are claim-checked in Postgres.
    max_event_bytes: int = Field(default=262_144, ge=4_096)
    # A Slack 429's Retry-After above this many seconds is capped, so the notifier still retries.
    reviewer_webhook_max_retry_after_seconds: int = Field(default=600, ge=1)

    @property
    def inngest_dev_mode(self) -> bool:
        """Dev mode (unsigned calls accepted) when INNGEST_DEV is truthy or a dev server URL."""
        value = (self.inngest_dev or "").strip().lower()
        return value not in ("", "0", "false", "no")

    @property
    def refund_approval_timeout_seconds(self) -> int:
        """The approval deadline in whole seconds (the engine's timeouts are whole seconds)."""
        return max(1, round(self.refund_approval_timeout_hours * 3600))

    @property
    def uses_offline_model(self) -> bool:
        """True when neither OpenAI nor an OpenAI-compatible server is configured."""
        return not (self.openai_api_key or self.openai_base_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process; tests call `get_settings.cache_clear()`.

    `.env` is also loaded into the process environment (without overriding it) because the
    Inngest SDK reads INNGEST_DEV and its keys from the environment itself.
    """
    load_dotenv(override=False)
    return Settings()
