"""GenerationOptions: how one ``DraftEngine.stream``/``generate`` call runs, checked once where it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import methods
from .config import Budget, SparsePrefillConfig, check_int
from .generation import Sampling
from .methods import Method


@dataclass(frozen=True)
class GenerationOptions:
    """Method, budgets, decoding, lookahead, template and sparse prefill of a generation.

    Adapters and the server build one per request; ``DraftEngine.stream(prompt, options=...)`` takes it, and its
    keyword arguments of the same names are a shortcut for ``options.replace(...)``.

    Attributes:
        method: one of ``methods.NAMES``; None: the engine's.
        budget, ratio: the prompt budget for ``specpc`` (draft tokens, ``"auto"``: fit the target's window, also
            what no budget means; ``"adaptive"``: as many as the draft's attention needs), the KV budget (entries
            per layer and KV head) for the KV methods; ``ratio`` is the fraction kept.
        pc_budget, pc_ratio: ``speckv-pc``'s prompt budget (default ``config.DEFAULT_PC_BUDGET`` tokens).
        lookahead_tokens: SpecKV's draft lookahead (default: ``max_new_tokens`` for speckv; for speckv-pc the 20
            tokens its SpecPC stage drafts, as in the official configs).
        template: ``"chat"``/``"raw"``; None: chat when the target's tokenizer has a template.
        max_new_tokens, temperature, top_p, top_k, stop, seed: decoding (temperature 0 = greedy).
        sparse_prefill: the target prefills long prompts vertical-slash sparse (True: the paper's settings, or a
            ``SparsePrefillConfig``; False: dense); None: the engine's.
    """

    method: str | None = None
    budget: int | str | None = None
    ratio: float | None = None
    pc_budget: int | None = None
    pc_ratio: float | None = None
    lookahead_tokens: int | None = None
    template: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] | str | None = ()
    seed: int | None = None
    sparse_prefill: bool | SparsePrefillConfig | None = None

    def __post_init__(self):
        stop = self.stop
        object.__setattr__(self, "stop", tuple([stop] if isinstance(stop, str) else stop or ()))
        if self.method is not None:
            methods.get(self.method)
        if self.template not in (None, "chat", "raw"):
            raise ValueError(f"template must be 'chat' or 'raw', got {self.template!r}")
        check_int("lookahead_tokens", self.lookahead_tokens, 0, allow_none=True)
        self.prompt_budget, self.pc, self.sampling, self.sparse  # noqa: B018 (each checks its part)

    @property
    def prompt_budget(self) -> Budget:
        """``budget``/``ratio`` parsed."""
        return Budget.parse(self.budget, self.ratio)

    @property
    def pc(self) -> Budget:
        """``pc_budget``/``pc_ratio`` parsed."""
        return Budget.parse(self.pc_budget, self.pc_ratio, "pc_")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.seed)

    @property
    def sparse(self) -> SparsePrefillConfig | None:
        """``sparse_prefill`` parsed (None also when unset: see ``DraftEngine``'s own)."""
        return SparsePrefillConfig.parse(self.sparse_prefill)

    def replace(self, **changes) -> GenerationOptions:
        """A copy with ``changes``; ``TypeError`` naming any name that is not an option."""
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}; generation options are {NAMES}")
        return dataclasses.replace(self, **changes) if changes else self


NAMES = tuple(f.name for f in dataclasses.fields(GenerationOptions))


@dataclass(frozen=True)
class Plan:
    """How one request runs: the method, its budgets (parsed), the lookahead and the decoding settings.

    ``budget``: the prompt budget for SpecPC, the KV budget for the KV methods; ``pc_budget``: SpecKV-PC's
    prompt budget. ``lookahead``: SpecKV's draft lookahead (None: the configured or official default).
    ``sparse``: the target's prefill is vertical-slash sparse (None: dense).
    """

    method: Method
    sampling: Sampling
    budget: Budget = field(default_factory=Budget)
    pc_budget: Budget = field(default_factory=Budget)
    lookahead: int | None = None
    template: str = "chat"
    sparse: SparsePrefillConfig | None = None

    @classmethod
    def of(cls, options: GenerationOptions, method: str, template: str, sparse: SparsePrefillConfig | None) -> Plan:
        """``options`` resolved against an engine's defaults (its ``method``, ``template`` and ``sparse`` prefill)."""
        chosen, budget = methods.get(options.method or method), options.prompt_budget
        if (budget.auto or budget.adaptive) and chosen.evicts_kv:
            what = "auto' (fit the target's window)" if budget.auto else "adaptive' (sized by the draft's attention)"
            raise ValueError(f"budget='{what} is for method='specpc', got method={chosen}")
        sparse = sparse if options.sparse_prefill is None else options.sparse
        return cls(chosen, options.sampling, budget, options.pc, options.lookahead_tokens,
                   options.template or template, sparse)  # fmt: skip
