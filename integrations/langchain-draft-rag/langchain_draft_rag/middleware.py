"""DraftCompressionMiddleware: SpecPC on the retrieved context of every model call a LangChain v1 agent makes.

``create_agent(model, tools=[retrieve], middleware=[DraftCompressionMiddleware(ratio=0.25)])``: the agent's state
keeps the full messages; each model call sees them with the retrieved context compressed by
``draft_rag.messages``'s rule. Needs the ``langchain`` (v1) package; docs/langchain.md has the whole page.
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

    Args: ``draft``, ``budget`` / ``ratio``, ``context_window``, ``specpc``, ``draft_kwargs``, as in
    ``ChatDraftCompressed(llm=...)`` (with neither budget nor ratio: fit the model's input window). The stats in
    ``response_metadata["draft_rag"]`` of the model's reply say which budget applied and why (``budget_reason``).
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
