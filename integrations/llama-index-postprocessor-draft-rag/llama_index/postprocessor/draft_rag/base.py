"""DraftNodePostprocessor: prune retrieved nodes by the draft model's query-conditioned attention; DraftChunkWarmer:
read nodes into its chunk cache while indexing."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional, Union

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, TransformComponent

from draft_rag import DraftEngine
from draft_rag.adapters import ChunkPruning, configs_from_dict, engine_dict, engine_of, setting
from llama_index.llms.draft_rag.events import DraftCompressionEvent, dispatcher

logger = logging.getLogger(__name__)

RETRIEVAL_SCORE_KEY = "retrieval_score"
DRAFT_SCORE_KEY = "draft_rag_score"  # the draft's importance of a node (as the LangChain compressor names it)
KEPT_FRACTION_KEY = "draft_rag_kept_fraction"
KEPT_SPANS_KEY = "draft_rag_kept_spans"


class DraftNodePostprocessor(BaseNodePostprocessor):
    """Chunk-level pruning with the draft's attention while it reads the query; optional token-level compression.

    Put it after the retriever (and any similarity cutoff), before the response synthesizer. Returns copies of the
    caller's ``NodeWithScore`` objects (same node id, metadata and relationships) with ``score`` still the
    retriever's, and the draft's importance in ``node.metadata["draft_rag_score"]`` (hidden from LLM and embedding
    text, as is ``retrieval_score``, the first retriever's score). ``top_n``/``threshold``/``budget``/``ratio``
    keep nodes as the fields say (``DraftEngine.prune_chunks``); with ``compress_tokens=True`` changed nodes also
    get ``draft_rag_kept_fraction`` / ``draft_rag_kept_spans``. Nodes without text pass through with draft score
    0.0. The stats (callback and ``DraftCompressionEvent``) carry ``budget_reason``; docs/llamaindex.md says more.
    """

    draft: Any = Field(exclude=True, **setting("draft"))
    top_n: Optional[int] = Field(**setting("top_n"))
    budget: Union[Annotated[int, Field(ge=1, strict=True)], Literal["auto"], None] = Field(**setting("prune_budget"))
    ratio: Optional[float] = Field(**setting("prune_ratio"))
    context_window: Optional[int] = Field(**setting("prune_window"))
    threshold: Optional[float] = Field(**setting("threshold"))
    compress_tokens: bool = Field(**setting("compress_tokens"))
    sort_by_score: bool = Field(default=False, description="return nodes by draft score instead of input order")
    metadata_mode: MetadataMode = Field(default=MetadataMode.NONE, description="node text the draft scores")
    instruction: Optional[str] = Field(**setting("instruction"))
    specpc: Any = Field(exclude=True, **setting("prune_specpc"))
    draft_kwargs: Optional[dict] = Field(**setting("draft_kwargs"))
    context_cache_mb: float = Field(**setting("context_cache_mb"))
    chunk_cache_mb: float = Field(**setting("chunk_cache_mb"))
    _engine: DraftEngine = PrivateAttr()
    _pruning: ChunkPruning = PrivateAttr()

    def __init__(self, draft: Any = None, *, engine: DraftEngine | None = None, **kwargs: Any):
        super().__init__(draft=draft, **kwargs)
        names = ("budget", "ratio", "context_window", "top_n", "threshold", "compress_tokens", "instruction")
        self._pruning = ChunkPruning(**{n: getattr(self, n) for n in names})
        self._engine = engine or engine_of(self, None, draft)

    @classmethod
    def class_name(cls) -> str:
        return "DraftNodePostprocessor"

    def to_dict(self, **kwargs: Any) -> dict:
        """The settings, with the draft as a reference string and ``specpc`` as a dict (``from_dict`` reloads them)."""
        return {**super().to_dict(**kwargs), **engine_dict(self._engine, "draft", "specpc")}

    @classmethod
    def from_dict(cls, data: dict, **kwargs: Any) -> DraftNodePostprocessor:
        return super().from_dict(configs_from_dict(data), **kwargs)

    @property
    def engine(self) -> DraftEngine:
        return self._engine

    def warm(self, nodes: Sequence[BaseNode | NodeWithScore]) -> int:
        """Read ``nodes`` into the chunk cache (``chunk_cache_mb`` > 0) as queries will read them, e.g. while indexing
        (``DraftChunkWarmer``); how many pieces the draft read now."""
        nodes = [n.node if isinstance(n, NodeWithScore) else n for n in nodes]
        return self._pruning.warm(self._engine, [n.get_content(metadata_mode=self.metadata_mode) for n in nodes])

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> list[NodeWithScore]:
        if query_bundle is None or not query_bundle.query_str:
            raise ValueError(
                "DraftNodePostprocessor needs the query: pass query_bundle=QueryBundle(...) or "
                "query_str=... (the draft scores nodes by how it reads the query)"
            )
        if not nodes:
            return []
        bad = next((i for i, n in enumerate(nodes) if not isinstance(n, NodeWithScore)), None)
        if bad is not None:
            raise TypeError(f"nodes[{bad}] must be a NodeWithScore, got {type(nodes[bad]).__name__}")
        _warn_duplicates(nodes)
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        scored = [i for i, t in enumerate(texts) if t.strip()]
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self._engine.draft.name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            out, stats = self._prune(nodes, texts, scored, query_bundle.query_str)
            event.on_end(payload={EventPayload.NODES: out, "draft_rag": stats})
        dispatcher.event(DraftCompressionEvent(component="postprocessor", **stats))
        return out

    def _prune(self, nodes, texts, scored, query):
        """The core's chunk pruner on the nodes with text; nodes without text pass through with score 0.0."""
        plain = {i: nodes[i].node.get_content(metadata_mode=MetadataMode.NONE) for i in scored}
        read = [texts[i] for i in scored]  # what the draft scores (with metadata_mode's metadata)
        pruned, stats = self._pruning.prune(self._engine, [plain[i] for i in scored], query, score_texts=read)
        kept = {scored[k.index]: k for k in pruned.kept}
        out = []
        for i in sorted(set(kept) | (set(range(len(nodes))) - set(scored))):
            k = kept.get(i)
            node = _rescore(nodes[i], k.score if k else 0.0)
            if k is not None and k.text != plain[i]:  # SpecPC shortened it
                node.node = _with_text(node.node, k)
            out.append(node)
        stats.update(nodes_in=len(nodes), nodes_out=len(out))
        if self.sort_by_score:
            out.sort(key=lambda n: -n.node.metadata[DRAFT_SCORE_KEY])
        return out, stats


class DraftChunkWarmer(TransformComponent):
    """An ingestion step: reads the nodes into ``postprocessor``'s chunk cache (``DraftNodePostprocessor.warm``) and
    passes them on unchanged, so the draft finds them read when they are retrieved."""

    postprocessor: DraftNodePostprocessor

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        self.postprocessor.warm(nodes)
        return nodes


def _rescore(nws: NodeWithScore, score: float) -> NodeWithScore:
    """A copy with the retriever's ``score`` kept and the draft's in ``metadata["draft_rag_score"]``, which is
    hidden from prompts and embeddings; ``retrieval_score`` (the first retriever's score) is kept there too.

    The caller's objects are left as they are, so running again (or chaining) never loses the retrieval score.
    """
    added = {RETRIEVAL_SCORE_KEY: nws.score, **nws.node.metadata, DRAFT_SCORE_KEY: float(score)}
    return NodeWithScore(node=_with_hidden(nws.node, added, [DRAFT_SCORE_KEY, RETRIEVAL_SCORE_KEY]), score=nws.score)


def _with_text(node, result):
    """A copy of ``node`` (same id and relationships, metadata plus what was kept) holding the kept text."""
    added = {KEPT_FRACTION_KEY: result.kept_fraction, KEPT_SPANS_KEY: [list(s) for s in result.kept_spans]}
    copy = _with_hidden(node, dict(node.metadata, **added), list(added))
    copy.set_content(result.text)
    return copy


def _with_hidden(node, metadata: dict, hidden: list[str]):
    """A copy of ``node`` with ``metadata``, its keys ``hidden`` from LLM and embedding text."""
    llm, embed = node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys
    return node.model_copy(
        update={
            "metadata": metadata,
            "excluded_llm_metadata_keys": llm + [k for k in hidden if k not in llm],
            "excluded_embed_metadata_keys": embed + [k for k in hidden if k not in embed],
        }
    )


def _warn_duplicates(nodes: list[NodeWithScore]) -> None:
    dup = [i for i, c in Counter(n.node.node_id for n in nodes).items() if c > 1]
    if dup:
        logger.warning("duplicate node ids %s: each copy is scored and kept or dropped on its own", dup[:5])
