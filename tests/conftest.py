"""Shared fixtures: a tiny trained tokenizer, tiny random-weight decoders, and the real SmolLM2 (slow)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading

import pytest
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = (
    "The quick brown fox jumps over the lazy dog. The special magic number for ocean is 4728163. "
    "What is the special magic number mentioned in the provided text? Answer the question. "
    "Grass is green, the sky is blue, the sun is yellow. Here we go, there and back again. "
) * 20


@functools.cache
def tiny_tokenizer():
    """A byte-level BPE trained in memory (no downloads) with chat special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<bos>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str, **overrides):
    import transformers as tf

    common = dict(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tiny_tokenizer().eos_token_id,
        pad_token_id=tiny_tokenizer().pad_token_id,
        bos_token_id=tiny_tokenizer().bos_token_id,
    )
    classes = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "gemma3": tf.Gemma3TextConfig,
    }
    extra = {
        "qwen3": dict(head_dim=16),
        "gemma3": dict(
            head_dim=16,
            sliding_window=32,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
    }
    return classes[arch](**{**common, **extra.get(arch, {}), **overrides})


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma3"]


def flash_attn_problem() -> str | None:
    """Why flash-attention-2 cannot run here, or None: it needs CUDA and an importable ``flash_attn``."""
    if not torch.cuda.is_available():
        return "flash-attention-2 needs CUDA: torch.cuda.is_available() is False"
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installed, or built against another torch
        return f"flash_attn does not import ({type(exc).__name__}: {exc})"
    return None


NO_CUDA = "no CUDA device: torch.cuda.is_available() is False"
# (device, dtype): CPU always; CUDA in fp32 and bf16 where a GPU exists, each skip saying why
DEVICES = [
    pytest.param(("cpu", torch.float32), id="cpu-fp32"),
    *(
        pytest.param(
            ("cuda", dt), id=f"cuda-{name}", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
        )
        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))
    ),
]
KERNELS = [
    "sdpa",
    "eager",
    pytest.param(
        "flash_attention_2",
        marks=pytest.mark.skipif(flash_attn_problem() is not None, reason=str(flash_attn_problem())),
    ),
]


@pytest.fixture(params=DEVICES)
def device_dtype(request) -> tuple:
    """Where a test's model runs: ``("cpu", float32)``, and ``("cuda", float32 | bfloat16)`` on a GPU."""
    return request.param


@pytest.fixture(params=KERNELS)
def attn_kernel(request) -> str:
    """The attention kernel a test's model uses: sdpa, eager, and flash_attention_2 where flash_attn imports."""
    return request.param


def on_device(model, device_dtype: tuple, attn: str | None = None):
    """A copy of ``model`` on ``(device, dtype)`` with kernel ``attn`` (flash-attention-2 in fp32 is skipped)."""
    import copy

    device, dtype = device_dtype
    if attn == "flash_attention_2" and dtype not in (torch.float16, torch.bfloat16):
        pytest.skip("flash-attention-2 runs only in fp16/bf16")
    out = copy.deepcopy(model).to(device=device, dtype=dtype)
    if attn is not None:
        out.set_attn_implementation(attn)
    return out


def tolerance(dtype) -> dict:
    """``assert_close`` tolerances for results computed in ``dtype`` against an fp32 reference."""
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 5e-2}


