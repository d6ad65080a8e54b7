"""vLLM's multimodal processor for Mono-InternVL, built on monovl's own image preprocessing.

vLLM renders the chat template from the checkpoint's tokenizer and tokenizes the prompt; an image
part of a message becomes the placeholder `<image>` (`MonoInternVLForVLLM.get_placeholder_str`). This
processor then does what `monovl.processing.MonoProcessor` does:

- tiles each image with InternVL dynamic tiling (`monovl.processing.image.preprocess_images`: closest
  grid under `max_dynamic_patch`, plus a thumbnail when there is more than one tile), each image
  with the whole budget as in vLLM's InternVL (the official `chat()` for one image);
- replaces each `<image>` with `<img>` + `<IMG_CONTEXT>` x (tiles x tokens per tile) + `</img>`, the
  block of `monovl.processing.prompt.image_block`. Only the `<IMG_CONTEXT>` positions receive image
  features, and only they are routed to the visual experts.

`max_dynamic_patch` (and `min_dynamic_patch`, `use_thumbnail`) can be set per request through
`mm_processor_kwargs`, or for the server with `--mm-processor-kwargs`.

With `--enable-mm-embeds`, an image may also come as its features, a [tokens, hidden] tensor of what
`monovl.model.vision.image_features` returns (patch embedding, pixel shuffle, `mlp1`); its block
then has one `<IMG_CONTEXT>` per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from monovl.processing.image import check_tile_budget, preprocess_images
from monovl.processing.processor import vision_settings_from_config
from monovl.processing.prompt import IMAGE_PLACEHOLDER
from monovl.processing.tokenizer import IMG_CONTEXT, IMG_END, IMG_START

_TILING_KWARGS = ("max_dynamic_patch", "min_dynamic_patch", "use_thumbnail")


class MonoProcessingInfo(BaseProcessingInfo):
    """Tile settings from config.json, token ids from the tokenizer."""

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        # No Hugging Face processor behind this one: every kwarg stays flat and reaches `tiling`.
        return {}

    def tiling(self, **overrides: object) -> dict[str, Any]:
        """image_size, num_image_token, min_num, max_num, use_thumbnail for this request: config.json's,
        read as `MonoProcessor` reads them, with the request's overrides."""
        settings = vision_settings_from_config(self.get_hf_config().mono_config)
        merged = self.ctx.get_merged_mm_kwargs(overrides)
        unknown = sorted(set(merged) - set(_TILING_KWARGS))
        if unknown:
            raise ValueError(f"unknown mm_processor_kwargs {unknown}; Mono-InternVL accepts {list(_TILING_KWARGS)}")
        max_num = int(merged.get("max_dynamic_patch", settings["max_num"]))
        check_tile_budget(max_num, "max_dynamic_patch")
        min_num = int(merged.get("min_dynamic_patch", settings["min_num"]))
        if not 1 <= min_num:
            raise ValueError(f"min_dynamic_patch must be >= 1, got {min_num}")
        return {
            "image_size": settings["image_size"],
            "num_image_token": settings["num_image_token"],
            "min_num": min(min_num, max_num),
            "max_num": max_num,
            "use_thumbnail": bool(merged.get("use_thumbnail", settings["use_thumbnail"])),
        }

    def token_ids(self) -> tuple[int, int, int]:
        """(<img>, <IMG_CONTEXT>, </img>) ids; a clear error if the tokenizer lacks them."""
        vocab = self.get_tokenizer().get_vocab()
        missing = [t for t in (IMG_START, IMG_CONTEXT, IMG_END) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the image tokens {missing}: not a Mono-InternVL checkpoint?")
        return vocab[IMG_START], vocab[IMG_CONTEXT], vocab[IMG_END]

    def max_tiles(self) -> int:
        t = self.tiling()
        return t["max_num"] + (1 if t["use_thumbnail"] and t["max_num"] > 1 else 0)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.max_tiles() * self.tiling()["num_image_token"]}


class MonoDummyInputsBuilder(BaseDummyInputsBuilder[MonoProcessingInfo]):
    """Profiling inputs: the widest image, which tiles into the most tiles (max_num x 1 + thumbnail)."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> dict:
        t = self.info.tiling()
        options = mm_options.get("image") if mm_options else None
        return {"image": self._get_dummy_images(width=t["image_size"] * t["max_num"], height=t["image_size"],
                                                num_images=mm_counts.get("image", 0), overrides=options)}


class MonoMultiModalProcessor(BaseMultiModalProcessor[MonoProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images") or []
        if not isinstance(images, (list, tuple)):
            images = [images]
        t = self.info.tiling(**hf_kwargs)
        pixels, tiles = [], []
        for image in images:
            # One image at a time with the whole budget: vLLM hands images over one by one (and caches
            # them one by one), so a shared budget could not be applied consistently.
            values, counts = preprocess_images([image], image_size=t["image_size"], max_num=t["max_num"],
                                               min_num=t["min_num"], use_thumbnail=t["use_thumbnail"])
            pixels.append(values)
            tiles += counts
        return BatchFeature({"pixel_values_flat": torch.cat(pixels), "image_num_patches": torch.tensor(tiles)})

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        tiles = hf_inputs.get("image_num_patches", torch.empty(0))
        return {
            "pixel_values_flat": MultiModalFieldConfig.flat_from_sizes("image", tiles),
            "image_num_patches": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "image_embeds": MultiModalFieldConfig.batched("image"),
        }

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        start, context, end = self.info.token_ids()
        per_tile = self.info.tiling()["num_image_token"]
        # Only the images vLLM's processor cache has not seen are here (none when every image of the
        # prompt is cached: their updates come from the cache), so look them up per item, lazily.
        tiles = out_mm_kwargs.get_data().get("image_num_patches")

        def block(item: int) -> PromptUpdateDetails:
            items = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(items, ImageEmbeddingItems):
                tokens = items.get_feature_size(item)
            else:
                tokens = int(tiles[item]) * per_tile
            ids = [start] + [context] * tokens + [end]
            return PromptUpdateDetails.select_token_id(ids, embed_token_id=context)

        # The placeholder's own tokens (no BOS). Where the prompt's tokenization merged it with its
        # neighbours, vLLM falls back to replacing it in the text and re-encoding.
        target = self.info.get_tokenizer().encode(IMAGE_PLACEHOLDER, add_special_tokens=False)
        return [PromptReplacement(modality="image", target=target, replacement=block)]
