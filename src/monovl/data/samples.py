"""Record -> tokenised training sample with exact labels.

Labels are built by construction, segment by segment (never by searching the
tokenised conversation for role strings, which is how the official code can
silently zero a whole sample, reference section 8.8):

1. the images are decoded and tiled (``processing.image.preprocess_images``,
   the tile budget ``max_tiles`` shared among the sample's images) and their
   ``<img><IMG_CONTEXT>...</img>`` blocks are spliced into the user turns;
2. the checkpoint's chat template (built-in or Jinja) renders the conversation,
   and each assistant turn's span comes from rendering growing prefixes of it
   (:func:`~monovl.processing.prompt.assistant_spans`): the answer plus the
   template's end-of-turn text is trained; the system block, user turns and
   assistant headers are not. Control-token strings in the record's text are
   literal text (:func:`~monovl.processing.chat_template.mark_literal`);
3. the text between answers is tokenised as one piece; each answer is tokenised
   *in the context of the text before it*: ``encode(before + answer)`` minus
   the ``encode(before)`` prefix. The header/answer boundary is usually not at
   a special token (``assistant\\n`` and the answer share one plain-text run), so
   this makes the concatenated ids equal the encoding of the whole
   conversation. Should a tokenizer merge across that boundary (the context's
   tokens are then not a prefix), the answer is tokenised on its own instead,
   the header tokens stay exactly what inference feeds, and the event is
   counted as the note ``boundary_retokenised``;
4. BOS (and the first token in any case) has label -100, so a packed row never
   trains a prediction across two samples. BOS comes from the tokenizer for
   built-in templates and from the template text for Jinja templates, as at inference.

Over-long samples are cut at ``max_length`` tokens, but never inside an image
block: if any image token lies beyond ``max_length`` the sample is skipped
(``too_long``), and a cut that leaves no supervised token skips it too
(``no_supervised_tokens``).

Sample dict::

    input_ids      LongTensor [T]   BOS first
    labels         LongTensor [T]   = input_ids where trained, else -100; labels[0] = -100
    pixel_values   FloatTensor [n, 3, S, S] (n = num_tiles) or None
    num_tiles      int              tiles of all images, thumbnails included
    tiles_per_image list[int]
    source         str              "file:line" / "shard.tar:key"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from ..processing.chat_template import JinjaChatTemplate, encode_prompt, literal_marker, mark_literal
from ..processing.image import ImageLoadError, load_image, preprocess_images
from ..processing.prompt import (
    IMAGE_PLACEHOLDER,
    ChatTemplate,
    assistant_spans,
    chat_messages,
    get_template,
    splice_images,
)
from ..processing.tokenizer import IMG_CONTEXT, IMG_END, IMG_START
from .records import DataStats, Record

__all__ = ["IGNORE_INDEX", "SampleBuilder", "SampleError", "build_sample", "decode_image"]

IGNORE_INDEX = -100


class SampleError(ValueError):
    """The record cannot become a sample; ``reason`` is a :class:`DataStats` key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_image(ref: str | bytes | os.PathLike | Image.Image) -> Image.Image:
    """A path, encoded bytes (tar member) or PIL image -> fully decoded RGB image.

    Raises :class:`SampleError` ``missing_image`` / ``bad_image``.
    """
    if isinstance(ref, (bytes, bytearray)):
        try:
            return load_image(bytes(ref))
        except ImageLoadError as exc:
            raise SampleError("bad_image", str(exc)) from exc
    if isinstance(ref, (str, os.PathLike)) and not os.path.exists(ref):
        raise SampleError("missing_image", f"no such file {str(ref)!r}")
    try:
        return load_image(ref)
    except ImageLoadError as exc:
        raise SampleError("bad_image", str(exc)) from exc


def _token_id(tokenizer: Any, token: str) -> int:
    idx = tokenizer.token_to_id(token)
    if idx is None:
        raise ValueError(f"the tokenizer lacks {token!r}; add the image tokens first")
    return idx


