"""The test engine is as strict as Inngest's Go executor: each rule on a toy app over HTTP.

Every test names the Go file (inngest/inngest) its rule is read from. The toy app measures from
its own side (steps in flight per key, the order bodies ran), so a test proves what the app
experienced, not what the driver believes it did.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import typing
from collections.abc import AsyncIterator, Iterator

import fastapi
import httpx
import inngest
import inngest.fast_api
import pytest
import pytest_asyncio
from engine.cel import evaluated_key, priority_factor
from engine.registration import cron_error, sync_errors
from inngest_driver import Arrival, DriverError, InngestDriver, StubInngestServer, cron_tick

from support_worker.core import cron as product_cron

T0 = 1_790_000_000_000  # ms
MINUTE = 60_000


@dataclasses.dataclass
class Toy:
    app: fastapi.FastAPI
    in_flight: collections.Counter[str]
    peak: collections.Counter[str]
    order: list[str]  # step bodies, as they began


def build_toy() -> Toy:
    client = inngest.Inngest(app_id="fidelity", is_production=False)
    in_flight: collections.Counter[str] = collections.Counter()
    peak: collections.Counter[str] = collections.Counter()
    order: list[str] = []

    async def busy(*keys: str) -> str:
        """A step body that takes real time, so overlapping calls really overlap in the app."""
        order.append(keys[0])
        for key in keys:
            in_flight[key] += 1
            peak[key] = max(peak[key], in_flight[key])
        await asyncio.sleep(0.02)
        for key in keys:
            in_flight[key] -= 1
        return keys[0]

    @client.create_function(
        fn_id="per-user",
        trigger=inngest.TriggerEvent(event="toy/work"),
        concurrency=[inngest.Concurrency(limit=3), inngest.Concurrency(limit=1, key="event.data.user")],
    )
    async def per_user(ctx: inngest.Context) -> str:
        user = ctx.event.data["user"]
        await ctx.step.run("first", busy, f"user:{user}", "all")
        return await ctx.step.run("second", busy, f"user:{user}", "all")

    @client.create_function(
        fn_id="napper", trigger=inngest.TriggerEvent(event="toy/nap"), concurrency=[inngest.Concurrency(limit=1)]
    )
    async def napper(ctx: inngest.Context) -> None:
        name = ctx.event.data["name"]
        await ctx.step.run("before", busy, f"{name}-before")
        await ctx.step.sleep("nap", datetime.timedelta(hours=1))
        await ctx.step.run("after", busy, f"{name}-after")

    @client.create_function(
        fn_id="by-tier",
        trigger=inngest.TriggerEvent(event="toy/tier"),
        concurrency=[inngest.Concurrency(limit=1)],
        priority=inngest.Priority(run='event.data.tier == "vip" ? 600 : 0'),
    )
    async def by_tier(ctx: inngest.Context) -> str:
        return await ctx.step.run("serve", busy, ctx.event.data["name"])

    @client.create_function(
        fn_id="paced",
        trigger=inngest.TriggerEvent(event="toy/paced"),
        throttle=inngest.Throttle(limit=2, period=datetime.timedelta(minutes=1), burst=1),
    )
    async def paced(ctx: inngest.Context) -> str:
        return str(ctx.event.data["n"])

    @client.create_function(
        fn_id="burst-slot",
        trigger=inngest.TriggerEvent(event="toy/burst"),
        debounce=inngest.Debounce(key="event.data.user", period=datetime.timedelta(seconds=10)),
        concurrency=[inngest.Concurrency(limit=1, key="event.data.slot")],
    )
    async def burst_slot(ctx: inngest.Context) -> str:
        await ctx.step.sleep("linger", datetime.timedelta(minutes=2))
        return await ctx.step.run("answer", busy, f"answer-{ctx.event.data['n']}")

    @client.create_function(
        fn_id="bad-key",
        trigger=inngest.TriggerEvent(event="toy/bad-key"),
        debounce=inngest.Debounce(key="event.data.user + 1", period=datetime.timedelta(seconds=10)),
    )
    async def bad_key(ctx: inngest.Context) -> object:
        return ctx.event.data["n"]

    @client.create_function(fn_id="who", trigger=inngest.TriggerEvent(event="toy/who"))
    async def who(ctx: inngest.Context) -> object:
        return {"id": ctx.event.id, "ts": ctx.event.ts}

    @client.create_function(fn_id="ticker", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris 30 8 * * *"))
    async def ticker(ctx: inngest.Context) -> object:
        return {"id": ctx.event.id, "name": ctx.event.name, "data": dict(ctx.event.data)}

    @client.create_function(fn_id="patient", trigger=inngest.TriggerEvent(event="toy/patient"), retries=3)
    async def patient(ctx: inngest.Context) -> int:
        if ctx.attempt < 3:
            wait = {0: datetime.timedelta(minutes=5), 1: datetime.timedelta(milliseconds=100)}.get(ctx.attempt)
            raise inngest.RetryAfterError("slow down", retry_after=wait or datetime.timedelta(hours=48))
        return ctx.attempt

    @client.create_function(
        fn_id="approver", trigger=inngest.TriggerEvent(event="toy/ask"), concurrency=[inngest.Concurrency(limit=1)]
    )
    async def approver(ctx: inngest.Context) -> object:
        await ctx.step.run("ask", busy, f"ask-{ctx.event.data['request_id']}")
        decision = await ctx.step.wait_for_event(
            "await-decision",
            event="toy/decided",
            if_exp="async.data.request_id == event.data.request_id",
            timeout=datetime.timedelta(hours=4),
        )
        return None if decision is None else decision.data["by"]

    @client.create_function(fn_id="shaky", trigger=inngest.TriggerEvent(event="toy/shaky"), retries=3)
    async def shaky(ctx: inngest.Context) -> int:
        async def flaky() -> int:
            if ctx.attempt < 2:
                raise RuntimeError(f"attempt {ctx.attempt} fails")
            return ctx.attempt

        return await ctx.step.run("flaky", flaky)

    app = fastapi.FastAPI()
    fns: list[inngest.Function[typing.Any]] = [
        shaky,
        approver,
        per_user,
        napper,
        by_tier,
        paced,
        burst_slot,
        bad_key,
        who,
        ticker,
        patient,
    ]
    inngest.fast_api.serve(app, client, fns)
    return Toy(app, in_flight, peak, order)


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
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=toy.app), base_url="http://toy.test") as http:
        drv = InngestDriver(http, stub=stub)
        await drv.sync()
        yield drv


def event(event_name: str, at_seconds: float = 0, event_id: str | None = None, **data: object) -> dict[str, object]:
    out: dict[str, object] = {"name": event_name, "ts": T0 + int(at_seconds * 1000), "data": data}
    if event_id:
        out["id"] = event_id
    return out


# --------------------------------------------------------------------------- concurrency


async def test_two_limits_apply_at_once_and_runs_queue_at_either(driver: InngestDriver, toy: Toy) -> None:
    """pkg/inngest/concurrency.go + pkg/execution/queue/item.go (`GetCustomConcurrencyKeys`):
    a function limit and a keyed limit both hold a slot for every executing step."""
    events = [event("toy/work", user=user) for user in "aabbccdd"]
    runs = await driver.deliver(events)
    assert [r.status for r in runs] == ["completed"] * 8
    assert all(toy.peak[f"user:{user}"] == 1 for user in "abcd")  # one step per user at a time
    assert toy.peak["all"] == 3  # and never more than three steps across users
    assert driver.flow is not None and driver.flow.queued["fidelity-per-user"] > 0


async def test_a_sleeping_run_holds_no_slot(driver: InngestDriver, toy: Toy) -> None:
    """A slot is held by an executing step only: while the first run sleeps its hour, the second
    run's first step takes the function's single slot (pkg/execution/queue/item.go: limits are
    on queue items; a sleep is a future item, not a running one)."""
    runs = await driver.deliver([event("toy/nap", name="one"), event("toy/nap", name="two")])
    assert [r.status for r in runs] == ["completed", "completed"]
    assert toy.order == ["one-before", "two-before", "one-after", "two-after"]
    assert all(r.finished_ms == T0 + 3_600_000 for r in runs)  # both woke an hour later, virtually


async def test_priority_orders_queued_starts_and_stays_in_the_engines_range(driver: InngestDriver, toy: Toy) -> None:
    """pkg/execution/queue/item.go (`Score`, `GetPriorityFactor`): queued items go by the run's
    start minus its factor in seconds, so a "vip" run queued last starts before the others."""
    events = [event("toy/tier", name=name, tier=tier) for name, tier in [("first", ""), ("second", ""), ("vip", "vip")]]
    await driver.deliver(events)
    assert toy.order == ["first", "vip", "second"]  # "first" took the free slot before "vip" arrived


def test_priority_factor_is_an_int_clamped_to_twelve_hours_and_an_error_gives_zero() -> None:
    """pkg/inngest/function.go (`RunPriorityFactor`): a non-int (event numbers are doubles) or an
    error gives 0; results are clamped to +-12 h (pkg/consts/consts.go, `PriorityFactorMax`)."""
    assert priority_factor("event.data.p", {"data": {"p": 300}}) == 0  # a double from JSON
    assert priority_factor("int(event.data.p)", {"data": {"p": 300}}) == 300
    assert priority_factor("int(event.data.p)", {"data": {"p": 10**9}}) == 43_200
    assert priority_factor("int(event.data.p)", {"data": {"p": -(10**9)}}) == -43_200
    assert priority_factor("event.data.missing.size() > 1 ? 5 : 6", {"data": {}}) == 0  # an evaluation error


async def test_a_wait_takes_virtual_time_sees_only_later_events_and_holds_no_slot(
    driver: InngestDriver, toy: Toy
) -> None:
    """A wait is a pause, not a step (pkg/execution/executor: pauses are matched on each event
    that arrives after them): it resumes with the first matching event that arrives later, or
    with null at its timeout, in virtual time; while it waits, other runs take the slot."""
    hour = 3_600_000
    runs = await driver.deliver(
        [
            Arrival(T0 - 1, event("toy/decided", -1, request_id="r1", by="too-early")),  # before the wait
            event("toy/ask", 0, request_id="r1"),
            event("toy/ask", 0, request_id="r2"),
            Arrival(T0 + 2 * hour, event("toy/decided", 7200, request_id="r1", by="alice")),
            Arrival(T0 + 5 * hour, event("toy/decided", 18000, request_id="r2", by="late")),
        ]
    )
    by_request = {r.event["data"]["request_id"]: r for r in runs}
    assert (by_request["r1"].output, by_request["r1"].finished_ms) == ("alice", T0 + 2 * hour)
    assert (by_request["r2"].output, by_request["r2"].finished_ms) == (None, T0 + 4 * hour)  # timed out
    assert toy.order == ["ask-r1", "ask-r2"]  # r2 asked while r1 waited on the single slot


# --------------------------------------------------------------------------- throttle


async def test_throttle_delays_starts_in_virtual_time_and_drops_none(driver: InngestDriver) -> None:
    """pkg/constraintapi/lua/helper/gcra.lua (`throttle`, with acquire.lua's burst): limit 2 per
    minute with burst 1 admits three at once, then one every 30 s; the rest wait, none is lost."""
    runs = await driver.deliver([event("toy/paced", n=n) for n in range(6)])
    assert sorted(r.output for r in runs) == [str(n) for n in range(6)]
    assert [((r.started_ms or 0) - T0) // 1000 for r in runs] == [0, 0, 0, 30, 60, 90]


# --------------------------------------------------------------------------- debounce


async def test_a_burst_runs_with_the_newest_event_by_ts_and_an_older_one_has_no_effect(driver: InngestDriver) -> None:
    """pkg/execution/state/redis_state/lua/debounce/updateDebounce.lua: an event older (by `ts`)
    than the burst's is out of order and changes nothing, not even the firing time."""
    runs = await driver.deliver(
        [
            event("toy/burst", 0, user="u", slot="s", n=1),
            event("toy/burst", 3, user="u", slot="s", n=2),
            Arrival(T0 + 5_000, event("toy/burst", 1, user="u", slot="s", n=3)),  # arrives late, older
        ]
    )
    (run,) = runs
    assert run.output == "answer-2" and run.started_ms == T0 + 13_000 + 1_050  # the job runs 1.05 s late


async def test_the_next_event_after_a_burst_fired_starts_an_overlapping_run(driver: InngestDriver) -> None:
    """pkg/execution/debounce/debounce.go: once the burst's job is leased (its run started),
    `updateDebounce` reports it in progress and a new debounce begins: two runs of one key at once."""
    runs = await driver.deliver(
        [event("toy/burst", 0, user="u", slot="first", n=1), event("toy/burst", 15, user="u", slot="second", n=2)]
    )
    first, second = runs
    assert (first.started_ms, second.started_ms) == (T0 + 11_050, T0 + 26_050)
    assert first.finished_ms is not None and second.started_ms < first.finished_ms  # the first still lingers


async def test_concurrency_keys_come_from_the_bursts_last_event(driver: InngestDriver, toy: Toy) -> None:
    """pkg/execution/executor/executor.go (`schedule`): a debounced run is scheduled with the
    burst's event, and its concurrency keys are evaluated from that event alone."""
    await driver.deliver(
        [
            event("toy/burst", 0, user="a", slot="early-a", n=1),
            event("toy/burst", 0, user="b", slot="early-b", n=2),
            event("toy/burst", 5, user="a", slot="shared", n=3),
            event("toy/burst", 5, user="b", slot="shared", n=4),
        ]
    )
    assert driver.flow is not None
    slots = {key.removeprefix("fidelity-burst-slot:") for key in driver.flow.peak}
    assert slots == {"shared"} and driver.flow.peak["fidelity-burst-slot:shared"] == 1
    assert sorted(toy.order) == ["answer-3", "answer-4"]


async def test_a_key_that_fails_to_evaluate_is_one_invalid_burst(driver: InngestDriver) -> None:
    """pkg/execution/debounce/debounce.go (`debounceKey`): an evaluation error keys `<invalid>`."""
    runs = await driver.deliver([event("toy/bad-key", 0, user="a", n=1), event("toy/bad-key", 2, user="b", n=2)])
    assert [r.output for r in runs] == [2]  # both users in one burst


# --------------------------------------------------------------------------- keys and ids


def test_keys_render_numbers_as_go_does_and_missing_attributes_as_null() -> None:
    """pkg/execution/queue/item.go and pkg/inngest/concurrency.go print a non-string key with
    `%v`: JSON numbers are doubles, so 1234567 is "1.234567e+06". pkg/expressions reads a missing
    attribute as null; an evaluation error prints the nil value ("<nil>")."""
    ev = {"name": "e", "data": {"id": 1234567, "small": 42, "name": "x"}}
    assert evaluated_key("event.data.id", ev, on_error="<nil>") == "1.234567e+06"
    assert evaluated_key("string(event.data.id)", ev, on_error="<nil>") == "1.234567e+06"
    assert evaluated_key("event.data.small", ev, on_error="<nil>") == "42"
    assert evaluated_key("event.data.missing", ev, on_error="<nil>") == "<nil>"
    assert evaluated_key('event.data.missing != "x"', ev, on_error="<nil>") == "true"
    assert evaluated_key("event.data.name + 1", ev, on_error="<nil>") == "<nil>"


async def test_a_function_sees_the_senders_event_id(driver: InngestDriver, stub: StubInngestServer) -> None:
    """pkg/event/legacy_types.go (`NewBaseTrackedEvent`): the internal id is the Event API's own;
    `event.id` stays the sender's, or becomes the internal id when the sender gave none."""
    async with httpx.AsyncClient(base_url=stub.url) as sender:
        await sender.post("/e/key", json={"name": "toy/who", "id": "senders-id", "data": {}})
        await sender.post("/e/key", json={"name": "toy/who", "data": {}})
    named, anonymous = stub.events
    assert named.id != "senders-id"  # what `send` returned, and what the REST API lists runs by
    assert (await driver.run("who", named.as_event())).output["id"] == "senders-id"
    assert (await driver.run("who", anonymous.as_event())).output["id"] == anonymous.id


async def test_a_cron_tick_carries_its_schedule_and_is_named_by_its_scheduled_time(driver: InngestDriver) -> None:
    """pkg/execution/executor/service.go (`handleCron`): `{cron, scheduledAt, fireAt}`, the
    scheduled time (RFC 3339, UTC) as the event id, and `ts` the fire time."""
    tick = cron_tick("TZ=Europe/Paris 30 8 * * *", datetime.datetime(2026, 11, 23, 7, 30, tzinfo=datetime.UTC))
    run = await driver.run("ticker", tick)
    assert run.output == {
        "id": "2026-11-23T07:30:00Z",
        "name": "inngest/scheduled.timer",
        "data": {
            "cron": "TZ=Europe/Paris 30 8 * * *",
            "scheduledAt": "2026-11-23T07:30:00Z",
            "fireAt": "2026-11-23T07:30:00Z",
        },
    }


async def test_retry_after_is_honoured_in_virtual_time_clamped_to_a_second_and_a_day(driver: InngestDriver) -> None:
    """pkg/execution/driver/httpdriver/parse.go (`ParseRetry`): the retry waits for `retry-after`,
    at least 1 s (`consts.MinRetryDuration`) and at most 24 h (`MaxRetryDuration`)."""
    (run,) = await driver.deliver([event("toy/patient")])
    assert run.status == "completed" and run.output == 3
    at = [((c.at_ms or 0) - T0) / 1000 for c in run.calls]
    assert [c.retry_after_ms for c in run.calls[:3]] == [300_000, 1_000, 86_400_000]
    assert at == [0, 300, 301, 301 + 86_400]


async def test_a_failed_step_is_retried_after_the_queues_backoff_in_virtual_time(driver: InngestDriver) -> None:
    """pkg/execution/queue/process.go retries at `backoff.TableBackoff(attempt)`
    (pkg/backoff/backoff.go): 15 s after the first failure, 30 s after the second."""
    (run,) = await driver.deliver([event("toy/shaky")])
    assert run.status == "completed" and run.output == 2
    assert [((c.at_ms or 0) - T0) // 1000 for c in run.calls] == [0, 15, 45, 45]  # then the final call


# --------------------------------------------------------------------------- registration


def registration(driver: InngestDriver, stub: StubInngestServer, fn_id: str) -> tuple[dict[str, object], dict]:
    payload = dict(stub.registrations[-1])
    fn = dict(driver.functions[driver.fn_id(fn_id)])
    payload["functions"] = [fn]
    return payload, fn


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"triggers": [{"cron": "@daily"}]}, "'@daily' isn't a valid cron schedule"),
        ({"triggers": [{"cron": "0 0 9 * * *"}]}, "'0 0 9 * * *' isn't a valid cron schedule"),
        ({"triggers": [{"cron": "TZ=Mars/Olympus 0 9 * * *"}]}, "isn't a valid cron schedule"),
        ({"triggers": [{"event": "toy/work", "expression": "event.data.user =="}]}, "invalid trigger expression"),
        (
            {"concurrency": [{"limit": 1}, {"limit": 2, "key": "event.data.a"}, {"limit": 3, "key": "event.data.b"}]},
            "There are more concurrency limits specified than the allowed max of: 2",
        ),
        ({"concurrency": [{"limit": 1, "key": "event.data.("}]}, "Invalid concurrency key 'event.data.('"),
        ({"debounce": {"period": "500ms"}}, "The debounce period of '500ms' is less than the min of: 1s"),
        ({"debounce": {"period": "8d"}}, "The debounce period of '8d' is greater than the max of: 168h0m0s"),
        ({"debounce": {"period": "soon"}}, "The debounce period of 'soon' is invalid"),
        ({"priority": {"run": "event.data.tier ==="}}, "Priority.Run expression is invalid"),
    ],
)
async def test_the_stub_refuses_a_sync_the_engine_would_refuse(
    driver: InngestDriver, stub: StubInngestServer, change: dict[str, object], reason: str
) -> None:
    """pkg/registration/process.go (`ProcessFunctions`) runs `Function.Validate` (pkg/inngest/
    function.go, concurrency.go, trigger.go) on every function and fails the sync: 400."""
    payload, fn = registration(driver, stub, "per-user")
    fn.update(change)
    async with httpx.AsyncClient(base_url=stub.url) as sdk:
        res = await sdk.post("/fn/register", json=payload)
    assert res.status_code == 400 and reason in res.json()["error"]
    assert any(reason in why for why in stub.refused[-1])


