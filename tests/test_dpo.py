"""The dpo recipe: each preference format read and told apart, bad pairs refused in one line
before the model loads, the built-in pairs current with their script, and two real runs on the
embedded SmolLM2-135M: one from the base that must raise the held-out preference accuracy, and
a two-step one through the command line that starts from that run's adapter, whose reference
must then be that adapter's model (margins start at 0, the adapter's behaviour present)."""

import importlib.util
import json
import sys

import pytest
from conftest import ROOT, run_recipe, write_jsonl
from test_bad_input import check

from kit import prefs
from kit.errors import KitError, run_cli
from kit.recipe import recipe

Q, A, B = "What is the capital of France?", "Paris.", "Berlin."
USER = {"role": "user", "content": Q}
GOOD = {"role": "assistant", "content": A}
BAD = {"role": "assistant", "content": B}

# One row per format, as users have them; each must read as the same pair.
FORMAT_ROWS = {
    "text_pairs": {"prompt": Q, "chosen": A, "rejected": B},
    "chat_pairs": {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
    "ultrafeedback": {"prompt": Q, "prompt_id": "x1", "chosen": [USER, GOOD], "rejected": [USER, BAD],
                      "messages": [USER, GOOD], "score_chosen": 8.0, "score_rejected": 3.0},
    "full_chat": {"chosen": [USER, GOOD], "rejected": [USER, BAD]},
    "hh_text": {"chosen": f"\n\nHuman: {Q}\n\nAssistant: {A}",
                "rejected": f"\n\nHuman: {Q}\n\nAssistant: {B}"},
}


@pytest.mark.parametrize("fmt", list(FORMAT_ROWS))
def test_each_format_is_detected_and_read(fmt, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [FORMAT_ROWS[fmt]] * 10)
    splits = prefs.load_splits(str(path), eval_fraction=0.2, seed=1)
    assert splits.fmt == fmt
    assert len(splits.train) == 8 and len(splits.test) == 2
    pair = splits.train[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ([USER], [GOOD], [BAD])


def test_multi_turn_conversations_keep_their_shared_history(tmp_path):
    """HH-RLHF: several turns both share, then the replies compared; the prompt is the history."""
    history = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: " + Q
    row = {"chosen": f"{history}\n\nAssistant: {A}", "rejected": f"{history}\n\nAssistant: {B}"}
    pair = prefs.to_pairs([row], "hh")[0][0]
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert pair.prompt[-1]["content"] == Q and pair.chosen == [GOOD] and pair.rejected == [BAD]
    # UltraFeedback scores that disagree with the labels are said, not hidden.
    rows = [dict(FORMAT_ROWS["ultrafeedback"], score_chosen=2.0)] * 10
    splits = prefs.load_splits(str(write_jsonl(tmp_path / "uf.jsonl", rows)), eval_fraction=0.2)
    assert any("score_chosen <= score_rejected" in n for n in splits.notes)


BAD_ROWS = {
    "chat data, not pairs": ({"messages": [USER, GOOD]}, "not preference data"),
    "the same reply twice": ({"prompt": Q, "chosen": A, "rejected": A}, "are the same reply"),
    "no shared prompt": ({"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "Other?"}, BAD]},
                         "share no prompt"),
    "not HH text": ({"chosen": "Paris.", "rejected": "Berlin."}, "is not HH-RLHF text"),
    "a reply that is not the assistant's": ({"prompt": [USER], "chosen": [USER], "rejected": [BAD]},
                                            "must be the assistant's reply"),
    "an unknown role": ({"prompt": [{"role": "robot", "content": Q}], "chosen": [GOOD], "rejected": [BAD]},
                        "unknown role 'robot'"),
    "a number for text": ({"prompt": Q, "chosen": 3, "rejected": B}, "expected text, found int"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_pairs_are_refused(case):
    row, message = BAD_ROWS[case]
    with pytest.raises(KitError, match=message):
        prefs.to_pairs([row] * 3, "d.jsonl")


PAIRS = [FORMAT_ROWS["text_pairs"]] * 5
CLI_CASES = {
    "chat data given to dpo": ([{"messages": [USER, GOOD]}] * 5, [], "not preference data"),
    "a pair with the same replies": (PAIRS[:4] + [{"prompt": Q, "chosen": A, "rejected": A}],
                                     [], "example 5: `chosen` and `rejected` are the same reply"),
    "an unknown loss": (PAIRS, ["loss_type=sigmoid,dpo"], "loss_type='sigmoid,dpo'"),
    "beta of zero": (PAIRS, ["beta=0"], "beta=0.0 is out of range"),
    "an adapter folder that is not one": (PAIRS, ["adapter={tmp}"],
                                          "no adapter_config.json there"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_input_is_one_line_before_the_model_loads(case, tmp_path, capsys):
    rows, args, message = CLI_CASES[case]
    out = tmp_path / "out"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = run_cli(recipe("dpo").cli, [f"data={data}", *(a.format(tmp=tmp_path) for a in args),
                                       f"output_dir={out}"])
    captured = capsys.readouterr()
    check(code, captured.err, captured.out, message, out)
    assert "Model" not in captured.out  # refused at the data step


def test_builtin_pairs_are_current_with_their_script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_dpo_data", ROOT / "scripts" / "make_dpo_data.py")
    gen = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_dpo_data", gen)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "OUT", tmp_path)
    gen.main()
    for name in ("prefs_train.jsonl", "prefs_test.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "kit" / "builtin" / name).read_text(), (
            "run `python scripts/make_dpo_data.py` and commit kit/builtin/")
    test = prefs.load_splits("builtin:prefs").test
    assert sum(p.expect is not None for p in test) == 24 and sum(p.reject is not None for p in test) == 16


# ---------------------------------------------------------------- real runs (SmolLM2-135M, CPU)


def finished(proc, out) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Run summary" in proc.stdout
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def from_base(tmp_path_factory):
    """Three steps on the built-in pairs from the base (the first at learning rate 0, warming
    up): the improvement run."""
    out = tmp_path_factory.mktemp("dpo") / "base"
    proc = run_recipe("dpo", "max_steps=3", "warmup_steps=1", "eval_samples=2", "max_new_tokens=8",
                      "export=adapter", f"output_dir={out}")
    return finished(proc, out), out


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy(from_base):
    m, out = from_base
    before, after = m["before"], m["after"]
    # Before training the policy is its reference: every pair ties (chance), no margin.
    assert before["preference_accuracy"] == 0.5 and before["reward_margin"] == 0.0
    assert after["preference_accuracy"] > 0.75 and after["reward_margin"] > 0.1
    assert m["improved"]["preference_accuracy"] is True and m["improved"]["reward_margin"] is True
    assert before.keys() >= {"loss", "check_rate", "reply_f1", "stopped_at_eos"}  # the chat checks
    assert m["dpo"] == {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "format": "text_pairs",
                        "reference": m["dpo"]["reference"]} and "the base" in m["dpo"]["reference"]
    assert m["train"]["steps"] == 3 and m["data"] == {"source": "builtin:prefs", "train": 194, "held_out": 40}
    # The exported adapter is the trained one alone: TRL's frozen reference copy is not in it.
    assert m["exports"]["adapter"]["ok"] and not (out / "adapter" / "ref").exists()


@pytest.mark.slow
def test_two_steps_from_an_adapter_use_it_as_the_reference(from_base, tmp_path):
    """adapter=: the run starts from that adapter and compares against it. Its before-training
    margin is 0 (against the base the same model scored the previous run's positive margin),
    and its held-out loss is the one that adapter ended with."""
    base_m, base_out = from_base
    out = tmp_path / "sft"
    m = finished(run_recipe("dpo", "max_steps=2", f"adapter={base_out / 'adapter'}", "eval_samples=2",
                            "max_new_tokens=8", "beta=0.2", "loss_type=sigmoid,sft", "export=adapter",
                            f"output_dir={out}"), out)
    before = m["before"]
    assert base_m["after"]["reward_margin"] > 0.1  # this model, against the base
    assert before["reward_margin"] == 0.0 and before["preference_accuracy"] == 0.5  # against itself
    assert before["loss"] == pytest.approx(base_m["after"]["loss"], abs=2e-3)  # the adapter is on
    assert "the model it starts from" in m["dpo"]["reference"] and m["dpo"]["loss_type"] == ["sigmoid", "sft"]
    assert m["train"]["steps"] == 2 and m["after"]["reward_margin"] != 0.0
    adapter = m["exports"]["adapter"]  # loaded in a fresh process with plain PEFT, answers, stops
    assert adapter["ok"] and adapter["stopped"], adapter
    assert not (out / "adapter" / "ref").exists()  # TRL's reference copy is not exported


def test_the_memory_plan_counts_two_sequences_a_pair():
    """A micro-batch of n pairs runs 2n sequences (chosen and rejected): planned as the tokens of
    2n, so the same card fits half the pairs per pass that it fits conversations."""
    from kit import memory, plan
    from kit.device import Device
    from kit.recipe import recipe

    chat, dpo = recipe("chat").ChatConfig, recipe("dpo").DpoConfig
    card = Device("cuda", "NVIDIA H100", 80.0, True)
    settings = {"model": "unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "batch_size": 16, "gpu_memory_gib": 8.0,
                "max_seq_length": 2048, "gradient_checkpointing": "false"}
    shape = plan.Shape.from_config(plan.LLAMA_1B)
    chosen = {}
    for config in (chat, dpo):
        want = memory.Request.of(config(**settings))
        chosen[config] = memory.plan_memory(want, card, shape, 2048, True)[0]
    assert memory.Request.of(dpo()).sequences_per_row == 2
    assert memory.Request.of(chat()).sequences_per_row == 1
    assert chosen[dpo].setting.tokens == chosen[dpo].setting.micro_batch * 2 * 2048
    assert chosen[dpo].setting.micro_batch == chosen[chat].setting.micro_batch // 2
