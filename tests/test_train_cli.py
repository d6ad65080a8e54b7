"""`monovl train` end to end on the real data pipeline: one process, torchrun FSDP2, SIGKILL + resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monovl import MonoInternVL
from monovl.cli.main import main
from monovl.data.synthetic import write_caption_jsonl, write_conversation_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_data")
    return {"conv": write_conversation_jsonl(d / "conv.jsonl", 24, seed=1),
            "captions": write_caption_jsonl(d / "captions.jsonl", 24, seed=2)}


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def monovl_cmd(*args, torchrun: int = 0) -> list[str]:
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun),
                "-m", "monovl.cli.main", *args]
    return [sys.executable, "-m", "monovl.cli.main", *args]


def env_for_subprocess() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("WORLD_SIZE", None)
    return env


def test_train_one_stage_from_the_command_line(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--stage", "s1.1", "--model", str(tiny_model_dir), "--data", str(data["captions"]),
               "--out", str(out), "--max-steps", "4", "--batch-size", "2", "--save-every", "2", "--lr", "1e-3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trainable" in printed and "visual FFN experts" in printed  # the summary comes first
    assert (out / "step-2").is_dir() and (out / "final").is_dir()
    model = MonoInternVL.from_pretrained(out / "final")
    assert model.image_token_id == 500
    assert len(losses(out)) == 4


def test_packed_training_runs(tiny_model_dir, data, tmp_path):
    out = tmp_path / "packed"
    assert main(["train", "--stage", "s2", "--model", str(tiny_model_dir), "--data", str(data["conv"]),
                 "--out", str(out), "--max-steps", "3", "--batch-size", "1", "--pack", "--pack-tokens", "512",
                 "--max-length", "512"]) == 0
    assert len(losses(out)) == 3


@pytest.mark.slow
def test_torchrun_fsdp2_two_processes(tiny_model_dir, data, tmp_path):
    out = tmp_path / "fsdp"
    cmd = monovl_cmd("train", "--stage", "s2", "--model", str(tiny_model_dir), "--data", str(data["conv"]),
                     "--out", str(out), "--max-steps", "12", "--batch-size", "2", "--lr", "3e-3", torchrun=2)
    proc = subprocess.run(cmd, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = losses(out)
    assert len(curve) == 12 and sum(curve[-3:]) < sum(curve[:3])
    # The vision diagnostics run on both ranks (their forwards are collectives) at steps 1, 10 and 12,
    # or are skipped on both when one rank's probe batch has no image.
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "grad_norm/patch embedding" in r] == [1, 10, 12]
    state = torch.load(out / "final" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    single = MonoInternVL.from_pretrained(out / "final")  # loads in a single process
    with torch.no_grad():
        assert torch.isfinite(single(torch.tensor([[1, 20, 21]])).logits).all()


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, data, tmp_path):
    def cmd(out, *extra):
        return monovl_cmd("train", "--stage", "s1.3", "--model", str(tiny_model_dir), "--data",
                          str(data["conv"]), "--out", str(out), "--max-steps", "120", "--save-every", "30",
                          "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "5", *extra)

    env = env_for_subprocess()
    straight = subprocess.run(cmd(tmp_path / "a"), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "b"
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "step-30").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(cmd(out, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout

    a = MonoInternVL.from_pretrained(tmp_path / "a" / "final").state_dict()
    b = MonoInternVL.from_pretrained(out / "final").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The metrics log reads as one run: each step once.
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 121))
