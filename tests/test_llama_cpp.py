"""The proxy in front of a real third-party upstream: llama.cpp's OpenAI server (llama-cpp-python) on SmolLM2's GGUF.

The proxy's draft is the same SmolLM2 (converted from the same GGUF), so its token counts are the upstream's.
``pytest -m llama_cpp`` (or ``-k llama_cpp``) runs only these.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from conftest import needle_prompt, serving
from llama_cpp_server import llama_cpp_server, require_llama_cpp

from draft_rag import DraftEngine
from draft_rag.server import ServeConfig, create_app
from draft_rag.server.proxy import HOP_BY_HOP, OWN_HEADERS

pytestmark = [pytest.mark.llama_cpp, pytest.mark.slow]
TEXT, QUESTION, ANSWER = needle_prompt(20)  # ~500 tokens
RAG = [
    {"role": "system", "content": "Answer from the context.\n\nContext:\n" + TEXT},
    {"role": "user", "content": QUESTION},
]
GREEDY = {"temperature": 0.0, "max_tokens": 12}
FULL = {"draft_rag": {"method": "full"}}
EOS_BANNED = {"0": -100, "2": -100}  # <|endoftext|> and <|im_end|>: generate until max_tokens


@pytest.fixture(scope="module")
def upstream():
    require_llama_cpp()
    with llama_cpp_server() as server:
        yield server


@pytest.fixture(scope="module")
def draft(smollm):
    return DraftEngine(draft=smollm)


@pytest.fixture(scope="module")
def proxy(upstream, draft):
    with serving(create_app(draft, ServeConfig(upstream=upstream.url, ratio=0.25))) as (url, _):
        yield url + "/v1"


def clients(upstream, proxy):
    return (openai.OpenAI(base_url=u, api_key="unused", max_retries=0) for u in (upstream.url, proxy))


def test_chat_whole_and_streamed(upstream, proxy):
    direct, via = clients(upstream, proxy)
    plain = direct.chat.completions.create(model="smollm2", messages=RAG, **GREEDY)
    full = via.chat.completions.create(
        model="smollm2", messages=RAG, extra_body={"draft_rag": {"method": "full"}}, **GREEDY
    )
    assert full.usage.prompt_tokens == plain.usage.prompt_tokens  # method full: llama.cpp read the same prompt
    assert full.choices[0].message.content == plain.choices[0].message.content
    r = via.chat.completions.create(model="smollm2", messages=RAG, **GREEDY)
    stats = r.draft_rag
    assert stats["compressed_tokens"] <= 0.3 * stats["original_tokens"]
    saved = plain.usage.prompt_tokens - r.usage.prompt_tokens  # tokens llama.cpp did not read
    assert abs(saved - (stats["original_tokens"] - stats["compressed_tokens"])) <= 8, (saved, stats)
    assert r.usage.completion_tokens <= GREEDY["max_tokens"] and r.choices[0].message.content
    raw = via.chat.completions.with_raw_response.create(model="smollm2", messages=RAG, stream=True, **GREEDY)
    assert json.loads(raw.headers["x-draft-rag-stats"])["compressed_tokens"] == stats["compressed_tokens"]
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content


def test_completions_whole_and_streamed(upstream, proxy):
    direct, via = clients(upstream, proxy)
    prompt = "The capital of France is"
    plain = direct.completions.create(model="smollm2", prompt=prompt, **GREEDY)
    r = via.completions.create(model="smollm2", prompt=prompt, **GREEDY)
    assert r.choices[0].text == plain.choices[0].text and r.usage == plain.usage  # forwarded as it is
    chunks = list(via.completions.create(model="smollm2", prompt=prompt, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert [m.id for m in via.models.list()] == [m.id for m in direct.models.list()]


def test_upstream_headers_pass_through(upstream, proxy, access_log):
    body = {"messages": RAG, **GREEDY, "draft_rag": {"method": "full"}}
    direct = httpx.post(upstream.url + "/chat/completions", json=body, timeout=120)
    via = httpx.post(proxy + "/chat/completions", json=body, timeout=120)
    assert direct.status_code == via.status_code == 200
    assert {"openai-processing-ms", "x-request-id"} <= set(direct.headers)  # what llama.cpp's server sends
    expected = {k for k in direct.headers if k not in HOP_BY_HOP | OWN_HEADERS}
    assert expected <= set(via.headers), expected - set(via.headers)
    assert len(via.headers.get_list("x-request-id")) == 1 and "x-draft-rag-stats" in via.headers
    rid = via.headers["x-request-id"]  # the upstream's id, in the proxy's access log too
    access_log.wait(lambda lines: any(r["request_id"] == rid for r in lines))


def test_errors_from_llama_cpp_come_back(upstream, proxy):
    direct, via = clients(upstream, proxy)
    odd = via.chat.completions.create(model="no-such-model", messages=RAG, **GREEDY)
    same = direct.chat.completions.create(model="no-such-model", messages=RAG, **GREEDY)
    assert odd.model == same.model  # llama.cpp serves its one model whatever the name (its behaviour)
    huge = [{"role": "user", "content": TEXT * 9 + QUESTION}]  # over the server's 4,096-token window
    with pytest.raises(openai.BadRequestError) as mine:
        via.chat.completions.create(model="m", messages=huge, extra_body={"draft_rag": {"method": "full"}}, **GREEDY)
    with pytest.raises(openai.BadRequestError) as theirs:
        direct.chat.completions.create(model="m", messages=huge, **GREEDY)
    assert mine.value.body == theirs.value.body and "context" in mine.value.message  # llama.cpp's 400, as it is
    with pytest.raises(openai.BadRequestError) as own:  # the proxy's own check, before llama.cpp sees it
        via.chat.completions.create(model="m", messages=RAG, extra_body={"draft_rag": {"method": "speckv"}}, **GREEDY)
    assert own.value.body["param"] == "draft_rag.method"


def sse_events(response: httpx.Response):
    """Each ``data:`` payload of a server-sent event stream."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_upstream_killed_mid_stream(draft):
    require_llama_cpp()
    with llama_cpp_server() as up, serving(create_app(draft, ServeConfig(upstream=up.url))) as (url, _):
        body = {"messages": RAG, "max_tokens": 2000, "stream": True, "logit_bias": EOS_BANNED}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            events = sse_events(r)
            first = json.loads(next(events))
            up.kill()
            rest = list(events)
        assert first["object"] == "chat.completion.chunk" and r.status_code == 200
        assert rest[-1] == "[DONE]" and all(json.loads(e) for e in rest[:-1])  # whole events only
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "upstream" and up.url not in error["message"]
        assert httpx.get(url + "/health").json() == {"status": "ok", "mode": "proxy", "queued": 0}
        r = httpx.post(url + "/v1/chat/completions", json={"messages": RAG, "draft_rag": {"method": "full"}})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream"


