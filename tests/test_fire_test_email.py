"""003 D4 Part B: `scripts/fire_test_email.py --customer-id … --body …` sends one
`customer/email.received` event keyed by the customer and the time, and prints the run it
started with its dashboard link, through the CLI's own sending code."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests_support import GRACE, Engine

from support_worker.cli import fire
from support_worker.core.settings import Settings

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fire_test_email.py"
AT = datetime(2026, 11, 23, 9, 12, 0, 123456, tzinfo=UTC)


def test_the_event_id_comes_from_the_customer_and_the_time() -> None:
    assert fire.test_event_id(GRACE, AT) == "test-email-c-4429-20261123T091200123456Z"


async def test_firing_a_test_email_prints_the_run_and_its_dashboard_link(
    engine: Engine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[str] = []
    engine.stub.on_event = lambda event: started.append(engine.stub.start_run(event.id, "support-worker-handle-email"))
    body = "Hi, my refund hasn't arrived and I'm getting worried about my upcoming bill."
    assert await fire.fire_test_email(settings, customer_id="c-test-1", body=body, now=AT) == 0
    [event] = engine.stub.events
    assert event.name == "customer/email.received"
    assert event.idempotency_id == "test-email-c-test-1-20261123T091200123456Z"
    assert event.data == {"customer_id": "c-test-1", "body": body, "subject": None}
    out = capsys.readouterr().out
    [run_id] = started
    assert f"run       {run_id}  {engine.stub.url}/run?runID={run_id}" in out
    # The same test email again (same moment) is the same event: Inngest drops it.
    assert await fire.fire_test_email(settings, customer_id="c-test-1", body=body, now=AT) == 0
    assert engine.stub.events[-1].duplicate


def test_the_script_takes_the_courses_arguments() -> None:
    spec = importlib.util.spec_from_file_location("fire_test_email", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parser().parse_args(["--customer-id", GRACE, "--body", "Where is order 1004?"])
    assert (args.customer_id, args.body, args.subject) == (GRACE, "Where is order 1004?", None)
    with pytest.raises(SystemExit):
        script.parser().parse_args(["--body", "no customer"])
