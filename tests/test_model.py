"""The model against the official implementation's outputs, and the routing rules of reference section 9."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from monovl import MonoInternVL
from monovl.model.vision import pixel_shuffle
from tiny import IMG_CONTEXT, image_prompt, random_tiles, tiny_model

FIXTURE = Path(__file__).parent / "data" / "official-v1-tiny"


def load_reference() -> tuple[dict, dict]:
    """The official code's inputs and outputs for the fixture: tensors (pixels as fp32) and metadata."""
    ref = load_file(FIXTURE / "reference.safetensors")
    ref["pixel_values"] = ref["pixel_values"].float()
    return ref, json.loads((FIXTURE / "reference.json").read_text())


@pytest.fixture(scope="module")
def official():
    return MonoInternVL.from_pretrained(FIXTURE), *load_reference()


def test_official_logits_parity(official):
    model, ref, meta = official
    with torch.no_grad():
        out = model(ref["input_ids"], ref["pixel_values"], image_token_id=meta["img_context_token_id"])
    assert out.logits.shape == ref["logits"].shape
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, ref["logits"], atol=1e-4, rtol=0)


def test_official_text_only_parity(official):
    model, ref, _ = official
    with torch.no_grad():
        out = model(ref["text_ids"])
    torch.testing.assert_close(out.logits, ref["text_logits"], atol=1e-4, rtol=0)


def test_official_greedy_tokens(official):
    model, ref, meta = official
    new = model.generate(ref["input_ids"], ref["pixel_values"], image_token_id=meta["img_context_token_id"],
                         max_new_tokens=8, stop_token_ids=[])
    assert new.tolist() == [meta["greedy_new_tokens"]]


def test_pixel_shuffle_channel_order():
    # Token (y2, x2) holds the patches (2y2+dy, 2x2+dx) in block order (0,0), (0,1), (1,0), (1,1).
    t, h, w, c = 1, 4, 4, 3
    x = torch.arange(t * h * w * c, dtype=torch.float32).reshape(t, h, w, c)
    y = pixel_shuffle(x, 0.5, "v2")
    assert y.shape == (1, 2, 2, 12)
    for y2 in range(2):
        for x2 in range(2):
            blocks = [x[0, 2 * y2 + dy, 2 * x2 + dx] for dy in (0, 1) for dx in (0, 1)]
            assert torch.equal(y[0, y2, x2], torch.cat(blocks))
    # v1 leaves the grid transposed.
    assert torch.equal(pixel_shuffle(x, 0.5, "v1"), y.transpose(1, 2))


class ExpertSpy:
    """Counts the rows each expert sees, to prove no token runs through both."""

    def __init__(self, model):
        self.rows = {"text": 0, "visual": 0}
        for layer in model.language_model.model.layers[:1]:
            layer.feed_forward.register_forward_hook(self._hook("text"))
            layer.feed_forward_ve.register_forward_hook(self._hook("visual"))

    def _hook(self, kind):
        def hook(module, args, out):
            self.rows[kind] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        return hook


def test_each_token_runs_exactly_one_expert():
    model = tiny_model()
    ids = torch.tensor([image_prompt([5, 6], tiles=2, suffix=[7, 8, 9])])
    spy = ExpertSpy(model)
    with torch.no_grad():
        model(ids, random_tiles(2))
    n_vis = int((ids == IMG_CONTEXT).sum())
    assert spy.rows == {"visual": n_vis, "text": ids.numel() - n_vis}


def test_routing_matches_mask_mixing_reference():
    # The published rule, FFN_t(x)*(1-m) + FFN_v(x)*m, computed the slow way, equals our routed output.
    model = tiny_model(seed=1)
    ids = torch.tensor([image_prompt([5], tiles=1, suffix=[7, 8])])
    layer = model.language_model.model.layers[0]
    x = torch.randn(1, ids.shape[1], 64)
    mask = (ids == IMG_CONTEXT)[..., None].float()
    from monovl.model.decoder import Route
    with torch.no_grad():
        routed = Route.from_mask(ids == IMG_CONTEXT).apply(x, layer.feed_forward, layer.feed_forward_ve)
        mixed = layer.feed_forward(x) * (1 - mask) + layer.feed_forward_ve(x) * mask
    torch.testing.assert_close(routed, mixed, atol=1e-6, rtol=0)


def test_visual_experts_matter_and_text_positions_before_images_do_not_see_them():
    model = tiny_model()
    ids = torch.tensor([image_prompt([5, 6], tiles=1, suffix=[7])])
    with torch.no_grad():
        a = model(ids, random_tiles(1, seed=0)).logits
        b = model(ids, random_tiles(1, seed=1)).logits
        for layer in model.language_model.model.layers:
            layer.feed_forward_ve.w2.weight.mul_(2)
        c = model(ids, random_tiles(1, seed=0)).logits
    # Causal: the tokens before the image ([BOS, 5, 6, <img>]) do not depend on the image or the visual experts.
    assert torch.equal(a[:, :4], b[:, :4]) and torch.equal(a[:, :4], c[:, :4])
    assert not torch.allclose(a[:, -1], b[:, -1]) and not torch.allclose(a[:, -1], c[:, -1])


