"""Bad input, as a new user would give it: one line on stderr, exit code 2, no traceback,
nothing written to output_dir. Every case goes through a recipe's command-line entry point
in this process (fast); a few also run as a fresh process, exactly as `make` runs them."""

import json

import pytest
from conftest import chat_row, run_recipe, write_jsonl

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
