"""Prefill GEMMs on oneDNN-packed weights: same results, taken only where they apply, never stale."""

import contextlib

import pytest
import torch

from monovl.engine import Engine
from monovl.engine.packed_linear import PackedLinears, prefill_mode
from tiny import image_prompt, random_tiles, tiny_model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v1.5"])
def model(request):
    return tiny_model(seed=5, attention_experts=request.param)


class Spy(PackedLinears):
    """Counts the F.linear calls that went to the packed kernel."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.hits = 0

    def packed_weight(self, weight):
        w = super().packed_weight(weight)
        self.hits += w is not None
        return w


def prompt():
    return torch.tensor([image_prompt([5, 6, 7], tiles=2, suffix=list(range(8, 30)))]), random_tiles(2)


@torch.inference_mode()
def test_packed_forward_matches_plain_forward(model):
    ids, tiles = prompt()
    ref = model(ids, tiles).logits
    spy = Spy(model)
    with spy:
        out = model(ids, tiles).logits
    # Every decoder linear (text and visual experts), the head and mlp1 take the packed kernel.
    assert spy.hits >= model.config.llm.num_hidden_layers * 4 + 2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_few_rows_stay_on_f_linear(model):
    spy = Spy(model, min_rows=10_000)
    ids, tiles = prompt()
    with spy:
        model(ids, tiles)
    assert spy.hits == 0
    assert spy.packed_weight(model.mlp1[1].weight) is not None  # packed, just not used for so few rows
    assert spy.packed_weight(model.mlp1[0].weight) is None  # a LayerNorm weight is not a linear's


def test_training_forward_keeps_its_gradients(model):
    ids, tiles = prompt()
    weight = model.language_model.model.layers[0].feed_forward_ve.w1.weight

    def grad(context):
        weight.requires_grad_(True)
        try:
            with context:
                model(ids, tiles).logits.square().mean().backward()
            return weight.grad.clone()
        finally:
            weight.requires_grad_(False)
            weight.grad = None

    # The packed kernel has no autograd: a forward that needs gradients must not take it for this
    # weight, or the gradient would be missing.
    torch.testing.assert_close(grad(Spy(model)), grad(contextlib.nullcontext()), atol=1e-6, rtol=1e-5)


def test_a_weight_changed_in_place_is_packed_again():
    model = tiny_model(seed=6)
    ids, tiles = prompt()
    packer = PackedLinears(model)
    w = model.language_model.model.layers[0].feed_forward.w2.weight
    stale = packer.packed_weight(w)
    with torch.no_grad():
        w.mul_(2.0)  # a training step or load_state_dict writes in place
    assert packer.packed_weight(w) is not stale
    with torch.inference_mode():
        ref = model(ids, tiles).logits
        with packer:
            out = model(ids, tiles).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_engine_tokens_are_the_same_with_and_without_packing(model):
    ids, tiles = prompt()
    plain = Engine(model, packed_prefill=False).generate(ids, tiles, max_new_tokens=8)
    packed = Engine(model, packed_prefill=True).generate(ids, tiles, max_new_tokens=8)
    assert packed.tolist() == plain.tolist()


def test_packing_refuses_a_bf16_model():
    model = tiny_model(seed=6).to(torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 model on CPU"):
        Engine(model, packed_prefill=True)
    with pytest.raises(ValueError, match="fp32 model on CPU"):
        prefill_mode(model, True)
    assert isinstance(prefill_mode(model), contextlib.nullcontext)  # the default quietly does nothing


def test_the_modular_baseline_packs_its_own_linears_too():
    """`monovl bench speed --modular-baseline` runs a ViT + projector in front of the same LLM through
    the engine: its products are packed alike, so the comparison stays even."""
    from monovl.eval.modular import EncoderConfig, ModularBaseline

    mono = tiny_model(seed=7)
    modular = ModularBaseline(mono, EncoderConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2,
                                                  num_heads=2, mlp_size=64)).eval()
    ids, tiles = prompt()
    spy = Spy(modular)
    assert spy.packed_weight(modular.projector[1].weight) is not None
    with torch.inference_mode():
        ref = modular(ids, tiles).logits
        with spy:
            out = modular(ids, tiles).logits
    assert spy.hits >= mono.config.llm.num_hidden_layers * 4 + 2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    plain = Engine(modular, packed_prefill=False).generate(ids, tiles, max_new_tokens=6)
    assert Engine(modular).generate(ids, tiles, max_new_tokens=6).tolist() == plain.tolist()


@pytest.mark.parametrize("rows", [2, 4, 9])
@torch.inference_mode()
def test_decode_steps_of_enough_rows_take_the_packed_products_with_the_same_logits(model, rows):
    from monovl.engine import packed_linear
    from monovl.engine.cpu_decode import CPUDecoder
    from monovl.engine.decode_kernels import PACKED_MIN_ROWS, TorchKernels
    from monovl.model.kv_cache import KVCache

    cfg = model.config.llm
    ids = torch.tensor([image_prompt([5 + r, 6], tiles=1, suffix=[8, 9 + r]) for r in range(rows)])
    caches = [KVCache(cfg.num_hidden_layers, rows, cfg.num_key_value_heads, cfg.head_dim, ids.shape[1] + 3,
                      model.dtype, model.device) for _ in range(2)]
    for c in caches:
        model(ids, random_tiles(rows), cache=c)
    spy = Spy(model)
    packed_linear._PACKERS[model] = spy  # the packer the decoder looks up
    try:
        plain, packed = CPUDecoder(model, TorchKernels(), packed=False), CPUDecoder(model, TorchKernels())
        tokens = torch.arange(rows) + 11
        for i in range(3):
            positions = torch.full((rows, 1), ids.shape[1] + i)
            ref, got = plain(tokens, positions, caches[0]), packed(tokens, positions, caches[1])
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            tokens = ref.argmax(-1)
    finally:
        del packed_linear._PACKERS[model]
    # Every product of every layer and the head, on each of the 3 steps, once a batch is large enough.
    assert spy.hits == (3 * (5 * cfg.num_hidden_layers + 1) if rows >= PACKED_MIN_ROWS else 0)
