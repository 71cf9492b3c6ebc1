"""Loading real targets the way users load them: device_map, dtype, attn_implementation, from_pretrained kwargs."""

import pytest
import torch

import draft_rag.models as models
from draft_rag import DraftEngine, SpecKVConfig, SpecPCConfig, load_model
from draft_rag.models import input_device

PC = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
KV = SpecKVConfig(window_size=8)
CONTEXT = "The grass is green. The sky is blue. " * 20 + "The magic number is 4728163. " + "Here we go. " * 20


@pytest.fixture
def from_pretrained_calls(monkeypatch) -> dict:
    """The keyword arguments of each ``from_pretrained`` call on the Auto classes, by class name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen: dict = {}
    for cls in (AutoModelForCausalLM, AutoTokenizer):

        def spy(klass, path, *args, _orig=cls.from_pretrained.__func__, _name=cls.__name__, **kwargs):
            seen[_name] = kwargs
            return _orig(klass, path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(models, "_loaded", {})  # loads cached by earlier tests would skip from_pretrained
    return seen


def test_device_map_auto_on_cpu_generates_like_a_plain_load(tiny_dir, from_pretrained_calls):
    plain = load_model(tiny_dir)
    mapped = load_model(tiny_dir, device_map="auto")
    assert mapped is not plain and from_pretrained_calls["AutoModelForCausalLM"]["device_map"] == "auto"
    assert input_device(mapped.model).type == "cpu"
    for method in ("specpc", "speckv"):
        args = dict(question="What is the magic number?", method=method, budget=48, max_new_tokens=6)
        a = DraftEngine(plain, specpc=PC, speckv=KV).generate(CONTEXT, **args)
        b = DraftEngine(mapped, specpc=PC, speckv=KV).generate(CONTEXT, **args)
        assert a.text == b.text and a.stats.prompt_tokens == b.stats.prompt_tokens
        assert a.stats.kv_entries == b.stats.kv_entries


def test_model_kwargs_reach_from_pretrained(tiny_dir, from_pretrained_calls):
    # A config attribute given to from_pretrained overrides the saved config: a visible effect of the kwarg.
    lm = load_model(tiny_dir, model_kwargs={"max_position_embeddings": 4321})
    assert lm.model.config.max_position_embeddings == 4321
    assert load_model(tiny_dir).model.config.max_position_embeddings != 4321  # cached per set of options

    seen = from_pretrained_calls
    load_model(tiny_dir, dtype="bfloat16", attn_implementation="eager", model_kwargs={"trust_remote_code": True})
    assert seen["AutoModelForCausalLM"]["trust_remote_code"] is True
    assert seen["AutoModelForCausalLM"]["dtype"] == torch.bfloat16
    assert seen["AutoModelForCausalLM"]["attn_implementation"] == "eager"
    assert seen["AutoTokenizer"]["trust_remote_code"] is True  # remote-code tokenizers need it as well


def test_engine_loads_target_and_draft_with_their_own_options(tiny_dir):
    engine = DraftEngine(
        tiny_dir,
        tiny_dir,
        dtype="float32",
        target_kwargs={"model_kwargs": {"max_position_embeddings": 1234}},
        draft_kwargs={"device_map": "auto"},
    )
    assert engine.target.model.config.max_position_embeddings == 1234
    assert engine.draft.model is not engine.target.model
    assert engine.draft.model.config.max_position_embeddings != 1234


def test_loaded_models_are_used_as_they_are(tiny_dir):
    lm = load_model(tiny_dir)
    engine = DraftEngine(lm, lm, target_kwargs={"device_map": "auto"}, draft_kwargs={"dtype": "bfloat16"})
    assert engine.target is lm and engine.draft is lm


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: load_model("x", device="cpu", device_map="auto"), "device_map"),
        (lambda: load_model("x", model_kwargs={"torch_dtype": "float16"}), "model_kwargs must not hold"),
        (lambda: load_model("x", model_kwargs=["trust_remote_code"]), "model_kwargs must be a dict"),
        (lambda: DraftEngine("x", target_kwargs={"quantization_config": None}), "target_kwargs has unknown keys"),
        (lambda: DraftEngine("x", draft_kwargs="auto"), "draft_kwargs must be a dict"),
    ],
)
def test_bad_load_options_name_the_argument(call, word):
    with pytest.raises((ValueError, TypeError), match=word):
        call()


def test_inputs_go_to_the_embedding_device():
    class Split(torch.nn.Module):  # a stand-in for a model dispatched over devices: embedding on "meta"
        device = torch.device("cpu")

        def get_input_embeddings(self):
            return torch.nn.Embedding(4, 2, device="meta")

    assert input_device(Split()).type == "meta"
    assert models.LOAD_OPTIONS == ("device", "dtype", "attn_implementation", "device_map", "model_kwargs")


def test_every_adapter_passes_load_options_to_its_models(tiny_dir):
    from langchain_draft_rag import ChatDraftCompressed, DraftCompressedLLM, DraftDocumentCompressor
    from llama_index.llms.draft_rag import DraftCompressedLLM as LlamaLLM
    from llama_index.postprocessor.draft_rag import DraftNodePostprocessor

    target = {"model_kwargs": {"max_position_embeddings": 2222}}
    draft = {"device_map": "auto", "model_kwargs": {"max_position_embeddings": 3333}}
    adapters = [
        ChatDraftCompressed(target=tiny_dir, draft=tiny_dir, target_kwargs=target, draft_kwargs=draft),
        DraftCompressedLLM(target=tiny_dir, draft=tiny_dir, target_kwargs=target, draft_kwargs=draft),
        LlamaLLM(target=tiny_dir, draft=tiny_dir, target_kwargs=target, draft_kwargs=draft),
    ]
    for adapter in adapters:
        assert adapter._engine.target.model.config.max_position_embeddings == 2222
        assert adapter._engine.draft.model.config.max_position_embeddings == 3333
    for pruner in (
        DraftDocumentCompressor(draft=tiny_dir, draft_kwargs=draft),
        DraftNodePostprocessor(draft=tiny_dir, draft_kwargs=draft),
    ):
        assert pruner._engine.draft.model.config.max_position_embeddings == 3333
    with pytest.raises(ValueError, match="draft_kwargs has unknown keys"):
        DraftNodePostprocessor(draft=tiny_dir, draft_kwargs={"trust_remote_code": True})
