"""draft-rag demo: corpus, chunking, cached MiniLM index, retrieval, answer checks, CLI end to end."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import tiny_config, tiny_tokenizer

from draft_rag.cli import main
from draft_rag.corpus import build_index, chunk_documents, folder_documents, load_embedder, stdlib_documents
from draft_rag.demo import LONG_QUESTION, QUESTIONS, answer_question, check, has_evidence, long_act
from draft_rag.prompt import count_tokens

FACTS = {
    "volcano.md": "# Mount Keldar\n\nMount Keldar is a shield volcano on the island of Ostra. "
    "It last erupted in 1873.\n\n"
    "Its summit crater holds a green acid lake called Vell.",
    "bakery.txt": "The Harlow bakery opens at six in the morning.\n\nIts rye loaf uses a starter named Bramble "
    "that was first fed in 1962.",
    "rivers.md": "The river Tamsk flows north for 412 kilometres before it reaches the Cold Sea.\n\n"
    "Salmon return to the Tamsk every October.",
    "chess.txt": "In the opening, a knight should usually be developed before the queen.\n\n"
    "Castling moves the king two squares towards a rook.",
    "notes.bin": "not a text file",
}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for name, text in FACTS.items():
        (root / ("sub" if name == "chess.txt" else "") / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_folder_documents(folder, tmp_path):
    docs = folder_documents(folder)
    assert [d.source for d in docs] == ["bakery.txt", "rivers.md", "sub/chess.txt", "volcano.md"]
    assert docs[3].text == FACTS["volcano.md"]
    with pytest.raises(FileNotFoundError, match="--corpus"):
        folder_documents(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="--corpus"):
        folder_documents(tmp_path / "empty")


def test_chunks_cover_text_with_ids_and_metadata():
    docs = stdlib_documents(["textwrap", "heapq"])
    chunks = chunk_documents(docs, max_chars=600)
    assert len({c.id for c in chunks}) == len(chunks)
    for doc in docs:
        mine = [c for c in chunks if c.metadata["source"] == doc.source]
        assert [c.metadata["index"] for c in mine] == list(range(len(mine)))
        assert all(
            c.id == f"{doc.source}#{c.metadata['index']}" and c.text.startswith(f"[{doc.source}]\n") for c in mine
        )
        assert all(len(c.text) <= 600 + len(doc.source) + 3 for c in mine)
        joined = "\n".join(c.text for c in mine)
        for line in doc.text.splitlines():  # nothing lost: every line of the source is in some chunk
            assert line.strip() in joined
    with pytest.raises(ValueError, match="max_chars"):
        chunk_documents(docs, max_chars=10)


def test_stdlib_corpus_is_reproducible():
    a, b = stdlib_documents(), stdlib_documents()
    assert [d.text for d in a] == [d.text for d in b]
    assert not any(" at 0x" in d.text for d in a)
    text = {d.source: d.text for d in a}
    assert "width=70" in text["pydoc:textwrap"] and "maxsize=128" in text["pydoc:functools"]


def test_check_answers():
    assert check("The default width is 70.", r"\b70\b") is True
    assert check("It is 170 characters.", r"\b70\b") is False
    assert check("The Mersenne Twister generator", r"mersenne\s*twister") is True
    assert check("anything", None) is None
    assert has_evidence("TextWrapper(width=70, ...)", r"width=70") is True
    assert has_evidence("TextWrapper(...)", r"width=70") is False
    assert has_evidence(None, r"width=70") is None and has_evidence("x", None) is None


def test_long_act_refuses_full_context_and_specpc_fits_the_window(folder, embedder):
    """Retrieval past the target's window: full is refused with the window named, SpecPC (auto) answers."""
    from transformers import AutoModelForCausalLM

    from draft_rag import DraftEngine, SpecPCConfig
    from draft_rag.models import LoadedModel

    model = AutoModelForCausalLM.from_config(tiny_config("llama", max_position_embeddings=256)).eval()
    cfg = SpecPCConfig(starting_layer_index=0, window_size=8)
    engine = DraftEngine(target=LoadedModel(model, tiny_tokenizer(), "tiny-256"), specpc=cfg)
    index = build_index(chunk_documents(folder_documents(folder), max_chars=120), embedder=embedder, progress=False)
    result = long_act(engine, index, tokens=600, max_new_tokens=4)
    full, specpc = result.runs
    assert result.question == LONG_QUESTION[0] and full.original_tokens > 256
    assert full.refused and "256" in full.refused and full.correct is None and full.evidence is None
    assert specpc.refused is None and specpc.prompt_tokens + 4 <= 256 and specpc.answer


