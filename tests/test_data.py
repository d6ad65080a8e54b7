"""Training data sources (records.py) and samples with labels (samples.py)."""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
import threading
from collections import Counter

import pytest
import torch

from monovl.data import (
    CAPTION_PROMPTS,
    DataStats,
    IGNORE_INDEX,
    IndexedJsonlSource,
    Record,
    SampleBuilder,
    SampleError,
    SeededPermutation,
    ShardStreamSource,
    Skipped,
    build_sample,
    expand_shards,
    open_source,
    parse_record,
)
from monovl.data.records import RecordError
from monovl.data.synthetic import (
    image_bytes,
    write_caption_jsonl,
    write_caption_shards,
    write_conversation_jsonl,
    write_image,
)
from monovl.processing import get_template, splice_images

CTX = "<IMG_CONTEXT>"


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def conv(*pairs, system=None):
    turns = [{"from": "system", "value": system}] if system is not None else []
    for q, a in pairs:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns


def drain(source, state=None, consumer=0, num_consumers=1, limit=None):
    out = []
    for item, after in source.iterate(state, consumer, num_consumers):
        out.append((item, after))
        if limit is not None and len(out) >= limit:
            break
    return out


def ident(item):
    return item.source if isinstance(item, Record) else ("SKIP", item.reason, item.source)


# ------------------------------------------------------------------ parse_record
def test_parse_conversation_record(tmp_path):
    rec = parse_record(
        {"image": "a.jpg", "conversations": conv(("<image>\n What? ", " It is red. "), ("And?", "Blue."), system="S")},
        root=tmp_path,
        source="f:1",
    )
    assert rec.turns == [("<image>\n What?", "It is red."), ("And?", "Blue.")]
    assert rec.images == [str(tmp_path / "a.jpg")] and rec.system == "S" and rec.source == "f:1"
    # user/assistant role names and no image
    rec = parse_record({"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]})
    assert rec.turns == [("q", "a")] and rec.images == [] and rec.system is None


@pytest.mark.parametrize(
    "obj,reason",
    [
        ([1, 2], "bad_record"),
        ({"image": 3, "conversations": conv(("q", "a"))}, "bad_record"),
        ({"image": "a.jpg"}, "bad_record"),
        ({"conversations": []}, "bad_conversation"),
        ({"conversations": conv(("q", "a"))[:1]}, "bad_conversation"),
        ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "bad_conversation"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}, "bad_conversation"),
        ({"conversations": conv(("q", "  "))}, "bad_conversation"),
        ({"conversations": conv(("q", "a"), ("", "b"))}, "bad_conversation"),
        ({"conversations": conv(("", "a"))}, "bad_conversation"),  # empty question and no image
        ({"image": "a.jpg", "conversations": conv(("<image> <image>", "a"))}, "image_placeholders"),
        ({"conversations": conv(("<image>", "a"))}, "image_placeholders"),
        ({"image": "a.jpg", "conversations": conv(("q", "see <image>"))}, "image_placeholders"),
        ({"conversations": conv(("q <IMG_CONTEXT>", "a"))}, "reserved_token"),
        ({"conversations": conv(("q", "a<|im_end|>"))}, "reserved_token"),
        ({"image": ["a.jpg", "b.jpg"], "caption": "x"}, "image_placeholders"),
        ({"caption": ""}, "bad_record"),
    ],
)
def test_parse_record_rejects(obj, reason):
    with pytest.raises(RecordError) as info:
        parse_record(obj)
    assert info.value.reason == reason


def test_caption_pair_becomes_a_fixed_instruction_conversation():
    rec = parse_record({"image": "x/1.jpg", "caption": " A cat. "}, root="/r", seed=3)
    (question, answer), = rec.turns
    assert answer == "A cat." and question.startswith("<image>\n")
    assert question[len("<image>\n"):] in CAPTION_PROMPTS
    # Deterministic per (seed, key), and the prompts vary over keys.
    again = parse_record({"image": "x/1.jpg", "caption": "A cat."}, root="/elsewhere", seed=3)
    assert again.turns == rec.turns
    prompts = {parse_record({"image": f"{i}.jpg", "caption": "c"}).turns[0][0] for i in range(40)}
    assert len(prompts) == len(CAPTION_PROMPTS)


