"""A small, faithful stand-in for the Inngest executor, for tests only.

There is no Inngest dev server on these machines, so tests drive the served app
over HTTP the way the executor does (see /work/shared/INNGEST_WIRE.md; the SDK in
``inngest/_internal`` is the final word). This module is a test tool: it holds no
product logic and must stay small enough to audit against the SDK. The engine's rules it
applies (CEL, registration, flow control) live in ``tests/engine/``, each with its Go source.

* ``StubInngestServer`` (``engine.stub``) is a real loopback HTTP server, because the SDK makes
  real outbound calls for sync (``POST /fn/register``) and ``send`` (``POST /e/<key>``). It
  refuses (400) a sync the engine would refuse (``engine.registration``).
* ``InngestDriver`` syncs the app and runs functions call by call: memo, stack,
  per-call attempt counters, step retries, parallel groups, sleeps, waits. ``deliver``
  routes events in virtual time with debounce, run idempotency, concurrency, throttle
  and priority as the engine applies them (``engine.flow``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import inspect
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

import celpy
import httpx
from engine.cel import INVALID_DEBOUNCE_KEY, cel_evaluate, cel_match, evaluated_key, priority_factor
from engine.flow import Flow
from engine.registration import debounce_timeout_ms, duration_ms
from engine.stub import CapturedEvent, StubInngestServer
from inngest._internal import net

# Re-exported: tests import the stub and CEL from the driver.
__all__ = ["CapturedEvent", "StubInngestServer", "cel_evaluate", "cel_match"]

JSONDict = dict[str, Any]
FUNCTION_FAILED = "inngest/function.failed"
CRON_EVENT = "inngest/scheduled.timer"  # pkg/consts/events.go, `FnCronName`
BACKOFF_TABLE_MS = [s * 1000 for s in (15, 30, 60, 120, 300, 600, 1200, 2400, 3600, 7200)]  # pkg/backoff
# The status a call records when the host could not be reached (killed, restarting).
UNREACHABLE = 599


class DriverError(AssertionError):
    """The app answered something a real executor would not accept (or the run looped)."""


def _new_id() -> str:
    return uuid.uuid4().hex


def wall_clock_delay_ms(instant: str, *, since: float) -> int:
    """How far an ISO instant the SDK computed from its wall clock (a sleep's wake-up, a
    ``RetryAfterError``'s date) lies after ``since``, in whole seconds: the SDK took "now" a few
    milliseconds before answering, and virtual time should not inherit that jitter."""
    at = datetime.datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()
    return max(0, round(at - since)) * 1000


def normalize_event(event: Mapping[str, Any] | CapturedEvent) -> JSONDict:
    """Fill ``id``/``ts`` like the Event API does; the SDK validates events strictly."""
    if isinstance(event, CapturedEvent):
        return event.as_event()
    out = dict(event)
    out.setdefault("data", {})
    out["id"] = out.get("id") or _new_id()
    out["ts"] = int(out.get("ts") or time.time() * 1000)
    return out


def signed_headers(body: bytes, signing_key: str) -> dict[str, str]:
    """``X-Inngest-Signature`` as the executor sends it. The SDK verifies HMAC over the
    JCS-canonical body (plus timestamp), so any JSON byte layout of ``body`` verifies."""
    sig = net.sign_request(body, signing_key)
    if isinstance(sig, Exception):
        raise sig
    return {"x-inngest-signature": sig}


def cron_tick(cron: str, scheduled_at: datetime.datetime) -> JSONDict:
    """The event a cron trigger fires with (pkg/execution/executor/service.go, ``handleCron``):
    its id is the scheduled time (RFC 3339, UTC), so a tick delivered twice is one event, and
    its data names the schedule, the scheduled time and the fire time (equal without jitter)."""
    at = scheduled_at.astimezone(datetime.UTC).replace(microsecond=0)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "name": CRON_EVENT,
        "id": stamp,
        "ts": int(at.timestamp() * 1000),
        "data": {"cron": cron, "scheduledAt": stamp, "fireAt": stamp},
    }


@dataclasses.dataclass
class WaitOp:
    """A ``WaitForEvent`` op as reported by the SDK, plus the run's trigger (for ``event.`` refs)
    and how many events the stub had captured when the wait began (the engine never looks
    back: only events sent after that can resume it)."""

    id: str
    display_name: str
    event: str
    if_exp: str | None
    timeout: str | None
    trigger: JSONDict
    events_before: int = 0


Resolver = Callable[[WaitOp], Awaitable[JSONDict | None]]


def pool_resolver(
    pool: Iterable[Mapping[str, Any] | CapturedEvent] | Callable[[], Iterable[Mapping[str, Any] | CapturedEvent]],
) -> Resolver:
    """Resolve a wait with the first pool event of the right name whose data matches ``if``;
    None (timeout) if none does. A callable pool is read at wait time. The pool stands for
    events sent after the wait began (the engine never looks back); ``stub_resolver`` is the
    engine's own behaviour over what the app really sent."""

    async def resolve(op: WaitOp) -> JSONDict | None:
        for item in pool() if callable(pool) else pool:
            ev = normalize_event(item)
            if ev["name"] == op.event and cel_match(op.if_exp, candidate=ev, trigger=op.trigger):
                return ev
        return None

    return resolve


def stub_resolver(stub: StubInngestServer, *, when_waiting: Callable[[WaitOp], Any] | None = None) -> Resolver:
    """The engine's wait: the first event of the right name sent to the stub after the wait
    began whose data matches ``if``; None (timeout) if none. An event whose id was already
    seen (dropped as a duplicate for starting runs) still resumes a wait. ``when_waiting``
    runs once the wait has begun: the place for a test to send its decision."""

    async def resolve(op: WaitOp) -> JSONDict | None:
        if when_waiting is not None:
            maybe = when_waiting(op)
            if inspect.isawaitable(maybe):
                await maybe
        for item in list(stub.events[op.events_before :]):
            ev = item.as_event()
            if ev["name"] == op.event and cel_match(op.if_exp, candidate=ev, trigger=op.trigger):
                return ev
        return None

    return resolve


async def timeout_resolver(op: WaitOp) -> None:
    """Force every wait to time out (memo ``null``)."""
    return None


# --- runs ------------------------------------------------------------------------------


@dataclasses.dataclass
class Arrival:
    """An event reaching the Event API at ``at_ms`` (virtual), whatever its own ``ts`` says."""

    at_ms: int
    event: Mapping[str, Any]


@dataclasses.dataclass
class _Burst:
    deadline: int | None  # ms: `timeout` after the burst began, when it fires at the latest
    event: JSONDict  # the newest event by `ts`: the one the run gets
    version: int = 0  # bumped by each event, so only the latest scheduled firing runs
    open_until: int = 0  # ms: the key's pointer to this burst expires then (Redis SETEX ttl)


# The debounce job runs this long after the burst's ttl (pkg/execution/debounce/debounce.go:
# `now.Add(ttl).Add(buffer).Add(time.Second)`, buffer 50 ms).
DEBOUNCE_JOB_DELAY_MS = 1050


@dataclasses.dataclass
class CallRecord:
    """One HTTP call to the app. ``request`` may be mutated by a ``before_call`` hook."""

    fn_id: str
    step_id: str
    attempt: int
    request: JSONDict
    duplicate: bool = False
    status_code: int = 0
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    sent_at: float = 0.0  # wall clock (s) when the request went out
    answered_at: float = 0.0  # wall clock (s) when the answer came: `retry-after` dates count from it
    at_ms: int | None = None  # virtual time of the call (in `deliver`)

    @property
    def retry_after_ms(self) -> int | None:
        """The delay a ``retry-after`` header asks for, clamped to 1 s .. 24 h as the executor
        does (pkg/execution/driver/httpdriver/parse.go, ``ParseRetry``: a short integer is
        seconds, anything else a date); None without the header (or one that does not parse)."""
        value = self.headers.get("retry-after")
        if not value:
            return None
        if len(value) <= 7 and value.isdigit() and int(value) > 0:
            delay = int(value) * 1000
        else:
            try:
                delay = wall_clock_delay_ms(value, since=self.answered_at)
            except ValueError:
                return None
        return min(max(delay, 1000), 86_400_000)

    @property
    def ops(self) -> list[JSONDict]:
        return self.body if self.status_code == 206 and isinstance(self.body, list) else []

    @property
    def no_retry(self) -> bool:
        return self.headers.get("x-inngest-no-retry") == "true"


@dataclasses.dataclass
class Run:
    fn_id: str
    run_id: str
    event: JSONDict
    status: Literal["running", "completed", "failed"] = "running"
    output: Any = None
    error: Any = None
    calls: list[CallRecord] = dataclasses.field(default_factory=list)
    memo: JSONDict = dataclasses.field(default_factory=dict)
    stack: list[str] = dataclasses.field(default_factory=list)
    ops: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (display name, opcode)
    waits: list[tuple[WaitOp, JSONDict | None]] = dataclasses.field(default_factory=list)
    sleeps: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (display name, wake ISO)
    on_failure: Run | None = None
    started_ms: int | None = None  # virtual time the run started, past any throttle (in `deliver`)
    finished_ms: int | None = None

    @property
    def trail(self) -> list[str]:
        """Display names of every reported op except StepPlanned, in order (retries repeat)."""
        return [name for name, op in self.ops if op != "StepPlanned"]

    def runs_of(self, name: str) -> int:
        """How many times the body of step ``name`` executed (StepRun/StepError/StepFailed)."""
        return sum(1 for n, op in self.ops if n == name and op in ("StepRun", "StepError", "StepFailed"))


BeforeCall = Callable[[CallRecord], Awaitable[None] | None]


class InngestDriver:
    """Drives a served app the way the executor does. Pass the ``httpx.AsyncClient`` that
    reaches the app (uvicorn base_url or ``httpx.ASGITransport``)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        stub: StubInngestServer | None = None,
        path: str = "/api/inngest",
        signing_key: str | None = None,
        server_kind: str | None = None,
        default_retries: int = 4,
    ) -> None:
        self.http, self.stub, self.path, self.signing_key = http, stub, path, signing_key
        self.server_kind = server_kind or ("cloud" if signing_key else "dev")
        self.default_retries = default_retries
        self.app_id: str | None = None
        self.functions: dict[str, JSONDict] = {}
        # The virtual clock and flow control while `deliver` runs (kept afterwards, for tests to
        # read: `flow.peak` is the most slots each concurrency key ever had taken).
        self.flow: Flow | None = None
        self._delivering = False
        self._route_sent: Callable[[], None] = lambda: None
        self._waits: list[tuple[WaitOp, asyncio.Future[JSONDict | None]]] = []  # open waits, in `deliver`

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-inngest-server-kind": self.server_kind}
        if self.signing_key:
            headers.update(signed_headers(body, self.signing_key))
        return headers

    async def sync(self) -> JSONDict:
        """``PUT`` the serve path; the SDK then registers with the stub. Returns that payload."""
        if self.stub is None:
            raise DriverError("sync needs the stub server to capture registration")
        before = len(self.stub.registrations)
        res = await self.http.put(self.path, headers=self._headers(b""))
        if res.status_code != 200 or len(self.stub.registrations) == before:
            raise DriverError(f"sync failed: {res.status_code} {res.text}")
        payload = self.stub.registrations[-1]
        self.app_id = payload["appname"]
        self.functions = {fn["id"]: fn for fn in payload["functions"]}
        return payload

    def fn_id(self, fn_id: str) -> str:
        """Accept a local id ("my-fn") or the wire id ("app-my-fn")."""
        if fn_id not in self.functions and f"{self.app_id}-{fn_id}" in self.functions:
            return f"{self.app_id}-{fn_id}"
        return fn_id

    def max_attempts(self, fn_id: str) -> int:
        """``retries`` in the registration counts retries, so attempts = retries + 1."""
        retries = self.functions.get(fn_id, {}).get("steps", {}).get("step", {}).get("retries", {})
        return int(retries.get("attempts", self.default_retries)) + 1

    async def _call(
        self,
        run: Run,
        step_id: str,
        attempt: int,
        disable: bool,
        max_attempts: int,
        before_call: BeforeCall | None,
        duplicate: bool = False,
    ) -> CallRecord:
        ctx = {
            "run_id": run.run_id,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "disable_immediate_execution": disable,
            "stack": {"stack": list(run.stack)},
        }
        request = {"event": run.event, "events": [run.event], "steps": dict(run.memo), "use_api": False, "ctx": ctx}
        rec = CallRecord(run.fn_id, step_id, attempt, request, duplicate)
        rec.at_ms = self.flow.now if self.flow is not None and self._delivering else None
        if before_call is not None:
            maybe = before_call(rec)
            if inspect.isawaitable(maybe):
                await maybe
        raw = json.dumps(rec.request).encode()
        rec.sent_at = rec.answered_at = time.time()
        try:
            res = await self.http.post(
                self.path, params={"fnId": run.fn_id, "stepId": step_id}, content=raw, headers=self._headers(raw)
            )
        except httpx.TransportError as error:
            # The host died or refused the connection: the engine counts a failed attempt
            # and retries the same call, like a 5xx.
            rec.status_code, rec.body = UNREACHABLE, f"{type(error).__name__}: {error}"
            run.calls.append(rec)
            return rec
        rec.status_code, text, rec.answered_at = res.status_code, res.text, time.time()
        rec.headers = {k.lower(): v for k, v in res.headers.items()}
        self._route_sent()  # events the app sent during the call reach the engine now
        if res.status_code == 201:  # INNGEST_STREAMING=force: keepalive spaces, then the real answer
            inner = json.loads(text)
            rec.status_code, text = inner["status"], inner["body"]
            rec.headers.update({k.lower(): v for k, v in inner["headers"].items()})
        try:
            rec.body = json.loads(text) if text else None
        except json.JSONDecodeError:
            rec.body = text
        run.calls.append(rec)
        return rec

    async def run(
        self,
        fn_id: str,
        event: Mapping[str, Any] | CapturedEvent,
        *,
        run_id: str | None = None,
        resolver: Resolver | None = None,
        deliver_twice: bool | Literal["concurrently"] = False,
        before_call: BeforeCall | None = None,
        max_calls: int = 200,
        run_on_failure: bool = True,
    ) -> Run:
        """Run one function to completion or failure. Each queued call has its own attempt
        counter, as each queue item does in the engine: a step's retries, a discovery call's
        retries and the next step all count separately. ``deliver_twice`` re-sends every call
        and keeps the first answer (at-least-once delivery); ``"concurrently"`` sends both
        copies at once. A host that cannot be reached counts as a failed attempt (status
        ``UNREACHABLE``) and the call is retried. A fresh ``run()`` is a replay."""
        fid = self.fn_id(fn_id)
        run = Run(fid, run_id or _new_id(), normalize_event(event))
        max_attempts = self.max_attempts(fid)
        if resolver is None and self._delivering:
            resolver = self._wait_in_virtual_time
        if resolver is None:
            resolver = stub_resolver(self.stub) if self.stub else timeout_resolver
        if self.flow is not None and self._delivering:
            await self._throttle(fid, run.event)
            run.started_ms = self.flow.now
        score = self._score(fid, run)
        slots = self._slots(fid, run.event)
        disable = False
        queue: collections.deque[tuple[str, int]] = collections.deque([("step", 0)])
        while queue:
            if len(run.calls) >= max_calls:
                raise DriverError(f"{fid}: more than {max_calls} calls; looping?")
            step_id, attempt = queue.popleft()
            async with self._slot(slots, score):
                call = functools.partial(self._call, run, step_id, attempt, disable, max_attempts, before_call)
                if deliver_twice == "concurrently":
                    rec, _ = await asyncio.gather(call(), call(duplicate=True))
                else:
                    rec = await call()
                    if deliver_twice:
                        await call(duplicate=True)
            if rec.status_code == 200:
                run.status, run.output = "completed", rec.body
                break
            if rec.status_code == 206:
                if not isinstance(rec.body, list) or not rec.body:
                    raise DriverError(f"206 without ops: {rec.body!r}")
                disable = disable or len(rec.body) > 1  # a parallel group: plan, don't run, from now on
                retry = False
                for op in rec.body:
                    retry = await self._apply(run, rec, op, max_attempts, resolver, queue) or retry
                if retry:
                    await self._wait_retry_after(rec)
                    queue.appendleft((step_id, attempt + 1))
                elif not queue:
                    queue.append(("step", 0))
                continue
            if rec.status_code >= 500 and not rec.no_retry and attempt + 1 < max_attempts:
                await self._wait_retry_after(rec)
                queue.appendleft((step_id, attempt + 1))  # function-level error: same call again
                continue
            # 4xx fails fast (the engine would retry) so misconfiguration stays loud in tests.
            run.status, run.error = "failed", rec.body
            break
        run.finished_ms = self.flow.now if self.flow is not None and self._delivering else None
        if run.status == "failed" and run_on_failure:
            await self._run_failure_handlers(run, resolver)
        return run

    async def _run_failure_handlers(self, run: Run, resolver: Resolver) -> None:
        """The engine emits `inngest/function.failed`; every function whose trigger takes it
        (an SDK `on_failure` handler, or a function of its own) runs, as in the engine."""
        failed = {
            "name": FUNCTION_FAILED,
            "data": {"error": run.error, "event": run.event, "function_id": run.fn_id, "run_id": run.run_id},
        }
        for handler in self.triggered_by(normalize_event(failed)):
            run.on_failure = await self.run(handler, failed, resolver=resolver, run_on_failure=False)

    # --- flow control (only while `deliver` runs: a bare `run()` is one run on its own) ------

    def _slots(self, fn_id: str, event: JSONDict) -> list[tuple[str, int]]:
        """The run's concurrency slots, keys evaluated once from its event (pkg/execution/queue/
        item.go, `GetCustomConcurrencyKeys`; a key that fails to evaluate prints as `<nil>`)."""
        config = self.functions.get(fn_id, {}).get("concurrency") or []
        slots = []
        for limit in config if isinstance(config, list) else [config]:
            scope, key = limit.get("scope") or "fn", limit.get("key")
            where = fn_id if scope == "fn" else scope
            name = f"{where}:{evaluated_key(key, event, on_error='<nil>')}" if key else where
            slots.append((name, int(limit["limit"])))
        return slots

    def _score(self, fn_id: str, run: Run) -> int:
        """Queue order (pkg/execution/queue/item.go, `Score`): the run's start minus its priority."""
        run_expr = (self.functions.get(fn_id, {}).get("priority") or {}).get("run")
        return (run.started_ms or 0) - 1000 * priority_factor(run_expr, run.event)

    @contextlib.asynccontextmanager
    async def _slot(self, slots: list[tuple[str, int]], score: int) -> AsyncIterator[None]:
        if self.flow is None or not self._delivering:
            yield
            return
        await self.flow.acquire(slots, score=score)
        try:
            yield
        finally:
            self.flow.release(slots)

    async def _throttle(self, fn_id: str, event: JSONDict) -> None:
        """pkg/execution/queue/item.go, `GetThrottleConfig`: one GCRA per function (and key)."""
        throttle = self.functions.get(fn_id, {}).get("throttle")
        if throttle and self.flow is not None:
            key = fn_id + (f":{evaluated_key(throttle['key'], event, on_error='<nil>')}" if throttle.get("key") else "")
            limit, burst = int(throttle["limit"]), int(throttle.get("burst") or 0)
            await self.flow.throttle(key, limit=limit, period_ms=duration_ms(throttle["period"]), burst=burst)

    async def _wait_in_virtual_time(self, op: WaitOp) -> JSONDict | None:
        """The engine's wait inside `deliver`: the first matching event that arrives after the wait
        began, or null once its timeout has passed in virtual time."""
        assert self.flow is not None
        future: asyncio.Future[JSONDict | None] = asyncio.get_running_loop().create_future()
        entry = (op, future)
        self._waits.append(entry)
        try:
            return await self.flow.wait_for(future, until_ms=self.flow.now + duration_ms(op.timeout or "1w"))
        finally:
            if entry in self._waits:
                self._waits.remove(entry)

    def _resume_waits(self, event: JSONDict) -> None:
        """An arriving event resumes every open wait it matches (pkg/execution/executor: pauses
        are matched on each event by name and `if`, whatever functions it also starts)."""
        for op, future in list(self._waits):
            if op.event == event["name"] and cel_match(op.if_exp, candidate=event, trigger=op.trigger):
                if self.flow is not None and self.flow.resolve(future, event):
                    self._waits.remove((op, future))

    async def _wait_retry_after(self, rec: CallRecord) -> None:
        """The pause before a retry, in virtual time: the answer's `retry-after` when it has one,
        else the queue's backoff table for the attempt that failed (pkg/execution/queue/process.go
        with pkg/backoff/backoff.go, `TableBackoff`: 15 s, 30 s, 1 m, ... 2 h; the engine adds up
        to 30 s of jitter, which the driver leaves out)."""
        if self.flow is not None and self._delivering:
            delay = rec.retry_after_ms
            if delay is None:
                delay = BACKOFF_TABLE_MS[min(rec.attempt, len(BACKOFF_TABLE_MS) - 1)]
            await self.flow.sleep_until(self.flow.now + delay)

    async def deliver(self, events: Iterable[Mapping[str, Any] | Arrival], **run_kwargs: Any) -> list[Run]:
        """Route events as the engine does, in virtual time (each event arrives at its ``ts``, or
        at an ``Arrival``'s time). Every function whose trigger takes an event starts then, once
        per sender id (run idempotency: pkg/execution/runner/runner.go, ``Initialize``, keys the
        run by ``event.id``), except one with ``debounce``, which debounces *before* that check
        (pkg/execution/executor/executor.go, ``schedule``) and so takes a reused id too. Runs are
        concurrent tasks under the functions' concurrency, throttle and priority; events the app
        sends are routed when its call returns; a wait (without a ``resolver`` passed) resumes
        with the first matching event arriving after it began, or null at its timeout, in
        virtual time. Returns the runs in the order they started."""
        arrivals = [e if isinstance(e, Arrival) else Arrival(normalize_event(e)["ts"], e) for e in events]
        flow = self.flow = Flow(min((a.at_ms for a in arrivals), default=int(time.time() * 1000)))
        started: list[tuple[int, int, Run]] = []
        order = itertools.count()
        seen: set[tuple[str, str]] = set()
        bursts: dict[tuple[str, str], _Burst] = {}

        async def run_one(fn_id: str, event: JSONDict) -> None:
            position = next(order)
            run = await self.run(fn_id, event, **run_kwargs)
            started.append((run.started_ms or 0, position, run))

        async def arrive(at_ms: int, event: JSONDict) -> None:
            await flow.sleep_until(at_ms)
            self._resume_waits(event)
            for fn_id in self.triggered_by(event):
                debounce = self.functions[fn_id].get("debounce")
                if debounce:
                    self._debounce(flow, bursts, fn_id, debounce, event, run_one)
                elif (fn_id, event["id"]) not in seen:
                    seen.add((fn_id, event["id"]))
                    flow.spawn(run_one(fn_id, event))

        routed = len(self.stub.events) if self.stub else 0

        def route_sent() -> None:
            nonlocal routed
            for captured in self.stub.events[routed:] if self.stub else []:
                flow.spawn(arrive(flow.now, captured.as_event() | {"ts": flow.now}))
            routed = len(self.stub.events) if self.stub else 0

        for arrival in arrivals:
            flow.spawn(arrive(arrival.at_ms, normalize_event(arrival.event)))
        self._delivering, self._route_sent = True, route_sent
        try:
            await flow.run()
        finally:
            self._delivering, self._route_sent = False, lambda: None
        return [run for _, _, run in sorted(started, key=lambda item: item[:2])]

    def _debounce(
        self,
        flow: Flow,
        bursts: dict[tuple[str, str], _Burst],
        fn_id: str,
        debounce: JSONDict,
        event: JSONDict,
        run_one: Callable[[str, JSONDict], Awaitable[None]],
    ) -> None:
        """pkg/execution/debounce/debounce.go with its Lua (state/redis_state/lua/debounce/): a
        burst per key (`debounceKey`: `<invalid>` when the key fails to evaluate) keeps the newest
        event by `ts` (an older one has no effect) and stays open `period` after its last event
        (capped by `timeout` after it began, in whole seconds); its run starts 1.05 s after it
        closes. An event after it closed starts a new burst, whose run may overlap the first."""
        expression = debounce.get("key")
        key = (fn_id, evaluated_key(expression, event, on_error=INVALID_DEBOUNCE_KEY) if expression else "")
        burst = bursts.get(key)
        if burst is not None and flow.now >= burst.open_until:
            burst = None  # its pointer expired: this event starts a new burst, the old job still fires
        if burst is not None and event["ts"] < burst.event["ts"]:
            return  # updateDebounce.lua: out of order, no effect
        if burst is None:
            timeout = debounce_timeout_ms(debounce)
            burst = bursts[key] = _Burst(deadline=None if timeout is None else flow.now + timeout, event=event)
        burst.event, burst.version = event, burst.version + 1
        ttl = duration_ms(debounce["period"])
        if burst.deadline is not None and flow.now + ttl > burst.deadline:
            ttl = max(1000, (burst.deadline - flow.now) // 1000 * 1000)  # whole seconds, at least one
        burst.open_until = flow.now + ttl
        due = burst.open_until + DEBOUNCE_JOB_DELAY_MS

        async def fire(version: int) -> None:
            await flow.sleep_until(due)
            if burst.version != version:
                return  # a later event of the burst moved it
            if bursts.get(key) is burst:
                del bursts[key]  # leased: from now on an event starts a new burst
            await run_one(fn_id, burst.event)

        flow.spawn(fire(burst.version))

    def triggered_by(self, event: JSONDict) -> list[str]:
        """The registered functions an event starts: its name, and each trigger's CEL
        `expression` evaluated with `event` bound (an evaluation error starts nothing). A cron
        tick (``cron_tick``) starts the functions whose cron trigger is the tick's schedule."""
        started = []
        for fn_id, fn in self.functions.items():
            for trigger in fn.get("triggers", []):
                if event["name"] == CRON_EVENT and trigger.get("cron") == (event.get("data") or {}).get("cron"):
                    started.append(fn_id)
                    break
                if trigger.get("event") != event["name"]:
                    continue
                expression = trigger.get("expression")
                try:
                    matched = not expression or cel_evaluate(expression, event=event) is True
                except celpy.CELEvalError:
                    matched = False
                if matched:
                    started.append(fn_id)
                    break
        return started

    async def _apply(
        self,
        run: Run,
        rec: CallRecord,
        op: JSONDict,
        max_attempts: int,
        resolver: Resolver,
        queue: collections.deque[tuple[str, int]],
    ) -> bool:
        """Apply one op to the run state; True means "retry this same call"."""
        code, hid = op["op"], op["id"]
        name = op.get("displayName") or op.get("name") or hid
        run.ops.append((name, code))
        memo: Any
        if code == "StepPlanned":
            queue.append((hid, 0))
            return False
        if code == "StepRun":
            memo = {"data": op.get("data")}
        elif code == "StepError":
            if not rec.no_retry and rec.attempt + 1 < max_attempts:
                return True
            memo = {"error": op["error"]}
        elif code == "StepFailed":
            memo = {"error": op["error"]}
        elif code == "Sleep":
            run.sleeps.append((name, op["name"]))
            if self.flow is not None and self._delivering:  # the SDK wrote its wake-up in wall-clock time
                await self.flow.sleep_until(self.flow.now + wall_clock_delay_ms(op["name"], since=rec.answered_at))
            memo = None
        elif code == "WaitForEvent":
            opts = op.get("opts") or {}
            began = len(self.stub.events) if self.stub else 0
            wait = WaitOp(hid, name, op["name"], opts.get("if"), opts.get("timeout"), run.event, began)
            memo = await resolver(wait)
            run.waits.append((wait, memo))
        elif code == "InvokeFunction":
            opts = op["opts"]
            payload = opts.get("payload") or {}
            child = await self.run(
                opts["function_id"],
                {"name": "inngest/function.invoked", "data": payload.get("data") or {}},
                resolver=resolver,
            )
            memo = {"data": child.output} if child.status == "completed" else {"error": child.error}
        else:
            raise DriverError(f"driver does not support op {code}")
        run.memo[hid] = memo
        run.stack.append(hid)
        return False
