"""Render a prompt template the way LlamaIndex's ``LLM.predict`` does (through its private ``_get_prompt`` and
``_get_messages``), from public API only: ``BasePromptTemplate.format``/``format_messages``/``get_template`` and
the LLM's output parser, system prompt, query wrapper, prompt converters and callback manager. DraftCompressedLLM
renders templates itself to find the retrieved context in them; ``tests/test_llamaindex_llm.py`` holds these
functions to ``LLM.predict``'s output (a contract test that fails if LlamaIndex renders templates differently).
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.llms.llm import LLM
from llama_index.core.prompts import BasePromptTemplate


def render_prompt(llm: LLM, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
    """The text ``llm.predict(prompt, **prompt_args)`` completes (a completion model)."""
    text = prompt.format(
        llm=llm, messages_to_prompt=llm.messages_to_prompt, completion_to_prompt=llm.completion_to_prompt, **prompt_args
    )
    if llm.output_parser is not None:
        text = llm.output_parser.format(text)
    if llm.system_prompt:
        text = llm.system_prompt + "\n\n" + text
    if llm.query_wrapper_prompt:
        text = llm.query_wrapper_prompt.format(query_str=text)
    return text


def render_messages(llm: LLM, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
    """The messages ``llm.predict(prompt, **prompt_args)`` sends to chat (a chat model)."""
    messages = prompt.format_messages(llm=llm, **prompt_args)
    if llm.output_parser is not None:
        messages = llm.output_parser.format_messages(messages)
    if llm.system_prompt:
        messages = [ChatMessage(role=MessageRole.SYSTEM, content=llm.system_prompt), *messages]
    return messages


def log_template(llm: LLM, prompt: BasePromptTemplate, prompt_args: dict) -> None:
    """The ``TEMPLATING`` callback event ``LLM.predict`` sends before it calls the model."""
    template_vars = {k: v for k, v in ChainMap(prompt.kwargs, prompt_args).items() if k in prompt.template_vars}
    payload = {
        EventPayload.TEMPLATE: prompt.get_template(llm=llm),
        EventPayload.TEMPLATE_VARS: template_vars,
        EventPayload.SYSTEM_PROMPT: llm.system_prompt,
        EventPayload.QUERY_WRAPPER_PROMPT: llm.query_wrapper_prompt,
    }
    with llm.callback_manager.event(CBEventType.TEMPLATING, payload=payload):
        pass