# ----------------------------------------------------------------- permutation
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 64, 1000, 4097])
def test_seeded_permutation_is_a_bijection(n):
    perm = SeededPermutation(n, key=12345)
    values = [perm(i) for i in range(n)]
    assert sorted(values) == list(range(n))
    if n >= 64:
        assert values != list(range(n))
        assert values != [SeededPermutation(n, key=1)(i) for i in range(n)]


# ------------------------------------------------------------ indexed source
@pytest.fixture()
def messy_jsonl(tmp_path):
    write_image(tmp_path / "img" / "ok.jpg", 60, 40)
    lines = [
        json.dumps({"image": "img/ok.jpg", "conversations": conv(("<image>\nq0", "a0"))}),
        "{not json",
        json.dumps({"conversations": []}),
        json.dumps({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}),
        "",
        json.dumps({"image": "img/ok.jpg", "conversations": conv(("<image><image>", "a"))}),
        json.dumps({"conversations": conv(("q5", "a5"))}),
        json.dumps({"image": "img/missing.jpg", "conversations": conv(("q6", "a6"))}),
    ]
    path = tmp_path / "messy.jsonl"
    path.write_text("\n".join(lines))  # no final newline on purpose
    return path


def test_bad_lines_are_skipped_and_reported_with_file_and_line(messy_jsonl):
    source = IndexedJsonlSource(str(messy_jsonl), shuffle=False, epochs=1)
    assert len(source) == 8
    items = [item for item, _ in drain(source)]
    stats = DataStats()
    for item in items:
        if isinstance(item, Skipped):
            stats.skip(item.reason, item.source, item.detail)
    assert dict(stats.skipped) == {"bad_json": 2, "bad_conversation": 2, "image_placeholders": 1}
    assert any(ex.startswith(f"{messy_jsonl}:2: ") for ex in stats.examples["bad_json"])
    assert any(ex.startswith(f"{messy_jsonl}:5: ") for ex in stats.examples["bad_json"])  # empty line
    assert [i.source for i in items if isinstance(i, Record)] == [f"{messy_jsonl}:{n}" for n in (1, 7, 8)]
    report = stats.report()
    assert "bad_json: 2" in report and f"{messy_jsonl}:4" in report


def test_indexed_order_is_seeded_and_every_record_is_seen_once_per_epoch(tmp_path):
    path = write_conversation_jsonl(tmp_path / "c.jsonl", 40, seed=2, max_images=0)
    a = IndexedJsonlSource(str(path), seed=7, epochs=2)
    b = IndexedJsonlSource(str(path), seed=7, epochs=2)
    c = IndexedJsonlSource(str(path), seed=8, epochs=2)
    ids_a = [ident(i) for i, _ in drain(a)]
    assert ids_a == [ident(i) for i, _ in drain(b)]
    assert ids_a != [ident(i) for i, _ in drain(c)]
    assert len(ids_a) == 80
    epoch0, epoch1 = ids_a[:40], ids_a[40:]
    assert sorted(epoch0) == sorted(epoch1) and len(set(epoch0)) == 40 and epoch0 != epoch1
    unshuffled = [ident(i) for i, _ in drain(IndexedJsonlSource(str(path), shuffle=False, epochs=1))]
    assert unshuffled == [f"{path}:{n}" for n in range(1, 41)]


