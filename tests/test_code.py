"""Code pieces: code extraction, HumanEval harness, fill-in-the-middle (the sandbox: test_sandbox.py)."""

import random
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kit import code, data, evaluate, sandbox
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


def _fenced(code_text: str) -> str:
    return f"Here is the completed function:\n\n```python\n{code_text.rstrip()}\n```\n\nIt loops once."


def test_humaneval_harness():
    problems = {p.meta["task_id"]: p for p in code.humaneval_examples()}
    assert len(problems) == 164 and "HumanEval/0" in problems
    assert "from typing import List" in problems["HumanEval/0"].meta["header"]
    for p in problems.values():  # every header runs first, whatever shape the answer has
        body = p.messages[-1]["content"].removeprefix("```python\n").removesuffix("```")
        only_def = body[body.index(f"def {p.meta['entry_point']}"):]
        for reply in (_fenced(body), _fenced(only_def)):
            program = code.program_for(p, reply)
            compile(program, p.meta["task_id"], "exec")
            assert program.startswith(p.meta["header"]) and program.rstrip().endswith(body.rstrip()[-20:])
    # 0: `from typing import List`; 10 and 38: helper functions the answer may leave out.
    for task in ("HumanEval/0", "HumanEval/10", "HumanEval/38"):
        p = problems[task]
        header, solution = p.meta["header"], p.messages[-1]["content"]
        assert solution.startswith("```python\n" + header)  # the reference is a fenced answer
        canonical = solution.removeprefix("```python\n" + header).removesuffix("```")
        whole = header + canonical
        only_def = whole[whole.index(f"def {p.meta['entry_point']}"):]  # no imports, no helpers
        replies = {
            "whole function": _fenced(whole),
            "without the prompt's imports and helpers": _fenced(only_def),
            "body only, fenced": _fenced(canonical),
            "body only, bare": canonical,
            "body only, flush left": _fenced(textwrap.dedent(canonical)),
        }
        for what, reply in replies.items():
            outcome = sandbox.run_tests(code.program_for(p, reply), p.meta["tests"])
            assert outcome.passed, (task, what, outcome.reason)
        cut = solution[: len(solution) - len(canonical) // 2 - 3]  # the length limit, mid-block
        assert not sandbox.run_tests(code.program_for(p, cut), p.meta["tests"]).passed, task
        assert not sandbox.run_tests(code.program_for(p, "    return None\n"), p.meta["tests"]).passed


def test_new_tokens_auto():
    assert code.new_tokens(0, "instruct", "humaneval") == 512
    assert code.new_tokens(0, "instruct", "heldout") >= 2 * 80  # built-in answers: <= ~80 tokens
    assert code.new_tokens(0, "fim", "heldout") == 64
    assert code.new_tokens(100, "instruct", "humaneval") == 100
    with pytest.raises(KitError, match="max_new_tokens=-1"):
        code.new_tokens(-1, "instruct", "heldout")


class ScriptedModel(torch.nn.Module):
    """Stands in for a model: `generate` appends scripted token rows (the first reply is the
    row for the first prompt...) and records what it was asked."""

    def __init__(self, rows: list[list[int]], pad: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = None
        self.rows, self.pad, self.calls = rows, pad, []

    def generate(self, input_ids, **kwargs):
        self.calls.append(kwargs)
        rows = self.rows[: input_ids.shape[0]]
        width = max(map(len, rows))
        new = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture
def no_unsloth_modes(monkeypatch):
    from unsloth import FastLanguageModel

    monkeypatch.setattr(FastLanguageModel, "for_inference", staticmethod(lambda m: m))
    monkeypatch.setattr(FastLanguageModel, "for_training", staticmethod(lambda m: m))


def test_pass_at_1_stops_where_the_code_block_closes(tokenizer, no_unsloth_modes):
    problems = code.humaneval_examples(limit=2)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for p in problems:
        # The length limit hit the reply after its block closed: what follows must be cut off
        # (run, it would fail the tests).
        rows.append(enc(p.messages[-1]["content"] + "\n\nassert False\n```python\nraise SystemExit(1)\n"))
    rows[1] = rows[1][: len(rows[0])]  # the second one is cut mid-block (and is the longest:
    assert "\n```" not in tokenizer.decode(rows[1])  # the scripted padding is a stop token)
    model = ScriptedModel(rows, tokenizer.pad_token_id)
    gens = evaluate.generate(model, tokenizer, [evaluate.prompt_of(p) for p in problems], 512,
                             stop_strings=code.STOP_STRINGS)
    assert gens[0].stopped and gens[0].reply == problems[0].messages[-1]["content"]
    assert not gens[1].stopped and not gens[1].reply.endswith("```")
    result, attempts = code.pass_at_1(model, tokenizer, problems, 512, timeout=10)
    assert model.calls[0]["stop_strings"] == code.STOP_STRINGS and model.calls[0]["tokenizer"] is tokenizer
    assert model.calls[0]["max_new_tokens"] == 512
    assert [a.outcome.passed for a in attempts] == [True, False], attempts[0].outcome.reason
    assert result == {"pass_at_1": 0.5, "passed": 1, "problems": 2}
    assert "assert False" not in attempts[0].code and "SystemExit" not in attempts[0].code


def test_tasks_without_tests_are_refused(tmp_path):
    ex = [data.Example([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])]
    with pytest.raises(KitError, match="no `tests` column"):
        code.check_tasks(ex, "d.jsonl")


def test_fim_needs_fim_tokens(tokenizer):
    with pytest.raises(KitError, match="<fim_prefix> <fim_suffix> <fim_middle>"):
        code.fim_tokens(tokenizer)


def test_fim_with_its_defaults_on_cpu_stops_in_seconds_before_loading(tmp_path, capsys):
    """`fim` as generated, on a machine without GPU: its default data (the kit's own sources)
    reads, and model=auto, the embedded SmolLM2, has no FIM tokens: one line naming models
    that have them, from the tokenizer alone, before the memory plan and any weight."""
    from kit import embedded
    from kit.errors import run_cli
    from kit.recipe import recipe

    embedded.ensure_converted(lambda _: None)  # converted once per machine (~35 s), then cached
    started = time.perf_counter()
    code_ = run_cli(recipe("fim").cli, [f"output_dir={tmp_path / 'out'}"])
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code_ == 2 and len(errors) == 1, err
    assert "SmolLM2-135M-Instruct (embedded)'s has none" in errors[0]
    assert "Qwen2.5-Coder, StarCoder2 or DeepSeek-Coder" in errors[0]
    assert "unsloth/Qwen2.5-Coder-1.5B-bnb-4bit, what model=auto picks on a GPU" in errors[0]
    out = " ".join(out.split())
    assert "builtin:kit-sources: " in out and "training holes" in out
    assert "memory plan" not in out and "device:" not in out  # stopped before the model step's plan
    assert seconds < 15, seconds
    assert not (tmp_path / "out").exists()


def test_fim_tokens_are_read_from_the_tokenizer_alone(tiny_fim_model_dir, tmp_path):
    assert code.fim_tokens_before_load(str(tiny_fim_model_dir), "tiny") == (
        "starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KitError, match="^could not read the tokenizer of 'empty'"):
        code.fim_tokens_before_load(str(tmp_path), "empty")


def test_kit_sources_are_the_kits_own_files():
    import kit

    texts = code.read_sources(code.KIT_SOURCES, "content")
    here = sorted(Path(kit.__file__).parent.rglob("*.py"))
    assert len(texts) == len(here) >= 30 and texts[0] == here[0].read_text()


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
    assert fim_tokenizer.decode(trained) == "    return x\n<|endoftext|>"
    masked = fim_tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab == -100])
    assert masked.startswith("<fim_prefix>def f(x):\n<fim_suffix>") and masked.endswith("<fim_middle>")
    short = code.encode_fim(fim_tokenizer, tokens, "x = 1\n" * 200, "y\n", "z\n", 64)
    assert short.truncated and len(short.input_ids) == 64
    assert short.labels[-1] == code.fim_end_id(fim_tokenizer, tokens)


@pytest.fixture(scope="module")
def qwen_coder_tokenizer(tmp_path_factory):
    """Qwen2.5's real tokenizer (tests/families.py) with Qwen2.5-Coder's FIM tokens at their
    real ids (llama.cpp's vocab GGUF names ids 151646+ [PADn]); EOS `<|im_end|>` as in the
    Instruct tokenizer, so the middle's closing `<|endoftext|>` is not the EOS."""
    import families
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen-coder")
    families.tokenizer("qwen2").save_pretrained(folder)
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    for tok_id, name in ((151659, "<|fim_prefix|>"), (151660, "<|fim_middle|>"), (151661, "<|fim_suffix|>")):
        text = text.replace(f'"[PAD{tok_id}]"', f'"{name}"')
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(folder, eos_token="<|im_end|>")
    assert tok.convert_tokens_to_ids("<|fim_middle|>") == 151660 and tok.eos_token == "<|im_end|>"
    return tok


@pytest.mark.parametrize("which", ["qwen", "starcoder"])
def test_fim_truncation_keeps_sentinels_and_the_context_nearest_the_hole(which, request):
    tok = request.getfixturevalue("qwen_coder_tokenizer" if which == "qwen" else "fim_tokenizer")
    tokens = code.fim_tokens(tok)
    assert tokens[0] == which
    end = code.fim_end_id(tok, tokens)
    assert tok.convert_ids_to_tokens(end) == "<|endoftext|>"  # both styles close a middle with it
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    sentinels = [tok.convert_tokens_to_ids(t) for t in tokens[1:]]
    prefix = "".join(f"a{i} = {i}\n" for i in range(300))
    suffix = "".join(f"print(b{i})\n" for i in range(300))
    middle = "    return total\n"

    def check(e, max_len, prefix=prefix, suffix=suffix):
        assert e.truncated and len(e.input_ids) == max_len
        pos = [e.input_ids.index(t) for t in sentinels]
        assert pos[0] == 0 and pos[0] < pos[1] < pos[2] and all(e.input_ids.count(t) == 1 for t in sentinels)
        trained = [t for t, lab in zip(e.input_ids, e.labels) if lab != -100]
        assert trained == enc(middle) + [end] == e.input_ids[pos[2] + 1:]
        assert all(lab == -100 for lab in e.labels[: pos[2] + 1])
        kept_pre, kept_suf = e.input_ids[1: pos[1]], e.input_ids[pos[1] + 1: pos[2]]
        assert kept_pre and kept_pre == enc(prefix)[-len(kept_pre):]  # its end, by the hole
        assert kept_suf == enc(suffix)[: len(kept_suf)]  # its start, by the hole
        return len(kept_pre), len(kept_suf)

    room = 200 - 3 - len(enc(middle)) - 1
    n_pre, n_suf = check(code.encode_fim(tok, tokens, prefix, middle, suffix, 200), 200)
    assert n_pre == room * 3 // 4 and n_suf == room - n_pre  # both long: 3/4 to the prefix
    n_pre, n_suf = check(code.encode_fim(tok, tokens, "x = 1\n", middle, suffix, 200), 200, "x = 1\n")
    assert n_pre == len(enc("x = 1\n")) and n_suf == room - n_pre  # a short prefix leaves room
    n_pre, n_suf = check(code.encode_fim(tok, tokens, prefix, middle, "y()\n", 200), 200, suffix="y()\n")
    assert n_suf == len(enc("y()\n")) and n_pre == room - n_suf
    assert code.encode_fim(tok, tokens, prefix, "x\n" * 300, suffix, 200).input_ids == []  # no room
    whole = code.encode_fim(tok, tokens, "x = 1\n", middle, "y()\n", 200)
    assert not whole.truncated and tok.decode(whole.input_ids[:-1]) == (
        f"{tokens[1]}x = 1\n{tokens[2]}y()\n{tokens[3]}{middle}")


def test_fim_exact_stops_at_the_token_training_closes_the_middle_with(qwen_coder_tokenizer,
                                                                       no_unsloth_modes):
    tok = qwen_coder_tokenizer
    tokens = code.fim_tokens(tok)
    end = code.fim_end_id(tok, tokens)
    middle = "    y = x + 1\n"
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    row = enc(middle) + [end] + enc("junk")
    model = ScriptedModel([row], tok.pad_token_id)
    assert code.fim_exact(model, tok, tokens, [("def f(x):\n", middle, "    return y\n")], 128) == 1.0
    stop = model.calls[0]["eos_token_id"]
    assert end in stop and tok.convert_tokens_to_ids("<|im_end|>") in stop


def test_generate_stop_strings_through_unsloth(tiny_model_dir):
    """transformers' stop strings pass through Unsloth's generate: it stops where they end."""
    from unsloth import FastLanguageModel

    from kit import models
    from kit.choice import resolve_model
    from kit.device import detect_device

    device = detect_device()
    model, tok = models.load(resolve_model(str(tiny_model_dir), device), 128, False)
    FastLanguageModel.for_inference(model)
    text = evaluate.render(tok, [{"role": "user", "content": "Write code"}], add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(device)
    n = enc["input_ids"].shape[1]
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=[])
    free = model.generate(**enc, **kw)[0, n:].tolist()
    stop = tok.decode(free[:3])  # random weights: whatever it writes first
    assert len(free) == 30 and stop
    cut = model.generate(**enc, **kw, stop_strings=[stop], tokenizer=tok)[0, n:].tolist()
    assert len(cut) <= 3 and free[: len(cut)] == cut
    FastLanguageModel.for_training(model)