def test_chunks_are_placed_best_last_or_in_rank_order(folder, embedder):
    """The top-ranked chunk stands nearest the question (best-last, the default) or first (rank); ``retrieved``
    lists rank order either way, and nothing retrieved is left out of the prompt."""
    from transformers import AutoModelForCausalLM

    from draft_rag import DraftEngine
    from draft_rag.models import LoadedModel

    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    engine = DraftEngine(target=LoadedModel(model, tiny_tokenizer(), "tiny"))
    index = build_index(chunk_documents(folder_documents(folder), max_chars=120), embedder=embedder, progress=False)
    question = "In which year did Mount Keldar last erupt?"
    seen = {}
    stream = engine.stream

    def spy(**kwargs):
        seen["ids"] = [c.id for c in kwargs["chunks"]]
        return stream(**kwargs)

    engine.stream = spy
    for order in ("best-last", "rank"):
        r = answer_question(engine, index, question, None, ["full"], context_tokens=200, max_new_tokens=2, order=order)
        assert r.retrieved[0] == "volcano.md#0" and len(r.retrieved) > 1
        assert seen["ids"] == (r.retrieved[::-1] if order == "best-last" else r.retrieved)
    with pytest.raises(ValueError, match="order must be one of"):
        answer_question(engine, index, question, None, ["full"], context_tokens=60, order="random")


def test_index_is_cached_and_retrieves(folder, tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("DRAFT_RAG_CACHE", str(tmp_path / "cache"))
    chunks = chunk_documents(folder_documents(folder), max_chars=200)
    first = build_index(chunks, embedder=embedder, progress=False)
    again = build_index(chunks, embedder=embedder, progress=False)
    assert not first.cached and again.cached
    assert np.array_equal(first.embeddings, again.embeddings)
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, atol=1e-4)
    changed = chunks[:-1] + [type(chunks[-1])(chunks[-1].text + " More.", chunks[-1].id, chunks[-1].metadata)]
    assert not build_index(changed, embedder=embedder, progress=False).cached
    best, _ = first.search("When did the volcano last erupt?", k=1)[0]
    assert best.metadata["source"] == "volcano.md"
    best, _ = first.search("Where do salmon return each autumn?", k=1)[0]
    assert best.metadata["source"] == "rivers.md"
    tok = tiny_tokenizer()
    got = first.retrieve("Which lake is in the crater?", tok, max_tokens=60)
    assert got[0].metadata["source"] == "volcano.md" and "retrieval_score" in got[0].metadata
    assert len(got) == 1 or sum(count_tokens(tok, c.text) for c in got) <= 60
    assert len(first.retrieve("Which lake is in the crater?", tok, max_tokens=1)) == 1  # top chunk always
    with pytest.raises(ValueError, match="max_tokens"):
        first.retrieve("x", tok, max_tokens=0)
    with pytest.raises(ValueError, match="query"):
        first.search("  ")


def test_cli_rejects_bad_arguments(capsys, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["demo", "--methods", "full", "nope"]) == 2
    assert "--methods" in caplog.text and "nope" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert main(["demo", "--methods", "full", "--html", "x.html"]) == 2
    assert "--html" in caplog.text
    with pytest.raises(SystemExit):
        main(["demo", "--context-tokens", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_builtin_questions_are_answerable_from_retrieval(smollm):
    """Each built-in question's evidence is inside the ~2000 tokens the demo retrieves for it."""
    import re

    index = build_index(chunk_documents(stdlib_documents()), progress=False)
    assert len(QUESTIONS) >= 8
    for question, expected, evidence in QUESTIONS:
        chunks = index.retrieve(question, smollm.tokenizer, 2000)
        assert sum(count_tokens(smollm.tokenizer, c.text) for c in chunks) <= 2000
        found = [m for c in chunks if (m := re.search(evidence, c.text))]
        assert found and check(found[0].group(0), expected), question  # the evidence holds the answer


@pytest.mark.slow
def test_demo_end_to_end(folder, tmp_path, capsys, smollm):
    out_json, out_html = tmp_path / "run.json", tmp_path / "kept.html"
    argv = [
        "demo",
        "--corpus",
        str(folder),
        "--question",
        "In which year did Mount Keldar last erupt?",
        "--context-tokens",
        "400",
        "--chunk-chars",
        "200",
        "--max-new-tokens",
        "12",
        "--ratio",
        "0.5",
        "--methods",
        "full",
        "specpc",
        "speckv",
        "--json",
        str(out_json),
        "--html",
        str(out_html),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Q1. In which year did Mount Keldar last erupt?" in printed and "summary |" in printed
    result = json.loads(out_json.read_text())[0]
    methods = [r["method"] for r in result["runs"]]
    assert methods == ["full", "specpc", "speckv"]
    assert result["retrieved"][0] == "volcano.md#0"
    runs = {r["method"]: r for r in result["runs"]}
    assert runs["specpc"]["original_tokens"] == runs["full"]["original_tokens"] == runs["full"]["prompt_tokens"]
    assert runs["specpc"]["prompt_tokens"] < runs["full"]["prompt_tokens"]
    assert {cid for cid, _, _ in runs["specpc"]["kept_chunks"]} == set(result["retrieved"])
    assert all(r["answer"] and r["seconds"]["total"] > 0 for r in result["runs"])
    assert 0 < runs["speckv"]["kv_bytes"] < runs["speckv"]["kv_bytes_full"]
    page = out_html.read_text()
    assert "In which year did Mount Keldar last erupt?" in page and 'data-chunk="volcano.md#0"' in page
    assert "kept: " in printed and "tokens |" in printed
