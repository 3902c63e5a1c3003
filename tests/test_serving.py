"""The host as a user starts it: `uvicorn inngest_app:app`, in dev mode and outside it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests_support import free_port

ROOT = Path(__file__).resolve().parent.parent


def uvicorn(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[str]:
    """Run from an empty folder so a developer's own .env cannot change the outcome."""
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "inngest_app:app", "--port", str(port)],
        cwd=cwd,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INNGEST_", "OPENAI_"))}
    return env | extra


def test_uvicorn_serves_the_inngest_endpoint_in_dev_mode(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    # A dev server URL nobody listens on: serving must not depend on reaching it.
    proc = uvicorn(clean_env(INNGEST_DEV="http://127.0.0.1:9", DATABASE_URL=database_url), port, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                res = httpx.get(f"http://127.0.0.1:{port}/api/inngest", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = proc.stdout.read() if proc.stdout else ""
                    raise AssertionError(f"uvicorn did not come up:\n{log}") from None
                time.sleep(0.2)
        assert res.status_code == 200
        assert res.json()["function_count"] == 4
        assert res.json()["mode"] == "dev"
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
        assert health == {"ok": True, "dev_mode": True, "model": "offline-rules"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_uvicorn_refuses_to_start_outside_dev_mode_without_a_signing_key(database_url: str, tmp_path: Path) -> None:
    proc = uvicorn(clean_env(DATABASE_URL=database_url), free_port(), tmp_path)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "INNGEST_SIGNING_KEY is not set and INNGEST_DEV is off" in output