@functools.cache
def tiny_model(arch: str = "llama", attn: str = "sdpa"):
    """Deterministic random-weight model; returns a ``LoadedModel``."""
    from transformers import AutoModelForCausalLM

    from draft_rag.models import LoadedModel

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation=attn, dtype=torch.float32).eval()
    return LoadedModel(model, tiny_tokenizer(), f"tiny-{arch}-{attn}")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """The tiny Llama saved as a local Hugging Face folder (for refs given as paths)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True)  # fmt: skip


@pytest.fixture(scope="session")
def deep_dir(tmp_path_factory) -> str:
    """A tiny Llama deep enough for SpecPC's default starting layer (8), saved as a local folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", num_hidden_layers=9), dtype=torch.float32)
    path = tmp_path_factory.mktemp("deep-llama")
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def draft_events():
    """The ``DraftCompressionEvent``s LlamaIndex's root dispatcher emits during the test."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    from llama_index.llms.draft_rag import DraftCompressionEvent

    seen: list = []

    class Events(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "TestEvents"

        def handle(self, event, **kwargs) -> None:
            if isinstance(event, DraftCompressionEvent):
                seen.append(event)

    root, handler = get_dispatcher(), Events()
    root.add_event_handler(handler)
    yield seen
    root.event_handlers.remove(handler)


class AccessLogWatch(logging.Handler):
    """The ``draft_rag.access`` lines as dicts. The server writes one when a request has ended, which can be just
    after its client has the whole answer: ``wait`` blocks until the lines a test expects are there."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[dict] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(json.loads(record.getMessage()))
            self._changed.notify_all()

    def wait(self, test=lambda records: bool(records), seconds: float = 15) -> list[dict]:
        """The lines so far, once ``test(lines)`` holds (default: there is one); fails after ``seconds``."""
        with self._changed:
            assert self._changed.wait_for(lambda: test(self.records), seconds), self.records
            return list(self.records)


@pytest.fixture
def access_log():
    """Watch the ``draft_rag.access`` log during the test."""
    logger, watch = logging.getLogger("draft_rag.access"), AccessLogWatch()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(level)


@pytest.fixture(scope="session")
def smollm():
    """The real SmolLM2-135M-Instruct (built-in alias); skipped only when DRAFT_RAG_SKIP_REAL=1."""
    if os.environ.get("DRAFT_RAG_SKIP_REAL") == "1":
        pytest.skip("DRAFT_RAG_SKIP_REAL=1")
    from draft_rag import load_model

    return load_model("smollm2-135m-instruct")


def needs_setup(name: str, present: bool, install: str) -> None:
    """Fail a test whose set-up piece is missing, naming the fix; skip only when ``DRAFT_RAG_NO_<NAME>`` gives why.

    ``scripts/setup.sh --test`` installs every piece, so in CI a missing one is a failure, never a quiet skip.
    """
    env = "DRAFT_RAG_NO_" + name.upper().replace("-", "_").replace(".", "_")
    if present:
        return
    if reason := os.environ.get(env, "").strip():
        pytest.skip(f"{name} not installed, skipped as {env}={reason!r} asks")
    pytest.fail(f"{name} is not installed: {install} (or set {env}=<why> to skip its tests)")


def needle_prompt(n_filler: int = 100, position: float = 0.6) -> tuple[str, str, str]:
    """A needle-in-a-haystack text (~24 tokens per filler line), its question and its answer."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    lines = [filler] * n_filler
    lines.insert(int(n_filler * position), "The special magic number for ocean is 4728163. ")
    return "".join(lines), "What is the special magic number for ocean mentioned in the provided text?", "4728163"


@contextlib.contextmanager
def serving(app, shutdown_timeout: float = 5, **config):
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; always stop it."""
    import uvicorn

    class Server(uvicorn.Server):
        ready = threading.Event()
        closed = threading.Event()  # set once the listening sockets are closed (shutdown's first step)

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                self.ready.set()

        async def shutdown(self, sockets=None):
            for listening in self.servers:
                listening.close()
            self.closed.set()
            await super().shutdown(sockets=sockets)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=shutdown_timeout, **config)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.ready.wait(0.1):  # set once uvicorn listens; a server that failed to start has exited
            assert thread.is_alive(), "server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def serving_engine(target: bool = True):
    """A DraftEngine on the tiny Llama for the server tests: with it as target, or as a compression-only draft."""
    from draft_rag import DraftEngine, SpecPCConfig

    lm = tiny_model("llama")
    cfg = SpecPCConfig(starting_layer_index=1, window_size=8)
    return DraftEngine(target=lm, specpc=cfg) if target else DraftEngine(draft=lm, specpc=cfg)