def test_meta_mixing_repeat_time(tmp_path):
    write_conversation_jsonl(tmp_path / "a" / "a.jsonl", 10, seed=1, max_images=0)
    write_conversation_jsonl(tmp_path / "b" / "b.jsonl", 7, seed=2, max_images=0)
    write_conversation_jsonl(tmp_path / "c" / "c.jsonl", 4, seed=3, max_images=0)
    meta = {
        "half": {"root": "a", "annotation": "a/a.jsonl", "repeat_time": 0.5, "length": 10},
        "double": {"root": "b", "annotation": "b/b.jsonl", "repeat_time": 2},
        "more": {"root": "c", "annotation": "c/c.jsonl", "repeat_time": 1.5},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    source = open_source(str(tmp_path / "meta.json"), seed=0, epochs=2)
    assert isinstance(source, IndexedJsonlSource) and len(source) == 5 + 14 + 6
    seen = [ident(i) for i, _ in drain(source)]
    epochs = [Counter(seen[:25]), Counter(seen[25:])]
    for counts in epochs:
        per_file = Counter(s.split(":")[0] for s in counts.elements())
        assert per_file == {str(tmp_path / "a/a.jsonl"): 5, str(tmp_path / "b/b.jsonl"): 14,
                            str(tmp_path / "c/c.jsonl"): 6}
        assert all(counts[f"{tmp_path / 'b/b.jsonl'}:{n}"] == 2 for n in range(1, 8))
        assert all(counts[f"{tmp_path / 'c/c.jsonl'}:{n}"] >= 1 for n in range(1, 5))
    # The subsample of a repeat_time < 1 dataset is fixed across epochs.
    subset = [{s for s in c if "/a/a.jsonl" in s} for c in epochs]
    assert subset[0] == subset[1] and len(subset[0]) == 5
    # Datasets are interleaved, not concatenated.
    assert len({s.split(":")[0] for s in seen[:8]}) > 1


def test_meta_paths_relative_to_meta_folder_or_working_directory(tmp_path, monkeypatch):
    write_conversation_jsonl(tmp_path / "data" / "x.jsonl", 3, seed=1, max_images=1)
    (tmp_path / "metas").mkdir()
    (tmp_path / "metas" / "m.json").write_text(json.dumps({"x": {"root": "data", "annotation": "data/x.jsonl"}}))
    monkeypatch.chdir(tmp_path)  # official style: paths relative to the working directory
    source = open_source(str(tmp_path / "metas" / "m.json"), shuffle=False, epochs=1)
    records = [i for i, _ in drain(source)]
    assert len(records) == 3 and all(isinstance(r, Record) for r in records)
    assert all(os.path.isfile(p) for r in records for p in r.images)


def test_indexed_resume_and_consumer_split_are_exact(tmp_path):
    path = write_conversation_jsonl(tmp_path / "c.jsonl", 23, seed=4, max_images=0)
    source = IndexedJsonlSource(str(path), seed=1, epochs=3)
    full = drain(source)
    for cut in (0, 1, 5, 22, 23, 40):
        state = full[cut - 1][1] if cut else None
        state = json.loads(json.dumps(state))  # serialisable
        rest = drain(IndexedJsonlSource(str(path), seed=1, epochs=3), state)
        assert [ident(i) for i, _ in rest] == [ident(i) for i, _ in full[cut:]]
    # Three consumers partition every epoch: consumer c gets positions c, c+3, ... of each epoch.
    parts = [drain(source, consumer=c, num_consumers=3) for c in range(3)]
    for c, part in enumerate(parts):
        expected = [ident(full[e * 23 + k][0]) for e in range(3) for k in range(c, 23, 3)]
        assert [ident(i) for i, _ in part] == expected
    # A consumer resumes inside its own share.
    mid = parts[1][4][1]
    assert [ident(i) for i, _ in drain(source, mid, 1, 3)] == [ident(i) for i, _ in parts[1][5:]]


# --------------------------------------------------------------- shard source
def test_expand_shards(tmp_path):
    assert expand_shards("s-{000..003}.tar") == [f"s-{i:03d}.tar" for i in range(4)]
    assert expand_shards("d/{a,b}-{8..10}.tar") == ["d/a-8.tar", "d/a-9.tar", "d/a-10.tar",
                                                    "d/b-8.tar", "d/b-9.tar", "d/b-10.tar"]
    assert expand_shards(["x.tar", "y-{1..2}.tar"]) == ["x.tar", "y-1.tar", "y-2.tar"]
    assert expand_shards("pipe:cat a-{1..2}.tar") == ["pipe:cat a-{1..2}.tar"]
    for name in ("b.tar", "a.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(str(tmp_path / "*.tar")) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    with pytest.raises(ValueError):
        expand_shards(str(tmp_path / "none-*.tar"))


def test_tar_shards_read_as_caption_conversations(tmp_path):
    write_caption_shards(tmp_path, num_shards=2, per_shard=4, seed=0)
    source = ShardStreamSource(str(tmp_path / "shard-{000..001}.tar"), shuffle=False, epochs=1)
    items = [i for i, _ in drain(source)]
    assert [i.source for i in items] == [f"{tmp_path}/shard-{s:03d}.tar:{s:03d}{i:05d}" for s in range(2) for i in range(4)]
    for item in items:
        assert isinstance(item.images[0], bytes) and len(item.turns) == 1
        assert item.turns[0][0].split("\n", 1)[1] in CAPTION_PROMPTS
    assert open_source([str(tmp_path / "shard-000.tar")]).shards == [str(tmp_path / "shard-000.tar")]


def _tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_tar_members_and_corrupt_shards_do_not_stop_the_stream(tmp_path):
    jpg = image_bytes(40, 30)
    _tar(tmp_path / "s0.tar", [
        ("k1.jpg", jpg), ("k1.txt", b"one"),
        ("k2.txt", b"no image"),
        ("k3.jpg", jpg), ("k3.json", b"{broken"),
        ("k4.jpg", jpg), ("k4.json", json.dumps({"conversations": conv(("<image>\nq", "a"))}).encode()),
        ("k5.png", jpg), ("k5.txt", b"   "),
    ])  # fmt: skip
    _tar(tmp_path / "s1.tar", [(f"m{i}.jpg", jpg) for i in range(50)] + [("m0.txt", b"x")])
    data = (tmp_path / "s1.tar").read_bytes()
    (tmp_path / "s1.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    _tar(tmp_path / "s2.tar", [("z.jpg", jpg), ("z.txt", b"last")])
    source = ShardStreamSource([str(tmp_path / f"s{i}.tar") for i in range(3)], shuffle=False, epochs=1)
    items = [i for i, _ in drain(source)]
    reasons = Counter(i.reason for i in items if isinstance(i, Skipped))
    assert reasons["incomplete_sample"] >= 2 and reasons["bad_json"] == 1 and reasons["bad_record"] == 1
    assert reasons["tar_error"] == 1
    good = [i.source for i in items if isinstance(i, Record)]
    assert good == [f"{tmp_path}/s0.tar:k1", f"{tmp_path}/s0.tar:k4", f"{tmp_path}/s2.tar:z"]
    tar_error = next(i for i in items if isinstance(i, Skipped) and i.reason == "tar_error")
    assert tar_error.source == str(tmp_path / "s1.tar")


def test_shard_stream_resume_is_exact_with_shuffle_buffer(tmp_path):
    write_caption_shards(tmp_path, num_shards=3, per_shard=7, seed=1)
    make = lambda: ShardStreamSource(str(tmp_path / "shard-{000..002}.tar"), seed=5, shuffle_buffer=4, epochs=2)
    full = drain(make())
    ids = [ident(i) for i, _ in full]
    assert len(ids) == 42 and sorted(ids[:21]) == sorted(ids[21:]) and ids[:21] != ids[21:]
    plain = [ident(i) for i, _ in drain(ShardStreamSource(str(tmp_path / "shard-{000..002}.tar"), shuffle=False, epochs=1))]
    assert sorted(plain) == sorted(ids[:21]) and plain != ids[:21]
    for cut in (1, 3, 7, 8, 20, 21, 30):
        rest = drain(make(), json.loads(json.dumps(full[cut - 1][1])))
        assert [ident(i) for i, _ in rest] == ids[cut:]


@pytest.mark.parametrize("num_shards,consumers", [(4, 2), (2, 3)])
def test_shard_stream_consumers_partition_each_epoch(tmp_path, num_shards, consumers):
    write_caption_shards(tmp_path, num_shards=num_shards, per_shard=5, seed=2)
    source = ShardStreamSource(str(tmp_path / f"shard-{{000..{num_shards - 1:03d}}}.tar"), seed=3, epochs=1)
    parts = [[ident(i) for i, _ in drain(source, consumer=c, num_consumers=consumers)] for c in range(consumers)]
    everything = [x for p in parts for x in p]
    assert len(everything) == len(set(everything)) == num_shards * 5
    assert all(parts)
    # resume inside one consumer's share
    part1 = drain(source, consumer=1, num_consumers=consumers)
    rest = drain(source, part1[2][1], 1, consumers)
    assert [ident(i) for i, _ in rest] == parts[1][3:]


def test_pipe_and_fifo_shards(tmp_path):
    write_caption_shards(tmp_path, num_shards=1, per_shard=3, seed=0)
    shard = tmp_path / "shard-000.tar"
    expected = [ident(i).split(":")[-1] for i, _ in drain(ShardStreamSource(str(shard), shuffle=False, epochs=1))]
    piped = drain(ShardStreamSource(f"pipe:cat {shard}", shuffle=False, epochs=1))
    assert [ident(i).split(":")[-1] for i, _ in piped] == expected
    assert piped[0][0].source == f"pipe:cat {shard}:{expected[0]}"
    if not hasattr(os, "mkfifo"):
        return
    fifo = tmp_path / "stream.tar"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(shard.read_bytes()))
    writer.start()
    got = drain(ShardStreamSource(str(fifo), shuffle=False, epochs=1))
    writer.join(timeout=10)
    assert [ident(i).split(":")[-1] for i, _ in got] == expected


def test_caption_jsonl_and_streamed_jsonl(tmp_path):
    path = write_caption_jsonl(tmp_path / "caps.jsonl", 6, seed=0)
    indexed = [i for i, _ in drain(open_source(str(path), shuffle=False, epochs=1))]
    streamed = [i for i, _ in drain(open_source(str(path), shuffle=False, epochs=1, streaming=True))]
    assert isinstance(open_source(str(path), streaming=True), ShardStreamSource)
    assert [r.turns for r in indexed] == [r.turns for r in streamed]
    assert [r.images for r in indexed] == [r.images for r in streamed]
    assert all(os.path.isfile(r.images[0]) for r in indexed)


# ---------------------------------------------------------------------- stats
def test_data_stats_merge_and_roundtrip():
    a, b = DataStats(max_examples=2), DataStats(max_examples=2)
    a.accept()
    a.skip("bad_json", "f:1", "oops")
    b.skip("bad_json", "f:2")
    b.skip("bad_json", "f:3")
    b.note("truncated", "f:4")
    a.merge(DataStats.from_dict(json.loads(json.dumps(b.to_dict()))))
    assert a.accepted == 1 and a.skipped == {"bad_json": 3} and a.notes == {"truncated": 1}
    assert a.examples["bad_json"] == ["f:1: oops", "f:2"]
    assert "skipped bad_json: 3" in a.report() and "note truncated: 1" in a.report()


# -------------------------------------------------------------------- samples
SETTINGS = dict(image_size=56, num_image_token=4, max_tiles=4, use_thumbnail=True)


def full_prompt(record, sample, template):
    tmpl = get_template(template)
    users = splice_images([u for u, _ in record.turns], sample["tiles_per_image"], SETTINGS["num_image_token"])
    return tmpl.render([(u, a) for u, (_, a) in zip(users, record.turns)], system_message=record.system)


def tricky_records(tmp_path, n=40):
    """Synthetic conversations plus hand-written tricky text."""
    path = write_conversation_jsonl(tmp_path / "c.jsonl", n, seed=11)
    records = [i for i, _ in drain(IndexedJsonlSource(str(path), shuffle=False, epochs=1)) if isinstance(i, Record)]
    rng = random.Random(0)
    texts = ["Answer: 42", "你好！图片中有一只猫。", "  spaced   out  ", "?\nnew line", "1234567", "a\n\nb", "x" * 30,
             "The picture shows a sunny day.", "user\nassistant\n", "émoji 🙂 ok"]
    for k in range(20):
        q, a = rng.choice(texts), rng.choice(texts)
        system = rng.choice([None, "", "Be brief.", "系统"])
        records.append(parse_record({"conversations": conv((q, a), (a, q), system=system)}, source=f"tricky:{k}"))
    return records


@pytest.mark.parametrize("template", ["internlm2-chat", "chatml"])
def test_segment_ids_equal_full_encoding_and_labels_are_the_answers(tmp_path, tiny_tokenizer, template):
    records = tricky_records(tmp_path)
    assert len(records) >= 55
    end = get_template(template).sep
    for record in records:
        sample = build_sample(record, tiny_tokenizer, template, max_length=10_000, **SETTINGS)
        ids, labels = sample["input_ids"], sample["labels"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        # The concatenated segment tokens are exactly the tokenizer's encoding of the whole prompt.
        assert ids.tolist() == tiny_tokenizer.encode(full_prompt(record, sample, template)), record.source
        assert labels[0] == IGNORE_INDEX and ids[0] == tiny_tokenizer.bos_token_id
        trained = labels != IGNORE_INDEX
        assert torch.equal(labels[trained], ids[trained])
        # Trained tokens are exactly the answers with their end-of-turn separator.
        assert tiny_tokenizer.decode(ids[trained].tolist()) == "".join(a + end for _, a in record.turns)
        # Untrained tokens decode to everything else (system, user turns, headers).
        assert tiny_tokenizer.decode(ids[~trained][1:].tolist()).count("<|im_start|>assistant\n") == len(record.turns)
        n_ctx = int((ids == tiny_tokenizer.token_to_id(CTX)).sum())
        assert n_ctx == 4 * sample["num_tiles"]
        if record.images:
            assert sample["pixel_values"].shape == (sample["num_tiles"], 3, 56, 56)
            assert sample["num_tiles"] == sum(sample["tiles_per_image"])
        else:
            assert sample["pixel_values"] is None and sample["num_tiles"] == 0


def test_tile_budget_is_shared_among_images(tmp_path, tiny_tokenizer):
    for name in ("a.jpg", "b.png"):
        write_image(tmp_path / name, 224, 56)
    one = parse_record({"image": "a.jpg", "conversations": conv(("q", "a"))}, root=tmp_path)
    two = parse_record({"image": ["a.jpg", "b.png"], "conversations": conv(("<image><image>q", "a"))}, root=tmp_path)
    s1 = build_sample(one, tiny_tokenizer, max_length=1000, **SETTINGS)
    s2 = build_sample(two, tiny_tokenizer, max_length=1000, **SETTINGS)
    assert s1["tiles_per_image"] == [5]  # 4x1 grid + thumbnail
    assert s2["tiles_per_image"] == [3, 3]  # budget 4 // 2 = 2 each: 2x1 + thumbnail
    assert s2["pixel_values"].shape[0] == 6


def test_truncation_never_cuts_an_image_block(tmp_path, tiny_tokenizer):
    write_image(tmp_path / "a.jpg", 56, 56)
    long_answer = " ".join(["The cat is sitting on a wooden table."] * 20)
    rec = parse_record({"image": "a.jpg", "conversations": conv(("<image>\nWhat?", long_answer))}, root=tmp_path)
    full = build_sample(rec, tiny_tokenizer, max_length=10_000, **SETTINGS)
    n = full["input_ids"].numel()
    stats = DataStats()
    cut = build_sample(rec, tiny_tokenizer, max_length=n - 30, stats=stats, **SETTINGS)
    assert torch.equal(cut["input_ids"], full["input_ids"][: n - 30])
    assert torch.equal(cut["labels"], full["labels"][: n - 30]) and stats.notes == {"truncated": 1}
    img_end = tiny_tokenizer.token_to_id("</img>")
    last_image_token = int((full["input_ids"] == img_end).nonzero().max())
    with pytest.raises(SampleError) as info:
        build_sample(rec, tiny_tokenizer, max_length=last_image_token, **SETTINGS)  # </img> would be cut
    assert info.value.reason == "too_long"
    first_label = int((full["labels"] != IGNORE_INDEX).nonzero().min())
    with pytest.raises(SampleError) as info:
        build_sample(rec, tiny_tokenizer, max_length=first_label, **SETTINGS)
    assert info.value.reason == "no_supervised_tokens"


def test_missing_corrupt_and_byte_images(tmp_path, tiny_tokenizer):
    (tmp_path / "bad.jpg").write_bytes(image_bytes(56, 56)[:200])
    missing = parse_record({"image": "nope.jpg", "conversations": conv(("q", "a"))}, root=tmp_path)
    corrupt = parse_record({"image": "bad.jpg", "conversations": conv(("q", "a"))}, root=tmp_path)
    bad_bytes = parse_record({"caption": "c"}, images=[b"not an image"], key="k")
    for record, reason in [(missing, "missing_image"), (corrupt, "bad_image"), (bad_bytes, "bad_image")]:
        with pytest.raises(SampleError) as info:
            build_sample(record, tiny_tokenizer, max_length=1000, **SETTINGS)
        assert info.value.reason == reason
    good = parse_record({"caption": "A cat."}, images=[image_bytes(112, 56, fmt="PNG")], key="k")
    sample = SampleBuilder(tiny_tokenizer, max_length=1000, **SETTINGS)(good)
    assert sample["tiles_per_image"] == [3]


def test_text_only_sample_with_default_and_empty_system(tiny_tokenizer):
    rec = parse_record({"conversations": conv(("Hi", "Hello."), system="")})
    sample = build_sample(rec, tiny_tokenizer, max_length=100, **SETTINGS)
    text = tiny_tokenizer.decode(sample["input_ids"].tolist())
    assert text == "<s><|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\nHello.<|im_end|>"
    default = build_sample(parse_record({"conversations": conv(("Hi", "Hello."))}), tiny_tokenizer, max_length=200,
                           **SETTINGS)
    assert "书生" in tiny_tokenizer.decode(default["input_ids"].tolist())


@pytest.mark.parametrize("style,bos,add_bos", [("qwen2", None, None), ("gpt2", None, None),
                                               ("gpt2", "<|im_start|>", False), ("gpt2", "<s>", True)])
def test_chatml_labels_with_a_byte_level_bpe_tokenizer(tmp_path, style, bos, add_bos):
    pytest.importorskip("tokenizers")
    try:
        from test_hf_tokenizer import make_bpe_tokenizer
        from monovl.processing.hf_tokenizer import HFTokenizer
    except ImportError:
        pytest.skip("the byte-level BPE tokenizer helpers are not available")
    from monovl.processing import IMAGE_SPECIAL_TOKENS

    # bos "<|im_start|>" not prepended is SmolLM2's GGUF: training must not add a BOS that inference lacks
    tokenizer = HFTokenizer.from_pretrained(make_bpe_tokenizer(tmp_path / "tok", style=style, bos=bos,
                                                               add_bos_token=add_bos))
    tokenizer.add_tokens(IMAGE_SPECIAL_TOKENS)
    for record in tricky_records(tmp_path, n=15):
        sample = build_sample(record, tokenizer, "chatml", max_length=10_000, **SETTINGS)
        ids, labels = sample["input_ids"], sample["labels"]
        assert ids.tolist() == tokenizer.encode(full_prompt(record, sample, "chatml"), add_bos=True)
        assert labels[0] == IGNORE_INDEX
        trained = labels != IGNORE_INDEX
        expected = "".join(a + "<|im_end|>\n" for _, a in record.turns)
        assert tokenizer.decode(ids[trained].tolist()) == expected
