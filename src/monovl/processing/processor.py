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

from .grounding import GROUNDING_TOKENS
from .chat_template import JinjaChatTemplate, encode_prompt, literal_marker, read_chat_template, unmark
from .image import ImageInput, check_tile_budget, preprocess_images
from .prompt import IMAGE_PLACEHOLDER, ChatTemplate, available_templates, build_prompt, get_template, normalise_history
from .tokenizer import IMG_CONTEXT, IMG_END, IMG_START, IncrementalDecoder, Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from .hf_tokenizer import HFTokenizer

__all__ = [
    "MonoProcessor",
    "ProcessorOutput",
    "checkpoint_stop_token_ids",
    "checkpoint_template",
    "generation_eos_ids",
    "vision_settings_from_config",
]

_REQUEST_KEYS = frozenset({"question", "images", "history", "system_message", "max_tiles"})


class ProcessorOutput(TypedDict):
    input_ids: torch.Tensor  # LongTensor [1, T], BOS first when the tokenizer or the template adds one
    pixel_values: torch.Tensor | None  # FloatTensor [sum(tiles), 3, S, S]
    image_token_id: int  # id of <IMG_CONTEXT>: where image features are written
    tiles_per_image: list[int]  # tiles of each image, thumbnail included
    prompt: str  # the rendered prompt string (BOS only where the template writes it), for logging/debugging


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


def _read_config(root: Path, name: str) -> dict[str, Any]:
    path = root / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object")
    return data


def checkpoint_template(directory: str | os.PathLike, name: str, tokenizer: "Tokenizer | HFTokenizer"
                        ) -> "ChatTemplate | JinjaChatTemplate":
    """The chat template of a checkpoint whose ``config.json`` says ``template: name``.

    A built-in name (``internlm2-chat``, as in official Mono-InternVL checkpoints, whose official
    ``chat()`` uses that template too; ``chatml``; ``smollm2``) gives that template. Any other value
    (``jinja``, what ``monovl upcycle`` writes) means the checkpoint's own Jinja template
    (:func:`~monovl.processing.chat_template.read_chat_template`); ValueError if it has none.
    """
    if name in available_templates():
        return get_template(name)
    source = read_chat_template(directory)
    if source is None:
        raise ValueError(
            f"config.json of {str(directory)!r} names chat template {name!r}, which is not built in "
            f"({', '.join(available_templates())}), and the checkpoint has no chat_template.jinja or "
            "tokenizer_config.json chat_template"
        )
    return JinjaChatTemplate(source, tokenizer)


