"""The family matrix: Llama 3, Qwen2.5, Qwen3, Phi-3, Mistral and Gemma, each with its real
tokenizer and chat template (tests/families.py) on a tiny model of its architecture.

For each family: the tokenizer agrees with llama.cpp's; the stop set holds the token that ends
its turns; the trained-on tokens are exactly the replies and their turn end, also when a row
is cut; and a model taught one conversation (full parameters, in a fixture) goes through the
chat recipe with real Unsloth and stops at that family's turn end in the kit's evaluation, in
the adapter and merged exports (plain peft/transformers) and in its GGUF (llama.cpp).
"""

from __future__ import annotations

import json

import families
import pytest
from conftest import teach, write_jsonl
from families import FAMILIES

from kit import data, stops

NAMES = list(FAMILIES)
CONVERSATION = [
    {"role": "system", "content": "You are Pip."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! I am Pip."},
    {"role": "user", "content": "What can you do?"},
    {"role": "assistant", "content": "I answer questions, briefly."},
]
SPECIAL = {  # (BOS, EOS) a converted tokenizer must carry; conversions have got these wrong
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>"), "qwen2": ("<|endoftext|>", "<|endoftext|>"),
    "qwen3": ("<|endoftext|>", "<|endoftext|>"), "phi3": ("<s>", "<|endoftext|>"),
    "mistral": ("<s>", "</s>"), "gemma": ("<bos>", "<eos>"),
}


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return FAMILIES[request.param], families.tokenizer(request.param)


def test_tokenizer_matches_llama_cpp(family):
    fam, tok = family
    cases = families.llama_cpp_cases(fam.vocab)
    assert len(cases) > 30
    wrong = [text for text, ids in cases if tok(text, add_special_tokens=False)["input_ids"] != ids]
    assert not wrong, wrong
    assert (tok.bos_token, tok.eos_token) == SPECIAL[fam.name]


def test_stop_set_holds_the_turn_end(family):
    fam, tok = family
    assert stops.turn_end(tok) == fam.turn_end
    from transformers import GenerationConfig

    # A checkpoint whose generation config lists only the tokenizer's EOS still stops at the
    # end of its turn; one that lists its stops keeps them all.
    only_eos = GenerationConfig(eos_token_id=tok.eos_token_id)
    listed = GenerationConfig(eos_token_id=[tok.convert_tokens_to_ids(t) for t in fam.generation_eos])
    assert fam.turn_end in stops.stop_tokens(tok, stops.stop_ids(tok, only_eos))
    every = set(stops.stop_tokens(tok, stops.stop_ids(tok, listed)))
    assert every == set(fam.generation_eos) | {fam.turn_end}


def test_trained_tokens_are_exactly_the_replies_and_their_turn_end(family):
    fam, tok = family
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        enc = data.encode(tok, conversation, 1024)
        runs = families.reply_text(tok, enc.input_ids, enc.labels)
        runs[-1] = families.strip_think(runs[-1]) if fam.name == "qwen3" else runs[-1]
        assert runs == [m["content"] + fam.turn_end for m in conversation if m["role"] == "assistant"]
        # the prompt side holds every user turn and no reply
        prompt = tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab == -100])
        assert "What can you do?" in prompt and "briefly" not in prompt


def test_a_cut_row_keeps_its_turn_end(family):
    fam, tok = family
    long = [{"role": "user", "content": "Count for me."},
            {"role": "assistant", "content": "one two three " * 60 + "done."}]
    enc = data.encode(tok, long, 48)
    assert enc.truncated and len(enc.input_ids) <= 48
    trained = families.reply_text(tok, enc.input_ids, enc.labels)
    assert len(trained) == 1 and trained[0].endswith(fam.turn_end)
    assert "Count for me." in tok.decode(enc.input_ids)


# ------------------------------------------------------------------ end to end, per family

TAUGHT = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Pip."}]
# llama.cpp's converter reads a Gemma 3 checkpoint's vocabulary from its SentencePiece
# tokenizer.model; the fixture has Gemma 4's BPE tokenizer.json on the Gemma 3 architecture,
# a pairing no real checkpoint has, whose pre-tokenizer the converter does not recognise.
NO_GGUF = {"gemma"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_chat_recipe_stops_at_each_familys_turn_end(name, tmp_path):
    from kit.recipe import recipe

    fam = FAMILIES[name]
    tok = families.tokenizer(name)
    model_dir = families.tiny_model(name, tmp_path / "model", tok)
    teach(model_dir, tok, [TAUGHT])
    rows = [{"messages": TAUGHT, "expect": r"\bPip\b"}] * 8
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    held = write_jsonl(tmp_path / "held.jsonl", rows[:2])
    chat = recipe("chat")
    out = tmp_path / "out"
    metrics = chat.main(chat.ChatConfig(
        model=str(model_dir), data=str(train), eval_data=str(held), output_dir=str(out),
        max_steps=2, batch_size=2, learning_rate=1e-5, warmup_steps=0, save_steps=0,
        eval_samples=2, max_new_tokens=24, max_seq_length=128,
        export="both" if name in NO_GGUF else "all"))

    # The kit's own evaluation stops at the turn end, before and after training.
    for when in ("before", "after"):
        assert metrics[when]["stopped_at_eos"] == 1.0, metrics[when]
        assert metrics[when]["check_rate"] == 1.0, metrics[when]
    # Each export answers and stops on its own, at this family's turn end.
    exports = metrics["exports"]
    for kind in ("adapter", "merged"):
        assert exports[kind]["ok"] and exports[kind]["stop_token"] == fam.turn_end, exports[kind]
        assert "Pip" in exports[kind]["reply"]
    # What other tools read: generation_config.json and the Ollama Modelfile list the turn end.
    saved = json.loads((out / "merged" / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids(fam.turn_end) in saved["eos_token_id"]
    if name not in NO_GGUF:
        assert exports["gguf"]["ok"] and "Pip" in exports["gguf"]["reply"], exports["gguf"]
        assert f'PARAMETER stop {json.dumps(fam.turn_end)}' in (out / "gguf" / "Modelfile").read_text()
