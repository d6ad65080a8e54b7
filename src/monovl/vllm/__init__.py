"""Serve Mono-InternVL checkpoints with vLLM: an out-of-tree model plugin.

vLLM removed its Mono-InternVL path (`InternLM2VEForCausalLM`, last in v0.23). This package puts it
back through vLLM's plugin system, without forking vLLM:

- `register()` is the `vllm.general_plugins` entry point (see pyproject.toml). vLLM calls it in every
  process before it reads a config. It teaches transformers to read an `internvl_chat` config.json
  with no remote code (`config.MonoInternVLChatConfig`), which names a monolithic checkpoint's
  architecture `MonoInternVLChatModel`, and registers that architecture (`model.MonoInternVLForVLLM`).
- The model reuses monovl's patch embedding and `mlp1` (`monovl.model.vision`) and builds the decoder
  from vLLM's tensor-parallel layers, routing every token to exactly one expert by the image-token
  mask, in every chunk of a chunked prefill.
- The multimodal processor (`processing.py`) tiles images with monovl's own preprocessing, so a
  prompt has the same tokens and pixels as in monovl's `MonoProcessor`.
- `InternLM2Tokenizer` (tokenizer.py) encodes official checkpoints' sentencepiece prompts as the
  official remote-code tokenizer does.
- The chat template comes from the checkpoint's tokenizer files, as vLLM reads them. Official
  checkpoints only name theirs in config.json (`"template": "internlm2-chat"`); for those,
  `named_chat_template` gives vLLM monovl's template as jinja (`ChatTemplate.to_jinja`).

Nothing here is imported by the rest of monovl; it needs vLLM (`make vllm-env`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ARCHITECTURE = "MonoInternVLChatModel"


def named_chat_template(model_dir: str) -> Path | None:
    """vLLM's chat-template fallback for `internvl_chat` checkpoints without a template of their own:
    the jinja of the monovl template that config.json names, written once to a temp file (vLLM wants a
    path). None when config.json names none that monovl knows (vLLM then reports the missing template)."""
    from monovl.processing.prompt import available_templates, get_template

    config = Path(model_dir) / "config.json"
    try:
        name = json.loads(config.read_text()).get("template")
    except (OSError, ValueError):
        return None
    if name not in available_templates():
        return None
    path = Path(tempfile.gettempdir()) / f"monovl-chat-template-{name}.jinja"
    text = get_template(name).to_jinja()
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def register() -> None:
    """Register the config class and the model with transformers and vLLM (idempotent, cheap:
    the model module is imported lazily by vLLM)."""
    from transformers import AutoConfig, AutoTokenizer
    from vllm import ModelRegistry
    from vllm.transformers_utils.chat_templates.registry import register_chat_template_fallback_path

    from .config import MonoInternVLChatConfig
    from .tokenizer import InternLM2Tokenizer

    # exist_ok: vLLM calls plugins once per process, and tests may call register() again.
    AutoConfig.register("internvl_chat", MonoInternVLChatConfig, exist_ok=True)
    # transformers finds a tokenizer_config.json's "tokenizer_class" among registered classes by name.
    AutoTokenizer.register(MonoInternVLChatConfig, fast_tokenizer_class=InternLM2Tokenizer, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "monovl.vllm.model:MonoInternVLForVLLM")
        register_chat_template_fallback_path("internvl_chat", named_chat_template)


def start_server(binary: str | os.PathLike, model_dir: str | os.PathLike, args: list[str], log_path: str | os.PathLike,
                 timeout: float = 600.0, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Run `binary serve model_dir --port P *args` on a free local port, its output in `log_path`, and
    wait until `/health` answers 200; returns (process, base URL of the OpenAI API, ".../v1").

    Raises RuntimeError, with the end of the log, if the server exits first or is not healthy within
    `timeout` seconds (the server and every process it started are then killed and reaped). `env`
    replaces the environment (default: inherited). The server runs in a session of its own, so that
    its workers (vLLM's engine core) go with it. Used by the vLLM tests and
    `benchmarks/bench_serve.py --vllm`; stop it with `stop_server`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = Path(log_path)
    cmd = [str(binary), "serve", str(model_dir), "--port", str(port), *args]
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{binary} serve exited ({proc.returncode}); end of {log_path}:\n"
                               f"{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            _kill_session(proc)
            raise RuntimeError(f"{binary} serve was not healthy after {timeout:.0f} s; end of {log_path}:\n"
                               f"{log_path.read_text()[-4000:]}")
        time.sleep(1)


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Terminate a server from `start_server` (SIGTERM: it shuts its workers down), killing it and
    every process of its session if it has not exited after `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL every process of `proc`'s session (it leads one: start_new_session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait()
