"""One typed settings object for the whole service.

Every module reads configuration from here and nowhere else, so a key is named, typed and
documented once (`.env.example` mirrors this file). Values come from the environment, then
from one `.env` file (`env_file()`: the checkout's, or the user data dir's when installed),
read once by `get_settings`. Secrets are
`SecretStr`, so they never show in a repr, a log line or a traceback. With
`ENVIRONMENT=production` the object refuses to exist while a secret is a placeholder or a
production requirement is missing, so a misconfigured deploy fails at startup, not later.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from support_worker.core import cron, operator_checks

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when it is installed (a wheel).

    A checkout is recognised by the project's own root files beside the package, so an
    installed copy in site-packages never mistakes itself for one.
    """
    candidate = PACKAGE_DIR.parent
    markers = ("pyproject.toml", "inngest_app.py", "worker.py")
    return candidate if all((candidate / name).is_file() for name in markers) else None


def data_home() -> Path:
    """Where local state lives: the checkout when run from one, else the user's data dir.

    Never site-packages: an installed wheel keeps its embedded database and `.env` in
    `platformdirs.user_data_dir("support-worker")` (`~/.local/share/support-worker` on Linux).
    """
    return checkout_root() or Path(user_data_dir("support-worker", appauthor=False))


def env_file() -> Path:
    """The one `.env` every command reads, wherever it starts from: `SUPPORT_WORKER_ENV_FILE`,
    else `.env` in `data_home()`."""
    override = os.environ.get("SUPPORT_WORKER_ENV_FILE")
    return Path(override) if override else data_home() / ".env"


# Signs the desk's form tokens in development only; production refuses it (see below).
DEV_DESK_FORM_SECRET = "dev-only-desk-form-secret"
# Values people leave in a config file meaning "fill me in"; compared case-insensitively.
PLACEHOLDERS = frozenset({"", "change-me", "changeme", "secret", "password"})
# Every setting that holds a secret, by field name; production checks each for placeholders.
SECRET_FIELDS = (
    "database_url",
    "openai_api_key",
    "inngest_signing_key",
    "inngest_event_key",
    "webhook_password",
    "review_desk_users",
    "sentry_dsn",
    "desk_form_secret",
    "senior_support_webhook_url",
    "postmark_server_token",
)


