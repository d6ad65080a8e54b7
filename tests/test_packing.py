"""Collation, packing, the loss, and the resumable DataLoader stream (data/packing.py)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from monovl.data import (
    DataStream,
    IGNORE_INDEX,
    IndexedJsonlSource,
    PackedBatcher,
    PaddedBatcher,
    SampleBuilder,
    ShardStreamSource,
    collate_packed,
    collate_padded,
    lm_loss,
    num_supervised,
)
from monovl.data.synthetic import write_caption_shards, write_conversation_jsonl

from tiny import IMG_CONTEXT, tiny_model

PAD = 2


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def fake_sample(n: int, tiles: int = 0, start: int = 10, seed: int = 0) -> dict:
    """n tokens (an image block of 4 tokens per tile after BOS), labels on the second half."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 400, (n,), generator=g)
    ids[0] = 1
    if tiles:
        ids[1] = 498
        ids[2 : 2 + 4 * tiles] = IMG_CONTEXT
        ids[2 + 4 * tiles] = 499
    labels = torch.full((n,), IGNORE_INDEX)
    labels[n // 2 :] = ids[n // 2 :]
    pixels = torch.randn(tiles, 3, 56, 56, generator=g) if tiles else None
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "num_tiles": tiles}


# ----------------------------------------------------------------------- collation
def test_collate_padded_contract():
    samples = [fake_sample(7, tiles=1, seed=1), fake_sample(4, seed=2), fake_sample(12, tiles=2, seed=3)]
    batch = collate_padded(samples, pad_id=PAD, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, 16)
    assert batch["attention_mask"].sum(1).tolist() == [7, 4, 12]
    assert (batch["input_ids"][1, 4:] == PAD).all() and (batch["labels"][1, 4:] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][2, :12], samples[2]["input_ids"])
    assert torch.equal(batch["pixel_values"], torch.cat([samples[0]["pixel_values"], samples[2]["pixel_values"]]))
    assert batch["num_tiles"].tolist() == [1, 0, 2] and batch["num_samples"] == 3
    assert collate_padded([fake_sample(3)], PAD)["pixel_values"] is None


def test_collate_packed_contract():
    rows = [[fake_sample(8, tiles=1, seed=1), fake_sample(3, seed=2)], [fake_sample(9, tiles=1, seed=3)]]
    batch = collate_packed(rows, pad_id=PAD)
    assert batch["input_ids"].shape == (2, 11)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2], list(range(9)) + [0, 0]]
    assert batch["segment_ids"].tolist() == [[1] * 8 + [2] * 3, [1] * 9 + [0, 0]]
    assert (batch["input_ids"][1, 9:] == PAD).all() and (batch["labels"][1, 9:] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][0], torch.cat([rows[0][0]["input_ids"], rows[0][1]["input_ids"]]))
    assert torch.equal(batch["labels"][0], torch.cat([rows[0][0]["labels"], rows[0][1]["labels"]]))
    # pixel order = order of the image tokens in the flattened batch
    assert torch.equal(batch["pixel_values"], torch.cat([rows[0][0]["pixel_values"], rows[1][0]["pixel_values"]]))
    assert batch["num_tiles"].tolist() == [1, 1] and batch["num_samples"] == 3
    # every sample's first label is ignored, so no prediction crosses a sample boundary
    assert batch["labels"][0, 8] == IGNORE_INDEX
    assert collate_packed(rows, PAD, width=16)["input_ids"].shape == (2, 16)
    assert collate_packed(rows, PAD, pad_to_multiple_of=8)["input_ids"].shape == (2, 16)
    with pytest.raises(ValueError):
        collate_packed(rows, PAD, width=10)


def test_packed_batcher_is_greedy_in_order_with_token_and_tile_budgets():
    batcher = PackedBatcher(max_tokens=10, pad_id=PAD, rows=2, max_tiles=3)
    sizes = [(4, 0), (5, 1), (3, 0), (6, 1), (2, 1), (9, 0), (1, 3)]
    out = []
    for k, (n, t) in enumerate(sizes):
        batch = batcher.add(fake_sample(n, seed=k) | {"num_tiles": t})
        if batch is not None:
            out.append(batch)
    out.append(batcher.flush())
    assert batcher.flush() is None and batcher.num_pending == 0
    # rows [4,5] [3,6]; then 2 needs a third row: emit. [2] [9]; then 1 fits the row but its
    # 3 tiles exceed the batch's tile budget: emit. [1].
    assert [b["segment_ids"].amax(1).tolist() for b in out] == [[2, 2], [1, 1], [1]]
    assert [b["input_ids"].shape[1] for b in out] == [9, 9, 1]
    assert [b["num_tiles"].tolist() for b in out] == [[1, 1], [1, 0], [3]]
    assert all(int(b["num_tiles"].sum()) <= 3 for b in out)
    with pytest.raises(ValueError):
        batcher.add(fake_sample(11))
    assert not batcher.accepts(fake_sample(30, tiles=4))


