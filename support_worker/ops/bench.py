"""`support-worker bench`: engine calls, host CPU and bytes per email, measured in one run.

A development tool (it needs the `dev` extra: it drives the host with the test driver,
`tests/inngest_driver.py`, imported from the tests directory). It starts the embedded
PostgreSQL (or uses `server_url`) and works in a throwaway database it drops at the end,
serves the host and a bare FastAPI+asyncpg endpoint (one insert) with uvicorn on loopback in
this process, and prints one table. `quick=True` is the CI smoke version: fewer samples, the
same counts and sizes (`tests/test_bench.py` asserts those, never times).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvicorn
from fastapi import FastAPI, Request
from pydantic import SecretStr

import db
from support_worker.core.settings import Settings, checkout_root
from support_worker.ops import bench_growth
from support_worker.ops.bench_table import table
from support_worker.store import postgres, sample_data, schema

# The bench's own connections (its pool, the baseline's), left out of the host's high-water.
BENCH_APP = {"application_name": "support-worker-bench"}


def _driver() -> Any:
    """The test driver, a test tool: imported from tests/ (it needs the `dev` extra)."""
    root = checkout_root()
    if root is None:
        raise SystemExit("support-worker bench needs a source checkout: it drives tests/inngest_driver.py")
    tests = str(root / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import inngest_driver

    return inngest_driver


@dataclasses.dataclass
class Meter:
    """Every request the driver sends to the host: seconds, request bytes, response bytes."""

    calls: list[tuple[float, int, int]] = dataclasses.field(default_factory=list)
    _started: dict[int, float] = dataclasses.field(default_factory=dict)

    async def on_request(self, request: httpx.Request) -> None:
        self._started[id(request)] = time.perf_counter()

    async def on_response(self, response: httpx.Response) -> None:
        await response.aread()
        took = time.perf_counter() - self._started.pop(id(response.request), time.perf_counter())
        self.calls.append((took, len(response.request.content), len(response.content)))

    def mark(self) -> int:
        return len(self.calls)


@contextlib.asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    """uvicorn on a free loopback port, in this event loop; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def _bare_app(url: str) -> FastAPI:
    """The baseline: FastAPI, an asyncpg pool and one insert per call. Its pool releases
    connections as the host's does (no reset round trip: store.postgres.keep_no_session_state), so the
    baseline is one round trip a call, the cheapest useful endpoint."""
    pools: list[asyncpg.Pool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dsn, options = db.connect_options(url)
        pools.append(
            await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=5,
                server_settings=BENCH_APP,
                reset=postgres.keep_no_session_state,
                **options,
            )
        )
        yield
        await pools[0].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/bare")
    async def bare(request: Request) -> dict[str, Any]:
        body = await request.json()
        row = await pools[0].fetchval("INSERT INTO bench_bare (body) VALUES ($1) RETURNING id", str(body)[:200])
        return {"id": row}

    return app


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def _database(server_url: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    """A throwaway database, migrated and seeded; returns its URL and how to drop it."""
    name = f"sw_bench_{uuid.uuid4().hex[:10]}"
    dsn, options = db.connect_options(server_url)
    admin = await asyncpg.connect(dsn, **options)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(db.connect_options(url)[0], **db.connect_options(url)[1])
    await schema.migrate_database(conn)
    await conn.execute("CREATE TABLE bench_bare (id bigserial PRIMARY KEY, body text)")
    await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(dsn, **options)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    return url, drop


# --------------------------------------------------------------------------- scenarios

EMAIL_FN, FANOUT_FN = "handle-customer-email", "daily-customer-health-check"
REFUND_BODY = "I was charged twice for order 1003"
BIG_BODY = "Hello, " + "x" * 100_000
WARM_UP = 50
# The bench's own webhook credentials (a throwaway secret for a throwaway database).
WEBHOOK_AUTH = ("postmark", "bench-webhook-secret")


async def _email(env: Any, kind: str, n: int) -> Any:
    """One email of `kind` through the driver, with a reviewer who answers as the kind says."""
    drv = env.drv
    body = {"big": BIG_BODY}.get(kind, REFUND_BODY if kind != "plain" else "Do you ship to Canada?")
    event = {
        "name": "customer/email.received",
        "id": f"bench-{kind}-{n}",
        "data": {"customer_id": sample_data.GRACE, "body": body},
    }
    if kind in ("approved", "rejected"):
        resolver = env.reviewer(approved=kind == "approved")
    else:
        resolver = drv.timeout_resolver
    await env.pool.execute("DELETE FROM refunds; DELETE FROM refund_requests")  # order 1003 refundable again
    return await env.driver.run(EMAIL_FN, event, resolver=resolver)


@dataclasses.dataclass
class Env:
    drv: Any
    driver: Any
    stub: Any
    pool: asyncpg.Pool
    meter: Meter
    cpu: bench_growth.HostCpu
    decision_calls: int = 0
    largest_output: int = 0  # bytes of the largest step output of any email measured

    def note_outputs(self, run: Any) -> None:
        sizes = [len(json.dumps(memo, separators=(",", ":"))) for memo in run.memo.values()]
        self.largest_output = max([self.largest_output, *sizes])

    def reviewer(self, *, approved: bool) -> Any:
        async def resolve(op: Any) -> dict[str, Any] | None:
            request_id = await self.pool.fetchval("SELECT id FROM refund_requests WHERE status = 'pending'")
            event = {
                "name": "refund/approval.decided",
                "id": f"dec-{request_id}",
                "data": {"request_id": request_id, "approved": approved, "reviewer": "bench@example.com"},
            }
            decided = await self.driver.run("record-refund-decision", event)
            self.decision_calls = len(decided.calls)
            return self.drv.normalize_event(event)

        return resolve


async def _kinds(env: Env) -> dict[str, tuple[int, int, int]]:
    """Calls, bytes sent to the host and the largest request, per email kind."""
    out: dict[str, tuple[int, int, int]] = {}
    for kind in ("plain", "approved", "rejected", "expired", "big"):
        await _email(env, kind, 0)  # warm: the first run of a kind pays for lazy imports
        start = env.meter.mark()
        run = await _email(env, kind, 1)
        if run.status != "completed":
            raise RuntimeError(f"the {kind} email did not complete: {run.error}")
        own = env.meter.calls[start:][-len(run.calls) :]  # the email's own calls, after the reviewer's
        out[kind] = (len(run.calls), sum(c[1] + c[2] for c in own), max(c[1] for c in own))
        env.note_outputs(run)
    return out


async def _webhook_big(env: Env) -> dict[str, int]:
    """The 100 KB body as mail arrives in production: Postmark's JSON to the webhook, which
    stores the message and sends a small reference event; then the run that event starts."""

    async def one(n: int) -> tuple[int, Any, Any]:
        payload = {
            "From": "grace@example.com",
            "FromFull": {"Email": "grace@example.com", "Name": "Grace Hopper"},
            "To": "support@shop.example",
            "Subject": "A long letter",
            "MessageID": f"bench-webhook-{n}",
            "TextBody": BIG_BODY,
            "HtmlBody": "",
            "Headers": [],
            "Attachments": [],
        }
        before = len(env.stub.events)
        start = env.meter.mark()
        (await env.driver.http.post("/webhooks/email", json=payload, auth=WEBHOOK_AUTH)).raise_for_status()
        [event] = env.stub.events[before:]
        run = await env.driver.run(EMAIL_FN, event.as_event(), resolver=env.drv.timeout_resolver)
        if run.status != "completed":
            raise RuntimeError(f"the webhook's email did not complete: {run.error}")
        return env.meter.calls[start][1], event, env.meter.calls[start + 1 :]

    await one(0)  # warm, as the kinds are
    webhook_bytes, event, calls = await one(1)
    return {
        "webhook_bytes": webhook_bytes,
        "event_bytes": len(json.dumps(event.data).encode()),
        "calls": len(calls),
        "bytes": sum(c[1] + c[2] for c in calls),
        "largest": max(c[1] for c in calls),
    }


async def _per_call(env: Env, bare_url: str, samples: int) -> dict[str, float]:
    """Median and p95 of one host call (plain emails) against one bare insert, interleaved:
    after each email, as many bare calls as the email made. Both are timed the same way (the
    same meter hooks on an httpx client, loopback, uvicorn in this event loop) after the same
    warm-up, so load from elsewhere falls on both alike; the driver's own work (building the
    memo, encoding it) happens before the request hook and is never counted."""
    bare_meter = Meter()
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [bare_meter.on_request],
        "response": [bare_meter.on_response],
    }
    host: list[float] = []
    async with httpx.AsyncClient(base_url=bare_url, event_hooks=hooks) as http:

        async def bare(n: int) -> None:
            (await http.post("/bare", json={"n": n, "body": "Do you ship to Canada?"})).raise_for_status()

        # The same warm-up on both sides: WARM_UP untimed calls each.
        warm = env.meter.mark()
        for n in range(WARM_UP):
            if env.meter.mark() - warm < WARM_UP:
                await _email(env, "plain", 10_000 + n)
            await bare(n)
        warm = bare_meter.mark()
        for n in range(samples):
            start = env.meter.mark()
            await _email(env, "plain", 100 + n)
            calls = env.meter.calls[start:]
            host += [c[0] for c in calls]
            for _ in calls:
                await bare(n)
    h50, h95 = _percentiles(host)
    b50, b95 = _percentiles([c[0] for c in bare_meter.calls[warm:]])
    return {"host_p50": h50, "host_p95": h95, "bare_p50": b50, "bare_p95": b95, "samples": len(host)}


