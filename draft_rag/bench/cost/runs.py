"""``draft-rag cost``: what each method costs with a large target, measured in one process.

Cost does not depend on the weights, so each target is built from a public architecture config with random
weights and the draft's vocabulary (the draft's tokenizer then serves both). Per prompt length and repetition
the draft stages run once each (a plain draft forward, SpecPC's scoring per budget, SpecKV's lookahead,
SpecKV-PC's scoring per budget) and then every target runs every method, so load drifts hit all methods
alike. A target too slow for the machine runs as a slice of its first layers (``slice_layers``): forward hooks
time its decoder layers, and every target figure is extrapolated linearly in layers from that slice (labelled
"scaled"); draft figures are never scaled. With a ``SparsePrefillConfig`` the full, speckv and speckv-pc cells
also run with a vertical-slash sparse prefill (labelled "+sparse"); dense prefills time their attention kernel
too (``attention_share`` of the prefill's layer time).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import speckv
from ..attention import use_kernel
from ..config import Budget, SparsePrefillConfig, SpecKVConfig, SpecPCConfig
from ..generation import Prefilled, plain_prefill
from ..methods import REGISTRY
from ..models import LoadedModel, load_model, placement
from ..pipeline import compressed_segments, speckv_pc_stage
from ..prompt import build_segments, tokenize, wrap
from ..scoring import cache_kwarg
from ..sparse_prefill import SPARSE_METHODS
from ..specpc import compress
from .data import split_input
from .tasks import generate

logger = logging.getLogger(__name__)

# Llama-architecture shapes from each model's public config.json on the Hugging Face hub (read by hand: the hub
# is unreachable here). The vocabulary is replaced by the draft's; rope scaling is left out (it costs nothing).
SHAPES = {
    # HuggingFaceTB/SmolLM2-360M-Instruct/config.json
    "smollm2-360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    # HuggingFaceTB/SmolLM2-1.7B-Instruct/config.json
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 130000.0,
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.1-8B-Instruct/config.json (vocabulary 128,256 there; the draft's 49,152 here)
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
}
METHODS = ("full", "specpc", "speckv", "speckv-pc")


@dataclass(frozen=True)
class BudgetLevel:
    """One budget level: SpecPC's prompt ratio and SpecKV's entries per layer and KV head (both for speckv-pc)."""

    ratio: float
    kv: int


DEFAULT_BUDGETS = (BudgetLevel(0.25, 256), BudgetLevel(0.5, 1024))


def build_target(shape: str, draft: LoadedModel, layers: int | None = None, device=None, dtype=None) -> LoadedModel:
    """A random-weight Llama with ``SHAPES[shape]`` (``layers`` of them, default all) and the draft's vocabulary."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    device, dtype, attn = placement(device, dtype, draft.model.config._attn_implementation.removeprefix("draft_rag+"))
    dc = draft.model.config
    config = LlamaConfig(
        **{**SHAPES[shape], "num_hidden_layers": layers or SHAPES[shape]["num_hidden_layers"]},
        vocab_size=dc.vocab_size,
        max_position_embeddings=131072,
        bos_token_id=dc.bos_token_id,
        eos_token_id=dc.eos_token_id,
        pad_token_id=dc.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype).eval()
    return LoadedModel(model, draft.tokenizer, f"{shape}[{config.num_hidden_layers} layers]")


def scale(total: float, in_layers: float, measured: int, layers: int) -> float:
    """Extrapolate to ``layers`` layers a figure measured on ``measured`` layers, ``in_layers`` of it spent in them."""
    return total + (layers - measured) * in_layers / measured


