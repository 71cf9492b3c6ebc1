"""LongLLMLingua worker, run by the side environment's Python (not imported by draft_rag).

Protocol: one JSON object per line on stdin -> one per line on stdout. The first line written is
``{"ready": true}`` (or ``{"error": ...}``). Requests: ``{"op": "compress", "context": [str],
"question": str, "target_token": int}`` -> ``{"compressed": str, "seconds": float}``; ``{"op": "rank",
"context": [str], "question": str}`` -> ``{"scores": [float]}`` (rank order, higher first); or ``{"error": str}``.

Run with ``python -P`` so this folder (which holds draft_rag.bench.llmlingua) does not shadow the package.
``tiktoken.encoding_for_model`` is replaced, before llmlingua is imported, by a stand-in that counts
with the small LM's own tokenizer: llmlingua 0.2.2 fetches OpenAI's tokenizer file when constructed
(offline here) and only uses it to count tokens, so budgets are in the small LM's tokens instead.
"""

import json
import sys
import time


class _CountingEncoding:
    """The two methods llmlingua uses from a tiktoken Encoding, backed by a Hugging Face tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.name = "draft-tokenizer-stand-in"

    def encode(self, text, **_):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids, **_):
        return self.tokenizer.decode(ids)


def main(model_dir: str) -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    try:
        import tiktoken
        from transformers import AutoTokenizer

        encoding = _CountingEncoding(AutoTokenizer.from_pretrained(model_dir))
        tiktoken.encoding_for_model = lambda *a, **k: encoding
        tiktoken.get_encoding = lambda *a, **k: encoding
        from llmlingua import PromptCompressor

        compressor = PromptCompressor(model_name=model_dir, device_map="cpu")
    except Exception as exc:  # reported to the parent, which explains and exits non-zero
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            t0 = time.perf_counter()
            if req.get("op") == "rank":
                lengths = [len(encoding.encode(c)) for c in req["context"]]
                ranked = compressor.get_rank_results(req["context"], req["question"], "longllmlingua", "after", lengths)
                scores = [0.0] * len(req["context"])
                for place, (idx, _) in enumerate(ranked):
                    scores[idx] = float(len(ranked) - place)
                out.write(json.dumps({"scores": scores, "seconds": time.perf_counter() - t0}) + "\n")
                out.flush()
                continue
            res = compressor.compress_prompt(
                req["context"],
                question=req["question"],
                target_token=req["target_token"],
                rank_method="longllmlingua",
                condition_in_question="after_condition",
                reorder_context="sort",
                dynamic_context_compression_ratio=0.3,
                condition_compare=True,
                context_budget="+100",
                concate_question=False,
            )
            reply = {"compressed": res["compressed_prompt"], "seconds": time.perf_counter() - t0}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
