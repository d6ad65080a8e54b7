"""MonoProcessor: question + images -> ``input_ids`` and ``pixel_values`` for the model.

It ties together the tokenizer, the chat template, dynamic tiling and the
image-token splicing rule of reference section 1.5. Padding and batching of
tensors are the engine's job; :meth:`MonoProcessor.batch` only processes several
conversations and returns one result per conversation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypedDict

import torch
from PIL import Image

from .image import ImageInput, preprocess_images
from .prompt import ChatTemplate, build_prompt, get_template, normalise_history
from .tokenizer import IMG_CONTEXT, IMG_END, IMG_START, IncrementalDecoder, Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from .hf_tokenizer import HFTokenizer

__all__ = ["MonoProcessor", "ProcessorOutput", "vision_settings_from_config"]

_REQUEST_KEYS = frozenset({"question", "images", "history", "system_message", "max_tiles"})


class ProcessorOutput(TypedDict):
    input_ids: torch.Tensor  # LongTensor [1, T], BOS first when the tokenizer uses one
    pixel_values: torch.Tensor | None  # FloatTensor [sum(tiles), 3, S, S]
    image_token_id: int  # id of <IMG_CONTEXT>: where image features are written
    tiles_per_image: list[int]  # tiles of each image, thumbnail included
    prompt: str  # the rendered prompt string (without BOS), for logging/debugging


def vision_settings_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Image settings from an InternVLChatConfig-style ``config.json`` dict.

    ``num_image_token = (image_size // patch_size)**2 * downsample_ratio**2``
    (256 for 448 px, patch 14, ratio 0.5). ``dynamic_image_size: false`` means
    a single resized tile per image, which is tiling with ``max_num = 1``.
    """
    vision = config.get("vision_config") or {}
    image_size = config.get("force_image_size") or vision.get("image_size") or 448
    patch_size = vision.get("patch_size", 14)
    ratio = config.get("downsample_ratio", 0.5)
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
    side = (image_size // patch_size) * ratio
    if side != int(side):
        raise ValueError(
            f"downsample_ratio {ratio} does not divide the {image_size // patch_size}-patch grid evenly"
        )
    max_num = int(config.get("max_dynamic_patch", 12))
    if config.get("dynamic_image_size", True) is False:
        max_num = 1
    return {
        "image_size": int(image_size),
        "num_image_token": int(side) ** 2,
        "min_num": int(config.get("min_dynamic_patch", 1)),
        "max_num": max_num,
        "use_thumbnail": bool(config.get("use_thumbnail", True)),
        "template": config.get("template") or "internlm2-chat",
    }


class MonoProcessor:
    """Build model inputs for Mono-InternVL chat prompts."""

    def __init__(
        self,
        tokenizer: "Tokenizer | HFTokenizer",
        template: str | ChatTemplate = "internlm2-chat",
        image_size: int = 448,
        num_image_token: int = 256,
        max_num: int = 12,
        min_num: int = 1,
        use_thumbnail: bool = True,
        share_tile_budget: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(template)
        if image_size < 1 or num_image_token < 1:
            raise ValueError(
                f"image_size and num_image_token must be positive, got {image_size} and {num_image_token}"
            )
        if not 1 <= min_num <= max_num:
            raise ValueError(f"need 1 <= min_num <= max_num, got {min_num} and {max_num}")
        self.image_size = image_size
        self.num_image_token = num_image_token
        self.max_num = max_num
        self.min_num = min_num
        self.use_thumbnail = use_thumbnail
        self.share_tile_budget = share_tile_budget
        ids = {tok: tokenizer.token_to_id(tok) for tok in (IMG_START, IMG_END, IMG_CONTEXT)}
        missing = [tok for tok, idx in ids.items() if idx is None]
        if missing:
            raise ValueError(
                f"the tokenizer lacks the image tokens {missing}; add them with "
                f"Tokenizer.add_tokens(IMAGE_SPECIAL_TOKENS)"
            )
        self.image_token_id: int = ids[IMG_CONTEXT]  # type: ignore[assignment]
        self.img_start_token_id: int = ids[IMG_START]  # type: ignore[assignment]
        self.img_end_token_id: int = ids[IMG_END]  # type: ignore[assignment]

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        tokenizer: "Tokenizer | HFTokenizer | None" = None,
        **overrides: Any,
    ) -> "MonoProcessor":
        """Read ``config.json`` and the tokenizer files of a checkpoint directory.

        The tokenizer backend is chosen by :func:`~monovl.processing.tokenizer.load_tokenizer`
        (sentencepiece ``tokenizer.model`` or Hugging Face ``tokenizer.json``).

        ``overrides`` replace config values (e.g. ``max_num=12`` for README-style
        inference on a checkpoint whose config says 6).
        """
        root = Path(directory)
        config_path = root / "config.json"
        if not config_path.is_file():
            raise ValueError(f"no config.json in {str(root)!r}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {str(config_path)!r}: {exc}") from exc
        settings = vision_settings_from_config(config)
        settings.update(overrides)
        tok = tokenizer if tokenizer is not None else load_tokenizer(root)
        processor = cls(tok, **settings)
        vocab = (config.get("llm_config") or {}).get("vocab_size")
        if vocab is not None and len(tok) > int(vocab):
            raise ValueError(
                f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {vocab}"
            )
        return processor

    # --------------------------------------------------------------- helpers
    @property
    def stop_token_ids(self) -> list[int]:
        return self.template.stop_token_ids(self.tokenizer)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def incremental_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        return IncrementalDecoder(self.tokenizer, skip_special_tokens=skip_special_tokens)

    def extract_response(self, text: str) -> str:
        return self.template.extract_response(text)

    @staticmethod
    def _normalise_images(images: Any) -> list[ImageInput]:
        if images is None:
            return []
        if isinstance(images, (str, os.PathLike, Image.Image)):
            return [images]
        if isinstance(images, (list, tuple)):
            for k, item in enumerate(images):
                if not isinstance(item, (str, os.PathLike, Image.Image)):
                    raise ValueError(
                        f"images[{k}] must be a path or a PIL.Image, got {type(item).__name__}"
                    )
            return list(images)
        raise ValueError(
            f"images must be None, a path, a PIL.Image or a list of them, got {type(images).__name__}"
        )

    # ------------------------------------------------------------------ main
    def __call__(
        self,
        question: str,
        images: ImageInput | Sequence[ImageInput] | None = None,
        history: Sequence[tuple[str, str]] | None = None,
        system_message: str | None = None,
        max_tiles: int | None = None,
    ) -> ProcessorOutput:
        """Prompt ids and pixel values for one conversation turn.

        ``images`` belong to the conversation: their blocks go into the first user
        turn (or replace ``<image>`` placeholders). ``max_tiles`` overrides the
        per-sample tile budget, shared among the images (see ``preprocess_images``).
        """
        if not isinstance(question, str):
            raise ValueError(f"question must be a str, got {type(question).__name__}")
        if system_message is not None and not isinstance(system_message, str):
            raise ValueError(f"system_message must be a str or None, got {type(system_message).__name__}")
        history = normalise_history(history)
        image_list = self._normalise_images(images)
        if not question.strip() and not image_list:
            raise ValueError("question is empty and there is no image")
        budget = self.max_num if max_tiles is None else max_tiles
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError(f"max_tiles must be a positive int, got {max_tiles!r}")
        texts = [question, system_message or ""] + [s for pair in history for s in pair]
        for reserved in (IMG_CONTEXT, IMG_START, IMG_END):
            if any(reserved in t for t in texts):
                raise ValueError(
                    f"the text contains the reserved image token {reserved!r}; pass images via `images`"
                )

        pixel_values: torch.Tensor | None = None
        tiles: list[int] = []
        if image_list:
            pixel_values, tiles = preprocess_images(
                image_list,
                image_size=self.image_size,
                max_num=budget,
                use_thumbnail=self.use_thumbnail,
                min_num=min(self.min_num, budget),
                share_budget=self.share_tile_budget,
            )
        prompt = build_prompt(
            self.template,
            question,
            history=history,
            system_message=system_message,
            tiles_per_image=tiles,
            num_image_token=self.num_image_token,
        )
        ids = torch.tensor([self.tokenizer.encode(prompt, add_bos=True)], dtype=torch.long)
        found = int((ids == self.image_token_id).sum())
        expected = self.num_image_token * sum(tiles)
        if found != expected:
            # Only reachable if the tokenizer does not keep <IMG_CONTEXT> atomic.
            raise ValueError(
                f"prompt has {found} {IMG_CONTEXT} tokens but the images need {expected}"
            )
        return ProcessorOutput(
            input_ids=ids,
            pixel_values=pixel_values,
            image_token_id=self.image_token_id,
            tiles_per_image=tiles,
            prompt=prompt,
        )

    def batch(self, conversations: Sequence[Mapping[str, Any]]) -> list[ProcessorOutput]:
        """Process several conversations; each is a mapping of :meth:`__call__` arguments."""
        results = []
        for k, conv in enumerate(conversations):
            if not isinstance(conv, Mapping):
                raise ValueError(f"conversations[{k}] must be a mapping, got {type(conv).__name__}")
            unknown = set(conv) - _REQUEST_KEYS
            if unknown:
                raise ValueError(
                    f"conversations[{k}] has unknown keys {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}"
                )
            if "question" not in conv:
                raise ValueError(f"conversations[{k}] has no 'question'")
            try:
                results.append(self(**conv))
            except ValueError as exc:
                raise ValueError(f"conversations[{k}]: {exc}") from exc
        return results

    def __repr__(self) -> str:
        return (
            f"MonoProcessor(template={self.template.name!r}, image_size={self.image_size}, "
            f"num_image_token={self.num_image_token}, max_num={self.max_num}, "
            f"use_thumbnail={self.use_thumbnail}, tokenizer={self.tokenizer!r})"
        )
