"""RULER-style synthetic tasks (arXiv 2404.06654, written from the paper's task descriptions) and a
retrieval-QA task over a real corpus, generated at a chosen token length with a seed.

Each generator returns RULER-format records (``input``, ``outputs``, ``answer_prefix``, ``length``,
``index``, ``tokens_to_generate``) sized with the given tokenizer (the draft's, as RULER sizes with the model's).
"""
from __future__ import annotations

import inspect
import random
import re
from typing import Callable

from ..prompt import count_tokens

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS = ("apple anchor badge banner basket beacon candle canyon carpet castle cobalt copper cotton dragon "
         "eagle ember falcon feather fiddle forest galaxy garden glacier harbor hammer helmet island ivory "
         "jacket jungle kettle ladder lantern lemon magnet marble meadow mirror needle nickel oyster orchid "
         "paddle pepper pillow planet pocket quartz rabbit ribbon river rocket saddle salmon signal silver "
         "spider spruce statue tablet temple thunder timber tunnel turtle velvet violin walnut whistle willow "
         "window winter yellow zephyr acorn barrel bucket cactus cherry cinder cradle donkey engine fabric "
         "goblet granite hornet insect jigsaw kitten lagoon locket mango muffin napkin otter parrot pebble "
         "puzzle radish saucer sensor shovel sponge tomato trophy tulip vessel wagon walrus").split()
ADJECTIVES = ("brave calm clever cruel eager fancy gentle glossy grumpy happy humble jolly lively lucky "
              "mighty noisy proud quiet rapid shy silent sleepy smooth sturdy swift tender tidy vivid wise").split()

NIAH_TEMPLATE = ("{intro} is hidden within the following text. Make sure to memorize it. I will quiz you about "
                 "the {what} afterwards.\n{context}\n{question}")


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


def niah(tokenizer, length: int, n: int, seed: int = 42, *, keys: int = 1, values: int = 1,
         queries: int = 1) -> list[dict]:
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
        records.append({"index": index, "input": text, "outputs": [v for k in asked for v in answers[k]],
                        "answer_prefix": prefix, "length": tokens, "tokens_to_generate": 12 * len(asked) * values})
    return records


def variable_tracking(tokenizer, length: int, n: int, seed: int = 42, *, hops: int = 4) -> list[dict]:
    """One chain ``VAR A = 12345``, ``VAR B = VAR A``, ... hidden in noise; name every variable with the value."""
    rng = random.Random(seed)
    records = []
    for index in range(n):
        names = []
        while len(names) < hops + 1:
            v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
            if v not in names:
                names.append(v)
        value = str(rng.randint(10000, 99999))
        chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, len(names))]
        depths = sorted(rng.random() for _ in chain)
        question = f"Question: Find all variables that are assigned the value {value} in the text above."

        def build(m: int) -> str:
            lines = [NOISE] * m
            for depth, stmt in zip(depths, chain):  # in order, so the chain reads top-down
                lines.insert(min(len(lines), int(depth * m) + chain.index(stmt)), stmt)
            return ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
                    + "\n".join(lines) + "\n" + question)

        text, tokens = _fit(build, tokenizer, length)
        prefix = (" Answer: According to the chain(s) of variable assignment in the text above, "
                  f"{len(names)} variables are assigned the value {value}, they are:")
        records.append({"index": index, "input": text, "outputs": names, "answer_prefix": prefix,
                        "length": tokens, "tokens_to_generate": 30})
    return records


