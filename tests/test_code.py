"""Code pieces: code extraction, HumanEval harness, fill-in-the-middle (the sandbox: test_sandbox.py)."""

import random

import pytest

from kit import code, data, sandbox
from kit.errors import KitError


@pytest.mark.parametrize("reply, expected", [
    ("```python\ndef f():\n    return 1\n```\nThat's it.", "def f():\n    return 1"),
    ("Here:\n```\nx = 1\n```", "x = 1"),
    ("def g():\n    pass", "def g():\n    pass"),
    ("```python\ndef h():\n    return 2", "def h():\n    return 2"),  # cut off by the length limit
])
def test_extract_code(reply, expected):
    assert code.extract_code(reply) == expected


def test_builtin_reference_solutions_pass_and_wrong_ones_fail():
    splits = data.load_splits("builtin:pytasks")
    code.check_tasks(splits.test, "builtin")
    assert len(splits.train) >= 200 and len(splits.test) >= 20
    for ex in splits.test[:6]:
        reference = code.extract_code(ex.messages[-1]["content"])
        assert sandbox.run_tests(reference, ex.meta["tests"]).passed
        assert not sandbox.run_tests(reference.replace("return", "return None and"), ex.meta["tests"]).passed


def test_humaneval_harness():
    problems = code.humaneval_examples(limit=3)
    assert len(problems) == 3 and problems[0].meta["task_id"] == "HumanEval/0"
    for p in problems:
        solution = p.messages[-1]["content"]  # prompt + canonical solution
        assert sandbox.run_tests(code.program_for(p, f"```python\n{solution}\n```"), p.meta["tests"]).passed
        body_only = solution[len(p.meta["header"]):]
        assert sandbox.run_tests(code.program_for(p, body_only), p.meta["tests"]).passed
        assert not sandbox.run_tests(code.program_for(p, "    return None\n"), p.meta["tests"]).passed


def test_tasks_without_tests_are_refused(tmp_path):
    ex = [data.Example([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])]
    with pytest.raises(KitError, match="no `tests` column"):
        code.check_tasks(ex, "d.jsonl")


def test_fim_needs_fim_tokens(tokenizer):
    with pytest.raises(KitError, match="<fim_prefix> <fim_suffix> <fim_middle>"):
        code.fim_tokens(tokenizer)


def test_fim_split_and_encoding(fim_tokenizer):
    text = "import os\n\n\ndef f(x):\n    y = x + 1\n    return y\n\nprint(f(1))\n"
    rng = random.Random(0)
    for _ in range(20):
        prefix, middle, suffix = code.fim_split(text, rng)
        assert prefix + middle + suffix == text and middle.strip()
    tokens = code.fim_tokens(fim_tokenizer)
    assert tokens[0] == "starcoder"
    enc = code.encode_fim(fim_tokenizer, tokens, "def f(x):\n", "    return x\n", "\nprint(1)\n", 128)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert fim_tokenizer.decode(trained) == "    return x\n" + fim_tokenizer.eos_token
    masked = fim_tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab == -100])
    assert masked.startswith("<fim_prefix>def f(x):\n<fim_suffix>") and masked.endswith("<fim_middle>")
    short = code.encode_fim(fim_tokenizer, tokens, "x = 1\n" * 200, "y\n", "z\n", 64)
    assert short.truncated and len(short.input_ids) == 64 and short.labels[-1] == fim_tokenizer.eos_token_id
