"""draft-rag serve through real clients (openai, langchain-openai, llama-index OpenAILike) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time

import httpx
import openai
import pytest
from conftest import needle_prompt, serving
from conftest import serving_engine as tiny_engine

from draft_rag import DraftEngine
from draft_rag.server import ServeConfig, create_app

pytest.importorskip("uvicorn")
KEY = "test-key"
LONG = [
    {"role": "system", "content": "Answer from the context."},
    {
        "role": "user",
        "content": "Context:\n"
        + "The grass is green. The sky is blue. " * 40
        + "\n\nQuestion: What colour is the sky?",
    },
]


@pytest.fixture(scope="module")
def local():
    """A local-mode server on the tiny Llama with an API key; yields (base_url, engine)."""
    engine = tiny_engine()
    with serving(create_app(engine, ServeConfig(api_key=KEY, max_tokens=64, max_body_bytes=20_000))) as (url, _):
        yield url, engine


@pytest.fixture
def client(local):
    return openai.OpenAI(base_url=local[0] + "/v1", api_key=KEY, max_retries=0)


def test_chat_reports_what_the_target_read(client):
    full = client.chat.completions.create(
        model="m", messages=LONG, max_tokens=8, extra_body={"draft_rag": {"method": "full"}}
    )
    comp = client.chat.completions.create(
        model="m", messages=LONG, max_tokens=8, extra_body={"draft_rag": {"method": "specpc", "ratio": 0.25}}
    )
    for r in (full, comp):
        assert r.object == "chat.completion" and r.model == "draft-rag" and r.usage.completion_tokens == 8
        assert r.usage.total_tokens == r.usage.prompt_tokens + 8
        assert r.draft_rag["prompt_tokens"] == r.usage.prompt_tokens and r.choices[0].finish_reason == "length"
    assert full.draft_rag["method"] == "full" and full.usage.prompt_tokens == full.draft_rag["original_tokens"]
    assert comp.draft_rag["method"] == "specpc" and comp.usage.prompt_tokens < full.usage.prompt_tokens / 2
    assert comp.draft_rag["original_tokens"] == full.usage.prompt_tokens
    sparse = client.chat.completions.create(
        model="m", messages=LONG, max_tokens=8, extra_body={"draft_rag": {"method": "full", "sparse_prefill": True}}
    )  # passed to the engine; this prompt is below the sparse threshold, so the same dense prefill
    assert (
        sparse.draft_rag["sparse_layers"] == 0 and sparse.choices[0].message.content == full.choices[0].message.content
    )


def test_streaming_equals_non_streaming(client):
    kwargs = {"model": "m", "messages": LONG, "max_tokens": 12, "extra_body": {"draft_rag": {"budget": 64}}}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert chunks[-1].draft_rag["prompt_tokens"] == whole.usage.prompt_tokens


def test_completions_stream_and_whole(client):
    whole = client.completions.create(model="m", prompt="The quick brown fox", max_tokens=6)
    pieces = list(client.completions.create(model="m", prompt="The quick brown fox", max_tokens=6, stream=True))
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 6
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_models_and_health(local, client):
    assert [m.id for m in client.models.list()] == ["draft-rag"]
    assert httpx.get(local[0] + "/health").json()["status"] == "ok"  # open without the key


def test_auth_refused_without_the_key(local):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=local[0] + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.chat.completions.create(model="m", messages=LONG, max_tokens=4)
        assert err.value.body["code"] == "invalid_api_key"
    assert httpx.post(local[0] + "/v1/completions", json={"prompt": "x"}).status_code == 401


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"max_tokens": 65}, 400, "max_tokens"),
        ({"max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"draft_rag": {"method": "magic"}}, 400, "draft_rag.method"),
        ({"draft_rag": {"ratios": 0.5}}, 400, "draft_rag.ratios"),
        ({"draft_rag": {"ratio": 2}}, 400, "draft_rag.ratio"),
        ({"draft_rag": {"sparse_prefill": "yes"}}, 400, "draft_rag.sparse_prefill"),
        ({"messages": []}, 400, "messages"),
        ({"n": 2}, 400, "n"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"messages": [{"role": "user", "content": "x" * 30_000}]}, 413, None),
    ],
)
def test_bad_requests_get_openai_errors(local, body, status, param):
    r = httpx.post(
        local[0] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "m", "messages": LONG, **body},
    )
    err = r.json()["error"]
    assert r.status_code == status and err["param"] == param and err["message"]
    if body.get("draft_rag", {}).get("ratio") == 2:
        assert "ratio" in err["message"]


def test_not_json_and_unknown_route(local):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(local[0] + "/v1/chat/completions", headers=auth, content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.get(local[0] + "/v1/nothing", headers=auth).json()["error"]["type"] == "not_found_error"


def test_langchain_chat_openai(local):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=local[0] + "/v1",
        api_key=KEY,
        model="draft-rag",
        max_tokens=8,
        max_retries=0,
        extra_body={"draft_rag": {"ratio": 0.5}},
    )
    msg = llm.invoke([("system", LONG[0]["content"]), ("human", LONG[1]["content"])])
    assert msg.usage_metadata["output_tokens"] == 8 and msg.content
    streamed = "".join(c.content for c in llm.stream([("human", LONG[1]["content"])]))
    assert streamed == llm.invoke([("human", LONG[1]["content"])]).content


def test_llama_index_openai_like(local):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model="draft-rag",
        api_base=local[0] + "/v1",
        api_key=KEY,
        is_chat_model=True,
        max_tokens=8,
        temperature=0.0,
        max_retries=0,
        additional_kwargs={"extra_body": {"draft_rag": {"ratio": 0.5}}},
    )
    msgs = [ChatMessage(role="user", content=LONG[1]["content"])]
    whole = llm.chat(msgs).message.content
    assert whole and "".join(r.delta for r in llm.stream_chat(msgs)) == whole
    llm.is_chat_model = False
    assert llm.complete("The quick brown fox").text == "".join(
        r.delta for r in llm.stream_complete("The quick brown fox")
    )


def test_access_log_has_counts_not_text(client, caplog, access_log):
    with caplog.at_level(logging.INFO, logger="draft_rag.access"):
        client.chat.completions.create(model="m", messages=LONG, max_tokens=4)
        rec = access_log.wait()[-1]
    assert rec["path"] == "/v1/chat/completions" and rec["status"] == 200 and rec["completion_tokens"] == 4
    assert rec["prompt_tokens"] > 0 and rec["ms"] > 0 and rec["finished"] is True
    assert not any("sky" in r.getMessage() for r in caplog.records)


def test_disconnect_cancels_generation_and_frees_engine(access_log):
    engine = tiny_engine()
    with serving(create_app(engine, ServeConfig(max_tokens=4000, max_queue=0))) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        stream = c.chat.completions.create(model="m", messages=LONG, max_tokens=3000, stream=True)
        next(iter(stream)), next(iter(stream))
        with pytest.raises(openai.RateLimitError):  # the one engine slot is taken, no queue
            c.chat.completions.create(model="m", messages=LONG, max_tokens=4)
        stream.close()
        logged = access_log.wait(lambda lines: any(r.get("finished") is False for r in lines))  # slot freed by then
        assert httpx.get(url + "/health").json()["queued"] == 0 and not engine._lock.locked()
        assert c.chat.completions.create(model="m", messages=LONG, max_tokens=4).usage.completion_tokens == 4
    cut = [r for r in logged if r.get("finished") is False]
    assert len(cut) == 1 and cut[0]["completion_tokens"] < 3000


def test_queue_timeout_is_503():
    engine = tiny_engine()
    with serving(create_app(engine, ServeConfig(max_tokens=4000, max_queue=1, queue_timeout=0.2))) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with c.chat.completions.create(model="m", messages=LONG, max_tokens=3000, stream=True) as stream:
            next(iter(stream))
            with pytest.raises(openai.InternalServerError) as err:
                c.chat.completions.create(model="m", messages=LONG, max_tokens=4)
            assert err.value.status_code == 503 and err.value.body["code"] == "queue_timeout"


def test_graceful_shutdown_finishes_the_stream_in_flight():
    engine = tiny_engine()
    body = {"messages": LONG, "max_tokens": 300, "stream": True}
    with (
        serving(create_app(engine, ServeConfig()), shutdown_timeout=120) as (url, server),
        httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        server.should_exit = True
        assert server.closed.wait(5), "the server did not start shutting down"
        with pytest.raises(httpx.ConnectError):  # it no longer accepts connections while the stream finishes
            httpx.get(url + "/health", timeout=1)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_proxy_compresses_in_front_of_an_openai_server(access_log):
    """A proxy (compression-only engine) in front of a second local instance standing in for vLLM."""
    upstream_engine = tiny_engine()
    upstream_app = create_app(upstream_engine, ServeConfig(api_key="upstream-key", method="full", model_name="vllm"))
    with serving(upstream_app) as (up, _):
        proxy_app = create_app(
            tiny_engine(target=False), ServeConfig(api_key=KEY, upstream=up + "/v1", upstream_api_key="upstream-key")
        )
        with serving(proxy_app) as (url, _):
            c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
            direct = openai.OpenAI(base_url=up + "/v1", api_key="upstream-key", max_retries=0)
            plain = direct.chat.completions.create(model="vllm", messages=LONG, max_tokens=6)
            r = c.chat.completions.create(
                model="vllm", messages=LONG, max_tokens=6, extra_body={"draft_rag": {"ratio": 0.25}}
            )
            assert r.model == "vllm" and r.usage.completion_tokens == 6
            assert r.usage.prompt_tokens < plain.usage.prompt_tokens / 2  # the upstream read the compressed prompt
            assert r.draft_rag["compressed_tokens"] < r.draft_rag["original_tokens"]
            same = c.chat.completions.create(
                model="vllm", messages=LONG, max_tokens=6, extra_body={"draft_rag": {"method": "full"}}
            )
            assert same.usage.prompt_tokens == plain.usage.prompt_tokens
            assert same.choices[0].message.content == plain.choices[0].message.content
            chunks = list(
                c.chat.completions.create(
                    model="vllm", messages=LONG, max_tokens=6, stream=True, extra_body={"draft_rag": {"ratio": 0.25}}
                )
            )
            assert "".join(x.choices[0].delta.content or "" for x in chunks) == r.choices[0].message.content
            assert [m.id for m in c.models.list()] == ["vllm"]
            with pytest.raises(openai.BadRequestError) as err:  # no local target to prefill sparsely
                c.chat.completions.create(
                    model="vllm", messages=LONG, max_tokens=4, extra_body={"draft_rag": {"sparse_prefill": True}}
                )
            assert err.value.body["param"] == "draft_rag.sparse_prefill"
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url + "/v1", api_key="no", max_retries=0).chat.completions.create(
                    model="vllm", messages=LONG, max_tokens=4
                )
            with pytest.raises(openai.BadRequestError) as err:  # the proxy's own limit
                c.chat.completions.create(model="vllm", messages=LONG, max_tokens=100_000)
            assert err.value.body["param"] == "max_tokens"
            with pytest.raises(openai.BadRequestError) as err:  # the upstream's 400 comes back as is
                c.chat.completions.create(model="vllm", messages=LONG, max_tokens=4, n=2)
            assert err.value.body["param"] == "n"
            stream = c.chat.completions.create(model="vllm", messages=LONG, max_tokens=2000, stream=True)
            next(iter(stream))  # a client that goes away stops vLLM too
            stream.close()
            cut = access_log.wait(lambda lines: any(r.get("finished") is False for r in lines))
            assert httpx.get(up + "/health").json()["queued"] == 0 and not upstream_engine._lock.locked()
    cut = [r for r in cut if r.get("mode") == "local" and r.get("finished") is False]
    assert len(cut) == 1 and cut[0]["completion_tokens"] < 2000


def test_proxy_passes_upstream_headers_but_not_hop_by_hop(access_log):
    """Every upstream header comes back (repeats too) except hop-by-hop ones and those its Connection names."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    sent = [("x-upstream", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("keep-alive", "timeout=5")]
    sent += [("x-conn-only", "1"), ("connection", "x-conn-only"), ("x-request-id", "up-123")]
    stub = FastAPI()

    @stub.post("/v1/chat/completions")
    async def chat(body: dict):
        if body.get("stream"):
            out = StreamingResponse(iter([b"data: {}\n\n", b"data: [DONE]\n\n"]), media_type="text/event-stream")
        else:
            out = JSONResponse({"choices": []})
        out.raw_headers.extend((k.encode(), v.encode()) for k, v in sent)
        return out

    with serving(stub) as (up, _):
        proxy = create_app(tiny_engine(target=False), ServeConfig(upstream=up + "/v1", method="full"))
        with serving(proxy) as (url, _):
            for stream in (False, True):
                r = httpx.post(url + "/v1/chat/completions", json={"messages": LONG, "stream": stream})
                assert r.status_code == 200 and r.headers["x-upstream"] == "1"
                assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
                assert "keep-alive" not in r.headers and "x-conn-only" not in r.headers
                assert r.headers.get_list("x-request-id") == ["up-123"] and "x-draft-rag-stats" in r.headers
    logged = access_log.wait(lambda lines: len(lines) == 2)
    assert [r["request_id"] for r in logged] == ["up-123", "up-123"]  # the upstream's id, in the proxy's log too


