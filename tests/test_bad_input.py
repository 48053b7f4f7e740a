"""Bad input, as a new user would give it: one line on stderr, exit code 2, no traceback,
nothing written to output_dir. Every case goes through a recipe's command-line entry point
in this process (fast); a few also run as a fresh process, exactly as `make` runs them."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import ROOT, chat_row, run_recipe, write_jsonl

from kit import data
from kit.errors import run_cli
from kit.recipe import recipe

GOOD = [chat_row(f"q{i}", f"a{i}") for i in range(10)]

CASES = {
    "missing data file": (None, ["data={tmp}/nope.jsonl"], "data file not found"),
    "empty file": ("", [], "is empty"),
    "malformed JSONL line": ([json.dumps(r) for r in GOOD[:3]] + ['{"messages": ['], [],
                             ":4: malformed JSON"),
    "unknown format": ([{"question": "a", "answer": "b"}] * 3, [], "unknown data format"),
    "no assistant turn": ([{"messages": [{"role": "user", "content": "hi"}]}] * 3, [], "no assistant reply"),
    "non-string content": ([{"prompt": "a", "completion": 3}] * 3, [], "expected text, found int"),
    "unknown config key": (GOOD, ["lora.rank=8"], "unknown config key 'lora.rank'; valid keys:"),
    "wrong type": (GOOD, ["max_steps=ten"], "expected a whole number"),
    "negative learning rate": (GOOD, ["learning_rate=-0.1"], "out of range"),
    "model folder without a model": (GOOD, ["model={tmp}"], "holds no model"),
    "unknown model name": (GOOD, ["model=no-such-model"], "unknown model 'no-such-model'"),
    "Hub model not reachable offline": (GOOD, ["model=nobody/no-such-model-xyz"], "unknown model"),
    "unknown recipe data alias": (None, ["data=builtin:nothing"], "unknown built-in dataset"),
}


# Recipe-specific bad input: (recipe, rows, extra args, message)
RECIPE_CASES = {
    "classification: no label column": ("classification", [{"text": "a", "queue": "x"}] * 5, [],
                                        "no label column 'label'"),
    "classification: a single class": ("classification", [{"text": f"t{i}", "label": "x"} for i in range(6)],
                                       [], "only one class"),
    "code: problems without tests": ("code", [{"prompt": "p", "completion": "c"}] * 5, [],
                                     "no `tests` column"),
    "fim: a model without FIM tokens": ("fim", None, ["data={tmp}"],
                                        "<fim_prefix> <fim_suffix> <fim_middle>"),
}
ALL = {**{k: ("chat", *v) for k, v in CASES.items()}, **RECIPE_CASES}


SUBPROCESS = {"malformed JSONL line", "unknown config key", "model folder without a model"}


def prepare(case, tmp_path):
    recipe, rows, args, message = ALL[case]
    if case.startswith("fim: "):
        for i in range(3):
            (tmp_path / f"m{i}.py").write_text("a = 1\nb = 2\nc = 3\nd = 4\n")
    out = tmp_path / "out"
    data = tmp_path / "d.jsonl"
    if rows is not None:
        write_jsonl(data, rows) if rows else data.write_text("")
        args = [f"data={data}", *args]
    return recipe, [a.format(tmp=tmp_path) for a in args] + [f"output_dir={out}"], message, out


def check(code, stderr, stdout, message, out):
    assert code == 2, stderr[-2000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr + stdout
    assert not out.exists(), "nothing may be written on bad input"


@pytest.mark.parametrize("case", list(ALL))
def test_bad_input(case, tmp_path, capsys):
    recipe_name, args, message, out = prepare(case, tmp_path)
    code = run_cli(recipe(recipe_name).cli, args)
    captured = capsys.readouterr()
    check(code, captured.err, captured.out, message, out)


@pytest.mark.parametrize("case", sorted(SUBPROCESS))
def test_bad_input_in_a_fresh_process(case, tmp_path):
    recipe_name, args, message, out = prepare(case, tmp_path)
    proc = run_recipe(recipe_name, *args, timeout=300)
    check(proc.returncode, proc.stderr, proc.stdout, message, out)


# ---------------------------------------------------------------- inputs that never end


# Reads a data path the way the recipes do, in a process that loads no torch, with its memory
# capped at 1 GiB: reading /dev/zero whole would fail there rather than take the machine.
READER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
from kit import data
from kit.errors import run_cli
sys.exit(run_cli(lambda argv: data.load_splits(argv[0]), sys.argv[1:]))
"""


