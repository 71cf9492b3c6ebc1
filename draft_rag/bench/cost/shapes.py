"""The cost bench's targets: public Llama-architecture shapes built with random weights, and its budget levels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...attention import implementation
from ...models import LoadedModel, placement

# Llama-architecture shapes from each model's public config.json on the Hugging Face hub (read by hand: the hub
# is unreachable here). The vocabulary is replaced by the draft's; rope scaling is left out (it costs nothing).
SHAPES = {
    # HuggingFaceTB/SmolLM2-360M-Instruct/config.json
    "smollm2-360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    # HuggingFaceTB/SmolLM2-1.7B-Instruct/config.json
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 130000.0,
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.1-8B-Instruct/config.json (vocabulary 128,256 there; the draft's 49,152 here)
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
}
METHODS = ("full", "specpc", "speckv", "speckv-pc")


@dataclass(frozen=True)
class BudgetLevel:
    """One budget level: SpecPC's prompt ratio and SpecKV's entries per layer and KV head (both for speckv-pc)."""

    ratio: float
    kv: int


DEFAULT_BUDGETS = (BudgetLevel(0.25, 256), BudgetLevel(0.5, 1024))


def build_target(shape: str, draft: LoadedModel, layers: int | None = None, device=None, dtype=None) -> LoadedModel:
    """A random-weight Llama with ``SHAPES[shape]`` (``layers`` of them, default all) and the draft's vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    device, dtype, attn = placement(device, dtype, implementation(draft.model).removeprefix("draft_rag+"))
    dc = draft.model.config
    config = LlamaConfig(
        **{**SHAPES[shape], "num_hidden_layers": layers or SHAPES[shape]["num_hidden_layers"]},
        vocab_size=dc.vocab_size,
        max_position_embeddings=131072,
        bos_token_id=dc.bos_token_id,
        eos_token_id=dc.eos_token_id,
        pad_token_id=dc.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype).eval()
    return LoadedModel(model, draft.tokenizer, f"{shape}[{config.num_hidden_layers} layers]")


def target_params(shape: str, draft: LoadedModel) -> int:
    """Parameter count of the full-depth target (the draft's vocabulary), computed from the shape."""
    s, vocab = SHAPES[shape], draft.model.config.vocab_size
    h, head = s["hidden_size"], s["hidden_size"] // s["num_attention_heads"]
    attn = 2 * h * h + 2 * h * s["num_key_value_heads"] * head
    layer = attn + 3 * h * s["intermediate_size"] + 2 * h
    return s["num_hidden_layers"] * layer + vocab * h * (1 if s["tie_word_embeddings"] else 2) + h
