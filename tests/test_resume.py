"""Runs that survive: SIGKILL after a checkpoint, then the same command resumes and finishes;
a mirror alone is enough; half-written checkpoints and other runs' folders are refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SAY_WORDS, write_jsonl

from kit import checkpoints, preflight, secrets
from kit.config import RecipeConfig, apply_overrides
from kit.errors import KitError

ROWS = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
        for w in SAY_WORDS]


def command(taught_model_dir, data, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "chat.py"), f"model={taught_model_dir}", f"data={data}",
            "max_steps=24", "save_steps=3", "batch_size=2", "eval_samples=2", "max_new_tokens=4",
            "export=both", f"output_dir={out}", *extra]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_uninterrupted_killed_and_mirrored_runs(taught_model_dir, tmp_path):
    """One uninterrupted run (with a fake Hub token in its environment and a mirror), one run
    SIGKILLed after its first checkpoint and started again, and a restart from the mirror
    alone after the local checkpoints are gone."""
    token = "hf_KitFakeToken0123456789abcdef"
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    whole, mirror = tmp_path / "whole", tmp_path / "drive"
    first = subprocess.run(command(taught_model_dir, data, whole, f"checkpoint_mirror={mirror}"),
                           capture_output=True, text=True, timeout=600, cwd=ROOT,
                           env={**os.environ, "HF_TOKEN": token})
    assert first.returncode == 0, first.stderr[-2000:]
    steps = json.loads((whole / "metrics.json").read_text())["train"]["steps"]
    assert steps == 24

    # The token never reaches the console, metrics, configs, checkpoints or exports.
    assert token not in first.stdout + first.stderr
    files = [p for p in list(whole.rglob("*")) + list(mirror.rglob("*")) if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert token.encode() not in path.read_bytes(), path

    # Killed after a checkpoint, the same command resumes and ends where the whole run did.
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(taught_model_dir, data, out), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "checkpoint-3" / checkpoints.MARKER
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote its first checkpoint"
    assert not (out / "metrics.json").exists(), "killed too late: the run had finished"
    (out / "checkpoints" / "checkpoint-999").mkdir()  # as if the process died mid-save

    again = run(command(taught_model_dir, data, out))
    assert again.returncode == 0, again.stderr[-2000:]
    said = again.stdout.replace("\n", "")
    assert "resuming from" in said and "checkpoint-999" in said  # skipped, and said so
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == steps
    assert m["exports"]["adapter"]["ok"], m["exports"]  # the final adapter loads and stops

    # A new session where only the mirror survived.
    assert [p.name for p in checkpoints.complete_checkpoints(mirror / "checkpoints")] == [
        "checkpoint-21", "checkpoint-24"]  # save_total_limit=2
    shutil.rmtree(whole / "checkpoints")
    from_mirror = run(command(taught_model_dir, data, whole, f"checkpoint_mirror={mirror}"))
    assert from_mirror.returncode == 0, from_mirror.stderr[-2000:]
    assert f"resuming from {mirror}" in from_mirror.stdout.replace("\n", "")


def test_claim_output_dir(tmp_path):
    cfg = apply_overrides(RecipeConfig(), [f"output_dir={tmp_path / 'run'}"])
    assert checkpoints.claim_output_dir(cfg) == "fresh"
    checkpoints.record_run_config(cfg)
    (tmp_path / "run" / "checkpoints").mkdir()
    assert checkpoints.claim_output_dir(cfg) == "resume"
    assert checkpoints.claim_output_dir(apply_overrides(cfg, ["export=adapter"])) == "resume"
    with pytest.raises(KitError, match=r"different config \(changed: lora"):
        checkpoints.claim_output_dir(apply_overrides(cfg, ["lora.r=8"]))
    replacing = apply_overrides(cfg, ["lora.r=8", "overwrite=true"])
    assert checkpoints.claim_output_dir(replacing) == "fresh"
    assert (tmp_path / "run" / "checkpoints").exists()  # nothing goes until training starts
    from kit import train

    train.prepare_output(replacing)
    assert not (tmp_path / "run" / "checkpoints").exists()
    drive = tmp_path / "drive"
    mirrored = apply_overrides(cfg, [f"output_dir={tmp_path / 'a'}", f"checkpoint_mirror={drive}"])
    checkpoints.record_run_config(mirrored)
    assert (tmp_path / "drive" / checkpoints.RUN_CONFIG).is_file()
    other = apply_overrides(mirrored, [f"output_dir={tmp_path / 'b'}", "max_steps=7"])  # a new session
    with pytest.raises(KitError, match="drive holds a run with a different config"):
        checkpoints.claim_output_dir(other)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(KitError, match="holds no run of this kit"):
        checkpoints.claim_output_dir(apply_overrides(cfg, [f"output_dir={tmp_path / 'foreign'}"]))


def test_latest_skips_incomplete_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (folder / f"checkpoint-{step}" / checkpoints.MARKER).write_text("{}")
    best, notes = checkpoints.latest(tmp_path)
    assert best.name == "checkpoint-4" and "checkpoint-6" in notes[0]


def test_disk_check_names_the_numbers(tmp_path):
    class Usage:
        free = 1 * 2**30

    need = preflight.export_bytes("both", total_params=1_000_000_000, trainable=10_000_000,
                                  save_total_limit=2, save_steps=20)
    assert need > 2 * 10**9
    with pytest.raises(KitError, match=r"about 2\.\d+ GiB .* 1\.00 GiB free"):
        preflight.check_disk(str(tmp_path / "new" / "dir"), need, disk_usage=lambda _: Usage)
    assert "enough free" in preflight.check_disk(str(tmp_path), 10, disk_usage=lambda _: Usage)


def test_token_is_found_and_redacted(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abc123")
    assert secrets.hub_token() == "hf_abc123"
    assert secrets.redact("auth hf_abc123 failed") == "auth hf_*** failed"
