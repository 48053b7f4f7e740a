"""Bad input that used to cost a model load, leave files behind or be misread, and runs that
share a folder or are stopped: one `error:` line and exit 2 before any weight loads, nothing
written; valid data read as written; one run per output_dir; SIGTERM says how to resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, chat_row, write_jsonl

from kit import checkpoints, data, preflight, runlock
from kit.classify import load_labeled
from kit.config import RecipeConfig, apply_overrides
from kit.errors import KitError, run_cli
from kit.recipe import recipe

GOOD = [chat_row(f"q{i}", f"a{i}") for i in range(10)]
LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 49152, "tie_word_embeddings": True}
DEEP = "[" * 100_000 + "]" * 100_000


# (recipe, rows or raw text, args, message). `{tmp}` is the test's folder; `{model}` a folder
# holding only a Llama config.json, so had anything tried to load weights, the error would
# say "could not load model" instead.
CASES = {
    # After the model loaded (or with a traceback in training): now in validation.
    "target module the model lacks": ("chat", GOOD, ["model={model}", "lora.target_modules=q_proj,q_projj"],
                                      "q_projj is not a layer of"),
    "target module not a name": ("chat", GOOD, ["lora.target_modules=q proj"], "is not one"),
    "lora dropout above 1": ("chat", GOOD, ["lora.dropout=5"], "lora.dropout=5.0 is out of range"),
    "negative seed": ("chat", GOOD, ["seed=-1"], "seed=-1 is out of range"),
    # Values that make no sense.
    "huge learning rate": ("chat", GOOD, ["learning_rate=1e9"], "learning_rate=1000000000.0 is out of range"),
    "infinite learning rate": ("chat", GOOD, ["learning_rate=inf"], "learning_rate=inf: expected a finite"),
    "NaN learning rate": ("chat", GOOD, ["learning_rate=nan"], "learning_rate=nan: expected a finite"),
    "lora alpha 0": ("chat", GOOD, ["lora.alpha=0"], "lora.alpha=0 is out of range"),
    "lora r 0": ("chat", GOOD, ["lora.r=0"], "lora.r=0 is out of range"),
    "eval_samples 0": ("chat", GOOD, ["eval_samples=0"], "eval_samples=0 is out of range"),
    "eval_samples negative": ("chat", GOOD, ["eval_samples=-3"], "eval_samples=-3 is out of range"),
    "max_new_tokens 0": ("chat", GOOD, ["max_new_tokens=0"], "max_new_tokens=0 is out of range"),
    "eval_fraction negative": ("chat", GOOD, ["eval_fraction=-1"], "eval_fraction=-1.0 is out of range"),
    "eval_fraction 1": ("classification", None, ["eval_fraction=1"], "eval_fraction=1.0 is out of range"),
    "gpu_memory_gib infinite": ("chat", GOOD, ["gpu_memory_gib=inf"], "gpu_memory_gib=inf: expected"),
    "batch_size 0": ("chat", GOOD, ["batch_size=0"], "batch_size=0 is out of range"),
    "code: exec_timeout negative": ("code", None, ["exec_timeout=-1"], "exec_timeout=-1.0 is out of range"),
    "code: exec_timeout 1e10": ("code", None, ["exec_timeout=1e10"],
                                "exec_timeout=10000000000.0 is out of range"),
    "data path of 5,000 characters": ("chat", None, ["data={tmp}/" + "d" * 5000 + ".jsonl"],
                                      "the path is too long for the file system"),
    "output_dir of 5,000 characters": ("chat", GOOD, ["output_dir={tmp}/" + "o/" * 2500],
                                       "the path is too long for the file system, 5,"),
    "output_dir name of 300 characters": ("chat", GOOD, ["output_dir={tmp}/" + "o" * 300],
                                          "a name of 300 bytes in it (at most 255)"),
    "code: eval_limit negative": ("code", None, ["eval_limit=-5"], "eval_limit=-5 is out of range"),
    "fim: fim_per_file 0": ("fim", None, ["fim_per_file=0"], "fim_per_file=0 is out of range"),
    # Data.
    "invalid expect regex": ("chat", GOOD[:9] + [{**GOOD[9], "expect": "(unclosed"}], [],
                             "example 10: `expect` '(unclosed' is not a valid regular expression"),
    "reject that is not text": ("chat", GOOD[:9] + [{**GOOD[9], "reject": 3}], [], "`reject` must be"),
    "JSON nested 100,000 deep": ("chat", DEEP, ["data={tmp}/d.json"], "JSON nested too deeply"),
    "JSONL line nested 100,000 deep": ("chat", DEEP + "\n", [], ":1: JSON nested too deeply"),
    "NaN in a text field": ("chat", [{"prompt": float("nan"), "completion": "b"}] * 3, [],
                            "found the number nan"),
    "classification: NaN label": ("classification", [{"text": f"t{i}", "label": [1, float("nan")][i % 2]}
                                                     for i in range(10)], [], "label nan is not a class"),
    "Hub dataset offline": ("chat", None, ["data=nobody/no-such-dataset-xyz"], "Hub cannot be reached"),
    # output_dir.
    "output_dir is a file": ("chat", GOOD, [], "is a file, not a folder"),
    "output_dir is read-only": ("chat", GOOD, [], "cannot be written"),
    "run_config.json unreadable": ("chat", GOOD, [], "run_config.json is unreadable"),
}


def _read_only(folder):
    """Make `folder` unwritable, for root too (an immutable folder), or skip where we cannot."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_before_the_model_loads(case, tmp_path, capsys):
    recipe_name, rows, args, message = CASES[case]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    rows_file = tmp_path / "d.jsonl"
    if isinstance(rows, str):
        (tmp_path / ("d.json" if "data={tmp}/d.json" in args else "d.jsonl")).write_text(rows)
    elif rows is not None:
        write_jsonl(rows_file, rows)
    if rows is not None and not any(a.startswith("data=") for a in args):
        args = [f"data={rows_file}", *args]
    out, undo = tmp_path / "out", None
    if case == "output_dir is a file":
        out.write_text("notes")
    elif case == "output_dir is read-only":
        undo = _read_only(tmp_path / "ro")
        out = tmp_path / "ro" / "out"
    elif case == "run_config.json unreadable":
        out.mkdir()
        (out / checkpoints.RUN_CONFIG).write_text("{half")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    args = [a.format(tmp=tmp_path, model=tmp_path / "model") for a in args]
    if not any(a.startswith("output_dir=") for a in args):
        args.append(f"output_dir={out}")
    started = time.perf_counter()
    try:
        code = run_cli(recipe(recipe_name).cli, args)
    finally:
        if undo:
            undo()
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    assert code == 2, captured.err[-2000:]
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    if case == "output_dir is a file":
        assert out.read_text() == "notes"
    elif before is not None:
        assert sorted(p.name for p in out.iterdir()) == before, "nothing may be written on bad input"
    else:
        assert not out.exists(), "nothing may be written on bad input"
    if case == "Hub dataset offline":
        assert seconds < 5 and len(captured.err.strip().splitlines()) == 1, captured.err


