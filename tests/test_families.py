"""The family table (kit/families.py) against transformers; and the family matrix: Llama 3,
Qwen2.5, Qwen3, Phi-3, Mistral and Gemma, each with its real tokenizer and chat template
(tests/families.py) on a tiny model of its architecture.

For each family: the tokenizer agrees with llama.cpp's; the stop set holds the token that ends
its turns; the trained-on tokens are exactly the replies and their turn end, also when a row
is cut; and a model taught one conversation (full parameters, in a fixture) goes through the
chat recipe with real Unsloth and stops at that family's turn end in the kit's evaluation, in
the adapter and merged exports (plain peft/transformers) and in its GGUF (llama.cpp).
"""

from __future__ import annotations

import ast
import json

import families
import pytest
from conftest import ROOT, chat_row, teach, write_jsonl
from families import FAMILIES

from kit import data, plan, stops
from kit import families as table
from kit.config import RecipeConfig, apply_overrides
from kit.errors import run_cli
from kit.recipe import recipe

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


# ------------------------------------------------------------------ the family table
# kit/families.py is the one place that knows, per config.json model_type, a decoder layer's
# projections: what lora.target_modules may name and what the memory plan counts.

TYPES = sorted(table.BY_TYPE)


def _meta_model(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    if getattr(config, "text_config", None) is not None:
        return config, None  # multimodal: its decoder is the text_config's own model_type
    with torch.device("meta"):
        return config, AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("model_type", TYPES)
def test_each_family_is_what_transformers_builds(model_type):
    """For every model_type in the table, transformers' model of it has exactly the table's
    projections (the names the target check allows), and the memory plan, reading its config,
    counts exactly its weights (norms and biases aside: a few thousand at 7B)."""
    import torch

    family = table.BY_TYPE[model_type]
    config, model = _meta_model(model_type)
    if model is None:
        assert config.text_config.model_type in family.types
        return
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    assert linear == set(family.targets)
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if "norm" not in n and not n.endswith(".bias"))
    assert plan.Shape.from_config(config.to_dict()).params == weights


def _model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def second_tables(sources: dict[str, str], types: set[str]) -> list[str]:
    """`file:line: value` for every string literal naming a model_type outside kit/families.py."""
    found = []
    for name, source in sources.items():
        if name.endswith("kit/families.py"):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in types:
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    return found


def test_no_second_table_of_model_types():
    """No module of the kit or recipe names a model_type: a per-family fact (target modules, a
    plan layout, FIM tokens, a template) lives in kit/families.py or the tables disagree."""
    sources = {str(p.relative_to(ROOT)): p.read_text()
               for p in sorted([*(ROOT / "kit").glob("*.py"), *(ROOT / "recipes").glob("*.py")])}
    assert "kit/families.py" in sources
    assert second_tables(sources, _model_types()) == []


def test_the_second_table_check_finds_one():
    """The scan itself can fail: a module with its own table of layouts is reported."""
    other = 'FUSED = frozenset({"phi3"})\n\ndef f(kind):\n    return kind == "starcoder2"\n'
    sources = {"kit/families.py": 'X = {"llama": 1}\n', "kit/other.py": other}
    found = second_tables(sources, _model_types())
    assert found == ["kit/other.py:1: 'phi3'", "kit/other.py:4: 'starcoder2'"]


def test_fim_styles_and_families_agree():
    used = {f.fim for f in table.FAMILIES if f.fim}
    assert used == set(table.FIM_STYLES)
    assert table.fim_models() == "Qwen2.5-Coder, StarCoder2 or DeepSeek-Coder"


STARCODER2_3B = {"model_type": "starcoder2", "hidden_size": 3072, "intermediate_size": 12288,
                 "num_hidden_layers": 30, "num_attention_heads": 24, "num_key_value_heads": 2,
                 "vocab_size": 49152, "tie_word_embeddings": True}


def test_starcoder2_gets_a_plan(tmp_path, capsys):
    """StarCoder2 (what docs/fim.md names) is planned: `make plan` for StarCoder2-3B's config
    on a 15 GiB T4, without its weights."""
    from kit.showplan import show_plan

    (tmp_path / "config.json").write_text(json.dumps(STARCODER2_3B))
    shape = plan.Shape.from_config(STARCODER2_3B)
    # StarCoder2-3B's 3,030,371,328 parameters (transformers' model of this config), less its
    # norms' and biases' 1,035,264.
    assert shape.params == 3_030_371_328 - 1_035_264
    cfg = apply_overrides(RecipeConfig(), [f"model={tmp_path}", "gpu_memory_gib=15"])
    chosen = show_plan(cfg)
    out = " ".join(capsys.readouterr().out.split())
    assert chosen.fits and "memory plan (gpu_memory_gib=15)" in out and "no memory plan" not in out


@pytest.mark.parametrize("model_type, targets, says", [
    ("starcoder2", "q_proj,gate_proj,up_proj", "gate_proj, up_proj are not layers"),
    ("gemma3", "q_proj,qkv_proj", "qkv_proj is not a layer"),
    ("smollm3", "c_fc", "c_fc is not a layer"),
    ("cohere2", "gate_up_proj", "gate_up_proj is not a layer"),
])
def test_wrong_targets_stop_before_load_for_every_family(tmp_path, capsys, model_type, targets, says):
    """The families the target check skipped before (Gemma 3, SmolLM3, Cohere 2) and StarCoder2:
    one line before any weight loads (the folder holds a config.json only)."""
    write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(10)])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({**STARCODER2_3B, "model_type": model_type}))
    code = run_cli(recipe("chat").cli, [f"data={tmp_path / 'd.jsonl'}", f"model={tmp_path / 'model'}",
                                        f"lora.target_modules={targets}", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    family = table.BY_TYPE[model_type]
    assert code == 2 and says in err and len(err.splitlines()) == 1, err
    assert f"its layers are {','.join(family.targets)}" in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_type_is_not_planned_but_says_so():
    with pytest.raises(ValueError, match=r"^cannot plan model_type 'gpt_neox'.*knows cohere, cohere2"):
        plan.Shape.from_config({**plan.LLAMA_8B, "model_type": "gpt_neox"})
