"""DraftDocumentCompressor: prune retrieved documents by the draft's attention to them while reading the query;
DraftChunkWarmer: read documents into its chunk cache while indexing."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional, Union

from langchain_core.callbacks import CallbackManager, Callbacks
from langchain_core.documents import BaseDocumentCompressor, BaseDocumentTransformer, Document
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from draft_rag import DraftEngine
from draft_rag.adapters import ChunkPruning, KeptChunk, engine_of, setting

logger = logging.getLogger(__name__)
SCORE_KEY = "draft_rag_score"
RELEVANCE_KEY = "relevance_score"  # what LangChain's rerankers (Cohere, FlashRank, ...) set
SPANS_KEY = "draft_rag_kept_spans"
FRACTION_KEY = "draft_rag_kept_fraction"


class DraftDocumentCompressor(BaseDocumentCompressor):
    """Keep the documents the draft model finds relevant to the query, in their original order.

    One draft pass over (instruction, documents, query) scores every document; ``threshold``, ``top_n`` and
    ``budget``/``ratio`` then keep documents best first (``DraftEngine.prune_chunks``), or with
    ``compress_tokens=True`` SpecPC spends the budget inside the documents that survived.
    Every returned document is a copy with its own metadata and id plus ``draft_rag_score`` (also as
    ``relevance_score``, the key LangChain's rerankers set), ``draft_rag_kept_spans`` (character spans of the
    original ``page_content``) and ``draft_rag_kept_fraction``. Each call is a child run ``DraftDocumentCompressor``
    in the callbacks (tracing), its outputs the stats: documents and draft tokens in/out, seconds.
    """

    draft: Any = Field(**setting("draft"))
    budget: Optional[Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto"]]] = Field(
        **setting("prune_budget")
    )
    ratio: Optional[float] = Field(**setting("prune_ratio"))
    context_window: Optional[int] = Field(**setting("prune_window"))
    top_n: Optional[int] = Field(**setting("top_n"))
    threshold: Optional[float] = Field(**setting("threshold"))
    compress_tokens: bool = Field(**setting("compress_tokens"))
    instruction: Optional[str] = Field(**setting("instruction"))
    specpc: Any = Field(**setting("prune_specpc"))
    draft_kwargs: Optional[dict] = Field(**setting("draft_kwargs"))
    context_cache_mb: float = Field(**setting("context_cache_mb"))
    chunk_cache_mb: float = Field(**setting("chunk_cache_mb"))

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)
    _engine: DraftEngine = PrivateAttr()
    _pruning: ChunkPruning = PrivateAttr()

    @model_validator(mode="after")
    def _setup(self) -> DraftDocumentCompressor:
        names = ("budget", "ratio", "context_window", "top_n", "threshold", "compress_tokens", "instruction")
        self._pruning = ChunkPruning(**{n: getattr(self, n) for n in names})
        self._engine = engine_of(self, None, self.draft)
        return self

    @property
    def engine(self) -> DraftEngine:
        """The shared ``DraftEngine`` behind this object (its models, settings and context cache)."""
        return self._engine

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Pruned (and optionally token-compressed) copies of ``documents``, original order kept."""
        docs = _check_documents(documents)
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")
        run = CallbackManager.configure(callbacks).on_chain_start(
            None, {"query": query, "documents": len(docs)}, name=type(self).__name__
        )
        try:
            t0 = time.perf_counter()
            out, stats = self._compress(docs, query)
            run.on_chain_end({"documents_in": len(docs), "documents_out": len(out), **stats,
                              "seconds": time.perf_counter() - t0})  # fmt: skip
        except BaseException as exc:
            run.on_chain_error(exc)
            raise
        return out

    def warm(self, documents: Sequence[Document]) -> int:
        """Read ``documents`` into the chunk cache (``chunk_cache_mb`` > 0) as queries will read them, e.g. while
        indexing (``DraftChunkWarmer``); how many pieces the draft read now."""
        return self._pruning.warm(self._engine, [d.page_content for d in _check_documents(documents)])

    def _compress(self, docs: list[Document], query: str) -> tuple[list[Document], dict]:
        pruned, stats = self._pruning.prune(self._engine, [d.page_content for d in docs], query)
        logger.debug("kept %d of %d documents", len(pruned.kept), len(docs))
        return [_annotate(docs[k.index], k) for k in pruned.kept], stats


class DraftChunkWarmer(BaseDocumentTransformer):
    """An indexing step (after the splitter): reads the documents into ``compressor``'s chunk cache
    (``DraftDocumentCompressor.warm``) and returns them unchanged, so the draft finds them read when retrieved."""

    def __init__(self, compressor: DraftDocumentCompressor):
        self.compressor = compressor

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        self.compressor.warm(documents)
        return documents


def _check_documents(documents) -> list[Document]:
    if documents is None or isinstance(documents, (str, Document)):
        raise TypeError(f"documents must be a sequence of Document, got {type(documents).__name__}")
    docs = list(documents)
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise TypeError(f"documents[{i}] must be a langchain_core Document, got {type(d).__name__}")
    return docs


def _annotate(doc: Document, kept: KeptChunk) -> Document:
    """A copy of ``doc`` (same id, metadata plus the draft's score and what was kept) holding the kept text."""
    metadata = {
        **doc.metadata,
        SCORE_KEY: float(kept.score),
        RELEVANCE_KEY: float(kept.score),
        SPANS_KEY: [list(s) for s in kept.kept_spans],
        FRACTION_KEY: float(kept.kept_fraction),
    }
    return doc.model_copy(update={"page_content": kept.text, "metadata": metadata})
