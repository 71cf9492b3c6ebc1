"""Property-based tests of every public entry point on the tiny models (hypothesis).

Inputs: random unicode (control characters, RTL, emoji, escaped surrogates), special-token strings of five
model families, empty / whitespace / long texts, budgets 0..2N and invalid ratios, random chunk, metadata and
id sets. Invariants: only the documented exception (``ValueError``, pydantic's included) for bad input; the
budget holds; protected text is kept verbatim; kept text is a subsequence of the input; ids, metadata and order
are preserved; the caller's objects are unchanged; the same input gives the same output.

``HYPOTHESIS_PROFILE=thorough`` runs 1000 examples per entry point instead of 200.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import tempfile
from unittest import mock

from conftest import tiny_model
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.engine import METHODS
from draft_rag.units import render

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=1000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CFG = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=5, neighbor_tokens=4)
ENGINE = DraftEngine(target=tiny_model("llama"), specpc=CFG)

SPECIAL_TOKENS = [  # ChatML (Qwen, SmolLM), Llama 3, Llama 2 / Mistral, Gemma, Phi-3, plus the tiny tokenizer's
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<pad>",
    "<unk>",
]
ODD = [
    "\u202e",
    "\u200f",
    "مرحبا بالعالم",
    "שלום עולם",
    "🙂🚀👩‍👩‍👧",
    "\x00",
    "\x1b[31m",
    "\r\n\t",
    "\x7f",
    "\ufeff",
    "\u200b",
    "\u0301",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    " ",
]
SENTENCE = "The special magic number for ocean is 4728163. Grass is green and the sky is blue. "

piece = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.sampled_from(SPECIAL_TOKENS),
    st.sampled_from(ODD),
    st.characters(categories=["Cs"]).map(lambda c: c.encode("utf-16", "surrogatepass").hex()),  # escaped
    st.just(SENTENCE),
)
short_text = st.lists(piece, max_size=8).map("".join)
long_text = st.integers(5, 25).map(lambda n: SENTENCE * n)
text = st.one_of(short_text, short_text, long_text, st.sampled_from(["", " ", "\n\n\t "]))
nonblank = short_text.map(lambda s: s if s.strip() else s + "Why?")
question = st.one_of(st.none(), nonblank)
ratio = st.one_of(st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.sampled_from([0.0, -0.5, 1.5, math.nan, math.inf]))
ids = st.one_of(st.none(), st.text(max_size=6), st.integers())
metadata = st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=3)


def budget_and_ratio(draw, n: int):
    """(budget, ratio): a budget in 0..2n or "adaptive", a ratio (some invalid), both, or neither."""
    kind = draw(st.sampled_from(["budget", "budget", "budget", "ratio", "ratio", "none", "none", "both", "adaptive"]))
    b = draw(st.integers(0, max(2, 2 * n))) if kind in ("budget", "both") else None
    b = "adaptive" if kind == "adaptive" else b
    r = draw(ratio) if kind in ("ratio", "both") else None
    return b, r


def draft_len(s: str) -> int:
    return len(ENGINE.draft.tokenizer(s, add_special_tokens=False)["input_ids"])


def valid_budget(b, r) -> bool:
    fixed = b is None or b == "adaptive" or b >= 1
    return not (b is not None and r is not None) and fixed and (r is None or 0 < r <= 1)


def documented(exc: ValueError, *words: str) -> None:
    """The error is one the entry point documents (its message names the bad argument or condition)."""
    words = words + ("budget", "ratio", "nothing to compress")
    assert any(w in str(exc) for w in words), f"undocumented error: {exc!r}"
    event(f"rejected: {str(exc).splitlines()[-1][:40] if isinstance(exc, ValueError) else exc}")


def check_subsequence(result: str, original: str, spans) -> None:
    """``result`` is ``spans`` of ``original`` in order, gap-marked where they are not adjacent."""
    assert result == render(original, spans)
    assert all(0 <= s < e <= len(original) for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# -- DraftEngine ---------------------------------------------------------------------------------
@given(st.data())
def test_engine_compress(data):
    use_chunks = data.draw(st.booleans())
    chunks = data.draw(st.lists(st.tuples(text, ids, metadata), max_size=5)) if use_chunks else None
    prompt = None if use_chunks else data.draw(text)
    q, instruction = data.draw(question), data.draw(st.one_of(st.none(), short_text))
    b, r = budget_and_ratio(data.draw, draft_len(prompt or "".join(c[0] for c in chunks or [])))
    args = dict(
        question=q,
        instruction=instruction,
        budget=b,
        ratio=r,
        chunks=[{"text": t, "id": i, "metadata": m} for t, i, m in chunks] if use_chunks else None,
    )
    before = copy.deepcopy(args)
    try:
        cp = ENGINE.compress(prompt, **args)
    except ValueError as exc:
        documented(exc)
        return
    assert valid_budget(b, r)
    assert args == before
    check_subsequence(cp.text, cp.original_text, cp.kept_spans)
    if isinstance(b, int):
        assert cp.draft_kept_tokens <= b
    if q:
        assert cp.text.endswith(q)
    if instruction:
        assert cp.text.startswith(instruction)
    if use_chunks:
        assert [(c.id, c.metadata, c.original) for c in cp.chunks] == [(i, m, t) for t, i, m in chunks]
        for c in cp.chunks:
            check_subsequence(c.text, c.original, c.kept_spans)
    assert ENGINE.compress(prompt, **args).text == cp.text


@given(st.lists(text, max_size=5), question, st.sampled_from(["max", "mean"]))
def test_engine_score_chunks(chunks, q, reduce):
    try:
        scores = ENGINE.score_chunks(chunks, question=q, reduce=reduce)
    except ValueError as exc:
        documented(exc)
        assert not q and not any(chunks)
        return
    assert len(scores) == len(chunks) and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert all(s == 0.0 for s, c in zip(scores, chunks) if not c)
    assert ENGINE.score_chunks(chunks, question=q, reduce=reduce) == scores


@given(st.data())
def test_engine_generate(data):
    prompt, q = data.draw(text), data.draw(question)
    method = data.draw(st.sampled_from(METHODS))
    b, r = budget_and_ratio(data.draw, draft_len(prompt))
    n = data.draw(st.integers(1, 2))
    kw = dict(question=q, method=method, budget=b, ratio=r, max_new_tokens=n, pc_budget=None)
    try:
        g = ENGINE.generate(prompt, **kw)
    except ValueError as exc:
        documented(exc)
        return
    assert g.stats.new_tokens <= n and g.stats.finish_reason in ("stop", "length")
    if method == "specpc" and isinstance(b, int):
        assert g.compressed.draft_kept_tokens <= b
        if q:
            assert g.compressed.text.endswith(q)
    if method in ("speckv", "snapkv") and isinstance(b, int):
        assert max(g.stats.kv_entries) <= max(b, g.stats.prompt_tokens)
    assert ENGINE.generate(prompt, **kw).text == g.text


# -- CLI -----------------------------------------------------------------------------------------
@given(
    text,
    question,
    st.one_of(st.integers(-2, 400).map(str), st.sampled_from(["", "x", "1e3", "nan", "0.5"])),
    st.booleans(),
)
def test_cli_compress(tiny_dir, prompt, q, budget, stdin):
    from draft_rag.cli import main
    from draft_rag.prompt import build_segments

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(prompt)
    argv = [
        "compress",
        "--draft",
        tiny_dir,
        "--budget",
        budget,
        "--json",
        "--starting-layer-index",
        "1",
        "--window-size",
        "8",
        "--kernel-size",
        "5",
        "--neighbor-tokens",
        "4",
    ] + ([f"--question={q}"] if q else [])
    out, err = io.StringIO(), io.StringIO()
    logged = logging.StreamHandler(err)
    logging.getLogger("draft_rag").addHandler(logged)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if stdin:
                with open(f.name, "rb") as raw, mock.patch("sys.stdin", io.TextIOWrapper(io.BytesIO(raw.read()))):
                    code = main(argv + ["-"])
            else:
                code = main(argv + [f.name])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    finally:
        os.unlink(f.name)
        logging.getLogger("draft_rag").removeHandler(logged)
    assert code in (0, 2), err.getvalue()
    if code == 2:
        lines = [line for line in err.getvalue().splitlines() if "it/s]" not in line]  # model-loading bar
        assert len(lines) == 1 and "Traceback" not in lines[0], err.getvalue()
        return
    result = json.loads(out.getvalue())
    original = "".join(s.text for s in build_segments(prompt, question=q)[0])
    check_subsequence(result["text"], original, result["kept_spans"])
    assert result["text"].endswith(q or "")


# -- LangChain -----------------------------------------------------------------------------------
@given(st.data())
def test_langchain_chat_model(data):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from langchain_draft_rag import ChatDraftCompressed

    settings_ = dict(
        temperature=0.0,
        top_p=data.draw(st.sampled_from([1.0, 0.9])),
        top_k=data.draw(st.sampled_from([0, 5])),
        seed=0,
        max_tokens=data.draw(st.integers(1, 2)),
    )
    broken = data.draw(
        st.sampled_from(
            [
                ("temperature", -1.0),
                ("temperature", math.nan),
                ("temperature", math.inf),
                ("top_p", 0.0),
                ("top_p", 5.0),
                ("top_p", math.nan),
                ("top_k", -3),
                ("max_tokens", 0),
            ]
        )
        | st.none()
        | st.none()
        | st.none()
    )
    if broken:
        settings_[broken[0]] = broken[1]
    b, r = budget_and_ratio(data.draw, 200)
    kinds = st.sampled_from([SystemMessage, HumanMessage, AIMessage])
    messages = [k(content=t) for k, t in data.draw(st.lists(st.tuples(kinds, text), min_size=1, max_size=5))]
    before = copy.deepcopy(messages)
    try:
        chat = ChatDraftCompressed(target=ENGINE.target, specpc=CFG, budget=b, ratio=r, **settings_)
    except ValueError as exc:
        assert not valid_budget(b, r) or (broken and broken[0] in str(exc)), exc
        event("rejected at construction")
        return
    assert not broken
    try:
        out = chat.invoke(messages)
    except ValueError as exc:
        documented(exc, "message")  # nothing to answer, or a budget below the protected messages
        return
    assert messages == before
    assert isinstance(out.content, str) and out.usage_metadata["output_tokens"] <= settings_["max_tokens"]
    assert chat.invoke(messages).content == out.content
    event("answered")


@given(st.data())
def test_langchain_document_compressor(data):
    from langchain_core.documents import Document

    from langchain_draft_rag import DraftDocumentCompressor

    docs = [
        Document(page_content=t, metadata={**m, "n": i}, id=d)
        for i, (t, d, m) in enumerate(
            data.draw(st.lists(st.tuples(text, st.one_of(st.none(), st.text(max_size=4)), metadata), max_size=5))
        )
    ]
    b, r = budget_and_ratio(data.draw, 200)
    kw = dict(
        budget=b,
        ratio=r,
        top_n=data.draw(st.one_of(st.none(), st.integers(-1, 4))),
        threshold=data.draw(st.one_of(st.none(), st.floats(allow_nan=True))),
        compress_tokens=data.draw(st.booleans()),
    )
    q = data.draw(short_text)
    before = copy.deepcopy(docs)
    try:
        compressor = DraftDocumentCompressor(draft=ENGINE.draft, specpc=CFG, **kw)
        out = compressor.compress_documents(docs, q)
    except ValueError as exc:
        documented(exc, "top_n", "threshold", "query", "compress_tokens")
        return
    assert docs == before
    positions = [d.metadata["n"] for d in out]
    assert positions == sorted(positions)
    for d in out:
        orig = docs[d.metadata["n"]]
        assert d.id == orig.id and {k: d.metadata[k] for k in orig.metadata} == orig.metadata
        check_subsequence(d.page_content, orig.page_content, d.metadata["draft_rag_kept_spans"])
    assert compressor.compress_documents(docs, q) == out


# -- LlamaIndex ----------------------------------------------------------------------------------
@given(st.data())
def test_llamaindex_postprocessor(data):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

    rows = data.draw(st.lists(st.tuples(text, metadata, st.one_of(st.none(), st.floats(0, 1))), max_size=5))
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata=m), score=s) for i, (t, m, s) in enumerate(rows)]
    b, r = budget_and_ratio(data.draw, 200)
    kw = dict(
        budget=b,
        ratio=r,
        top_n=data.draw(st.one_of(st.none(), st.integers(-1, 4))),
        compress_tokens=data.draw(st.booleans()),
        sort_by_score=data.draw(st.booleans()),
    )
    q = data.draw(nonblank)
    before = [(n.node.node_id, n.node.get_content(), dict(n.node.metadata), n.score) for n in nodes]
    try:
        pp = DraftNodePostprocessor(engine=ENGINE, **kw)
        out = pp.postprocess_nodes(nodes, QueryBundle(q))
    except ValueError as exc:
        documented(exc, "top_n", "compress_tokens")
        return
    assert [(n.node.node_id, n.node.get_content(), dict(n.node.metadata), n.score) for n in nodes] == before
    positions = [int(o.node.node_id[1:]) for o in out]
    if not kw["sort_by_score"]:
        assert positions == sorted(positions)
    for o in out:
        i = int(o.node.node_id[1:])
        orig_meta, orig_score = before[i][2], before[i][3]
        assert {k: o.node.metadata[k] for k in orig_meta} == orig_meta
        assert o.node.metadata["retrieval_score"] == orig_score
        spans = o.node.metadata.get("draft_rag_kept_spans", [[0, len(before[i][1])]] if before[i][1] else [])
        check_subsequence(o.node.get_content(), before[i][1], spans)
    again = pp.postprocess_nodes(nodes, QueryBundle(q))
    assert [(o.node.node_id, o.score, o.node.get_content()) for o in again] == [
        (o.node.node_id, o.score, o.node.get_content()) for o in out
    ]


@given(st.data())
def test_llamaindex_llm(data):
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from llama_index.llms.draft_rag import DraftCompressedLLM

    b, r = budget_and_ratio(data.draw, 200)
    n = data.draw(st.integers(1, 2))
    temperature = data.draw(st.sampled_from([0.0, 0.0, 0.0, 0.0, -1.0, math.nan]))
    method = data.draw(st.sampled_from(METHODS))
    try:
        llm = DraftCompressedLLM(
            engine=ENGINE,
            target=ENGINE.target,
            method=method,
            budget=b,
            ratio=r,
            max_new_tokens=n,
            temperature=temperature,
            specpc=CFG,
        )
    except ValueError as exc:
        assert not valid_budget(b, r) or (temperature != 0.0 and "temperature" in str(exc)), exc
        event("rejected at construction")
        return
    assert temperature == 0.0
    as_chat = data.draw(st.booleans())
    roles = st.sampled_from([MessageRole.SYSTEM, MessageRole.USER, MessageRole.ASSISTANT])
    messages = [ChatMessage(role=k, content=t) for k, t in data.draw(st.lists(st.tuples(roles, text), max_size=4))]
    prompt = data.draw(text)
    try:
        out = llm.chat(messages) if as_chat else llm.complete(prompt)
    except ValueError as exc:
        documented(exc, "messages")
        return
    raw = out.raw
    assert raw["usage"]["completion_tokens"] <= n
    again = llm.chat(messages) if as_chat else llm.complete(prompt)
    assert str(again) == str(out)
    event("answered")
