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


# ---------------------------------------------------------------- checkpoints that cannot be read


def _checkpoint(folder, step: int, max_steps: int = 8):
    """A complete checkpoint as the trainer and the kit write one, with the libraries' own
    writers: trainer state, adapter weights, optimizer state, the kit's marker."""
    import torch
    from safetensors.torch import save_file
    from transformers.trainer_callback import TrainerState

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    TrainerState(global_step=step, max_steps=max_steps).save_to_json(str(path / "trainer_state.json"))
    save_file({"lora_A.weight": torch.ones(256, 8)}, str(path / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(256)}}}, path / "optimizer.pt")
    (path / checkpoints.MARKER).write_text(json.dumps({"step": step, "max_steps": max_steps}))
    return path


def _cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN = {
    "garbage trainer_state.json": (lambda p: (p / "trainer_state.json").write_text("{garbage"),
                                   "trainer_state.json is not a trainer state"),
    "trainer_state.json of another shape": (lambda p: (p / "trainer_state.json").write_text('{"x": 1}'),
                                            "trainer_state.json is not a trainer state"),
    "truncated adapter": (lambda p: _cut(p / "adapter_model.safetensors"),
                          "adapter_model.safetensors cannot be read"),
    "truncated optimizer": (lambda p: _cut(p / "optimizer.pt"), "optimizer.pt is cut off or damaged"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_unreadable_newest_checkpoint_is_moved_aside(case, tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _checkpoint(folder, step)
    damage, why = BROKEN[case]
    damage(folder / "checkpoint-6")
    said = []
    best = checkpoints.pick_resumable(tmp_path, say=said.append)
    assert best == folder / "checkpoint-4"
    assert len(said) == 1 and f"checkpoint {folder / 'checkpoint-6'} cannot be read" in said[0], said
    assert why in said[0] and "moved it to unreadable-checkpoint-6" in said[0]
    assert (folder / "unreadable-checkpoint-6").is_dir() and not (folder / "checkpoint-6").exists()
    assert checkpoints.latest(tmp_path)[0] == best  # and it is never looked at again


def test_a_checkpoint_whose_name_lies_is_not_believed(tmp_path):
    """checkpoint-99999999999 holding a copy of step 4 (its marker and state say 4)."""
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        _checkpoint(folder, step)
    shutil.copytree(folder / "checkpoint-4", folder / "checkpoint-99999999999")
    said = []
    assert checkpoints.pick_resumable(tmp_path, say=said.append) == folder / "checkpoint-4"
    assert "checkpoint-99999999999 cannot be read" in said[0] and "does not name step 99999999999" in said[0]


def test_an_unreadable_checkpoint_that_cannot_be_moved_is_named(tmp_path):
    """A read-only mirror: the run stops in one line naming the checkpoint and what to do."""
    mirror = tmp_path / "drive"
    for step in (2, 4):
        _checkpoint(mirror / "checkpoints", step)
    _cut(mirror / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    folder = mirror / "checkpoints"
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        with pytest.raises(KitError) as caught:
            checkpoints.pick_resumable(tmp_path / "out", str(mirror))
    finally:
        subprocess.run(undo, check=True)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {folder / 'checkpoint-4'} cannot be read")
    assert "remove that folder and run the same command again to resume from the one before it" in message


@pytest.mark.slow
def test_a_finished_run_trains_no_more_and_a_broken_checkpoint_is_skipped(taught_model_dir, tmp_path, capsys):
    """Run to the end; the same command again trains zero steps and exports the final
    checkpoint's adapter; with that checkpoint's trainer state broken, the next run resumes from
    the one before it and trains the steps left."""
    import torch
    from safetensors.torch import load_file

    from kit.errors import run_cli
    from kit.recipe import recipe

    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out"
    args = [f"model={taught_model_dir}", f"data={data}", "max_steps=4", "save_steps=2", "batch_size=2",
            "eval_samples=1", "max_new_tokens=4", "export=adapter", f"output_dir={out}"]

    def run() -> tuple[dict, str]:
        code = run_cli(recipe("chat").cli, args)
        captured = capsys.readouterr()
        assert code == 0, captured.err[-2000:]
        return json.loads((out / "metrics.json").read_text()), "".join(captured.out.split())

    def squeezed(text: str) -> str:  # the console wraps long lines, paths included
        return "".join(text.split())

    first, _ = run()
    assert first["train"]["steps"] == 4 and first["train"]["tokens"] > 0

    again, said = run()
    assert squeezed("training is already complete: no step is trained") in said, said
    assert again["train"]["steps"] == 4 and again["train"]["tokens"] == 0, again["train"]
    assert again["train"]["losses"] == first["train"]["losses"]  # the run's curve, nothing added
    assert [p.name for p in checkpoints.complete_checkpoints(out / "checkpoints")] == ["checkpoint-2",
                                                                                       "checkpoint-4"]
    final = load_file(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    exported = load_file(out / "adapter" / "adapter_model.safetensors")
    assert final.keys() == exported.keys()
    assert all(torch.equal(final[k], exported[k]) for k in final)  # its weights were exported
    assert again["exports"]["adapter"]["ok"]

    (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{garbage")
    resumed, said = run()
    assert squeezed(f"checkpoint {out / 'checkpoints' / 'checkpoint-4'} cannot be read") in said, said
    assert squeezed(f"resuming from {out / 'checkpoints' / 'checkpoint-2'} (step 2 of 4)") in said
    assert resumed["train"]["steps"] == 4 and resumed["train"]["tokens"] > 0
    assert (out / "checkpoints" / "unreadable-checkpoint-4").is_dir()
