"""Trust at the edges (issue 11): registration, signature age, terminal requests, `up`, and
one line instead of a traceback at the command line."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from inngest._internal import net
from inngest_driver import InngestDriver, StubInngestServer, signed_headers
from tests_support import EMAIL_FN, GRACE

import db
import inngest_app
from offline_model import OfflineSupportModel
from settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SIGNING_KEY = "signkey-prod-" + "ab" * 32
ORIGIN = "https://support.example.com"


@asynccontextmanager
async def cloud_app(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> AsyncIterator[tuple[httpx.AsyncClient, StubInngestServer]]:
    """The app as production serves it (signing key, no dev mode), talking to the stub."""
    with StubInngestServer() as stub:
        for key, value in stub.env(dev=False).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("INNGEST_DEV", raising=False)
        production = settings.model_copy(
            update={
                "inngest_dev": None,
                "inngest_signing_key": SIGNING_KEY,
                "environment": "production",
                "inngest_serve_origin": ORIGIN,
                **overrides,
            }
        )
        app = inngest_app.create_app(production, model=OfflineSupportModel())
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
                yield http, stub


# --------------------------------------------------------------------------- 6. registration


async def test_production_refuses_to_start_without_a_serve_origin(settings: Settings) -> None:
    production = settings.model_copy(
        update={"inngest_dev": None, "inngest_signing_key": SIGNING_KEY, "environment": "production"}
    )
    with pytest.raises(RuntimeError, match="INNGEST_SERVE_ORIGIN is not set"):
        inngest_app.create_app(production, model=OfflineSupportModel())
    with pytest.raises(RuntimeError, match="must be an http"):
        inngest_app.create_app(
            production.model_copy(update={"inngest_serve_origin": "support.example.com"}), model=OfflineSupportModel()
        )


async def test_a_forged_host_cannot_register_the_app_and_a_signed_sync_registers_the_origin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cloud_app(settings, monkeypatch) as (http, stub):
        forged = await http.put(
            "/api/inngest",
            headers={"host": "attacker.example", "x-inngest-server-kind": "cloud"},
        )
        assert forged.status_code == 401
        assert stub.registrations == []

        signed = await http.put(
            "/api/inngest",
            headers={"host": "attacker.example", "x-inngest-server-kind": "cloud", **signed_headers(b"", SIGNING_KEY)},
        )
        assert signed.status_code == 200, signed.text
        [registration] = stub.registrations
        assert registration["url"] == f"{ORIGIN}/api/inngest"
        assert all(
            step["runtime"]["url"].startswith(f"{ORIGIN}/api/inngest?")
            for fn in registration["functions"]
            for step in fn["steps"].values()
        )


# --------------------------------------------------------------------------- 7. signature age


def _email_call(run_id: str) -> bytes:
    return json.dumps(
        {
            "event": {
                "name": inngest_app.EMAIL_RECEIVED,
                "id": run_id,
                "ts": 1,
                "data": {"customer_id": GRACE, "body": "hi"},
            },
            "events": [],
            "steps": {},
            "use_api": False,
            "ctx": {
                "run_id": run_id,
                "attempt": 0,
                "max_attempts": 5,
                "disable_immediate_execution": False,
                "stack": {"stack": []},
            },
        }
    ).encode()


async def test_a_ten_minute_old_signature_gets_401_and_a_fresh_one_works(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool
) -> None:
    async with cloud_app(settings, monkeypatch) as (http, stub):
        driver = InngestDriver(http, stub=stub, signing_key=SIGNING_KEY)
        await driver.sync()
        params = {"fnId": driver.fn_id(EMAIL_FN), "stepId": "step"}
        raw = _email_call("r-old")
        old = net.sign_request(raw, SIGNING_KEY, unix_ms=round(time.time()) - 600)
        assert isinstance(old, str)
        stale = await http.post(
            "/api/inngest",
            params=params,
            content=raw,
            headers={"content-type": "application/json", "x-inngest-signature": old},
        )
        assert stale.status_code == 401
        assert "seconds old" in stale.json()["error"]
        no_time = old.split("&", 1)[1]  # the SDK would accept a signature without t=
        undated = await http.post(
            "/api/inngest",
            params=params,
            content=raw,
            headers={"content-type": "application/json", "x-inngest-signature": no_time},
        )
        assert undated.status_code == 401
        assert await db.list_audit(pool) == []  # neither stale call reached the function
        fresh = await http.post(
            "/api/inngest",
            params=params,
            content=raw,
            headers={"content-type": "application/json", **signed_headers(raw, SIGNING_KEY)},
        )
        assert fresh.status_code in (200, 206), fresh.text


async def test_the_signature_age_is_configurable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with cloud_app(settings, monkeypatch, signature_max_age_seconds=30) as (http, _stub):
        raw = _email_call("r-40s")
        sig = net.sign_request(raw, SIGNING_KEY, unix_ms=round(time.time()) - 40)
        res = await http.post(
            "/api/inngest",
            params={"fnId": f"support-worker-{EMAIL_FN}", "stepId": "step"},
            content=raw,
            headers={"content-type": "application/json", "x-inngest-signature": str(sig)},
        )
        assert res.status_code == 401
