"""Request bodies as pydantic models mirroring OpenAI's schema: strict types, finite numbers, bounded sizes.

Every field a client may send is checked before the request waits for the engine, so bad input is a 400 that
names the field (``request_error``). Fields this module does not name pass through (a proxy forwards them).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..engine import METHODS
from .errors import ApiError

MAX_DEPTH = 32  # JSON nesting a body may have (OpenAI's own schema needs under 10)
MAX_MESSAGES = 4096
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[int, Field(ge=1)]
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


class ContentPart(BaseModel):
    """One part of a message's content: ``{"type": "text", "text": ...}``, an image, audio, ..."""

    model_config = STRICT
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Role
    content: str | list[str | ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = STRICT
    type: Literal["text", "json_object", "json_schema"]


class DraftOptions(BaseModel):
    """The request's ``draft_rag`` field: compression for this request (the server's defaults otherwise)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    method: Literal[METHODS] | None = None
    budget: Positive | Literal["auto", "adaptive"] | None = None
    ratio: Fraction | None = None
    pc_budget: Positive | None = None
    pc_ratio: Fraction | None = None
    lookahead_tokens: Annotated[int, Field(ge=0, le=65_536)] | None = None
    sparse_prefill: bool | None = None

    @model_validator(mode="after")
    def _one_budget(self):
        for size, share in (("budget", "ratio"), ("pc_budget", "pc_ratio")):
            if getattr(self, size) is not None and getattr(self, share) is not None:
                raise ValueError(f"give {size} or {share}, not both")
        return self

    def budgets(self, budget, ratio) -> tuple:
        """``(budget, ratio)``: this request's when it gives either, else the server's ``budget, ratio``."""
        return (self.budget, self.ratio) if self.budget is not None or self.ratio is not None else (budget, ratio)


class _Completion(BaseModel):
    """Fields chat and text completions share."""

    model_config = STRICT
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Positive | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: Annotated[str, Field(max_length=1000)] | Annotated[list[str], Field(max_length=4)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None
    draft_rag: DraftOptions | None = None

    def draft(self) -> DraftOptions:
        return self.draft_rag or DraftOptions()

    def completion_limit(self, most: int) -> int | None:
        """The completion tokens asked for (None: not given); a 400 naming the field when over ``most``."""
        field, value = self.token_limit()
        if value is not None and value > most:
            raise ApiError(400, f"{field} must be at most {most}, got {value}", field)
        return value

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(s for s in self.stop or () if s)


class ChatRequest(_Completion):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Positive | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    functions: list[dict] | None = None

    def token_limit(self) -> tuple[str, int | None]:
        """The field that limits the completion, and its value (None: not given)."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class CompletionRequest(_Completion):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
    )
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> tuple[str, int | None]:
        return "max_tokens", self.max_tokens


def _field_names(*models) -> set[str]:
    names, todo = set(), list(models)
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            names.add(name)
            todo += [
                a for a in getattr(info.annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)
            ]
    return names


FIELDS = _field_names(ChatRequest, CompletionRequest, ChatMessage, ContentPart, DraftOptions)


def _param(loc: tuple) -> str:
    """``("messages", 0, "str", "role")`` -> ``messages[0].role``: field names and indices, without union tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in FIELDS:
            out += ("." if out else "") + part
    return out


def request_error(exc: ValidationError) -> ApiError:
    """The first bad field of a body as a 400 naming it (a union's alternatives joined with 'or')."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "extra_forbidden":  # only draft_rag forbids unknown keys
        param = _param(errors[0]["loc"][:-1]) + "." + str(errors[0]["loc"][-1])
        return ApiError(
            400,
            f"{param} is not a draft_rag option; expected some of {list(DraftOptions.model_fields)}",
            param,
            "invalid_value",
        )
    param = _param(errors[0]["loc"])
    same = [e for e in errors if _param(e["loc"]) == param]
    msgs = list(dict.fromkeys(e["msg"] for e in same))
    got = json.dumps(same[0].get("input"), default=repr)[:80] if same[0]["type"] != "missing" else None
    text = f"{param}: {' or '.join(msgs)}" + (f" (got {got})" if got is not None else "")
    if len(errors) > len(same):
        text += f"; {len(errors) - len(same)} more error(s) in other fields"
    return ApiError(400, text, param or None, "invalid_value")


def depth(obj, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed JSON, counted without recursion; stops counting past ``limit``."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level > limit:
                return level
            todo += [(v, level + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


def parse(model: type[BaseModel], body: dict):
    """``body`` validated as ``model``, or an ``ApiError`` naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


async def read_json(request, limit: int, timeout: float) -> dict:
    """The request body as a JSON object: 413 past ``limit`` bytes, 408 if it takes over ``timeout`` s to arrive,
    400 if it is not a JSON object or nests deeper than ``MAX_DEPTH``."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body is {size} bytes; the limit is {limit}", code="request_too_large")
    body = bytearray()
    try:
        with anyio.fail_after(timeout):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="body_timeout") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, f"the request body must be a JSON object nested at most {MAX_DEPTH} deep") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    if depth(data) > MAX_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels", code="too_deep")
    return data
