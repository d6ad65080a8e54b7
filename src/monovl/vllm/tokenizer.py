"""`InternLM2Tokenizer` for vLLM without remote code.

Official Mono-InternVL checkpoints name `"tokenizer_class": "InternLM2Tokenizer"`, a sentencepiece
tokenizer that ships as remote code. transformers 5 converts the sentencepiece model on its own
when the class is unknown, but not with InternLM2's rule: sentencepiece adds its dummy prefix `▁` to
every run of text between special tokens, even one that starts with a space (`"<|im_start|>system"`
is `<|im_start|>`, `▁s`, ... and `" hi"` is `▁`, `▁`, `hi`). The generic conversion adds none, and
transformers' Llama conversion adds it to the first run only, or not before a space.

This class is transformers' Llama conversion of the same `tokenizer.model` with a normalizer that
always prepends `▁` (tokenizers runs normalizers on each run between special tokens), so prompts
encode as `monovl.processing.Tokenizer` (and the official code) encode them; `register()` makes
transformers resolve the name `InternLM2Tokenizer` to it. `decode` likewise drops the dummy prefix of
every run, so decoding a prompt and encoding it again gives the same ids (vLLM does that when it
places image blocks in the text). vLLM's streaming detokenizer uses the Rust decoder, which drops
only the first one: streamed text may differ in whitespace right after a special token.
"""

from __future__ import annotations

from tokenizers import normalizers
from transformers.models.llama.tokenization_llama import LlamaTokenizer


class InternLM2Tokenizer(LlamaTokenizer):
    def __init__(self, *args, **kwargs):
        kwargs.pop("legacy", None)
        kwargs.pop("add_prefix_space", None)
        super().__init__(*args, legacy=True, add_prefix_space=True, **kwargs)
        self._tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        self._tokenizer.pre_tokenizer = None

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        # Decode each run between added tokens on its own: the Llama decoder then strips that run's
        # dummy prefix, as sentencepiece does per run.
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        added, special = set(self.added_tokens_decoder), set(self.all_special_ids)
        pieces: list[str] = []
        run: list[int] = []
        for i in ids + [None]:
            if i is not None and i not in added:
                run.append(i)
                continue
            if run:
                pieces.append(super()._decode(run, skip_special_tokens=skip_special_tokens, **kwargs))
                run = []
            if i is not None and not (skip_special_tokens and i in special):
                pieces.append(self.added_tokens_decoder[i].content)
        return "".join(pieces)