def test_proxy_upstream_down_is_502():
    app = create_app(tiny_engine(target=False), ServeConfig(upstream="http://127.0.0.1:9/v1"))
    with serving(app) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json={"messages": LONG, "draft_rag": {"method": "full"}})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream"


def test_load_every_request_answered_or_refused():
    """32 concurrent streaming clients for ~3 s: each answered in full or refused with 429/503, none lost."""
    engine = tiny_engine()
    with serving(create_app(engine, ServeConfig(max_queue=4, queue_timeout=1.0))) as (url, _):
        counts = asyncio.run(_load(url, clients=32, seconds=3.0))
        assert not engine._lock.locked() and httpx.get(url + "/health").json()["queued"] == 0
    assert counts["ok"] > 0 and counts["refused"] > 0 and counts["lost"] == 0, counts


async def _load(url: str, clients: int, seconds: float) -> dict:
    counts = {"ok": 0, "refused": 0, "lost": 0}
    stop = time.monotonic() + seconds
    body = {"messages": LONG, "max_tokens": 16, "stream": True}

    async def one(http: httpx.AsyncClient):
        while time.monotonic() < stop:
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    lines = [line async for line in r.aiter_lines() if line]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
                counts["ok" if ok else "refused" if r.status_code in (429, 503) else "lost"] += 1
            except httpx.HTTPError:
                counts["lost"] += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(one(http) for _ in range(clients)))
    return counts