def test_upstream_slower_than_the_timeout(draft):
    """A ~1k-token prompt takes llama.cpp longer than the proxy's 0.3 s of allowed silence."""
    require_llama_cpp()
    long = [{"role": "user", "content": needle_prompt(40)[0] + QUESTION}]
    body = {"messages": long, "max_tokens": 4, "draft_rag": {"method": "full"}}
    with (
        llama_cpp_server() as up,
        serving(create_app(draft, ServeConfig(upstream=up.url, upstream_timeout=0.3))) as (
            url,
            _,
        ),
    ):
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
            events = list(sse_events(r))
        assert r.status_code == 200 and events[-1] == "[DONE]"  # headers came at once, then silence
        assert json.loads(events[-2])["error"]["code"] == "upstream_timeout"


def test_serve_load_through_the_proxy_to_llama_cpp(tmp_path):
    """scripts/serve_load.py --llama-cpp, tiny: every request answered or refused, none lost."""
    from test_scripts import run_script

    require_llama_cpp()
    args = ["--llama-cpp", "--distinct", "--clients", "2", "--seconds", "3", "--max-tokens", "4", "--filler", "20"]
    out = json.loads(run_script("serve_load.py", *args, cwd=tmp_path))
    assert out["proxy"]["upstream"] == "llama.cpp (SmolLM2 GGUF)" and out["answered"] > 0
    assert out["lost"] == 0 and out["queued_after"] == 0 and out["latency_s"]["p50"] > 0
    assert out["median_kept_share"] < 0.5  # the draft compressed what llama.cpp read


def test_llama_cpp_proxy_script(tmp_path):
    """scripts/llama_cpp_proxy.py, tiny: through the proxy llama.cpp reads fewer prompt tokens than direct."""
    from test_scripts import run_script

    require_llama_cpp()
    args = ["--lengths", "300", "--requests", "1", "--max-tokens", "2", "--n-ctx", "1024"]
    out = json.loads(run_script("llama_cpp_proxy.py", *args, cwd=tmp_path))
    direct, proxy = out["summary"]
    assert (direct["path"], proxy["path"]) == ("direct", "proxy") and direct["requests"] == proxy["requests"] == 1
    assert proxy["upstream_prompt_tokens"] < 0.6 * direct["upstream_prompt_tokens"]
    assert direct["upstream_prompt_tokens"] > 250 and proxy["draft_s"] > 0 and direct["ttft_s"] > 0
