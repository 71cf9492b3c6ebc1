"""KV-eviction baselines behind SpecKV's interface: each method is a scorer of the prompt keys before the
window, and ``speckv.keep_indices`` keeps the top ``budget - window`` of them plus the window
(``methods.REGISTRY`` names each method's scorer).

- ``speckv`` / ``speckv-pc``: window-query attention, the window including the draft lookahead.
- ``snapkv``: the same attention scores without a lookahead (window = last prompt tokens).
- ``streamingllm``: the first ``sink_tokens`` plus the most recent tokens.
- ``random``: a seeded random choice (independent per layer and KV head); the window is still kept.
"""

from __future__ import annotations

import torch


def streaming_scores(
    query, key, attention_mask, kwargs, n_prompt: int, window: int, sink_tokens: int = 4
) -> torch.Tensor:
    """Sinks score highest, then recency: the top-k is the first ``sink_tokens`` + the most recent keys."""
    b, h = key.shape[:2]
    scores = torch.arange(n_prompt - window, device=key.device, dtype=torch.float32)
    scores[:sink_tokens] = float("inf")
    return scores.expand(b, h, -1)


class RandomScores:
    """Seeded uniform scores; one generator per prefill, so a run is reproducible."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, query, key, attention_mask, kwargs, n_prompt: int, window: int) -> torch.Tensor:
        b, h = key.shape[:2]
        return torch.rand(b, h, n_prompt - window, generator=self.generator).to(key.device)
