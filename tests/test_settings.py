"""Settings: the defaults a fresh checkout runs on, and what production refuses at startup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from support_worker.core import settings as settings_module
from support_worker.core.settings import DEV_DESK_FORM_SECRET, Settings

SAFE_PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "inngest_dev": None,
    "inngest_signing_key": "signkey-prod-" + "0123456789abcdef" * 4,
    "inngest_event_key": "evtkey-0123456789abcdef",
    "inngest_serve_origin": "https://support.example.com",
    "desk_form_secret": "8f3c1a9e5b7d2f4a6c8e0b1d3f5a7c9e",
}


def fresh(**values: Any) -> Settings:
    """Settings from these values only: no `.env` file, whatever the working directory holds."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def production(**overrides: Any) -> Settings:
    return fresh(**(SAFE_PRODUCTION | overrides))


def refusal(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as error:
        production(**overrides)
    return str(error.value)


# --------------------------------------------------------------------------- defaults


def test_development_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_API", "OPENAI_MODEL", "INNGEST_DEV", "ENVIRONMENT", "DESK_FORM_SECRET"):
        monkeypatch.delenv(key, raising=False)
    s = fresh()
    assert s.environment == "development"
    assert (s.openai_api, s.openai_model) == ("responses", "gpt-5-mini")
    assert (s.openai_timeout_seconds, s.openai_max_retries, s.agent_max_turns) == (60, 2, 10)
    assert s.signature_max_age_seconds == 300
    assert s.refund_approval_timeout_hours == 4 and s.refund_approval_timeout_seconds == 14_400
    assert s.inngest_serve_origin is None
    assert s.desk_form_secret.get_secret_value() == DEV_DESK_FORM_SECRET


def test_the_responses_api_stays_the_default_with_a_compatible_server() -> None:
    assert fresh(openai_base_url="http://127.0.0.1:11434/v1").openai_api == "responses"
    assert fresh(openai_api="chat_completions").openai_api == "chat_completions"
    with pytest.raises(ValidationError, match=r"OPENAI_API|openai_api"):
        fresh(openai_api="completions")


def test_every_secret_is_a_secret_str_and_never_printed() -> None:
    s = fresh(
        openai_api_key="sk-live-abc",
        inngest_signing_key="signkey-x",
        inngest_event_key="evt-x",
        webhook_password="hook-pw",
        review_desk_users="alice:alice-pw",
        sentry_dsn="https://key@o0.ingest.sentry.io/1",
        database_url="postgresql://u:db-pw@localhost/db",
        desk_form_secret="form-secret-x",
        senior_support_webhook_url="https://hooks.example.com/services/senior-token",
        postmark_server_token="postmark-token-x",
    )
    for name in settings_module.SECRET_FIELDS:
        assert isinstance(getattr(s, name), SecretStr), name
    shown = repr(s) + str(s.model_dump())
    secrets = ("sk-live-abc", "signkey-x", "hook-pw", "alice-pw", "db-pw", "form-secret-x", "senior-token")
    for value in (*secrets, "postmark-token-x"):
        assert value not in shown
    assert s.reviewers["alice"].get_secret_value() == "alice-pw"


def test_a_copy_with_changes_is_validated_like_a_fresh_read() -> None:
    copied = fresh().model_copy(update={"webhook_password": "hook-pw", "refund_approval_timeout_hours": 0.5})
    assert isinstance(copied.webhook_password, SecretStr)
    assert copied.refund_approval_timeout_seconds == 1800
    with pytest.raises(ValidationError, match="REFUND_APPROVAL_TIMEOUT_HOURS"):
        fresh().model_copy(update={"refund_approval_timeout_hours": 1 / 7})


def test_a_safe_production_configuration_starts() -> None:
    s = production()
    assert s.environment == "production" and not s.inngest_dev_mode


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("hours", [1 / 7, 0.0001, 1 / 3600 / 2])
def test_a_timeout_that_is_not_a_whole_number_of_seconds_is_refused(hours: float) -> None:
    with pytest.raises(ValidationError) as error:
        fresh(refund_approval_timeout_hours=hours)
    message = str(error.value)
    assert "REFUND_APPROVAL_TIMEOUT_HOURS" in message and "whole number of seconds" in message


@pytest.mark.parametrize(("hours", "seconds"), [(1 / 3600, 1), (0.1, 360), (0.25, 900), (72, 259_200)])
def test_timeouts_in_whole_seconds_are_accepted(hours: float, seconds: int) -> None:
    assert fresh(refund_approval_timeout_hours=hours).refund_approval_timeout_seconds == seconds


def test_a_zero_or_negative_timeout_is_refused() -> None:
    for hours in (0, -1):
        with pytest.raises(ValidationError, match="at least one second"):
            fresh(refund_approval_timeout_hours=hours)


def test_a_burst_timeout_shorter_than_the_burst_window_is_refused() -> None:
    """Inngest's debounce `timeout` caps how long `period` may stretch: shorter than one period,
    every burst would end at the timeout, which is a misconfiguration to name, not to run."""
    with pytest.raises(ValidationError, match=r"EMAIL_BURST_TIMEOUT_SECONDS .* at least EMAIL_BURST_SECONDS"):
        fresh(email_burst_seconds=120, email_burst_timeout_seconds=60)
    assert fresh(email_burst_seconds=0, email_burst_timeout_seconds=1).email_burst_seconds == 0  # bursts off


# --------------------------------------------------------------------------- production refusals


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("openai_api_key", "change-me"),
        ("inngest_signing_key", "changeme"),
        ("inngest_event_key", "secret"),
        ("webhook_password", "password"),
        ("sentry_dsn", ""),
        ("desk_form_secret", "Change-Me"),
        ("desk_form_secret", DEV_DESK_FORM_SECRET),
        ("webhook_password", "  "),
    ],
)
def test_production_refuses_placeholder_secrets_naming_the_variable(name: str, value: str) -> None:
    message = refusal(**{name: value})
    assert name.upper() in message and "placeholder" in message
    assert "Refusing to start with ENVIRONMENT=production" in message


