"""KV-cached generation: cache vs no cache, batched vs single, sampling, stop tokens, streaming."""

import pytest
import torch
import torch.nn.functional as F

from monovl.engine import Engine, Prompt, SamplingParams
from monovl.model.kv_cache import KVCache
from tiny import image_prompt, random_tiles, tiny_model


def new_cache(model, batch=1, max_len=128):
    c = model.config.llm
    return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, max_len, model.dtype, "cpu")


@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v1.5"])
def model(request):
    return tiny_model(seed=3, attention_experts=request.param)


@torch.no_grad()
def test_cached_chunks_equal_full_forward(model):
    ids = torch.tensor([image_prompt([5, 6, 7], tiles=2, suffix=[8, 9, 10, 11])])
    tiles = random_tiles(2)
    full = model(ids, tiles).logits
    # Text chunk, then a chunk holding the whole image (a cached forward with image tokens must
    # still route them to the visual experts), then single-token steps.
    cache = new_cache(model)
    parts = [model(ids[:, :3], cache=cache).logits, model(ids[:, 3:14], tiles, cache=cache).logits]
    parts += [model(ids[:, i:i + 1], cache=cache).logits for i in range(14, ids.shape[1])]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_greedy_generate_equals_uncached_argmax_loop(model):
    ids = torch.tensor([image_prompt([5], tiles=1, suffix=[8, 9])])
    tiles = random_tiles(1)
    new = model.generate(ids, tiles, max_new_tokens=10, stop_token_ids=[])
    seq, expected = ids, []
    n_prompt = ids.shape[1]
    for _ in range(10):
        logits = model(seq, tiles).logits[:, -1]
        # Generated tokens are text: their rows use the text experts even with no cache.
        tok = logits.argmax(-1)
        expected.append(int(tok))
        seq = torch.cat([seq, tok[:, None]], dim=1)
    assert new.shape == (1, 10) and new[0].tolist() == expected and seq.shape[1] == n_prompt + 10


