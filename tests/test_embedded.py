"""The embedded SmolLM2-135M-Instruct: converted from its GGUF with the tokenizer repaired."""

import json

from kit import embedded


def test_tokenizer_is_smollm2_byte_level_bpe(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.bos_token_id == 1 and tokenizer.pad_token_id == 2
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is False
    assert spec["decoder"]["type"] == "ByteLevel"
    kinds = [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]]
    assert kinds == ["Digits", "ByteLevel"]


def test_tokenizer_round_trips_text_and_specials(tokenizer):
    text = "<|im_start|>user\nCafé 2024, naïve 你好!\n\tdef f(x): return x**2<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and 2 in ids
    assert tokenizer.decode(ids) == text
    # digits are split one by one, as SmolLM2's own tokenizer does
    digits = tokenizer("2024", add_special_tokens=False)["input_ids"]
    assert len(digits) == 4


def test_chat_template_ends_turns_with_eos(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "yo"}], tokenize=False)
    assert text.endswith("<|im_start|>assistant\nyo<|im_end|>\n")


def test_converted_folder_is_cached_and_consistent():
    path = embedded.ensure_converted(progress=lambda _: None)
    assert embedded.ensure_converted(progress=lambda _: None) == path  # second call: cache hit
    config = json.loads((path / "config.json").read_text())
    assert config["eos_token_id"] == 2 and "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    tok = json.loads((path / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".convert-")]