def test_v15_with_copied_attention_experts_equals_v1():
    v1 = tiny_model(seed=2)
    v15 = tiny_model(seed=2, attention_experts=True)
    state = v1.state_dict()
    for i in range(v1.config.llm.num_hidden_layers):
        prefix = f"language_model.model.layers.{i}.attention."
        state[prefix + "wqkv_ve.weight"] = state[prefix + "wqkv.weight"].clone()
        state[prefix + "wo_ve.weight"] = state[prefix + "wo.weight"].clone()
    v15.load_state_dict(state)
    ids = torch.tensor([image_prompt([5, 6], tiles=2, suffix=[7, 8])])
    with torch.no_grad():
        torch.testing.assert_close(v15(ids, random_tiles(2)).logits, v1(ids, random_tiles(2)).logits,
                                   atol=1e-5, rtol=0)
        # and the attention experts do take part once they differ
        v15.language_model.model.layers[0].attention.wo_ve.weight.mul_(3)
        assert not torch.allclose(v15(ids, random_tiles(2)).logits, v1(ids, random_tiles(2)).logits)


def test_image_token_count_mismatch_names_both_counts():
    model = tiny_model()
    ids = torch.tensor([image_prompt([5], tiles=2, suffix=[7])])
    with pytest.raises(ValueError, match=r"8 <IMG_CONTEXT> tokens.*3 tiles give 12"):
        model(ids, random_tiles(3))
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)


def test_fp16_refused():
    from monovl.model.mono_internvl import resolve_dtype
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_dtype(torch.float16, torch.device("cpu"))
    with pytest.raises(ValueError, match="float16 is not supported"):
        MonoInternVL.from_pretrained(FIXTURE, dtype="fp16")


def test_dynamic_ntk_only_beyond_max_positions():
    from monovl.model.decoder import Rotary
    model = tiny_model(max_position_embeddings=16)
    rot: Rotary = model.language_model.rotary
    base = rot.inv_freq(16, torch.device("cpu"))
    assert torch.equal(base, rot.inv_freq(1, torch.device("cpu")))
    longer = rot.inv_freq(32, torch.device("cpu"))
    # base' = theta * ((f*L/max) - (f-1)) ** (d/(d-2)) with f=2, L=32, max=16 -> theta * 3 ** (16/14)
    d = rot.dim
    expected = 1.0 / ((1e6 * 3 ** (d / (d - 2))) ** (torch.arange(0, d, 2).float() / d))
    torch.testing.assert_close(longer, expected)
    assert torch.equal(rot.inv_freq(16, torch.device("cpu")), base)  # no state kept after a long call


def test_naive_routing_baseline_gives_the_same_logits_but_runs_both_experts():
    model = tiny_model(seed=5, attention_experts=True)
    ids = torch.tensor([image_prompt([5], tiles=2, suffix=[7, 8])])
    with torch.no_grad():
        routed = model(ids, random_tiles(2)).logits
        spy = ExpertSpy(model)
        model.language_model.naive_routing = True
        naive = model(ids, random_tiles(2)).logits
    torch.testing.assert_close(naive, routed, atol=1e-5, rtol=0)
    assert spy.rows == {"visual": ids.numel(), "text": ids.numel()}


def test_packed_samples_equal_separate_samples():
    # Two samples in one row: attention stays inside each, positions restart, images in order.
    model = tiny_model(seed=6, attention_experts=True)
    a = image_prompt([5, 6], tiles=1, suffix=[7])
    b = image_prompt([9], tiles=2, suffix=[10, 11, 12])
    tiles_a, tiles_b = random_tiles(1, seed=1), random_tiles(2, seed=2)
    pad = 3
    ids = torch.tensor([a + b + [2] * pad])
    seg = torch.tensor([[1] * len(a) + [2] * len(b) + [0] * pad])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b))) + [0] * pad])
    with torch.no_grad():
        packed = model(ids, torch.cat([tiles_a, tiles_b]), position_ids=pos, segment_ids=seg).logits
        alone_a = model(torch.tensor([a]), tiles_a).logits
        alone_b = model(torch.tensor([b]), tiles_b).logits
    torch.testing.assert_close(packed[:, : len(a)], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, len(a): len(a) + len(b)], alone_b, atol=1e-5, rtol=0)
    assert torch.isfinite(packed).all()


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_model(seed=7)
    ids = torch.tensor([image_prompt([5], tiles=1, suffix=[7, 8])])
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.language_model.activation_checkpointing = ckpt
        model(ids, random_tiles(1)).logits.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    model.language_model.activation_checkpointing = False
    assert len(grads[0]) == len(grads[1]) > 0
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)
