"""draft-rag serve under hostile and faulty traffic: bad fields, failures at every stage, dead or silent
upstreams, idle connections, and a fuzz test of the HTTP API (tiny models, loopback only)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import serving
from conftest import serving_engine as tiny_engine
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from draft_rag.engine import GenerationStream
from draft_rag.server import ServeConfig, create_app, timed_protocol
from draft_rag.server.local import raw_prompt

pytest.importorskip("uvicorn")
MESSAGES = [
    {"role": "user", "content": "Context:\n" + "The sky is blue. " * 60 + "\n\nQuestion: What colour is the sky?"}
]
GOOD = {"model": "m", "messages": MESSAGES, "max_tokens": 2}


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def app(engine):
    return create_app(engine, ServeConfig(max_tokens=8, max_body_bytes=400_000, max_queue=2, queue_timeout=30))


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def healthy(client, engine) -> None:
    """The queue is empty, the engine free, and a normal request is answered."""
    assert client.get("/health").json()["queued"] == 0
    assert not engine._lock.locked()
    r = client.post("/v1/chat/completions", json=GOOD)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text


BAD = [  # issue 25's cases: (raw JSON body, the field the 400 must name)
    ('{"messages": M, "stream": true, "stream_options": "x"}', "stream_options"),
    ('{"messages": M, "temperature": NaN}', "temperature"),
    ('{"messages": M, "top_p": NaN}', "top_p"),
    ('{"messages": M, "temperature": Infinity}', "temperature"),
    ('{"messages": M, "temperature": 1e309}', "temperature"),
    ('{"messages": M, "temperature": 0.7, "seed": "abc"}', "seed"),
    ('{"messages": M, "response_format": "json"}', "response_format"),
    ('{"messages": M, "n": true}', "n"),
    ('{"messages": M, "n": 1.0}', "n"),
    ('{"messages": M, "stream": "yes"}', "stream"),
    ('{"messages": [{"role": "hacker", "content": "hi"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    ('{"messages": M, "stop": 5}', "stop"),
    ('{"messages": M, "draft_rag": {"lookahead_tokens": -5}}', "draft_rag.lookahead_tokens"),
    ('{"messages": M, "draft_rag": {"budget": 10, "ratio": 0.5}}', "draft_rag"),
    ('{"messages": M, "draft_rag": {"budget": "all"}}', "draft_rag.budget"),
    ('{"messages": M, "max_tokens": 2.5}', "max_tokens"),
]


@pytest.mark.parametrize("raw, param", BAD)
def test_bad_fields_are_400s_that_name_them(client, engine, raw, param):
    r = client.post("/v1/chat/completions", content=raw.replace("M", json.dumps(MESSAGES)))
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error", r.text
    assert param.split("[")[0].split(".")[-1] in err["message"]
    assert not any(word in err["message"] for word in ("object is not", "Union[", "Traceback", "NoneType"))
    healthy(client, engine)


def test_deep_nesting_and_non_objects_are_400s(client, engine):
    deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for raw in (deep, '{"messages": M, "x": ' + "[" * 40 + "]" * 40 + "}", "[1]", '"s"', "{bad"):
        r = client.post("/v1/chat/completions", content=raw.replace("M", json.dumps(MESSAGES)))
        msg = r.json()["error"]["message"]
        assert r.status_code == 400 and ("JSON object" in msg or "nests" in msg), r.text
    healthy(client, engine)


def test_wrong_method_is_405_typed_as_a_request_error(client):
    r = client.get("/v1/chat/completions")
    assert (
        r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error" and "POST" in r.headers["allow"]
    )


class Failing:
    """Wraps ``engine.stream`` to fail at one stage: the call, the first piece (compression and prefill), a
    later token; the real generation is always closed."""

    def __init__(self, engine, stage: str):
        self.real, self.stage = engine.stream, stage

    def __call__(self, **kwargs):
        if self.stage == "call":
            raise ValueError("rejected by the engine")
        gs = self.real(**kwargs)
        return GenerationStream(self._pieces(iter(gs)), gs.stats, gs.compressed)

    def _pieces(self, pieces):
        with contextlib.closing(pieces):
            for i, piece in enumerate(pieces):
                if (self.stage, i) in (("prefill", 0), ("token", 2)):
                    raise RuntimeError("injected failure")
                yield piece


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("stage, status", [("call", 400), ("prefill", 500), ("token", None)])
def test_a_failure_at_any_stage_frees_the_slot(client, engine, monkeypatch, stage, status, stream):
    monkeypatch.setattr(engine, "stream", Failing(engine, stage))
    r = client.post("/v1/chat/completions", json={**GOOD, "max_tokens": 6, "stream": stream})
    monkeypatch.undo()
    if status is not None or not stream:
        assert r.status_code == (status or 500) and r.json()["error"]["message"], r.text
        assert "injected" not in r.text  # internals stay in the server log
    else:  # headers were sent: the stream ends with an error event and [DONE]
        events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert r.status_code == 200 and json.loads(events[-2])["error"]["type"] == "server_error"
        assert events[-1] == "[DONE]"
    healthy(client, engine)


def test_a_500_leaves_the_connection_usable_and_is_logged_with_its_bytes(engine, monkeypatch, access_log):
    app = create_app(engine, ServeConfig(max_tokens=8))
    with serving(app) as (url, _), httpx.Client(base_url=url) as http:
        monkeypatch.setattr(engine, "stream", Failing(engine, "prefill"))
        assert http.post("/v1/chat/completions", json=GOOD).status_code == 500
        monkeypatch.undo()
        assert http.post("/v1/chat/completions", json=GOOD).status_code == 200  # same keep-alive connection
        logged = access_log.wait(lambda lines: len(lines) == 2)
    assert logged[0]["status"] == 500 and logged[0]["bytes_out"] > 0


@contextlib.contextmanager
def busy(engine, **cfg):
    """A server whose engine is taken by a long stream; yields its URL."""
    app = create_app(engine, ServeConfig(max_tokens=4000, **cfg))
    body = {**GOOD, "max_tokens": 3000, "stream": True}
    with serving(app) as (url, _), httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)
        yield url


def test_queued_client_that_gives_up_leaves_at_once(engine, access_log):
    with busy(engine, max_queue=2, queue_timeout=60) as url:
        with pytest.raises(httpx.ReadTimeout):  # waits behind the stream, then gives up
            httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=0.5)
        access_log.wait(seconds=5)  # its line is written once it has left the queue
        assert httpx.get(url + "/health").json()["queued"] == 1  # only the stream, long before 60 s


@pytest.mark.parametrize("max_queue, status", [(0, 429), (1, 503)])
def test_busy_answers_carry_retry_after(engine, max_queue, status):
    with busy(engine, max_queue=max_queue, queue_timeout=0.3) as url:
        r = httpx.post(url + "/v1/chat/completions", json=GOOD)
        assert r.status_code == status and r.headers["retry-after"] == "1"


def test_disconnected_stream_logs_the_tokens_it_sent(engine, access_log):
    with serving(create_app(engine, ServeConfig(max_tokens=4000))) as (url, _):
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**GOOD, "max_tokens": 3000, "stream": True}, timeout=30
        ) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        logged = access_log.wait(lambda lines: any(r.get("finished") is False for r in lines))
        assert httpx.get(url + "/health").json()["queued"] == 0  # the slot is freed before the line is written
    cut = [r for r in logged if r.get("finished") is False]
    assert len(cut) == 1 and 3 <= cut[0]["completion_tokens"] < 3000


def test_idle_and_slow_connections_are_closed():
    app = create_app(tiny_engine(), ServeConfig())
    with serving(app, http=timed_protocol(0.5)) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for first in (b"", b"GET /health HTTP/1.1\r\n"):  # sends nothing; sends half a head, then stalls
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(first)
                t0 = time.monotonic()
                assert s.recv(100) == b"" and time.monotonic() - t0 < 3
        assert httpx.get(url + "/health").status_code == 200  # a prompt client is unaffected


def test_completions_continue_raw_text(client, engine):
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "draft_rag": {"method": "full"}})
    raw = len(engine.target.tokenizer("hi")["input_ids"])  # the tokenizer's own special tokens, no template
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == raw


def test_completion_compression_keeps_the_prompt_tail(engine):
    text = "The sky is blue. " * 80 + "\n\nThe colour of the sky, in one word, is"
    parts = raw_prompt(text)
    assert parts["prompt"] + parts["answer_prefix"] == text and parts["answer_prefix"].endswith("in one word, is")
    assert parts["template"] == "raw" and len(parts["answer_prefix"]) < 60
    gen = engine.generate(**parts, method="specpc", ratio=0.2, max_new_tokens=2)
    assert gen.stats.prompt_tokens < gen.stats.original_tokens / 2
    assert gen.compressed.text.endswith("The colour of the sky, in one word, is")
    assert raw_prompt("hi") == {"prompt": None, "answer_prefix": "hi", "template": "raw"}


# -- proxy mode --------------------------------------------------------------------------------------
@contextlib.contextmanager
def raw_upstream(handle):
    """A TCP server on loopback that runs ``handle(conn)`` per connection (a silent or broken upstream)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                conns.append(conn)
                threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()
        for c in conns:
            c.close()