def common_words(tokenizer, length: int, n: int, seed: int = 42, *, num_common: int = 5,
                 common_freq: int = 8, rare_freq: int = 2) -> list[dict]:
    """A numbered word list where ``num_common`` words repeat ``common_freq`` times, others ``rare_freq``."""
    rng = random.Random(seed)
    records = []
    for index in range(n):
        pool = list(WORDS)
        rng.shuffle(pool)
        common, rare = pool[:num_common], pool[num_common:]
        question = f"Question: What are the {num_common} most common words in the above list?"

        def build(m: int) -> str:
            r = random.Random(seed * 1000 + index)
            words = common * common_freq + [w for w in rare[:m] for _ in range(rare_freq)]
            r.shuffle(words)
            listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))
            return ("Below is a numbered list of words. In these words, some appear more often than others. "
                    "Memorize the ones that appear most often.\n" + listing + "\n" + question)

        text, tokens = _fit(build, tokenizer, length, start=min(len(rare), 20))
        prefix = f" Answer: The top {num_common} words that appear most often in the list are:"
        records.append({"index": index, "input": text, "outputs": common, "answer_prefix": prefix,
                        "length": tokens, "tokens_to_generate": 40})
    return records


QA_MODULES = ("json", "textwrap", "shutil", "heapq", "bisect", "functools", "itertools", "statistics",
              "difflib", "fnmatch", "glob", "base64", "calendar", "random", "string", "secrets", "zlib", "colorsys",
              "os.path", "re", "copy", "pprint", "operator", "math")


def stdlib_passages(modules=QA_MODULES) -> list[dict]:
    """Real documentation: one passage per public standard-library function whose docstring has two or more
    sentences, as ``{"id": "module.name", "name", "first": first sentence, "text": the rest}``. The first
    sentence is left out of the passage, so a question quoting it must be matched by meaning, not by copy."""
    import importlib

    out = []
    for mod_name in modules:
        module = importlib.import_module(mod_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not callable(obj) or inspect.isclass(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            doc = re.sub(r"\s+", " ", doc).strip()
            sentences = re.split(r"(?<=[.!?])\s+", doc)
            rest = " ".join(sentences[1:])
            if len(sentences) < 2 or len(rest) < 60 or name in sentences[0]:
                continue
            out.append({"id": f"{mod_name}.{name}", "name": name, "first": sentences[0],
                        "text": f"Documentation of {mod_name}.{name}: {rest[:700]}"})
    seen, unique = set(), []
    for p in out:  # aliases (same docstring under two names) would make two gold passages
        if p["first"] not in seen:
            seen.add(p["first"])
            unique.append(p)
    return unique


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
        question = f"Question: Which function is documented as \"{gold['first']}\"? Answer with its name."

        def docs(m: int) -> list[dict]:
            chosen = others[:m]
            chosen.insert(int(depth * len(chosen)), gold)
            return chosen

        def build(m: int) -> str:
            body = "\n".join(f"Document {i + 1}: {p['text']}" for i, p in enumerate(docs(m)))
            return ("Answer the question based on the given documents. Only give me the answer and do not output "
                    "any other words.\n" + body + "\n" + question)

        text, tokens = _fit(build, tokenizer, length, start=min(10, len(others)), minimum=0)
        m = next(m for m in range(len(others) + 1) if build(m) == text)
        records.append({"index": index, "input": text, "outputs": [gold["name"]], "answer_prefix": " Answer:",
                        "length": tokens, "tokens_to_generate": 16, "documents": [p["id"] for p in docs(m)],
                        "gold": gold["id"]})
    return records


TASKS: dict[str, Callable] = {
    "niah_single": lambda tok, length, n, seed: niah(tok, length, n, seed),
    "niah_multikey": lambda tok, length, n, seed: niah(tok, length, n, seed, keys=4),
    "niah_multivalue": lambda tok, length, n, seed: niah(tok, length, n, seed, values=4),
    "niah_multiquery": lambda tok, length, n, seed: niah(tok, length, n, seed, keys=4, queries=4),
    "vt": variable_tracking,
    "cwe": common_words,
    "qa": retrieval_qa,
}


def generate(task: str, tokenizer, length: int, n: int, seed: int = 42) -> list[dict]:
    """``n`` records of ``task`` (one of ``TASKS``) at about ``length`` tokens of ``tokenizer``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    for name, v in (("length", length), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return TASKS[task](tokenizer, length, n, seed)
