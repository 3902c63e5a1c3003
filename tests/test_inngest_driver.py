"""Proves ``tests/inngest_driver.py`` against a toy app, so product tests can trust it.

The toy client is built inside a fixture, after the stub is up and the env points at it,
because the SDK reads its API and Event API origins when the client is constructed.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import typing
from collections.abc import AsyncIterator, Iterator

import fastapi
import httpx
import inngest
import inngest.fast_api
import pydantic
import pytest
import pytest_asyncio
from inngest_driver import (  # tests/ is on sys.path: pytest's rootdir-less "prepend" import
    CallRecord,
    InngestDriver,
    StubInngestServer,
    WaitOp,
    cel_evaluate,
    cel_match,
    pool_resolver,
    signed_headers,
    stub_resolver,
    timeout_resolver,
)

SIGNING_KEY = "signkey-test-" + "ab" * 32


class Receipt(pydantic.BaseModel):
    order_id: str
    total: float
    issued_at: datetime.datetime


@dataclasses.dataclass
class Toy:
    app: fastapi.FastAPI
    hits: collections.Counter[str]
    attempts: dict[str, list[int]]


def build_toy(*, is_production: bool = False) -> Toy:
    hits: collections.Counter[str] = collections.Counter()
    attempts: dict[str, list[int]] = collections.defaultdict(list)
    client = inngest.Inngest(
        app_id="driver-selftest",
        is_production=is_production,
        signing_key=SIGNING_KEY if is_production else None,
        serializer=inngest.PydanticSerializer(),
    )

    def hit(name: str, ctx: inngest.Context) -> None:
        hits[name] += 1
        attempts[name].append(ctx.attempt)

    @client.create_function(
        fn_id="configured",
        trigger=[inngest.TriggerEvent(event="toy/configured"), inngest.TriggerCron(cron="0 * * * *")],
        concurrency=[inngest.Concurrency(limit=2, key="event.data.user_id")],
        throttle=inngest.Throttle(limit=5, period=datetime.timedelta(minutes=1)),
        priority=inngest.Priority(run="event.data.priority"),
        retries=2,
    )
    async def configured(ctx: inngest.Context) -> str:
        return "ok"

    @client.create_function(fn_id="three-steps", trigger=inngest.TriggerEvent(event="toy/three"))
    async def three_steps(ctx: inngest.Context) -> list[str]:
        async def make(name: str) -> str:
            hit(name, ctx)
            return f"{name}-done"

        return [await ctx.step.run(n, make, n) for n in ("a", "b", "c")]

    @client.create_function(fn_id="flaky", trigger=inngest.TriggerEvent(event="toy/flaky"), retries=3)
    async def flaky(ctx: inngest.Context) -> str:
        async def shaky() -> str:
            hit("shaky", ctx)
            if hits["shaky"] <= 2:
                raise RuntimeError(f"boom {hits['shaky']}")
            return "steady"

        return await ctx.step.run("shaky", shaky)

    @client.create_function(fn_id="doomed", trigger=inngest.TriggerEvent(event="toy/doomed"), retries=2)
    async def doomed(ctx: inngest.Context) -> dict[str, str]:
        async def always() -> None:
            hit("always", ctx)
            raise ValueError("never works")

        try:
            await ctx.step.run("always", always)
        except inngest.StepError as err:
            if not ctx.event.data.get("catch"):
                raise
            return {"caught": err.message, "name": err.name}
        return {}

    @client.create_function(fn_id="fatal", trigger=inngest.TriggerEvent(event="toy/fatal"))
    async def fatal(ctx: inngest.Context) -> None:
        async def stop() -> None:
            hit("stop", ctx)
            raise inngest.NonRetriableError("give up")

        await ctx.step.run("stop", stop)

    async def on_failure(ctx: inngest.Context) -> str:
        hits["on-failure:" + str(ctx.event.data["function_id"])] += 1
        return "handled"

    @client.create_function(
        fn_id="fn-level", trigger=inngest.TriggerEvent(event="toy/fn-level"), retries=1, on_failure=on_failure
    )
    async def fn_level(ctx: inngest.Context) -> None:
        hit("fn-level", ctx)
        raise RuntimeError("outside any step")

    @client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="toy/sleep"))
    async def sleeper(ctx: inngest.Context) -> str:
        await ctx.step.sleep("nap", datetime.timedelta(hours=1))

        async def wake() -> str:
            return "awake"

        return await ctx.step.run("after-nap", wake)

    @client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="toy/wait"))
    async def waiter(ctx: inngest.Context) -> dict[str, object] | None:
        request_id = ctx.event.data["request_id"]
        ev = await ctx.step.wait_for_event(
            "await-approval",
            event="toy/approval",
            if_exp=f"async.data.request_id == '{request_id}' && async.data.decision == \"approve\"",
            timeout=datetime.timedelta(hours=4),
        )
        return None if ev is None else dict(ev.data)

    @client.create_function(fn_id="sender", trigger=inngest.TriggerEvent(event="toy/send"))
    async def sender(ctx: inngest.Context) -> list[str]:
        return await ctx.step.send_event(
            "emit", inngest.Event(name="toy/emitted", data={"n": 1}, id=f"emit-{ctx.event.data['key']}")
        )

    @client.create_function(fn_id="typed", trigger=inngest.TriggerEvent(event="toy/typed"), output_type=Receipt)
    async def typed(ctx: inngest.Context) -> Receipt:
        async def issue() -> Receipt:
            hit("issue", ctx)
            return Receipt(order_id="o-1", total=9.5, issued_at=datetime.datetime(2024, 1, 2, 3, 4, 5))

        receipt = await ctx.step.run("issue", issue, output_type=Receipt)
        assert isinstance(receipt, Receipt)  # deserialized back from the JSON memo
        return receipt

    @client.create_function(fn_id="untyped", trigger=inngest.TriggerEvent(event="toy/untyped"), retries=1)
    async def untyped(ctx: inngest.Context) -> object:
        async def issue() -> Receipt:
            return Receipt(order_id="o-1", total=1, issued_at=datetime.datetime(2024, 1, 1))

        return await ctx.step.run("issue", issue)

    @client.create_function(fn_id="fan-out", trigger=inngest.TriggerEvent(event="toy/fan"))
    async def fan_out(ctx: inngest.Context) -> list[str]:
        async def part(name: str) -> str:
            hit(name, ctx)
            return name

        both = await ctx.group.parallel(
            (lambda: ctx.step.run("p1", part, "p1"), lambda: ctx.step.run("p2", part, "p2"))
        )
        return [*both, await ctx.step.run("join", part, "join")]

    @client.create_function(fn_id="invoker", trigger=inngest.TriggerEvent(event="toy/invoke"))
    async def invoker(ctx: inngest.Context) -> object:
        return await ctx.step.invoke("call-three", function=three_steps)

    @client.create_function(
        fn_id="debounced",
        trigger=inngest.TriggerEvent(event="toy/typed-key"),
        debounce=inngest.Debounce(
            key="event.data.user", period=datetime.timedelta(seconds=10), timeout=datetime.timedelta(seconds=30)
        ),
    )
    async def debounced(ctx: inngest.Context) -> object:
        return ctx.event.data["n"]

    @client.create_function(fn_id="tally", trigger=inngest.TriggerEvent(event="toy/typed-key"))
    async def tally(ctx: inngest.Context) -> object:
        return ctx.event.data["n"]

    app = fastapi.FastAPI()
    fns: list[inngest.Function[typing.Any]] = [
        debounced,
        tally,
        configured,
        three_steps,
        flaky,
        doomed,
        fatal,
        fn_level,
        sleeper,
        waiter,
        sender,
        typed,
        untyped,
        fan_out,
        invoker,
    ]
    inngest.fast_api.serve(app, client, fns)
    return Toy(app, hits, attempts)


@pytest.fixture
def stub() -> Iterator[StubInngestServer]:
    with StubInngestServer() as server:
        yield server


@pytest.fixture
def toy(stub: StubInngestServer, monkeypatch: pytest.MonkeyPatch) -> Toy:
    for key, value in stub.env().items():
        monkeypatch.setenv(key, value)
    return build_toy()


@pytest_asyncio.fixture
async def driver(toy: Toy, stub: StubInngestServer) -> AsyncIterator[InngestDriver]:
    transport = httpx.ASGITransport(app=toy.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://toy.test") as http:
        drv = InngestDriver(http, stub=stub)
        await drv.sync()
        yield drv


@pytest.mark.asyncio
async def test_sync_captures_registration_config(driver: InngestDriver, stub: StubInngestServer) -> None:
    payload = stub.registrations[-1]
    assert payload["appname"] == "driver-selftest"
    fn = driver.functions["driver-selftest-configured"]
    assert fn["triggers"] == [{"event": "toy/configured"}, {"cron": "0 * * * *"}]
    assert fn["concurrency"] == [{"limit": 2, "key": "event.data.user_id"}]
    assert fn["throttle"] == {"limit": 5, "period": "1m", "burst": 1}
    assert fn["priority"] == {"run": "event.data.priority"}
    assert driver.max_attempts("driver-selftest-configured") == 3
    assert driver.max_attempts("driver-selftest-three-steps") == 5  # default 4 retries
    assert "driver-selftest-fn-level-failure" in driver.functions
    assert fn["steps"]["step"]["runtime"]["url"].startswith("http://toy.test/api/inngest?fnId=")


@pytest.mark.asyncio
async def test_three_steps_each_run_once(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("three-steps", {"name": "toy/three"})
    assert run.status == "completed"
    assert run.output == ["a-done", "b-done", "c-done"]
    assert run.trail == ["a", "b", "c"]
    assert [run.runs_of(n) for n in "abc"] == [1, 1, 1]
    assert toy.hits == {"a": 1, "b": 1, "c": 1}
    assert len(run.calls) == 4
    assert [c.request["ctx"]["attempt"] for c in run.calls] == [0, 0, 0, 0]
    assert run.memo == {h: {"data": f"{n}-done"} for h, n in zip(run.stack, "abc", strict=True)}


@pytest.mark.asyncio
async def test_step_retried_with_increasing_attempt(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("flaky", {"name": "toy/flaky"})
    assert run.status == "completed" and run.output == "steady"
    assert toy.attempts["shaky"] == [0, 1, 2]
    assert [op for _, op in run.ops] == ["StepError", "StepError", "StepRun"]
    assert run.calls[0].ops[0]["error"]["name"] == "RuntimeError"
    assert run.calls[0].ops[0]["error"]["message"] == "boom 1"
    assert run.calls[-1].request["ctx"]["attempt"] == 0  # the next call is a new queue item


@pytest.mark.asyncio
async def test_exhausted_step_is_catchable(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("doomed", {"name": "toy/doomed", "data": {"catch": True}})
    assert run.status == "completed"
    assert run.output == {"caught": "never works", "name": "ValueError"}
    assert toy.attempts["always"] == [0, 1, 2]  # retries=2 -> 3 attempts, the last is StepFailed
    assert [op for _, op in run.ops] == ["StepError", "StepError", "StepFailed"]

    uncaught = await driver.run("doomed", {"name": "toy/doomed", "data": {"catch": False}})
    assert uncaught.status == "failed"
    # An uncaught StepError reports the userland name/message under code step_errored.
    assert uncaught.error["code"] == "step_errored"
    assert (uncaught.error["name"], uncaught.error["message"]) == ("ValueError", "never works")
    assert uncaught.calls[-1].no_retry  # StepError is not retriable at function level


@pytest.mark.asyncio
async def test_non_retriable_error_ends_run(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("fatal", {"name": "toy/fatal"})
    assert run.status == "failed"
    assert len(run.calls) == 1 and run.calls[0].status_code == 500 and run.calls[0].no_retry
    assert run.error["code"] == "non_retriable_error" and run.error["message"] == "give up"
    assert toy.hits["stop"] == 1


@pytest.mark.asyncio
async def test_function_level_error_retries_then_runs_on_failure(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("fn-level", {"name": "toy/fn-level"})
    assert run.status == "failed"
    assert [(c.status_code, c.attempt) for c in run.calls] == [(500, 0), (500, 1)]
    assert run.error["name"] == "RuntimeError" and run.error["message"] == "outside any step"
    assert run.on_failure is not None and run.on_failure.output == "handled"
    assert toy.hits["on-failure:driver-selftest-fn-level"] == 1


@pytest.mark.asyncio
async def test_sleep_resolves(driver: InngestDriver) -> None:
    run = await driver.run("sleeper", {"name": "toy/sleep"})
    assert run.status == "completed" and run.output == "awake"
    assert run.sleeps[0][0] == "nap"
    assert run.memo[run.stack[0]] is None


@pytest.mark.asyncio
async def test_wait_for_event_matches_ignores_and_times_out(driver: InngestDriver) -> None:
    trigger = {"name": "toy/wait", "data": {"request_id": "r1"}}
    wrong = {"name": "toy/approval", "data": {"request_id": "r2", "decision": "approve"}}
    denied = {"name": "toy/approval", "data": {"request_id": "r1", "decision": "deny"}}
    right = {"name": "toy/approval", "data": {"request_id": "r1", "decision": "approve"}}

    run = await driver.run("waiter", trigger, resolver=pool_resolver([wrong, denied, right]))
    assert run.status == "completed" and run.output == right["data"]
    wait, resolved = run.waits[0]
    assert wait.event == "toy/approval" and wait.timeout == "4h" and resolved is not None
    assert resolved["data"] == right["data"]

    run = await driver.run("waiter", trigger, resolver=pool_resolver([wrong, denied]))
    assert run.status == "completed" and run.output is None

    run = await driver.run("waiter", trigger, resolver=timeout_resolver)
    assert run.status == "completed" and run.output is None and run.waits[0][1] is None


def test_cel_is_real_cel() -> None:
    cand = {"data": {"id": "x", "n": 3, "ok": True, "tags": ["a", "b"]}}
    trig = {"data": {"id": "x"}}
    assert cel_match("async.data.id == event.data.id && async.data.n == 3", candidate=cand, trigger=trig)
    assert cel_match("(async.data.ok == true) && async.data.id != 'y'", candidate=cand, trigger=trig)
    # What the old hand-written subset refused or got wrong, CEL decides.
    assert cel_match("async.data.n > 2 && 'b' in async.data.tags", candidate=cand, trigger=trig)
    assert cel_match("async.data.id == 'x' || async.data.missing == 1", candidate=cand, trigger=trig)
    assert not cel_match("async.data.id == 'a && b'", candidate=cand, trigger=trig)
    assert cel_match('async.data.id == "x" && has(async.data.n)', candidate=cand, trigger=trig)
    assert cel_match(None, candidate=cand, trigger=trig) and cel_match("  ", candidate=cand, trigger=trig)


def test_cel_evaluation_errors_are_no_match_and_bad_syntax_is_loud() -> None:
    cand = {"data": {"id": "x", "n": 3}}
    assert not cel_match("async.data.missing == 'x'", candidate=cand, trigger={})  # no such key
    assert not cel_match("async.data.n == 'three'", candidate=cand, trigger={})  # no overload int == string
    assert not cel_match("event.data.id == async.data.id", candidate=cand, trigger={"data": {}})
    assert not cel_match("async.data.n", candidate=cand, trigger={})  # not a bool: no match
    with pytest.raises(ValueError, match="not a CEL expression"):
        cel_match("async.data.id ==", candidate=cand, trigger={})
    assert cel_evaluate("has(event.data.tier) ? 1 : 0", event={"data": {}}) == 0


@pytest.mark.asyncio
async def test_the_default_wait_only_sees_events_sent_after_it_began(
    driver: InngestDriver, stub: StubInngestServer
) -> None:
    trigger = {"name": "toy/wait", "data": {"request_id": "r1"}}
    approve = {"name": "toy/approval", "data": {"request_id": "r1", "decision": "approve"}}
    async with httpx.AsyncClient(base_url=stub.url) as sender:
        await sender.post("/e/key", json={**approve, "id": "early"})  # before the run even starts
        run = await driver.run("waiter", trigger)
        assert run.status == "completed" and run.output is None  # the engine never looks back

        async def send_while_waiting(op: WaitOp) -> None:
            assert op.events_before == len(stub.events)
            await sender.post("/e/key", json={**approve, "id": "early"})  # a reused id: a duplicate

        run = await driver.run("waiter", trigger, resolver=stub_resolver(stub, when_waiting=send_while_waiting))
    assert stub.events[-1].duplicate  # dropped for starting runs, yet it resumes the wait
    assert run.status == "completed" and run.output == approve["data"]
    assert run.waits[0][1] is not None and run.waits[0][1]["id"] == "early"  # the sender's id, as functions see it


@pytest.mark.asyncio
async def test_send_event_captured_by_stub(driver: InngestDriver, stub: StubInngestServer) -> None:
    run = await driver.run("sender", {"name": "toy/send", "data": {"key": "k1"}})
    assert run.status == "completed"
    [sent] = stub.events
    assert (sent.name, sent.data, sent.idempotency_id, sent.duplicate) == ("toy/emitted", {"n": 1}, "emit-k1", False)
    assert run.output == [sent.id]

    await driver.run("sender", {"name": "toy/send", "data": {"key": "k1"}})  # a replay: new run, same event
    assert [e.duplicate for e in stub.events] == [False, True]


@pytest.mark.asyncio
async def test_pydantic_output_round_trips(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("typed", {"name": "toy/typed"})
    assert run.status == "completed"
    assert run.memo[run.stack[0]] == {"data": {"order_id": "o-1", "total": 9.5, "issued_at": "2024-01-02T03:04:05"}}
    assert Receipt.model_validate(run.output).order_id == "o-1"
    assert toy.hits["issue"] == 1

    bad = await driver.run("untyped", {"name": "toy/untyped"})
    assert bad.status == "failed" and bad.error["code"] == "output_unserializable"
    assert len(bad.calls) == 2  # no x-inngest-no-retry header, so the engine retries it


@pytest.mark.asyncio
async def test_parallel_group(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("fan-out", {"name": "toy/fan"})
    assert run.status == "completed" and run.output == ["p1", "p2", "join"]
    assert toy.hits == {"p1": 1, "p2": 1, "join": 1}
    assert [op for _, op in run.ops][:2] == ["StepPlanned", "StepPlanned"]
    assert all(c.request["ctx"]["disable_immediate_execution"] for c in run.calls[1:])
    assert [c.step_id == "step" for c in run.calls] == [True, False, False, True, False, True]


@pytest.mark.asyncio
async def test_invoke(driver: InngestDriver, toy: Toy) -> None:
    run = await driver.run("invoker", {"name": "toy/invoke"})
    assert run.status == "completed" and run.output == ["a-done", "b-done", "c-done"]
    assert toy.hits == {"a": 1, "b": 1, "c": 1}


@pytest.mark.asyncio
async def test_deliver_twice_and_before_call(driver: InngestDriver, toy: Toy) -> None:
    seen: list[tuple[str, int, bool]] = []

    def count(call: CallRecord) -> None:
        seen.append((call.step_id, call.attempt, call.duplicate))

    run = await driver.run("three-steps", {"name": "toy/three"}, deliver_twice=True, before_call=count)
    assert run.status == "completed" and run.output == ["a-done", "b-done", "c-done"]
    assert toy.hits == {"a": 2, "b": 2, "c": 2}  # each step body really ran twice
    assert run.trail == ["a", "b", "c"]  # only the kept answers shape the run
    assert len(seen) == 8 and [d for _, _, d in seen] == [False, True] * 4

    def explode(call: CallRecord) -> None:
        if call.request["steps"]:
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        await driver.run("three-steps", {"name": "toy/three"}, before_call=explode)


T0 = 1_790_000_000_000  # ms: events carry their own time (a zero `ts` would be "now")


def typed_key(user: str, n: int, at_seconds: int, event_id: str | None = None) -> dict[str, object]:
    return {
        "name": "toy/typed-key",
        "id": event_id or f"{user}-{n}",
        "ts": T0 + at_seconds * 1000,
        "data": {"user": user, "n": n},
    }


@pytest.mark.asyncio
async def test_deliver_debounces_by_key_period_and_timeout_and_runs_the_rest_per_event(driver: InngestDriver) -> None:
    """Inngest's debounce: one run per key's burst, with its last event, `period` after it or
    `timeout` after the burst began; every other function runs once per event id at its time.
    A reused id is not dropped for the debounced function (pkg/execution/executor/executor.go,
    `schedule`, debounces before the run's idempotency key is checked): it joins a's open burst
    and becomes its last event, while `tally` starts nothing for it
    (pkg/execution/runner/runner.go, `Initialize`: the run is keyed by `event.id`)."""
    events = [
        typed_key("a", 1, 0),
        typed_key("b", 2, 3),
        typed_key("a", 3, 5),
        typed_key("a", 4, 12),  # 7 s after the last: still a's first burst
        typed_key("a", 5, 40),  # 28 s later: a burst of its own
        *(typed_key("c", 10 + k, 8 * k) for k in range(6)),  # every 8 s: the 30 s timeout ends it
        typed_key("a", 1, 41, event_id="a-1"),  # a reused id, resent: it extends a's second burst
    ]
    runs = await driver.deliver(events)
    debounced = [((r.started_ms or 0) - T0) // 1000 for r in runs if r.fn_id.endswith("-debounced")]
    debounced_outputs = [r.output for r in runs if r.fn_id.endswith("-debounced")]
    tallied = sorted(r.output for r in runs if r.fn_id.endswith("-tally"))
    # Bursts close 10 s after their last event and run 1.05 s later: b at 14 s, a at 23 s, c at
    # 31 s (its 30 s timeout, with the event at 24 s), c's second burst at 51 s, and a's second
    # at 52 s with the resent event as its last.
    assert list(zip(debounced, debounced_outputs, strict=True)) == [(14, 2), (23, 4), (31, 13), (51, 15), (52, 1)]
    assert tallied == sorted([1, 2, 3, 4, 5, *range(10, 16)])  # the resent "a-1" started no tally


@pytest.mark.asyncio
async def test_cloud_mode_signatures(stub: StubInngestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in stub.env(dev=False).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("INNGEST_DEV", raising=False)
    toy = build_toy(is_production=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=toy.app), base_url="http://toy.test") as http:
        signed = InngestDriver(http, stub=stub, signing_key=SIGNING_KEY)
        await signed.sync()
        run = await signed.run("three-steps", {"name": "toy/three"})
        assert run.status == "completed" and len(run.calls) == 4

        unsigned = InngestDriver(http, stub=stub, server_kind="cloud")
        unsigned.app_id, unsigned.functions = signed.app_id, signed.functions
        rejected = await unsigned.run("three-steps", {"name": "toy/three"})
        assert rejected.status == "failed" and rejected.calls[0].status_code == 401

        body = b'{"b": 1, "a": 2}'
        headers = signed_headers(body, SIGNING_KEY)
        res = await http.post("/api/inngest", params={"fnId": "nope"}, content=body, headers=headers)
        assert res.status_code != 401  # signature over the canonical form verifies
        res = await http.post("/api/inngest", params={"fnId": "nope"}, content=b'{"b": 2}', headers=headers)
        assert res.status_code == 401
