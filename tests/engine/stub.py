"""The stand-in for Inngest's API and Event API: a real loopback HTTP server.

The SDK makes real outbound calls for sync (``POST /fn/register``) and ``send``
(``POST /e/<key>``), so the stub listens on a port. It captures what the app sends, refuses a
sync the engine would refuse (``engine.registration``, as pkg/registration/process.go does:
400 with every reason), and answers the REST API's ``GET /v1/events/{id}/runs``.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from engine.registration import sync_errors

JSONDict = dict[str, Any]


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass
class CapturedEvent:
    """An event the app sent to the stub. ``id`` is the Event API's internal id (what ``send``
    returns, what the REST API lists runs by); ``idempotency_id`` the sender's ``id``.
    ``duplicate``: that sender id was seen before, so a function without debounce will not
    start for it again (run idempotency); a debounced function still takes it."""

    name: str
    data: JSONDict
    id: str
    ts: int
    idempotency_id: str | None
    duplicate: bool

    def as_event(self) -> JSONDict:
        """The event as a function sees it: ``id`` is the sender's, else the internal one
        (pkg/event/legacy_types.go, ``NewBaseTrackedEvent``: "never use e.ID as the internal
        ID"; an event without one gets the internal id). ``ts``/``id`` are int/str: the SDK is strict."""
        return {"id": self.idempotency_id or self.id, "name": self.name, "data": self.data, "ts": self.ts}


class StubInngestServer:
    """Loopback stand-in for the Inngest API and Event API, capturing what the app sends."""

    def __init__(self) -> None:
        self.registrations: list[JSONDict] = []
        self.refused: list[list[str]] = []  # the reasons of each sync the stub refused
        self.events: list[CapturedEvent] = []
        # The REST API's view of runs, by the internal event id that started them
        # (`GET /v1/events/{id}/runs`, as the dev server answers it). Tests fill it through
        # `on_event`, standing in for the executor starting a function.
        self.runs: dict[str, list[JSONDict]] = {}
        self.run_lookups: list[str] = []
        self.on_event: Callable[[CapturedEvent], None] | None = None
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # shutdown() waits for serve_forever to notice, once per poll interval: the default
        # 0.5 s would be half a second of every test that serves the app.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, *, dev: bool = True) -> dict[str, str]:
        """Env vars that point a client built afterwards at the stub (origins are read at client init)."""
        env = {k: self.url for k in ("INNGEST_BASE_URL", "INNGEST_API_BASE_URL", "INNGEST_EVENT_API_BASE_URL")}
        if dev:
            env["INNGEST_DEV"] = self.url
        return env

    def start(self) -> StubInngestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StubInngestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _capture_events(self, body: Any) -> list[str]:
        ids: list[str] = []
        with self._lock:
            seen = {e.idempotency_id for e in self.events if e.idempotency_id}
            for raw in body if isinstance(body, list) else [body]:
                idem = raw.get("id") or None
                ev = CapturedEvent(
                    name=raw["name"],
                    data=raw.get("data") or {},
                    id=_new_id(),
                    ts=int(raw.get("ts") or time.time() * 1000),
                    idempotency_id=idem,
                    duplicate=idem in seen,
                )
                if idem:
                    seen.add(idem)
                self.events.append(ev)
                ids.append(ev.id)
        if self.on_event is not None:
            for ev in [e for e in self.events if e.id in ids]:
                self.on_event(ev)
        return ids

    def start_run(self, event_id: str, function_id: str) -> str:
        """Record a run of `function_id` started by the event, as the REST API will list it."""
        run_id = _new_id()
        with self._lock:
            self.runs.setdefault(event_id, []).append(
                {"run_id": run_id, "event_id": event_id, "function_id": function_id, "status": "Running"}
            )
        return run_id

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw or b"null")
                path = self.path.split("?")[0]
                if path == "/fn/register":
                    errors = sync_errors(body)
                    with stub._lock:
                        (stub.refused.append(errors) if errors else stub.registrations.append(body))
                    if errors:  # pkg/registration/process.go: the whole sync fails, every reason listed
                        self._reply(400, {"error": "; ".join(errors), "code": "config_invalid"})
                    else:
                        self._reply(200, {"ok": True})
                elif path.startswith("/e/"):
                    self._reply(200, {"ids": stub._capture_events(body), "status": 200})
                else:
                    self._reply(404, {"error": f"stub has no route {path}"})

            def do_GET(self) -> None:  # http.server's naming
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 4 and parts[:2] == ["v1", "events"] and parts[3] == "runs":
                    with stub._lock:
                        stub.run_lookups.append(parts[2])
                        runs = list(stub.runs.get(parts[2], []))
                    self._reply(200, {"data": runs, "metadata": {"fetched_at": _new_id()}})
                else:
                    self._reply(404, {"error": f"stub has no route {self.path}"})

            def _reply(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
