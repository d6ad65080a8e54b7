"""`monovl chat`: one answer, or an interactive session with history, streamed token by token."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..engine import ContextLengthError, Engine, SamplingParams
from ..engine.generate import context_limit
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor

# New tokens per answer when --max-new-tokens is not given, capped at the room left in the model.
DEFAULT_MAX_NEW_TOKENS = 512


def add_quantize_arg(p: argparse.ArgumentParser) -> None:
    from ..model.quantize import QUANTIZE_CHOICES, QUANTIZE_HELP

    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None, help=QUANTIZE_HELP)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default: {DEFAULT_MAX_NEW_TOKENS}, or fewer when the model has less room left "
                        "after the prompt; a larger value than fits is an error")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


class ChatSession:
    """A model, its processor and a conversation history; images belong to the first turn."""

    def __init__(self, model: MonoInternVL, processor: MonoProcessor, images: Sequence[str] = (),
                 system_message: str | None = None, max_tiles: int | None = None,
                 sampling: SamplingParams | None = None, max_new_tokens: int | None = None):
        self.model, self.processor = model, processor
        self.engine = Engine(model)
        self.images = list(images)
        self.system_message = system_message
        self.max_tiles = max_tiles
        self.sampling = sampling or SamplingParams()
        self.max_new_tokens = max_new_tokens  # None: DEFAULT_MAX_NEW_TOKENS, capped at the room left
        self.history: list[tuple[str, str]] = []

    def new_token_budget(self, prompt_len: int) -> int:
        """The given max_new_tokens, or the default capped at the positions left after the prompt.

        An explicit value is kept as it is: if it does not fit, generation raises ContextLengthError.
        With no room left at all the default becomes 1, so that error names the prompt's length.
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        limit = context_limit(self.model.config.llm)
        return DEFAULT_MAX_NEW_TOKENS if limit is None else max(1, min(DEFAULT_MAX_NEW_TOKENS, limit - prompt_len))

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer `question` given the history; `on_text` receives the answer piece by piece.

        Raises ContextLengthError, before any output and with the history unchanged, when the prompt
        and the new tokens do not fit the model.
        """
        inputs = self.processor(question, images=self.images or None, history=self.history,
                                system_message=self.system_message, max_tiles=self.max_tiles)
        max_new_tokens = self.new_token_budget(inputs["input_ids"].shape[1])
        decoder = self.processor.incremental_decoder(skip_special_tokens=True)
        stops = set(self.processor.stop_token_ids)
        for token in self.engine.stream(inputs["input_ids"], inputs["pixel_values"], inputs["image_token_id"],
                                        max_new_tokens=max_new_tokens, sampling=self.sampling,
                                        stop_token_ids=sorted(stops)):
            tok = int(token[0])
            if tok in stops:
                break
            piece = decoder.add(tok)
            if piece and on_text:
                on_text(piece)
        tail = decoder.flush()
        if tail and on_text:
            on_text(tail)
        answer = self.processor.extract_response(decoder.text)
        self.history.append((question, answer))
        return answer

    def reset(self) -> None:
        self.history.clear()


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _box_drawer(args: argparse.Namespace, processor: MonoProcessor) -> Callable[[str], None]:
    """For --draw-boxes: a callback that draws an answer's grounding boxes on the image and saves it."""
    from ..processing.grounding import draw_boxes, parse_boxes
    from ..processing.image import load_image

    # The boxes are relative to the image the model saw: the same loading, EXIF orientation included.
    image = load_image(args.image[0], official_convert=processor.official_convert)

    def draw(answer: str) -> None:
        boxes = parse_boxes(answer, *image.size)
        for item in boxes:
            print(f"box {item.label or '(no label)'}: " + ", ".join(f"{v:.1f}" for v in item.box), file=sys.stderr)
        draw_boxes(image, boxes).save(args.draw_boxes)
        print(f"{len(boxes)} box(es) drawn in {args.draw_boxes}", file=sys.stderr)

    return draw


def run(args: argparse.Namespace) -> int:
    if args.draw_boxes and len(args.image or ()) != 1:
        raise ValueError("--draw-boxes needs exactly one --image to draw on")
    model_dir = Path(args.model)
    model = MonoInternVL.from_pretrained(model_dir, dtype=args.dtype, device=args.device, quantize=args.quantize)
    processor = MonoProcessor.from_pretrained(model_dir, official_convert=args.official_preprocessing)
    session = ChatSession(model, processor, images=args.image or (), system_message=args.system,
                          max_tiles=args.max_tiles, sampling=sampling_from_args(args),
                          max_new_tokens=args.max_new_tokens)
    after_answer = _box_drawer(args, processor) if args.draw_boxes else (lambda answer: None)
    if args.question:
        answer = session.ask(args.question, on_text=_print_piece)
        print()
        after_answer(answer)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model. /reset clears the history, /quit (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question in ("/quit", "/exit"):
            break
        if question == "/reset":
            session.reset()
            continue
        if interactive:
            sys.stderr.write("model> ")
        try:
            answer = session.ask(question, on_text=_print_piece)
        except ContextLengthError as e:  # this turn is too long; the session (and its history) goes on
            if interactive:
                sys.stderr.write("\n")  # end the "model> " line
            print(f"monovl chat: error: {e}", file=sys.stderr)
            continue
        print()
        after_answer(answer)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model about images",
                       description="One answer to QUESTION, or an interactive session when no question is given.")
    p.add_argument("question", nargs="?", help="ask once and exit; omit for an interactive session")
    p.add_argument("--model", required=True, help="checkpoint directory (official layout or monovl's)")
    p.add_argument("--image", action="append", help="an image file; repeat for several images")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="tile budget per conversation, shared among its images (default: the config's)")
    p.add_argument("--system", default=None, help="system message (default: the template's)")
    p.add_argument("--draw-boxes", metavar="OUT.png", default=None,
                   help="draw the answer's <ref>/<box> grounding boxes on the --image and save it here "
                        "(rewritten after each answer)")
    p.add_argument("--official-preprocessing", action="store_true",
                   help="load images as the official code does, a plain convert('RGB'): no EXIF orientation, "
                        "alpha dropped (default: EXIF orientation applied, transparency composited on white)")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    add_quantize_arg(p)
    add_sampling_args(p)
    p.set_defaults(func=run)