def test_production_refuses_a_placeholder_reviewer_password_naming_the_reviewer() -> None:
    message = refusal(review_desk_users="alice:Str0ng-pass-1,bob:change-me")
    assert "REVIEW_DESK_USERS" in message and "bob" in message and "alice" not in message


def test_production_refuses_a_placeholder_database_password() -> None:
    message = refusal(database_url="postgresql://app:password@db.example.com/app")
    assert "DATABASE_URL" in message and "placeholder" in message
    assert production(database_url="postgresql://app:Xk2-9fq@db.example.com/app").database_url is not None


@pytest.mark.parametrize(
    "missing", ["inngest_signing_key", "inngest_event_key", "inngest_serve_origin", "desk_form_secret"]
)
def test_production_requires_the_inngest_keys_the_serve_origin_and_a_form_secret(missing: str) -> None:
    values = {k: v for k, v in SAFE_PRODUCTION.items() if k != missing}
    with pytest.raises(ValidationError) as error:
        fresh(**values)
    assert missing.upper() in str(error.value)


@pytest.mark.parametrize("dev", ["1", "true", "http://127.0.0.1:8288"])
def test_production_refuses_inngest_dev_mode(dev: str) -> None:
    message = refusal(inngest_dev=dev)
    assert "INNGEST_DEV" in message and "unset" in message


def test_every_problem_is_listed_at_once() -> None:
    message = refusal(inngest_signing_key=None, webhook_password="secret", inngest_dev="1")
    for name in ("INNGEST_SIGNING_KEY", "WEBHOOK_PASSWORD", "INNGEST_DEV"):
        assert name in message


def test_development_accepts_placeholders_and_dev_mode() -> None:
    s = fresh(webhook_password="change-me", inngest_dev="1", review_desk_users="alice:secret")
    assert s.inngest_dev_mode and s.reviewers["alice"].get_secret_value() == "secret"


