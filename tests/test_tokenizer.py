"""InternLM2-style tokenizer: specials, BOS, added ids, save/load, streaming decode."""

from __future__ import annotations

import io
import json

import pytest
import sentencepiece as spm

from monovl.processing import (
    IMAGE_SPECIAL_TOKENS,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    INTERNLM2_CHAT_TOKENS,
    INTERNLM2_SYSTEM_MESSAGE,
    TINY_SP_VOCAB_SIZE,
    IncrementalDecoder,
    Tokenizer,
    train_tiny_tokenizer,
)

ROUND_TRIP_TEXTS = [
    "The image shows a cat sitting on a wooden table.",
    "  leading spaces, double  spaces and\nnew lines\n\n",
    "Numbers 2024 and 3.14159; symbols #@!~`^ {braces} [brackets]",
    "你好世界！这是一张图片。",  # partly sp pieces, partly byte fallback
    "Emoji 🙂 and accents: café naïve",
    INTERNLM2_SYSTEM_MESSAGE,
]


# --------------------------------------------------------------- vocabulary
def test_internlm2_conventions(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.vocab_size == TINY_SP_VOCAB_SIZE == 498
    assert len(tok) == 498 + 9
    assert (tok.token_to_id("<unk>"), tok.token_to_id("<s>"), tok.token_to_id("</s>")) == (0, 1, 2)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    # User-defined chat tokens come right after the control pieces in a trained model.
    assert [tok.token_to_id(t) for t in INTERNLM2_CHAT_TOKENS] == [3, 4, 5, 6, 7, 8]


def test_added_tokens_continue_after_sp_vocab_in_published_order(tiny_tokenizer, tiny_tokenizer_dir):
    tok = tiny_tokenizer
    expected = {t: 498 + k for k, t in enumerate(IMAGE_SPECIAL_TOKENS)}
    assert expected == {
        "<img>": 498, "</img>": 499, "<IMG_CONTEXT>": 500, "<quad>": 501, "</quad>": 502,
        "<ref>": 503, "</ref>": 504, "<box>": 505, "</box>": 506,
    }  # fmt: skip
    assert {t: tok.token_to_id(t) for t in IMAGE_SPECIAL_TOKENS} == expected
    assert json.loads((tiny_tokenizer_dir / "added_tokens.json").read_text()) == expected
    assert tok.id_to_token(500) == IMG_CONTEXT


def test_token_lookup_edges(tiny_tokenizer):
    assert tiny_tokenizer.token_to_id("definitely-not-a-piece") is None
    assert tiny_tokenizer.id_to_token(1) == "<s>"
    with pytest.raises(ValueError):
        tiny_tokenizer.id_to_token(len(tiny_tokenizer))
    with pytest.raises(ValueError):
        tiny_tokenizer.decode([len(tiny_tokenizer)])


# ------------------------------------------------------------------ encode
def test_bos_first_and_never_eos(tiny_tokenizer):
    ids = tiny_tokenizer.encode("hello there")
    assert ids[0] == 1 and ids[-1] != 2 and 2 not in ids
    assert tiny_tokenizer.encode("hello there", add_bos=False) == ids[1:]
    assert tiny_tokenizer.encode("") == [1]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == "<s>" + text
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_single_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.encode(IMG_START + IMG_CONTEXT * 3 + IMG_END, add_bos=False) == [498, 500, 500, 500, 499]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|></s><s>", add_bos=False)
    assert ids[0] == 8 and ids[-3:] == [7, 2, 1]
    assert ids.count(8) == 1 and ids.count(7) == 1
    # Each chunk between specials is encoded on its own (HF slow-tokenizer behaviour).
    assert ids[1:-3] == tok.sp_model.encode("user\nhi")
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|></s><s>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_longest_special_match_wins(tiny_tokenizer_dir):
    tok = Tokenizer.from_pretrained(tiny_tokenizer_dir)  # own copy: we mutate it
    assert tok.add_tokens(["<a>", "<a><b>", IMG_START]) == 2  # <img> already exists
    a, ab = tok.token_to_id("<a>"), tok.token_to_id("<a><b>")
    assert (a, ab) == (507, 508) and len(tok) == 509
    assert tok.encode("<a><b><a>x", add_bos=False)[:2] == [ab, a]


def test_rejects_non_string(tiny_tokenizer):
    with pytest.raises(ValueError):
        tiny_tokenizer.encode(None)  # type: ignore[arg-type]


# --------------------------------------------------------------- save/load
def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "InternLM2Tokenizer"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "</s>")
    assert config["add_bos_token"] is True and config["add_eos_token"] is False
    assert config["added_tokens_decoder"]["500"]["content"] == IMG_CONTEXT
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == list(INTERNLM2_CHAT_TOKENS)
    again = Tokenizer.from_pretrained(tmp_path)
    assert len(again) == len(tiny_tokenizer) and again.vocab_size == tiny_tokenizer.vocab_size
    assert again.all_special_ids == tiny_tokenizer.all_special_ids
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\n" + ROUND_TRIP_TEXTS[3] + "<|im_end|>"
    assert again.encode(text) == tiny_tokenizer.encode(text)


