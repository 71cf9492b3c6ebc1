from draft_rag import DraftEngine

engine = DraftEngine("smollm2-135m-instruct")  # the target; the draft defaults to the same loaded model
filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
context = filler * 50 + "The special magic number for ocean is 4728163. " + filler * 35
question = "What is the special magic number for ocean mentioned in the provided text?"
result = engine.generate(context, question=question, method="specpc", budget=512, max_new_tokens=24)
print(result.text)
print(f"{result.stats.original_tokens} -> {result.stats.prompt_tokens} prompt tokens; seconds {result.stats.seconds}")
kept = engine.compress(context, question=question, budget=256)
print(kept.draft_kept_tokens, "tokens kept of", kept.draft_original_tokens, "| needle kept:", "4728163" in kept.text)
