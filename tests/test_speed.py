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
