"""The one command line: `support-worker` and `python worker.py`, which delegates to it."""

from __future__ import annotations

import argparse
import json

import asyncpg
import pytest
from tests_support import GRACE

import db
from support_worker.cli import main as cli
from support_worker.core.settings import Settings


def args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(argv)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([], ["list"]),
        (["--list"], ["list"]),
        (["--audit", "--customer", GRACE], ["audit", "--customer", GRACE]),
        (
            ["--customer", GRACE, "--approve", "charged twice"],
            ["answer", "--customer", GRACE, "--approve", "charged twice"],
        ),
    ],
)
def test_worker_py_flags_map_onto_the_one_cli(old: list[str], new: list[str]) -> None:
    assert cli.worker_argv(old) == new


def test_approve_and_reject_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        args("answer", "--customer", GRACE, "--approve", "--reject", "charged twice")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


async def test_answer_here_then_audit_as_a_table_and_as_the_same_rows_in_json(
    settings: Settings, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        await cli.run_async(
            args("answer", "--customer", str(GRACE), "--approve", "charged twice for order 1003"), settings
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "refund rr_" in out and ": approved" in out
    assert len(await db.list_refunds(pool)) == 1

    assert await cli.run_async(args("audit", "--customer", str(GRACE), "--json"), settings) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in rows] == [
        "message_received",
        "refund_requested",
        "decision_recorded",
        "refund_issued",
        "email_drafted",
    ]
    assert await cli.run_async(args("audit", "--customer", str(GRACE)), settings) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["at", "run", "customer", "action", "detail"]
    assert [line.split()[3] for line in table[1:]] == [r["action"] for r in rows]


async def test_listings_say_when_there_is_nothing(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli.run_async(args("audit", "--run", "no-such-run"), settings) == 0
    assert capsys.readouterr().out.strip() == "No audit rows match."
    assert await cli.run_async(args("pending", "--json"), settings) == 0
    assert json.loads(capsys.readouterr().out) == []


async def test_list_shows_customers_and_their_orders(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli.run_async(args("list", "--json"), settings) == 0
    customers = json.loads(capsys.readouterr().out)
    assert len(customers) == 6 and "#1003 $499.00 paid" in customers[1]["orders"]