def generation_eos_ids(directory: str | os.PathLike) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` (an int or a list) as a list; [] without the file."""
    root = Path(directory)
    if not (root / "generation_config.json").is_file():
        return []
    value = _read_config(root, "generation_config.json").get("eos_token_id")
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"generation_config.json in {str(root)!r}: eos_token_id must be ints, got {value!r}")
    return values


def _stop_ids(template: Any, tokenizer: Any, extra: Sequence[int]) -> list[int]:
    # The template's stop tokens, the tokenizer's EOS, then generation_config's EOS ids; no repeats.
    ids = [*template.stop_token_ids(tokenizer), tokenizer.eos_token_id, *extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


def checkpoint_stop_token_ids(directory: str | os.PathLike) -> list[int] | None:
    """The ids that end a turn for a checkpoint (:attr:`MonoProcessor.stop_token_ids`), or None when
    the directory has no tokenizer. ``MonoInternVL.generate`` stops on them by default."""
    root = Path(directory)
    if not ((root / "tokenizer.json").is_file() or (root / "tokenizer.model").is_file()):
        return None
    tokenizer = load_tokenizer(root)
    name = _read_config(root, "config.json").get("template") or "internlm2-chat"
    return _stop_ids(checkpoint_template(root, name, tokenizer), tokenizer, generation_eos_ids(root))


class MonoProcessor:
    """Build model inputs for Mono-InternVL chat prompts."""

    def __init__(
        self,
        tokenizer: "Tokenizer | HFTokenizer",
        template: "str | ChatTemplate | JinjaChatTemplate" = "internlm2-chat",
        image_size: int = 448,
        num_image_token: int = 256,
        max_num: int = 12,
        min_num: int = 1,
        use_thumbnail: bool = True,
        share_tile_budget: bool = True,
        official_convert: bool = False,
        eos_token_ids: Sequence[int] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.eos_token_ids = list(eos_token_ids)  # generation_config.json's, added to the stop set
        # Every special-token string in user text stays text; "<image>" is the placeholder that
        # image blocks replace, so it is left to the splicing.
        self._literal = literal_marker(tokenizer, exclude=(IMAGE_PLACEHOLDER,))
        if image_size < 1 or num_image_token < 1:
            raise ValueError(
                f"image_size and num_image_token must be positive, got {image_size} and {num_image_token}"
            )
        if not 1 <= min_num <= max_num:
            raise ValueError(f"need 1 <= min_num <= max_num, got {min_num} and {max_num}")
        check_tile_budget(max_num, "max_num (max_dynamic_patch)")
        self.image_size = image_size
        self.num_image_token = num_image_token
        self.max_num = max_num
        self.min_num = min_num
        self.use_thumbnail = use_thumbnail
        self.share_tile_budget = share_tile_budget
        # False: EXIF orientation and transparency onto white (vLLM/SGLang); True: the
        # official plain convert('RGB'). See monovl.processing.image.to_rgb.
        self.official_convert = official_convert
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
        (sentencepiece ``tokenizer.model`` or Hugging Face ``tokenizer.json``); the chat template by
        :func:`checkpoint_template`; ``generation_config.json`` EOS ids join the stop set.

        ``overrides`` replace config values (e.g. ``max_num=12`` for README-style
        inference on a checkpoint whose config says 6).
        """
        root = Path(directory)
        if not (root / "config.json").is_file():
            raise ValueError(f"no config.json in {str(root)!r}")
        config = _read_config(root, "config.json")
        settings = vision_settings_from_config(config)
        settings.update(overrides)
        tok = tokenizer if tokenizer is not None else load_tokenizer(root)
        if isinstance(settings["template"], str):
            settings["template"] = checkpoint_template(root, settings["template"], tok)
        settings.setdefault("eos_token_ids", generation_eos_ids(root))
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
        """The template's stop tokens (end of turn), the tokenizer's EOS and ``eos_token_ids``, in that order."""
        return _stop_ids(self.template, self.tokenizer, self.eos_token_ids)

    def _skipped_ids(self) -> frozenset[int]:
        # Special tokens minus the grounding markup (<ref>, <box>, <quad> and their ends):
        # InternVL answers with those, as transformers keeps them for InternVL tokenizers.
        kept = {self.tokenizer.token_to_id(t) for t in GROUNDING_TOKENS}
        return frozenset(self.tokenizer.all_special_ids - kept)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``skip_special_tokens`` drops specials but keeps grounding markup."""
        if not skip_special_tokens:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        skipped = self._skipped_ids()
        return self.tokenizer.decode([t for t in ids if int(t) not in skipped], skip_special_tokens=False)

    def incremental_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """Streaming twin of :meth:`decode` (same rule for special tokens)."""
        if not skip_special_tokens:
            return IncrementalDecoder(self.tokenizer, skip_special_tokens=False)
        return _SkippingDecoder(self.tokenizer, self._skipped_ids())

    def extract_response(self, text: str) -> str:
        return self.template.extract_response(text)

    @staticmethod
    def _normalise_images(images: Any) -> list[ImageInput]:
        if images is None:
            return []
        if isinstance(images, (str, os.PathLike, bytes, Image.Image)):
            return [images]
        if isinstance(images, (list, tuple)):
            for k, item in enumerate(images):
                if not isinstance(item, (str, os.PathLike, bytes, Image.Image)):
                    raise ValueError(
                        f"images[{k}] must be a path, image bytes or a PIL.Image, got {type(item).__name__}"
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
        turn (or replace ``<image>`` placeholders; with no images a placeholder is
        ordinary text). ``max_tiles`` overrides the per-sample tile budget, shared
        among the images (see ``preprocess_images``); it is at most ``MAX_TILES``.
        """
        if not isinstance(question, str):
            raise ValueError(f"question must be a str, got {type(question).__name__}")
        if system_message is not None and not isinstance(system_message, str):
            raise ValueError(f"system_message must be a str or None, got {type(system_message).__name__}")
        history = normalise_history(history)
        image_list = self._normalise_images(images)
        if not question.strip() and not image_list:
            raise ValueError("question is empty and there is no image")
        budget = check_tile_budget(self.max_num if max_tiles is None else max_tiles, "max_tiles")
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
                official_convert=self.official_convert,
            )
        # No images: an "<image>" in the text is ordinary text (a question about SVG or HTML);
        # build_prompt splices only when there are images.
        marked = build_prompt(
            self.template,
            question,
            history=history,
            system_message=system_message,
            tiles_per_image=tiles,
            num_image_token=self.num_image_token,
            literal=self._literal,
        )
        prompt = unmark(marked)
        ids = torch.tensor([encode_prompt(self.tokenizer, marked, self.template.add_bos)], dtype=torch.long)
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


class _SkippingDecoder(IncrementalDecoder):
    """An :class:`IncrementalDecoder` that drops the ids in ``skipped`` and renders all others."""

    def __init__(self, tokenizer: "Tokenizer | HFTokenizer", skipped: frozenset[int]) -> None:
        super().__init__(tokenizer, skip_special_tokens=False)
        self._skipped = skipped

    def add(self, token_id: int) -> str:
        return "" if int(token_id) in self._skipped else super().add(token_id)
