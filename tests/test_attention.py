"""Window-attention capture: same probabilities as the model's own eager attention, outputs unchanged."""

import copy

import pytest
import torch
from conftest import ARCHS, tiny_model

from draft_rag.attention import PREFIX, attach, observe, window_probs

W = 6


def _ids(n=80):
    torch.manual_seed(1)
    return torch.randint(5, 300, (1, n))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_window_probs_match_eager_attention(arch, attn):
    eager = tiny_model(arch, "eager").model
    model = copy.deepcopy(eager)
    model.set_attn_implementation(attn)
    ids = _ids()
    with torch.no_grad():
        reference = eager(ids, output_attentions=True).attentions
        captured = {}

        def grab(module, query, key, mask, kwargs):
            captured[module.layer_idx] = window_probs(query, key, mask, kwargs, W)

        with observe(model, grab):
            model(ids)
    assert sorted(captured) == list(range(len(reference)))
    for layer, ref in enumerate(reference):
        got = captured[layer]
        b, hkv, g, w, k = got.shape
        torch.testing.assert_close(got.reshape(b, hkv * g, w, k), ref[:, :, -W:, :].float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_leaves_outputs_unchanged_and_holds_only_window_rows(arch):
    plain = tiny_model(arch).model
    wrapped = copy.deepcopy(plain)
    ids = _ids(120)
    shapes = []
    with torch.no_grad():
        expected = plain(ids).logits
        with observe(wrapped, lambda m, q, k, mask, kw: shapes.append(window_probs(q, k, mask, kw, W).shape)):
            got = wrapped(ids).logits
    assert wrapped.config._attn_implementation == PREFIX + "sdpa"
    torch.testing.assert_close(got, expected)
    assert all(s[-2] == W and s[-1] == 120 for s in shapes)  # W x N per head, never N x N


def test_attach_is_idempotent_and_observer_is_scoped():
    model = copy.deepcopy(tiny_model("llama").model)
    attach(model)
    attach(model)
    assert model.config._attn_implementation == PREFIX + "sdpa"
    calls = []
    with torch.no_grad():
        with observe(model, lambda *a: calls.append(1)):
            model(_ids(10))
        n = len(calls)
        model(_ids(10))
    assert n == model.config.num_hidden_layers and len(calls) == n