def test_padded_batcher_groups_and_respects_tile_budget():
    batcher = PaddedBatcher(batch_size=3, pad_id=PAD, max_tiles=2)
    results = [batcher.add(fake_sample(12, tiles=t, seed=k)) for k, t in enumerate([0, 1, 0, 1, 2, 0])]
    assert [r is not None for r in results] == [False, False, True, False, True, False]
    assert results[2]["num_samples"] == 3 and results[4]["num_samples"] == 1
    assert batcher.flush()["num_samples"] == 2


# ---------------------------------------------------------------------------- loss
def test_lm_loss_matches_the_convention():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, 3, 4, -100, 5, 1], [-100, -100, 7, 8, -100, -100]])
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(lm_loss(logits, labels), expected)
    assert num_supervised(labels) == 6
    assert torch.allclose(lm_loss(logits, labels, reduction="sum"), expected * 6)
    empty = torch.full((1, 4), -100)
    zero = lm_loss(logits[:1, :4].requires_grad_(), empty)
    assert zero.item() == 0.0 and zero.requires_grad


def _model_accepts_segment_ids() -> bool:
    from monovl import MonoInternVL

    return "segment_ids" in inspect.signature(MonoInternVL.forward).parameters


@pytest.mark.skipif(not _model_accepts_segment_ids(), reason="the model does not take segment_ids yet")
def test_packed_loss_equals_unpacked_loss():
    model = tiny_model(seed=0)
    samples = [fake_sample(n, tiles=t, seed=k) for k, (n, t) in enumerate([(13, 1), (9, 0), (20, 2), (6, 0), (11, 1)])]
    with torch.no_grad():
        total, count = 0.0, 0
        for s in samples:
            logits = model(s["input_ids"][None], s["pixel_values"]).logits
            total += float(lm_loss(logits, s["labels"][None], reduction="sum"))
            count += num_supervised(s["labels"][None])
        unpacked = total / count
        packed = collate_packed([samples[:3], samples[3:]], pad_id=PAD)
        logits = model(packed["input_ids"], packed["pixel_values"], position_ids=packed["position_ids"],
                       segment_ids=packed["segment_ids"]).logits
        packed_loss = float(lm_loss(logits, packed["labels"]))
        padded = collate_padded(samples, pad_id=PAD)
        logits = model(padded["input_ids"], padded["pixel_values"], attention_mask=padded["attention_mask"]).logits
        padded_loss = float(lm_loss(logits, padded["labels"]))
    assert packed_loss == pytest.approx(unpacked, rel=1e-5, abs=1e-6)
    assert padded_loss == pytest.approx(unpacked, rel=1e-5, abs=1e-6)


