"""The OpenAI chat-completions wire format: request models, the conversation they describe, and the
response, chunk and error objects.

Only what the server implements is accepted; a field it cannot honour (n > 1, logprobs, tools) is a
400 rather than silently ignored. Unknown fields are ignored, as OpenAI-compatible servers do, so
newer clients keep working.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..processing.prompt import IMAGE_PLACEHOLDER


class APIError(Exception):
    """An error returned to the client as OpenAI's error JSON, with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- request ---------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ContentPart(_Lenient):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None
    # vLLM's extension: generate max_tokens tokens whatever the model says (benchmarks).
    ignore_eos: bool = False

    def check_supported(self) -> None:
        if self.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", param="n")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        if self.tools:
            raise APIError(400, "tools are not supported", param="tools")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"at most 4 stop strings are allowed, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop strings must not be empty", param="stop")
        return stops


@dataclass
class Conversation:
    """A request's messages in the processor's terms: `question` after `history` (user, assistant)
    pairs, with `<image>` placeholders where image parts were, and the image URLs in order."""

    question: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str | None = None
    image_urls: list[str] = field(default_factory=list)


def _text_of(message: Message, index: int, images: list[str] | None) -> str:
    """Content as text; image parts become `<image>` placeholders (and their URLs go to `images`),
    or are refused where `images` is None (system and assistant messages)."""
    if message.content is None:
        raise APIError(400, f"messages[{index}] has no content", param=f"messages[{index}].content")
    if isinstance(message.content, str):
        return message.content
    pieces = []
    for k, part in enumerate(message.content):
        where = f"messages[{index}].content[{k}]"
        if part.type == "text":
            if part.text is None:
                raise APIError(400, f"{where} is a text part without text", param=where)
            pieces.append(part.text)
        else:
            if images is None:
                raise APIError(400, f"{where}: only user messages may hold images", param=where)
            if part.image_url is None:
                raise APIError(400, f"{where} is an image_url part without image_url", param=where)
            images.append(part.image_url.url)
            # The official prompt puts "<image>\n" before the question; the processor turns each
            # placeholder into the image's <img>...</img> block.
            pieces.append(IMAGE_PLACEHOLDER + "\n")
    return "".join(pieces)


def conversation(messages: list[Message], max_images: int) -> Conversation:
    """Map OpenAI messages onto (system, history, question, images); APIError(400) when they do not fit
    the model's chat format: an optional first system message, then alternating user and assistant
    messages ending with a user message. Consecutive user messages are joined with a newline."""
    images: list[str] = []
    rest = list(enumerate(messages))
    system = None
    if rest and rest[0][1].role in ("system", "developer"):
        system = _text_of(rest[0][1], 0, None)
        rest = rest[1:]
    turns: list[tuple[str, str]] = []  # (role, text), same-role user messages merged
    for i, m in rest:
        if m.role in ("system", "developer"):
            raise APIError(400, f"messages[{i}]: a system message may only come first", param=f"messages[{i}]")
        text = _text_of(m, i, images if m.role == "user" else None)
        if len(images) > max_images:
            # Checked message by message, before any image is fetched or decoded.
            raise APIError(400, f"too many images: more than {max_images} in the conversation (the server "
                                f"limit is {max_images})", param="messages", code="too_many_images")
        if turns and turns[-1][0] == m.role:
            if m.role != "user":
                raise APIError(400, f"messages[{i}]: two assistant messages in a row", param=f"messages[{i}]")
            turns[-1] = ("user", turns[-1][1] + "\n" + text)
        else:
            turns.append((m.role, text))
    if not turns or turns[0][0] != "user" or turns[-1][0] != "user":
        raise APIError(400, "the conversation must start (after an optional system message) and end with a "
                            "user message", param="messages")
    history = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return Conversation(turns[-1][1], history, system, images)


# ---- responses -------------------------------------------------------------------------------------


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, model: str, text: str, finish: str, prompt: int, generated: int) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage(prompt, generated),
    }


def chunk(cid: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None,
          usage_: dict[str, int] | None = None, with_usage_field: bool = False) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` gives the usage-only final chunk (empty choices)."""
    out: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [] if delta is None else
                           [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if with_usage_field:  # stream_options.include_usage: every chunk has the field, null until the last
        out["usage"] = usage_
    return out


class StopStringMatcher:
    """Hold back streamed text that might be the start of a stop string; cut at the first full match.

    `feed(piece)` returns the text safe to send now and whether a stop string ended the answer.
    The stop string itself is never sent, as OpenAI does.
    """

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[:min(hits)]
            self.pending = ""
            return out, True
        # Keep the longest tail that is a proper prefix of some stop string.
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
