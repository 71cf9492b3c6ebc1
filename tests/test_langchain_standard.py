"""LangChain's own standard test suites (langchain-tests) run against ChatDraftCompressed.

Unit suites: a tiny random-weight model as target, and wrapped (construction, params, tracing).
Integration suite: the real SmolLM2-135M-Instruct, once as a local target with SpecPC and once wrapped around
another chat model.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from conftest import tiny_model  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from draft_rag import SpecPCConfig  # noqa: E402
from langchain_draft_rag import ChatDraftCompressed  # noqa: E402

TINY_SPECPC = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)


class TestChatDraftCompressedUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatDraftCompressed

    @property
    def chat_model_params(self):
        return {"target": tiny_model("llama"), "specpc": TINY_SPECPC, "budget": 64}

    @property
    def has_tool_calling(self) -> bool:
        return False  # bind_tools delegates to a wrapped model; a local target (used here) has no tool calling


class TestChatDraftCompressedWrappedUnit(TestChatDraftCompressedUnit):
    @property
    def chat_model_params(self):
        inner = ChatDraftCompressed(target=tiny_model("llama"), method="full")
        return {"llm": inner, "draft": tiny_model("llama"), "specpc": TINY_SPECPC, "budget": 64}


@pytest.mark.slow
class TestChatDraftCompressedLocal(ChatModelIntegrationTests):
    """Local target: SmolLM2 answers, SpecPC (draft = the target itself) compresses long prompts."""

    @property
    def chat_model_class(self):
        return ChatDraftCompressed

    @property
    def chat_model_params(self):
        return {"target": "smollm2-135m-instruct", "method": "specpc", "budget": 256, "max_tokens": 4}

    @property
    def supports_model_override(self) -> bool:
        return False  # one local target per instance; a per-call model= raises ValueError

    @property
    def has_tool_calling(self) -> bool:
        return False  # bind_tools raises NotImplementedError for a local target


@pytest.mark.slow
class TestChatDraftCompressedWrapped(ChatModelIntegrationTests):
    """Wrapped mode: SpecPC in front of another LangChain chat model (here a local SmolLM2 without compression)."""

    @property
    def chat_model_class(self):
        return ChatDraftCompressed

    @property
    def chat_model_params(self):
        inner = ChatDraftCompressed(target="smollm2-135m-instruct", method="full", max_tokens=4)
        return {"llm": inner, "draft": "smollm2-135m-instruct", "budget": 256}

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def has_tool_calling(self) -> bool:
        return False  # the wrapped model here is a local target, without tool calling