class LayerClock:
    """Seconds spent inside a model's decoder layers (public forward hooks), to scale a slice to full depth."""

    def __init__(self, model):
        self.layers, self.device, self.seconds, self._t = model.model.layers, model.device, 0.0, 0.0

    def _pre(self, module, args):
        _sync(self.device)
        self._t = time.perf_counter()

    def _post(self, module, args, output):
        _sync(self.device)
        self.seconds += time.perf_counter() - self._t

    def __enter__(self):
        self._handles = [
            h
            for layer in self.layers
            for h in (layer.register_forward_pre_hook(self._pre), layer.register_forward_hook(self._post))
        ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


class AttentionClock:
    """An ``attention.Kernel`` that runs the model's own kernel and adds up its seconds."""

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def __call__(self, own, *args, **kwargs):
        _sync(self.device)
        t0 = time.perf_counter()
        out = own(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory above the level at entry, in bytes: CUDA allocator peak, else sampled RSS (Linux)."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.peak = 0

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # no /proc: peak unknown (nan), never a made-up number
            return float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base, self.top, self._stop = self._rss(), self._rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.top = max(self.top, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.top, self._rss()) - self.base


@torch.no_grad()
def decode(model, state: Prefilled, n_tokens: int) -> float:
    """Greedy-decode ``n_tokens`` after ``state`` whatever they are (no EOS stop); seconds per decode step."""
    ck, logits, pos = cache_kwarg(model), state.logits, state.next_position
    t0 = time.perf_counter()
    for _ in range(n_tokens - 1):
        tok = logits.argmax().view(1, 1)
        out = model(
            input_ids=tok, position_ids=torch.tensor([[pos]], device=model.device), use_cache=True, **{ck: state.cache}
        )
        logits, pos = out.logits[0, -1], pos + 1
    int(logits.argmax())
    return (time.perf_counter() - t0) / max(1, n_tokens - 1)


def prompt(tokenizer, length: int, seed: int = 0):
    """A needle-in-a-haystack prompt of about ``length`` draft tokens: (segments, chunks)."""
    rec = generate("niah_single", tokenizer, length, 1, seed)[0]
    instruction, context, question = split_input(rec["input"])
    return build_segments(context, instruction=instruction or None, question=question or None)


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def draft_stages(
    draft: LoadedModel,
    segments,
    chunks,
    budgets,
    new_tokens: int,
    specpc: SpecPCConfig | None = None,
    methods=METHODS,
) -> dict:
    """The draft-side stages of ``methods`` for one prompt: {stage: (result, seconds)}; stage names are
    method@budget ("plain": the prompt's draft tokens and, with specpc, a plain draft forward's seconds)."""
    model, tok, device = draft.model, draft.tokenizer, draft.model.device
    specpc = specpc or SpecPCConfig()
    ids = tokenize(tok, wrap(segments, tok, "chat")).ids
    eos = {tok.eos_token_id}
    out = {"plain": (len(ids), None)}  # timed for SpecPC's overhead table only; no autograd, as every stage
    if "specpc" in methods:
        out["plain"] = (len(ids), _timed(lambda: plain_prefill(model, ids), device)[1])
    for b in budgets if "specpc" in methods else ():
        cfg = specpc.replace(ratio=b.ratio)
        out[f"specpc@{b.ratio}"] = _timed(functools.partial(compress, model, tok, segments, chunks, cfg), device)
    if "speckv" in methods:
        out["speckv"] = _timed(lambda: speckv.draft_lookahead(model, ids, new_tokens, eos), device)
    for b in budgets if "speckv-pc" in methods else ():
        cfg = speckv_pc_stage(specpc, Budget(ratio=b.ratio))  # the engine's settings for speckv-pc
        stage = functools.partial(_speckv_pc, model, tok, segments, chunks, cfg, eos)
        out[f"speckv-pc@{b.ratio}"] = _timed(stage, device)
    return out


def _speckv_pc(model, tok, segments, chunks, cfg: SpecPCConfig, eos: set[int]):
    """SpecKV-PC's draft side as the engine runs it: SpecPC, and when SpecPC drafted no lookahead (block mode),
    the lookahead drafted from the compressed prompt."""
    shortened = compress(model, tok, segments, chunks, cfg)
    if not shortened.lookahead_ids and cfg.lookahead_tokens:
        ids = tokenize(tok, wrap(compressed_segments(shortened, segments), tok, "chat")).ids
        look = speckv.draft_lookahead(model, ids, cfg.lookahead_tokens, eos)
        shortened = dataclasses.replace(shortened, lookahead_ids=look)
    return shortened


def target_run(
    target: LoadedModel,
    method: str,
    budget: BudgetLevel | None,
    segments,
    stages: dict,
    new_tokens: int,
    sparse: SparsePrefillConfig | None = None,
) -> dict:
    """Target side of one cell: prefill seconds (and, dense, its attention kernel's), decode s/token, peak memory
    and KV bytes; ``sparse``: the prefill is vertical-slash sparse."""
    model, tok, device = target.model, target.tokenizer, target.model.device
    if method in ("specpc", "speckv-pc"):
        segments = compressed_segments(stages[f"{method}@{budget.ratio}"][0], segments)
    ids = tokenize(tok, wrap(segments, tok, "chat")).ids
    if method in ("full", "specpc"):
        prefill = functools.partial(speckv.plain_prefill_stats, sparse=sparse)
    else:
        cp_or_look = stages["speckv"][0] if method == "speckv" else stages[f"{method}@{budget.ratio}"][0].lookahead_ids
        cfg = SpecKVConfig(budget=budget.kv)
        prefill = functools.partial(
            speckv.compressed_prefill,
            lookahead_ids=cp_or_look,
            budget=budget.kv,
            scorer=REGISTRY["speckv"].make_scorer(cfg),
            window=cfg.window_size,
            horizon=new_tokens,
            sparse=sparse,
        )
    attention = AttentionClock(device)
    with PeakMemory(device) as mem:
        with LayerClock(model) as in_prefill, use_kernel(model, attention):  # a sparse prefill sets its own kernel
            (state, kv), seconds = _timed(lambda: prefill(model, ids), device)
        with LayerClock(model) as in_decode:
            step = decode(model, state, new_tokens)
    return {
        "layers": len(model.model.layers),
        "target_tokens": len(ids),
        "prefill_s": seconds,
        "prefill_layers_s": in_prefill.seconds,
        "attention_s": None if kv.sparse_layers else attention.seconds,
        "sparse_layers": kv.sparse_layers,
        "decode_s_per_token": step,
        "decode_layers_s_per_token": in_decode.seconds / max(1, new_tokens - 1),
        "peak_bytes": mem.peak,
        "kv_bytes": kv.kv_bytes,
    }


def cells_for(budgets, methods=METHODS, sparse: bool = False) -> list[tuple[str, BudgetLevel | None, bool]]:
    """(method, budget, sparse prefill) cells: full (always, the reference), then each method at each budget;
    with ``sparse`` each of ``SPARSE_METHODS`` once more with a sparse prefill."""
    dense = [("full", None)] + [(m, b) for m in METHODS[1:] if m in methods for b in budgets]
    return [(m, b, False) for m, b in dense] + [(m, b, True) for m, b in dense if sparse and m in SPARSE_METHODS]


def _scoring_seconds(stages: dict, key: str | None) -> float:
    """The draft forward alone: SpecPC's scoring pass (without selection), SpecKV's lookahead drafting."""
    if key is None:
        return 0.0
    result, seconds = stages[key]
    return result.seconds["draft"] if hasattr(result, "seconds") else seconds


def _draft_key(method: str, budget: BudgetLevel | None) -> str | None:
    if method == "full":
        return None
    return "speckv" if method == "speckv" else f"{method}@{budget.ratio}"


def run_cost(
    draft_ref: str,
    shapes: list[str],
    lengths: list[int],
    *,
    budgets=DEFAULT_BUDGETS,
    repeats: int = 2,
    new_tokens: int = 8,
    slice_layers: int | None = 1,
    full_shapes=(),
    device=None,
    dtype=None,
    specpc: SpecPCConfig | None = None,
    out: Path | None = None,
    methods=METHODS,
    sparse: SparsePrefillConfig | None = None,
) -> list[dict]:
    """Measure every (shape, length, method, budget, sparse) cell ``repeats`` times, interleaved; return median
    rows. ``methods``: which to run besides full; ``sparse``: also their sparse-prefill cells (``cells_for``).

    Shapes in ``full_shapes`` (or all when ``slice_layers`` is None) run with all their layers; the others run
    their first ``slice_layers`` layers and are scaled. Rows are written to ``out``/cost.json after every repetition.
    """
    draft = load_model(draft_ref, device=device, dtype=dtype)
    targets = {
        shape: build_target(
            shape, draft, None if slice_layers is None or shape in full_shapes else slice_layers, device, dtype
        )
        for shape in shapes
    }
    segments, chunks = prompt(draft.tokenizer, min(512, min(lengths) // 2))  # warm-up on a short prompt, not recorded
    stages = draft_stages(draft, segments, chunks, budgets, new_tokens, specpc, methods)
    cells = cells_for(budgets, methods, sparse is not None)
    for target in targets.values():
        for method, budget, sparsely in cells:
            target_run(target, method, budget, segments, stages, new_tokens, sparse if sparsely else None)
    raw: dict = {}
    for length in lengths:
        segments, chunks = prompt(draft.tokenizer, length)
        for rep in range(repeats):
            t0 = time.perf_counter()
            stages = draft_stages(draft, segments, chunks, budgets, new_tokens, specpc, methods)
            logger.info(
                "cost: %d tokens, draft stages %s",
                length,
                {k: round(v[1], 1) for k, v in stages.items() if v[1] is not None},
            )
            for shape, target in targets.items():
                for method, budget, sparsely in cells:
                    run = target_run(target, method, budget, segments, stages, new_tokens, sparse if sparsely else None)
                    key = _draft_key(method, budget)
                    raw.setdefault((shape, length, method, budget, sparsely), []).append(
                        {
                            "draft_s": stages[key][1] if key else 0.0,
                            "scoring_s": _scoring_seconds(stages, key),
                            "plain_draft_s": stages["plain"][1],
                            "draft_tokens": stages["plain"][0],
                            **run,
                        }
                    )
            logger.info("cost: %d tokens, repetition %d done in %.0f s", length, rep + 1, time.perf_counter() - t0)
            rows = summarize(raw, draft, new_tokens)
            if out is not None:
                save(rows, out, meta(draft_ref, repeats, new_tokens, slice_layers, device, sparse))
    return summarize(raw, draft, new_tokens)


def _row(samples: list[dict], shape: str, layers: int, new_tokens: int) -> dict:
    """Median over repetitions of each figure; target figures scaled to ``layers`` when measured on slices."""

    def per_rep(s):
        n = s["layers"]
        t = {
            "target_tokens": s["target_tokens"],
            "prefill_s": scale(s["prefill_s"], s["prefill_layers_s"], n, layers),
            "decode_s_per_token": scale(s["decode_s_per_token"], s["decode_layers_s_per_token"], n, layers),
            "kv_bytes": scale(s["kv_bytes"], s["kv_bytes"], n, layers),  # every layer holds the same entries
            "peak_bytes": scale(s["peak_bytes"], s["kv_bytes"], n, layers),
        }  # + each added layer's KV
        ttft = s["draft_s"] + t["prefill_s"]
        share = s["attention_s"] / s["prefill_layers_s"] if s["attention_s"] is not None else None
        return {
            **t,
            "attention_share": share,
            "draft_s": s["draft_s"],
            "scoring_s": s["scoring_s"],
            "plain_draft_s": s["plain_draft_s"],
            "ttft_s": ttft,
            "e2e_s": ttft + (new_tokens - 1) * t["decode_s_per_token"],
        }

    reps = [per_rep(s) for s in samples]
    return {k: None if reps[0][k] is None else statistics.median(r[k] for r in reps) for k in reps[0]}


def summarize(raw: dict, draft: LoadedModel, new_tokens: int) -> list[dict]:
    """One row per cell (medians), with the speed-up of end-to-end time and TTFT against full."""
    rows = []
    draft_params = sum(p.numel() for p in draft.model.parameters())
    for (shape, length, method, budget, sparsely), samples in raw.items():
        layers = SHAPES[shape]["num_hidden_layers"]
        row = {
            "shape": shape,
            "length": length,
            "method": method,
            "budget": None
            if budget is None
            else (
                budget.ratio if method == "specpc" else budget.kv if method == "speckv" else [budget.ratio, budget.kv]
            ),
            "sparse_prefill": sparsely,
            "sparse_layers": samples[0]["sparse_layers"],
            "scaled": samples[0]["layers"] != layers,
            "measured_layers": samples[0]["layers"],
            "repeats": len(samples),
            "new_tokens": new_tokens,
            "draft_tokens": samples[0]["draft_tokens"],
            "size_ratio": target_params(shape, draft) / draft_params,
            **_row(samples, shape, layers, new_tokens),
        }
        rows.append(row)
    full = {(r["shape"], r["length"]): r for r in rows if r["method"] == "full" and not r["sparse_prefill"]}
    for r in rows:
        f = full.get((r["shape"], r["length"]))
        r["speedup_e2e"] = f["e2e_s"] / r["e2e_s"] if f else None
        r["speedup_ttft"] = f["ttft_s"] / r["ttft_s"] if f else None
    return rows


def target_params(shape: str, draft: LoadedModel) -> int:
    """Parameter count of the full-depth target (the draft's vocabulary), computed from the shape."""
    s, vocab = SHAPES[shape], draft.model.config.vocab_size
    h, head = s["hidden_size"], s["hidden_size"] // s["num_attention_heads"]
    attn = 2 * h * h + 2 * h * s["num_key_value_heads"] * head
    layer = attn + 3 * h * s["intermediate_size"] + 2 * h
    return s["num_hidden_layers"] * layer + vocab * h * (1 if s["tie_word_embeddings"] else 2) + h


def meta(draft_ref, repeats, new_tokens, slice_layers, device, sparse: SparsePrefillConfig | None = None) -> dict:
    return {
        "sparse_prefill": dataclasses.asdict(sparse) if sparse else None,
        "draft": getattr(draft_ref, "name", str(draft_ref)),
        "repeats": repeats,
        "new_tokens": new_tokens,
        "torch_threads": torch.get_num_threads(),
        "slice_layers": slice_layers,
        "device": str(device or "default"),
    }


def save(rows: list[dict], out: Path, info: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cost.json"
    path.write_text(json.dumps({"meta": info, "rows": rows}, indent=1))
    return path


def _budget_label(row: dict) -> str:
    b, tail = row["budget"], " +sparse" if row.get("sparse_prefill") else ""
    if row["method"] == "full":
        return "full" + tail
    if row["method"] == "specpc":
        return f"specpc@{b:.0%}"
    if row["method"] == "speckv":
        return f"speckv@{b}" + tail
    return f"speckv-pc@{b[0]:.0%}/{b[1]}" + tail


def table(rows: list[dict]) -> str:
    """Markdown table of the rows, by shape, length, then method."""
    order = {m: i for i, m in enumerate(METHODS)}
    head = (
        "| target | tokens | method | TTFT s | end-to-end s | speed-up | decode s/tok | draft s | plain draft s "
        "| target prefill s | peak MiB | KV MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    rows = sorted(
        rows, key=lambda r: (r["size_ratio"], r["length"], r.get("sparse_prefill", False), order[r["method"]])
    )
    for r in rows:  # stable: budgets as run
        name = r["shape"] + (" (scaled)" if r["scaled"] else "")
        plain = "" if r["plain_draft_s"] is None else f"{r['plain_draft_s']:.1f}"  # timed with specpc only
        lines.append(
            f"| {name} | {r['draft_tokens']} | {_budget_label(r)} | {r['ttft_s']:.1f} | {r['e2e_s']:.1f} | "
            f"{r['speedup_e2e']:.2f}x | {r['decode_s_per_token']:.3f} | {r['draft_s']:.1f} | "
            f"{plain} | {r['prefill_s']:.1f} | {r['peak_bytes'] / 2**20:.0f} | {r['kv_bytes'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def speedup_table(rows: list[dict]) -> str:
    """Per method@budget, the end-to-end speed-up at each length for each target (the README's summary), and
    SpecKV's KV kept and decode time per token against full context at the longest length."""
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: next(r["size_ratio"] for r in rows if r["shape"] == s))
    lengths = sorted({r["length"] for r in rows})
    by = {(r["shape"], r["length"], _budget_label(r)): r for r in rows}
    ratio = {s: next(r["size_ratio"] for r in rows if r["shape"] == s) for s in shapes}
    span = " / ".join(f"{n // 1024}k" for n in lengths)
    head = ["end-to-end speed-up vs full context"] + [f"{s} ({ratio[s]:.1f}x draft) {span}" for s in shapes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {m: i for i, m in enumerate(METHODS)}  # then the budget levels in the order they ran
    ranked = sorted(rows, key=lambda r: (r.get("sparse_prefill", False), order[r["method"]]))
    labels = [_budget_label(r) for r in ranked if _budget_label(r) != "full"]
    labels = list(dict.fromkeys(labels))
    for lab in labels:
        cells = [" / ".join(_x(by.get((s, n, lab)), "speedup_e2e") for n in lengths) for s in shapes]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    longest, kv = lengths[-1], next((lab for lab in labels if lab.startswith("speckv@")), None)
    if kv:
        cells = []
        for s in shapes:
            full, row = by.get((s, longest, "full")), by.get((s, longest, kv))
            cells.append(
                f"{100 * row['kv_bytes'] / full['kv_bytes']:.1f}% / "
                f"{row['decode_s_per_token'] / full['decode_s_per_token']:.2f}x"
                if full and row
                else ""
            )
        lines.append(
            f"| {kv} at {longest // 1024}k: KV kept / decode s per token vs full | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def _x(row: dict | None, key: str) -> str:
    return f"{row[key]:.2f}x" if row else ""


def sparse_table(rows: list[dict]) -> str:
    """Per target and length: dense vs sparse prefill, the attention kernel's share of the dense prefill, and the
    end-to-end speed-up of each KV method with either prefill (against full context, dense)."""
    if not any(r.get("sparse_prefill") for r in rows):
        return ""
    by = {(r["shape"], r["length"], _budget_label(r)): r for r in rows}
    kv = list(dict.fromkeys(_budget_label(r) for r in rows if r["method"] != "full" and not r.get("sparse_prefill")))
    kv = [lab for lab in kv if not lab.startswith("specpc")]
    head = ["target", "tokens", "attention share (dense)", "prefill s dense", "prefill s sparse", "sparse / dense"]
    head += [f"{lab} e2e dense / +sparse" for lab in kv]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (shape, length, lab), dense in sorted(by.items(), key=lambda kv_: (kv_[1]["size_ratio"], kv_[0][1])):
        sparse = by.get((shape, length, "full +sparse"))
        if lab != "full" or sparse is None:
            continue
        speedups = [
            " / ".join(_x(by.get((shape, length, k + tail)), "speedup_e2e") for tail in ("", " +sparse")) for k in kv
        ]
        share = f"{dense['attention_share']:.0%}" if dense.get("attention_share") is not None else ""
        name = shape + (" (scaled)" if dense["scaled"] else "")
        cells = [name, str(dense["draft_tokens"]), share, f"{dense['prefill_s']:.1f}", f"{sparse['prefill_s']:.1f}"]
        cells += [f"{sparse['prefill_s'] / dense['prefill_s']:.2f}x", *speedups]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overhead_table(rows: list[dict]) -> str:
    """The draft's scoring pass (SpecPC, no selection) against a plain draft forward of the same prompt ("" when
    SpecPC did not run)."""
    if not any(r["method"] == "specpc" for r in rows):
        return ""
    lines = ["| draft tokens | plain forward s | scoring pass s | overhead | repetitions |", "|---|---|---|---|---|"]
    seen = set()
    for r in sorted(rows, key=lambda r: r["length"]):
        if r["method"] != "specpc" or r["length"] in seen:
            continue
        seen.add(r["length"])
        lines.append(
            f"| {r['draft_tokens']} | {r['plain_draft_s']:.1f} | {r['scoring_s']:.1f} | "
            f"{r['scoring_s'] / r['plain_draft_s'] - 1:+.0%} | {r['repeats']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Left: end-to-end speed-up vs prompt length, one panel per target. Right: speed-up vs target/draft size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows}, key=lambda s: next(r["size_ratio"] for r in rows if r["shape"] == s))
    fig, axes = plt.subplots(1, len(shapes) + 1, figsize=(4.2 * (len(shapes) + 1), 3.6), squeeze=False)
    labels = sorted({_budget_label(r) for r in rows if r["method"] != "full"})
    for ax, shape in zip(axes[0], shapes):
        for lab in labels:
            pts = sorted(
                (r["length"], r["speedup_e2e"]) for r in rows if r["shape"] == shape and _budget_label(r) == lab
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=lab)
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        scaled = any(r["scaled"] for r in rows if r["shape"] == shape)
        ax.set(title=shape + (" (scaled)" if scaled else ""), xlabel="prompt tokens", ylabel="speed-up vs full (e2e)")
        ax.set_xticks(sorted({r["length"] for r in rows if r["shape"] == shape}))
    ax = axes[0][-1]
    # the prompt length run with the most target shapes (the longest among ties)
    longest = max({r["length"] for r in rows}, key=lambda n: (len({r["shape"] for r in rows if r["length"] == n}), n))
    for lab in labels:
        pts = sorted(
            (r["size_ratio"], r["speedup_e2e"]) for r in rows if r["length"] == longest and _budget_label(r) == lab
        )
        if pts:
            ax.plot(*zip(*pts), marker="o", label=lab)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set(
        title=f"{longest}-token prompts",
        xlabel="target / draft parameters",
        ylabel="speed-up vs full (e2e)",
        xscale="log",
    )
    ratios = sorted({r["size_ratio"] for r in rows if r["length"] == longest})
    ax.set_xticks(ratios, [f"{x:.1f}x" for x in ratios])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cmd_cost(args) -> int:
    from ..cli import sparse_from_args

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.report_only:
        rows = [
            r
            for d in [out, *(Path(m) for m in args.merge or ())]
            for r in json.loads((d / "cost.json").read_text())["rows"]
        ]
    else:
        budgets = [BudgetLevel(r, k) for r, k in zip(args.ratios, args.kv_budgets)]
        if len(args.ratios) != len(args.kv_budgets):
            raise ValueError("--ratios and --kv-budgets must have the same number of values (one per budget level)")
        rows = run_cost(
            args.draft,
            args.shapes,
            args.lengths,
            budgets=budgets,
            repeats=args.repeats,
            new_tokens=args.new_tokens,
            slice_layers=None if args.no_slice else args.slice,
            full_shapes=args.full_shapes or (),
            device=args.device,
            dtype=args.dtype,
            out=out,
            methods=args.methods,
            sparse=sparse_from_args(args),
        )
    parts = [table(rows), speedup_table(rows), sparse_table(rows), overhead_table(rows)]
    md = "\n\n".join(part for part in parts if part)
    (out / "cost.md").write_text(md + "\n")
    plot(rows, out / "cost.png")
    print(md)
    return 0


def add_parser(sub) -> None:
    """Add ``draft-rag cost`` to the main parser."""
    import argparse

    from ..builtins import DEFAULT_MODEL
    from ..cli import add_sparse_args, fraction, positive_int

    p = sub.add_parser("cost", help="time full/specpc/speckv/speckv-pc with large random-weight target shapes")
    p.add_argument("--draft", default=DEFAULT_MODEL)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="full always runs")
    p.add_argument("--lengths", nargs="+", type=positive_int, default=[2048, 4096, 8192], help="prompt draft tokens")
    p.add_argument(
        "--ratios",
        nargs="+",
        type=fraction,
        default=[b.ratio for b in DEFAULT_BUDGETS],
        help="SpecPC prompt ratio per budget level",
    )
    p.add_argument(
        "--kv-budgets",
        nargs="+",
        type=positive_int,
        default=[b.kv for b in DEFAULT_BUDGETS],
        help="SpecKV entries per layer and KV head, per budget level",
    )
    p.add_argument("--repeats", type=positive_int, default=2, help="interleaved repetitions (medians reported)")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens decoded per cell")
    p.add_argument(
        "--slice",
        type=positive_int,
        default=1,
        metavar="L",
        help="targets run their first L layers; figures are scaled to the full depth (labelled scaled)",
    )
    p.add_argument("--no-slice", action="store_true", help="run every target with all its layers")
    p.add_argument("--full-shapes", nargs="*", choices=list(SHAPES), help="shapes run with all layers anyway")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS, help="torch CPU threads")
    p.add_argument("--out", default="cost-out", help="folder for cost.json, cost.md, cost.png")
    p.add_argument("--report-only", action="store_true", help="redo the table and plot from --out's cost.json")
    p.add_argument(
        "--merge", nargs="+", metavar="DIR", help="with --report-only: also the rows of these runs' cost.json"
    )
    add_sparse_args(p)
    p.set_defaults(func=_cmd_cost)
