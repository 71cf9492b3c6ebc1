"""Chat messages (OpenAI-style dicts): which text is retrieved context, which is protected, and the chat layout.

The rule, per message (``role`` and ``content``; every other key is carried through untouched):

* assistant messages, messages with non-text parts and messages shorter than ``LONG_CHARS`` are protected whole;
* a long tool (or function) message is retrieved data: all of it is context;
* a long system, developer or user message is split. Labelled parts (``Question:``, ``Context:``, ``Answer:``,
  ``## Context``, ``<context>...</context>``, ...) start at their label; the body of a context label
  (``CONTEXT_LABELS``) is context, every other label and its body is protected. Unlabelled text is split into
  paragraphs at blank lines and rule lines like ``-----`` (lines, if it is one long paragraph): the first
  paragraph (up to ``FIRST_CHARS``) and short paragraphs at each end (``UNIT_CHARS``, ``SHORT_CHARS`` in all) are
  protected (instructions before the context, a question or request after it), the rest is context;
* the last paragraph of the last user message (the question) is always protected; if it is long, only its last
  sentence is. When a tool result (or another message) follows it, or the message asks before its context
  (``Question: ... Context: ... Answer:``), the draft reads that question once more after the conversation, so
  its window queries are the question (the messages sent are unchanged; ``reread_question``).

Multi-turn history follows the same rule: earlier questions and answers are short, so protected; a long earlier
message (a pasted document, a tool result) is context, read with the latest question at the end of the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .prompt import Chunk, Segment, has_chat_template
from .specpc import CompressedPrompt
from .stats import CompressionStats

FIRST_CHARS = 1000  # the first paragraph of a long message, up to this long, is protected (instructions)
UNIT_CHARS, SHORT_CHARS = 200, 400  # then paragraphs up to UNIT_CHARS long at each end, SHORT_CHARS in all
LONG_CHARS = 1200  # messages shorter than this are protected whole
CONTEXT_LABELS = (
    "context",
    "contexts",
    "retrieved context",
    "documents",
    "document",
    "docs",
    "sources",
    "passages",
    "search results",
    "background",
    "knowledge",
)
OTHER_LABELS = (
    "question",
    "query",
    "user question",
    "input",
    "answer",
    "helpful answer",
    "response",
    "instructions",
    "instruction",
    "task",
    "rules",
)
_NAMES = "|".join(sorted((re.escape(n) for n in CONTEXT_LABELS + OTHER_LABELS), key=len, reverse=True))
_LABEL = re.compile(rf"(?im)^[ \t]*(?:#+[ \t]*)?(?:\*\*)?({_NAMES})(?:\*\*)?[ \t]*(?::|$)[ \t]*")
_TAG = re.compile(r"(?i)<(/?)(context|documents?|sources|passages|search_results)>")
_BREAK = re.compile(r"\n[ \t]*\n|^[ \t]*[-=*_~#]{3,}[ \t]*$", re.MULTILINE)
_LINE = re.compile(r"[^\n]*\S[^\n]*")
_SENTENCE = re.compile(r"\S[^.!?\n]*(?:[.!?]+|$)")
_SENTINEL = "\u2063DRAFTRAG{}\u2063"
_SENTINELS = re.compile("\u2063DRAFTRAG(\\d+)\u2063")


@dataclass
class CompressedMessages:
    """``messages``: a new list of new dicts; only ``content`` of messages whose context was compressed differs.

    ``stats``: token counts, kept fraction per message index, seconds, and a ``warning`` when the conversation
    is over budget but nothing in it is compressible (``stats.to_dict()`` for JSON). ``compressed``: SpecPC's
    result, or None.
    """

    messages: list[dict]
    stats: CompressionStats
    compressed: CompressedPrompt | None = None


@dataclass
class Layout:
    """Each message's text as segments (protected / ``context`` with a chunk index) and the context chunks."""

    contents: list[list[Segment]]
    chunks: list[Chunk] = field(default_factory=list)
    text_only: list[bool] = field(default_factory=list)