@pytest.mark.slow
def test_real_smollm_through_the_openai_client(smollm):
    with serving(create_app(DraftEngine(smollm), ServeConfig())) as (url, _):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = c.chat.completions.create(
            model="m", max_tokens=12, messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
        text, question, _ = needle_prompt(40)
        r = c.chat.completions.create(
            model="m",
            max_tokens=8,
            messages=[{"role": "user", "content": text + question}],
            extra_body={"draft_rag": {"method": "specpc", "budget": 256}},
        )
        assert r.usage.prompt_tokens < 300 and r.draft_rag["original_tokens"] > 900


@pytest.mark.slow  # a fresh process imports torch, transformers and FastAPI: ~10 s idle, more on a busy machine
def test_cli_serve_starts_answers_and_stops_on_sigterm(tiny_dir):
    """``draft-rag serve`` as a process: key from the environment, /health open, SIGTERM exits cleanly."""
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DRAFT_RAG_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "draft_rag.cli",
            "serve",
            "--target",
            tiny_dir,
            "--port",
            str(port),
            "--starting-layer-index",
            "1",
            "--ratio",
            "0.5",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)  # polling another process for readiness
        assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        r = c.chat.completions.create(model="m", messages=LONG, max_tokens=4)
        assert r.draft_rag["prompt_tokens"] < r.draft_rag["original_tokens"]  # --ratio 0.5 is the default
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    log = proc.stderr.read().decode()
    assert code in (0, -signal.SIGTERM) and "Finished server process" in log
    assert '"path": "/v1/chat/completions"' in log and "sky" not in log
