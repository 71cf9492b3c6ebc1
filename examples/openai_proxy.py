"""Production recipe: any ``openai`` client through ``draft-rag serve --upstream``, a compressing proxy.

Start the proxy in front of your model server (vLLM, TGI, llama.cpp, ...), then point the client at it:

    draft-rag serve --upstream http://vllm-host:8000/v1 --ratio 0.25 --port 8100
    python examples/openai_proxy.py --base-url http://127.0.0.1:8100/v1 --model meta-llama/Llama-3.1-8B-Instruct

The proxy compresses each chat request's retrieved context with its draft (SmolLM2 by default), forwards the
request, and streams the upstream's answer back; ``"draft_rag"`` in the request body overrides its settings per
request, and its stats come back in ``reply.draft_rag``. ``tests/test_examples.py`` runs this through a proxy in
front of llama.cpp's server (``scripts/llama_cpp_upstream.py``). Needs ``pip install openai`` on the client side only.
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def messages(question: str = "What is the code for the blue door?") -> list[dict]:
    context = FILLER * 40 + "The code for the blue door is 7319465. " + FILLER * 30  # stands in for retrieval
    return [
        {"role": "system", "content": "Answer from the context. Be brief.\n\nContext:\n" + context},
        {"role": "user", "content": question},
    ]


def ask(client: OpenAI, model: str, msgs: list[dict], ratio: float | None = None, max_tokens: int = 32):
    """One chat completion through the proxy; ``ratio`` overrides the proxy's own for this request."""
    extra = {"draft_rag": {"ratio": ratio}} if ratio is not None else None
    return client.chat.completions.create(
        model=model, messages=msgs, max_tokens=max_tokens, temperature=0, extra_body=extra
    )


def stream(client: OpenAI, model: str, msgs: list[dict], max_tokens: int = 32) -> str:
    """The same, streamed: the text as the upstream sends it."""
    chunks = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=max_tokens, temperature=0, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8100/v1", help="the draft-rag proxy")
    p.add_argument("--model", default="draft-rag", help="the upstream's model name (passed through)")
    p.add_argument("--api-key", default=os.environ.get("DRAFT_RAG_API_KEY", "unused"), help="the proxy's --api-key")
    p.add_argument("--ratio", type=float, help="override the proxy's ratio for this request")
    a = p.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key)
    reply = ask(client, a.model, messages(), a.ratio)
    s = reply.draft_rag
    print(f"A: {reply.choices[0].message.content.strip()}")
    print(
        f"context {s['original_tokens']} -> {s['compressed_tokens']} tokens; upstream read {reply.usage.prompt_tokens}"
    )
    print(f"streamed: {stream(client, a.model, messages()).strip()}")


if __name__ == "__main__":
    main()
