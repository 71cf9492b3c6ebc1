"""Target decoding: greedy equals transformers' generate, streaming, stop strings, sampling, errors."""

import pytest
import torch
from conftest import ARCHS, tiny_model

from draft_rag import DraftEngine, GenerationOptions, GenerationStats, PromptInput
from draft_rag.generation import Sampling, stream
from draft_rag.prompt import encode


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers_generate(arch):
    lm = tiny_model(arch)
    ids = encode(lm.tokenizer, "The quick brown fox jumps over the lazy dog. " * 5)
    ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[
        0, len(ids) :
    ].tolist()
    info = GenerationStats("full")
    text = "".join(stream(lm.model, lm.tokenizer, ids, Sampling(max_new_tokens=12), stats=info))
    assert text == lm.tokenizer.decode(ref[: info.new_tokens], skip_special_tokens=True)


def test_stream_pieces_join_to_generate_text_and_fill_stats():
    e = DraftEngine(tiny_model("qwen2"), method="full")
    g = e.generate("hello there", max_new_tokens=10)
    gs = e.stream("hello there", max_new_tokens=10)
    pieces = list(gs)
    assert "".join(pieces) == g.text and gs.stats.new_tokens == g.stats.new_tokens
    assert g.stats.prompt_tokens == g.stats.original_tokens > 0 and g.stats.seconds["target"] > 0


def test_stop_string_truncates_and_is_not_emitted():
    e = DraftEngine(tiny_model("llama"), method="full")
    free = e.generate("hello there", max_new_tokens=20).text
    assert len(free) > 4
    stop = free[2:4]
    g = e.generate("hello there", max_new_tokens=20, stop=[stop])
    assert g.text == free[: free.find(stop)] and g.stats.finish_reason == "stop"


def test_seeded_sampling_is_reproducible():
    e = DraftEngine(tiny_model("llama"), method="full")
    a = e.generate("hello", max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=3).text
    b = e.generate("hello", max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=3).text
    assert a == b


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(stop=[""]), "stop"),
        (dict(method="magic"), "method"),
    ],
)
def test_bad_generation_arguments(kwargs, word):
    e = DraftEngine(tiny_model("llama"), method="full")
    with pytest.raises(ValueError, match=word):
        e.generate("hi", **kwargs)


def test_options_object_is_checked_once_and_keywords_override_it():
    e = DraftEngine(tiny_model("llama"), method="full")
    opts = GenerationOptions(max_new_tokens=6, stop="zzz")
    assert opts.stop == ("zzz",) and opts.replace(seed=3).seed == 3 and opts.replace() is opts
    same = e.generate("hello there", options=opts)
    assert same.text == e.generate("hello there", max_new_tokens=6, stop=["zzz"]).text
    longer = e.generate("hello there", options=opts, max_new_tokens=9)
    assert longer.stats.new_tokens == 9 > same.stats.new_tokens == 6
    with pytest.raises(ValueError, match="top_p"):
        GenerationOptions(top_p=2)
    with pytest.raises(ValueError, match="pc_budget"):
        GenerationOptions(pc_budget=10, pc_ratio=0.5)
    with pytest.raises(TypeError, match="max_tokens"):
        e.generate("hello", options=opts, max_tokens=5)  # the name of another API: refused, not ignored
    with pytest.raises(ValueError, match="inside the PromptInput"):
        e.generate(PromptInput("hello"), question="a second question")


def test_compression_only_engine_refuses_to_generate():
    e = DraftEngine(draft=tiny_model("llama"))
    with pytest.raises(ValueError, match="no target"):
        e.generate("hi")


def test_a_stream_may_be_finished_from_another_thread():
    import threading

    e = DraftEngine(tiny_model("llama"), method="full")
    gs = iter(e.stream("hello there", max_new_tokens=6))
    first = next(gs)
    rest = []
    t = threading.Thread(target=lambda: rest.extend(gs))
    t.start()
    t.join()
    assert first + "".join(rest) == e.generate("hello there", max_new_tokens=6).text