# --------------------------------------------------------------------------- weak and malformed (issue 21)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"desk_form_secret": "x"}, "DESK_FORM_SECRET is shorter than 32"),
        ({"desk_form_secret": "a" * 31}, "DESK_FORM_SECRET is shorter than 32"),
        ({"review_desk_users": "alice:x"}, "reviewer 'alice') is shorter than 12"),
        ({"review_desk_users": "alice:alice"}, "reviewer 'alice') is shorter than 12"),
        ({"review_desk_users": "alice-the-reviewer:ALICE-THE-REVIEWER"}, "is the user's own name"),
        ({"webhook_password": "short-pw"}, "WEBHOOK_PASSWORD is shorter than 12"),
        ({"webhook_username": "postmark-inbound", "webhook_password": "Postmark-Inbound"}, "own name"),
        ({"inngest_signing_key": SAFE_PRODUCTION["inngest_signing_key"] + "\n"}, "whitespace"),
        ({"inngest_signing_key": " " + SAFE_PRODUCTION["inngest_signing_key"]}, "whitespace"),
        ({"inngest_signing_key": "signkey-prod-" + "zz" * 32}, "is not signkey-<env>-<hex>"),
        ({"inngest_signing_key": "sk-prod-" + "ab" * 32}, "is not signkey-<env>-<hex>"),
        ({"inngest_signing_key": "signkey-prod-" + "a" * 63}, "hex digits"),
        ({"inngest_signing_key": "signkey-prod-abcd"}, "hex digits"),
        ({"inngest_event_key": "evtkey-0123456789abcdef\n"}, "INNGEST_EVENT_KEY begins or ends with whitespace"),
        ({"inngest_serve_origin": "https://"}, "https://host[:port]"),
        ({"inngest_serve_origin": "http://support.example.com"}, "https://host[:port]"),
        ({"inngest_serve_origin": "support.example.com"}, "https://host[:port]"),
        ({"inngest_serve_origin": "https://support.example.com/api"}, "without a path"),
        ({"inngest_serve_origin": "https://support.example.com?x=1"}, "without a path"),
        ({"inngest_serve_origin": "https://support.example.com:99999"}, "port"),
        ({"inngest_serve_origin": "https://user:pw@support.example.com"}, "credentials"),
    ],
)
def test_production_refuses_weak_or_malformed_secrets_and_origins(overrides: dict[str, str], named: str) -> None:
    message = refusal(**overrides)
    assert named in message
    for name, value in overrides.items():
        if name in settings_module.SECRET_FIELDS and len(value.strip()) >= 8:
            assert value.strip() not in message  # a secret is named, never shown


@pytest.mark.parametrize(
    "good",
    [
        {"inngest_serve_origin": "https://support.example.com:8443"},
        {"inngest_serve_origin": "https://support.example.com/"},
        {"inngest_signing_key": "signkey-test-" + "AB" * 32},
        {"inngest_signing_key": "signkey-branch-" + "0f" * 16},
        {"review_desk_users": "alice:Tr0ub4dor&3horse,bob:correct-horse-battery"},
        {"review_desk_users": '{"alice": "Tr0ub4dor,&3horse", "bob": "correct:horse,battery"}'},
        {"webhook_password": "a-long-webhook-password"},
    ],
)
def test_production_accepts_strong_well_formed_values(good: dict[str, str]) -> None:
    assert production(**good).environment == "production"


@pytest.mark.parametrize("environment", ["development", "production"])
@pytest.mark.parametrize(
    ("users", "said"),
    [
        ("alice:Tr0ub4dor,&3horse", "item 2 is not name:password"),
        ("alice:long-password-1,,bob:long-password-2", "item 2 is not name:password"),
        ("alice:", "item 1 is not name:password"),
        (":long-password-1", "item 1 is not name:password"),
        ("alice:long-password-1,Alice :long-password-2", "which are one reviewer"),
        ('{"alice": "long-password-1", "ＡＬＩＣＥ": "long-password-2"}', "which are one reviewer"),
        ('{"alice": 12}', "object of names to passwords"),
        ('{"alice": "x"', "not valid JSON"),
    ],
)
def test_a_reviewer_list_that_cannot_be_read_one_way_is_refused_everywhere(
    environment: str, users: str, said: str
) -> None:
    values = SAFE_PRODUCTION if environment == "production" else {}
    with pytest.raises(ValidationError) as error:
        fresh(**(values | {"review_desk_users": users}))
    assert said in str(error.value)
    assert "Tr0ub4dor" not in str(error.value) and "&3horse" not in str(error.value)


