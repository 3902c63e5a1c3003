"""The course's names and flow-control values, as the engine registers them (001 D4, 003 D3,
D5-D7); docs/course.md lists every remaining difference with its reason."""

from __future__ import annotations

from typing import Any

from tests_support import Engine


def registered(engine: Engine, fn: str) -> dict[str, Any]:
    return engine.driver.functions[engine.driver.fn_id(fn)]


async def test_function_ids_are_the_courses(engine: Engine) -> None:
    ids = {config["id"].removeprefix("support-worker-") for config in engine.driver.functions.values()}
    assert {
        "handle-customer-email",  # 003 D3 handle_customer_email
        "daily-customer-health-check",  # 001 Concept 2, 003 D5 daily_customer_health_check
        "process-customer-health-check",  # 003 D5 process_customer_health_check
        "escalate-with-human-approval",  # 003 D7 escalate_with_human_approval
    } <= ids


async def test_flow_control_follows_the_course(engine: Engine) -> None:
    email = registered(engine, "handle-customer-email")
    limits = sorted((c["limit"], "key" in c) for c in email["concurrency"])
    assert limits == [(2, True), (10, False)]  # 10 at once, 2 per customer (003 D6)
    assert email["throttle"]["limit"] == 30 and email["throttle"]["period"] == "1m"  # 001 D4: the model's 30/min
    health = registered(engine, "process-customer-health-check")
    assert [c["limit"] for c in health["concurrency"]] == [5]  # 003 D5: 5 globally
    assert health["throttle"]["limit"] == 30 and health["throttle"]["period"] == "1m"  # 003 D6
    escalation = registered(engine, "escalate-with-human-approval")
    assert [c["limit"] for c in escalation["concurrency"]] == [5]  # 003 D7
    assert registered(engine, "daily-customer-health-check")["triggers"] == [{"cron": "0 9 * * *"}]


async def test_the_email_runs_steps_carry_the_courses_names(engine: Engine) -> None:
    run = await engine.email({"customer_id": "c-test-1", "body": "Where is my order?"})
    assert run.status == "completed", run.error
    # 003 D3's save-draft-reply is a step of its own; its load-customer and load-thread are done
    # by run-agent's intake, journaled with the agent's turns (issue 19's one agent step).
    assert run.trail == ["run-agent", "save-draft-reply"]
