"""`support-worker up`: the database, the host and (when it can) the dev server, started
together and stopped together, whatever stops them (Ctrl-C, SIGTERM, a closed terminal).

The host gets the database URL from here, so this process alone holds the embedded
PostgreSQL and stops it when it exits; every child runs in its own process group, so
stopping one stops whatever it started (npx starts the dev server binary as a grandchild).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

import db
from support_worker.core.settings import Settings

DEV_SERVER_PORT = 8288
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """A signal asked `up` to stop."""


def dev_server_url(settings: Settings) -> str:
    value = (settings.inngest_dev or "").strip()
    return value.rstrip("/") if value.startswith("http") else f"http://127.0.0.1:{DEV_SERVER_PORT}"


def dev_server_command(host_url: str) -> list[str]:
    return ["npx", "--yes", "inngest-cli@latest", "dev", "-u", f"{host_url}/api/inngest", "--no-discovery"]


def port_is_free(port: int) -> bool:
    """Whether uvicorn could bind 127.0.0.1:`port` now (with the SO_REUSEADDR it uses)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(settings: Settings, args: argparse.Namespace, *, prepare: Callable[[], Coroutine[Any, Any, str]]) -> int:
    """Prepare the database, then run the host (and the dev server) until a signal or the
    host's exit; every child is stopped on the way out."""
    if not port_is_free(args.port):
        print(f"port {args.port} is already in use on 127.0.0.1; choose another with --port", file=sys.stderr)
        return 1
    print(f"database: {asyncio.run(prepare())}")
    env = os.environ | {"INNGEST_DEV": dev_server_url(settings), "DATABASE_URL": db.resolve_database_url(settings)}
    children: list[subprocess.Popen[str]] = []
    with _signals_stop():
        try:
            return _serve(settings, args, env, children)
        except (Stopped, KeyboardInterrupt):
            return 0
        finally:
            _stop_all(children)


def _serve(
    settings: Settings, args: argparse.Namespace, env: dict[str, str], children: list[subprocess.Popen[str]]
) -> int:
    host_url = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "uvicorn", "inngest_app:app", "--port", str(args.port)]
    host = subprocess.Popen(command, env=env, text=True, start_new_session=True)
    children.append(host)
    print(f"host: {host_url}/api/inngest (Inngest endpoint)")
    desk = _door_state("review desk", settings.reviewers, "REVIEW_DESK_USERS")
    webhook = _door_state("email webhook", settings.webhook_password, "WEBHOOK_PASSWORD")
    print(f"desk: {host_url}/reviews ({desk})")
    print(f"webhook: {host_url}/webhooks/email ({webhook})")
    dev = _start_dev_server(settings, args, env, host_url)
    if dev is not None:
        children.append(dev)
    if not _host_answers(host, host_url, seconds=60):
        print(f"host: did not come up on port {args.port} (exit code {host.poll()}); see its output above")
        return 1
    print("ready; Ctrl-C stops everything")
    return host.wait()


def _door_state(name: str, configured: object, variable: str) -> str:
    return f"{name}, open" if configured else f"{name}, closed: set {variable} to open it"


def _start_dev_server(
    settings: Settings, args: argparse.Namespace, env: dict[str, str], host_url: str
) -> subprocess.Popen[str] | None:
    """The dev server when npx can fetch it; otherwise a line saying how to run it."""
    command = dev_server_command(host_url)
    manual = " ".join(command)
    if args.no_dev_server:
        print(f"dev server: not started (--no-dev-server). Start it with: {manual}")
        return None
    if shutil.which("npx") is None:
        print(f"dev server: npx is not installed, so it was not started. Install Node.js, then run: {manual}")
        return None
    # Its output goes to a file: a pipe nobody reads would fill up and stall the dev server.
    log_path = Path(tempfile.gettempdir()) / f"support-worker-inngest-dev-{args.port}.log"
    with log_path.open("w") as log:
        dev = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    url = dev_server_url(settings)
    if _dev_server_came_up(dev, url, seconds=args.dev_server_wait):
        print(f"dev server: dashboard at {url} (log: {log_path})")
        return dev
    print(
        "dev server: could not be started here (its npm package downloads the binary at install time, "
        f"which needs internet; {_why_dev_server_failed(dev, log_path)}). Run it yourself where there is network: "
        f"{manual}"
    )
    _stop_all([dev])
    return None


def _why_dev_server_failed(dev: subprocess.Popen[str], log_path: Path) -> str:
    exited = dev.poll()
    said = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if line.strip() and not line.lower().startswith("npm warn")
    ]
    detail = f"npx exited with code {exited}" if exited is not None else "it did not answer in time"
    return f"{detail}: {said[-1]}" if said else detail


def _dev_server_came_up(process: subprocess.Popen[str], url: str, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            httpx.get(url, timeout=1)
            return True
        except httpx.HTTPError:
            time.sleep(0.5)
    return False


def _host_answers(host: subprocess.Popen[str], url: str, *, seconds: float) -> bool:
    """Whether the host serves /healthz before it exits or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and host.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP all mean: stop everything (by default SIGTERM and SIGHUP
    would end this process at once and leave its children and the database running)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(children: list[subprocess.Popen[str]]) -> None:
    """SIGTERM each child's process group, then SIGKILL whatever is left after 10 seconds.
    A second signal meanwhile cannot cut this short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        for child in children:
            _signal_group(child, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _signal_group(child: subprocess.Popen[str], sig: signal.Signals) -> None:
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        pass  # already gone
