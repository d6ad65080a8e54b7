"""RoPE at the edges: dynamic NTK per sample in batches (B6), the context-length check (B8), and both
config vocabularies for RoPE, legacy and transformers 5 `rope_parameters` (B9)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from monovl import MonoInternVL
from monovl.cli.main import main
from monovl.engine import ContextLengthError, Engine, Prompt
from monovl.engine.cpu_decode import CPUDecoder
from monovl.engine.decode_kernels import TorchKernels
from monovl.engine.generate import left_pad
from monovl.model.config import LLMConfig, MonoConfig, read_rope
from monovl.model.kv_cache import KVCache
from tiny import image_prompt, random_tiles, tiny_model

FIXTURE = Path(__file__).parent / "data" / "official-v1-tiny"
MAX_POS = 16  # small, so that prompts and decodes cross it


# ------------------------------------------------------------------------ B6: dynamic NTK per sample
@pytest.fixture(scope="module", params=[False, True], ids=["v1", "v1.5"])
def ntk_model(request):
    # The tiny preset has dynamic NTK, factor 2.
    return tiny_model(seed=4, attention_experts=request.param, max_position_embeddings=MAX_POS)


PROMPTS = [
    Prompt(image_prompt(list(range(5, 14)), tiles=2, suffix=list(range(20, 30))), random_tiles(2, seed=1)),  # 30
    Prompt([1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49]),  # 11: below MAX_POS, crosses it while decoding
    Prompt(image_prompt([50, 51], tiles=1, suffix=list(range(52, 62))), random_tiles(1, seed=2)),  # 19
]
FORCED = [[60 + i, 70 + i, 80 + i] for i in range(8)]  # decode inputs per step, one per prompt


def new_cache(model, batch, max_len=64):
    c = model.config.llm
    return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, max_len, model.dtype, "cpu")


@torch.no_grad()
def teacher_forced(model, prompts, decode):
    """Prefill logits [B, V] and the logits of 8 forced decode steps, left-padded as the engine pads."""
    ids, mask, tiles = left_pad(prompts, model.config.llm.pad_token_id)
    rows = [PROMPTS.index(p) for p in prompts]
    b = len(prompts)
    mask = mask.bool() if b > 1 else None  # a lone prompt runs unpadded, as the engine runs it
    cache = new_cache(model, b)
    steps = [model(ids, tiles, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]]
    positions = mask.long().sum(1, keepdim=True) if mask is not None else torch.full((b, 1), ids.shape[1])
    embed = model.language_model.model.tok_embeddings
    for forced in FORCED:
        tokens = torch.tensor([forced[r] for r in rows])
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if decode == "module":  # the generic path: `LanguageModel.forward`, as on GPU
            logits = model.language_model(embed(tokens[:, None]), positions, None, mask, cache)[:, -1]
        else:
            logits = CPUDecoder(model, decode)(tokens, positions, cache, mask)
        steps.append(logits)
        positions = positions + 1
    return torch.stack(steps, 1)  # [B, 9, V]


@pytest.mark.parametrize("decode", ["module", "torch kernels", "native"])
def test_dynamic_ntk_batched_equals_single_in_prefill_and_decode(ntk_model, decode, request):
    kernels = {"module": "module", "torch kernels": TorchKernels(blocks=2)}.get(decode)
    if decode == "native":
        kernels = request.getfixturevalue("native")
    batched = teacher_forced(ntk_model, PROMPTS, kernels)
    for i, p in enumerate(PROMPTS):
        alone = teacher_forced(ntk_model, [p], kernels)[0]
        torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cpu_decode", [False, True])
def test_dynamic_ntk_batched_generation_equals_one_at_a_time(ntk_model, cpu_decode):
    engine = Engine(ntk_model, cpu_decode=cpu_decode)
    batched = engine.generate_batch(PROMPTS, max_new_tokens=10)
    assert batched == [engine.generate_batch([p], max_new_tokens=10)[0] for p in PROMPTS]


@torch.no_grad()
def test_dynamic_ntk_packed_samples_equal_separate_samples(ntk_model):
    a, b = PROMPTS[0], PROMPTS[1]  # 30 tokens (scaled) and 11 (not), packed in one row with padding
    n_a, n_b, pad = len(a.input_ids), len(b.input_ids), 3
    ids = torch.tensor([a.input_ids + b.input_ids + [2] * pad])
    seg = torch.tensor([[1] * n_a + [2] * n_b + [0] * pad])
    pos = torch.tensor([list(range(n_a)) + list(range(n_b)) + [0] * pad])
    packed = ntk_model(ids, a.pixel_values, position_ids=pos, segment_ids=seg).logits
    torch.testing.assert_close(packed[:, :n_a], ntk_model(torch.tensor([a.input_ids]), a.pixel_values).logits,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[:, n_a:n_a + n_b], ntk_model(torch.tensor([b.input_ids])).logits,
                               atol=1e-5, rtol=0)


def test_dynamic_ntk_row_scaling_follows_the_transformers_formula():
    rot = tiny_model(max_position_embeddings=MAX_POS).language_model.rotary
    # Row 0: 20 real tokens after 4 pads; row 1: 24 real tokens. Both then sit at the last position.
    mask = torch.tensor([[0] * 4 + [1] * 20, [1] * 24])
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cos, _ = rot(pos, 24, torch.float32, mask)
    d = rot.dim
    for row, n in ((0, 20), (1, 24)):
        base = 1e6 * ((2.0 * n / MAX_POS) - 1.0) ** (d / (d - 2))  # factor 2
        inv = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))
        expected = torch.cos(torch.cat([inv, inv]) * (n - 1))
        torch.testing.assert_close(cos[row, -1, 0, 0], expected)


# ------------------------------------------------------------------------ B8: context length
def test_over_long_prompt_names_the_three_numbers():
    model = tiny_model(max_position_embeddings=MAX_POS, rope_scaling=None)
    ids = torch.tensor([[1] + list(range(5, 14))])  # 10 tokens
    with pytest.raises(ContextLengthError, match=r"prompt of 10 tokens \+ max_new_tokens 7 = 17 tokens exceeds "
                                                 r"the model's max_position_embeddings 16"):
        model.generate(ids, max_new_tokens=7, stop_token_ids=[])
    assert model.generate(ids, max_new_tokens=6, stop_token_ids=[]).shape == (1, 6)  # exactly fits
    # In a batch the longest prompt counts by its real tokens, not the padded width.
    engine = Engine(model)
    assert len(engine.generate_batch([Prompt(ids[0]), Prompt([1, 2, 3])], max_new_tokens=6)[0]) == 6
    with pytest.raises(ContextLengthError, match="prompt of 10 tokens"):
        engine.generate_batch([Prompt([1, 2, 3]), Prompt(ids[0])], max_new_tokens=7)
    with pytest.raises(ValueError, match="max_new_tokens 0 = 17 tokens"):  # a prompt alone can be too long
        model.generate(torch.ones(1, 17, dtype=torch.long), max_new_tokens=0)


def test_rope_scaling_extends_the_limit():
    ids = torch.ones(1, 20, dtype=torch.long)
    linear = tiny_model(max_position_embeddings=MAX_POS, rope_scaling={"type": "linear", "factor": 2.0})
    assert linear.generate(ids, max_new_tokens=12, stop_token_ids=[]).shape == (1, 12)  # 32 = 16 x 2
    with pytest.raises(ContextLengthError, match="max_position_embeddings 16 x linear RoPE factor 2"):
        linear.generate(ids, max_new_tokens=13, stop_token_ids=[])
    dynamic = tiny_model(max_position_embeddings=MAX_POS)  # NTK has no bound
    assert dynamic.generate(ids, max_new_tokens=20, stop_token_ids=[]).shape == (1, 20)


def test_cli_chat_over_long_is_a_one_line_error_with_exit_code_2(tmp_path, tiny_model_dir, capsys):
    from monovl.processing import MonoProcessor

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    n = MonoProcessor.from_pretrained(d)("hello")["input_ids"].shape[1]
    cfg = json.loads((d / "config.json").read_text())
    cfg["llm_config"].update(max_position_embeddings=n + 4, rope_scaling=None)  # room for 4 new tokens
    (d / "config.json").write_text(json.dumps(cfg))
    assert main(["chat", "--model", str(d), "hello", "--max-new-tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"monovl chat: error: prompt of {n} tokens + max_new_tokens 5 = {n + 5} tokens exceeds "
                          f"the model's max_position_embeddings {n + 4};")
    assert err.count("\n") == 1  # one line, no traceback
    assert main(["chat", "--model", str(d), "hello", "--max-new-tokens", "4"]) == 0


def short_context_model(tmp_path, tiny_model_dir, room: int, rope_scaling=None) -> tuple[Path, int]:
    """A copy of the tiny model whose positions leave `room` tokens after the prompt of "hello"."""
    from monovl.processing import MonoProcessor

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    n = MonoProcessor.from_pretrained(d)("hello")["input_ids"].shape[1]
    cfg = json.loads((d / "config.json").read_text())
    cfg["llm_config"].update(max_position_embeddings=n + room, rope_scaling=rope_scaling)
    (d / "config.json").write_text(json.dumps(cfg))
    return d, n


def test_chat_default_max_new_tokens_is_capped_at_the_room_left(tmp_path, tiny_model_dir, capsys):
    from monovl.cli.chat import DEFAULT_MAX_NEW_TOKENS, ChatSession
    from monovl.processing import MonoProcessor

    d, n = short_context_model(tmp_path, tiny_model_dir, room=4)
    assert main(["chat", "--model", str(d), "hello"]) == 0  # the default 512 would not fit
    assert capsys.readouterr().err == ""
    model, processor = MonoInternVL.from_pretrained(d), MonoProcessor.from_pretrained(d)
    session = ChatSession(model, processor)
    assert session.new_token_budget(n) == 4 and session.new_token_budget(n + 4) == 1  # 1: the error names it
    assert ChatSession(model, processor, max_new_tokens=9).new_token_budget(n) == 9  # explicit: kept, then refused
    model.config.llm.rope_scaling = {"type": "linear", "factor": 2.0}
    assert session.new_token_budget(n) == n + 8  # 2 x (n + 4) - n
    model.config.llm.max_position_embeddings = 4096
    assert session.new_token_budget(n) == DEFAULT_MAX_NEW_TOKENS
    model.config.llm.rope_scaling = {"type": "dynamic", "factor": 2.0}
    assert session.new_token_budget(n) == DEFAULT_MAX_NEW_TOKENS  # no bound


def test_interactive_chat_reports_an_over_long_turn_and_goes_on(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import io

    from monovl.cli.chat import ChatSession
    from monovl.processing import MonoProcessor

    d, n = short_context_model(tmp_path, tiny_model_dir, room=4)
    long_question = "hello " * 40
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{long_question}\nhello\n/quit\n"))
    assert main(["chat", "--model", str(d)]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("monovl chat: error: prompt of ") and captured.err.count("\n") == 1
    # "hello" is then answered as in a fresh session: the failed turn did not join the history.
    assert main(["chat", "--model", str(d), "hello"]) == 0
    assert captured.out == capsys.readouterr().out
    assert main(["chat", "--model", str(d), long_question]) == 2  # one question and out: exit code 2
    session = ChatSession(MonoInternVL.from_pretrained(d), MonoProcessor.from_pretrained(d))
    with pytest.raises(ContextLengthError):
        session.ask(long_question)
    assert session.history == []


# ------------------------------------------------------------------------ B9: RoPE config vocabularies
@pytest.mark.parametrize("llm, theta, scaling", [
    ({"rope_theta": 5e5, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, 5e5, {"type": "dynamic", "factor": 2.0}),
    ({"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 3}}, 5e5, {"type": "linear", "factor": 3.0}),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, 1e4,
     {"type": "dynamic", "factor": 2.0}),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 2.5e5}}, 2.5e5, None),
    ({"rope_theta": 7.0, "rope_scaling": None}, 7.0, None),
    ({}, 1e6, None),
    # transformers 5's precedence: a rope_scaling dict wins over rope_parameters, a theta inside the
    # chosen dict over the top-level one, and a theta only in rope_parameters still counts.
    ({"rope_theta": 9.0, "rope_parameters": {"rope_type": "default", "rope_theta": 3.0}}, 3.0, None),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0},
      "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 3.0}}, 3.0,
     {"type": "dynamic", "factor": 2.0}),
], ids=["legacy-type", "legacy-rope_type", "v5-dynamic", "v5-default", "legacy-none", "absent", "v5-theta-wins",
        "scaling-wins"])
def test_mono_config_reads_both_rope_forms_and_round_trips(llm, theta, scaling):
    d = MonoConfig().to_dict()
    for key in ("rope_theta", "rope_scaling"):
        del d["llm_config"][key]
    d["llm_config"].update(llm)
    cfg = MonoConfig.from_dict(d)
    assert (cfg.llm.rope_theta, cfg.llm.rope_scaling) == (theta, scaling)
    saved = cfg.to_dict()["llm_config"]
    again = MonoConfig.from_dict(cfg.to_dict())
    assert (again.llm.rope_theta, again.llm.rope_scaling) == (theta, scaling)
    # The official InternLM2 config validates rope_scaling as exactly {"type", "factor"} (or None).
    assert saved["rope_theta"] == theta and saved["rope_scaling"] == scaling
    if "rope_parameters" in llm:  # kept for transformers 5 readers, and agreeing with the official keys
        assert saved["rope_parameters"]["rope_theta"] == theta
        assert saved["rope_parameters"]["rope_type"] == (scaling or {}).get("type", "default")
        assert saved["rope_parameters"].get("factor") == (scaling or {}).get("factor")


def test_changed_rope_is_saved_in_both_forms():
    d = MonoConfig().to_dict()
    d["llm_config"]["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    cfg = MonoConfig.from_dict(d)
    cfg.llm.rope_theta, cfg.llm.rope_scaling = 5e4, None  # no stale rope_parameters may bring it back
    again = MonoConfig.from_dict(cfg.to_dict())
    assert (again.llm.rope_theta, again.llm.rope_scaling) == (5e4, None)


@pytest.mark.parametrize("bad, match", [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn' is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 0.5}}, "needs a factor >= 1"),
    ({"rope_scaling": {"type": "dynamic"}}, "needs a factor >= 1, got None"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}},
     "per-layer-type rope_parameters"),
    ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor 0.5"),
])
def test_unsupported_rope_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        read_rope(bad, 1e6)
    with pytest.raises(ValueError, match=match):
        MonoConfig.from_dict({"llm_config": bad})


def test_llm_config_normalises_rope_type():
    cfg = LLMConfig(rope_scaling={"rope_type": "dynamic", "factor": 2})
    assert cfg.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert LLMConfig(rope_scaling={"rope_type": "default"}).rope_scaling is None


@torch.no_grad()
def test_checkpoint_with_rope_parameters_loads_like_the_official_form(tmp_path):
    # The official fixture (dynamic, factor 2, theta 1e6), with its RoPE rewritten as transformers 5 writes it.
    d = tmp_path / "v5"
    shutil.copytree(FIXTURE, d)
    cfg = json.loads((d / "config.json").read_text())
    llm = cfg["llm_config"]
    llm["rope_parameters"] = {"rope_type": llm.pop("rope_scaling")["type"], "factor": 2.0,
                              "rope_theta": llm.pop("rope_theta")}
    (d / "config.json").write_text(json.dumps(cfg))
    official, v5 = MonoInternVL.from_pretrained(FIXTURE), MonoInternVL.from_pretrained(d)
    assert (v5.config.llm.rope_theta, v5.config.llm.rope_scaling) == (1e6, {"type": "dynamic", "factor": 2.0})
    ids = torch.randint(0, 400, (1, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(v5(ids).logits, official(ids).logits)
    v5.save_pretrained(tmp_path / "saved")
    assert MonoConfig.from_json(tmp_path / "saved" / "config.json").llm.rope_scaling == {"type": "dynamic",
                                                                                       "factor": 2.0}


@pytest.mark.parametrize("form", ["transformers", "legacy-type", "legacy-rope_type"])
def test_upcycle_source_reads_both_rope_forms(tmp_path, form):
    transformers = pytest.importorskip("transformers")
    from monovl.checkpoint.llm_sources import read_llama

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 5e5})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in raw  # what transformers 5 writes
    if form != "transformers":
        raw.pop("rope_parameters")
        key = "type" if form == "legacy-type" else "rope_type"
        raw.update(rope_theta=5e5, rope_scaling={key: "dynamic", "factor": 2.0})
        (tmp_path / "config.json").write_text(json.dumps(raw))
    llm, _ = read_llama(tmp_path)
    assert (llm.rope_theta, llm.rope_scaling) == (5e5, {"type": "dynamic", "factor": 2.0})
