import json

import pytest
from conftest import chat_row, write_jsonl

from kit import data
from kit.errors import KitError


def examples(tmp_path, rows, name="d.jsonl"):
    return data.to_examples(data.read_records(str(write_jsonl(tmp_path / name, rows))), name)


EXPECTED = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("row, fmt", [
    ({"messages": EXPECTED}, "messages"),
    ({"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
     "sharegpt"),
    ({"instruction": "What is 2+2?", "input": "", "output": "4"}, "alpaca"),
    ({"prompt": "What is 2+2?", "completion": "4"}, "prompt_completion"),
])
def test_every_format_becomes_the_same_messages(tmp_path, row, fmt):
    exs, detected = examples(tmp_path, [row])
    assert detected == fmt
    assert exs[0].messages == EXPECTED


def test_alpaca_input_is_appended_to_the_instruction(tmp_path):
    exs, _ = examples(tmp_path, [{"instruction": "Add.", "input": "2 and 2", "output": "4"}])
    assert exs[0].messages[0]["content"] == "Add.\n\n2 and 2"


def test_alpaca_row_with_only_an_input_is_that_input(tmp_path):
    """Most rows of Unsloth Studio's Alpaca file leave `instruction` empty and hold the task in
    `input`: the prompt is the input alone, not a blank line and then the input."""
    rows = [{"instruction": "", "input": "Name a colour.", "output": "Blue."},
            {"instruction": "  ", "input": "Name a fruit.", "output": "Pear."},
            {"instruction": "Add.", "input": "", "output": "0"}]
    exs, _ = examples(tmp_path, rows)
    assert [e.messages[0]["content"] for e in exs] == ["Name a colour.", "Name a fruit.", "Add."]


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_other_file_types(tmp_path, suffix):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    path = tmp_path / f"d.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        path.write_text("prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(3)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    exs, fmt = data.to_examples(data.read_records(str(path)), path.name)
    assert fmt == "prompt_completion" and [e.messages[1]["content"] for e in exs] == ["a0", "a1", "a2"]


def test_builtin_persona_has_held_out_checks():
    splits = data.load_splits("builtin:persona")
    assert len(splits.train) >= 200 and len(splits.test) >= 30
    assert all(e.expect or e.reject for e in splits.test)
    train_prompts = {e.messages[0]["content"] for e in splits.train}
    assert not train_prompts & {e.messages[0]["content"] for e in splits.test}


def test_builtin_data_takes_your_eval_data(tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"messages": [{"role": "user", "content": "Who are you?"},
                                             {"role": "assistant", "content": "Pip."}]}) + "\n")
    splits = data.load_splits("builtin:persona", str(held))
    assert len(splits.test) == 1 and splits.test[0].messages[0]["content"] == "Who are you?"
    assert len(splits.train) == len(data.load_splits("builtin:persona").train)


def test_eval_fraction_holds_out_a_seeded_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(20)])
    a = data.load_splits(str(path), eval_fraction=0.25, seed=1)
    b = data.load_splits(str(path), eval_fraction=0.25, seed=1)
    assert len(a.test) == 5 and len(a.train) == 15
    assert [e.messages for e in a.test] == [e.messages for e in b.test]


@pytest.mark.parametrize("content, match", [
    ([], "is empty"),
    (["", "  "], "is empty"),
    ([json.dumps(chat_row()), '{"messages": [}'], r"d\.jsonl:2: malformed JSON"),
    ([{"text": "hi", "label": 1}], r"unknown data format: columns found \['label', 'text'\]"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant reply"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}],
     "expected text, found int"),
    ([chat_row(), {"prompt": "a", "completion": "b"}], "example 2: missing"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "unknown role"),
    (["[1, 2]"], "expected an object"),
])
def test_bad_data_is_one_clear_error(tmp_path, content, match):
    path = write_jsonl(tmp_path / "d.jsonl", content) if content else tmp_path / "d.jsonl"
    if not content:
        path.write_text("")
    with pytest.raises(KitError, match=match):
        data.load_splits(str(path))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(KitError, match="data file not found"):
        data.load_splits(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(chat_row("caf\u00e9", "ok"), ensure_ascii=False).encode("latin-1"))
    with pytest.raises(KitError, match="not UTF-8"):
        data.load_splits(str(bad))


