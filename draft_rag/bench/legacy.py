"""The first RULER-style task generators (written from the paper's task descriptions) and a retrieval-QA task
over a real corpus, kept for the chunk and overhead benchmarks; ``tasks.TASKS`` registers them beside RULER's 13.

Each returns RULER-format records sized with the given tokenizer (see ``tasks``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..corpus import stdlib_passages
from ..prompt import count_tokens
from .ruler import NOISE

WORDS = (
    "apple anchor badge banner basket beacon candle canyon carpet castle cobalt copper cotton dragon "
    "eagle ember falcon feather fiddle forest galaxy garden glacier harbor hammer helmet island ivory "
    "jacket jungle kettle ladder lantern lemon magnet marble meadow mirror needle nickel oyster orchid "
    "paddle pepper pillow planet pocket quartz rabbit ribbon river rocket saddle salmon signal silver "
    "spider spruce statue tablet temple thunder timber tunnel turtle velvet violin walnut whistle willow "
    "window winter yellow zephyr acorn barrel bucket cactus cherry cinder cradle donkey engine fabric "
    "goblet granite hornet insect jigsaw kitten lagoon locket mango muffin napkin otter parrot pebble "
    "puzzle radish saucer sensor shovel sponge tomato trophy tulip vessel wagon walrus"
).split()
ADJECTIVES = (
    "brave calm clever cruel eager fancy gentle glossy grumpy happy humble jolly lively lucky "
    "mighty noisy proud quiet rapid shy silent sleepy smooth sturdy swift tender tidy vivid wise"
).split()

NIAH_TEMPLATE = (
    "{intro} is hidden within the following text. Make sure to memorize it. I will quiz you about "
    "the {what} afterwards.\n{context}\n{question}"
)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(WORDS)}"


def _fit(build: Callable[[int], str], tokenizer, length: int, start: int = 8, minimum: int = 1) -> tuple[str, int]:
    """The largest filler count whose built input stays within ``length`` tokens; (input, tokens)."""
    smallest = count_tokens(tokenizer, build(minimum))
    if smallest > length:
        raise ValueError(f"length {length} is too small for this task: its shortest input has {smallest} tokens")
    n, best = start, None
    for _ in range(6):  # proportional steps, then walk down
        tokens = count_tokens(tokenizer, build(n))
        if tokens <= length:
            best = n if best is None or n > best else best
        n = max(minimum, int(n * length / max(1, tokens)))
    n = best if best is not None else n
    while n > minimum and count_tokens(tokenizer, build(n)) > length:
        n -= 1
    text = build(n)
    return text, count_tokens(tokenizer, text)


def niah(
    tokenizer, length: int, n: int, seed: int = 42, *, keys: int = 1, values: int = 1, queries: int = 1
) -> list[dict]:
    """Needle in a haystack of noise sentences.

    ``keys`` needles with distinct keys are hidden (the extra ones are distractors unless queried);
    each queried key has ``values`` numbers; ``queries`` keys are asked for at once.
    """
    rng = random.Random(seed)
    records = []
    for index in range(n):
        names = []
        while len(names) < max(keys, queries):
            k = _key(rng)
            if k not in names:
                names.append(k)
        answers = {k: [_number(rng) for _ in range(values)] for k in names}
        needles = [f"One of the special magic numbers for {k} is: {v}." for k in names for v in answers[k]]
        asked = names[:queries]
        plural = values > 1 or queries > 1
        what = "numbers" if plural else "number"
        intro = "Some special magic numbers" if plural else "A special magic number"
        key_text = ", ".join(asked[:-1]) + f" and {asked[-1]}" if len(asked) > 1 else asked[0]
        if plural:
            question = f"What are all the special magic numbers for {key_text} mentioned in the provided text?"
            prefix = f" The special magic numbers for {key_text} mentioned in the provided text are"
        else:
            question = f"What is the special magic number for {key_text} mentioned in the provided text?"
            prefix = f" The special magic number for {key_text} mentioned in the provided text is"
        slots = sorted(rng.random() for _ in needles)
        order = list(needles)
        rng.shuffle(order)

        def build(m: int) -> str:
            lines = [NOISE] * m
            for depth, needle in zip(slots, order):
                lines.insert(int(depth * len(lines)), needle)
            return NIAH_TEMPLATE.format(intro=intro, what=what, context="\n".join(lines), question=question)

        text, tokens = _fit(build, tokenizer, length)
        records.append(
            {
                "index": index,
                "input": text,
                "outputs": [v for k in asked for v in answers[k]],
                "answer_prefix": prefix,
                "length": tokens,
                "tokens_to_generate": 12 * len(asked) * values,
            }
        )
    return records


def retrieval_qa(tokenizer, length: int, n: int, seed: int = 42, passages: list[dict] | None = None) -> list[dict]:
    """Which function is documented as "<first sentence>"? The gold passage (the rest of that docstring)
    hides among real distractors.

    Records also carry ``documents`` (ids in prompt order) and ``gold`` (the gold passage id).
    """
    rng = random.Random(seed)
    passages = passages or stdlib_passages()
    records = []
    for index in range(n):
        gold = passages[rng.randrange(len(passages))]
        others = [p for p in passages if p is not gold]
        rng.shuffle(others)
        depth = rng.random()
        question = f'Question: Which function is documented as "{gold["first"]}"? Answer with its name.'

        def docs(m: int) -> list[dict]:
            chosen = others[:m]
            chosen.insert(int(depth * len(chosen)), gold)
            return chosen

        def build(m: int) -> str:
            body = "\n".join(f"Document {i + 1}: {p['text']}" for i, p in enumerate(docs(m)))
            return (
                "Answer the question based on the given documents. Only give me the answer and do not output "
                "any other words.\n" + body + "\n" + question
            )

        text, tokens = _fit(build, tokenizer, length, start=min(10, len(others)), minimum=0)
        m = next(m for m in range(len(others) + 1) if build(m) == text)
        records.append(
            {
                "index": index,
                "input": text,
                "outputs": [gold["name"]],
                "answer_prefix": " Answer:",
                "length": tokens,
                "tokens_to_generate": 16,
                "documents": [p["id"] for p in docs(m)],
                "gold": gold["id"],
            }
        )
    return records
