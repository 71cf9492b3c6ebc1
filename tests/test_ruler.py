"""RULER's 13 tasks: valid RULER records, answers in the context, RULER's lengths, format of NVIDIA's generator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import tiny_tokenizer

from draft_rag.bench.data import load_jsonl, parse_record, split_input
from draft_rag.bench.ruler import GEN_TOKENS
from draft_rag.bench.tasks import RULER_13, generate
from draft_rag.prompt import count_tokens

NVIDIA = Path(__file__).parent / "data" / "ruler_nvidia_samples.jsonl"  # made by NVIDIA's RULER generator
FAMILY = {"vt": "vt", "cwe": "cwe", "fwe": "fwe", "qa_1": "qa", "qa_2": "qa"}


def test_the_thirteen_tasks():
    assert RULER_13 == (
        "niah_single_1",
        "niah_single_2",
        "niah_single_3",
        "niah_multikey_1",
        "niah_multikey_2",
        "niah_multikey_3",
        "niah_multivalue",
        "niah_multiquery",
        "vt",
        "cwe",
        "fwe",
        "qa_1",
        "qa_2",
    )


@pytest.mark.parametrize("task", RULER_13)
def test_records_are_valid_ruler_with_answers_in_the_context(task):
    tok, length = tiny_tokenizer(), 3000 if task == "cwe" else 1600  # the tiny BPE spends many tokens on words
    recs = generate(task, tok, length, 2, seed=3)
    assert recs[:1] == generate(task, tok, length, 1, seed=3) and recs[0]["outputs"] != recs[1]["outputs"]
    gen = GEN_TOKENS[FAMILY.get(task, "niah")]
    for i, r in enumerate(recs):
        assert set(r) - {"follow_ups"} == {"index", "input", "outputs", "answer_prefix", "length", "tokens_to_generate"}
        rec = parse_record(r)
        assert rec.index == i and rec.max_new_tokens == gen and rec.answer_prefix.startswith(" ")
        # RULER's length: input + answer prefix + the answer's tokens, within the requested length
        assert r["length"] == count_tokens(tok, r["input"] + r["answer_prefix"]) + gen <= length
        assert r["length"] > 0.8 * length or task.startswith("qa")  # filled (qa: whole passages only)
        instruction, context, question = split_input(r["input"])
        assert question and all(o in context for o in r["outputs"])
        assert instruction or task == "fwe"  # RULER's fwe puts its instruction on the context's line
        assert all(o not in question + rec.answer_prefix for o in r["outputs"])
    with pytest.raises(ValueError, match="too small"):
        generate(task, tok, 100, 1)


def test_answer_counts_follow_ruler():
    tok = tiny_tokenizer()
    count = {t: len(generate(t, tok, 3000 if t == "cwe" else 1600, 1)[0]["outputs"]) for t in RULER_13}
    assert count == {
        **{t: 1 for t in RULER_13 if t.startswith("niah")},
        "niah_multivalue": 4,
        "niah_multiquery": 4,
        "vt": 5,
        "cwe": 10,
        "fwe": 3,
        "qa_1": 1,
        "qa_2": 2,
    }
    multikey = generate("niah_multikey_2", tok, 1600, 1)[0]["input"]
    assert multikey.count("One of the special magic numbers for") > 10  # a haystack of look-alike needles
    assert "Python Library Documentation" in generate("niah_single_2", tok, 1600, 1)[0]["input"]  # real-text essay


def _shape(line: str) -> str:
    """A line with its random parts (uuids, keys, numbers, variable names, words) replaced by placeholders."""
    line = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "U", line)
    line = re.sub(r"\b[a-z]+-[a-z]+\b", "K", line)
    line = re.sub(r"\b\d+\b", "N", line)
    return re.sub(r"\b[A-Z]{3,5}\b", "V", line)


@pytest.mark.parametrize("task", ["niah_single_1", "vt"])
def test_format_matches_nvidia_generator(task):
    """Every kind of line NVIDIA's generator writes appears in ours with the same wording, and vice versa."""
    theirs = next(r for r in load_jsonl(NVIDIA) if r.input.startswith("Memorize") == (task == "vt"))
    ours = parse_record(generate(task, tiny_tokenizer(), 1600, 1)[0])
    assert _shape(ours.answer_prefix) == _shape(theirs.answer_prefix)
    assert {_shape(x) for x in ours.input.split("\n")} == {_shape(x) for x in theirs.input.split("\n")}
    assert len(ours.outputs) == len(theirs.outputs)


def test_haystacks_with_several_keys_carry_follow_up_questions():
    tok = tiny_tokenizer()
    query = generate("niah_multiquery", tok, 1600, 1)[0]
    multikey = generate("niah_multikey_1", tok, 1600, 1)[0]
    assert [len(r.get("follow_ups", ())) for r in (query, multikey)] == [4, 3]  # each queried key; the other keys
    assert all("follow_ups" not in generate(t, tok, 1600, 1)[0] for t in ("niah_single_1", "niah_multivalue"))
    asked = {v for f in query["follow_ups"] for v in f["outputs"]}
    assert asked == set(query["outputs"])  # the four keys of the joint question, one at a time
    for f in query["follow_ups"] + multikey["follow_ups"]:
        key = re.search(r"for (\S+) mentioned", f["question"]).group(1)
        assert f["question"] == f"What is the special magic number for {key} mentioned in the provided text?"
        assert f["answer_prefix"] == f" The special magic number for {key} mentioned in the provided text is"
        assert (
            f"One of the special magic numbers for {key} is: {f['outputs'][0]}." in multikey["input"] + query["input"]
        )
    assert not set(multikey["outputs"]) & {v for f in multikey["follow_ups"] for v in f["outputs"]}
