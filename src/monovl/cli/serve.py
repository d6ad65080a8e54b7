"""`monovl serve`: the OpenAI-compatible server (monovl.serve) under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .chat import add_quantize_arg


def config_from_args(args: argparse.Namespace):
    """The `ServeConfig` the flags ask for; the model name defaults to the directory's basename."""
    # Imported here: the server's dependencies (FastAPI, uvicorn) load only for `monovl serve`.
    from ..serve.app import ServeConfig
    from ..serve.media import MediaPolicy

    local = None
    if args.allowed_local_media_path:
        local = Path(args.allowed_local_media_path)
        if not local.is_dir():
            raise ValueError(f"--allowed-local-media-path {local} is not a directory")
    return ServeConfig(
        served_model_name=args.served_model_name or Path(args.model).resolve().name,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        max_queue=args.max_queue,
        kv_cache_bytes=None if args.kv_cache_memory_gb is None else int(args.kv_cache_memory_gb * 1024**3),
        prefill_chunk=args.prefill_chunk,
        max_images=args.max_images,
        max_request_bytes=args.max_request_mb * 1024 * 1024,
        media=MediaPolicy(allow_remote=args.allow_remote_media, allowed_local_path=local),
        shutdown_timeout=args.shutdown_timeout,
        quantize=args.quantize,
    )


def build_server(args: argparse.Namespace):
    """A uvicorn server for the flags (not started). Shutdown (Ctrl-C, SIGTERM) first stops the
    scheduler: it refuses new requests, gives running streams --shutdown-timeout seconds, then ends
    the rest with an error chunk, so uvicorn's wait for open connections is short."""
    import uvicorn

    from ..serve import create_app

    app = create_app(args.model, config=config_from_args(args))
    scheduler = app.state.server.scheduler

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await asyncio.to_thread(scheduler.stop, args.shutdown_timeout)
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                 timeout_graceful_shutdown=args.shutdown_timeout + 5))


def run(args: argparse.Namespace) -> int:
    server = build_server(args)
    name = server.config.app.state.server.config.served_model_name
    print(f"monovl serve: {name} on http://{args.host}:{args.port} (chat page at /, API at /v1)", flush=True)
    server.run()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat page",
                       description="Serve a checkpoint over OpenAI's chat-completions API (/v1/chat/completions, "
                                   "/v1/models), with /health, /metrics (Prometheus) and a chat page at /.")
    p.add_argument("--model", required=True, help="checkpoint directory (official layout or monovl's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the directory name)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + new tokens per request (default: the model's limit)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait for a slot; beyond that 503 with Retry-After (default 256)")
    p.add_argument("--kv-cache-memory-gb", type=float, default=None,
                   help="KV cache budget in GiB (default: max-num-seqs full-length sequences, at most 4)")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens prefilled between two decode steps (default 512)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--max-request-mb", type=int, default=32, help="largest request body in MiB (default 32)")
    p.add_argument("--allowed-local-media-path", default=None,
                   help="allow file: URLs and paths to images under this directory (default: none)")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="allow http(s) image URLs; loopback, private and link-local addresses stay refused")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds running streams get to finish on shutdown (default 30)")
    add_quantize_arg(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)
