"""`monovl demo`: the smallest end-to-end path that exists today.

Until the EViP training demo lands, this builds a small untrained Mono-InternVL with a locally
trained tokenizer, saves it in the official checkpoint layout, loads it back, checks the round
trip, and streams an answer about a generated image through the same path `monovl chat` uses.
The answer is noise (the weights are random); the point is that every stage runs for real.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..model.config import LLMConfig, MonoConfig, VisionConfig
from ..model.mono_internvl import MonoInternVL
from ..processing import MonoProcessor, train_tiny_tokenizer
from .chat import ChatSession


def demo_image(path: Path) -> Path:
    img = Image.new("RGB", (320, 200), (40, 70, 160))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 140, 140), fill=(220, 40, 40))
    draw.rectangle((190, 60, 290, 160), fill=(240, 220, 40))
    img.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model_dir = out / "model"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] training a small sentencepiece tokenizer -> {model_dir}")
    tokenizer = train_tiny_tokenizer(model_dir)
    config = MonoConfig(
        vision=VisionConfig(hidden_size=64, image_size=112),
        llm=LLMConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2),
        max_dynamic_patch=6,
    )
    print(f"[2/4] building an untrained {config.version} model ({config.num_image_token} image tokens per "
          f"{config.vision.image_size}px tile) and saving it in the official layout")
    torch.manual_seed(0)
    model = MonoInternVL(config).init_weights()
    model.image_token_id = tokenizer.token_to_id("<IMG_CONTEXT>")
    model.save_pretrained(model_dir)
    reloaded = MonoInternVL.from_pretrained(model_dir)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    print(f"      reloaded from {model_dir}: weights identical = {same}")
    image = demo_image(out / "demo.png")
    print(f"[3/4] tiling {image} and asking about it (streaming; random weights, so the words are noise):")
    session = ChatSession(reloaded, MonoProcessor.from_pretrained(model_dir), images=[str(image)],
                          max_new_tokens=24)
    print("      model> ", end="", flush=True)
    session.ask("What shapes are in the picture?", on_text=lambda s: print(s, end="", flush=True))
    print(f"\n[4/4] done in {time.perf_counter() - t0:.1f} s. Try it yourself:")
    print(f"      .venv/bin/monovl chat --model {model_dir} --image {image} \"What colour is the circle?\"")
    return 0 if same else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.set_defaults(func=run)
