"""Bad requests get OpenAI's error object with a 4xx status (never a 500 or a traceback in the
log); a client that disconnects mid-stream cancels its generation and the server keeps serving;
a full queue answers 503 with Retry-After."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.server.conftest import MODEL, Server, metric_sum, post

pytestmark = pytest.mark.real

HI = [{"role": "user", "content": "hi"}]
#: a request that runs for minutes here unless cancelled
ENDLESS = {
    "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    "max_tokens": 2000,
}


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": HI, "max_tokens": 4, **fields}


BAD = [
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "must be a JSON object"),
    (b"", 400, None, "JSON"),
    ({"messages": HI}, 400, "model", "missing required parameter: model"),
    (chat(messages=[]), 400, "messages", "at least 1 item"),
    (chat(messages=[{"role": "user"}]), 400, "messages.0.content", "missing"),
    (chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role", "Input"),
    (chat(max_tokens=-1), 400, "max_tokens", "greater than or equal to 1"),
    (chat(max_tokens="5"), 400, "max_tokens", "valid integer"),
    (chat(temperature="hot"), 400, "temperature", "valid number"),
    (chat(stream="yes"), 400, "stream", "valid boolean"),
    (chat(frobnicate=True), 400, "frobnicate", "unrecognized request argument"),
    (chat(n=2), 400, "n", "only n=1"),
    (chat(logprobs=True), 400, "logprobs", "logprobs are not supported"),
    (chat(alignspec={"method": "nope"}), 400, "alignspec.method", "choose one of ar, pld"),
    (
        chat(alignspec={"method": "pld", "options": {"bogus": 1}}),
        400,
        "alignspec.options",
        "its options: draft_len",
    ),
    (chat(alignspec={"options": {"draft_len": "x"}}), 400, "alignspec.options", "draft_len"),
    (chat(alignspec={"colour": 1}), 400, "alignspec.colour", "unrecognized"),
    (chat(temperature=0.7, alignspec={"method": "aasd"}), 400, "temperature", "greedy-only"),
    (chat(model="gpt-4"), 404, "model", "does not exist"),
    (chat(messages=[{"role": "user", "content": "word " * 9000}]), 400, "messages", "context"),
]


@pytest.mark.parametrize(("body", "status", "param", "message"), BAD)
def test_bad_chat_requests(server, body, status, param, message):
    code, reply, _ = post(server.url + "/v1/chat/completions", body)
    assert code == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert error["param"] == param
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "logprobs": 2}, "logprobs"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": [1, 10**9]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
    ],
)
def test_bad_completion_requests(server, fields, param):
    code, reply, _ = post(server.url + "/v1/completions", {"model": MODEL, **fields})
    assert code == 400 and reply["error"]["param"] == param, reply


def test_openai_client_raises_bad_request(server):
    import openai

    client = server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match="unknown method"):
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=4, extra_body={"alignspec": {"method": "x"}}
        )
    with pytest.raises(openai.BadRequestError, match="exceeds the model's 8192-token context"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 9000}], stream=True
        )


def open_stream(server: Server, body: dict) -> tuple[http.client.HTTPConnection, str]:
    """Start a streamed request and read until its first text; returns the open connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    while True:
        line = resp.readline().decode()
        assert line, "stream ended before any text"
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
            "content"
        ):
            return conn, line


def wait_cancelled(server: Server, before: float) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = server.metrics()
        if metric_sum(m, "alignspec:request_cancelled_total") > before:
            assert metric_sum(m, "alignspec:num_requests_running") == 0
            return
        time.sleep(0.2)
    raise AssertionError("the disconnected request was not cancelled")


def test_disconnect_mid_stream_cancels_and_server_keeps_serving(server):
    before = metric_sum(server.metrics(), "alignspec:request_cancelled_total")
    # 2000 tokens would take minutes here: cancellation within the deadline proves it stopped
    conn, _ = open_stream(server, chat(**ENDLESS, stream=True))
    conn.close()
    wait_cancelled(server, before)
    code, reply, _ = post(server.url + "/v1/chat/completions", chat())
    assert code == 200 and reply["choices"][0]["message"]["content"]


def send_only(server: Server, body: dict) -> http.client.HTTPConnection:
    """Send a request without reading the answer (the client can then vanish)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    return conn


def wait_for(server: Server, series: str, value: float) -> None:
    deadline = time.monotonic() + 60
    while metric_sum(server.metrics(), series) != value:
        assert time.monotonic() < deadline, f"{series} never reached {value}"
        time.sleep(0.2)


def test_disconnect_while_queued_or_before_a_whole_answer(server):
    """Non-streamed requests: a vanished client is cancelled whether running or still queued."""
    before = metric_sum(server.metrics(), "alignspec:request_cancelled_total")
    running = send_only(server, chat(**ENDLESS))
    wait_for(server, "alignspec:num_requests_running", 1)
    queued = send_only(server, chat(**ENDLESS))
    wait_for(server, "alignspec:num_requests_waiting", 1)
    queued.close()
    running.close()
    wait_for(server, "alignspec:request_cancelled_total", before + 2)
    wait_for(server, "alignspec:num_requests_running", 0)
    code, reply, _ = post(server.url + "/v1/chat/completions", chat())
    assert code == 200 and reply["choices"][0]["message"]["content"]


def test_middle_truncation_on_request(server):
    long = [{"role": "user", "content": "word " * 60}]
    body = chat(messages=long, max_tokens=8192 - 40)
    code, reply, _ = post(server.url + "/v1/chat/completions", body)
    assert code == 400 and '"truncate": "middle"' in reply["error"]["message"]
    before = metric_sum(server.metrics(), "alignspec:request_cancelled_total")
    conn, _ = open_stream(server, {**body, "stream": True, "alignspec": {"truncate": "middle"}})
    conn.close()
    wait_cancelled(server, before)


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve-q") / "server.log", "--max-queue", "1")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log.read_text(), srv.log.read_text()


def test_queue_full_gets_503_with_retry_after(small_queue_server):
    import openai

    srv = small_queue_server
    running = send_only(srv, chat(**ENDLESS))
    wait_for(srv, "alignspec:num_requests_running", 1)
    queued = send_only(srv, chat(**ENDLESS))
    wait_for(srv, "alignspec:num_requests_waiting", 1)
    client = srv.client(max_retries=0, timeout=60)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
        assert refused.value.status_code == 503
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.body["code"] == "queue_full"
    assert metric_sum(srv.metrics(), 'alignspec:request_errors_total{status="503"}') == 2
    queued.close()
    running.close()
    wait_for(srv, "alignspec:request_cancelled_total", 2)
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert out.choices[0].message.content