def text_of(message: dict, index: int) -> tuple[str, bool]:
    """A message's text and whether its content is text only (False: images, audio, ... present)."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or "", True
    if not isinstance(content, list):
        raise TypeError(
            f"messages[{index}]['content'] must be a string, a list of parts or None, got {type(content).__name__}"
        )
    texts, only_text = [], True
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            only_text = False
    return "".join(texts), only_text


def check_text_only(messages: list[dict], lay: Layout) -> None:
    """A local target reads text only: name the first message with other parts (images, audio, ...)."""
    for i, only in enumerate(lay.text_only):
        if not only:
            kinds = sorted(
                {
                    p.get("type", "?") if isinstance(p, dict) else type(p).__name__
                    for p in messages[i]["content"]
                    if not isinstance(p, str) and not (isinstance(p, dict) and p.get("type") == "text")
                }
            )
            raise ValueError(
                f"messages[{i}] has non-text parts {kinds}; a local target reads text only "
                "(compress_messages passes them through to a multimodal model)"
            )


def check(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise TypeError(f"messages[{i}] must be a dict with a 'role' string, got {m!r:.80}")
    return list(messages)


def layout(messages: list[dict], context: list[str] | None = None) -> Layout:
    """Split every message's text by the module's rule (see the module docstring).

    ``context``: texts known to be retrieved context (e.g. a template's ``{context_str}``); in a message that
    contains one, those texts are the context and the rest of it is protected, instead of the rule.
    """
    messages = check(messages)
    known = [c for c in context or () if isinstance(c, str) and c.strip()]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    lay = Layout([])
    for i, m in enumerate(messages):
        text, only_text = text_of(m, i)
        lay.text_only.append(only_text)
        found = _occurrences(text, known) if only_text and m["role"] != "assistant" else []
        if found:
            spans = found
        elif not only_text or m["role"] == "assistant" or len(text) < LONG_CHARS:
            spans = [(0, len(text), True)]
        elif m["role"] in ("tool", "function"):
            spans = [(0, len(text), False)]
        else:
            spans = split_text(text, question_last=i == last_user)
        lay.contents.append(_segments(text, spans, lay.chunks, i, {"message_index": i}))
    return lay


def _segments(text: str, spans, chunks: list[Chunk], chunk_id: Any, metadata: dict) -> list[Segment]:
    """``text`` as segments by ``(start, end, protected)`` spans; each context span is appended to ``chunks``."""
    segments = []
    for s, e, protected in _trim(text, spans):
        if protected:
            segments.append(Segment(text[s:e], "instruction"))
        else:
            segments.append(Segment(text[s:e], "context", len(chunks)))
            chunks.append(Chunk(text[s:e], id=chunk_id, metadata=dict(metadata)))
    return segments


def prompt_segments(prompt: str) -> tuple[list[Segment], list[Chunk], str | None]:
    """A completion prompt laid out by the module's rule, as if it were the last user message: labelled parts, the
    first and short end paragraphs and the question protected, the rest context; and the question the draft should
    read again at the end (``reread_question``: a prompt that asks before its context), or None.

    The protected text after the context (``Question: ... Answer:``, or that question read again) then ends every
    draft pass, so the draft reads the question while it scores each block of a long context. ``([], [], None)``
    when the rule finds no context, or the prompt is shorter than ``LONG_CHARS`` (one draft pass reads it whole).
    """
    if len(prompt) < LONG_CHARS:
        return [], [], None
    chunks: list[Chunk] = []
    segments = _segments(prompt, split_text(prompt, question_last=True), chunks, 0, {})
    if not chunks:
        return [], [], None
    return segments, chunks, reread_question([{"role": "user", "content": prompt}], Layout([segments], chunks))


def _occurrences(text: str, known: list[str]) -> list[tuple[int, int, bool]]:
    """Spans covering ``text``: each occurrence of a ``known`` context text is context, the rest protected."""
    hits = sorted((m.start(), m.start() + len(k)) for k in known for m in re.finditer(re.escape(k), text))
    spans, pos = [], 0
    for s, e in hits:
        if s >= pos:
            spans += [(pos, s, True), (s, e, False)]
            pos = e
    return [sp for sp in spans + [(pos, len(text), True)] if sp[1] > sp[0]] if hits else []


def split_text(text: str, question_last: bool = False) -> list[tuple[int, int, bool]]:
    """``(start, end, protected)`` spans covering ``text``: labelled parts first, then the paragraph rule."""
    marks = sorted(
        [(m.start(), m.end(), m.group(1).lower() in CONTEXT_LABELS) for m in _LABEL.finditer(text)]
        + [(m.start(), m.end(), not m.group(1)) for m in _TAG.finditer(text)]
    )
    spans, pos, kind = [], 0, None  # kind: None before any label, True in a context body, False in another
    for start, end, is_context in marks + [(len(text), len(text), None)]:
        final = start == len(text) and question_last
        if kind is None:
            spans += _plain(text, pos, start, final)
        elif kind:
            spans += _context(text, pos, start, final)
        else:
            spans.append((pos, start, True))
        spans.append((start, end, True))
        pos, kind = end, is_context
    return [s for s in spans if s[1] > s[0]]


def _units(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """Paragraphs of ``text[a:b]`` (split at blank lines and rule lines such as ``-----``), or its lines if it is
    one long paragraph; as ``(start, end)`` without the whitespace around them."""
    units, pos = [], a
    for m in [*_BREAK.finditer(text, a, b), None]:
        end = m.start() if m else b
        piece = text[pos:end]
        if piece.strip():
            units.append((pos + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())))
        pos = m.end() if m else b
    if len(units) == 1 and units[0][1] - units[0][0] > SHORT_CHARS:
        units = [(a + m.start(), a + m.end()) for m in _LINE.finditer(text[a:b])]
    return units


def _final_units(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """``_units``, but a long last unit that ends the last user message is split before its last sentence, so
    that sentence alone is the question (a document pasted as one line with the question after it)."""
    units = _units(text, a, b)
    if units and units[-1][1] - units[-1][0] > SHORT_CHARS:
        s0, e0 = units[-1]
        sentences = [m.start() for m in _SENTENCE.finditer(text, s0, e0)]
        if len(sentences) > 1:
            units[-1:] = [(s0, sentences[-1]), (sentences[-1], e0)]
    return units


QUESTION_LABELS = ("question", "query", "user question", "input")
_QUESTION = re.compile(
    rf"(?im)^[ \t]*(?:#+[ \t]*)?(?:\*\*)?(?:{'|'.join(map(re.escape, QUESTION_LABELS))})(?:\*\*)?[ \t]*(?::|$)"
    r"|<question>"
)
_ASKED = re.compile(r"[^.!?\n]*\?")


def reread_question(messages: list[dict], lay: Layout) -> str | None:
    """The question the draft should read once more at the end of its prompt, or None when it ends with it.

    The draft's window queries are the last tokens it reads; they must be the question. That is not so when
    the conversation continues after the last user message (a tool result, say: its last paragraph is the
    question), or when that message asks before its context ("Question: ... Context: ... Answer:", a
    ``<question>`` tag, or an unlabelled first paragraph that asks): then its question part is read again.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return None
    text, _ = text_of(messages[last_user], last_user)
    if last_user < len(messages) - 1:
        units = _final_units(text, 0, len(text))
        return text[units[-1][0] : units[-1][1]] if units else None
    segments = lay.contents[last_user]
    last_context = max((k for k, seg in enumerate(segments) if seg.chunk is not None), default=None)
    if last_context is None:
        return None
    before = "".join(seg.text for seg in segments[:last_context])
    after = "".join(seg.text for seg in segments[last_context + 1 :])
    if _QUESTION.search(after) or "?" in after:
        return None  # the question is already at the end
    labelled = list(_QUESTION.finditer(before))
    if labelled:
        start, rest = labelled[-1].start(), labelled[-1].end()
        ends = [m.start() for m in (*_LABEL.finditer(before, rest), *_TAG.finditer(before, rest))]
        close = before.lower().find("</question>", rest)
        end = close + len("</question>") if close >= 0 else min(ends, default=len(before))
        return before[start:end].strip() or None
    asked = _ASKED.findall(before)
    return asked[-1].strip() if asked else None


def _plain(text: str, a: int, b: int, final: bool) -> list[tuple[int, int, bool]]:
    """The first paragraph and short paragraphs at both ends protected, the middle is context."""
    units = _final_units(text, a, b) if final else _units(text, a, b)
    size = [e - s for s, e in units]
    j = len(units) - (1 if final and units else 0)
    i = 1 if j and size[0] <= FIRST_CHARS else 0
    total = 0
    while i < j and size[i] <= UNIT_CHARS and total + size[i] <= SHORT_CHARS:
        total, i = total + size[i], i + 1
    total = 0
    while j > i and size[j - 1] <= UNIT_CHARS and total + size[j - 1] <= SHORT_CHARS:
        total, j = total + size[j - 1], j - 1
    if i >= j:
        return [(a, b, True)]
    return [(a, units[i][0], True), (units[i][0], units[j - 1][1], False), (units[j - 1][1], b, True)]


def _context(text: str, a: int, b: int, final: bool) -> list[tuple[int, int, bool]]:
    """A context label's body: all context, except the last paragraph when it ends the last user message."""
    units = _units(text, a, b)
    if final and len(units) > 1:
        return [(a, units[-2][1], False), (units[-2][1], b, True)]
    if final:
        return [(a, b, True)]
    return [(a, b, False)]


def _trim(text: str, spans):
    """Whitespace at the edges of a context span goes to the protected side; neighbours of one kind merge."""
    out: list[tuple[int, int, bool]] = []
    for s, e, p in spans:
        body = text[s:e]
        s2, e2 = s + len(body) - len(body.lstrip()), e - len(body) + len(body.rstrip())
        pieces = [(s, e, True)] if p or s2 >= e2 else [(s, s2, True), (s2, e2, False), (e2, e, True)]
        for ps, pe, pp in pieces:
            if pe <= ps:
                continue
            if out and out[-1][2] == pp:
                out[-1] = (out[-1][0], pe, pp)
            else:
                out.append((ps, pe, pp))
    return out


def render(messages: list[dict], lay: Layout, tokenizer, template: str = "chat") -> list[Segment]:
    """The conversation as segments: chat-template text (role ``template``, the only trusted text) around each
    message's segments. With ``template="raw"`` (or no chat template) the messages are joined by blank lines."""
    if template not in ("chat", "raw"):
        raise ValueError(f"template must be 'chat' or 'raw', got {template!r}")
    if template == "raw" or not has_chat_template(tokenizer):
        lead = tokenizer("", add_special_tokens=True)["input_ids"]
        out = [Segment(tokenizer.decode(lead), "template")] if lead else []
        for i, segs in enumerate(lay.contents):
            out += ([Segment("\n\n", "separator")] if i else []) + segs
        return out
    plain = []
    for i, m in enumerate(messages):
        plain.append({**m, "content": _SENTINEL.format(i)})
        if m.get("tool_calls"):
            plain[-1]["tool_calls"] = [_openai_call(c) for c in m["tool_calls"]]
    cont = messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls")
    try:
        rendered = tokenizer.apply_chat_template(
            plain, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
        )
    except Exception as e:  # templates raise their own exception types (jinja2 TemplateError, ...)
        raise ValueError(f"the model's chat template cannot render these messages: {e}") from e
    out, pieces = [], _SENTINELS.split(rendered)
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            if piece:
                out.append(Segment(piece, "template"))
        else:
            out += lay.contents[int(piece)]
    return out


def rendered_indices(segments: list[Segment], lay: Layout) -> set[int]:
    """Indices of the messages whose context segments appear in ``segments`` (a template may drop messages)."""
    return {lay.chunks[s.chunk].id for s in segments if s.chunk is not None}


def _openai_call(call: Any) -> Any:
    """A LangChain-style ``{"name", "args", "id"}`` tool call in the OpenAI shape chat templates expect."""
    if isinstance(call, dict) and "function" not in call and "name" in call:
        return {
            "id": call.get("id"),
            "type": "function",
            "function": {"name": call["name"], "arguments": call.get("args", {})},
        }
    return call


def rebuild(messages: list[dict], lay: Layout, shortened: CompressedPrompt, indices: set[int]) -> list[dict]:
    """New dicts in the same order; ``content`` replaced (by a string) for the messages in ``indices`` only."""
    out = []
    for i, m in enumerate(messages):
        if i in indices:
            text = "".join(s.text if s.chunk is None else shortened.chunks[s.chunk].text for s in lay.contents[i])
            out.append({**m, "content": text})
        else:
            out.append(dict(m))
    return out
