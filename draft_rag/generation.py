"""Token-by-token decoding for a local target: greedy or sampling, stop strings, EOS, streaming."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .config import check_int
from .models import input_device
from .scoring import cache_kwarg
from .stats import GenerationStats


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature == 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        check_int("max_new_tokens", self.max_new_tokens, 1)
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")


@dataclass
class Prefilled:
    """State after the prompt: the cache, the last prompt position's logits and the next position id."""

    cache: object
    logits: torch.Tensor  # [vocab]
    next_position: int


Prefill = Callable[[object, list[int]], Prefilled]


@torch.no_grad()
def plain_prefill(model, input_ids: list[int]) -> Prefilled:
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([input_ids], device=input_device(model))
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(model): cache})
    return Prefilled(cache, out.logits[0, -1], len(input_ids))


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return {i for i in ids if i is not None}


def _pick(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> int:
    if s.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) > s.top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still start a stop string (or are an unfinished character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


@torch.no_grad()
def stream(
    model,
    tokenizer,
    input_ids: list[int],
    sampling: Sampling,
    prefill: Prefill = plain_prefill,
    stats: GenerationStats | None = None,
) -> Iterator[str]:
    """Yield generated text pieces; ``stats`` (if given) counts ``new_tokens`` as they come and gets the
    ``finish_reason`` at the end."""
    stats = stats if stats is not None else GenerationStats("")
    state = prefill(model, input_ids)
    gen = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    stops, eos = sampling.stop, eos_ids(model, tokenizer)
    ck = cache_kwarg(model)
    generated: list[int] = []
    emitted, logits, pos, reason, hit = "", state.logits, state.next_position, "length", False
    for _ in range(sampling.max_new_tokens):
        tok = _pick(logits, sampling, gen)
        if tok in eos:
            reason = "stop"
            break
        generated.append(tok)
        stats.new_tokens = len(generated)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        hits = [text.find(s, max(0, len(emitted) - len(s))) for s in stops]
        hits = [h for h in hits if h >= 0]
        if hits:
            text, reason, hit = text[: min(hits)], "stop", True
            if len(text) > len(emitted):
                yield text[len(emitted) :]
            break
        safe = len(text) - _held_back(text, stops)
        if safe > len(emitted):
            yield text[len(emitted) : safe]
            emitted = text[:safe]
        if len(generated) == sampling.max_new_tokens:
            break
        out = model(
            input_ids=torch.tensor([[tok]], device=input_device(model)),
            position_ids=torch.tensor([[pos]], device=input_device(model)),
            use_cache=True,
            **{ck: state.cache},
        )
        logits, pos = out.logits[0, -1], pos + 1
    if not hit:  # flush what was held back for a possible stop string
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if len(text) > len(emitted):
            yield text[len(emitted) :]
    stats.new_tokens, stats.finish_reason = len(generated), reason
