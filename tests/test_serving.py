"""The host as a user starts it: `uvicorn inngest_app:app`, in dev mode and outside it."""

from __future__ import annotations

import os
import signal
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
        # five, the failure recorder, the escalation gate's two, and the email recorder (bursts)
        assert res.json()["function_count"] == 9
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


def test_support_worker_up_starts_the_host_and_is_honest_about_the_dev_server(
    database_url: str, tmp_path: Path
) -> None:
    """With no network, `npx inngest-cli` fails; `up` says so, prints the command, and serves."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    npx = fake_bin / "npx"
    npx.write_text(
        "#!/bin/sh\necho 'npm error network request failed: getaddrinfo ENOTFOUND' >&2\n"
        "echo 'npm warn Unknown user config' >&2\nexit 1\n"
    )
    npx.chmod(0o755)
    port = free_port()
    env = clean_env(DATABASE_URL=database_url, PYTHONPATH=str(ROOT), PATH=f"{fake_bin}:{os.environ['PATH']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "support_worker", "up", "--port", str(port), "--dev-server-wait", "5"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ready"):
                break
        output = "".join(lines)
        assert f"host: http://127.0.0.1:{port}/api/inngest" in output
        assert "/reviews (review desk, closed: set REVIEW_DESK_USERS to open it)" in output
        assert "dev server: could not be started here" in output
        assert "npx exited with code 1: npm error network request failed: getaddrinfo ENOTFOUND" in output
        assert f"npx --yes inngest-cli@latest dev -u http://127.0.0.1:{port}/api/inngest" in output
        for _ in range(100):
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["ok"] is True
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the host did not answer")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