def _read_request(conn) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    size = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(body) < size:
        body += conn.recv(65536)


def proxy_app(upstream: str, **cfg):
    return create_app(tiny_engine(target=False), ServeConfig(upstream=upstream, method="full", **cfg))


def test_proxy_errors_never_show_credentials():
    with serving(proxy_app("http://admin:hunter2@127.0.0.1:9/v1")) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=GOOD)
    assert r.status_code == 502 and "127.0.0.1:9" in r.json()["error"]["message"]
    assert "hunter2" not in r.text and "admin" not in r.text


def test_silent_upstream_is_a_504():
    with (
        raw_upstream(lambda conn: time.sleep(30)) as host,
        serving(proxy_app(f"http://{host}/v1", upstream_timeout=0.5)) as (url, _),
    ):
        t0 = time.monotonic()
        r = httpx.post(url + "/v1/chat/completions", json=GOOD, timeout=20)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout" and time.monotonic() - t0 < 5


def test_upstream_dying_mid_stream_ends_with_an_error_event_and_done():
    def dies(conn):
        _read_request(conn)
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        conn.sendall(b"%x\r\n%s\r\n" % (len(event), event) + b'10\r\ndata: {"choi')  # dies inside an event
        conn.close()

    with raw_upstream(dies) as host, serving(proxy_app(f"http://{host}/v1")) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json={**GOOD, "stream": True}, timeout=20)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hi"
    assert json.loads(events[1])["error"]["code"] == "upstream" and events[2] == "[DONE]" and len(events) == 3


