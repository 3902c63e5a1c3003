"""The review desk in a real browser: Debian's headless Chromium driven by Playwright.

`.ci/run` installs Chromium from Debian's packages; Playwright never downloads a browser.
Skipped, saying so, where /usr/bin/chromium is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import uvicorn
from inngest_driver import StubInngestServer
from playwright.async_api import Browser, async_playwright, expect
from tests_support import GRACE, free_port, open_request

import db
import inngest_app
from support_worker.agent.offline_model import OfflineSupportModel
from support_worker.core.settings import Settings
from support_worker.store.sample_data import ADA
from support_worker.workflows import escalations

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does this)",
)
# The flags a sandboxed, offline, root machine needs: no background calls out, no sandbox.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def desk_url(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, StubInngestServer]]:
    with StubInngestServer() as stub:
        for key, value in stub.env().items():
            monkeypatch.setenv(key, value)
        opened = settings.model_copy(update={"inngest_dev": stub.url, "review_desk_users": "alice:alice-pw,bob:bob-pw"})
        app = inngest_app.create_app(opened, model=OfflineSupportModel())
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes only this flag
            await asyncio.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", stub
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def test_a_reviewer_approves_one_refund_and_rejects_another_in_the_browser(
    desk_url: tuple[str, StubInngestServer], browser: Browser, pool: asyncpg.Pool
) -> None:
    url, stub = desk_url
    requests = [
        await open_request(
            pool,
            order_id=order_id,
            cents=cents,
            ttl_seconds=4 * 3600,
            message=f"I was charged twice for order {order_id}",
        )
        for order_id, cents in ((1003, 49_900), (1004, 1_999))
    ]
    approve_me, reject_me = requests

    context = await browser.new_context(http_credentials={"username": "alice", "password": "alice-pw"})
    page = await context.new_page()
    await page.goto(f"{url}/reviews")
    stale_tab = await context.new_page()  # opened before anyone decides: its buttons go stale
    await stale_tab.goto(f"{url}/reviews")
    assert await page.locator("article").count() == 2
    assert "3h 59m left" in await page.locator(f"#{approve_me.id} .time-left").inner_text()
    # The live status line is filled in by the page's event stream, not by the server render.
    await expect(page.locator(f"#{approve_me.id} .live-status")).to_have_text("waiting for approval")

    await page.locator(f"#{approve_me.id} input[name=note]").fill("matches the bank statement")
    await page.locator(f"#{approve_me.id} button[value=approve]").click()
    await page.wait_for_url("**/reviews?msg=*")
    assert f"Approved refund {approve_me.id} for order 1003." in await page.locator(".flash").inner_text()

    await page.locator(f"#{reject_me.id} button[value=reject]").click()
    await page.wait_for_url("**/reviews?msg=*")
    assert f"Rejected refund {reject_me.id} for order 1004." in await page.locator(".flash").inner_text()
    assert "No refunds are waiting for review." in await page.content()
    await page.screenshot(path=str(_artifacts() / "desk-after-decisions.png"))

    # A second click, from the tab loaded before the first decision: said on the page.
    await stale_tab.locator(f"#{approve_me.id} button[value=reject]").click()
    await stale_tab.wait_for_url("**/reviews?msg=*")
    assert "already decided: approved by alice" in await stale_tab.locator(".flash").inner_text()
    await context.close()

    stored = {r.id: await db.get_refund_request(pool, request_id=r.id) for r in requests}
    assert [(s.status, s.reviewer, s.note) for s in stored.values() if s] == [
        ("approved", "alice", "matches the bank statement"),
        ("rejected", "alice", None),
    ]
    assert [(e.name, e.data["request_id"], e.data["approved"]) for e in stub.events] == [
        ("refund/approval.decided", approve_me.id, True),
        ("refund/approval.decided", reject_me.id, False),
    ]
    actions = [e.action.value for e in await db.list_audit(pool)]
    assert actions == [
        "refund_requested",
        "refund_requested",
        "decision_recorded",
        "decision_recorded",
        "decision_ignored",
    ]


async def test_two_reviewers_sign_in_to_approve_a_four_eyes_refund_in_the_browser(
    desk_url: tuple[str, StubInngestServer], browser: Browser, pool: asyncpg.Pool
) -> None:
    url, stub = desk_url
    large = await open_request(pool, customer_id=ADA, order_id=1001, cents=129_900, ttl_seconds=4 * 3600)
    alice = await browser.new_context(http_credentials={"username": "alice", "password": "alice-pw"})
    page = await alice.new_page()
    await page.goto(f"{url}/reviews")
    await expect(page.locator(f"#{large.id} .four-eyes")).to_contain_text("0 of 2 approvals")
    await page.locator(f"#{large.id} input[name=amount]").fill("1,000.00")
    await page.locator(f"#{large.id} button[value=approve]").click()
    await page.wait_for_url("**/reviews?msg=*")
    flash = await page.locator(".flash").inner_text()
    assert f"Approved refund {large.id} for order 1001 (1 of 2 approvals: alice; a different reviewer" in flash
    # Still waiting, saying who approved; alice's second approval is refused on the page.
    await expect(page.locator(f"#{large.id} .four-eyes")).to_contain_text("1 of 2 approvals: approved by alice")
    await page.locator(f"#{large.id} button[value=approve]").click()
    await page.wait_for_url("**/reviews?msg=*")
    assert "the second approval must come from a different reviewer" in await page.locator(".flash").inner_text()
    await alice.close()

    bob = await browser.new_context(http_credentials={"username": "bob", "password": "bob-pw"})
    page = await bob.new_page()
    await page.goto(f"{url}/reviews")
    await expect(page.locator(f"#{large.id} .four-eyes")).to_contain_text("alice at $1,000.00")
    await page.locator(f"#{large.id} button[value=approve]").click()
    await page.wait_for_url("**/reviews?msg=*")
    flash = await page.locator(".flash").inner_text()
    assert f"Approved refund {large.id} for order 1001 (2 of 2 approvals: alice, bob)" in flash
    assert "lowered from $1,299.00" in flash
    await page.screenshot(path=str(_artifacts() / "desk-four-eyes-approved.png"))
    await bob.close()

    stored = await db.get_refund_request(pool, request_id=large.id)
    assert stored and (stored.status, stored.payable_cents) == ("approved", 100_000)
    assert [(e.data["reviewer"], e.data["approved"]) for e in stub.events] == [("alice", True), ("bob", True)]
    recorded = await db.list_audit(pool, action=db.AuditAction.DECISION_RECORDED)
    assert [(e.detail["reviewer"], e.detail["approvals"]) for e in recorded] == [("alice", "1 of 2"), ("bob", "2 of 2")]


async def test_a_reviewer_edits_an_escalation_in_the_browser(
    desk_url: tuple[str, StubInngestServer], browser: Browser, pool: asyncpg.Pool
) -> None:
    url, stub = desk_url
    customer = await db.get_customer(pool, customer_id=GRACE)
    assert customer is not None
    ask = escalations.EscalationAsk(key="call_1", source="agent", reason="legal threat", urgency="high", summary="Sue.")
    escalation = await escalations.open_escalation(
        pool, ask=ask, run_id="run-1", customer=customer, customer_message="My lawyer will call.", ttl_seconds=3600
    )

    context = await browser.new_context(http_credentials={"username": "alice", "password": "alice-pw"})
    page = await context.new_page()
    await page.goto(f"{url}/reviews")
    card = page.locator(f"#{escalation.id}")
    assert "legal threat" in await card.inner_text() and "My lawyer will call." in await card.inner_text()
    await card.locator("textarea[name=edited_text]").fill("Legal: call Grace today.")
    await card.locator("button[value=edit]").click()
    await page.wait_for_url("**/reviews?msg=*")
    assert f"Escalation {escalation.id}: edited." in await page.locator(".flash").inner_text()
    assert "No escalations are waiting for review." in await page.content()
    await context.close()

    assert [(e.name, e.data["decision"], e.data["edited_text"], e.data["reviewer"]) for e in stub.events] == [
        ("escalation/decision.made", "edit", "Legal: call Grace today.", "alice")
    ]


def _artifacts() -> Path:
    folder = Path(__file__).resolve().parent.parent / ".artifacts"
    folder.mkdir(exist_ok=True)
    return folder
