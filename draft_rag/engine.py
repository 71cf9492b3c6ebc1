"""DraftEngine: prompt -> [SpecPC with the draft] -> local target generation, with stats.

The one place both framework adapters call. Thread-safe: calls on one engine run one at a time.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from . import baselines, speckv
from .config import SpecKVConfig, SpecPCConfig
from .generation import Sampling, eos_ids, stream
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .scoring import chunk_scores, draft_scores
from .prompt import Segment, build_segments, has_chat_template, tokenize, wrap
from .specpc import CompressedPrompt, compress

METHODS = ("full", "specpc") + baselines.KV_METHODS
DEFAULT_PC_BUDGET = 2048  # SpecPC's prompt budget inside speckv-pc when neither pc_budget nor pc_ratio is given


@dataclass
class GenerationStats:
    """Token counts are in the target's tokenizer and include its chat template."""

    method: str
    original_tokens: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    finish_reason: str = ""
    seconds: dict = field(default_factory=dict)
    kv_bytes: int = 0  # target KV cache after prefill (all layers, keys + values)
    kv_bytes_full: int = 0  # what a plain prefill of the same prompt holds
    kv_entries: list = field(default_factory=list)  # cache entries per KV head, per layer, after prefill
    lookahead_tokens: int = 0  # draft tokens the target prefilled as SpecKV's lookahead (target tokenizer)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Generation:
    text: str
    stats: GenerationStats
    compressed: CompressedPrompt | None = None


