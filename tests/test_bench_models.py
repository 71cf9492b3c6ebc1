"""Bench parts that need real models or the LongLLMLingua side environment (slow)."""

import json

import pytest
from conftest import tiny_model

from draft_rag import DraftEngine, SpecPCConfig
from draft_rag.bench import evaluate
from draft_rag.bench.chunks import make_queries, run_chunk_bench
from draft_rag.bench.data import parse_record
from draft_rag.bench.llmlingua import compat_model_dir, env_dir, split_documents
from draft_rag.bench.tasks import generate


def test_compat_model_dir_rewrites_for_transformers_4_44(tiny_dir, tmp_path):
    out = compat_model_dir(str(tiny_dir), tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert "rope_parameters" not in config and config["rope_theta"] == 10000.0
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tok_cfg["clean_up_tokenization_spaces"] is False
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    assert (out / "model.safetensors").is_symlink()


def test_split_documents_keeps_every_line():
    text = "\n".join(f"line {i} " + "x" * 50 for i in range(40))
    docs = split_documents(text, max_chars=300)
    assert len(docs) > 5 and "\n".join(docs) == text and all(len(d) <= 300 for d in docs)


def test_chunk_bench_rankers_on_tiny_engine():
    engine = DraftEngine(target=tiny_model("llama"), specpc=SpecPCConfig(starting_layer_index=0))
    queries = make_queries(2, k=4, seed=5)
    assert all(sum(c["id"] == q["gold"] for c in q["chunks"]) == 1 for q in queries)
    rows = run_chunk_bench(
        engine, queries, rankers=("draft", "bm25"), keeps=(1 / 2, 1 / 4), max_new_tokens=2, progress=False
    )
    assert [(r["ranker"], r["keep"]) for r in rows] == [("draft", 0.5), ("draft", 0.25), ("bm25", 0.5), ("bm25", 0.25)]
    assert all(0 <= r["recall"] <= 100 and 0 <= r["score"] <= 100 and r["n"] == 2 for r in rows)
    assert rows[2]["recall"] >= rows[3]["recall"]  # keeping more chunks never loses the gold one
    with pytest.raises(ValueError, match="ranker must be one of"):
        run_chunk_bench(engine, queries, rankers=("nope",), progress=False)


@pytest.mark.slow
def test_minilm_ranker_finds_gold_chunks():
    engine = DraftEngine(target=tiny_model("llama"))
    rows = run_chunk_bench(
        engine, make_queries(4, k=4, seed=2), rankers=("minilm",), keeps=(1 / 2,), answer=False, progress=False
    )
    assert rows[0]["recall"] >= 50 and rows[0]["score"] is None


@pytest.mark.slow
def test_real_smollm_full_and_specpc_on_needles(smollm):
    engine = DraftEngine(target=smollm)
    recs = [parse_record(r) for r in generate("niah_single", smollm.tokenizer, 700, 2, seed=7)]
    full = evaluate(engine, recs, "full", progress=False)
    pc = evaluate(engine, recs, "specpc", ratio=0.5, progress=False)
    assert full.score == 100.0, [r["prediction"] for r in full.records]
    assert pc.avg_kept_tokens < 0.6 * pc.avg_input_tokens and pc.seconds["draft"] > 0


@pytest.mark.slow
def test_real_llmlingua_worker_compresses_and_ranks(tiny_dir):
    from conftest import needs_setup, tiny_tokenizer

    ready = (env_dir() / ".draft-rag-ready").exists()
    needs_setup(
        "llmlingua", ready, "build its side env with `python -m draft_rag.bench.llmlingua` (setup.sh --test does)"
    )

    from draft_rag.bench.llmlingua import LLMLinguaClient

    docs = [
        "The grass is green. The sky is blue. " * 3,
        "The special magic number for ocean is 4728163.",
        "Here we go. There and back again. " * 3,
    ]
    with LLMLinguaClient(str(tiny_dir), tiny_tokenizer()) as client:
        scores = client.rank(docs, "What is the special magic number for ocean?")
        assert sorted(scores) == [1.0, 2.0, 3.0]
        text = client.compress(docs, question="What is the special magic number for ocean?", budget=40)
        assert text and len(text) < sum(len(d) for d in docs)
        # spaces before punctuation in whichever document ranks first: llmlingua asserts that decode gives it back
        spaced = [d.replace(".", " .") + " , as noted !" for d in docs]
        assert client.compress(spaced, question="What is the special magic number for ocean?", budget=40)
