import pytest

from draft_rag import SpecPCConfig


def test_paper_defaults():
    c = SpecPCConfig()
    assert (
        c.window_size,
        c.pool_type,
        c.kernel_size,
        c.reduction_type,
        c.neighbor_tokens,
        c.starting_layer_index,
        c.weighted_query,
        c.lookahead_tokens,
    ) == (64, "max", None, "max", None, 8, True, 1)
    assert c.budget_for(5000) == 1024


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(window_size=0), "window_size"),
        (dict(kernel_size=-1), "kernel_size"),
        (dict(pool_type="median"), "pool_type"),
        (dict(reduction_type="sum"), "reduction_type"),
        (dict(neighbor_tokens=1.5), "neighbor_tokens"),
        (dict(starting_layer_index=-1), "starting_layer_index"),
        (dict(lookahead_tokens=True), "lookahead_tokens"),
        (dict(weighted_query="yes"), "weighted_query"),
        (dict(ratio=1.5), "ratio"),
        (dict(ratio=0), "ratio"),
        (dict(max_capacity_prompt=0), "max_capacity_prompt"),
        (dict(max_capacity_prompt=10, ratio=0.5), "not both"),
    ],
)
def test_bad_values_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SpecPCConfig(**kwargs)


def test_ratio_budget_and_replace():
    c = SpecPCConfig(ratio=0.25)
    assert c.budget_for(400) == 100
    d = c.replace(max_capacity_prompt=50)
    assert d.ratio is None and d.budget_for(400) == 50
    assert d.replace(ratio=0.5).max_capacity_prompt is None


@pytest.mark.parametrize("arch, kernel", [("llama", 32), ("qwen2", 64), ("qwen3", 64), ("mistral", 32), ("gemma3", 32)])
def test_kernel_and_neighbours_default_by_draft_family(arch, kernel):
    from conftest import tiny_model

    model = tiny_model(arch).model
    c = SpecPCConfig().for_draft(model)
    assert (c.kernel_size, c.neighbor_tokens) == (kernel, kernel)
    assert SpecPCConfig(kernel_size=16).for_draft(model).neighbor_tokens == 16  # neighbours follow the kernel
    c = SpecPCConfig(kernel_size=16, neighbor_tokens=0).for_draft(model)
    assert (c.kernel_size, c.neighbor_tokens) == (16, 0)
