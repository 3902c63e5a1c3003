"""A strict stand-in for Postmark's outbound `POST /email`, built from Postmark's published
request and response shapes (https://postmarkapp.com/developer/api/email-api and the error
codes at https://postmarkapp.com/developer/api/overview#error-codes).

It is at least as strict as Postmark: the server token header, JSON in and out, only the
documented body fields, `From`, `To` and a body required, `Headers` as `{Name, Value}` pairs,
`Metadata` values as text. It answers like Postmark: 200 with `To`, `SubmittedAt`,
`MessageID`, `ErrorCode: 0`, `Message: "OK"`; 401 with ErrorCode 10 for a wrong token; 422
with an ErrorCode for a request Postmark refuses. Tests script the answers Postmark gives in
trouble (a 500, a 429, a 422 with ErrorCode 406 for an inactive recipient) with `fail_next`.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

TOKEN = "postmark-server-token-for-tests"
# Postmark's documented fields of one email (Email API, "Send a single email").
EMAIL_FIELDS = {
    "From",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Tag",
    "HtmlBody",
    "TextBody",
    "ReplyTo",
    "Headers",
    "TrackOpens",
    "TrackLinks",
    "Metadata",
    "Attachments",
    "MessageStream",
}
INACTIVE_RECIPIENT = {
    "ErrorCode": 406,
    "Message": "You tried to send to recipient(s) that have been marked as inactive. Found inactive addresses: "
    "grace@example.com. Inactive recipients are ones that have generated a hard bounce, a spam complaint, "
    "or a manual suppression.",
}


def _refusal(request: Any) -> tuple[int, dict[str, Any]] | None:
    """Why Postmark would refuse this body (422, ErrorCode 300: invalid email request), or None."""
    if not isinstance(request, dict):
        return 422, {"ErrorCode": 402, "Message": "Invalid JSON"}
    unknown = set(request) - EMAIL_FIELDS
    problems = [f"unknown field {name}" for name in sorted(unknown)]
    for required in ("From", "To"):
        if not isinstance(request.get(required), str) or not request[required].strip():
            problems.append(f"{required} is required")
    if not (request.get("TextBody") or request.get("HtmlBody")):
        problems.append("Provide either email TextBody or HtmlBody or both.")
    headers = request.get("Headers", [])
    if not isinstance(headers, list) or any(
        not isinstance(h, dict) or set(h) != {"Name", "Value"} or not all(isinstance(v, str) for v in h.values())
        for h in headers
    ):
        problems.append("Headers must be a list of {Name, Value} text pairs")
    metadata = request.get("Metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        problems.append("Metadata values must be text")
    if problems:
        return 422, {"ErrorCode": 300, "Message": "Invalid email request: " + "; ".join(problems)}
    return None


class FakePostmark:
    """A loopback server speaking Postmark's outbound email API."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []  # emails Postmark took (would deliver)
        self.requests: list[dict[str, Any]] = []  # every request body, accepted or not
        self.scripted: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                status, body, headers = owner._answer(self)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, status: int, body: dict[str, Any], **headers: str) -> None:
        """Answer the next request with this status and body, as Postmark does in trouble."""
        self.scripted.append((status, body, headers))

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> tuple[int, dict[str, Any], dict[str, str]]:
        if handler.path != "/email":
            return 404, {"ErrorCode": 404, "Message": "not found"}, {}
        if handler.headers.get("X-Postmark-Server-Token") != TOKEN:
            return 401, {"ErrorCode": 10, "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."}, {}  # noqa: E501
        if "application/json" not in (handler.headers.get("Accept") or "") or "application/json" not in (
            handler.headers.get("Content-Type") or ""
        ):
            return 422, {"ErrorCode": 409, "Message": "JSON required"}, {}
        raw = handler.rfile.read(int(handler.headers.get("content-length") or 0))
        try:
            request = json.loads(raw)
        except ValueError:
            return 422, {"ErrorCode": 402, "Message": "Invalid JSON"}, {}
        self.requests.append(request)
        if self.scripted:
            return self.scripted.pop(0)
        refused = _refusal(request)
        if refused is not None:
            return refused[0], refused[1], {}
        self.accepted.append(request)
        answer = {
            "To": request["To"],
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "MessageID": str(uuid.uuid4()),
            "ErrorCode": 0,
            "Message": "OK",
        }
        self.accepted[-1]["_message_id"] = answer["MessageID"]
        return 200, answer, {}

    def __enter__(self) -> FakePostmark:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