async def _burst(env: Env, url: str, emails: int, *, tag: str = "") -> dict[str, float]:
    """`emails` plain emails from the sample customers, all at once, through one host whose pool
    holds 5, delivered as the engine would: the email function's own concurrency limits (in all,
    and per customer) and throttle apply (`InngestDriver.deliver`). The cost per email is this
    process's CPU seconds (host and driver: they share it) and the wall time, each divided by
    the emails."""
    high = 0
    stop = asyncio.Event()
    name = urlsplit(url).path.lstrip("/")
    dsn, options = db.connect_options(url)
    watcher = await asyncpg.connect(dsn, server_settings=BENCH_APP, **options)

    async def watch() -> None:
        nonlocal high
        while not stop.is_set():
            count = await watcher.fetchval(
                # Client backends only: a background worker on the database (autovacuum, a
                # parallel query's worker) is no connection of the host's. One run counting every
                # backend printed 6 for a pool of 5; it did not happen again, so its cause is open.
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2"
                " AND backend_type = 'client backend'",
                name,
                BENCH_APP["application_name"],
            )
            high = max(high, int(count))
            await asyncio.sleep(0.02)

    customers = [customer[0] for customer in sample_data.CUSTOMERS]
    events = [
        {
            "name": "customer/email.received",
            "id": f"burst-{emails}{tag}-{n}",
            "data": {"customer_id": customers[n % len(customers)], "body": f"Do you ship to Canada? ({n})"},
        }
        for n in range(emails)
    ]
    task = asyncio.create_task(watch())
    began, cpu_began = time.perf_counter(), time.process_time()
    statuses = [str(run.status) for run in await env.driver.deliver(events)]
    took, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    stop.set()
    await task
    await watcher.close()
    replies = await env.pool.fetch(
        "SELECT count(*) AS n FROM audit_log a JOIN audit_log m ON m.run_id = a.run_id"
        " WHERE a.action = 'email_drafted' AND m.action = 'message_received'"
        " AND m.idempotency_key LIKE 'message_received:%'"
        " GROUP BY m.idempotency_key HAVING count(*) > 1"
    )
    errors = sum(1 for s in statuses if s != "completed")
    return {
        "emails": emails,
        "per_second": emails / took,
        "wall_ms_per_email": took / emails * 1000,
        "cpu_ms_per_email": cpu / emails * 1000,
        "errors": errors,
        "duplicates": len(replies),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pg_high": high,
    }