# -------------------------------------------------------------------------- stream
@pytest.fixture(scope="module")
def conv_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    path = write_conversation_jsonl(root / "conv.jsonl", 36, seed=5, max_turns=2)
    with open(path, "a") as f:  # a few bad records
        f.write("{broken\n")
        f.write(json.dumps({"image": "images/none.jpg", "conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) + "\n")
    return path


def make_stream(path, tokenizer, rank=0, world_size=1, packed=True, epochs=2):
    source = IndexedJsonlSource(str(path), seed=3, epochs=epochs)
    builder = SampleBuilder(tokenizer, "internlm2-chat", image_size=56, num_image_token=4, max_tiles=4, max_length=400)
    if packed:
        batcher = PackedBatcher(max_tokens=800, pad_id=PAD, rows=2, max_tiles=12)
    else:
        batcher = PaddedBatcher(batch_size=3, pad_id=PAD)
    return DataStream(source, builder, batcher, rank=rank, world_size=world_size)


def key(batch):
    return batch["input_ids"].tolist()


def test_stream_batches_cover_the_data_and_report_stats(conv_path, tiny_tokenizer):
    stream = make_stream(conv_path, tiny_tokenizer, epochs=1)
    batches = [stream.observe(b) for b in stream]
    assert all("data_state" not in b for b in batches)
    samples = sum(b["num_samples"] for b in batches)
    stats = stream.stats
    assert samples == stats.accepted == 36 and stats.skipped == {"bad_json": 1, "missing_image": 1}
    for b in batches:
        assert b["input_ids"].shape[1] <= 800 and b["labels"][:, 0].eq(IGNORE_INDEX).all()
        pad = b["segment_ids"] == 0
        assert (b["input_ids"][pad] == PAD).all() and (b["labels"][pad] == IGNORE_INDEX).all()
        n_ctx = int((b["input_ids"] == IMG_CONTEXT).sum())
        assert n_ctx == 4 * (0 if b["pixel_values"] is None else b["pixel_values"].shape[0])
    assert "missing_image: 1" in stats.report()


@pytest.mark.parametrize("packed", [True, False])
def test_stream_resume_is_exact(conv_path, tiny_tokenizer, packed):
    reference = [key(b) for b in make_stream(conv_path, tiny_tokenizer, packed=packed)]
    assert len(reference) > 10
    for cut in (1, 4, len(reference) // 2 + 1):
        stream = make_stream(conv_path, tiny_tokenizer, packed=packed)
        it = iter(stream)
        for _ in range(cut):
            stream.observe(next(it))
        state = json.loads(json.dumps(stream.state_dict()))
        resumed = make_stream(conv_path, tiny_tokenizer, packed=packed)
        resumed.load_state_dict(state)
        assert [key(b) for b in resumed] == reference[cut:]


def test_stream_resume_with_dataloader_workers(conv_path, tiny_tokenizer):
    loader_kwargs = dict(batch_size=None, num_workers=2, multiprocessing_context="fork")
    stream = make_stream(conv_path, tiny_tokenizer, epochs=1)
    reference = [key(stream.observe(b)) for b in DataLoader(stream, **loader_kwargs)]
    assert stream.stats.accepted == 36  # the two workers' shares cover the data
    cut = 5  # odd: the next batch comes from worker 1
    stream = make_stream(conv_path, tiny_tokenizer, epochs=1)
    got = []
    for b in DataLoader(stream, **loader_kwargs):
        got.append(key(stream.observe(b)))
        if len(got) == cut:
            break
    state = stream.state_dict()
    assert state["num_workers"] == 2 and state["next_role"] == 1
    resumed = make_stream(conv_path, tiny_tokenizer, epochs=1)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = [key(resumed.observe(b)) for b in DataLoader(resumed, **loader_kwargs)]
    assert got + rest == reference
    assert resumed.stats.accepted > 0
    with pytest.raises(Exception, match="workers"):
        bad = make_stream(conv_path, tiny_tokenizer, epochs=1)
        bad.load_state_dict(state)
        next(iter(bad))


def test_ranks_get_disjoint_shares(conv_path, tiny_tokenizer):
    def sources(rank):
        stream = make_stream(conv_path, tiny_tokenizer, rank=rank, world_size=2, epochs=1, packed=False)
        return [tuple(row) for b in stream for row in b["input_ids"].tolist()]

    rank0, rank1 = sources(0), sources(1)
    assert rank0 and rank1 and not set(rank0) & set(rank1)
    assert len(rank0) + len(rank1) == 36
    with pytest.raises(ValueError):
        make_stream(conv_path, tiny_tokenizer, rank=0).load_state_dict(
            make_stream(conv_path, tiny_tokenizer, rank=1, world_size=2).state_dict())


def test_caption_shard_stream_end_to_end(tmp_path, tiny_tokenizer):
    write_caption_shards(tmp_path, num_shards=2, per_shard=6, seed=0)
    source = ShardStreamSource(str(tmp_path / "shard-{000..001}.tar"), seed=0, shuffle_buffer=3, epochs=1)
    builder = SampleBuilder(tiny_tokenizer, image_size=56, num_image_token=4, max_tiles=2, max_length=128)
    stream = DataStream(source, builder, PackedBatcher(max_tokens=128, pad_id=PAD))
    batches = [stream.observe(b) for b in stream]
    assert sum(b["num_samples"] for b in batches) == 12 and stream.stats.total_skipped == 0
    with pytest.raises(ValueError, match="max_length"):
        DataStream(source, SampleBuilder(tiny_tokenizer, max_length=4096), PackedBatcher(128, PAD))


def test_streams_fail_loudly_instead_of_spinning(tmp_path, tiny_tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n" + json.dumps({"image": "none.jpg", "caption": "x"}) + "\n")
    builder = SampleBuilder(tiny_tokenizer, image_size=56, num_image_token=4, max_length=128)
    stream = DataStream(IndexedJsonlSource(str(bad)), builder, PackedBatcher(128, PAD))
    with pytest.raises(ValueError, match="no usable sample") as info:
        next(iter(stream))
    assert "missing_image: 1" in str(info.value)
    # more consumers than records: the empty share is an error, not an endless loop
    with pytest.raises(ValueError, match="no data"):
        list(IndexedJsonlSource(str(bad)).iterate(None, consumer=2, num_consumers=3))