def _read_in_a_process(path, **env):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **env})
    return proc, time.perf_counter() - started


@pytest.mark.parametrize("kind", ["link to /dev/zero", "link to /dev/urandom", "FIFO", "socket"])
def test_a_data_path_that_is_not_a_file_is_one_line(kind, tmp_path):
    """A device, a FIFO (which would block forever) or a socket named x.jsonl: one line, exit 2,
    in seconds, with the memory capped."""
    path = tmp_path / "x.jsonl"
    server = None
    if kind.startswith("link to"):
        path.symlink_to(kind.split()[-1])
    elif kind == "FIFO":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    try:
        proc, seconds = _read_in_a_process(path)
    finally:
        if server:
            server.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    expected = {"FIFO": "a named pipe (FIFO)", "socket": "a socket"}.get(kind, "a character device")
    assert proc.stderr == (f"error: data path {path} is {expected}, not a file; pass a .jsonl, .json, "
                           ".csv or .parquet file\n")
    assert seconds < 20


def test_a_data_file_over_the_limit_is_one_line(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "big.jsonl", GOOD * 200)  # about 176 KiB
    proc, seconds = _read_in_a_process(path, KIT_MAX_DATA_GIB="0.00001")  # 10.49 KiB
    assert proc.returncode == 2 and seconds < 20, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "over the 10.49 KiB limit for a data file" in proc.stderr
    assert f"is {path.stat().st_size / 1024:.2f} KiB" in proc.stderr and "KIT_MAX_DATA_GIB=" in proc.stderr
    # The same through a recipe, before any model loads, nothing written.
    monkeypatch.setenv("KIT_MAX_DATA_GIB", "0.00001")
    out = tmp_path / "out"
    code = run_cli(recipe("chat").cli, [f"data={path}", f"output_dir={out}"])
    captured = capsys.readouterr()
    check(code, captured.err, captured.out, "over the 10.49 KiB limit", out)
    monkeypatch.setenv("KIT_MAX_DATA_GIB", "0.1")
    assert len(data.load_splits(str(path)).train) > 1000


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_data_file_is_read_as_a_stream(suffix, tmp_path):
    """The rows are held, not the file's text beside them: reading a 24 MB file whose rows are
    24 long texts peaks at about the rows' own size (the whole text, split into lines, held
    with them, was over three times that)."""
    big = [chat_row(f"q{i}", "x" * 2**20) for i in range(24)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, big)
    else:
        path.write_text("prompt,completion\n" + "".join(f"q{i},{'x' * 2**20}\n" for i in range(24)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rows = data.read_records(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 24
    assert peak < 1.4 * size, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"


@pytest.mark.slow
def test_a_chat_template_that_never_ends_is_refused_in_seconds(tiny_model_dir, tmp_path):
    """A local model folder whose chat template loops (three nested loops of 100,000): refused
    once the tokenizer loads, before training, in seconds rather than spinning for hours."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    loop = "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}" \
           "{% endfor %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
    (model / "chat_template.jinja").write_text(loop)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    rows = write_jsonl(tmp_path / "d.jsonl", GOOD)
    out = tmp_path / "out"
    started = time.perf_counter()
    proc = run_recipe("chat", f"model={model}", f"data={rows}", f"output_dir={out}", timeout=240)
    seconds = time.perf_counter() - started
    check(proc.returncode, proc.stderr, proc.stdout, "did not render a two-turn conversation within 10 s",
          out)
    assert seconds < 120


def test_the_template_probe_passes_a_real_template_quickly(tokenizer):
    started = time.perf_counter()
    data.check_template(tokenizer)
    assert time.perf_counter() - started < 5
