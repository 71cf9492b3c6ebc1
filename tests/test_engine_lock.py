"""The engine lock is held per step: abandoned or interleaved streams never block another call."""

from __future__ import annotations

import gc
import threading

import pytest
from conftest import CORPUS, tiny_model

from draft_rag import DraftEngine, SpecPCConfig

QUESTION = "What is the special magic number?"


@pytest.fixture(scope="module")
def engine():
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
    return DraftEngine(target=tiny_model("llama"), specpc=cfg)


def _run_in_thread(fn, timeout=60.0):
    """Run ``fn`` with a time limit so a deadlock fails the test instead of hanging it."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "call did not finish: engine lock still held"
    return out["value"]


def test_broken_stream_then_call_on_same_thread(engine):
    def body():
        for _ in engine.stream(CORPUS[:400], question=QUESTION, max_new_tokens=8):
            break
        return engine.compress(CORPUS[:400], question=QUESTION, budget=20).text

    assert _run_in_thread(body)


def test_live_stream_then_call_on_same_thread(engine):
    def body():
        gs = iter(engine.stream(CORPUS[:400], question=QUESTION, max_new_tokens=6, method="full"))
        first = next(gs, "")
        other = engine.generate(CORPUS[:400], question=QUESTION, max_new_tokens=6, method="full").text
        rest = first + "".join(gs)
        return rest, other

    rest, other = _run_in_thread(body)
    assert rest == other


def test_never_iterated_and_collected_stream(engine):
    def body():
        engine.stream(CORPUS[:400], question=QUESTION, max_new_tokens=4)
        gs = iter(engine.stream(CORPUS[:400], question=QUESTION, max_new_tokens=4))
        next(gs, None)
        del gs
        gc.collect()
        return engine.score_chunks(["a b c", "d e f"], question=QUESTION)

    assert len(_run_in_thread(body)) == 2


def test_interleaved_streams_equal_sequential(engine):
    kw = dict(question=QUESTION, max_new_tokens=8)
    prompts = [CORPUS[:300], CORPUS[100:500]]
    expected = [engine.generate(p, **kw).text for p in prompts]
    a, b = (iter(engine.stream(p, **kw)) for p in prompts)
    got = ["", ""]
    for _ in range(20):
        got[0] += next(a, "")
        got[1] += next(b, "")
    assert got == expected