def test_model_lacking_the_target_stops_before_it_loads(tmp_path, capsys):
    """Stopped in the model step, before loading: the folder holds a config.json only."""
    write_jsonl(tmp_path / "d.jsonl", GOOD)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "model_type": "phi3"}))
    code = run_cli(recipe("chat").cli, [f"data={tmp_path / 'd.jsonl'}", f"model={tmp_path / 'model'}",
                                        "lora.target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj",
                                        f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and "q_proj, k_proj, v_proj, gate_proj, up_proj are not layers" in err, err
    assert "its layers are qkv_proj,o_proj,gate_up_proj,down_proj" in err
    assert not (tmp_path / "out").exists()


def test_all_linear_is_a_valid_target():
    cfg = apply_overrides(RecipeConfig(), ["lora.target_modules=all-linear"])
    assert cfg.lora.target_modules == "all-linear"


def test_hub_dataset_without_network_fails_fast_and_quietly(monkeypatch, capsys):
    """No HF_HUB_OFFLINE, no network: one line in seconds, not 22 warnings after half a minute."""
    import kit.checks

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(kit.checks, "hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(KitError, match="not in the local Hugging Face cache, and the Hub cannot be reached"):
        data.load_splits("nobody/no-such-dataset-xyz")
    assert time.perf_counter() - started < 5
    captured = capsys.readouterr()
    assert captured.out + captured.err == ""


# ---------------------------------------------------------------- valid data read as written


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085"])  # raw in JSON strings
def test_jsonl_strings_may_hold_line_separators(char, tmp_path):
    rows = [chat_row(f"q{i}{char}x", f"a{i}") for i in range(10)]
    path = tmp_path / "d.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n")
    assert char in path.read_text()  # written raw, as JSON allows
    splits = data.load_splits(str(path), eval_fraction=0.2)
    got = sorted(e.messages[0]["content"] for e in splits.train + splits.test)
    assert got == sorted(f"q{i}{char}x" for i in range(10))


def test_csv_fields_are_read_whole(tmp_path):
    big = "x" * 200_000  # over the csv module's default 131,072-character field limit
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\r\n"a\x0cb",one\u2028two\r\n"multi\nline",' + big + "\r\nq,a\r\n",
                    encoding="utf-8")
    rows = data.read_records(str(path))
    assert rows == [{"prompt": "a\x0cb", "completion": "one\u2028two"},
                    {"prompt": "multi\nline", "completion": big}, {"prompt": "q", "completion": "a"}]
    import csv

    assert csv.field_size_limit() == 131_072  # left as it was for everyone else


def test_superscript_digits_are_labels_like_any_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": ["²", "³", "10", "9"][i % 4]}
                                              for i in range(20)])
    d = load_labeled(str(path), "", 0.2, "text", "label", 0)
    assert d.labels == ["9", "10", "²", "³"]


