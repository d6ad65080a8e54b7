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

Checkpoints that carry a Hugging Face Jinja template use
:class:`~monovl.processing.chat_template.JinjaChatTemplate` instead. Both kinds render a list of
``{"role", "content"}`` messages (``render_messages``); :func:`build_prompt` and
:func:`assistant_spans` (training labels, from growing prefixes of the conversation) work with either.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence, Union

from .chat_template import JinjaChatTemplate, mark_literal
from .tokenizer import EOS_TOKEN, IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

if TYPE_CHECKING:
    AnyTemplate = Union["ChatTemplate", JinjaChatTemplate]

__all__ = [
    "CHATML_SYSTEM_MESSAGE",
    "ENDOFTEXT",
    "IMAGE_PLACEHOLDER",
    "SMOLLM2_SYSTEM_MESSAGE",
    "INTERNLM2_SYSTEM_MESSAGE",
    "ChatTemplate",
    "SeparatorStyle",
    "assistant_spans",
    "available_templates",
    "build_prompt",
    "chat_messages",
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
    # The tokenizer prepends BOS (InternLM2); the template text has none.
    add_bos: bool = True

    def render(
        self,
        history: Sequence[tuple[str, str]] = (),
        question: str | None = None,
        system_message: str | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Prompt string for ``history`` pairs, then ``question`` and the assistant header.

        ``question=None`` renders only the history (a finished conversation, as used for training).
        ``system_message=None`` means the template default. Turns are role + message + ``sep``; an
        empty message renders as the bare role with no separator (official MPT quirk, which is how
        the generation header is made).
        """
        if self.sep_style is not SeparatorStyle.MPT:
            raise NotImplementedError(f"separator style {self.sep_style} is not implemented")
        system = self.system_message if system_message is None else system_message
        turns: list[tuple[str, str]] = [(role, msg) for pair in history for role, msg in zip(self.roles, pair)]
        if question is not None:
            turns.append((self.roles[0], question))
            if add_generation_prompt:
                turns.append((self.roles[1], ""))
        text = self.system_template.format(system_message=system) + self.sep
        return text + "".join(role + message + self.sep if message else role for role, message in turns)

    def render_messages(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """:meth:`render` for ``{"role", "content"}`` messages: an optional system message, then
        alternating user and assistant messages (ValueError otherwise)."""
        rest = list(messages)
        system = rest.pop(0)["content"] if rest and rest[0].get("role") == "system" else None
        roles = [m.get("role") for m in rest]
        if roles != (["user", "assistant"] * len(roles))[: len(roles)]:
            raise ValueError(f"template {self.name!r} takes an optional system message, then alternating "
                             f"user and assistant messages; got roles {roles}")
        pairs = [(rest[k]["content"], rest[k + 1]["content"]) for k in range(0, len(rest) - 1, 2)]
        question = rest[-1]["content"] if len(rest) % 2 else None
        return self.render(pairs, question, system, add_generation_prompt)

    def to_jinja(self) -> str:
        """This template as a Hugging Face chat template (jinja), rendering what :meth:`render_messages`
        renders, with ``{{ bos_token }}`` first where the tokenizer would add BOS (:attr:`add_bos`).
        For servers that take only jinja (vLLM): official checkpoints name their template
        (``"template": "internlm2-chat"`` in config.json) and ship none in the tokenizer files."""
        if self.sep_style is not SeparatorStyle.MPT:
            raise NotImplementedError(f"separator style {self.sep_style} is not implemented")

        def lit(text: str) -> str:  # a jinja string literal; json's escapes (\n, \") are jinja's too
            return json.dumps(text, ensure_ascii=False)

        head, tail = self.system_template.split("{system_message}")
        user, assistant = self.roles
        return (
            ("{{ bos_token }}" if self.add_bos else "")
            + "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
            + "{% set turns = messages[1:] %}{% else %}{% set system = " + lit(self.system_message) + " %}"
            + "{% set turns = messages %}{% endif %}"
            + "{{ " + lit(head) + " }}{{ system }}{{ " + lit(tail + self.sep) + " }}"
            + "{% for m in turns %}{% if m['role'] == 'user' %}{{ " + lit(user) + " }}"
            + "{% elif m['role'] == 'assistant' %}{{ " + lit(assistant) + " }}"
            + "{% else %}{{ raise_exception('this template takes system, user and assistant messages') }}{% endif %}"
            # An empty message renders as the bare role, with no separator (the official MPT quirk).
            + "{% if m['content'] %}{{ m['content'] }}{{ " + lit(self.sep) + " }}{% endif %}{% endfor %}"
            # As render(): the assistant header follows a question, never an answer.
            + "{% if add_generation_prompt and turns and turns[-1]['role'] == 'user' %}{{ " + lit(assistant)
            + " }}{% endif %}"
        )

    def stop_token_ids(self, tokenizer: _HasTokenToId) -> list[int]:
        """Ids of :attr:`stop_tokens`; [2, 92543, 92542] on the real InternLM2 tokenizer.

        The end-of-turn token (``sep`` without whitespace) is required; other stop tokens the
        tokenizer lacks are skipped.
        """
        ids = []
        for token in self.stop_tokens:
            idx = tokenizer.token_to_id(token)
            if idx is None and token == self.sep.strip():
                raise ValueError(f"template {self.name!r} needs stop token {token!r}, which the tokenizer lacks")
            if idx is not None:
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


def get_template(name: "str | AnyTemplate") -> "AnyTemplate":
    """Look a built-in template up by name (a template object is returned unchanged)."""
    if isinstance(name, (ChatTemplate, JinjaChatTemplate)):
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


def chat_messages(
    history: Sequence[tuple[str, str]] = (), question: str | None = None, system_message: str | None = None
) -> list[dict[str, str]]:
    """``{"role", "content"}`` messages: the system message (none when None: the template's default
    applies), the (user, assistant) pairs, then ``question`` as the last user message."""
    messages = [] if system_message is None else [{"role": "system", "content": system_message}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if question is not None:
        messages.append({"role": "user", "content": question})
    return messages


def build_prompt(
    template: "str | AnyTemplate",
    question: str,
    history: Sequence[tuple[str, str]] = (),
    system_message: str | None = None,
    tiles_per_image: Sequence[int] = (),
    num_image_token: int = 256,
    literal: re.Pattern[str] | None = None,
) -> str:
    """Full generation prompt for a new ``question`` after ``history`` (BOS only if the template writes it).

    The images' blocks are spliced into the user turns (:func:`splice_images`); without images the
    text is left as it is, ``<image>`` included.

    ``literal`` (from :func:`~monovl.processing.chat_template.literal_marker`) marks the control-token
    strings in the question, history and system message, so that
    :func:`~monovl.processing.chat_template.encode_prompt` keeps them as text; the result then holds
    markers (``unmark`` removes them).
    """
    tmpl = get_template(template)
    if not isinstance(question, str):
        raise ValueError(f"question must be a str, got {type(question).__name__}")
    pairs = normalise_history(history)

    def mark(text: str) -> str:
        return text if literal is None else mark_literal(text, literal)

    # Marked before splicing: the image blocks are the processor's markup, not user text. With no
    # images there is nothing to splice, and an "<image>" in the text is ordinary text.
    users = [mark(u) for u, _ in pairs] + [mark(question)]
    if tiles_per_image:
        users = splice_images(users, tiles_per_image, num_image_token)
    spliced_history = [(u, mark(a)) for u, (_, a) in zip(users[:-1], pairs)]
    system = None if system_message is None else mark(system_message)
    return tmpl.render_messages(chat_messages(spliced_history, users[-1], system), add_generation_prompt=True)


def assistant_spans(
    template: "str | AnyTemplate", messages: Sequence[Mapping[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The finished conversation's text and the ``[start, end)`` character span of each assistant turn.

    Rendered from growing prefixes, as the template itself renders them: a turn's span is what
    rendering the conversation up to and including it adds to rendering it up to the turn before,
    with the generation prompt. So the span is the answer plus the template's end-of-turn text
    (``a<|im_end|>``, ``a<|eot_id|>``...), and the assistant header stays outside it. Raises
    ValueError when the template renders earlier turns differently once later turns follow.
    """
    tmpl = get_template(template)
    full = tmpl.render_messages(messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tmpl.render_messages(messages[:i], add_generation_prompt=True)
        after = tmpl.render_messages(messages[: i + 1], add_generation_prompt=False)
        if not (after.startswith(before) and full.startswith(after)):
            raise ValueError(f"the chat template renders the conversation before message {i} differently once "
                             "later messages follow, so its answers cannot be located for training labels")
        spans.append((len(before), len(after)))
    return full, spans
