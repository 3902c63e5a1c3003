"""A strict, scripted stand-in for the OpenAI API, for tests only.

A real loopback HTTP server, so the real ``openai`` client and the Agents SDK's
``OpenAIResponsesModel`` / ``OpenAIChatCompletionsModel`` talk to it over HTTP. It is at least
as strict as the real API about what it accepts: every request body is checked, recursively,
against the ``openai`` package's own request TypedDicts
(``ResponseCreateParamsNonStreaming``, ``CompletionCreateParamsNonStreaming`` and the item and
message params they reference). A key those types do not define, a ``null`` where the type
is not Optional, a wrong type, a missing required key or a value outside a Literal gets a
400 in OpenAI's error shape. Answers are built from the package's own response models and
serialized with ``model_dump(mode="json", exclude_unset=True)``.

The model's side is a script: a list of turns (``call``/``answer``/``refuse``), one per
accepted request, in order. ``faults`` injects transport failures per request number.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import http.server
import itertools
import json
import threading
import types
import typing
from typing import Any, Literal

import typing_extensions
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_message_function_tool_call import ChatCompletionMessageFunctionToolCall, Function
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from openai.types.completion_usage import CompletionUsage
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseUsage,
)
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"
_SCHEMAS: dict[str, Any] = {
    RESPONSES_PATH: ResponseCreateParamsNonStreaming,
    CHAT_PATH: CompletionCreateParamsNonStreaming,
}


# --------------------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class WireError:
    """One reason the API refuses a request body, in OpenAI's vocabulary."""

    code: Literal["unknown_parameter", "invalid_type", "missing_required_parameter", "invalid_value"]
    param: str
    message: str

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}
        }


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(path: str, expected: str, value: Any) -> WireError:
    got = _json_kind(value)
    return WireError("invalid_type", path, f"Invalid type for '{path}': expected {expected}, but got {got} instead.")


_DISCRIMINATORS = ("type", "role")
_SEQUENCE_ORIGINS = {list, tuple, collections.abc.Iterable, collections.abc.Sequence, collections.abc.Collection}
_MAPPING_ORIGINS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


@dataclasses.dataclass
class _Hints:
    required: frozenset[str]
    fields: dict[str, Any]


_hint_cache: dict[Any, _Hints] = {}


def _typeddict_hints(td: Any) -> _Hints:
    if td not in _hint_cache:
        # ``__required_keys__`` misses ``Required[...]`` written as a string annotation in a
        # subclass of a functional TypedDict (openai's reserved-keyword pattern), so the
        # markers themselves decide where they are present.
        marked = typing.get_type_hints(td, include_extras=True)
        required = {
            key
            for key, hint in marked.items()
            if typing.get_origin(hint) in (typing_extensions.Required, typing.Required)
            or (
                key in td.__required_keys__
                and typing.get_origin(hint) not in (typing_extensions.NotRequired, typing.NotRequired)
            )
        }
        _hint_cache[td] = _Hints(frozenset(required), typing.get_type_hints(td))
    return _hint_cache[td]


def _discriminator_values(tp: Any, key: str) -> set[Any] | None:
    """The Literal values a TypedDict allows for ``key`` (None if it has no such Literal)."""
    if not typing_extensions.is_typeddict(tp):
        return None
    hint = _typeddict_hints(tp).fields.get(key)
    if typing.get_origin(hint) is Literal:
        return set(typing.get_args(hint))
    return None


