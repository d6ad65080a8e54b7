"""`monovl chat`: one answer, or an interactive session with history, streamed token by token."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..engine import Engine, SamplingParams
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=512)
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
                 sampling: SamplingParams | None = None, max_new_tokens: int = 512):
        self.model, self.processor = model, processor
        self.engine = Engine(model)
        self.images = list(images)
        self.system_message = system_message
        self.max_tiles = max_tiles
        self.sampling = sampling or SamplingParams()
        self.max_new_tokens = max_new_tokens
        self.history: list[tuple[str, str]] = []

    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> str:
        """Answer `question` given the history; `on_text` receives the answer piece by piece."""
        inputs = self.processor(question, images=self.images or None, history=self.history,
                                system_message=self.system_message, max_tiles=self.max_tiles)
        decoder = self.processor.incremental_decoder(skip_special_tokens=True)
        stops = set(self.processor.stop_token_ids)
        for token in self.engine.stream(inputs["input_ids"], inputs["pixel_values"], inputs["image_token_id"],
                                        max_new_tokens=self.max_new_tokens, sampling=self.sampling,
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


def run(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    model = MonoInternVL.from_pretrained(model_dir, dtype=args.dtype, device=args.device)
    processor = MonoProcessor.from_pretrained(model_dir)
    session = ChatSession(model, processor, images=args.image or (), system_message=args.system,
                          max_tiles=args.max_tiles, sampling=sampling_from_args(args),
                          max_new_tokens=args.max_new_tokens)
    if args.question:
        session.ask(args.question, on_text=_print_piece)
        print()
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
        session.ask(question, on_text=_print_piece)
        print()
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
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    add_sampling_args(p)
    p.set_defaults(func=run)
