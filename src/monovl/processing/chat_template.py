"""Chat templates that come with a checkpoint (Hugging Face Jinja format), literal user text, stop tokens.

A checkpoint's template is read from ``chat_template.jinja``, else from ``tokenizer_config.json``
``chat_template`` (:func:`read_chat_template`), and rendered as transformers'
``apply_chat_template(..., tokenize=False)`` renders it: jinja2's ``ImmutableSandboxedEnvironment``
with ``trim_blocks``/``lstrip_blocks``, the loop-control extension, ``raise_exception``,
``strftime_now``, a ``tojson`` filter that does not escape HTML, and the tokenizer's ``bos_token``,
``eos_token`` and ``unk_token`` as variables (:class:`JinjaChatTemplate`).

Literal text: message strings (user, assistant, system) are wrapped with :func:`mark_literal`, which
puts two private-use markers around every control-token string in them. After rendering,
:func:`encode_prompt` encodes a marked control token as ordinary text (``parse_special=False``), so
``"<|im_end|>"`` typed by a user is never the ``<|im_end|>`` id. Only the template's own markup
becomes control ids. transformers does the same with ``sanitize_control_tokens=True``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "CHECKPOINT_TEMPLATE",
    "TEMPLATE_FILE",
    "JinjaChatTemplate",
    "compile_chat_template",
    "encode_prompt",
    "literal_marker",
    "mark_literal",
    "read_chat_template",
    "unmark",
]

# config.json ``template`` value meaning "the checkpoint's own Jinja template" (what upcycle writes).
CHECKPOINT_TEMPLATE = "jinja"
TEMPLATE_FILE = "chat_template.jinja"

# Private-use characters (plane 15, as transformers uses) around a control token in literal text.
_START, _END = "\U000f0000", "\U000f0001"
_PROBE = "monovl-probe-answer"


def read_chat_template(directory: str | Path) -> str | None:
    """The Jinja chat template of a checkpoint directory, or None.

    ``chat_template.jinja`` wins (transformers 5 writes it); else ``tokenizer_config.json``
    ``chat_template``, a string or a list of ``{"name", "template"}`` (the one named ``default``).
    """
    root = Path(directory)
    if (root / TEMPLATE_FILE).is_file():
        return (root / TEMPLATE_FILE).read_text(encoding="utf-8")
    config_path = root / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    try:
        value = json.loads(config_path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"cannot read {str(config_path)!r}: {exc}") from exc
    if isinstance(value, list):
        named = {e.get("name"): e.get("template") for e in value if isinstance(e, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{str(config_path)!r}: chat_template must be a string or a list of named templates")
    return value or None


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag) renders its body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes <, >, & and ' for HTML; chat templates need the plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile ``source`` in the sandbox transformers uses; a syntax error is a ValueError."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template is not valid Jinja (line {exc.lineno}): {exc.message}") from None


class JinjaChatTemplate:
    """A Hugging Face chat template bound to a tokenizer's special-token names.

    ``add_bos`` is False: the template writes BOS itself (``{{ bos_token }}``) when the model wants
    one, so prompts are encoded without the tokenizer's BOS, as transformers encodes them.
    ``end_of_turn`` is the special token that the template writes right after an assistant answer
    (``<|im_end|>``, ``<|eot_id|>``, ``</s>``...), or None when there is none.
    """

    name = CHECKPOINT_TEMPLATE
    add_bos = False

    def __init__(self, source: str, tokenizer: Any) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ValueError("the chat template is empty")
        self.source = source
        self._template = compile_chat_template(source)
        names = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "unk_token": tokenizer.unk_token}
        # Like transformers' special_tokens_map: tokens the tokenizer does not have are not passed.
        self.variables = {k: v for k, v in names.items() if v is not None}
        self.end_of_turn = self._find_end_of_turn(tokenizer.all_special_tokens)
        self.stop_strings = tuple(t for t in (self.end_of_turn, self.variables.get("eos_token")) if t)

    def render_messages(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The template's text for ``messages`` (``{"role", "content"}`` dicts); ValueError if it refuses them."""
        try:
            return self._template.render(messages=[dict(m) for m in messages],
                                         add_generation_prompt=add_generation_prompt, **self.variables)
        except jinja2.TemplateError as exc:  # raise_exception(...) and runtime errors of the template
            raise ValueError(f"the chat template refused the conversation: {exc}") from None

    def _find_end_of_turn(self, specials: Sequence[str]) -> str | None:
        try:
            text = self.render_messages([{"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
        except ValueError:
            return None  # a template that needs another conversation shape: no end-of-turn token known
        tail = text.rsplit(_PROBE, 1)[-1].lstrip() if _PROBE in text else ""
        return next((t for t in sorted(specials, key=len, reverse=True) if tail.startswith(t)), None)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """The end-of-turn token's id, if the template has one (the processor adds EOS ids)."""
        idx = tokenizer.token_to_id(self.end_of_turn) if self.end_of_turn else None
        return [] if idx is None else [idx]

    def extract_response(self, text: str) -> str:
        """Cut generated text at the end-of-turn or EOS string and strip it."""
        for stop in self.stop_strings:
            text = text.split(stop, 1)[0]
        return text.strip()

    def __repr__(self) -> str:
        return f"JinjaChatTemplate(end_of_turn={self.end_of_turn!r}, {len(self.source)} chars)"


# ------------------------------------------------------------------------- literal text
@lru_cache(maxsize=64)
def _alternation(tokens: tuple[str, ...]) -> str:
    # Longest first: an alternation takes the first branch that matches.
    return "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) or "(?!)"


def literal_marker(tokenizer: Any, exclude: Sequence[str] = ()) -> re.Pattern[str]:
    """A pattern matching every special-token string of ``tokenizer`` (minus ``exclude``), for :func:`mark_literal`."""
    tokens = tuple(sorted(set(tokenizer.all_special_tokens) - set(exclude)))
    return re.compile(_alternation(tokens))


def mark_literal(text: str, control: re.Pattern[str]) -> str:
    """``text`` with every control-token string wrapped in markers, so it is encoded as ordinary text."""
    text = text.replace(_START, "").replace(_END, "")  # markers typed by a user cannot forge a marked token
    return control.sub(lambda m: _START + m.group(0) + _END, text)


def unmark(text: str) -> str:
    """``text`` without markers: the string the template really renders."""
    return text.replace(_START, "").replace(_END, "")


def encode_prompt(tokenizer: Any, text: str, add_bos: bool) -> list[int]:
    """Token ids of a rendered prompt whose literal parts were wrapped by :func:`mark_literal`.

    Without markers this is ``tokenizer.encode(text, add_bos)``, exactly. With markers the text is cut
    at the template's own control tokens only; each run between them, marked tokens included, is
    encoded with ``parse_special=False``, so a marked ``<|im_end|>`` becomes ordinary pieces.
    """
    if _START not in text and _END not in text:
        return tokenizer.encode(text, add_bos=add_bos)
    ids = tokenizer.encode("", add_bos=add_bos)
    specials = _alternation(tuple(tokenizer.all_special_tokens))
    pattern = re.compile(f"{_START}({specials}){_END}|[{_START}{_END}]|({specials})")
    run: list[str] = []

    def flush() -> None:
        if run:
            ids.extend(tokenizer.encode("".join(run), add_bos=False, parse_special=False))
            run.clear()

    pos = 0
    for m in pattern.finditer(text):
        run.append(text[pos : m.start()])
        pos = m.end()
        if m.group(1) is not None:  # a control token typed by a user: literal text
            run.append(m.group(1))
        elif m.group(2) is not None:  # the template's own markup
            flush()
            ids.append(tokenizer.token_to_id(m.group(2)))
        # a lone marker (the template cut a marked string) is dropped
    run.append(text[pos:])
    flush()
    return ids
