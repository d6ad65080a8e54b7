"""`monovl bench speed` on the tiny preset: files and rows (timings themselves are not asserted)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from monovl.cli import bench
from monovl.eval.speed import SpeedGrid, build_random_model, make_workload, time_generation


def _run(argv):
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_speed_bench_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "speed"
    rc = _run(["bench", "speed", "--preset", "tiny", "--device", "cpu", "--image-tokens", "8,16",
               "--text-tokens", "6", "--new-tokens", "3", "--concurrency", "1,2", "--out", str(out), "--quiet",
               "--threads", str(torch.get_num_threads())])  # same count: the flag must not slow other tests
    assert rc == 0
    data = json.loads((out / "speed.json").read_text())
    assert data["meta"]["image_tokens"] == [8, 16] and data["meta"]["concurrency"] == [1, 2]
    cells = {(r["image_tokens"], r["concurrency"], r["routing"]) for r in data["rows"]}
    assert cells == {(i, c, m) for i in (8, 16) for c in (1, 2) for m in ("routed", "naive")}
    assert all(r["tiles"] == r["image_tokens"] // 4 and r["new_tokens"] == 3 for r in data["rows"])
    assert [(t["image_tokens"], t["concurrency"]) for t in data["table"]] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert all("ttft_speedup" in t and "decode_speedup" in t for t in data["table"])
    # a batched step's cost against that many single-row steps: tok/s at 1 over tok/s at c
    by = {(t["image_tokens"], t["concurrency"]): t for t in data["table"]}
    for i in (8, 16):
        assert by[i, 1]["batch_step_cost"] == 1.0
        assert by[i, 2]["batch_step_cost"] == pytest.approx(by[i, 1]["decode_tok_s_routed"] / by[i, 2]["decode_tok_s_routed"])
    md = (out / "speed.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 5 and "TTFT speed-up" in table_lines[0] and "batch step" in table_lines[0]
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 16 | 2 |" in capsys.readouterr().out


def test_workload_shapes_and_naive_switch_restored():
    model = build_random_model("tiny", torch.device("cpu"))
    ids, pixels = make_workload(model, image_tokens=8, text_tokens=6, batch=3)
    assert ids.shape == (3, 14) and pixels.shape == (6, 3, 56, 56)
    assert int((ids == model.image_token_id).sum()) == 3 * 8
    assert torch.equal(ids[0], ids[2])
    with pytest.raises(ValueError, match="not a whole number of tiles"):
        make_workload(model, image_tokens=6, text_tokens=6, batch=1)
    ttft, tok_s, total = time_generation(model, ids, pixels, 3)
    assert 0 < ttft <= total and tok_s > 0
    from monovl.eval.speed import run_speed

    run_speed(model, SpeedGrid(image_tokens=[4], text_tokens=2, new_tokens=2, concurrency=[1]), log=None)
    assert model.language_model.naive_routing is False
    with pytest.raises(ValueError, match="new tokens must be >= 2"):
        SpeedGrid(image_tokens=[4], new_tokens=1)


def _small_encoder():
    from monovl.eval.modular import EncoderConfig

    # The tiny preset's 56 px tiles, a ViT small enough for a unit test.
    return EncoderConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64)


def test_modular_baseline_runs_every_token_through_the_text_path():
    from monovl.eval.modular import ModularBaseline

    model = build_random_model("tiny", torch.device("cpu"))
    torch.manual_seed(0)
    modular = ModularBaseline(model, _small_encoder()).eval()
    ids, pixels = make_workload(model, image_tokens=8, text_tokens=6, batch=1)
    with torch.no_grad():
        before = modular(ids, pixels).logits
        mono_before = model(ids, pixels).logits
        assert before.shape == mono_before.shape
        # The image reaches the LLM through the encoder ...
        assert not torch.allclose(modular(ids, pixels.flip(-1)).logits, before)
        # ... and no token takes a visual expert: changing them moves the monolithic model only.
        for layer in model.language_model.model.layers:
            layer.feed_forward_ve.w2.weight.mul_(3.0)
        assert torch.equal(modular(ids, pixels).logits, before)
        assert not torch.allclose(model(ids, pixels).logits, mono_before)
        one_slot_short = ids.clone()
        one_slot_short[0, 3] = 3  # the first image slot (after 3 text tokens) becomes text
        with pytest.raises(ValueError, match="image token count mismatch"):
            modular(one_slot_short, pixels)
    from monovl.eval.modular import EncoderConfig

    with pytest.raises(ValueError, match="tokens per 112 px tile"):
        ModularBaseline(model, EncoderConfig(image_size=112, hidden_size=32, num_layers=1, num_heads=2, mlp_size=64))


def test_run_speed_with_modular_baseline_reports_how_much_lower_ttft_is():
    from monovl.eval.speed import run_speed, speed_markdown, speed_table

    model = build_random_model("tiny", torch.device("cpu"))
    grid = SpeedGrid(image_tokens=[4, 8], text_tokens=2, new_tokens=2, concurrency=[1], naive_baseline=False,
                     modular_baseline=True)
    rows = run_speed(model, grid, log=None, encoder=_small_encoder())
    assert sorted((r.image_tokens, r.routing) for r in rows) == [(4, "modular"), (4, "routed"), (8, "modular"),
                                                                 (8, "routed")]
    for cell in speed_table(rows):
        assert cell["ttft_lower_than_modular"] == pytest.approx(1 - cell["ttft_ms_routed"] / cell["ttft_ms_modular"])
    head = speed_markdown(rows).splitlines()[0]
    assert "TTFT modular (ms)" in head and "TTFT lower than modular" in head and "naive" not in head