async def _bursts(env: Env, url: str, small: int, large: int) -> tuple[dict[str, float], dict[str, float]]:
    """The large burst once, between three small ones before it and three after; the small
    burst kept is the run of median CPU per email, its errors every run's. (A burst of 50
    lasts about a second, so one run swings with whatever else the machine does, and runs on
    both sides keep a drift in the machine's load from passing for a cost of the backlog.)"""
    runs = [await _burst(env, url, small, tag=f"-{n}") for n in range(3)]
    burst = await _burst(env, url, large)
    runs += [await _burst(env, url, small, tag=f"-{n}") for n in range(3, 6)]
    kept = sorted(runs, key=lambda run: run["cpu_ms_per_email"])[len(runs) // 2]
    return kept | {"errors": sum(run["errors"] for run in runs), "runs": len(runs)}, burst


async def _fan_out(env: Env, customers: int) -> dict[str, float]:
    """The daily fan-out over `customers` paying customers: calls and the largest request."""
    await env.pool.execute(
        "INSERT INTO customers (id, email, name, tier)"
        " SELECT 'b-' || lpad(i::text, 6, '0'), 'b' || i || '@example.com', 'Bench ' || i, 'pro'"
        " FROM generate_series(1, $1) AS i",
        customers,
    )
    start = env.meter.mark()
    run = await env.driver.run(FANOUT_FN, {"name": "inngest/scheduled.timer", "data": {"day": "2026-11-30"}})
    if run.status != "completed":
        raise RuntimeError(f"the fan-out did not complete: {run.error}")
    calls = env.meter.calls[start:]
    return {
        "customers": customers,
        "calls": len(run.calls),
        "largest": max(c[1] for c in calls),
        "scheduled": run.output["scheduled"],
    }


def _import_and_launch(url: str) -> dict[str, float]:
    """`import inngest_app` in a fresh interpreter, and launch to ready of `uvicorn inngest_app:app`."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import inngest_app"], check=True, cwd=checkout_root())
    imported = time.perf_counter() - began
    port = 0
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {"INNGEST_DEV": "1", "DATABASE_URL": url}
    began = time.perf_counter()
    host = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "inngest_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=checkout_root(),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        launched = time.perf_counter() - began
    finally:
        host.terminate()
        host.wait(10)
    return {"import_s": imported, "launch_s": launched}


# --------------------------------------------------------------------------- the run


async def run_bench(*, quick: bool = False, server_url: str | None = None) -> dict[str, Any]:
    """Every measurement, in one run; `quick` keeps counts and sizes, shrinks the samples."""
    drv = _driver()
    server_url = server_url or postgres.start_embedded_postgres(Path(tempfile.gettempdir()) / "support-worker-bench-pg")
    url, drop = await _database(server_url)
    results: dict[str, Any] = {"quick": quick}
    try:
        results |= _import_and_launch(url) if not quick else {}
        dsn, options = db.connect_options(url)
        # The store's codecs (jsonb as Python values), as every pool of the app has them.
        init = db._init_connection
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings=BENCH_APP, init=init, **options)
        try:
            await sample_data.seed(pool)
            results |= await _with_host(drv, url, pool, quick)
        finally:
            await pool.close()
    finally:
        await drop()
    return results


async def _with_host(drv: Any, url: str, pool: asyncpg.Pool, quick: bool) -> dict[str, Any]:
    import inngest_app  # the host, built here: its import is measured on its own above

    with drv.StubInngestServer() as stub:
        os.environ.update(stub.env())
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=SecretStr(url),
            inngest_dev=stub.url,
            db_pool_max_size=5,
            db_pool_min_size=1,
            max_email_body_chars=200_000,
            webhook_username=WEBHOOK_AUTH[0],
            webhook_password=SecretStr(WEBHOOK_AUTH[1]),
            openai_api_key=None,
            openai_base_url=None,
            decision_recheck_minutes=24 * 60,
            # Each email its own run, as from many customers: the cost per email, not per burst.
            email_burst_seconds=0,
        )
        meter = Meter()
        cpu = bench_growth.HostCpu(inngest_app.create_app(settings, model=bench_growth.LongTalkModel()))
        async with _serve(cpu) as host_url, _serve(_bare_app(url)) as bare_url:
            hooks: dict[str, list[Callable[..., Any]]] = {
                "request": [meter.on_request],
                "response": [meter.on_response],
            }
            async with httpx.AsyncClient(base_url=host_url, event_hooks=hooks, timeout=120) as http:
                driver = drv.InngestDriver(http, stub=stub)
                await driver.sync()
                env = Env(drv, driver, stub, pool, meter, cpu)
                out: dict[str, Any] = {"kinds": await _kinds(env), "webhook": await _webhook_big(env)}
                out["decision_calls"] = env.decision_calls
                out["growth"] = await bench_growth.growth(env, 3 if quick else 20)
                out["largest_output"] = env.largest_output
                out["per_call"] = await _per_call(env, bare_url, 30 if quick else 300)
                small, large = (10, 50) if quick else (50, 500)
                out["burst_small"], out["burst"] = await _bursts(env, url, small, large)
                out["fan_out"] = await _fan_out(env, 10_000)
    return out


def main(quick: bool = False) -> int:
    print(table(asyncio.run(run_bench(quick=quick))))
    return 0
