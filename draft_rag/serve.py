"""The ``draft-rag serve`` subcommand: run the OpenAI-compatible server (draft_rag.server) with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os

from .builtins import DEFAULT_MODEL
from .cli_args import (
    InputError,
    add_budget_args,
    add_options,
    add_sparse_args,
    add_specpc_args,
    non_negative,
    non_negative_int,
    option,
    positive_int,
    seconds,
    sparse_from_args,
    specpc_from_args,
)
from .engine import DEFAULT_CONTEXT_CACHE_MB
from .methods import NAMES

logger = logging.getLogger("draft_rag")


MODELS = (
    option("--target", default=DEFAULT_MODEL, help="local target model (ignored with --upstream)"),
    option("--draft", default=None, help="draft model (default: the target; with --upstream: SmolLM2)"),
    option("--method", default="specpc", choices=NAMES, help="default compression; requests may override"),
)
SERVER = (
    option("--upstream", metavar="URL", help="proxy mode: OpenAI-compatible base URL, e.g. http://gpu:8000/v1"),
    option("--upstream-api-key", help="bearer token for the upstream (default: $DRAFT_RAG_UPSTREAM_API_KEY)"),
    option("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server to the network"),
    option("--port", type=int, default=8000),
    option("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: $DRAFT_RAG_API_KEY; none: open)"),
    option("--model-name", default="draft-rag", help="model id listed by /v1/models"),
    option("--max-tokens", type=positive_int, default=2048, help="largest max_tokens a request may ask for"),
    option("--max-body-bytes", type=positive_int, default=4_000_000, help="largest request body (413 above)"),
    option("--max-queue", type=non_negative_int, default=8, help="requests waiting for the engine (429 above)"),
    option("--queue-timeout", type=seconds, default=60.0, help="seconds a request may wait (503 after)"),
    option(
        "--upstream-timeout",
        type=seconds,
        default=300.0,
        help="proxy: seconds the upstream may stay silent, before its first byte or between two (504 after)",
    ),
    option("--upstream-connect-timeout", type=seconds, default=10.0, help="proxy: seconds to connect (504)"),
    option("--body-timeout", type=seconds, default=30.0, help="seconds a request body may take to arrive (408)"),
    option(
        "--header-timeout",
        type=seconds,
        default=10.0,
        help="seconds a connection has to send a request's head, from opening and after each response (then closed)",
    ),
    option("--keep-alive-timeout", type=seconds, default=5.0, help="seconds an idle keep-alive connection stays open"),
    option(
        "--context-cache-mb",
        type=non_negative,
        default=DEFAULT_CONTEXT_CACHE_MB,
        help="MiB of draft KV kept for contexts read before (follow-up questions reuse it; 0: off)",
    ),
    option(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cancelled",
    ),
)


def add_subcommand(sub) -> None:
    """Add ``draft-rag serve`` to the main parser."""
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible server: local target, or compression proxy (--upstream)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_options(p, MODELS)
    add_budget_args(p, kv=True)
    add_options(p, SERVER)
    add_specpc_args(p)
    add_sparse_args(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    if args.upstream and args.sparse_prefill:
        raise InputError("--sparse-prefill needs a local target (--target); with --upstream the upstream prefills")
    try:
        import uvicorn

        from .server import ServeConfig, create_app, timed_protocol
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"draft-rag serve needs {exc.name}: pip install 'draft-rag[serve]'") from None
    from .engine import DraftEngine

    api_key = args.api_key or os.environ.get("DRAFT_RAG_API_KEY") or None  # keys never appear in --help
    upstream_key = args.upstream_api_key or os.environ.get("DRAFT_RAG_UPSTREAM_API_KEY") or None
    cfg = ServeConfig(
        method=args.method,
        budget=args.budget,
        ratio=args.ratio,
        model_name=args.model_name,
        api_key=api_key,
        upstream=args.upstream,
        upstream_api_key=upstream_key,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
        upstream_timeout=args.upstream_timeout,
        upstream_connect_timeout=args.upstream_connect_timeout,
        body_timeout=args.body_timeout,
    )
    if args.upstream:
        engine = DraftEngine(
            draft=args.draft or DEFAULT_MODEL, specpc=specpc_from_args(args), context_cache_mb=args.context_cache_mb
        )
    else:
        engine = DraftEngine(
            target=args.target,
            draft=args.draft,
            specpc=specpc_from_args(args),
            method=args.method,
            context_cache_mb=args.context_cache_mb,
            sparse_prefill=sparse_from_args(args),
        )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        logger.warning("serving on %s without --api-key: anyone who can reach it can use it", args.host)
    app = create_app(engine, cfg)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=args.shutdown_timeout,
        http=timed_protocol(args.header_timeout),
        timeout_keep_alive=args.keep_alive_timeout,
    )
    return 0