def build_sample(
    record: Record,
    tokenizer: Any,
    template: "str | ChatTemplate | JinjaChatTemplate" = "internlm2-chat",
    image_size: int = 448,
    num_image_token: int = 256,
    max_tiles: int = 6,
    use_thumbnail: bool = True,
    max_length: int = 4096,
    stats: DataStats | None = None,
) -> dict[str, Any]:
    """Tokenised sample with labels for one record (see the module docstring).

    ``tokenizer`` needs ``encode(text, add_bos=...)`` and ``token_to_id``. Raises
    :class:`SampleError` for records that must be skipped; ``stats`` (optional) receives
    non-fatal notes (``truncated``, ``boundary_retokenised``).
    """
    tmpl = get_template(template)
    if max_tiles < 1 or max_length < 2:
        raise ValueError(f"need max_tiles >= 1 and max_length >= 2, got {max_tiles} and {max_length}")
    image_ids = {_token_id(tokenizer, t) for t in (IMG_START, IMG_CONTEXT, IMG_END)}

    pixel_values: torch.Tensor | None = None
    tiles: list[int] = []
    if record.images:
        pil = [decode_image(ref) for ref in record.images]
        try:
            pixel_values, tiles = preprocess_images(
                pil, image_size=image_size, max_num=max_tiles, use_thumbnail=use_thumbnail, share_budget=True
            )
        except ValueError as exc:  # e.g. a 0-pixel image
            raise SampleError("bad_image", str(exc)) from exc
    literal = literal_marker(tokenizer, exclude=(IMAGE_PLACEHOLDER,))
    try:
        users = splice_images([mark_literal(u, literal) for u, _ in record.turns], tiles, num_image_token)
    except ValueError as exc:
        raise SampleError("image_placeholders", str(exc)) from exc
    history = [(u, mark_literal(a, literal)) for u, (_, a) in zip(users, record.turns)]
    system = None if record.system is None else mark_literal(record.system, literal)
    try:
        full, spans = assistant_spans(tmpl, chat_messages(history, system_message=system))
    except ValueError as exc:
        raise SampleError("template_error", str(exc)) from exc
    bounds = [0, *(k for span in spans for k in span), len(full)]
    segments = [(full[a:b], k % 2 == 1) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]

    ids, labels = _tokenize_segments(segments, tokenizer, tmpl.add_bos, stats, record.source)

    if len(ids) > max_length:
        if image_ids.intersection(ids[max_length:]):
            raise SampleError("too_long", f"{len(ids)} tokens; the image blocks end beyond max_length={max_length}")
        del ids[max_length:], labels[max_length:]
        if stats is not None:
            stats.note("truncated", record.source)
    if all(label == IGNORE_INDEX for label in labels):
        raise SampleError("no_supervised_tokens", "no answer token within max_length")
    ctx = _token_id(tokenizer, IMG_CONTEXT)
    found, expected = ids.count(ctx), num_image_token * sum(tiles)
    if found != expected:  # only if the tokenizer does not keep <IMG_CONTEXT> atomic
        raise SampleError("image_token_mismatch", f"{found} {IMG_CONTEXT} tokens for {expected} image features")
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "pixel_values": pixel_values,
        "num_tiles": sum(tiles),
        "tiles_per_image": tiles,
        "source": record.source,
    }


def _tokenize_segments(
    segments: Sequence[tuple[str, bool]], tokenizer: Any, add_bos: bool, stats: DataStats | None, where: str
) -> tuple[list[int], list[int]]:
    # BOS exactly as inference adds it (MonoProcessor encodes with the template's add_bos): a tokenizer
    # that has a BOS token but does not prepend it (SmolLM2's GGUF: add_bos_token false) gets none here too.
    ids: list[int] = tokenizer.encode("", add_bos=add_bos)
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    before = ""  # the untrained text just before an answer: its context
    for text, trainable in segments:
        if not text:
            continue
        if not trainable:
            piece = encode_prompt(tokenizer, text, add_bos=False)
            labels.extend([IGNORE_INDEX] * len(piece))
            before = text
        else:
            head = encode_prompt(tokenizer, before, add_bos=False)
            joint = encode_prompt(tokenizer, before + text, add_bos=False)
            if joint[: len(head)] == head:
                piece = joint[len(head) :]
            else:
                piece = encode_prompt(tokenizer, text, add_bos=False)
                if stats is not None:
                    stats.note("boundary_retokenised", where)
            labels.extend(piece)
        ids.extend(piece)
    if labels:
        labels[0] = IGNORE_INDEX
    return ids, labels


@dataclass
class SampleBuilder:
    """:func:`build_sample` with its settings bound (what the data stream calls)."""

    tokenizer: Any
    template: "str | ChatTemplate | JinjaChatTemplate" = "internlm2-chat"
    image_size: int = 448
    num_image_token: int = 256
    max_tiles: int = 6
    use_thumbnail: bool = True
    max_length: int = 4096

    def __call__(self, record: Record, stats: DataStats | None = None) -> dict[str, Any]:
        return build_sample(
            record,
            self.tokenizer,
            self.template,
            image_size=self.image_size,
            num_image_token=self.num_image_token,
            max_tiles=self.max_tiles,
            use_thumbnail=self.use_thumbnail,
            max_length=self.max_length,
            stats=stats,
        )