class GenerationStream:
    """Iterator of text pieces; ``stats`` and ``compressed`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], stats: GenerationStats, compressed: CompressedPrompt | None):
        self._pieces, self.stats, self.compressed = pieces, stats, compressed

    def __iter__(self):
        return self._pieces


class DraftEngine:
    """Draft-guided compression and generation.

    ``target`` and ``draft`` are anything ``load_model`` accepts (alias, path, hub id, loaded model).
    ``target=None`` gives a compression-only engine (e.g. in front of a remote LLM). ``draft`` defaults
    to the target itself when given, else to the built-in SmolLM2; one loaded model may serve as both.
    """

    def __init__(self, target=None, draft=None, *, specpc: SpecPCConfig | None = None, method: str = "specpc",
                 device: str | None = None, dtype=None, speckv: SpecKVConfig | None = None):
        _check_method(method)
        self.target: LoadedModel | None = load_model(target, device=device, dtype=dtype) if target is not None else None
        if draft is None:
            self.draft = self.target or load_model(DEFAULT_MODEL, device=device, dtype=dtype)
        else:
            self.draft = load_model(draft, device=device, dtype=dtype)
        self.specpc = specpc or SpecPCConfig()
        self.speckv = speckv or SpecKVConfig()
        self.method = method
        self._lock = threading.Lock()  # not an RLock: a stream may be finished from another thread

    # -- compression ---------------------------------------------------------------------------
    def compress(self, prompt: str | None = None, *, chunks=None, instruction: str | None = None,
                 question: str | None = None, answer_prefix: str | None = None, budget: int | None = None,
                 ratio: float | None = None, template: str = "chat") -> CompressedPrompt:
        """SpecPC on a prompt string or on chunks; protected segments are always kept.

        ``budget``/``ratio`` override the engine's SpecPCConfig for this call. Token counts in the result
        use the target's tokenizer when the engine has a target.
        """
        segments, chunk_list = build_segments(prompt, chunks=chunks, instruction=instruction, question=question,
                                              answer_prefix=answer_prefix)
        cfg = self._config(budget, ratio)
        with self._lock:
            return compress(self.draft.model, self.draft.tokenizer, segments, chunk_list, cfg, template=template,
                            target_tokenizer=self.target.tokenizer if self.target else None)

    def score_chunks(self, chunks, *, question: str | None = None, instruction: str | None = None,
                     reduce: str = "max", template: str = "chat") -> list[float]:
        """One draft pass over instruction + chunks + question; the draft's attention score of each chunk.

        Always runs the draft (no budget). Higher means the draft attended to the chunk more while
        reading the question. Chunks with empty text score 0.0.
        """
        segments, chunk_list = build_segments(None, chunks=chunks, instruction=instruction, question=question)
        layout = wrap(segments, self.draft.tokenizer, template)
        tok = tokenize(self.draft.tokenizer, layout)
        with self._lock:
            dp = draft_scores(self.draft.model, tok.ids, self.specpc, set())
        return chunk_scores(dp.scores, tok.segment, [s.chunk for s in layout], len(chunk_list), reduce)

    def _config(self, budget, ratio) -> SpecPCConfig:
        if budget is not None or ratio is not None:
            return self.specpc.replace(max_capacity_prompt=budget, ratio=ratio)
        return self.specpc

    # -- generation ----------------------------------------------------------------------------
    def stream(self, prompt: str | None = None, *, chunks=None, instruction: str | None = None,
               question: str | None = None, answer_prefix: str | None = None, method: str | None = None,
               budget: int | None = None, ratio: float | None = None, template: str | None = None,
               system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, stop=(), seed: int | None = None, pc_budget: int | None = None,
               pc_ratio: float | None = None, lookahead_tokens: int | None = None) -> GenerationStream:
        """Generate with the local target; yields text pieces as they are decoded.

        ``budget``/``ratio`` are the prompt budget for ``specpc`` and the KV budget (entries per layer and
        KV head) for the KV methods; ``speckv-pc`` takes its prompt budget as ``pc_budget``/``pc_ratio``
        (default 2048 tokens). ``lookahead_tokens`` overrides SpecKVConfig's (default: ``max_new_tokens``).
        """
        if self.target is None:
            raise ValueError("this engine has no target model: pass target=... to DraftEngine to generate")
        method = method or self.method
        _check_method(method)
        sampling = Sampling(max_new_tokens, temperature, top_p, top_k, tuple([stop] if isinstance(stop, str) else stop or ()), seed)
        template = template or ("chat" if has_chat_template(self.target.tokenizer) else "raw")
        segments, chunk_list = build_segments(prompt, chunks=chunks, instruction=instruction, question=question,
                                              answer_prefix=answer_prefix)
        cfg = self._config(budget, ratio)
        stats = GenerationStats(method)
        gs = GenerationStream(iter(()), stats, None)

        def run() -> Iterator[str]:
            with self._lock:
                t0 = time.perf_counter()
                full_ids = self._target_ids(segments, template, system)
                stats.original_tokens = len(full_ids)
                ids = full_ids
                if method == "specpc":
                    cp = compress(self.draft.model, self.draft.tokenizer, segments, chunk_list, cfg, template=template,
                                  target_tokenizer=self.target.tokenizer)
                    gs.compressed = cp
                    stats.seconds.update(draft=cp.seconds["draft"], select=cp.seconds["select"])
                    ids = self._target_ids(_compressed_segments(cp, segments), template, system)
                prefill = functools.partial(_prefill_with_stats, speckv.plain_prefill_stats, stats)
                if method in baselines.KV_METHODS:
                    ids, prefill, gs.compressed = self._kv_setup(
                        method, segments, chunk_list, ids, template, system, sampling, stats,
                        budget=budget, ratio=ratio, pc_budget=pc_budget, pc_ratio=pc_ratio, lookahead=lookahead_tokens)
                stats.prompt_tokens = len(ids)
                t1 = time.perf_counter()
                info: dict = {}
                yield from stream(self.target.model, self.target.tokenizer, ids, sampling, prefill, info)
                t2 = time.perf_counter()
                stats.new_tokens, stats.finish_reason = info["new_tokens"], info["finish_reason"]
                stats.seconds.update(target=t2 - t1, total=t2 - t0)

        gs._pieces = run()
        return gs

    def generate(self, prompt: str | None = None, **kwargs) -> Generation:
        """Like ``stream`` but returns the whole text with stats (and the CompressedPrompt for SpecPC)."""
        gs = self.stream(prompt, **kwargs)
        text = "".join(gs)
        return Generation(text, gs.stats, gs.compressed)

    def _kv_setup(self, method, segments, chunk_list, ids, template, system, sampling, stats, *, budget, ratio,
                  pc_budget, pc_ratio, lookahead):
        """Target ids, the evicting prefill and (speckv-pc) the CompressedPrompt for a KV method."""
        cfg = self.speckv.replace(max_capacity_prompt=budget, ratio=ratio) if budget is not None or ratio is not None else self.speckv
        n_look = lookahead if lookahead is not None else cfg.lookahead_tokens
        n_look = sampling.max_new_tokens if n_look is None else n_look
        if isinstance(n_look, bool) or not isinstance(n_look, int) or n_look < 0:
            raise ValueError(f"lookahead_tokens must be an integer >= 0, got {n_look!r}")
        draft, target = self.draft, self.target
        eos = eos_ids(draft.model, draft.tokenizer)
        cp, look = None, []
        if method == "speckv-pc":
            pc = self.specpc.replace(max_capacity_prompt=pc_budget, ratio=pc_ratio, lookahead_tokens=n_look)
            if pc_budget is None and pc_ratio is None:
                pc = pc.replace(max_capacity_prompt=DEFAULT_PC_BUDGET)
            cp = compress(draft.model, draft.tokenizer, segments, chunk_list, pc, template=template,
                          target_tokenizer=target.tokenizer)
            stats.seconds.update(draft=cp.seconds["draft"], select=cp.seconds["select"])
            segments = _compressed_segments(cp, segments)
            ids = self._target_ids(segments, template, system)
            look = cp.lookahead_ids
        budget_n = cfg.budget_for(len(ids))
        if method in baselines.LOOKAHEAD_METHODS and n_look and budget_n < len(ids):
            if not look:  # SpecPC did not run the draft (prompt within its budget), or plain speckv
                t0 = time.perf_counter()
                draft_ids = tokenize(draft.tokenizer, wrap(segments, draft.tokenizer, template, system)).ids
                look = speckv.draft_lookahead(draft.model, draft_ids, n_look, eos)
                stats.seconds["draft"] = stats.seconds.get("draft", 0.0) + time.perf_counter() - t0
            look = speckv.lookahead_for_target(draft.tokenizer, target.tokenizer, look, eos)
        else:
            look = []
        stats.lookahead_tokens = len(look)
        run = functools.partial(speckv.compressed_prefill, lookahead_ids=look, budget=budget_n,
                                scorer=baselines.scorer(method, cfg), window=cfg.window_size,
                                horizon=sampling.max_new_tokens)
        return ids, functools.partial(_prefill_with_stats, run, stats), cp

    def _target_ids(self, segments: list[Segment], template: str, system: str | None) -> list[int]:
        return tokenize(self.target.tokenizer, wrap(segments, self.target.tokenizer, template, system)).ids


def _compressed_segments(cp: CompressedPrompt, segments: list[Segment]) -> list[Segment]:
    """The compressed text as untrusted content, with the answer prefix (kept whole) after it."""
    prefix = "".join(s.text for s in segments if s.role == "answer_prefix")
    body = cp.text[: len(cp.text) - len(prefix)] if prefix else cp.text
    return [Segment(body, "context")] + ([Segment(prefix, "answer_prefix")] if prefix else [])


def _prefill_with_stats(run, stats: GenerationStats, model, ids):
    """Run a (state, KVStats) prefill and copy its KV figures and timings into ``stats``."""
    state, kv = run(model, ids)
    stats.kv_bytes, stats.kv_bytes_full, stats.kv_entries = kv.kv_bytes, kv.kv_bytes_full, kv.entries
    stats.seconds.update(prefill=kv.seconds["prefill"], kv_select=kv.seconds["select"])
    return state


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