class Settings(BaseSettings):
    """Configuration for the database, the model, the durable layer and the doors."""

    # hide_input_in_errors: a refusal never echoes the values it was given (secrets among them).
    model_config = SettingsConfigDict(
        env_file=None, env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    # `development` (the default) seeds sample data and allows dev-only conveniences;
    # `production` refuses placeholder secrets and unsafe defaults at startup.
    environment: Literal["development", "production"] = "development"

    # Database. Unset means: start the embedded PostgreSQL under `embedded_pg_dir`.
    database_url: SecretStr | None = None  # a URL with a password in it
    embedded_pg_dir: Path = Field(default_factory=lambda: data_home() / ".pgdata")
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=20, ge=1)  # 003 D6: the course's pool

    # Model. No key and no base URL means the deterministic offline model.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # Which OpenAI API the agent speaks; most compatible servers now serve Responses too.
    openai_api: Literal["responses", "chat_completions"] = "responses"
    openai_model: str = "gpt-5-mini"
    openai_timeout_seconds: float = Field(default=60, gt=0)  # one model request
    openai_max_retries: int = Field(default=2, ge=0)  # the OpenAI client's own retries per request
    agent_max_turns: int = Field(default=10, ge=1)  # model turns in one run before it stops
    # Tracing uploads prompts (customer emails) to OpenAI; it is opt-in.
    openai_agents_tracing: bool = False
    # Whether OpenAI keeps each response (the Responses API keeps them 30 days by default, with
    # the customer's email in them). Off: nothing is kept and reasoning travels encrypted.
    openai_store: bool = False

    # Durable layer (inngest_app.py).
    inngest_dev: str | None = None
    inngest_signing_key: SecretStr | None = None
    inngest_event_key: SecretStr | None = None
    # The public origin Inngest calls (https://support.example.com); the SDK's serve_origin.
    # Required in production: otherwise the SDK registers whatever URL a sync's Host names.
    inngest_serve_origin: str | None = None
    # How old a signed request from Inngest may be before it is refused (replay window).
    signature_max_age_seconds: int = Field(default=300, ge=1)
    refund_approval_timeout_hours: float = 4.0
    max_email_body_chars: int = Field(default=20_000, ge=1)
    # A waiting refund run re-reads Postgres this often, so a decision whose announcement
    # was lost (or that landed just before the wait began) still settles within minutes.
    decision_recheck_minutes: int = Field(default=10, ge=1, le=24 * 60)
    # Tries to reach the reviewer webhook inside the step that opens a refund request; a
    # notifier still down after them is audited (`reviewer_notify_failed`), never retried by
    # failing the step, so a dead notifier cannot cost the refund.
    reviewer_notify_attempts: int = Field(default=3, ge=1, le=10)
    # The agent's journal (model turns and tool results of each durable run, in Postgres) is
    # deleted this many days after it was written, by the daily clean-up. A run paused for a
    # reviewer resumes from its journal, so this must outlast the refund approval timeout.
    agent_journal_retention_days: int = Field(default=14, ge=1, le=3650)

    # The doors (docs/doors.md): the inbound-email webhook and the reviewers' desk.
    webhook_username: str = "postmark"
    webhook_password: SecretStr | None = None  # unset: the webhook refuses everything
    webhook_max_bytes: int = Field(default=50_000_000, ge=1_000)  # Postmark: ~35 MB mail, base64 in JSON
    # Longest an HTML-only email's conversion to text may take (in a child process); past it,
    # tags are stripped instead, so hostile markup can neither stall the host nor lose the email.
    webhook_html_seconds: float = Field(default=5.0, gt=0, le=60)
    review_desk_users: SecretStr | None = None  # "alice:pw1,bob:pw2"; unset: the desk is closed
    # Signs the desk's form tokens; every process serving the desk must share it.
    desk_form_secret: SecretStr = SecretStr(DEV_DESK_FORM_SECRET)
    public_url: str = "http://127.0.0.1:8000"  # where reviewers reach the host (links in notifications)
    # Slack-compatible incoming webhook told about each refund waiting for review; unset: skipped.
    reviewer_webhook_url: str | None = None
    # Wrong credentials on the desk or the webhook: this many within the window lock the client
    # (and the user name, for clients it has not signed in from) out with 429 (doors/auth_limits.py).
    auth_max_failures: int = Field(default=5, ge=1, le=1000)
    auth_failure_window_seconds: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    # Sentry DSN; when set, function failures are reported through the SDK's Sentry middleware.
    sentry_dsn: SecretStr | None = None
    # Sending replies (docs/doors.md). Every reply is saved as a draft (003 D3); with a Postmark
    # server token and a sender address both set, each draft is also sent, once, in the thread.
    postmark_server_token: SecretStr | None = None
    reply_from_email: str | None = None  # a confirmed Postmark sender signature, e.g. support@example.com
    postmark_api_url: str = "https://api.postmarkapp.com"
    postmark_message_stream: str = "outbound"

    # Flow control, the course's values (001 D4, 003 D5-D7; docs/course.md, docs/durable.md). In-flight steps
    # each hold at most one pool connection, so the caps together (email 10, health checks 5,
    # escalations 5) should not exceed DB_POOL_MAX_SIZE (20).
    email_concurrency: int = Field(default=10, ge=1)  # all email runs at once: protects the pool
    email_concurrency_per_customer: int = Field(default=2, ge=1)  # one noisy customer's share
    email_throttle_per_minute: int = Field(default=30, ge=1)  # run starts/min: the model's rate limit
    # One answer to a burst (docs/durable.md): a customer's emails less than this many seconds
    # apart are answered together, by one run, this long after the last (Inngest debounce keyed
    # on the customer). 0 answers every email on its own, at once.
    email_burst_seconds: int = Field(default=60, ge=0, le=7 * 24 * 3600)
    # A customer who keeps writing is answered at the latest this long after the burst began.
    email_burst_timeout_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    email_burst_max_messages: int = Field(default=10, ge=1, le=50)  # at most this many in one answer
    # The daily health check: when, and how gently it shares the model and the pool.
    health_check_cron: str = "0 9 * * *"  # Inngest crons are UTC unless prefixed with TZ=
    health_check_concurrency: int = Field(default=5, ge=1)  # 003 D5: 5 globally
    health_check_throttle_per_minute: int = Field(default=30, ge=1)  # 003 D6
    health_check_fanout_chunk: int = Field(default=1000, ge=1, le=5000)
    # Customers who got a reply or an outreach note this many days ago or less are not checked.
    health_check_contact_cooldown_days: int = Field(default=7, ge=0)
    # Controls (docs/controls.md): refunds above this many cents need two different reviewers.
    refund_four_eyes_cents: int = Field(default=50_000, ge=0)
    # Four eyes counts totals: what an order was ever refunded, and what a customer was refunded
    # over this many days, plus every refund still pending or approved (docs/controls.md).
    refund_four_eyes_window_days: int = Field(default=30, ge=1, le=3650)
    # Whether a decision event must name its reviewer. Unset: on in production, off in
    # development, where the course's decisions (no reviewer) are recorded as `event:<id>`.
    decisions_require_reviewer: bool | None = None

    # The escalation gate (docs/durable.md, "Escalations") and the cost cap per conversation.
    # Slack-compatible incoming webhook of the senior support channel (its URL holds a token);
    # unset: approved escalations are recorded and audited but posted nowhere.
    senior_support_webhook_url: SecretStr | None = None
    escalation_timeout_hours: float = 4.0  # then the draft is posted under "no human review"
    escalation_concurrency: int = Field(default=5, ge=1)  # escalation runs at once (003 D7)
    # Tokens one email's run may spend on the model before it stops and escalates instead.
    conversation_token_budget: int = Field(default=200_000, ge=1)

    @field_validator("escalation_timeout_hours")
    @classmethod
    def _escalation_whole_seconds(cls, hours: float) -> float:
        """The engine waits in whole seconds; refuse a value it would silently round."""
        seconds = hours * 3600
        if not (math.isfinite(seconds) and abs(seconds - round(seconds)) <= 1e-6 and round(seconds) >= 1):
            raise ValueError(
                f"ESCALATION_TIMEOUT_HOURS={hours} comes to {seconds:g} seconds; it must be a whole number "
                "of seconds and at least one second: use e.g. 0.25 (15 minutes) or 4"
            )
        return hours

    @field_validator("health_check_cron")
    @classmethod
    def _cron_inngest_accepts(cls, spec: str) -> str:
        """Inngest refuses the whole sync over one cron it cannot parse: refuse it here, by name."""
        why = cron.problem(spec)
        if why:
            raise ValueError(
                f"HEALTH_CHECK_CRON={spec!r} is not a schedule Inngest accepts ({why}); it takes five fields "
                "(minute hour day-of-month month day-of-week), optionally after TZ=<zone>, e.g. '0 9 * * *' "
                "or 'TZ=Europe/Paris 30 8 * * *'; no seconds field and no @daily-style descriptors"
            )
        return spec

    @property
    def escalation_timeout_seconds(self) -> int:
        return round(self.escalation_timeout_hours * 3600)

    @field_validator("refund_approval_timeout_hours")
    @classmethod
    def _whole_seconds(cls, hours: float) -> float:
        """The engine waits in whole seconds; refuse a value it would silently round."""
        seconds = hours * 3600
        whole = math.isfinite(seconds) and abs(seconds - round(seconds)) <= 1e-6
        if not whole or round(seconds) < 1:
            raise ValueError(
                f"REFUND_APPROVAL_TIMEOUT_HOURS={hours} comes to {seconds:g} seconds; it must be a whole number "
                "of seconds and at least one second: use e.g. 0.25 (15 minutes) or 4"
            )
        return hours

    @model_validator(mode="after")
    def _burst_timeout_covers_a_window(self) -> Self:
        if self.email_burst_seconds and self.email_burst_timeout_seconds < self.email_burst_seconds:
            raise ValueError(
                f"EMAIL_BURST_TIMEOUT_SECONDS ({self.email_burst_timeout_seconds}) must be at least "
                f"EMAIL_BURST_SECONDS ({self.email_burst_seconds}): it caps how long a burst may keep growing"
            )
        return self

    @model_validator(mode="after")
    def _journal_outlasts_a_paused_run(self) -> Self:
        if self.agent_journal_retention_days * 86_400 <= self.refund_approval_timeout_seconds:
            raise ValueError(
                f"AGENT_JOURNAL_RETENTION_DAYS ({self.agent_journal_retention_days}) must be longer than "
                f"REFUND_APPROVAL_TIMEOUT_HOURS ({self.refund_approval_timeout_hours:g}): a run waiting for "
                "a reviewer resumes from its journal"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        problems = [] if self.environment == "development" else production_problems(self)
        if problems:
            listed = "\n  - ".join(problems)
            raise ValueError(f"Refusing to start with ENVIRONMENT=production:\n  - {listed}")
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy whose changes are validated like a fresh read.

        pydantic's own `model_copy(update=...)` skips validation, which would let a plain
        `str` stand where a `SecretStr` is promised and skip the production checks.
        """
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate(dict(self) | dict(update))

    @field_validator("review_desk_users")
    @classmethod
    def _one_reading_of_the_reviewers(cls, users: SecretStr | None) -> SecretStr | None:
        """Refuse, in every environment, a list that could be read two ways (`operator_checks`)."""
        if users is not None:
            operator_checks.parse_reviewers(users.get_secret_value())
        return users

    @property
    def reviewers(self) -> dict[str, SecretStr]:
        """Desk sign-ins from REVIEW_DESK_USERS, name -> password (`name:pw,...` or a JSON object)."""
        raw = self.review_desk_users.get_secret_value() if self.review_desk_users else ""
        return {name: SecretStr(password) for name, password in operator_checks.parse_reviewers(raw).items()}

    @property
    def refund_approval_timeout_seconds(self) -> int:
        """How long a refund waits for a reviewer, in the whole seconds the engine counts."""
        return round(self.refund_approval_timeout_hours * 3600)

    # Providers (docs/doors.md, "Webhook contract"): no event above this many bytes leaves the app
    # (Inngest Cloud's free plan caps an event at 256 KiB); messages are claim-checked in Postgres.
    max_event_bytes: int = Field(default=262_144, ge=4_096)
    # A Slack 429's Retry-After above this many seconds is capped, so the notifier still retries.
    reviewer_webhook_max_retry_after_seconds: int = Field(default=600, ge=1)

    @property
    def require_named_reviewer(self) -> bool:
        """DECISIONS_REQUIRE_REVIEWER, or by default: only in production."""
        if self.decisions_require_reviewer is not None:
            return self.decisions_require_reviewer
        return self.environment == "production"

    @property
    def inngest_dev_mode(self) -> bool:
        """Dev mode (unsigned calls accepted) when INNGEST_DEV is truthy or a dev server URL."""
        value = (self.inngest_dev or "").strip().lower()
        return value not in ("", "0", "false", "no")

    @property
    def uses_offline_model(self) -> bool:
        """True when neither OpenAI nor an OpenAI-compatible server is configured."""
        return not (self.openai_api_key or self.openai_base_url)


def _secret_values(settings: Settings, name: str) -> Iterator[tuple[str, str]]:
    """(where, value) for each secret inside one setting: a reviewer's password, a URL's password."""
    value: SecretStr | None = getattr(settings, name)
    if value is None:
        return
    raw = value.get_secret_value()
    if name == "review_desk_users" and raw.strip():
        for reviewer, password in settings.reviewers.items():
            yield f"REVIEW_DESK_USERS (reviewer {reviewer!r})", password.get_secret_value()
    elif name == "database_url" and urlsplit(raw).password is not None:
        yield "DATABASE_URL (its password)", urlsplit(raw).password or ""
    else:
        yield name.upper(), raw


def _placeholder_problems(settings: Settings) -> list[str]:
    problems = []
    for name in SECRET_FIELDS:
        default = Settings.model_fields[name].default
        dev_default = default.get_secret_value() if isinstance(default, SecretStr) else None
        for where, value in _secret_values(settings, name):
            if value.strip().lower() in PLACEHOLDERS or value == dev_default:
                problems.append(
                    f"{where} is a placeholder ({value.strip()!r}); set a real secret, "
                    f"or remove the line if you do not use this feature"
                )
            elif value != value.strip():
                problems.append(f"{where} begins or ends with whitespace (a pasted newline?); remove it")
    return problems


def _weak_secret_problems(settings: Settings) -> list[str]:
    """Secrets that are set but weak or malformed (`operator_checks` states the rules)."""
    checks = operator_checks
    problems = []
    for name, secret_password in settings.reviewers.items():
        problems.append(
            checks.password_problem(
                f"REVIEW_DESK_USERS (reviewer {name!r})", name=name, password=secret_password.get_secret_value()
            )
        )
    if settings.webhook_password is not None:
        password = settings.webhook_password.get_secret_value()
        problems.append(checks.password_problem("WEBHOOK_PASSWORD", name=settings.webhook_username, password=password))
    if settings.inngest_signing_key is not None:
        problems.append(checks.signing_key_problem(settings.inngest_signing_key.get_secret_value()))
    if settings.inngest_serve_origin:
        problems.append(checks.origin_problem(settings.inngest_serve_origin))
    secret = settings.desk_form_secret.get_secret_value()
    if secret != DEV_DESK_FORM_SECRET:
        problems.append(checks.form_secret_problem(secret))
    return [p for p in problems if p]


def production_problems(settings: Settings) -> list[str]:
    """Everything that makes these settings unsafe to serve the public with, one line each."""
    problems = _placeholder_problems(settings)
    required = {
        "inngest_signing_key": "copy it from the Inngest dashboard (Manage > Signing key)",
        "inngest_event_key": "create one in the Inngest dashboard (Manage > Event keys)",
        "inngest_serve_origin": "set it to the public origin Inngest calls, e.g. https://support.example.com",
    }
    for name, how in required.items():
        if not getattr(settings, name):
            problems.append(f"{name.upper()} is not set; {how}")
    problems += _weak_secret_problems(settings)
    if settings.desk_form_secret.get_secret_value() == DEV_DESK_FORM_SECRET:
        problems.append(
            "DESK_FORM_SECRET is the development placeholder; set a random value shared by every process, "
            'e.g. python3 -c "import secrets; print(secrets.token_hex(32))"'
        )
    if settings.inngest_dev_mode:
        problems.append(
            f"INNGEST_DEV={settings.inngest_dev} turns on dev mode, which accepts unsigned calls; "
            "unset it in production"
        )
    return problems


def export_for_inngest(settings: Settings) -> None:
    """Put INNGEST_DEV where the Inngest SDK looks for it: the process environment.

    The SDK reads the dev server's URL from os.environ itself; everything else it needs is
    passed in code from these settings. A value already in the environment is left alone.
    """
    if settings.inngest_dev:
        os.environ.setdefault("INNGEST_DEV", settings.inngest_dev)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process (environment, then `.env`); tests call
    `get_settings.cache_clear()`."""
    settings = Settings(_env_file=env_file())  # type: ignore[call-arg]  # pydantic-settings' init-only option
    export_for_inngest(settings)
    return settings
