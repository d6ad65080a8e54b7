"""Serving benchmark: TTFT p50/p99 and output tokens/s at several concurrencies, through the HTTP API.

    .venv/bin/python benchmarks/bench_serve.py                      # cpu-420m, concurrency 1, 4, 16
    .venv/bin/python benchmarks/bench_serve.py --quick              # tiny model, a smoke run in seconds
    .venv/bin/python benchmarks/bench_serve.py --json benchmarks/results-serve.json
    .venv/bin/python benchmarks/bench_serve.py --vllm .venv-vllm/bin/vllm   # the same load on `vllm serve`

The model is a random-weight preset (`cpu-420m`: hidden 1024, 8 layers, 448 px tiles, 256 image
tokens per tile) with the tiny sentencepiece tokenizer trained locally (nothing is downloaded; the
answers are noise, the arithmetic is the real model's). The server (`monovl.serve.create_app`, the
same app `monovl serve` runs) listens on 127.0.0.1 in this process, on its own threads; the clients
are the official `openai` package, one thread per concurrent client, each sending its requests one
after another with `stream=True`. Every request carries one image (`--tiles` tiles) and a short
question, and asks for exactly `--new` tokens (`ignore_eos`, so random stop tokens do not shorten
answers).

- TTFT: from sending the request to the first streamed content, per request; p50 and p99.
- Output tokens/s: all generated tokens (from `usage`) over the level's wall time, first request
  sent to last answer done. At concurrency c the server decodes up to c sequences per step, so this
  grows with c until the prompts' prefill, which cannot be batched on a CPU this way, dominates.

`--vllm BIN` serves the same checkpoint (saved to a temp dir with the tokenizer) with `BIN serve` and
monovl's vLLM plugin instead (`make vllm-env`): fp32, prefill chunks of `--prefill-chunk` tokens, and
prefix caching off unless `--vllm-prefix-caching` (every request here has the same image, which vLLM
would then prefill once).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import torch
import uvicorn
from PIL import Image

from monovl import MonoInternVL
from monovl.model.config import preset
from monovl.processing import MonoProcessor, Tokenizer, train_tiny_tokenizer
from monovl.serve import create_app
from monovl.vllm import start_server, stop_server


def build(preset_name: str, max_tiles: int) -> tuple[MonoInternVL, MonoProcessor, Path]:
    """A random-weight model of the preset, a processor on the tiny tokenizer (same ids as tests), and
    the tokenizer's directory."""
    model = MonoInternVL(preset(preset_name)).init_weights(generator=torch.Generator().manual_seed(0)).eval()
    tok_dir = Path(tempfile.mkdtemp(prefix="monovl-bench-tok-"))
    train_tiny_tokenizer(tok_dir)
    processor = MonoProcessor(Tokenizer.from_pretrained(tok_dir), "internlm2-chat",
                              image_size=model.config.vision.image_size, num_image_token=model.num_image_token,
                              max_num=max_tiles)
    model.image_token_id = processor.image_token_id
    # The preset's head (92553 rows for cpu-420m) is wider than the tiny tokenizer. Its rows beyond the
    # tokenizer repeat the first ones, so every logit there ties one in range and greedy argmax (the
    # first maximum) always picks an id the tokenizer can decode; the head's shape and cost are unchanged.
    vocab = len(processor.tokenizer)
    head = model.language_model.output.weight
    if head.shape[0] > vocab and not model.config.llm.tie_word_embeddings:
        with torch.no_grad():
            head[vocab:] = head[:vocab].repeat(-(-head.shape[0] // vocab) - 1, 1)[:head.shape[0] - vocab]
    return model, processor, tok_dir


def image_url(size: int, tiles: int) -> str:
    """A noise image whose aspect ratio tiles into `tiles` tiles (plus a thumbnail when tiles > 1)."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size * tiles, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def one_request(client: openai.OpenAI, model: str, url: str, new: int, question: str) -> tuple[float, int]:
    """(TTFT seconds, generated tokens) of one streamed request."""
    start = time.perf_counter()
    ttft, tokens = None, 0
    stream = client.chat.completions.create(
        model=model, max_tokens=new, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": question}]}])
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (ttft if ttft is not None else time.perf_counter() - start), tokens


def level(client, model: str, url: str, concurrency: int, requests: int, new: int) -> dict:
    """`requests` requests from `concurrency` clients; TTFT percentiles and output tokens/s."""
    questions = [f"Describe picture {i} in detail." for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda q: one_request(client, model, url, new, q), questions))
    wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    p99 = ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))]
    return {"concurrency": concurrency, "requests": requests, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": p99, "output_tokens": tokens, "wall_s": wall, "output_tokens_per_s": tokens / wall}


def start_vllm(binary: str, model: MonoInternVL, tok_dir: Path, name: str, max_num_seqs: int,
               prefill_chunk: int, prefix_caching: bool) -> tuple[subprocess.Popen, str, Path]:
    """Save the model with its tokenizer and start `binary serve` on it; (process, base URL, dir)."""
    root = Path(tempfile.mkdtemp(prefix="monovl-bench-vllm-"))
    model.save_pretrained(root)
    for item in tok_dir.iterdir():
        shutil.copy(item, root / item.name)
    proc, url = start_server(binary, root, [
        "--dtype", "float32", "--kv-cache-memory-bytes", "2G", "--max-model-len", "4096",
        "--max-num-seqs", str(max_num_seqs), "--served-model-name", name, "--max-num-batched-tokens",
        str(prefill_chunk), "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching"],
        root / "serve.log")
    return proc, url, root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu-420m")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends (default 2)")
    p.add_argument("--tiles", type=int, default=1, help="tiles of the image in every request (default 1)")
    p.add_argument("--new", type=int, default=64, help="tokens generated per request (default 64)")
    p.add_argument("--prefill-chunk", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--quick", action="store_true", help="tiny preset, concurrency 1 2 4, 8 new tokens: a smoke run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--vllm", default=None, metavar="BIN", help="serve with BIN serve (vLLM + monovl's plugin)")
    p.add_argument("--vllm-prefix-caching", action="store_true", help="with --vllm: leave prefix caching on")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.concurrency, args.new, args.requests_per_client = "tiny", [1, 2, 4], 8, 2
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor, tok_dir = build(args.preset, max_tiles=max(args.tiles, 1))
    image_size = model.config.vision.image_size
    if args.vllm:
        proc, base_url, vllm_dir = start_vllm(args.vllm, model, tok_dir, args.preset, max(args.concurrency),
                                             args.prefill_chunk, args.vllm_prefix_caching)
        del model  # the server process has its own copy

        def stop() -> None:
            stop_server(proc)
            shutil.rmtree(vllm_dir, ignore_errors=True)
    else:
        app = create_app(model, processor, served_model_name=args.preset, max_num_seqs=max(args.concurrency),
                         prefill_chunk=args.prefill_chunk, max_request_bytes=64 * 1024 * 1024)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

        def stop() -> None:
            server.should_exit = True
            thread.join(60)
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    url = image_url(image_size, args.tiles)
    one_request(client, args.preset, url, 2, "warm-up")  # builds the decode kernels, warms the allocator
    rows = []
    try:
        for c in args.concurrency:
            rows.append(level(client, args.preset, url, c, c * args.requests_per_client, args.new))
            r = rows[-1]
            print(f"concurrency {c:>3}: TTFT p50 {r['ttft_p50_s']:.2f} s, p99 {r['ttft_p99_s']:.2f} s, "
                  f"{r['output_tokens_per_s']:.1f} output tokens/s ({r['output_tokens']} tokens in "
                  f"{r['wall_s']:.1f} s)", flush=True)
    finally:
        stop()
    prompt = processor("Describe picture 0 in detail.", images=[base64.b64decode(url.split(",", 1)[1])])
    engine = "vllm serve" if args.vllm else "monovl serve"
    print(f"\n{engine}, {args.preset}, prompt {prompt['input_ids'].shape[1]} tokens ({args.tiles} tile(s)), {args.new} "
          f"new tokens, {torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}\n")
    print("| concurrency | requests | TTFT p50 (s) | TTFT p99 (s) | output tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['requests']} | {r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | "
              f"{r['output_tokens_per_s']:.1f} |")
    if len(rows) > 1:
        print(f"\nthroughput at concurrency {rows[-1]['concurrency']} / concurrency {rows[0]['concurrency']}: "
              f"{rows[-1]['output_tokens_per_s'] / rows[0]['output_tokens_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"engine": engine, "preset": args.preset, "tiles": args.tiles, "new": args.new,
                                         "prompt_tokens": int(prompt["input_ids"].shape[1]),
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