def test_batched_generation_equals_one_at_a_time(model):
    engine = Engine(model)
    prompts = [
        Prompt(image_prompt([5, 6], tiles=2, suffix=[7, 8, 9, 10, 11]), random_tiles(2, seed=1)),
        Prompt([1, 20, 21, 22]),  # text only, much shorter
        Prompt(image_prompt([30], tiles=1, suffix=[31]), random_tiles(1, seed=2)),
    ]
    batched = engine.generate_batch(prompts, max_new_tokens=12)
    single = [engine.generate_batch([p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert all(len(r) == 12 for r in batched)


def test_stop_tokens_end_rows_and_pad_the_rest(model):
    engine = Engine(model)
    p1 = Prompt(image_prompt([5], tiles=1, suffix=[8]), random_tiles(1))
    p2 = Prompt([1, 40, 41])
    free = engine.generate_batch([p1, p2], max_new_tokens=8)
    stop = free[0][2]
    stopped = engine.generate_batch([p1, p2], max_new_tokens=8, stop_token_ids=[stop])
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    raw = model.generate(torch.tensor([p2.input_ids]), max_new_tokens=8, stop_token_ids=[free[1][1]])
    assert raw[0].tolist() == free[1][:2]  # generation ends once every row stopped
    # A padded batch: the stopped row is filled with pad_token_id while the other runs on.
    ids = torch.tensor([[2, 2, 1, 40, 41], [1, 50, 51, 52, 53]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    alone = model.generate(ids[1:], max_new_tokens=6, stop_token_ids=[])
    both = model.generate(ids, attention_mask=mask, max_new_tokens=6, stop_token_ids=[free[1][0]])
    assert both[0].tolist() == [free[1][0]] + [model.config.llm.pad_token_id] * 5
    assert both[1].tolist() == alone[0].tolist()


def test_streaming_yields_the_generated_tokens(model):
    engine = Engine(model)
    ids = torch.tensor([image_prompt([5], tiles=1, suffix=[8])])
    streamed = [int(t) for t in engine.stream(ids, random_tiles(1), max_new_tokens=6)]
    assert streamed == model.generate(ids, random_tiles(1), max_new_tokens=6, stop_token_ids=[])[0].tolist()


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    ids = torch.tensor([[1, 5, 6, 7]])
    kw = dict(max_new_tokens=16, stop_token_ids=[], do_sample=True, temperature=1.5)
    a = model.generate(ids, seed=0, **kw)
    assert torch.equal(a, model.generate(ids, seed=0, **kw))
    assert not torch.equal(a, model.generate(ids, seed=1, **kw))
    greedy = model.generate(ids, max_new_tokens=16, stop_token_ids=[])
    assert torch.equal(model.generate(ids, seed=5, top_k=1, **kw), greedy)
    assert torch.equal(model.generate(ids, seed=5, top_p=1e-6, **kw), greedy)


def test_repetition_penalty_avoids_seen_tokens(model):
    ids = torch.tensor([[1, 5, 6, 7]])
    out = model.generate(ids, max_new_tokens=20, stop_token_ids=[], repetition_penalty=1e4)[0].tolist()
    assert len(set(out)) == len(out) and not set(out) & {1, 5, 6, 7}


def test_sampling_parameter_errors():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)


def test_cpu_decode_gives_the_same_tokens(model):
    ids = torch.tensor([image_prompt([5, 6], tiles=1, suffix=[8])])
    plain = Engine(model, cpu_decode=False).generate(ids, random_tiles(1), max_new_tokens=10, stop_token_ids=[])
    fast = Engine(model, cpu_decode=True)
    assert torch.equal(fast.generate(ids, random_tiles(1), max_new_tokens=10, stop_token_ids=[]), plain)
    # The step holds views of the weights: in-place updates are seen by the next generate.
    saved = model.language_model.output.weight.detach().clone()
    with torch.no_grad():
        model.language_model.output.weight.mul_(1.5)
    try:
        assert torch.equal(fast.generate(ids, random_tiles(1), max_new_tokens=10, stop_token_ids=[]),
                           Engine(model, cpu_decode=False).generate(ids, random_tiles(1), max_new_tokens=10,
                                                                   stop_token_ids=[]))
    finally:
        with torch.no_grad():
            model.language_model.output.weight.copy_(saved)


@pytest.mark.parametrize("kernels", ["torch, 1 block", "torch, 3 blocks", "native"])
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_cpu_decoder_step_equals_language_model_forward(model, kernels, padded, native):
    from monovl.engine.cpu_decode import CPUDecoder
    from monovl.engine.decode_kernels import TorchKernels
    from monovl.model.mono_internvl import positions_from_mask

    kernels = {"torch, 1 block": TorchKernels(blocks=1), "torch, 3 blocks": TorchKernels(blocks=3),
               "native": native}[kernels]
    lm = model.language_model
    ids = torch.tensor([image_prompt([5, 6], tiles=1, suffix=[8, 9]), image_prompt([7], tiles=1, suffix=[3, 4, 5])])
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :2] = 0
    caches = [new_cache(model, batch=2), new_cache(model, batch=2)]
    for c in caches:
        model(ids, random_tiles(2), attention_mask=mask, cache=c)
    step = CPUDecoder(model, kernels)
    tokens = torch.tensor([11, 12])
    for _ in range(3):
        mask = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
        positions = positions_from_mask(mask, 0, mask.shape[1], ids.device, 2)[:, -1:]
        ref = lm(lm.model.tok_embeddings(tokens[:, None]), positions, None, mask if padded else None, caches[0])[:, -1]
        got = step(tokens, positions, caches[1], mask if padded else None)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert caches[1].length == caches[0].length
        end = caches[0].length
        for k0, k1, v0, v1 in zip(caches[0].k, caches[1].k, caches[0].v, caches[1].v):
            torch.testing.assert_close(k1[:, :, :end], k0[:, :, :end], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v1[:, :, :end], v0[:, :, :end], atol=1e-5, rtol=1e-5)
        tokens = ref.argmax(-1)


def test_cpu_decoder_refuses_to_overflow_the_cache(model):
    from monovl.engine.cpu_decode import CPUDecoder

    cache = new_cache(model, max_len=4)
    model(torch.tensor([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow: 5 tokens > max_len 4"):
        CPUDecoder(model)(torch.tensor([5]), torch.tensor([[4]]), cache)


def test_cpu_decode_refuses_a_bf16_model():
    with pytest.raises(ValueError, match="fp32 model on CPU"):
        Engine(tiny_model(seed=3).to(torch.bfloat16), cpu_decode=True)


@pytest.mark.parametrize("rows", [1, 3, 12])
@pytest.mark.parametrize("bias", [False, True])
def test_split_linear_matches_linear(rows, bias):
    from monovl.engine.decode_kernels import split_linear

    g = torch.Generator().manual_seed(0)
    w = torch.randn(13, 16, generator=g)  # 13 rows: 3 blocks of 4 plus one row left over
    b = torch.randn(13, generator=g) if bias else None
    x = torch.randn(rows, 16, generator=g)
    y = split_linear(x, w, b, blocks=3)
    assert y.shape == (rows, 13)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
