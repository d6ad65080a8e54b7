"""Chat templates and image-token splicing (reference sections 1.5 and 4).

Mono-InternVL itself uses ``internlm2-chat`` (SeparatorStyle.MPT):

    <|im_start|>system\\n{sys}<|im_end|><|im_start|>user\\n{q1}<|im_end|>
    <|im_start|>assistant\\n{a1}<|im_end|><|im_start|>user\\n{q2}<|im_end|><|im_start|>assistant\\n

(one line in reality: there is no newline between turns). BOS is not part of the
string; the tokenizer adds it. Templates live in a registry so that other LLM
families can be added next to it without touching callers. Also registered,
for upcycled LLMs: ``chatml`` (Qwen2) and ``smollm2`` (ChatML with SmolLM2's
system message), which put a newline after every ``<|im_end|>``:

    <|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n

:meth:`ChatTemplate.render_segments` gives the same text as ``(text, trainable)``
segments for building training labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol, Sequence

from .tokenizer import EOS_TOKEN, IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

__all__ = [
    "CHATML_SYSTEM_MESSAGE",
    "ENDOFTEXT",
    "IMAGE_PLACEHOLDER",
    "SMOLLM2_SYSTEM_MESSAGE",
    "INTERNLM2_SYSTEM_MESSAGE",
    "ChatTemplate",
    "SeparatorStyle",
    "available_templates",
    "build_prompt",
    "get_template",
    "image_block",
    "normalise_history",
    "register_template",
    "splice_images",
]

# Training-data marker for "an image goes here"; replaced by the token block.
IMAGE_PLACEHOLDER = "<image>"

# End-of-text token of Qwen2 / SmolLM2 tokenizers (a stop token for ChatML templates).
ENDOFTEXT = "<|endoftext|>"
CHATML_SYSTEM_MESSAGE = "You are a helpful assistant."
SMOLLM2_SYSTEM_MESSAGE = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

INTERNLM2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)


class SeparatorStyle(Enum):
    """How turns are joined. Only MPT is needed by Mono-InternVL so far."""

    MPT = "mpt"  # role + message + sep, no separator between turns


class _HasTokenToId(Protocol):
    def token_to_id(self, token: str) -> int | None: ...


@dataclass(frozen=True)
class ChatTemplate:
    """A named chat format; rendering is a pure function of its fields."""

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]  # (user prefix, assistant prefix)
    sep: str
    sep_style: SeparatorStyle = SeparatorStyle.MPT
    stop_strings: tuple[str, ...] = ()
    # Token names whose ids end generation (resolved against a tokenizer).
    stop_tokens: tuple[str, ...] = ()

    def render_segments(
        self,
        history: Sequence[tuple[str, str]] = (),
        question: str | None = None,
        system_message: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[tuple[str, bool]]:
        """The prompt as ``(text, trainable)`` segments; their texts joined are :meth:`render`.

        Segments, in order: the system block (system text + ``sep``); each user
        turn (role + message + ``sep``); each assistant header (the role alone);
        each assistant answer + ``sep``. Only answer segments are trainable, so
        the end-of-turn token (``<|im_end|>``; for ``chatml`` ``<|im_end|>\\n``)
        is learnt together with the answer. An empty message renders as the
        bare role with no separator (official MPT quirk, which is how the
        generation header is made); an empty answer therefore yields no
        trainable segment.
        """
        if self.sep_style is not SeparatorStyle.MPT:
            raise NotImplementedError(f"separator style {self.sep_style} is not implemented")
        system = self.system_message if system_message is None else system_message
        messages: list[tuple[int, str | None]] = []  # (role index, message)
        for user, assistant in history:
            messages.append((0, user))
            messages.append((1, assistant))
        if question is not None:
            messages.append((0, question))
            if add_generation_prompt:
                messages.append((1, None))
        segments = [(self.system_template.format(system_message=system) + self.sep, False)]
        for role, message in messages:
            if role == 1:
                segments.append((self.roles[1], False))
                if message:
                    segments.append((message + self.sep, True))
            elif message:
                segments.append((self.roles[0] + message + self.sep, False))
            else:
                segments.append((self.roles[0], False))
        return segments

    def render(
        self,
        history: Sequence[tuple[str, str]] = (),
        question: str | None = None,
        system_message: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Prompt string for ``history`` pairs, then ``question`` and the assistant header.

        ``question=None`` renders only the history (a finished conversation, as
        used for training). ``system_message=None`` means the template default.
        Same text as :meth:`render_segments`, joined.
        """
        return "".join(
            text for text, _ in self.render_segments(history, question, system_message, add_generation_prompt)
        )

    def stop_token_ids(self, tokenizer: _HasTokenToId) -> list[int]:
        """Ids of :attr:`stop_tokens`; [2, 92543, 92542] on the real InternLM2 tokenizer."""
        ids = []
        for token in self.stop_tokens:
            idx = tokenizer.token_to_id(token)
            if idx is None:
                raise ValueError(f"template {self.name!r} needs stop token {token!r}, which the tokenizer lacks")
            ids.append(idx)
        return ids

    def extract_response(self, text: str) -> str:
        """Cut generated text at the first stop string and strip it, as the official chat does."""
        for stop in self.stop_strings:
            text = text.split(stop, 1)[0]
        return text.strip()


_TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate, override: bool = False) -> ChatTemplate:
    if template.name in _TEMPLATES and not override:
        raise ValueError(f"chat template {template.name!r} is already registered")
    _TEMPLATES[template.name] = template
    return template


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """Look a template up by name (a :class:`ChatTemplate` is returned unchanged)."""
    if isinstance(name, ChatTemplate):
        return name
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown chat template {name!r}; available: {', '.join(sorted(_TEMPLATES))}"
        ) from None


def available_templates() -> list[str]:
    return sorted(_TEMPLATES)


register_template(
    ChatTemplate(
        name="internlm2-chat",
        system_template=IM_START + "system\n{system_message}",
        system_message=INTERNLM2_SYSTEM_MESSAGE,
        roles=(IM_START + "user\n", IM_START + "assistant\n"),
        sep=IM_END,
        sep_style=SeparatorStyle.MPT,
        stop_strings=(IM_END,),
        stop_tokens=(EOS_TOKEN, IM_START, IM_END),
    )
)

# Qwen2-style ChatML (also used by InternVL2.5 with Qwen2 LLMs): a newline
# follows every <|im_end|>, and generation stops on <|im_end|> or <|endoftext|>.
register_template(
    ChatTemplate(
        name="chatml",
        system_template=IM_START + "system\n{system_message}",
        system_message=CHATML_SYSTEM_MESSAGE,
        roles=(IM_START + "user\n", IM_START + "assistant\n"),
        sep=IM_END + "\n",
        sep_style=SeparatorStyle.MPT,
        stop_strings=(IM_END, ENDOFTEXT),
        stop_tokens=(IM_END, ENDOFTEXT),
    )
)

# SmolLM2-Instruct: ChatML with its own default system message. Its tokenizer
# also ends turns with <|im_end|> and uses <|endoftext|> as EOS.
register_template(replace(get_template("chatml"), name="smollm2", system_message=SMOLLM2_SYSTEM_MESSAGE))


def image_block(num_tiles: int, num_image_token: int = 256) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>``."""
    if num_tiles < 1:
        raise ValueError(f"an image needs at least one tile, got {num_tiles}")
    if num_image_token < 1:
        raise ValueError(f"num_image_token must be positive, got {num_image_token}")
    return IMG_START + IMG_CONTEXT * (num_image_token * num_tiles) + IMG_END


def splice_images(
    user_messages: Sequence[str],
    tiles_per_image: Sequence[int],
    num_image_token: int = 256,
) -> list[str]:
    """Put the image blocks into the user turns of one conversation.

    * No images: messages are returned unchanged (a ``<image>`` placeholder is
      then an error, most likely a forgotten image).
    * ``<image>`` placeholders present (training-data style, or explicit
      positions): the k-th placeholder over all turns becomes the k-th image's
      plain ``<img>...</img>`` block; counts must match.
    * No placeholders: the images go at the start of the first user turn,
      followed by ``'\\n'`` (the official ``'<image>\\n'`` prefix). One image is
      the plain block; several are numbered ``<image i> (图i):<img>...</img>``
      as in the official ``multi_image_chat``.

    So the image tokens appear once, in the first turn, however long the history.
    """
    messages = list(user_messages)
    if not messages:
        raise ValueError("a conversation needs at least one user message")
    counts = [m.count(IMAGE_PLACEHOLDER) for m in messages]
    total = sum(counts)
    if not tiles_per_image:
        if total:
            raise ValueError(
                f"the text contains {total} {IMAGE_PLACEHOLDER!r} placeholder(s) but no images were given"
            )
        return messages
    blocks = [image_block(n, num_image_token) for n in tiles_per_image]
    if total == 0:
        if len(blocks) == 1:
            prefix = blocks[0]
        else:
            prefix = "".join(f"<image {i}> (图{i}):" + b for i, b in enumerate(blocks, start=1))
        messages[0] = prefix + "\n" + messages[0]
        return messages
    if total != len(blocks):
        raise ValueError(
            f"the text has {total} {IMAGE_PLACEHOLDER!r} placeholder(s) but {len(blocks)} image(s) were given"
        )
    remaining = iter(blocks)
    out = []
    for message in messages:
        # split/join rather than str.replace so an image block can never be re-scanned.
        pieces = message.split(IMAGE_PLACEHOLDER)
        rebuilt = pieces[0]
        for piece in pieces[1:]:
            rebuilt += next(remaining) + piece
        out.append(rebuilt)
    return out


def normalise_history(history: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """Check that ``history`` is a sequence of (user, assistant) string pairs; return it as tuples."""
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise ValueError(f"history must be a list of (user, assistant) pairs, got {type(history).__name__}")
    pairs = []
    for k, pair in enumerate(history):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError(f"history[{k}] must be a (user, assistant) pair of strings, got {pair!r}")
        pairs.append((pair[0], pair[1]))
    return pairs


def build_prompt(
    template: str | ChatTemplate,
    question: str,
    history: Sequence[tuple[str, str]] = (),
    system_message: str | None = None,
    tiles_per_image: Sequence[int] = (),
    num_image_token: int = 256,
) -> str:
    """Full generation prompt (without BOS) for a new ``question`` after ``history``."""
    tmpl = get_template(template)
    if not isinstance(question, str):
        raise ValueError(f"question must be a str, got {type(question).__name__}")
    pairs = normalise_history(history)
    users = splice_images([u for u, _ in pairs] + [question], tiles_per_image, num_image_token)
    spliced_history = [(u, a) for u, (_, a) in zip(users[:-1], pairs)]
    return tmpl.render(spliced_history, users[-1], system_message=system_message)