def test_proxy_passes_retry_after_and_checks_fields_before_forwarding():
    seen = []
    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    async def busy(body: dict):
        seen.append(body)
        return JSONResponse({"error": {"message": "busy"}}, status_code=429, headers={"retry-after": "7"})

    with serving(upstream) as (up, _), serving(proxy_app(up + "/v1")) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=GOOD)
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        bad = httpx.post(url + "/v1/chat/completions", content=json.dumps({**GOOD, "top_p": float("nan")}))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"
    assert len(seen) == 1


# -- fuzz --------------------------------------------------------------------------------------------
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, -1, 8, 9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["auto", "text", "json_object", "user", "specpc", "speckv", "full", ""]),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.sampled_from(["type", "text", "role", "content", "include_usage", "x"]), st.text(max_size=5)),
)
FIELDS = [
    "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "seed", "stop", "presence_penalty", "frequency_penalty", "user", "logprobs", "top_logprobs",
    "response_format", "tools", "functions", "messages", "draft_rag", "prompt", "echo", "suffix", "best_of", "zzz",
]  # fmt: skip
DRAFT_FIELDS = ["method", "budget", "ratio", "pc_budget", "pc_ratio", "lookahead_tokens", "nope"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_call_id"]


PROMPT = {"model": "m", "prompt": "The sky is blue. " * 40 + "The sky is", "max_tokens": 2}


@st.composite
def requests(draw):
    """A valid chat or completion body with one to three fields (top level, in draft_rag, or in a message) set
    to any JSON value."""
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
    body = json.loads(json.dumps(GOOD if "chat" in path else PROMPT))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "draft", "message"]))
        if where == "top":
            body[draw(st.sampled_from(FIELDS))] = draw(VALUES)
        elif where == "draft":
            opts = body.get("draft_rag") if isinstance(body.get("draft_rag"), dict) else {}
            body["draft_rag"] = {**opts, draw(st.sampled_from(DRAFT_FIELDS)): draw(VALUES)}
        elif isinstance(body.get("messages"), list) and body["messages"] and isinstance(body["messages"][0], dict):
            body["messages"][0][draw(st.sampled_from(MESSAGE_FIELDS))] = draw(VALUES)
    return path, body


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=requests())
def test_fuzz_never_500_never_wedged(app, engine, case):
    path, body = case
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(path, content=json.dumps(body))
        assert r.status_code in (200, 400), (r.status_code, r.text, body)
        event(f"{path} {r.status_code}")
        if r.status_code == 400:
            err = r.json()["error"]
            assert err["message"] and err["type"] == "invalid_request_error"
        healthy(client, engine)


@pytest.mark.parametrize("error, status", [(ValueError("no context to compress"), 400), (RuntimeError("boom"), 500)])
def test_proxy_compression_failure_frees_the_slot(monkeypatch, error, status):
    engine = tiny_engine(target=False)

    def fail(*args, **kwargs):
        raise error

    with serving(create_app(tiny_engine(), ServeConfig(method="full"))) as (up, _):
        app = create_app(engine, ServeConfig(upstream=up + "/v1", max_tokens=8))
        with TestClient(app, raise_server_exceptions=False) as client:
            monkeypatch.setattr(engine, "compress_messages", fail)
            r = client.post("/v1/chat/completions", json=GOOD)
            assert r.status_code == status and "boom" not in r.text
            monkeypatch.undo()
            assert client.get("/health").json()["queued"] == 0
            ok = client.post("/v1/chat/completions", json=GOOD)
            assert ok.status_code == 200 and ok.json()["draft_rag"]["compressed_tokens"] > 0


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=requests())
def test_fuzz_proxy_never_500_never_wedged(proxy_client, case):
    """The same generated bodies through the proxy in front of a local server: a 200 or a 400 from either."""
    path, body = case
    r = proxy_client.post(path, content=json.dumps(body))
    assert r.status_code in (200, 400), (r.status_code, r.text, body)
    assert proxy_client.get("/health").json()["queued"] == 0
    ok = proxy_client.post("/v1/chat/completions", json=GOOD)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1, ok.text


@pytest.fixture(scope="module")
def proxy_client(engine):
    with serving(create_app(engine, ServeConfig(max_tokens=8, method="full"))) as (up, _):
        app = create_app(tiny_engine(target=False), ServeConfig(upstream=up + "/v1", max_tokens=8))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
