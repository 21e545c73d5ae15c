"""The Responses API over a scripted target and a real SQLite file, with the real `openai`
SDK (through the test client): create, stream, store and ``previous_response_id``,
background responses (poll, cancel, resumed after a crash), errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from inferline.router.config import RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.store import KeyStore, RequestLog, RequestLogWriter, connect, migrate
from inferline.store.responses import ResponseStore
from inferline.tenants import Tenants
from tests.router.fakes import WORDS, ScriptedGenerator, Step

ADMIN = "admin-secret-key"


def make_app(database_url: str, target: ScriptedGenerator) -> Any:
    database = connect(database_url)
    migrate(database)
    router = Router([Target(TargetConfig("small"), target)],
                    [RouteConfig("bot", (TargetRef("small"),))])  # fmt: skip
    writer = RequestLogWriter(RequestLog(database), flush_interval_s=0.01)
    return create_app(router, ServerConfig(api_keys=(ADMIN,)), log_writer=writer,
                      tenants=Tenants(KeyStore(database), (ADMIN,)))  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    target = ScriptedGenerator("small")
    app = make_app(f"sqlite:///{tmp_path / 'db.sqlite'}", target)
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN, http_client=client)
        yield client, sdk, target


def test_create_then_get_the_stored_response(setup: Any) -> None:
    client, sdk, target = setup
    response = sdk.responses.create(model="bot", input="Hi", instructions="Be brief.",
                                    max_output_tokens=3, metadata={"team": "a"})  # fmt: skip
    assert response.id.startswith("resp_")
    assert response.output_text == " ".join(WORDS[:3])
    assert response.status == "completed"  # the scripted target says "stop"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.metadata == {"team": "a"}
    sent = target.requests[-1].messages
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    again = sdk.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()
    items = client.get(f"/v1/responses/{response.id}/input_items").json()["data"]
    assert items[0]["content"] == [{"type": "input_text", "text": "Hi"}]
    trace = client.get(f"/v1/traces/{response.id}")
    for _ in range(50):  # the log is written in batches
        if trace.status_code == 200:
            break
        time.sleep(0.02)
        trace = client.get(f"/v1/traces/{response.id}")
    assert trace.json()["endpoint"] == "/v1/responses"


def test_previous_response_id_over_three_turns(setup: Any) -> None:
    _, sdk, target = setup
    first = sdk.responses.create(model="bot", input="one", instructions="old rules")
    second = sdk.responses.create(model="bot", input="two", previous_response_id=first.id)
    third = sdk.responses.create(
        model="bot",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "three"}]}],
        previous_response_id=second.id,
        instructions="new rules",
    )
    answer = " ".join(WORDS)
    assert third.previous_response_id == second.id
    assert target.requests[-1].messages == [
        {"role": "system", "content": "new rules"},  # instructions do not carry over
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "three"},
    ]


def test_stream_events_and_the_sdk_accumulator(setup: Any) -> None:
    _, sdk, _ = setup
    deltas, kinds = [], []
    with sdk.responses.stream(model="bot", input="Hi", max_output_tokens=4) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == " ".join(WORDS[:4]) == final.output_text
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == 1
    stored = sdk.responses.retrieve(final.id)
    assert stored.output_text == final.output_text
    assert stored.output[0].id == final.output[0].id


def test_stream_sequence_numbers_and_no_done_marker(setup: Any) -> None:
    client, _, _ = setup
    body = {"model": "bot", "input": "Hi", "stream": True, "max_output_tokens": 2}
    with client.stream("POST", "/v1/responses", json=body) as response:
        text = "".join(response.iter_text())
    assert "[DONE]" not in text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names == [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_not_stored_and_unknown_previous(setup: Any) -> None:
    client, sdk, _ = setup
    response = sdk.responses.create(model="bot", input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as error:
        sdk.responses.create(model="bot", input="Hi", previous_response_id=response.id)
    assert error.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_another_key_cannot_read_or_continue(setup: Any) -> None:
    client, sdk, _ = setup
    created = client.post("/admin/keys", json={"name": "alice"}).json()
    alice = openai.OpenAI(base_url="http://testserver/v1", api_key=created["key"],
                          http_client=client)  # fmt: skip
    mine = sdk.responses.create(model="bot", input="secret")
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(mine.id)
    with pytest.raises(openai.BadRequestError):
        alice.responses.create(model="bot", input="x", previous_response_id=mine.id)
    theirs = alice.responses.create(model="bot", input="x")
    assert sdk.responses.retrieve(theirs.id).id == theirs.id  # an admin sees every response


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].type"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "background": True, "stream": True}, "background"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ],
)  # fmt: skip
def test_bad_bodies_are_400s_naming_the_field(setup: Any, body: dict, param: str) -> None:
    client, _, _ = setup
    response = client.post("/v1/responses", json={"model": "bot", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_function_call_items_become_chat_turns(setup: Any) -> None:
    _, sdk, target = setup
    sdk.responses.create(
        model="bot",
        input=[
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"a":1}'},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        ],
        tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
    )
    sent = target.requests[-1]
    assert sent.messages[1]["role"] == "assistant"
    assert [c["id"] for c in sent.messages[1]["tool_calls"]] == ["c1", "c2"]
    assert sent.messages[2:] == [
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "tool", "content": "rain", "tool_call_id": "c2"},
    ]
    assert sent.tools is not None and sent.tools[0]["function"]["name"] == "w"


def _poll(sdk: openai.OpenAI, response_id: str, done: tuple[str, ...]) -> Any:
    for _ in range(200):
        response = sdk.responses.retrieve(response_id)
        if response.status in done:
            return response
        time.sleep(0.02)
    raise AssertionError(f"{response_id} still {response.status}")


def test_background_response_is_polled_to_completion(setup: Any) -> None:
    _, sdk, _ = setup
    queued = sdk.responses.create(model="bot", input="Hi", background=True)
    assert queued.status == "queued" and queued.background
    done = _poll(sdk, queued.id, ("completed",))
    assert done.output_text == " ".join(WORDS)


def test_background_response_is_cancelled(tmp_path: Path) -> None:
    target = ScriptedGenerator("small", [Step(hang=True)])
    app = make_app(f"sqlite:///{tmp_path / 'db.sqlite'}", target)
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN, http_client=client)
        queued = sdk.responses.create(model="bot", input="Hi", background=True)
        _poll(sdk, queued.id, ("in_progress",))
        cancelled = sdk.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        assert sdk.responses.retrieve(queued.id).status == "cancelled"
        for _ in range(100):  # the generation was stopped, not left running
            if target.running == 0:
                break
            time.sleep(0.02)
        assert target.running == 0


def test_a_background_response_a_crash_interrupted_is_run_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    database = connect(url)
    migrate(database)
    request = {"model": "bot", "input": "Hi", "background": True, "max_output_tokens": 2}
    shell = {"id": "resp_crashed", "object": "response", "status": "in_progress",
             "background": True, "output": [], "model": "bot", "created_at": 1}  # fmt: skip
    ResponseStore(database).put(shell, request=request, input_items=[],
                                conversation=[{"role": "user", "content": "Hi"}],
                                key_id=None)  # fmt: skip
    target = ScriptedGenerator("small")
    with TestClient(make_app(url, target), headers={"authorization": f"Bearer {ADMIN}"}) as c:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN, http_client=c)
        done = _poll(sdk, "resp_crashed", ("completed", "incomplete"))
    assert done.output_text == " ".join(WORDS[:2])
    assert target.requests[0].messages == [{"role": "user", "content": "Hi"}]


def test_a_stream_cut_mid_way_ends_failed_never_completed(tmp_path: Path) -> None:
    target = ScriptedGenerator("small", [Step(cut_after=2)])
    app = make_app(f"sqlite:///{tmp_path / 'db.sqlite'}", target)
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        body = {"model": "bot", "input": "Hi", "stream": True}
        with client.stream("POST", "/v1/responses", json=body) as response:
            text = "".join(response.iter_text())
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data:")]
        kinds = [e["type"] for e in events]
        assert "response.output_text.delta" in kinds
        assert kinds[-2:] == ["error", "response.failed"]
        assert "response.completed" not in kinds
        stored = client.get(f"/v1/responses/{events[0]['response']['id']}").json()
        assert stored["status"] == "failed" and stored["error"]["code"]


def test_a_stored_prompt_answers_a_response(setup: Any) -> None:
    client, sdk, target = setup
    spec = {"id": "greet", "route": "bot", "messages": [
        {"role": "system", "content": "You greet {{ name }}."}]}  # fmt: skip
    assert client.post("/v1/prompts", json=spec).status_code in (200, 201)
    response = sdk.responses.create(
        input="hello", prompt={"id": "greet", "variables": {"name": "Ada"}}
    )
    assert response.output_text == " ".join(WORDS)
    system = {"role": "system", "content": "You greet Ada."}
    assert target.requests[-1].messages == [system, {"role": "user", "content": "hello"}]
