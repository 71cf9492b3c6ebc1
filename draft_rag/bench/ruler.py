"""RULER's 13 tasks (arXiv 2404.06654), generated offline in RULER's record format.

Task settings, templates and answer prefixes follow RULER's task definitions (``synthetic.yaml`` and the
task constants of NVIDIA/RULER); the generators are our own. What differs, because it must work offline:

- essay haystacks are the standard library's ``pydoc`` text (``corpus.stdlib_documents``) instead of Paul
  Graham's essays;
- ``qa_1`` / ``qa_2`` ask about standard-library documentation passages (``corpus.stdlib_passages``) instead
  of SQuAD / HotpotQA: ``qa_1`` has one gold passage, ``qa_2`` two (both names are asked for);
- keys and the common-words list come from the ``wonderwords`` package's word lists, as in RULER.

A record is ``{"index", "input", "outputs", "answer_prefix", "length", "tokens_to_generate"}`` where
``length`` (input + answer prefix + answer tokens, as RULER counts it) is at most the requested length in
the given tokenizer's tokens. Generation lengths are the ones the SpecPC/SpecKV paper used with RULER.
"""

from __future__ import annotations

import functools
import math
import random
import re
import string
import uuid
from collections.abc import Callable

from ..prompt import count_tokens

GEN_TOKENS = {"niah": 128, "vt": 64, "cwe": 120, "fwe": 64, "qa": 64}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. I will quiz you "
    "about the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} for {query} mentioned in "
    "the provided text?"
)
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
    "that appear most often.\n{context}\nQuestion: What are the {num_cw} most common words in the above list?"
)
CWE_PREFIX = " Answer: The top {num_cw} words that appear most often in the list are:"
FWE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_PREFIX = " Answer:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 needle depths, in percent

# RULER's niah variants: haystack, key type, value type, keys, values per key, keys queried.
NIAH_TASKS = {
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1),
    "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "words", "numbers", 4, 1, 4),
}


@functools.cache
def word_lists() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(nouns, adjectives, verbs) from ``wonderwords`` (pip install "draft-rag[bench]")."""
    try:
        from wonderwords import RandomWord
    except ImportError:
        raise ImportError('RULER tasks need the wonderwords word lists: pip install "draft-rag[bench]"') from None
    rw = RandomWord()
    return tuple(tuple(rw.filter(include_categories=[c])) for c in ("noun", "adjective", "verb"))


@functools.cache
def essay_words() -> tuple[str, ...]:
    """The essay haystack: the standard library's pydoc text, as words."""
    from ..corpus import stdlib_documents

    return tuple(re.sub(r"\s+", " ", " ".join(d.text for d in stdlib_documents())).split(" "))