def validate(value: Any, tp: Any, path: str = "") -> WireError | None:
    """The first reason ``value`` (parsed JSON) is not an instance of the params type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return None
    if tp is None or tp is type(None):
        return None if value is None else _wrong_type(path, "null", value)
    if origin is typing.Union or origin is types.UnionType:
        return _validate_union(value, typing.get_args(tp), path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and all(type(value) is type(a) for a in allowed if a == value):
            return None
        supported = " and ".join(f"'{a}'" for a in allowed)
        return WireError(
            "invalid_value", path, f"Invalid value: {json.dumps(value)}. Supported values are: {supported}."
        )
    if typing_extensions.is_typeddict(tp):
        return _validate_typeddict(value, tp, path)
    if origin in _MAPPING_ORIGINS or tp in (dict, typing.Dict):  # noqa: UP006 - typing.Dict is what some params use
        if not isinstance(value, dict):
            return _wrong_type(path, "an object", value)
        args = typing.get_args(tp)
        for key, item in value.items():
            if args and (err := validate(item, args[1], _join(path, str(key)))):
                return err
        return None
    if origin in _SEQUENCE_ORIGINS or getattr(origin, "__name__", "") == "SequenceNotStr" or tp in (list, tuple):
        if not isinstance(value, list):
            return _wrong_type(path, "an array", value)
        args = typing.get_args(tp)
        for index, item in enumerate(value):
            if args and (err := validate(item, args[0], f"{path}[{index}]")):
                return err
        return None
    if tp is str:
        return None if isinstance(value, str) else _wrong_type(path, "a string", value)
    if tp is bool:
        return None if isinstance(value, bool) else _wrong_type(path, "a boolean", value)
    if tp is int:
        return (
            None if isinstance(value, int) and not isinstance(value, bool) else _wrong_type(path, "an integer", value)
        )
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else _wrong_type(path, "a number", value)
    # Anything else (file handles, bytes) cannot arrive as JSON.
    return _wrong_type(path, getattr(tp, "__name__", str(tp)), value)


def _validate_typeddict(value: Any, td: Any, path: str) -> WireError | None:
    if not isinstance(value, dict):
        return _wrong_type(path, "an object", value)
    hints = _typeddict_hints(td)
    for key in value:
        if key not in hints.fields:
            param = _join(path, key)
            return WireError("unknown_parameter", param, f"Unknown parameter: '{param}'.")
    for key in sorted(hints.required - value.keys()):
        param = _join(path, key)
        return WireError("missing_required_parameter", param, f"Missing required parameter: '{param}'.")
    for key, item in value.items():
        if err := validate(item, hints.fields[key], _join(path, key)):
            return err
    return None


def _validate_union(value: Any, members: tuple[Any, ...], path: str) -> WireError | None:
    errors: list[WireError] = []
    for member in members:
        err = validate(value, member, path)
        if err is None:
            return None
        errors.append(err)
    candidates = list(zip(members, errors, strict=True))
    if isinstance(value, dict):
        # Blame the member the object says it is (its "type" or "role"), as the API does.
        for key in _DISCRIMINATORS:
            if key not in value:
                continue
            tagged = [(m, e) for m, e in candidates if _discriminator_values(m, key) is not None]
            if not tagged:
                continue
            named = [(m, e) for m, e in tagged if value[key] in (_discriminator_values(m, key) or set())]
            if named:
                candidates = named
                break
            allowed = sorted({v for m, _ in tagged for v in _discriminator_values(m, key) or set()})
            param = _join(path, key)
            shown = ", ".join(f"'{a}'" for a in allowed)
            return WireError(
                "invalid_value", param, f"Invalid value: {json.dumps(value[key])}. Supported values are: {shown}."
            )
    return max((e for _, e in candidates), key=lambda e: len(e.param))


def validate_request(path: str, body: Any) -> WireError | None:
    """Validate a whole request body for ``path`` against the non-streaming create params."""
    return validate(body, _SCHEMAS[path])


# --------------------------------------------------------------------------- the script


@dataclasses.dataclass(frozen=True)
class Call:
    """The model calls ``name``. ``arguments`` is sent verbatim when it is a string (so a test
    can send invalid JSON); ``undeclared`` allows a tool the request did not offer."""

    name: str
    arguments: dict[str, Any] | str
    undeclared: bool = False
    reasoning: bool = False


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    reasoning: bool = False


@dataclasses.dataclass(frozen=True)
class Refusal:
    text: str


Turn = Call | Answer | Refusal


def call(name: str, /, *, reasoning: bool = False, **arguments: Any) -> Call:
    """A turn in which the model calls tool ``name`` with ``arguments`` (JSON-encoded)."""
    return Call(name, arguments, reasoning=reasoning)


def call_undeclared(name: str, /, **arguments: Any) -> Call:
    """A turn calling a tool the request does not offer (models do hallucinate tools)."""
    return Call(name, arguments, undeclared=True)


def call_with_raw_arguments(name: str, arguments: str) -> Call:
    """A turn whose arguments are this exact text, e.g. invalid JSON."""
    return Call(name, arguments)


def answer(text: str, *, reasoning: bool = False) -> Answer:
    return Answer(text, reasoning=reasoning)


def refuse(text: str) -> Refusal:
    return Refusal(text)


@dataclasses.dataclass(frozen=True)
class RateLimited:
    retry_after_seconds: float = 0


@dataclasses.dataclass(frozen=True)
class ServerError:
    pass


@dataclasses.dataclass(frozen=True)
class Hang:
    """Hold the request without answering until the server stops (or ``seconds`` pass): a
    client with a shorter timeout gives up first."""

    seconds: float = 30


@dataclasses.dataclass(frozen=True)
class MalformedBody:
    pass


Fault = RateLimited | ServerError | Hang | MalformedBody


@dataclasses.dataclass
class Received:
    """One request as the fake saw it and what it answered."""

    number: int
    path: str
    body: Any
    status: int = 0
    answer: Any = None
    error: WireError | None = None
    fault: Fault | None = None


# --------------------------------------------------------------------------- the server


class FakeOpenAI:
    """``with FakeOpenAI([call("lookup_orders"), answer("Done.")]) as fake:`` then point an
    ``AsyncOpenAI(base_url=fake.base_url, api_key="test")`` at it."""

    def __init__(self, turns: collections.abc.Iterable[Turn] = (), *, faults: dict[int, Fault] | None = None) -> None:
        self.turns: collections.deque[Turn] = collections.deque(turns)
        self.faults = dict(faults or {})
        self.received: list[Received] = []
        self.problems: list[str] = []  # script misuse: no turn left, an undeclared tool
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._ids = itertools.count(1)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: shutdown() otherwise waits up to half a second for the loop.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # What tests look at.

    @property
    def rejected(self) -> list[Received]:
        return [r for r in self.received if r.error is not None]

    @property
    def served(self) -> list[Received]:
        """Requests that consumed a turn (valid, not faulted)."""
        return [r for r in self.received if r.error is None and r.fault is None and r.status == 200]

    def assert_script_used_up(self) -> None:
        assert not self.problems, self.problems
        assert not self.rejected, [r.error for r in self.rejected]
        assert not self.turns, f"{len(self.turns)} scripted turn(s) never requested: {list(self.turns)}"

    # Serving.

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    def _handle(self, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            number = len(self.received)
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = raw.decode(errors="replace")
            rec = Received(number, path, body)
            self.received.append(rec)
            if path not in _SCHEMAS:
                rec.status = 404
                return 404, {}, json.dumps({"error": {"message": f"Invalid URL (POST {path})"}}).encode()
            rec.error = validate_request(path, body) if isinstance(body, dict) else _wrong_type("", "an object", body)
            if rec.error is not None:
                rec.status, rec.answer = 400, rec.error.body()
                return 400, {}, json.dumps(rec.answer).encode()
            rec.fault = self.faults.get(number)
            if rec.fault is None:
                answer = self._answer(path, body)
                rec.status, rec.answer = (200, answer) if answer is not None else (500, None)
        if isinstance(rec.fault, RateLimited):
            rec.status = 429
            msg = {
                "error": {
                    "message": "Rate limit reached.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
            return 429, {"retry-after": str(rec.fault.retry_after_seconds)}, json.dumps(msg).encode()
        if isinstance(rec.fault, ServerError):
            rec.status = 500
            msg = {
                "error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}
            }
            return 500, {}, json.dumps(msg).encode()
        if isinstance(rec.fault, Hang):
            self._release.wait(rec.fault.seconds)
            rec.status = 504
            return 504, {}, b"{}"
        if isinstance(rec.fault, MalformedBody):
            rec.status = 200
            return 200, {}, b'{"id": "resp_broken", "output": [{"type": "message", '
        if rec.answer is None:
            return 500, {}, json.dumps({"error": {"message": self.problems[-1], "type": "fake_script"}}).encode()
        return 200, {}, json.dumps(rec.answer).encode()

    def _next_turn(self, offered: set[str]) -> Turn | None:
        if not self.turns:
            self.problems.append("a model request arrived after the script was used up")
            return None
        turn = self.turns.popleft()
        if isinstance(turn, Call) and not turn.undeclared and turn.name not in offered:
            self.problems.append(f"script calls {turn.name!r} but the request offers only {sorted(offered)}")
        return turn

    def _answer(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        if path == RESPONSES_PATH:
            offered = {t.get("name") for t in body.get("tools") or [] if t.get("type") == "function"}
            turn = self._next_turn({str(n) for n in offered})
            return None if turn is None else self._response(body, turn)
        offered = {(t.get("function") or {}).get("name") for t in body.get("tools") or []}
        turn = self._next_turn({str(n) for n in offered})
        return None if turn is None else self._chat_completion(body, turn)

    def _response(self, body: dict[str, Any], turn: Turn) -> dict[str, Any]:
        output: list[Any] = []
        if getattr(turn, "reasoning", False):
            output.append(ResponseReasoningItem(id=self._next_id("rs"), type="reasoning", summary=[]))
        if isinstance(turn, Call):
            args = turn.arguments if isinstance(turn.arguments, str) else json.dumps(turn.arguments)
            output.append(
                ResponseFunctionToolCall(
                    id=self._next_id("fc"),
                    call_id=self._next_id("call"),
                    type="function_call",
                    name=turn.name,
                    arguments=args,
                    status="completed",
                )
            )
        else:
            content: Any = (
                ResponseOutputRefusal(type="refusal", refusal=turn.text)
                if isinstance(turn, Refusal)
                else ResponseOutputText(type="output_text", text=turn.text, annotations=[])
            )
            output.append(
                ResponseOutputMessage(
                    id=self._next_id("msg"), type="message", role="assistant", status="completed", content=[content]
                )
            )
        response = Response(
            id=self._next_id("resp"),
            object="response",
            created_at=1_790_000_000,
            model=str(body["model"]),
            status="completed",
            output=output,
            error=None,
            incomplete_details=None,
            instructions=body.get("instructions"),
            metadata=body.get("metadata"),
            parallel_tool_calls=bool(body.get("parallel_tool_calls", True)),
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            tool_choice=body.get("tool_choice") or "auto",
            tools=body.get("tools") or [],
            usage=ResponseUsage(
                input_tokens=100,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens=20,
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                total_tokens=120,
            ),
        )
        return response.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def _chat_completion(self, body: dict[str, Any], turn: Turn) -> dict[str, Any]:
        if isinstance(turn, Call):
            args = turn.arguments if isinstance(turn.arguments, str) else json.dumps(turn.arguments)
            tool_call = ChatCompletionMessageFunctionToolCall(
                id=self._next_id("call"), type="function", function=Function(name=turn.name, arguments=args)
            )
            message = ChatCompletionMessage(role="assistant", content=None, refusal=None, tool_calls=[tool_call])
            finish: Literal["stop", "tool_calls"] = "tool_calls"
        elif isinstance(turn, Refusal):
            message = ChatCompletionMessage(role="assistant", content=None, refusal=turn.text)
            finish = "stop"
        else:
            message = ChatCompletionMessage(role="assistant", content=turn.text, refusal=None)
            finish = "stop"
        completion = ChatCompletion(
            id=self._next_id("chatcmpl"),
            object="chat.completion",
            created=1_790_000_000,
            model=str(body["model"]),
            choices=[Choice(index=0, finish_reason=finish, message=message, logprobs=None)],
            usage=CompletionUsage(prompt_tokens=100, completion_tokens=20, total_tokens=120),
        )
        return completion.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server's naming
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    status, headers, data = fake._handle(self.path.split("?")[0], raw)
                except Exception as error:  # a bug in the fake itself: answer, and fail the test later
                    fake.problems.append(f"fake_openai crashed: {error!r}")
                    status, headers, data = 500, {}, b'{"error": {"message": "fake_openai crashed"}}'
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a hang it timed out on)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