def test_a_password_with_a_comma_is_kept_whole_in_the_json_form() -> None:
    s = fresh(review_desk_users='{"alice": "Tr0ub4dor,&3horse"}')
    assert s.reviewers["alice"].get_secret_value() == "Tr0ub4dor,&3horse"


@given(
    users=st.dictionaries(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters=",:{"), min_size=1, max_size=12).filter(
            lambda n: n.strip() == n and n.strip()
        ),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
        max_size=4,
    )
)
def test_any_reviewer_list_in_json_reads_back_as_written_or_is_refused(users: dict[str, str]) -> None:
    """Generated names and passwords (commas, colons, quotes, any Unicode): the JSON form reads
    back exactly, unless two names are one reviewer, which is refused by name."""
    import json

    from support_worker.core.identity import reviewer_identity

    raw = json.dumps(users)
    identities = [reviewer_identity(name) for name in users]
    if len(set(identities)) < len(identities) or not all(identities):
        with pytest.raises(ValidationError):
            fresh(review_desk_users=raw)
        return
    read = fresh(review_desk_users=raw).reviewers
    assert {name: p.get_secret_value() for name, p in read.items()} == users


# --------------------------------------------------------------------------- one read of .env


def test_env_file_is_read_once_and_only_inngest_dev_is_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("INNGEST_DEV=http://127.0.0.1:9999\nWEBHOOK_PASSWORD=from-dotenv\n")
    monkeypatch.setenv("SUPPORT_WORKER_ENV_FILE", str(tmp_path / ".env"))
    for key in ("INNGEST_DEV", "WEBHOOK_PASSWORD"):
        monkeypatch.setenv(key, "")  # so that monkeypatch restores whatever get_settings exports
        monkeypatch.delenv(key)
    settings_module.get_settings.cache_clear()
    s = settings_module.get_settings()
    assert s.webhook_password is not None and s.webhook_password.get_secret_value() == "from-dotenv"
    # The Inngest SDK reads INNGEST_DEV from the environment itself; nothing else is exported.
    assert os.environ["INNGEST_DEV"] == "http://127.0.0.1:9999"
    assert "WEBHOOK_PASSWORD" not in os.environ


def test_the_real_environment_wins_over_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("INNGEST_DEV=1\n")
    monkeypatch.setenv("SUPPORT_WORKER_ENV_FILE", str(tmp_path / ".env"))
    monkeypatch.setenv("INNGEST_DEV", "http://127.0.0.1:7777")
    settings_module.get_settings.cache_clear()
    assert settings_module.get_settings().inngest_dev == "http://127.0.0.1:7777"
    assert os.environ["INNGEST_DEV"] == "http://127.0.0.1:7777"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("@daily", "parser does not accept descriptors"),
        ("0 0 9 * * *", "expected exactly 5 fields, found 6"),
        ("TZ=Mars/Olympus 0 9 * * *", "provided bad location Mars/Olympus"),
        ("0 9 * * 7", "end of range (7) above maximum (6)"),
    ],
)
def test_a_health_check_cron_inngest_would_refuse_stops_startup_naming_it(spec: str, why: str) -> None:
    """Inngest refuses the whole sync over one unparseable cron (pkg/inngest/trigger.go); the
    settings refuse it first, so it never reaches the engine (tests/test_engine_fidelity.py
    shows the stub refusing what this refuses)."""
    with pytest.raises(ValidationError, match="HEALTH_CHECK_CRON") as refused:
        fresh(health_check_cron=spec)
    assert why in str(refused.value)


def test_a_zoned_five_field_cron_is_accepted() -> None:
    assert fresh(health_check_cron="TZ=Europe/Paris 30 8 * * 1-5").health_check_cron == "TZ=Europe/Paris 30 8 * * 1-5"
