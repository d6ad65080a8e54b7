"""Training data: streamed record sources, tokenised samples with exact labels, batching/packing.

    source = open_source("data/meta.json", seed=0)              # or a .jsonl, or "shards-{000..099}.tar"
    builder = SampleBuilder(tokenizer, "internlm2-chat", image_size=448, num_image_token=256,
                            max_tiles=6, max_length=4096)
    batcher = PackedBatcher(max_tokens=4096, pad_id=tokenizer.pad_token_id, max_tiles=24)
    stream = DataStream(source, builder, batcher, rank=rank, world_size=world_size)
    stream.load_state_dict(saved)                                # to resume
    for batch in DataLoader(stream, batch_size=None, num_workers=2):
        batch = stream.observe(batch)
        logits = model(batch["input_ids"], batch["pixel_values"], position_ids=batch["position_ids"],
                       segment_ids=batch["segment_ids"]).logits
        loss = lm_loss(logits, batch["labels"])
    saved = stream.state_dict(); print(stream.stats.report())
"""

from .packing import (
    DataStream,
    PackedBatcher,
    PaddedBatcher,
    collate_packed,
    collate_padded,
    lm_loss,
    num_supervised,
    supervised_positions,
)
from .records import (
    CAPTION_PROMPTS,
    DataStats,
    IndexedJsonlSource,
    Record,
    SeededPermutation,
    ShardStreamSource,
    Skipped,
    caption_prompt,
    expand_shards,
    open_source,
    parse_record,
)
from .samples import IGNORE_INDEX, SampleBuilder, SampleError, build_sample, decode_image

__all__ = [
    "CAPTION_PROMPTS",
    "DataStats",
    "DataStream",
    "IGNORE_INDEX",
    "IndexedJsonlSource",
    "PackedBatcher",
    "PaddedBatcher",
    "Record",
    "SampleBuilder",
    "SampleError",
    "SeededPermutation",
    "ShardStreamSource",
    "Skipped",
    "build_sample",
    "caption_prompt",
    "collate_packed",
    "collate_padded",
    "decode_image",
    "expand_shards",
    "lm_loss",
    "num_supervised",
    "open_source",
    "parse_record",
]
