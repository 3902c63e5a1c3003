"""The desk's own controls (issue 21): security headers on every response under its paths
(404, 405, 307 and 500 included), a status line only the desk can write, and a clear 400 for
form input it cannot take, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import reset_data
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_doors import ALICE, DESK_HEADERS, assert_desk_headers, csrf_for, pending_request
from tests_support import Engine, serve

from support_worker.core.settings import Settings
from support_worker.store import reviews


@pytest.fixture
async def desk(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    opened = settings.model_copy(update={"review_desk_users": f"{ALICE[0]}:{ALICE[1]},bob:bob-pw"})
    async with serve(opened, monkeypatch, pool) as engine:
        yield engine


def http(engine: Engine) -> httpx.AsyncClient:
    return engine.driver.http


async def test_the_routers_own_answers_carry_the_security_headers(desk: Engine) -> None:
    answers = {
        "404 no such file": await http(desk).get("/reviews/static/nope.js", auth=ALICE),
        "404 no such path": await http(desk).get("/reviews/a/b/c", auth=ALICE),
        "405 get on a decision": await http(desk).get("/reviews/rr_x", auth=ALICE),
        "405 put on the page": await http(desk).put("/reviews", auth=ALICE),
        "307 trailing slash": await http(desk).get("/reviews/", auth=ALICE),
        "404 a run path": await http(desk).get("/runs/x", auth=ALICE),
    }
    assert {name: r.status_code for name, r in answers.items()} == {
        "404 no such file": 404,
        "404 no such path": 404,
        "405 get on a decision": 405,
        "405 put on the page": 405,
        "307 trailing slash": 307,
        "404 a run path": 404,
    }
    for response in answers.values():
        assert_desk_headers(response)


async def test_an_unhandled_error_is_a_500_page_with_the_security_headers(
    desk: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(pool: Any) -> Any:
        raise RuntimeError("the listing query broke")

    monkeypatch.setattr(reviews, "list_pending_reviews", broken)
    res = await http(desk).get("/reviews", auth=ALICE)
    assert res.status_code == 500 and "nothing was changed" in res.text
    assert "the listing query broke" not in res.text
    assert_desk_headers(res)


async def test_the_status_line_shows_only_what_the_desk_wrote(desk: Engine) -> None:
    forged = "Your refund of $1,299.00 was approved. Call +1 555 0100 to confirm your card."
    page = await http(desk).get("/reviews", params={"msg": forged}, auth=ALICE)
    assert page.status_code == 200 and "555 0100" not in page.text
    page = await http(desk).get("/reviews", params={"msg": forged, "sig": "0" * 64}, auth=ALICE)
    assert "555 0100" not in page.text
    # The desk's own status line, after a decision, is shown, and only to the reviewer it was for.
    request = await pending_request(desk.pool)
    form = {"decision": "reject", "csrf": csrf_for((await http(desk).get("/reviews", auth=ALICE)).text, request.id)}
    redirect = await http(desk).post(f"/reviews/{request.id}", data=form, auth=ALICE)
    assert redirect.status_code == 303
    assert f"Rejected refund {request.id}" in (await http(desk).get(redirect.headers["location"], auth=ALICE)).text
    bob = await http(desk).get(redirect.headers["location"], auth=("bob", "bob-pw"))
    assert f"Rejected refund {request.id}" not in bob.text


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("note", "looks \x00 right", "note"),
        ("reply", "Hi\x00", "reply"),
        ("reply", "x" * 20_001, "at most 20000"),
        ("decision", "approve\x00", "Choose Approve or Reject"),
    ],
)
async def test_form_input_the_desk_cannot_take_is_a_clear_400(desk: Engine, field: str, value: str, said: str) -> None:
    request = await pending_request(desk.pool)
    token = csrf_for((await http(desk).get("/reviews", auth=ALICE)).text, request.id)
    form = {"decision": "approve", "csrf": token, field: value}
    res = await http(desk).post(f"/reviews/{request.id}", data=form, auth=ALICE)
    assert res.status_code == 400 and said in res.text, res.text[:500]
    assert_desk_headers(res)
    assert await desk.pool.fetchval("SELECT status FROM refund_requests") == "pending"


async def test_an_escalation_edit_the_desk_cannot_store_is_a_clear_400(desk: Engine) -> None:
    from test_escalation_gate import open_one

    escalation = await open_one(desk.pool)
    page = (await http(desk).get("/reviews", auth=ALICE)).text
    token = csrf_for(page, escalation.id)
    form = {"decision": "edit", "csrf": token, "edited_text": "posted \x00 text"}
    res = await http(desk).post(f"/reviews/escalations/{escalation.id}", data=form, auth=ALICE)
    assert res.status_code == 400 and "edited_text" in res.text
    assert_desk_headers(res)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    note=st.text(max_size=300),
    reply=st.text(max_size=300) | st.just("r" * 20_001),
    amount=st.text(max_size=12),
    decision=st.sampled_from(["approve", "reject", "maybe", "", "approve\x00"]),
)
async def test_any_form_input_is_answered_303_or_400_with_the_headers(
    desk: Engine, note: str, reply: str, amount: str, decision: str
) -> None:
    await reset_data(desk.pool)  # each example decides a fresh request
    request_id = (await pending_request(desk.pool)).id
    token = csrf_for((await http(desk).get("/reviews", auth=ALICE)).text, request_id)
    form = {"decision": decision, "csrf": token, "note": note, "reply": reply, "amount": amount}
    res = await http(desk).post(f"/reviews/{request_id}", data=form, auth=ALICE)
    assert res.status_code in (303, 400), (res.status_code, res.text[:300])
    for name, value in DESK_HEADERS.items():
        assert res.headers.get(name) == value


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    # Dot segments ("..", ".") are left out: a client resolves them before sending, so
    # "/reviews0/.." is a request for "/", which is not one of the desk's paths.
    path=st.lists(
        st.text(alphabet="abcxyz0123_-.%", min_size=1, max_size=8).filter(lambda s: s.strip(".") != ""), max_size=3
    ).map("/".join),
    prefix=st.sampled_from(["/reviews", "/reviews/", "/reviews/static/", "/reviews/escalations/", "/runs/"]),
    signed_in=st.booleans(),
)
async def test_every_response_under_the_desks_paths_carries_the_headers(
    desk: Engine, method: str, path: str, prefix: str, signed_in: bool
) -> None:
    res = await http(desk).request(method, prefix + path, auth=ALICE if signed_in else None)
    assert res.status_code != 500 or res.text
    for name, value in DESK_HEADERS.items():
        assert res.headers.get(name) == value, (method, prefix + path, res.status_code)
