"""Task generators for the bench: RULER's 13 tasks (``ruler.py``), plus the first RULER-style tasks
(written from the paper's task descriptions) and a retrieval-QA task over a real corpus, kept for the chunk
and overhead benchmarks; all generated at a chosen token length with a seed.

Each generator returns RULER-format records (``input``, ``outputs``, ``answer_prefix``, ``length``,
``index``, ``tokens_to_generate``) sized with the given tokenizer (the draft's, as RULER sizes with the model's).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..config import check_int
from ..corpus import stdlib_passages
from ..prompt import count_tokens
from .ruler import NOISE, RULER_TASKS

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


def _insert(rng: random.Random, lines: list[str], items: list[str]) -> list[str]:
    """Put ``items`` at random depths among ``lines``."""
    out = list(lines)
    for item in items:
        out.insert(rng.randint(0, len(out)), item)
    return out


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


TASKS: dict[str, Callable] = {
    "niah_single": lambda tok, length, n, seed: niah(tok, length, n, seed),
    "niah_multikey": lambda tok, length, n, seed: niah(tok, length, n, seed, keys=4),
    "qa": retrieval_qa,
}
LEGACY_TASKS = tuple(TASKS)  # the first RULER-style generators, kept for the chunk and overhead benchmarks


def generate(task: str, tokenizer, length: int, n: int, seed: int = 42) -> list[dict]:
    """``n`` records of ``task`` (one of ``TASKS``) at about ``length`` tokens of ``tokenizer``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    check_int("length", length, 1)
    check_int("n", n, 1)
    return TASKS[task](tokenizer, length, n, seed)


RULER_13 = tuple(RULER_TASKS)  # RULER's 13 tasks (ruler.py), in RULER's own format and templates
TASKS.update(RULER_TASKS)
