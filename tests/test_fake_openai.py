"""Proves ``tests/fake_openai.py``: as strict as the API about request bodies, honest about
what the real SDK sends, and able to fail the ways the real service fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from agents import (
    Agent,
    ModelBehaviorError,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
)
from agents.exceptions import ModelRefusalError
from fake_openai import (
    CHAT_PATH,
    RESPONSES_PATH,
    FakeOpenAI,
    Hang,
    MalformedBody,
    RateLimited,
    ServerError,
    answer,
    call,
    call_undeclared,
    call_with_raw_arguments,
    refuse,
    validate_request,
)


@function_tool
def lookup_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def agent_on(fake: FakeOpenAI, kind: str, **client_options: Any) -> Agent[Any]:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="test", **{"max_retries": 0, **client_options})
    model = (
        OpenAIResponsesModel("gpt-test", client)
        if kind == "responses"
        else OpenAIChatCompletionsModel("gpt-test", client)
    )
    return Agent(name="forecaster", instructions="Be brief.", model=model, tools=[lookup_weather])


@pytest.fixture
def raw_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI([answer("unused")]) as fake:
        yield fake


def post(fake: FakeOpenAI, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(fake.base_url.removesuffix("/v1") + path, json=body, timeout=5)


FUNCTION_CALL = {"type": "function_call", "call_id": "call_1", "name": "lookup_weather", "arguments": "{}"}


def test_an_unknown_key_is_rejected_with_openais_error_shape(raw_fake: FakeOpenAI) -> None:
    body = {
        "model": "gpt-test",
        "input": [
            {"role": "user", "content": "hi"},
            FUNCTION_CALL,
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "user", "content": "thanks", "caller": {"type": "direct"}},
        ],
    }
    res = post(raw_fake, RESPONSES_PATH, body)
    assert res.status_code == 400
    assert res.json() == {
        "error": {
            "message": "Unknown parameter: 'input[3].caller'.",
            "type": "invalid_request_error",
            "param": "input[3].caller",
            "code": "unknown_parameter",
        }
    }
    assert [r.error.param for r in raw_fake.rejected if r.error] == ["input[3].caller"]
    assert list(raw_fake.turns) == [answer("unused")]  # a rejected request consumes no turn


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({**FUNCTION_CALL, "async_": None}, "input[0].async_", "unknown_parameter"),  # the python name, not the alias
        ({**FUNCTION_CALL, "async": None}, "input[0].async", "invalid_type"),  # alias, but null is not a bool
        ({**FUNCTION_CALL, "namespace": None}, "input[0].namespace", "invalid_type"),
        ({"type": "reasoning", "id": "rs_1", "summary": [], "content": None}, "input[0].content", "invalid_type"),
        ({"type": "function_call", "name": "x", "arguments": "{}"}, "input[0].call_id", "missing_required_parameter"),
        ({**FUNCTION_CALL, "status": "done"}, "input[0].status", "invalid_value"),
        ({"type": "no_such_item"}, "input[0].type", "invalid_value"),
    ],
)
def test_invalid_input_items_are_rejected(raw_fake: FakeOpenAI, item: dict[str, Any], param: str, code: str) -> None:
    res = post(raw_fake, RESPONSES_PATH, {"model": "gpt-test", "input": [item]})
    assert res.status_code == 400
    assert (res.json()["error"]["param"], res.json()["error"]["code"]) == (param, code)


def test_optional_fields_may_be_null_and_chat_messages_are_checked_too() -> None:
    assert validate_request(RESPONSES_PATH, {"model": "m", "input": [{**FUNCTION_CALL, "caller": None}]}) is None
    assert validate_request(RESPONSES_PATH, {"model": "m", "input": "hi", "stream": False}) is None
    streaming = validate_request(RESPONSES_PATH, {"model": "m", "input": "hi", "stream": True})
    assert streaming is not None and streaming.param == "stream"
    ok = {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": []}]}
    assert validate_request(CHAT_PATH, ok) is None
    bad = validate_request(CHAT_PATH, {"model": "m", "messages": [{"role": "tool", "content": "x"}]})
    assert bad is not None and bad.code == "missing_required_parameter" and bad.param == "messages[0].tool_call_id"
    extra = validate_request(CHAT_PATH, {"model": "m", "messages": [{"role": "user", "content": "x", "call_id": "1"}]})
    assert extra is not None and (extra.code, extra.param) == ("unknown_parameter", "messages[0].call_id")
    missing = validate_request(CHAT_PATH, {"messages": []})
    assert missing is not None and missing.param == "model"


@pytest.mark.fake_openai
@pytest.mark.parametrize("kind", ["responses", "chat"])
async def test_accepts_what_the_real_sdk_sends_over_a_tool_turn(kind: str) -> None:
    with FakeOpenAI([call("lookup_weather", city="Paris", reasoning=True), answer("Sunny in Paris.")]) as fake:
        result = await Runner.run(agent_on(fake, kind), "Weather in Paris?")
    assert result.final_output == "Sunny in Paris."
    fake.assert_script_used_up()
    first, second = (r.body for r in fake.served)
    if kind == "responses":
        assert first["input"] == [{"content": "Weather in Paris?", "role": "user"}]
        assert [i.get("type") for i in second["input"][1:]] == ["reasoning", "function_call", "function_call_output"]
        assert second["input"][-1]["output"] == "sunny in Paris"
    else:
        assert first["messages"][-1] == {"role": "user", "content": "Weather in Paris?"}
        assert second["messages"][-1]["content"] == "sunny in Paris"


async def test_without_the_marker_the_guard_still_refuses_real_models() -> None:
    with FakeOpenAI([answer("never")]) as fake, pytest.raises(AssertionError, match="real OpenAI model"):
        await Runner.run(agent_on(fake, "responses"), "hi")
    assert fake.received == []


@pytest.mark.fake_openai
async def test_rate_limit_answers_429_with_retry_after_and_the_client_retries() -> None:
    with FakeOpenAI([answer("Fine.")], faults={0: RateLimited(retry_after_seconds=0)}) as fake:
        result = await Runner.run(agent_on(fake, "responses", max_retries=1), "hi")
    assert result.final_output == "Fine."
    assert [r.status for r in fake.received] == [429, 200]
    assert fake.received[0].body == fake.received[1].body
    fake.assert_script_used_up()


@pytest.mark.fake_openai
async def test_server_error_reaches_the_caller_when_retries_are_off() -> None:
    with FakeOpenAI([answer("Fine.")], faults={0: ServerError()}) as fake:
        with pytest.raises(openai.InternalServerError):
            await Runner.run(agent_on(fake, "chat"), "hi")
    assert [r.status for r in fake.received] == [500]
    assert list(fake.turns) == [answer("Fine.")]


@pytest.mark.fake_openai
async def test_a_hang_outlasts_the_client_timeout() -> None:
    with FakeOpenAI([answer("late")], faults={0: Hang()}) as fake:
        with pytest.raises(openai.APITimeoutError):
            await Runner.run(agent_on(fake, "responses", timeout=0.2), "hi")
        assert len(fake.received) == 1


@pytest.mark.fake_openai
async def test_a_malformed_body_fails_the_call() -> None:
    with FakeOpenAI([answer("Fine.")], faults={0: MalformedBody()}) as fake:
        with pytest.raises((openai.APIError, json.JSONDecodeError)):
            await Runner.run(agent_on(fake, "responses"), "hi")
    assert [r.status for r in fake.received] == [200]


@pytest.mark.fake_openai
@pytest.mark.parametrize("kind", ["responses", "chat"])
async def test_a_refusal_is_a_refusal(kind: str) -> None:
    with FakeOpenAI([refuse("I can't help with that.")]) as fake:
        with pytest.raises(ModelRefusalError, match="can't help"):
            await Runner.run(agent_on(fake, kind), "hi")
    fake.assert_script_used_up()


@pytest.mark.fake_openai
@pytest.mark.parametrize("kind", ["responses", "chat"])
async def test_a_call_to_a_tool_that_does_not_exist(kind: str) -> None:
    with FakeOpenAI([call_undeclared("launch_rockets", count=3)]) as fake:
        with pytest.raises(ModelBehaviorError, match="launch_rockets"):
            await Runner.run(agent_on(fake, kind), "hi")
    fake.assert_script_used_up()


@pytest.mark.fake_openai
async def test_a_script_calling_an_unoffered_tool_is_a_script_bug() -> None:
    with FakeOpenAI([call("launch_rockets")]) as fake:
        with pytest.raises(ModelBehaviorError):
            await Runner.run(agent_on(fake, "responses"), "hi")
    assert fake.problems and "launch_rockets" in fake.problems[0]


@pytest.mark.fake_openai
async def test_invalid_tool_argument_json_goes_back_to_the_model_as_an_error() -> None:
    with FakeOpenAI([call_with_raw_arguments("lookup_weather", '{"city": '), answer("Sorry.")]) as fake:
        result = await Runner.run(agent_on(fake, "responses"), "hi")
    assert result.final_output == "Sorry."
    fake.assert_script_used_up()
    replayed = fake.served[1].body["input"]
    assert replayed[1]["arguments"] == '{"city": '
    assert replayed[2]["type"] == "function_call_output" and "error" in replayed[2]["output"].lower()


@pytest.mark.fake_openai
async def test_a_request_after_the_script_ends_is_reported() -> None:
    with FakeOpenAI([]) as fake:
        with pytest.raises(openai.InternalServerError):
            await Runner.run(agent_on(fake, "responses"), "hi")
    assert fake.problems == ["a model request arrived after the script was used up"]
    with pytest.raises(AssertionError):
        fake.assert_script_used_up()