def _fit(
    build: Callable[[int], tuple[str, str]], tokenizer, length: int, gen: int, lo: int = 1, cap: int | None = None
) -> int:
    """The largest haystack size ``lo <= m <= cap`` whose input + answer prefix + ``gen`` tokens fit in ``length``."""

    def fits(m: int) -> bool:
        text, prefix = build(m)
        return count_tokens(tokenizer, text + prefix) + gen <= length

    if not fits(lo):
        raise ValueError(f"length {length} is too small for this task (with {gen} answer tokens)")
    hi = lo + 1
    while fits(hi):
        if cap is not None and hi >= cap:
            return cap
        lo, hi = hi, hi * 2 if cap is None else min(cap, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _record(index: int, tokenizer, text: str, prefix: str, outputs: list[str], gen: int) -> dict:
    return {
        "index": index,
        "input": text,
        "outputs": outputs,
        "answer_prefix": prefix,
        "length": count_tokens(tokenizer, text + prefix) + gen,
        "tokens_to_generate": gen,
    }


def _random(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    nouns, adjectives, _ = word_lists()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


def _essay(m: int, items: list[str], depths: list[int]) -> str:
    """``m`` essay words (repeated if needed), with ``items`` inserted between sentences at ``depths`` (%)."""
    words = essay_words()
    text = " ".join((words * (m // len(words) + 1))[:m])
    sents = re.split(r"(?<=[.!?])\s+", text.strip())
    cuts = [0] + sorted(len(sents) * d // 100 for d in depths) + [len(sents)]
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1] : cuts[i]]))
        if i - 1 < len(items):
            parts.append(items[i - 1])
    return " ".join(p for p in parts if p)


def _lines(haystack: list[str], items: list[str], fractions: list[float]) -> str:
    """Haystack lines with ``items`` inserted at fractional positions (in item order)."""
    lines = list(haystack)
    for j, (f, item) in enumerate(sorted(zip(fractions, items), key=lambda p: p[0])):
        lines.insert(min(len(lines), int(f * len(haystack)) + j), item)
    return "\n".join(lines)


def niah(task: str, tokenizer, length: int, n: int, seed: int = 42) -> list[dict]:
    """One of RULER's eight needle-in-a-haystack variants (``NIAH_TASKS``)."""
    haystack, type_k, type_v, num_k, num_v, num_q = NIAH_TASKS[task]
    num_k = max(num_k, num_q)
    gen, rng = GEN_TOKENS["niah"], random.Random(f"{task}-{seed}")
    records = []
    for index in range(n):
        keys = []
        while len(keys) < num_k:
            k = _random(type_k, rng)
            if k not in keys:
                keys.append(k)
        values = [[_random(type_v, rng) for _ in range(num_v)] for _ in keys]
        needles = [NEEDLE.format(type_v=type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        asked = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if num_q > 1 else queries[0]
        template, prefix, tv = _singular(type_v) if num_q * num_v == 1 else (NIAH, NIAH_PREFIX, type_v)
        depths, fractions = rng.sample(DEPTHS, len(needles)), [rng.random() for _ in needles]
        extra = random.Random(f"{task}-{seed}-{index}-haystack")
        distractors: list[str] = []

        def build(m: int) -> tuple[str, str]:
            if haystack == "essay":
                context = _essay(m, needles, depths)
            else:
                while haystack == "needle" and len(distractors) < m:
                    k = _random(type_k, extra)
                    if k not in keys:
                        distractors.append(NEEDLE.format(type_v=type_v, key=k, value=_random(type_v, extra)))
                context = _lines([NOISE] * m if haystack == "noise" else distractors[:m], needles, fractions)
            return template.format(type_v=tv, context=context, query=query), prefix.format(type_v=tv, query=query)

        text, pre = build(_fit(build, tokenizer, length, gen))
        record = _record(index, tokenizer, text, pre, [v for i in asked for v in values[i]], gen)
        if num_k > 1:  # each hidden key may be asked on its own over the same haystack
            alone = [i for i in range(num_k) if num_q > 1 or i not in asked]
            record["follow_ups"] = [_single_question(keys[i], values[i], type_v) for i in alone]
        records.append(record)
    return records


def _singular(type_v: str) -> tuple[str, str, str]:
    """RULER's singular wording of the niah template and answer prefix, and the value type in the singular."""
    template = NIAH.replace("Some", "A").replace("are all", "is").replace("are", "is")
    return template, NIAH_PREFIX.replace("are", "is"), type_v[:-1]


def _single_question(key: str, values: list[str], type_v: str) -> dict:
    """A follow-up about one key of a niah haystack (the tasks with several keys hide one value per key)."""
    template, prefix, one = _singular(type_v)
    question = template.rpartition("\n")[2].format(type_v=one, query=key)
    return {"question": question, "answer_prefix": prefix.format(type_v=one, query=key), "outputs": values}


def _chain(rng: random.Random, hops: int, letters: int, value: str) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:
        v = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if v not in names:
            names.append(v)
    return names, [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]


def variable_tracking(tokenizer, length: int, n: int, seed: int = 42, hops: int = 4) -> list[dict]:
    """RULER's vt: one chain of ``hops`` assignments in noise, after one solved example (3-letter names)."""
    gen, rng = GEN_TOKENS["vt"], random.Random(f"vt-{seed}")
    records = []
    for index in range(n):
        ex_value = str(rng.randint(10000, 99999))
        ex_names, ex_chain = _chain(rng, hops, 3, ex_value)
        ex_context = _lines([NOISE] * 10, ex_chain, sorted(rng.random() for _ in ex_chain))
        example = (VT + VT_PREFIX).format(context=ex_context, query=ex_value, num_v=hops + 1) + " " + " ".join(ex_names)
        value = str(rng.randint(10000, 99999))
        names, chain = _chain(rng, hops, 5, value)
        fractions = sorted(rng.random() for _ in chain)

        def build(m: int) -> tuple[str, str]:
            text = example + "\n\n" + VT.format(context=_lines([NOISE] * m, chain, fractions), query=value)
            return text, VT_PREFIX.format(num_v=hops + 1, query=value)

        text, pre = build(_fit(build, tokenizer, length, gen))
        records.append(_record(index, tokenizer, text, pre, names, gen))
    return records


def common_words(tokenizer, length: int, n: int, seed: int = 42, num_cw: int = 10) -> list[dict]:
    """RULER's cwe: the ``num_cw`` words repeated most in a numbered list, after one solved example."""
    gen, rng = GEN_TOKENS["cwe"], random.Random(f"cwe-{seed}")
    pool = sorted({w for lst in word_lists() for w in lst})
    random.Random(seed).shuffle(pool)
    # RULER: below 4k tokens common words appear 6x, others once; from 4k on, 30x and 3x
    (ex_n, ex_c, ex_u), (cw, ucw) = ((20, 3, 1), (6, 1)) if length < 4096 else ((40, 10, 3), (30, 3))
    template = CWE + CWE_PREFIX

    def listing(words: list[str], common: int, uncommon: int, shuffle_seed: int) -> str:
        seq = words[:num_cw] * common + words[num_cw:] * uncommon
        random.Random(shuffle_seed).shuffle(seq)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(seq))

    records = []
    for index in range(n):
        ex = rng.sample(pool, ex_n)
        example = (
            template.format(context=listing(ex, ex_c, ex_u, seed), num_cw=num_cw)
            + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex[:num_cw]))
        )
        order = rng.sample(pool, len(pool))

        def build(m: int) -> tuple[str, str]:
            body = CWE.format(context=listing(order[: num_cw + m], cw, ucw, seed), num_cw=num_cw)
            return example + "\n" + body, CWE_PREFIX.format(num_cw=num_cw)

        text, pre = build(_fit(build, tokenizer, length, gen, cap=len(pool) - num_cw))
        records.append(_record(index, tokenizer, text, pre, order[:num_cw], gen))
    return records


def freq_words(tokenizer, length: int, n: int, seed: int = 42, alpha: float = 2.0) -> list[dict]:
    """RULER's fwe: coded words drawn from a Zipf(``alpha``) law; name the three most frequent (not '...')."""
    gen, rng = GEN_TOKENS["fwe"], random.Random(f"fwe-{seed}")
    zeta = sum(k**-alpha for k in range(1, 100_000))
    records = []
    for index in range(n):
        vocab: set[str] = set()
        while len(vocab) < max(4, (length - gen) // 50):
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
        vocab_list = sorted(vocab)
        random.Random(seed).shuffle(vocab_list)
        vocab_list[0] = "..."  # the most frequent is noise

        def build(m: int) -> tuple[str, str]:
            words = [w for k, w in enumerate(vocab_list, 1) for _ in range(int(m * k**-alpha / zeta))]
            random.Random(seed).shuffle(words)
            return FWE.format(context=" ".join(words)), FWE_PREFIX

        text, pre = build(_fit(build, tokenizer, length, gen, lo=math.ceil(4**alpha * zeta)))
        records.append(_record(index, tokenizer, text, pre, vocab_list[1:4], gen))
    return records


def qa(tokenizer, length: int, n: int, seed: int = 42, golds: int = 1) -> list[dict]:
    """RULER's qa layout over standard-library documentation: ``golds`` gold passages among distractors."""
    from ..corpus import stdlib_passages

    gen, rng = GEN_TOKENS["qa"], random.Random(f"qa{golds}-{seed}")
    passages = stdlib_passages()
    records = []
    for index in range(n):
        gold = rng.sample(passages, golds)
        others = [p for p in passages if p not in gold]
        rng.shuffle(others)
        depths = [rng.random() for _ in gold]
        quoted = " and as ".join(f'"{g["first"]}"' for g in gold)
        query = (
            f"Which function is documented as {quoted}? Answer with its name."
            if golds == 1
            else f"Which {golds} functions are documented as {quoted}? Answer with their names."
        )

        def build(m: int) -> tuple[str, str]:
            docs = others[:m]
            for d, g in zip(depths, gold):
                docs.insert(int(d * len(docs)), g)
            context = "\n\n".join(f"Document {i + 1}:\n{p['text']}" for i, p in enumerate(docs))
            return QA.format(context=context, query=query), QA_PREFIX

        text, pre = build(_fit(build, tokenizer, length, gen, lo=0, cap=len(others)))
        records.append(_record(index, tokenizer, text, pre, [g["name"] for g in gold], gen))
    return records


RULER_TASKS: dict[str, Callable] = {
    **{name: functools.partial(niah, name) for name in NIAH_TASKS},
    "vt": variable_tracking,
    "cwe": common_words,
    "fwe": freq_words,
    "qa_1": functools.partial(qa, golds=1),
    "qa_2": functools.partial(qa, golds=2),
}
