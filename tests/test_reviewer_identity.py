"""A reviewer is one identity however the name is spelled (issue 21): four eyes never counts
one person twice, whichever door the second approval comes through."""

from __future__ import annotations

import argparse
import unicodedata
from collections.abc import AsyncIterator

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from test_doors import ALICE, csrf_for, http
from tests_support import ADA, Engine, open_request, serve

import db
from support_worker.cli import main as cli
from support_worker.core.identity import reviewer_identity
from support_worker.core.settings import Settings
from support_worker.workflows import decisions

ALICES = [
    "alice",
    "Alice",
    "ALICE",
    " alice",
    "alice ",
    "\talice\n",
    "ａｌｉｃｅ",
    "ali\u200bce",
    "\u200ealice",
    "aLiCe",
]


def fullwidth(text: str) -> str:
    """ASCII letters and digits as their fullwidth forms (U+FF01..U+FF5E), which NFKC folds back."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize("spelling", ALICES)
def test_every_spelling_of_alice_is_alice(spelling: str) -> None:
    assert reviewer_identity(spelling) == "alice"


names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)


@given(
    name=names,
    pad=st.sampled_from(["", " ", "\t", "\u3000", "\n "]),
    zw=st.sampled_from(["", "\u200b", "\u2060", "\ufeff"]),
)
def test_case_width_padding_and_invisible_characters_never_make_a_second_reviewer(name: str, pad: str, zw: str) -> None:
    variants = [name.upper(), name.lower(), fullwidth(name), f"{pad}{name}{pad}", zw.join(name), name.swapcase()]
    assert {reviewer_identity(v) for v in variants} == {reviewer_identity(name)}


@given(st.text(max_size=40))
def test_the_identity_is_its_own_identity(name: str) -> None:
    once = reviewer_identity(name)
    assert reviewer_identity(once) == once
    assert once == once.strip() and "  " not in once
    assert not any(unicodedata.category(c) == "Cf" for c in once)


@pytest.mark.parametrize("empty", ["", "   ", "\u200b\u200b", "\u3000"])
def test_a_name_that_is_empty_once_normalized_is_refused(empty: str) -> None:
    with pytest.raises(ValidationError, match="must name a reviewer"):
        decisions.Decision(request_id="rr_x", approved=True, reviewer=empty)


async def _four_eyes_request(pool: asyncpg.Pool) -> db.RefundRequest:
    request = await open_request(pool, customer_id=ADA, order_id=1001, cents=129_900)
    assert request.approvals_needed == 2
    return request


async def test_a_second_approval_by_alice_spelled_differently_is_the_same_reviewer(pool: asyncpg.Pool) -> None:
    request = await _four_eyes_request(pool)
    first = decisions.Decision(request_id=request.id, approved=True, reviewer="alice")
    assert (await decisions.record_decision(pool, first, decision_id="d-0")).applied
    for n, spelling in enumerate(ALICES[1:], start=1):
        again = decisions.Decision(request_id=request.id, approved=True, reviewer=spelling)
        outcome = await decisions.record_decision(pool, again, decision_id=f"d-{n}")
        assert (outcome.applied, outcome.reason) == (False, "same_reviewer"), spelling
    still = await db.get_refund_request(pool, request_id=request.id)
    assert still is not None and still.status == "pending"
    bob = decisions.Decision(request_id=request.id, approved=True, reviewer="Bob")
    outcome = await decisions.record_decision(pool, bob, decision_id="d-bob")
    assert outcome.request and outcome.request.status == "approved" and outcome.approvers == ["alice", "bob"]


async def test_an_approval_stored_before_names_were_normalized_still_counts_as_that_reviewer(
    pool: asyncpg.Pool,
) -> None:
    request = await _four_eyes_request(pool)
    await pool.execute(
        "INSERT INTO refund_approvals (request_id, reviewer, decision_id) VALUES ($1, 'Alice ', 'legacy')", request.id
    )
    again = decisions.Decision(request_id=request.id, approved=True, reviewer="alice")
    outcome = await decisions.record_decision(pool, again, decision_id="d-new")
    assert (outcome.applied, outcome.reason) == (False, "same_reviewer")


@pytest.fixture
async def doors(settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> AsyncIterator[Engine]:
    opened = settings.model_copy(update={"review_desk_users": f"{ALICE[0]}:{ALICE[1]},bob:bob-pw"})
    async with serve(opened, monkeypatch, pool) as engine:
        yield engine


def args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(argv)


async def test_the_desk_user_alice_and_the_cli_reviewer_alice_are_one_reviewer(
    doors: Engine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = await _four_eyes_request(doors.pool)
    page = (await http(doors).get("/reviews", auth=ALICE)).text
    form = {"decision": "approve", "csrf": csrf_for(page, request.id)}
    res = await http(doors).post(f"/reviews/{request.id}", data=form, auth=ALICE, follow_redirects=True)
    assert res.status_code == 200 and "1 of 2 approvals: alice" in res.text
    assert await cli.run_async(args("approve", request.id, "--reviewer", " ALICE "), settings) == 1
    assert "already approved this refund" in capsys.readouterr().out.lower()
    stored = await db.get_refund_request(doors.pool, request_id=request.id)
    assert stored is not None and stored.status == "pending"
    assert await db.list_refunds(doors.pool) == []
