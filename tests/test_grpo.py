"""The grpo recipe: a two-step run through the command line, an improvement run on the built-in
sums, each refusal as one line (exit 2), a user's reward function called with the documented
arguments, and the memory plan's generation term."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import run_recipe, write_jsonl

from kit import plan

SMALL = ("eval_limit=4", "batch_size=4", "num_generations=2",
         "max_completion_length=24", "export=adapter", "save_steps=0")


def refused(proc, *words: str) -> str:
    """A one-line `error:` refusal, exit 2, no traceback; the line."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


RECORDER = textwrap.dedent('''
    import json, os

    def shortest(prompts, completions, answer, **kwargs):
        """Rewards shorter replies; records what it was called with."""
        with open(os.environ["REWARD_LOG"], "a") as f:
            f.write(json.dumps({"prompts": prompts, "completions": completions, "answer": answer,
                                "keys": sorted(kwargs)}) + "\\n")
        return [-float(len(c[-1]["content"])) / 50 for c in completions]
''')


def test_two_steps_through_the_command_line(tmp_path):
    """Two optimizer steps on the built-in sums with a user's reward added to the defaults:
    metrics.json holds the held-out rewards (each function's too) before and after, the
    baseline sample and each step's rewards as TRL logged them; the user's function was
    called with prompts, completions (conversations) and the data's `answer` column."""
    (tmp_path / "myrewards.py").write_text(RECORDER)
    log = tmp_path / "calls.jsonl"
    out = tmp_path / "out"
    import os

    env = {**os.environ, "REWARD_LOG": str(log)}
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo.py"), "max_steps=2", *SMALL,
                           "reward=correct_reward,format_reward,myrewards:shortest",
                           f"output_dir={out}"], capture_output=True, text=True, timeout=1800,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    names = ["correct_reward", "format_reward", "shortest"]
    assert m["rewards"] == names and m["train"]["steps"] == 2
    for when in ("before", "after"):
        assert {"reward", "exact_match", *(f"reward/{n}" for n in names)} <= m[when].keys()
    assert len(m["train_rewards"]["reward"]) == 2
    assert all(len(m["train_rewards"][f"reward/{n}"]) == 2 for n in names)
    assert m["baseline"]["completions"] == 8 and m["baseline"]["groups_with_different_rewards"] >= 1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    # The baseline sample (4 prompts × 2), two training steps (4 each), two held-out passes (4).
    assert [len(c["completions"]) for c in calls] == [8, 4, 4, 4, 4]
    for c in calls:
        assert len(c["prompts"]) == len(c["completions"]) == len(c["answer"])
        assert all(p[-1]["role"] == "user" and "+" in p[-1]["content"] for p in c["prompts"])
        assert all(comp[0]["role"] == "assistant" for comp in c["completions"])
    assert all({"completion_ids", "trainer_state", "log_metric"} <= set(c["keys"]) for c in calls)
    assert all(c["answer"][0] == str(eval(c["prompts"][0][-1]["content"].split("?")[0][8:]))
               for c in calls)


@pytest.mark.slow
def test_grpo_raises_the_reward_on_the_builtin_sums(tmp_path):
    # The bar: the mean training reward rises and the held-out score does not fall.
    out = tmp_path / "out"
    proc = run_recipe("grpo", "max_steps=20", "export=adapter", "save_steps=0",
                      f"output_dir={out}", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["before"], m["after"]
    steps = m["train_rewards"]["reward"]
    assert len(steps) == 20
    first, last = sum(steps[:7]) / 7, sum(steps[-7:]) / 7
    assert last > first, steps
    assert after["exact_match"] >= before["exact_match"], (before, after)


@pytest.mark.slow
def test_two_steps_on_code_tasks_from_the_code_recipes_adapter(code_run, tmp_path):
    """builtin:pytasks, rewarded by running each completion's tests in the sandbox, starting from
    the code recipe's adapter (the shape and weights it saved; tests/test_adapters.py shows the
    model starts with that adapter's logits): completions long enough for a function (the
    default max_completion_length for `tests` data), something to learn in the baseline sample,
    the held-out pass@1 before and after, and the trained adapter saved."""
    code_out, code_proc = code_run
    assert code_proc.returncode == 0, code_proc.stderr[-3000:]
    out = tmp_path / "out"
    proc = run_recipe("grpo", "data=builtin:pytasks", f"adapter={code_out / 'adapter'}", "max_steps=2",
                      "eval_limit=4", "batch_size=4", "num_generations=4", "export=adapter", "save_steps=0",
                      f"output_dir={out}", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = " ".join(proc.stdout.split())  # the console wraps its lines
    assert "starting from the adapter in" in said and "(r=16, alpha=16, lora; its own shape" in said
    # A trained adapter trains further at a tenth of a new one's rate (at 1e-3 pass@1 collapsed).
    assert "learning rate 0.0001 (a tenth of a new adapter's" in said
    m = json.loads((out / "metrics.json").read_text())
    assert m["rewards"] == ["code_reward", "code_format_reward"] and m["train"]["steps"] == 2
    for when in ("before", "after"):
        assert {"pass_at_1", "reward/code_reward", "reward/code_format_reward"} <= m[when].keys()
    # The code recipe's adapter writes a fenced block that parses, and ends it, within 256 tokens.
    assert m["before"]["reward/code_format_reward"] > 0 and m["baseline"]["truncated"] <= 4, m["baseline"]
    assert m["baseline"]["groups_with_different_rewards"] >= 1
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("args, words", [
    (("batch_size=6", "num_generations=4"),
     ("batch_size=6 does not divide into groups of num_generations=4",)),
    (("reward=nosuchmodule:fn",), ("reward=nosuchmodule:fn", "could not import")),
])
def test_refused_before_the_model_loads(tmp_path, args, words):
    proc = run_recipe("grpo", *args, f"output_dir={tmp_path / 'out'}", timeout=300)
    refused(proc, *words)
    assert "Model" not in proc.stdout  # stopped before the model step
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keys, match", [
    ({"generation_batch_size": 12}, "generation_batch_size=12 is not a multiple of batch_size=8"),
    ({"generation_batch_size": 18, "batch_size": 6, "num_generations": 4},
     "generation_batch_size=18 does not divide into groups of num_generations=4"),
    ({"num_generations": 1, "batch_size": 4}, "needs 2 or more"),
    ({"max_completion_length": 512}, "leaves no room for the prompt"),
])
def test_groups_that_do_not_divide_are_refused(keys, match):
    from kit.recipes.grpo import GrpoRecipeConfig

    from kit import rl
    from kit.errors import KitError

    with pytest.raises(KitError, match=match):
        rl.check_groups(GrpoRecipeConfig(**keys))