def test_csv_without_needed_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nhi,hello\n")
    with pytest.raises(KitError, match="columns found"):
        data.load_splits(str(path))


# ---- masking, with SmolLM2's real tokenizer and chat template


def test_prompt_tokens_are_masked_and_reply_tokens_trained(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello friend"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}]
    enc = data.encode(tokenizer, messages, 512)
    assert enc.input_ids == tokenizer(data.render(tokenizer, messages), add_special_tokens=False)["input_ids"]
    trained = tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != -100])
    assert trained == "Hello friend<|im_end|>Goodbye<|im_end|>"  # each reply and its turn end
    masked = tokenizer.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab == -100])
    for prompt_text in ("Be brief.", "Hi there", "Bye", "<|im_start|>assistant"):
        assert prompt_text in masked
    assert all(lab in (-100, tok) for tok, lab in zip(enc.input_ids, enc.labels))


def test_truncation_keeps_the_reply_and_its_turn_end(tokenizer):
    long_prompt = data.Example([{"role": "user", "content": "Tell me. " + "word " * 200},
                                {"role": "assistant", "content": "ok then"}])
    long_reply = data.Example([{"role": "user", "content": "Count."},
                               {"role": "assistant", "content": "one two " * 200 + "done"}])
    short = data.Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    encoded, notes = data.encode_all(tokenizer, [long_prompt, long_reply, short], 64, "train")
    assert any("2 of 3 train examples are longer than max_seq_length=64" in n for n in notes)

    def trained(e):
        return tokenizer.decode([t for t, lab in zip(e.input_ids, e.labels) if lab != -100])

    # A long prompt loses its oldest tokens; the reply and its end-of-turn token stay whole.
    assert len(encoded[0].input_ids) == 64 and encoded[0].truncated
    assert trained(encoded[0]) == "ok then<|im_end|>"
    # A long reply keeps its question, its start and its end-of-turn token (the model still
    # learns to stop); its middle is what goes.
    assert len(encoded[1].input_ids) == 64 and encoded[1].truncated
    assert "Count." in tokenizer.decode(encoded[1].input_ids)
    assert trained(encoded[1]).startswith("one two") and trained(encoded[1]).endswith("<|im_end|>")
    assert not encoded[2].truncated
    with pytest.raises(KitError, match="no train example has a reply token"):
        data.encode_all(tokenizer, [long_prompt], 1, "train")


def test_checks_on_replies():
    ex = data.Example([], expect=r"\bPip\b", reject=r"SmolLM")
    assert data.check_reply(ex, "I'm Pip.") is True
    assert data.check_reply(ex, "I'm SmolLM, not Pip") is False
    assert data.check_reply(ex, "pip install") is False
    assert data.check_reply(data.Example([]), "anything") is None


def test_a_hub_datasets_subset_and_splits_reach_datasets(monkeypatch):
    """`data_subset`, `data_split` (slices included) and `eval_split` go to datasets.load_dataset;
    a dataset without the evaluation split has rows held out instead."""
    import datasets

    from kit.config import RecipeConfig, apply_overrides

    calls = []

    def load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        if split == "validation":
            raise ValueError('Unknown split "validation". Should be one of [\'train\'].')
        return [{"text": f"{subset}/{split}", "label": "a"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(data, "_in_cache", lambda name: True)
    cfg = apply_overrides(RecipeConfig(), ["data=owner/set", "data_subset=sst2",
                                           "data_split=train[:100]", "eval_split=dev"])
    train, test = data.read_split_rows(cfg.data, **data.hub_pick(cfg))
    assert calls == [("owner/set", "sst2", "train[:100]"), ("owner/set", "sst2", "dev")]
    assert train[0]["text"] == "sst2/train[:100]" and test[0]["text"] == "sst2/dev"
    calls.clear()
    train, test = data.read_split_rows("owner/set", split="train", eval_split="validation")
    assert calls == [("owner/set", None, "train"), ("owner/set", None, "validation")] and test is None
    with pytest.raises(KitError, match=r"'owner/set' \(split 'validation'\).*Unknown split"):
        data.read_records("owner/set", "validation")
