"""GPU checks (skipped without CUDA; CI has none): bf16 inference and training on the device.

Run them where a GPU is lent: `python -m pytest tests/test_cuda.py`.
"""

import json

import pytest
import torch

from monovl import MonoInternVL
from monovl.engine import Engine, Prompt
from monovl.training import TrainConfig, apply_stage, get_stage
from monovl.training.trainer import Trainer
from test_model import FIXTURE, load_reference
from test_training import ListData, make_batches, text_logits
from tiny import IMG_CONTEXT, image_prompt, random_tiles

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_fp32():
    # TF32 would make fp32 matmuls on the GPU differ from the CPU's by ~1e-3.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def test_bf16_by_default_on_gpu_and_close_to_fp32():
    ref, meta = load_reference()
    gpu = MonoInternVL.from_pretrained(FIXTURE, device="cuda")
    assert gpu.dtype == torch.bfloat16
    gpu32 = MonoInternVL.from_pretrained(FIXTURE, dtype="float32", device="cuda")
    with torch.no_grad():
        ids, px = ref["input_ids"].cuda(), ref["pixel_values"].cuda()
        out32 = gpu32(ids, px, image_token_id=meta["img_context_token_id"]).logits.cpu()
        out16 = gpu(ids, px.bfloat16(), image_token_id=meta["img_context_token_id"]).logits.float().cpu()
    torch.testing.assert_close(out32, ref["logits"], atol=1e-4, rtol=0)  # fp32 parity holds on the GPU too
    scale = ref["logits"].abs().max()
    assert (out16 - ref["logits"]).abs().max() < 0.05 * scale
    new = gpu32.generate(ids, px,
                         image_token_id=meta["img_context_token_id"], max_new_tokens=8, stop_token_ids=[])
    assert new.cpu().tolist() == [meta["greedy_new_tokens"]]


def test_batched_generation_equals_single_on_gpu(tiny_model_dir):
    model = MonoInternVL.from_pretrained(tiny_model_dir, dtype="float32", device="cuda")
    model.image_token_id = IMG_CONTEXT
    engine = Engine(model)
    prompts = [Prompt(torch.tensor(image_prompt([5, 6], 1, [8, 9, 10])), random_tiles(1, seed=1)),
               Prompt(torch.tensor([1, 30, 31, 32])),
               Prompt(torch.tensor(image_prompt([7], 2, [11])), random_tiles(2, seed=2))]
    single = [engine.generate_batch([p], max_new_tokens=6, stop_token_ids=[])[0] for p in prompts]
    assert engine.generate_batch(prompts, max_new_tokens=6, stop_token_ids=[]) == single


def test_training_on_gpu_bf16_autocast_keeps_frozen_weights(tiny_model_dir, tmp_path):
    before = MonoInternVL.from_pretrained(tiny_model_dir, dtype="float32")
    cfg = TrainConfig(stage="s1.1", model=str(tiny_model_dir), data="-", out=str(tmp_path), max_steps=20,
                      lr=3e-3, batch_size=1)
    trainer = Trainer(cfg, data=ListData(make_batches()))
    assert trainer.model.device.type == "cuda" and isinstance(trainer.autocast, torch.autocast)
    final = trainer.train()
    after = MonoInternVL.from_pretrained(final, dtype="float32")
    trainable = set(apply_stage(MonoInternVL.from_pretrained(tiny_model_dir), get_stage("s1.1", "v1")))
    a, b = before.state_dict(), after.state_dict()
    for name in a:
        if name not in trainable and name != "language_model.model.tok_embeddings.weight":
            assert torch.equal(a[name], b[name]), f"frozen {name} changed"
    assert torch.equal(text_logits(before), text_logits(after))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(l == l for l in losses) and losses[-1] < losses[0]


def test_block_routed_ffn_kernel_on_gpu_bf16():
    """The Triton kernel compiled for the GPU (the CPU tests run it interpreted) against decoder.Route."""
    from monovl.model import triton_routed
    from monovl.model.decoder import FeedForward, Route

    if not triton_routed.available():
        pytest.skip("Triton is not installed")
    torch.manual_seed(0)
    text_ffn = FeedForward(256, 512).cuda().bfloat16()
    visual_ffn = FeedForward(256, 512).cuda().bfloat16()
    vis = torch.zeros(2, 300, dtype=torch.bool, device="cuda")
    vis[:, 20:276] = True  # one tile's 256 image tokens between text
    x = torch.randn(2, 300, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = Route.from_mask(vis).apply(x, text_ffn, visual_ffn).float()
        got = triton_routed.routed_swiglu(x, vis, text_ffn, visual_ffn).float()
    assert (got - expected).abs().max().item() <= 0.02 * expected.abs().max().item()
