"""The four distributions build as wheels, install into a fresh venv with only their declared dependencies
(plus CPU torch) and work from the conventional import paths: a LangChain chain and a LlamaIndex query engine."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("build")

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = [
    "draft-rag",
    "langchain-draft-rag",
    "llama-index-llms-draft-rag",
    "llama-index-postprocessor-draft-rag",
]
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-input"]

SCRIPT = textwrap.dedent("""
    import sys
    from draft_rag import SpecPCConfig
    from langchain_core.documents import Document
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda
    from langchain_draft_rag import ChatDraftCompressed, DraftDocumentCompressor
    from llama_index.core import Document as LlamaDocument, MockEmbedding, VectorStoreIndex
    from llama_index.llms.draft_rag import DraftCompressedLLM
    from llama_index.postprocessor.draft_rag import DraftNodePostprocessor
    import langchain_draft_rag, llama_index.llms.draft_rag, llama_index.postprocessor.draft_rag

    model, venv = sys.argv[1], sys.argv[2]
    for module in (langchain_draft_rag, llama_index.llms.draft_rag, llama_index.postprocessor.draft_rag):
        assert module.__file__.startswith(venv), module.__file__  # the installed wheels, not the repo
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8, kernel_size=8, neighbor_tokens=8)
    texts = ["The grass is green. " * 8, "The magic number is 4728163. " * 2, "The sky is blue. " * 8]

    pruner = DraftDocumentCompressor(draft=model, specpc=cfg, top_n=2)
    chat = ChatDraftCompressed(target=model, specpc=cfg, ratio=0.5, max_tokens=4)
    prompt = ChatPromptTemplate.from_messages([("human", "{context}"), ("human", "Question: {question}")])
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
    prune = RunnableLambda(lambda q: "\\n\\n".join(d.page_content for d in pruner.compress_documents(docs, q)))
    chain = {"context": prune, "question": RunnableLambda(lambda q: q)} | prompt | chat | StrOutputParser()
    answer = chain.invoke("What is the magic number?")
    assert isinstance(answer, str)

    nodes = [LlamaDocument(text=t) for t in texts]
    index = VectorStoreIndex.from_documents(nodes, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=DraftCompressedLLM(target=model, specpc=cfg, ratio=0.5, max_new_tokens=4), similarity_top_k=3,
        node_postprocessors=[DraftNodePostprocessor(draft=model, specpc=cfg, top_n=2)])
    response = engine.query("What is the magic number?")
    assert len(response.source_nodes) == 2 and isinstance(response.response, str)
    print("OK", repr(answer), repr(response.response))
""")


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _local_torch(venv: Path) -> None:
    """Hard-link this interpreter's CPU torch 2.13 into ``venv`` (seconds, where unpacking it from pip's cache
    takes minutes on a loaded machine); pip then sees it installed. Does nothing across file systems."""
    import torch

    if not torch.__version__.startswith("2.13.0"):
        return
    site = Path(torch.__file__).parents[1]
    target = next((venv / "lib").glob("python*/site-packages"))
    names = ["torch", "torchgen", "functorch", f"torch-{torch.__version__}.dist-info"]
    try:
        for name in names:
            if (site / name).exists():
                shutil.copytree(
                    site / name, target / name, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__")
                )
    except OSError:
        for name in names:
            shutil.rmtree(target / name, ignore_errors=True)


@pytest.mark.slow
def test_wheels_install_in_a_fresh_venv_and_run_a_chain_and_a_query_engine(tmp_path, tiny_dir):
    src = tmp_path / "src"  # a copy, so that building leaves no build/ or egg-info in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("draft_rag", "integrations"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    for folder in [src] + sorted(p.parent for p in (src / "integrations").glob("*/pyproject.toml")):
        _run(sys.executable, "-m", "build", "--wheel", "--outdir", wheels, folder)
    built = sorted(p.name.split("-")[0] for p in wheels.glob("*.whl"))
    assert built == sorted(d.replace("-", "_") for d in DISTRIBUTIONS)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _local_torch(venv)  # CPU torch first, so that nothing pulls a CUDA build
    _run(python, *PIP, "torch==2.13.0", env=env)  # installs it unless linked, and its own dependencies
    _run(python, *PIP, "--find-links", wheels, *DISTRIBUTIONS, env=env)
    out = _run(python, "-c", SCRIPT, tiny_dir, str(venv), env=dict(env, OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert out.stdout.startswith("OK")
