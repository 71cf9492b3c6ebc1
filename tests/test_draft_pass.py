"""The cheap draft pass gives the scores of the straightforward one (fp32 keys, full boolean mask)."""

import copy

import pytest
import torch
from conftest import ARCHS, tiny_model

from draft_rag import SpecPCConfig
from draft_rag.attention import _allowed, observe, window_probs
from draft_rag.scoring import cache_kwarg, draft_scores


def reference_probs(query, key, attention_mask, kwargs, window):
    """The former implementation: every key copied to fp32, a [B, W, K] mask built and applied."""
    b, hq, q_len, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    w = min(window, q_len)
    q = query[:, :, -w:].float().reshape(b, hkv, hq // hkv, w, d)
    scale = kwargs.get("scaling") or d**-0.5
    logits = torch.einsum("bhgwd,bhkd->bhgwk", q, key.float()) * scale
    if kwargs.get("softcap"):
        logits = torch.tanh(logits / kwargs["softcap"]) * kwargs["softcap"]
    allowed = _allowed(attention_mask, b, q_len, k_len, w, kwargs.get("sliding_window"), query.device)
    return torch.softmax(logits.masked_fill(~allowed[:, None, None], float("-inf")), -1).nan_to_num(0.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_window_probs_equal_the_reference_in_prefill_and_decode(arch):
    model = copy.deepcopy(tiny_model(arch).model)
    pairs, masks = [], []

    def grab(module, query, key, mask, kwargs):
        masks.append(mask is None)
        pairs.append((window_probs(query, key, mask, kwargs, 8), reference_probs(query, key, mask, kwargs, 8)))

    with torch.no_grad(), observe(model, grab):
        out = model(torch.randint(5, 300, (1, 90)), use_cache=True)
        model(torch.tensor([[7]]), use_cache=True, **{cache_kwarg(model): out.past_key_values})
    assert len(pairs) == 2 * model.config.num_hidden_layers
    if arch == "llama":
        assert any(masks)  # the causal fast path (no mask tensor) is exercised
    for got, ref in pairs:
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_bf16_keys_are_not_upcast_but_scores_stay_close():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 50, 16), torch.randn(1, 2, 50, 16)
    ref = window_probs(q, k, None, {}, 8)
    got = window_probs(q.bfloat16(), k.bfloat16(), None, {}, 8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=0)


def test_draft_scores_are_the_same_with_sdpa_and_eager():
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8, lookahead_tokens=2)
    ids = torch.randint(5, 300, (120,)).tolist()
    eager = draft_scores(tiny_model("llama", "eager").model, ids, cfg)
    sdpa = draft_scores(tiny_model("llama", "sdpa").model, ids, cfg)
    assert eager.lookahead_ids == sdpa.lookahead_ids
    torch.testing.assert_close(sdpa.scores, eager.scores, atol=1e-5, rtol=1e-4)