@pytest.mark.parametrize("reward, match", [
    ("kit.rl:name_of", "name_of.* cannot be called as TRL calls it"),
    ("kit.rl:TRL_KEYWORDS", "not a function"),
    ("kit.rl:nothing_here", "'kit.rl' has no 'nothing_here'"),
    ("nonsense", "expected module:function"),
    ("code_reward", "reads the `tests` column, which builtin:sums lacks"),
    ("correct_reward,correct_reward", "share a name"),
])
def test_bad_rewards_are_refused_before_the_model_loads(reward, match):
    from kit.recipes.grpo import GrpoRecipeConfig

    from kit import rl
    from kit.errors import KitError

    cfg = GrpoRecipeConfig(reward=reward)
    with pytest.raises(KitError, match=match):
        rl.load_rewards(cfg, rl.load_prompts(cfg))


def test_refused_when_every_completion_gets_the_same_reward(tmp_path):
    (tmp_path / "flat.py").write_text("def same(prompts, completions, **kw):\n"
                                      "    return [1.0] * len(completions)\n")
    proc = run_recipe("grpo", "reward=flat:same", *SMALL,
                      f"output_dir={tmp_path / 'out'}",
                      timeout=1200, cwd=tmp_path)
    refused(proc, "nothing to learn", "got the same reward (1.0)")
    assert not (tmp_path / "out" / "adapter").exists()


def test_refused_when_most_completions_are_cut(tmp_path):
    rows = write_jsonl(tmp_path / "long.jsonl", [
        {"prompt": f"Write a long story about the number {i}, in at least ten sentences.", "answer": str(i)}
        for i in range(40)])
    proc = run_recipe("grpo", f"data={rows}", "max_completion_length=4", "eval_limit=4", "baseline_prompts=2",
                      f"output_dir={tmp_path / 'out'}", timeout=1200)
    refused(proc, "ran to max_completion_length=4", "raise max_completion_length")


def test_a_user_reward_gets_the_documented_arguments():
    """kit.rl.score calls a reward as TRL does: prompts and completions as conversations, the
    data's columns as keyword lists, TRL's own keywords; one reward per completion."""
    from kit import rl

    seen = {}

    def mine(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, keys=sorted(kwargs))
        return [float(rl.completion_text(c) == a) for c, a in zip(completions, answer)]

    rows = [{"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4", "level": 1},
            {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6", "level": 2}]
    got = rl.score([mine], rows, [[{"role": "assistant", "content": "4"}],
                                  [{"role": "assistant", "content": "7"}]])
    assert got == {"mine": [1.0, 0.0]}
    assert seen["prompts"] == [r["prompt"] for r in rows] and seen["answer"] == ["4", "6"]
    assert seen["keys"] == sorted(["level", *rl.TRL_KEYWORDS])


def test_builtin_rewards_tell_answers_apart():
    from kit import rl

    said = [[{"role": "assistant", "content": t}] for t in
            ("12", "7 + 5 = 12", "7 + 5 = 13",
             "The sum of 7 and 5 is twelve, which is a nice number to get here.")]
    assert rl.correct_reward(None, said, ["12"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert rl.format_reward(None, said) == [0.5, 0.25, 0.25, 0.0]


def test_the_plan_counts_generation():
    """More completions sampled at once, or longer ones, plan a bigger peak: the KV cache and
    logits of the generation batch, when they outgrow the training step's activations."""
    shape = plan.Shape.from_config({"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
                                    "num_hidden_layers": 30, "num_attention_heads": 9,
                                    "num_key_value_heads": 3, "vocab_size": 49152,
                                    "tie_word_embeddings": True})

    def peak(rows: int, seq: int) -> float:
        return plan.choose(shape, budget_gib=80, batch_size=8, seq=seq, micro_batch=1,
                           generation_rows=rows).estimate.total

    without = plan.choose(shape, budget_gib=80, batch_size=8, seq=256, micro_batch=1).estimate.total
    assert peak(8, 256) >= without
    assert peak(512, 256) > peak(256, 256) > without
    assert peak(512, 512) > peak(512, 256)
    p = plan.choose(shape, budget_gib=80, batch_size=8, seq=256, micro_batch=1, generation_rows=512)
    assert "generation" in p.estimate.describe()


def test_plan_shows_the_generation_batch():
    proc = run_recipe("grpo", "--plan", "model=smollm2-135m", "gpu_memory_gib=16", "batch_size=64",
                      "num_generations=8",
                      "max_seq_length=1024", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "generation" in " ".join(proc.stdout.split())