# ---------------------------------------------------------------- the plan's message


def test_plan_that_does_not_fit_names_what_does(tmp_path, capsys):
    """The README's `make plan` example: an 8B model, 131,072 tokens, a 14.6 GiB card."""
    from kit import plan

    folder = tmp_path / "llama-3.1-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**plan.LLAMA_8B, "model_type": "llama"}))
    code = run_cli(recipe("chat").cli, ["--plan", f"model={folder}", "gpu_memory_gib=14.6",
                                        "max_seq_length=131072"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    assert "<function" not in errors[0] and "does not fit: needs ~" in errors[0], errors[0]
    assert "GiB is usable" in errors[0] and "max_seq_length=" in errors[0]


# ---------------------------------------------------------------- one run per folder


def test_second_process_is_refused_until_the_first_ends(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kit import runlock; runlock.acquire(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = apply_overrides(RecipeConfig(), [f"output_dir={out}"])
        taken = rf"output_dir {out} is in use by another run \(process {holder.pid}\)"
        with pytest.raises(KitError, match=taken):
            checkpoints.claim_output_dir(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert checkpoints.claim_output_dir(cfg) == "fresh"  # the lock died with its process
    runlock.release()
    assert list(out.iterdir()) == []  # the lock file goes with the run


def test_stale_temporary_folders_are_removed_and_said(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = apply_overrides(RecipeConfig(), [f"output_dir={out}"])
    checkpoints.record_run_config(cfg)
    stale = [".merged.tmp-ab12cd", ".adapter.old", ".merged-for-gguf", ".merged-for-gguf.tmp-x1",
             "gguf/.gguf-tmp-9z", ".metrics.json.tmp-123"]
    for name in stale:
        (out / name).mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"\0" * 2**20)
    (out / "merged").mkdir()  # a finished export stays
    preflight.start(cfg)
    assert all((out / name).exists() for name in stale), "nothing goes before every check has passed"
    from kit import train

    train.prepare_output(cfg)
    said = " ".join(capsys.readouterr().out.split())
    assert "removed what an earlier run stopped mid-write left in" in said and ".merged.tmp-ab12cd" in said
    assert "0.01 GiB" in said
    assert not [name for name in stale if (out / name).exists()]
    assert (out / "merged").is_dir() and (out / "gguf").is_dir()
    runlock.release()


def test_sigterm_says_where_to_resume_and_a_second_run_is_refused(tiny_model_dir, tmp_path):
    """A real run, SIGTERMed after its first checkpoint, as Colab and Kaggle stop a session;
    while it trains, the same command in a second process stops at once."""
    rows = [chat_row(f"Say {w}.", f"{w}!") for w in "yes no maybe hello thanks sure fine great".split()]
    data_file = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "recipes" / "chat.py"), f"model={tiny_model_dir}", f"data={data_file}",
           "max_steps=100000", "save_steps=2", "batch_size=2", "eval_samples=1", "max_new_tokens=2",
           "export=adapter", f"output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        marker = out / "checkpoints" / "checkpoint-2" / checkpoints.MARKER
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run never wrote its first checkpoint"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.poll() is None, "the first run ended too soon"
        assert second.returncode == 2, second.stderr[-2000:]
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and f"output_dir {out} is in use by another run" in errors[0], second.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    checkpoint = out / "checkpoints" / "checkpoint-"
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: stopped by SIGTERM; the last complete checkpoint is {checkpoint}")
    assert errors[0].endswith("; run the same command again to resume") and "Traceback" not in err
    assert not (out / runlock.LOCK_FILE).exists()


# ---------------------------------------------------------------- a refused run changes nothing


def _tree(folder) -> dict:
    """Every file under `folder` with its bytes (links as their target), to compare before/after."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else
                                         p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _earlier_run(out, cfg):
    """What a finished run of the kit leaves in `out`, plus another tool's files beside it."""
    checkpoints.record_run_config(cfg)
    for step in (2, 4):
        ckpt = out / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        (ckpt / checkpoints.MARKER).write_text(json.dumps({"step": step}))
    (out / "checkpoints" / "checkpoint-6").mkdir()  # cut off mid-save: trainer files only
    (out / "checkpoints" / "checkpoint-6" / "optimizer.pt").write_bytes(b"half")
    (out / "checkpoints" / "notes-of-another-tool.txt").write_text("keep me")
    (out / "checkpoints" / "checkpoint-8").mkdir()  # not a trainer's: a file of its own
    (out / "checkpoints" / "checkpoint-8" / "mine.txt").write_text("keep me too")
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "merged").mkdir()
    (out / "merged" / "config.json").write_text("{}")
    (out / "metrics.json").write_text("{}")
    (out / "report.png").write_bytes(b"png")
    (out / "my-notes.md").write_text("not the kit's")
    (out / "data").mkdir()
    (out / "data" / "train.jsonl").write_text("not the kit's either")


def test_overwrite_with_a_typo_changes_nothing(tmp_path, capsys):
    """overwrite=true and a data file that does not exist: refused, and every file of the
    earlier run (output_dir and mirror) is still there, byte for byte."""
    out, mirror = tmp_path / "proj", tmp_path / "drive"
    cfg = apply_overrides(recipe("chat").ChatConfig(), [f"output_dir={out}", f"checkpoint_mirror={mirror}"])
    _earlier_run(out, cfg)
    (mirror / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (mirror / "checkpoints" / "checkpoint-4" / checkpoints.MARKER).write_text("{}")
    before_out, before_mirror = _tree(out), _tree(mirror)
    code = run_cli(recipe("chat").cli, [f"output_dir={out}", f"checkpoint_mirror={mirror}", "overwrite=true",
                                        f"data={tmp_path / 'typo.jsonl'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error: ") == 1 and "data file not found" in err, err
    assert _tree(out) == before_out and _tree(mirror) == before_mirror


def test_overwrite_removes_only_what_the_kit_wrote_and_says_so(tmp_path):
    from kit import train

    out, mirror = tmp_path / "proj", tmp_path / "drive"
    cfg = apply_overrides(RecipeConfig(), [f"output_dir={out}", f"checkpoint_mirror={mirror}",
                                           "overwrite=true"])
    _earlier_run(out, cfg)
    (mirror / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (mirror / "checkpoints" / "checkpoint-4" / checkpoints.MARKER).write_text("{}")
    (mirror / "other.txt").write_text("keep")
    said = []
    train.prepare_output(cfg, said.append)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["checkpoints", "checkpoints/checkpoint-8", "checkpoints/checkpoint-8/mine.txt",
                    "checkpoints/notes-of-another-tool.txt", "data", "data/train.jsonl", "my-notes.md"]
    assert sorted(str(p.relative_to(mirror)) for p in mirror.rglob("*")) == ["other.txt"]
    text = " ".join(said)
    for name in ("checkpoints/checkpoint-2", "checkpoints/checkpoint-6", "adapter/", "merged/",
                 "metrics.json", "report.png", "run_config.json"):
        assert name in text, text
    assert "my-notes" not in text and str(mirror) in text


def test_a_planted_lock_link_leaves_its_target_intact(tmp_path, capsys):
    """A repository can ship outputs/chat/.kit-run.lock as a link to a file of the user's."""
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me")
    out = tmp_path / "outputs" / "chat"
    out.mkdir(parents=True)
    (out / runlock.LOCK_FILE).symlink_to(target)
    for data_file in (tmp_path / "typo.jsonl", write_jsonl(tmp_path / "d.jsonl", GOOD)):
        code = run_cli(recipe("chat").cli, [f"output_dir={out}", f"data={data_file}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("error: ") == 1, err
        assert f"{runlock.LOCK_FILE} as a symbolic link" in err, err
        assert target.read_text() == "do not truncate me"
        assert (out / runlock.LOCK_FILE).is_symlink()


def test_planted_links_at_the_kits_temporary_names_are_not_written_through(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    out = tmp_path / "run"
    out.mkdir()
    (out / f".{checkpoints.RUN_CONFIG}.tmp-{os.getpid()}").symlink_to(target)
    checkpoints.record_run_config(RecipeConfig(output_dir=str(out)))
    assert target.read_text() == "keep" and json.loads((out / checkpoints.RUN_CONFIG).read_text())


def test_two_runs_may_not_share_a_mirror(tmp_path):
    mirror = tmp_path / "drive"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from kit import runlock; runlock.acquire(sys.argv[1]); "
         "runlock.acquire(sys.argv[2], 'checkpoint_mirror'); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / "a"), str(mirror)],  # what another run's claim_output_dir takes
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines = iter(holder.stdout.readline, "")
        assert any(line.strip() == "locked" for line in lines), "the first run never locked its folders"
        cfg = apply_overrides(RecipeConfig(), [f"output_dir={tmp_path / 'b'}", f"checkpoint_mirror={mirror}"])
        with pytest.raises(KitError, match=rf"checkpoint_mirror {mirror} is in use by another run"):
            checkpoints.claim_output_dir(cfg)
        assert not (tmp_path / "b").exists(), "the output_dir locked first is let go again"
    finally:
        holder.kill()
        holder.wait()
    assert checkpoints.claim_output_dir(cfg) == "fresh"
    runlock.release()


def test_model_text_cannot_drive_the_terminal():
    """A reply or a generated program is shown through report.escape: escape sequences (colour,
    window title, cursor moves), carriage returns and bidi overrides reach the terminal as
    visible escapes, markup as text, while newlines and the words stay."""
    from io import StringIO

    from rich.console import Console

    from kit.report import escape

    text = "ok\x1b[2J\x1b]0;pwned\x07\rline\u202e [red]x[/red]\nnext"
    out = StringIO()
    Console(file=out, force_terminal=False, width=200).print(escape(text))
    shown = out.getvalue()
    assert not any(c in shown for c in "\x1b\x07\r\u202e"), repr(shown)
    assert "\\x1b[2J" in shown and "[red]x[/red]" in shown and shown.count("\n") == 2, repr(shown)
