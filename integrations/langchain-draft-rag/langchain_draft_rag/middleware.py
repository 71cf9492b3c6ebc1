"""DraftCompressionMiddleware: SpecPC on the retrieved context of every model call a LangChain v1 agent makes.

Setup::

    from langchain.agents import create_agent
    from langchain_draft_rag.middleware import DraftCompressionMiddleware

    agent = create_agent(model, tools=[retrieve], middleware=[DraftCompressionMiddleware(ratio=0.25)])

The agent's state keeps the full messages; each model call sees them with the retrieved context (tool results,
long context in the system prompt or a human message) compressed by ``draft_rag.messages``'s rule, the question,
instructions, tool calls and ids unchanged. The stats are in ``response_metadata["draft_rag"]`` of the model's
reply. Needs the ``langchain`` (v1) package.
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.middleware.types import ExtendedModelResponse
from langchain_core.messages import AIMessage

from draft_rag.adapters import GenerationOptions, front_messages, shared_engine
from draft_rag.config import check_int

from . import _common as common
from ._messages import rebuild, to_dicts


class DraftCompressionMiddleware(AgentMiddleware):
    """Compress the retrieved context in front of any chat model an agent calls, sync and async.

    Args:
        draft: the draft model (anything ``draft_rag.load_model`` accepts); default: the built-in SmolLM2.
        budget: draft tokens the prompt is compressed to (protected text included); ``"auto"``: as many as fit the
            model's input window; ``"adaptive"``: as many as the draft's attention needs, within that window.
            With neither ``budget`` nor ``ratio``, ``"auto"``.
        ratio: instead of ``budget``, the fraction of the retrieved context kept (0.25 keeps a quarter).
        context_window: the model's input window in tokens, for ``"auto"``/``"adaptive"``; default: the chat
            model's ``profile["max_input_tokens"]``, else ``draft_rag.config.ASSUMED_WINDOW`` (32768; logged once).
        specpc: a ``draft_rag.SpecPCConfig`` for the other SpecPC settings.
        draft_kwargs: ``draft_rag.load_model`` options for the draft (``device_map``, ``dtype``, ...).

    The stats in ``response_metadata["draft_rag"]`` say which budget applied and why (``budget_reason``).
    """

    def __init__(
        self,
        draft: Any = None,
        *,
        budget: int | str | None = None,
        ratio: float | None = None,
        context_window: int | None = None,
        specpc: Any = None,
        draft_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.options = GenerationOptions(method="specpc", budget=budget, ratio=ratio)  # checks them
        check_int("context_window", context_window, 1, allow_none=True)
        self.budget, self.ratio, self.context_window = budget, ratio, context_window
        self.engine = shared_engine(None, draft, specpc, draft_kwargs=draft_kwargs)
        self._warned_window = False

    def compress(self, request: ModelRequest) -> tuple[ModelRequest, dict]:
        """The request with its messages' retrieved context compressed, and the stats."""
        system = [request.system_message] if request.system_message is not None else []
        messages = system + list(request.messages)
        compressed, stats = common.front(self, request.model, front_messages, self.options, to_dicts(messages))
        new = rebuild(messages, compressed)
        return request.override(system_message=new[0] if system else None, messages=new[len(system) :]), stats

    def wrap_model_call(self, request: ModelRequest, handler) -> Any:
        new, stats = self.compress(request)
        return _with_stats(handler(new), stats)

    async def awrap_model_call(self, request: ModelRequest, handler) -> Any:
        new, stats = await asyncio.to_thread(self.compress, request)
        return _with_stats(await handler(new), stats)


def _with_stats(response: Any, stats: dict) -> Any:
    """The model's reply with ``response_metadata["draft_rag"] = stats`` on its (last) AI message."""
    if isinstance(response, AIMessage):
        return response.model_copy(update={"response_metadata": {**response.response_metadata, "draft_rag": stats}})
    if isinstance(response, ExtendedModelResponse):
        return ExtendedModelResponse(_with_stats(response.model_response, stats), response.command)
    if isinstance(response, ModelResponse):
        result = list(response.result)
        last = max((i for i, m in enumerate(result) if isinstance(m, AIMessage)), default=None)
        if last is not None:
            result[last] = _with_stats(result[last], stats)
        return ModelResponse(result=result, structured_response=response.structured_response)
    return response
