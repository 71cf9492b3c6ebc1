"""SpecPC on the real SmolLM2-135M-Instruct: a ~2k-token needle prompt compressed to 512 tokens."""

import pytest
from conftest import needle_prompt

from draft_rag import DraftEngine, load_model
from draft_rag.prompt import count_tokens

pytestmark = pytest.mark.slow
NEEDLE = "The special magic number for ocean is 4728163."


@pytest.fixture(scope="module")
def engine(smollm):
    return DraftEngine(smollm)


def test_needle_survives_compression_to_512_tokens(engine):
    text, question, _ = needle_prompt(85, position=0.4)
    cp = engine.compress(text, question=question, budget=512)
    assert cp.draft_original_tokens > 2000 and 480 <= cp.draft_kept_tokens <= 512  # whole sentences: at most the budget
    assert NEEDLE in cp.text and cp.text.endswith(question)
    assert cp.compressed_tokens <= 520  # re-tokenised by the same tokenizer: about the budget


def test_target_answers_from_the_compressed_prompt(engine):
    text, question, answer = needle_prompt(85, position=0.7)
    g = engine.generate(
        text,
        question=question,
        method="specpc",
        budget=512,
        max_new_tokens=24,
        answer_prefix=" Answer: The special magic number for ocean mentioned in the provided text is",
    )
    assert answer in g.text
    assert g.stats.prompt_tokens < 600 < 2000 < g.stats.original_tokens
    assert g.compressed is not None and NEEDLE in g.compressed.text


def test_cross_tokenizer_counts_use_the_target_tokenizer(smollm):
    gemma = load_model("gemma3-270m")
    engine = DraftEngine(target=gemma, draft=smollm)
    text, question, _ = needle_prompt(40)
    cp = engine.compress(text, question=question, budget=256)
    assert 230 <= cp.draft_kept_tokens <= 256 and NEEDLE in cp.text
    assert cp.compressed_tokens == count_tokens(gemma.tokenizer, cp.text)
    assert cp.original_tokens == count_tokens(gemma.tokenizer, cp.original_text)
    g = engine.generate(text, question=question, budget=256, max_new_tokens=8)
    assert g.stats.prompt_tokens < g.stats.original_tokens
