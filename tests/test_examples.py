"""The production recipes in examples/ against a live OpenAI-compatible server on localhost.

The remote model is llama.cpp's OpenAI-compatible server (llama-cpp-python, from ``scripts/setup.sh --test``) on
the built-in SmolLM2 GGUF, standing in for vLLM; a second process, ``draft-rag serve --upstream``, is the
compressing proxy. The GPU recipe is compiled,
its imports and call parameters checked, and its method settings run on the built-in SmolLM2 on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("openai")

import httpx  # noqa: E402
from llama_cpp_server import llama_cpp_server, require_llama_cpp  # noqa: E402
from test_doc_blocks import bad_keywords  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUESTION = "Which function inserts an item into a sorted list and keeps it sorted?"


def _example(name: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import each other, as when run from examples/
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves a model's annotations through its module
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(tmp_path: Path, *args: str):
    """``draft-rag serve ARGS`` as a process on a free port; yields its base URL (…/v1); SIGTERM afterwards."""
    port = _free_port()
    log = open(tmp_path / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("DRAFT_RAG_API_KEY", None)
    cmd = [sys.executable, "-m", "draft_rag.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stderr=log, stdout=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            assert time.time() < deadline, "server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.5)  # polling another process for readiness
        yield url + "/v1"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def upstream():
    """llama.cpp's server on the built-in SmolLM2 GGUF, answering what it is sent (like vLLM); its base URL."""
    require_llama_cpp()
    with llama_cpp_server(n_ctx=8192) as server:
        yield server.url


@pytest.mark.slow
def test_langchain_chat_openai_wrapped_in_an_lcel_rag_chain(upstream):
    example = _example("langchain_chat_openai")
    chain = example.build_chain(
        upstream, "draft-rag", context_window=8192, ratio=0.3, modules=("bisect", "heapq"), top_k=4, max_tokens=16
    )
    out = chain.invoke(QUESTION)
    answer, stats = out["answer"], out["answer"].response_metadata["draft_rag"]
    assert out["question"] == QUESTION and answer.content.strip()
    assert stats["compressed_tokens"] < stats["original_tokens"] * 0.6
    # the server read the compressed prompt: well under what the uncompressed context alone would take
    assert answer.usage_metadata["input_tokens"] < stats["original_tokens"] * 0.6


@pytest.mark.slow
def test_llamaindex_openai_like_in_a_query_and_a_chat_engine(upstream, draft_events):
    example = _example("llamaindex_openai_like")
    llm = example.build_llm(upstream, "draft-rag", context_window=8192, ratio=0.3, max_tokens=16)
    query_engine, chat_engine = example.build_engines(example.build_index(("bisect", "heapq")), llm, top_k=4, top_n=2)
    response = query_engine.query(QUESTION)
    assert str(response).strip() and 1 <= len(response.source_nodes) <= 2
    for n in response.source_nodes:  # the draft's score, the retriever's kept in metadata
        assert isinstance(n.score, float) and n.node.metadata["retrieval_score"] >= 0.2
    assert str(chat_engine.chat(QUESTION)).strip()
    assert len(draft_events) >= 2  # the query engine's and the chat engine's prompts were compressed
    assert all(e.compressed_tokens < e.original_tokens for e in draft_events)


@pytest.mark.slow
def test_openai_client_through_the_compressing_proxy(upstream, tmp_path):
    from openai import OpenAI

    example = _example("openai_proxy")
    msgs = example.messages()
    direct = OpenAI(base_url=upstream, api_key="unused", max_retries=0)
    plain = direct.chat.completions.create(model="draft-rag", messages=msgs, max_tokens=4, temperature=0)
    with _serve(tmp_path, "--upstream", upstream, "--ratio", "0.25") as proxy:
        client = OpenAI(base_url=proxy, api_key="unused", max_retries=0)
        reply = example.ask(client, "draft-rag", msgs, ratio=0.25, max_tokens=16)
        assert reply.choices[0].message.content.strip()
        assert reply.draft_rag["compressed_tokens"] < reply.draft_rag["original_tokens"]
        assert reply.usage.prompt_tokens < plain.usage.prompt_tokens / 2  # the upstream read the compressed prompt
        assert example.stream(client, "draft-rag", msgs, max_tokens=8).strip()


def test_gpu_recipe_compiles_and_names_real_parameters():
    source = (EXAMPLES / "gpu_qwen.py").read_text()
    compile(source, "gpu_qwen.py", "exec")
    assert bad_keywords(source) == []
    assert '"device_map": "auto"' in source and "bfloat16" in source and "flash_attention_2" in source


@pytest.mark.slow
def test_gpu_recipe_settings_run_on_cpu():
    """Each (method, budget) the GPU recipe runs is accepted by the engine: on SmolLM2, a short context, CPU."""
    from draft_rag import DraftEngine

    example = _example("gpu_qwen")
    engine = DraftEngine("smollm2-135m-instruct")
    context = example.long_context(engine.target.tokenizer, 600)
    assert example.NEEDLE.strip() in context
    for method, budget in example.RUNS:
        out = engine.generate(context, question=example.QUESTION, method=method, max_new_tokens=4, **budget)
        assert out.stats.prompt_tokens > 0, method


@pytest.mark.slow
def test_offline_examples_run(monkeypatch, capsys):
    """quickstart.py as a script; langchain_rag.py's chain and langchain_agent.py's agent on two modules' pydoc."""
    import runpy

    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    assert "needle kept: True" in capsys.readouterr().out
    rag = _example("langchain_rag")
    few = rag.passages(("bisect", "heapq"))
    monkeypatch.setattr(rag, "passages", lambda: few)
    out = rag.build_chain(top_k=4, top_n=2, max_tokens=12).invoke(QUESTION)
    assert out["answer"].content.strip() and len(out["docs"]) == 2
    agent = _example("langchain_agent")
    monkeypatch.setattr(agent, "passages", lambda: few)
    state = agent.build_agent(top_k=4, max_tokens=12).invoke({"messages": [{"role": "user", "content": QUESTION}]})
    stats = state["messages"][-1].response_metadata["draft_rag"]
    assert state["messages"][-1].text.strip() and stats["compressed_tokens"] < stats["original_tokens"]


def test_every_example_is_exercised_by_a_test():
    tested = {p.stem for p in EXAMPLES.glob("*.py")}
    here = Path(__file__).read_text()
    others = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in tested:
        assert f'"{name}"' in here or f"{name}.py" in others, name
