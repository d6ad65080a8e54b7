"""`monovl chat` and `monovl demo` end to end on a tiny model with a locally trained tokenizer."""

import io
import shutil

import pytest
from PIL import Image

from monovl import MonoInternVL
from monovl.cli.chat import ChatSession
from monovl.cli.main import main
from monovl.processing import MonoProcessor


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, d)
    Image.new("RGB", (120, 60), (200, 30, 30)).save(d / "red.png")
    return d


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_one_shot_answer_streams_the_greedy_tokens(chat_dir, capsys, quantize):
    rc = main(["chat", "--model", str(chat_dir), "--image", str(chat_dir / "red.png"), "What colour?",
               "--max-new-tokens", "6"] + (["--quantize", quantize] if quantize else []))
    assert rc == 0
    printed = capsys.readouterr().out
    model = MonoInternVL.from_pretrained(chat_dir, quantize=quantize)
    processor = MonoProcessor.from_pretrained(chat_dir)
    inputs = processor("What colour?", images=[str(chat_dir / "red.png")])
    new = model.generate(inputs["input_ids"], inputs["pixel_values"], max_new_tokens=6,
                         stop_token_ids=processor.stop_token_ids)[0].tolist()
    new = [t for t in new if t not in processor.stop_token_ids]
    assert printed == processor.decode(new) + "\n"
    assert model.image_token_id == processor.image_token_id


def test_interactive_session_keeps_history(chat_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nagain\n/quit\nnever read\n"))
    assert main(["chat", "--model", str(chat_dir), "--max-new-tokens", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # two answers; /reset and /quit print nothing

    session = ChatSession(MonoInternVL.from_pretrained(chat_dir), MonoProcessor.from_pretrained(chat_dir),
                          images=[str(chat_dir / "red.png")], max_new_tokens=3)
    first = session.ask("one")
    second = session.ask("two")
    assert session.history == [("one", first), ("two", second)]
    # The second answer is what the model says to the prompt that replays the first turn.
    inputs = session.processor("two", images=[str(chat_dir / "red.png")], history=[("one", first)])
    assert "one" in inputs["prompt"] and inputs["prompt"].count("<img>") == 1
    stops = session.processor.stop_token_ids
    new = session.model.generate(inputs["input_ids"], inputs["pixel_values"], max_new_tokens=3,
                                 stop_token_ids=stops)[0].tolist()
    assert second == session.processor.extract_response(
        session.processor.decode([t for t in new if t not in stops]))


def test_bad_image_is_a_clear_error(chat_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rc = main(["chat", "--model", str(chat_dir), "--image", str(bad), "hi"])
    assert rc == 2
    assert "broken.jpg" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    """`monovl demo --quick --ablation`: upcycle SmolLM2 from its GGUF, train s1.1 -> s2, evaluate,
    report; then the full-tuning and single-stage ablations."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--ablation", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "monovl chat --model" in printed
    for f in ("results.md", "results.json", "results.png"):
        assert (out / f).exists(), f
    import json
    results = json.loads((out / "results.json").read_text())["results"]
    runs = ["s1.1", "s1.2", "s1.3a", "s1.3b", "s2"]  # s1.3 in two phases
    assert list(results) == ["base", *runs]
    # The LLM is frozen in every stage (delta tuning): text answers and English loss are exactly the base's.
    for stage in runs:
        assert results[stage]["language_answers"] == results["base"]["language_answers"]
        assert results[stage]["english_nll"] == results["base"]["english_nll"]
    for stage in runs:
        assert (out / "configs" / f"{stage}.yaml").exists()
    assert "stage: s1.3\n" in (out / "configs" / "s1.3b.yaml").read_text()
    model = MonoInternVL.from_pretrained(out / "final")
    assert model.image_token_id is not None
    ablations = json.loads((out / "results.json").read_text())["ablations"]
    assert len(ablations) == 2 and "## Ablation" in (out / "results.md").read_text()
    # Delta tuning of the single-stage run keeps the LLM frozen: its English loss is the base's.
    single = next(v for k, v in ablations.items() if k.startswith("single stage"))
    assert single["english_nll"] == results["base"]["english_nll"]

    # `--full` in the same folder reuses the four finished stages it shares (same config and data),
    # trains the reading ladder, s1.3c after it and a new s2, and evaluates counting and reading too.
    s13b = (out / "main" / "s1.3b" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--quick", "--full", "--out", str(out)]) == 0
    full = json.loads((out / "results.json").read_text())
    assert list(full["results"]) == ["base", "s1.1", "s1.2", "s1.3a", "s1.3b", "read-plain", "read-world", "s1.3c",
                                     "s2"]
    assert full["reused_stages"] == ["s1.1", "s1.2", "s1.3a", "s1.3b"]
    assert (out / "main" / "s1.3b" / "final" / "model.safetensors").stat().st_mtime_ns == s13b
    assert set(full["results"]["s2"]["tasks"]) == {"color", "shape", "position", "count", "word"}
    assert "model: " + str(out / "main" / "s1.3c" / "final") in (out / "configs" / "s2.yaml").read_text()
    assert "model: " + str(out / "main" / "read-world" / "final") in (out / "configs" / "s1.3c.yaml").read_text()
    assert full["results"]["s1.3c"]["english_nll"] == results["base"]["english_nll"]


def test_quantize_flag_reaches_the_model_in_every_command(chat_dir, tmp_path, monkeypatch):
    """`--quantize int8` on chat, eval text, bench speed and serve loads the model quantized."""
    import argparse

    from monovl.cli import serve as serve_cli
    from monovl.model.quantize import is_quantized

    loaded = []
    original = MonoInternVL.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        model = original(cls, *args, **kwargs)
        loaded.append(is_quantized(model))
        return model

    monkeypatch.setattr(MonoInternVL, "from_pretrained", classmethod(spy))
    (tmp_path / "t.txt").write_text("hello world " * 20)
    assert main(["chat", "--model", str(chat_dir), "hi", "--max-new-tokens", "2", "--quantize", "int8"]) == 0
    assert main(["eval", "text", "--model", str(chat_dir), "--data", str(tmp_path / "t.txt"), "--quantize", "int8",
                 "--out", str(tmp_path / "t.json")]) == 0
    assert main(["bench", "speed", "--model", str(chat_dir), "--device", "cpu", "--image-tokens", "4",
                 "--text-tokens", "2", "--new-tokens", "2", "--concurrency", "1", "--no-baseline", "--quiet",
                 "--quantize", "int8", "--out", str(tmp_path / "speed")]) == 0
    assert loaded == [True, True, True]
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(chat_dir), "--quantize", "int8"])
    assert serve_cli.config_from_args(args).quantize == "int8"
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(chat_dir), "hi", "--quantize", "int4"])
