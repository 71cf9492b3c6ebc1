"""Window-attention capture: same probabilities as the model's own eager attention, outputs unchanged."""

import copy

import pytest
import torch
from conftest import ARCHS, on_device, tiny_model, tolerance

from draft_rag.attention import PREFIX, attach, observe, window_probs

W = 6


def _ids(n=80):
    torch.manual_seed(1)
    return torch.randint(5, 300, (1, n))


@pytest.mark.parametrize("arch", ARCHS)
def test_window_probs_match_eager_attention(arch, attn_kernel, device_dtype):
    """The captured window rows against the model's own eager attention (CPU fp32), on every device and kernel."""
    eager = tiny_model(arch, "eager").model
    model = on_device(eager, device_dtype, attn_kernel)
    ids = _ids()
    with torch.no_grad():
        reference = eager(ids, output_attentions=True).attentions
        captured = {}

        def grab(module, query, key, mask, kwargs):
            captured[module.layer_idx] = window_probs(query, key, mask, kwargs, W)

        with observe(model, grab):
            model(ids.to(device_dtype[0]))
    assert sorted(captured) == list(range(len(reference)))
    for layer, ref in enumerate(reference):
        got = captured[layer]
        b, hkv, g, w, k = got.shape
        got = got.reshape(b, hkv * g, w, k).float().cpu()
        torch.testing.assert_close(got, ref[:, :, -W:, :].float(), **tolerance(device_dtype[1]))


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_leaves_outputs_unchanged_and_holds_only_window_rows(arch, attn_kernel, device_dtype):
    plain = on_device(tiny_model(arch).model, device_dtype, attn_kernel)
    wrapped = copy.deepcopy(plain)
    ids = _ids(120).to(device_dtype[0])
    shapes = []
    with torch.no_grad():
        expected = plain(ids).logits
        with observe(wrapped, lambda m, q, k, mask, kw: shapes.append(window_probs(q, k, mask, kw, W).shape)):
            got = wrapped(ids).logits
    assert wrapped.config._attn_implementation == PREFIX + attn_kernel
    torch.testing.assert_close(got, expected)  # the same kernel runs: bit for bit
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
