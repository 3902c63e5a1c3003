"""Repeated wrong credentials on the desk and the webhook are locked out per client and per
user, audited, without locking out a client that signs in correctly (issue 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from inngest_driver import StubInngestServer
from test_doors import postmark

import db
import inngest_app
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.core.settings import Settings
from support_worker.doors.auth_limits import AuthLimiter

ALICE = ("alice", "alice-long-password")
POSTMARK = ("postmark", "a-long-webhook-password")


@asynccontextmanager
async def doors(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """The served app, and a way to reach it from any client address."""
    opened = settings.model_copy(
        update={"webhook_password": POSTMARK[1], "review_desk_users": f"{ALICE[0]}:{ALICE[1]},bob:bob-long-password"}
    )
    with StubInngestServer() as stub:
        for key, value in stub.env().items():
            monkeypatch.setenv(key, value)
        app = inngest_app.create_app(opened.model_copy(update={"inngest_dev": stub.url}), model=OfflineSupportModel())
        async with app.router.lifespan_context(app):
            clients: list[httpx.AsyncClient] = []

            def from_address(host: str) -> httpx.AsyncClient:
                transport = httpx.ASGITransport(app=app, client=(host, 40000))
                clients.append(httpx.AsyncClient(transport=transport, base_url="http://app"))
                return clients[-1]

            try:
                yield from_address
            finally:
                for client in clients:
                    await client.aclose()


async def test_three_hundred_wrong_passwords_lock_the_client_out_even_for_the_right_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    async with doors(settings, monkeypatch) as client:
        attacker, desk_user = client("203.0.113.9"), client("198.51.100.7")
        answers = [(await attacker.get("/reviews", auth=("alice", f"guess-{n}"))).status_code for n in range(300)]
        assert answers[:5] == [401] * 5 and set(answers[5:]) == {429}
        right = await attacker.get("/reviews", auth=ALICE)
        assert right.status_code == 429 and 1 <= int(right.headers["retry-after"]) <= 600
        assert right.headers["x-frame-options"] == "DENY"  # still a desk response
        # Alice, at a desk that never guessed, signs in: but she is a locked user there, not vouched for.
        assert (await desk_user.get("/reviews", auth=ALICE)).status_code == 429
    rows = await db.list_audit(pool, action=db.AuditAction.AUTH_THROTTLED)
    assert sorted((r.detail["door"], r.detail["locked"], r.detail["failures"]) for r in rows) == [
        ("desk", "client", 5),
        ("desk", "user", 5),
    ]
    assert all("guess" not in str(r.detail) for r in rows)  # no password in the trail


async def test_a_reviewer_who_signed_in_before_keeps_getting_in_while_someone_guesses_her_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with doors(settings, monkeypatch) as client:
        her_desk = client("198.51.100.7")
        assert (await her_desk.get("/reviews", auth=ALICE)).status_code == 200
        for n in range(3):  # three attackers, each below the per-client limit, ten guesses in all
            attacker = client(f"203.0.113.{n}")
            for guess in range(4 if n < 2 else 2):
                assert (await attacker.get("/reviews", auth=("ALICE", f"guess-{guess}"))).status_code in (401, 429)
        assert (await client("203.0.113.99").get("/reviews", auth=ALICE)).status_code == 429
        assert (await her_desk.get("/reviews", auth=ALICE)).status_code == 200


async def test_postmarks_retries_of_a_good_request_pass_while_the_webhook_password_is_guessed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with doors(settings, monkeypatch) as client:
        postmark_server, attacker = client("50.31.156.6"), client("203.0.113.9")
        first = await postmark_server.post("/webhooks/email", json=postmark(), auth=POSTMARK)
        assert first.status_code == 200, first.text
        wrong = [
            (await attacker.post("/webhooks/email", json=postmark(), auth=("postmark", f"g{n}"))).status_code
            for n in range(50)
        ]
        assert wrong[:5] == [401] * 5 and set(wrong[5:]) == {429}
        retried = await postmark_server.post("/webhooks/email", json=postmark(), auth=POSTMARK)
        assert retried.status_code == 200, retried.text
        locked = await attacker.post("/webhooks/email", json=postmark(), auth=POSTMARK)
        assert locked.status_code == 429 and locked.json() == {"error": "too many wrong credentials; try again later"}


async def test_missing_credentials_are_no_failure(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with doors(settings, monkeypatch) as client:
        browser = client("198.51.100.7")
        for _ in range(20):  # a browser asks without a password first, every time
            assert (await browser.get("/reviews")).status_code == 401
        assert (await browser.get("/reviews", auth=ALICE)).status_code == 200


# --------------------------------------------------------------------------- the rules, generated


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


attempts = st.lists(
    st.tuples(
        st.sampled_from(["attacker-1", "attacker-2", "attacker-3", "postmark"]),
        st.floats(min_value=0, max_value=120),  # seconds since the previous attempt
    ),
    max_size=120,
)


@given(attempts=attempts)
async def test_no_client_gets_more_than_the_limit_of_guesses_per_window_and_a_good_client_always_passes(
    attempts: list[tuple[str, float]],
) -> None:
    clock = Clock()
    limits = AuthLimiter("webhook", max_failures=5, window_seconds=600, clock=clock)
    limits.succeeded("postmark", "postmark")  # Postmark delivered before the attack began
    compared: dict[str, list[float]] = {}
    for client, pause in attempts:
        clock.now += pause
        right = client == "postmark"
        try:
            limits.check(client, "postmark")
        except Exception as refused:
            assert not right, "a client that never guessed wrong was refused"
            assert getattr(refused, "status_code", None) == 429
            continue
        if right:
            limits.succeeded(client, "postmark")
        else:
            compared.setdefault(client, []).append(clock.now)
            await limits.failed(client, "postmark")
    for client, times in compared.items():
        for n, start in enumerate(times):
            in_window = [t for t in times[n:] if t < start + 600]
            assert len(in_window) <= 5, (client, times)