def test_training_is_deterministic(tiny_tokenizer, tmp_path):
    retrained = train_tiny_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == tiny_tokenizer.sp_model.serialized_model_proto()
    assert retrained.encode(ROUND_TRIP_TEXTS[0]) == tiny_tokenizer.encode(ROUND_TRIP_TEXTS[0])


def test_renamed_pieces_like_the_released_internlm2(tmp_path):
    # The real tokenizer.model stores <|im_start|> as piece "[UNUSED_TOKEN_146]"
    # and renames it in tokenizer_config.json's added_tokens_decoder.
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat with a hat"] * 20),
        model_writer=buffer, vocab_size=280, model_type="bpe", byte_fallback=True,
        user_defined_symbols=["[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]"],
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    (tmp_path / "tokenizer.model").write_bytes(buffer.getvalue())
    decoder = {"3": {"content": "<|im_end|>", "special": True}, "4": {"content": "<|im_start|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    base = spm.SentencePieceProcessor(model_proto=buffer.getvalue()).get_piece_size()
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<img>": base, "</img>": base + 1}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.token_to_id("<|im_start|>") == 4 and tok.token_to_id("<|im_end|>") == 3
    assert tok.encode("<|im_start|>cat<|im_end|>", add_bos=False)[0] == 4
    assert tok.encode("[UNUSED_TOKEN_146]", add_bos=False) == [4]  # old name still atomic
    assert tok.decode([4, 3]) == "<|im_start|><|im_end|>"
    assert len(tok) == base + 2 and tok.token_to_id("</img>") == base + 1


def test_added_token_gap_is_rejected(tiny_tokenizer_dir, tmp_path):
    for item in tiny_tokenizer_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<img>": 498, "</img>": 500}))
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="without gaps"):
        Tokenizer.from_pretrained(tmp_path)


def test_missing_model_file(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------- streaming decoder
@pytest.mark.parametrize("skip", [False, True])
def test_incremental_decoder_matches_full_decode(tiny_tokenizer, skip):
    tok = tiny_tokenizer
    text = "<|im_start|>assistant\nThe cat is 你好世界 café 🙂 red.<|im_end|>" + ROUND_TRIP_TEXTS[1]
    ids = tok.encode(text)
    assert any(tok.sp_model.is_byte(i) for i in ids if i < tok.vocab_size)  # byte fallback exercised
    decoder = IncrementalDecoder(tok, skip_special_tokens=skip)
    deltas = [decoder.add(i) for i in ids]
    tail = decoder.flush()
    assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)
    assert decoder.text == tok.decode(ids, skip_special_tokens=skip)
    assert all("\ufffd" not in d for d in deltas)  # partial characters are held back


def test_incremental_decoder_keeps_leading_space_marker(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("the image shows", add_bos=False)
    pieces = [tok.id_to_token(i) for i in ids]
    assert pieces[1].startswith("▁")  # "▁image" or "▁i..." carries the space
    decoder = IncrementalDecoder(tok)
    deltas = [decoder.add(i) for i in ids]
    assert not deltas[0].startswith(" ")  # dummy prefix removed at the very start
    assert "".join(deltas) == "the image shows"
    assert any(d.startswith(" ") for d in deltas[1:])


def test_incremental_decoder_holds_partial_characters(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("世", add_bos=False)  # not in the corpus: three byte pieces
    assert len(ids) >= 3 and all(tok.sp_model.is_byte(i) for i in ids[-3:])
    decoder = IncrementalDecoder(tok)
    outputs = [decoder.add(i) for i in ids]
    assert outputs[-1].endswith("世") and "".join(outputs) == "世"
    assert outputs[-2] == ""
    # A dangling lead byte is released by flush() as U+FFFD.
    decoder.reset()
    assert decoder.add(ids[-3]) == "" and decoder.flush() == "\ufffd"


def test_incremental_decoder_releases_invalid_bytes_at_once(tiny_tokenizer):
    tok = tiny_tokenizer
    byte = {v: tok.token_to_id(f"<0x{v:02X}>") for v in (0x80, 0xE4, 0xB8, 0xAD, 0x41)}
    decoder = IncrementalDecoder(tok)
    assert decoder.add(byte[0x80]) == "\ufffd"  # a stray continuation byte can never complete
    assert decoder.add(byte[0xE4]) == ""
    assert decoder.add(byte[0x41]) == "\ufffdA"  # broken sequence: released with what follows
    assert decoder.add(byte[0xE4]) == "" and decoder.add(byte[0xB8]) == ""
    assert decoder.add(byte[0xAD]) == "中"
    assert decoder.text == tok.decode(decoder.ids)