async def test_a_refused_sync_fails_the_apps_sync_with_the_reason(
    stub: StubInngestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stub.env().items():
        monkeypatch.setenv(key, value)
    client = inngest.Inngest(app_id="bad-cron", is_production=False)

    @client.create_function(fn_id="daily", trigger=inngest.TriggerCron(cron="@daily"))
    async def daily(ctx: inngest.Context) -> None:
        return None

    app = fastapi.FastAPI()
    inngest.fast_api.serve(app, client, [daily])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://toy.test") as http:
        with pytest.raises(DriverError, match="sync failed"):
            await InngestDriver(http, stub=stub).sync()
    assert stub.refused == [["bad-cron-daily: '@daily' isn't a valid cron schedule"]]
    assert sync_errors({"functions": []}) == ["No functions registered within your app"]


@pytest.mark.parametrize(
    "spec",
    [
        "0 9 * * *",
        "TZ=Europe/Paris 30 8 * * *",
        "CRON_TZ=UTC */15 * * * mon-fri",
        "0 9 1-31/2 jan-jun ?",
        "@daily",
        "@every 1h",
        "0 0 9 * * *",
        "0 9 * *",
        "TZ=Mars/Olympus 0 9 * * *",
        "60 * * * *",
        "0 24 * * *",
        "0 9 0 * *",
        "0 9 * 13 *",
        "0 9 * * 7",
        "0 9 * * 0/0",
        "5-1 * * * *",
        "1-2-3 * * * *",
        "*/5/2 * * * *",
        "x * * * *",
        "-1 * * * *",
        "",
    ],
)
def test_the_product_refuses_exactly_the_crons_the_engine_refuses(spec: str) -> None:
    """support_worker/core/cron.py agrees with the stub's own reading of robfig/cron v3 as
    pkg/inngest/trigger.go configures it (five fields, no descriptors, a known TZ=)."""
    assert (product_cron.problem(spec) is None) == (cron_error(spec) is None)
