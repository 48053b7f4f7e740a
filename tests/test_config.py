import dataclasses

import pytest

from kit.cli import names, parse_cli, recipe
from kit.config import LoraConfig, RecipeConfig, apply_overrides, field_docs, valid_keys
from kit.errors import KitError


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(RecipeConfig(), ["max_steps=7", "lora.r=32", "learning_rate=3e-4",
                                           "load_in_4bit=false", "export=adapter", "model=./m"])
    assert (cfg.max_steps, cfg.lora.r, cfg.learning_rate) == (7, 32, 3e-4)
    assert cfg.load_in_4bit is False and cfg.export == "adapter" and cfg.model == "./m"


def test_overrides_leave_the_default_untouched():
    default = RecipeConfig()
    apply_overrides(default, ["lora.r=64"])
    assert default.lora.r == LoraConfig().r


@pytest.mark.parametrize("arg, words", [
    ("max_steps=ten", "whole number"),
    ("learning_rate=fast", "a number"),
    ("load_in_4bit=maybe", "true or false"),
    ("export=onnx", "adapter, merged, both, gguf, gguf-lora, all"),
    ("export=gguf gguf_quant=q3", "gguf_quant="),
    ("report_to=slack", "report_to="),
    ("push=not-a-repo", "push="),
    ("learning_rate=-1", "out of range"),
    ("max_steps=0", "out of range"),
    ("gradient_checkpointing=sometimes", "expected auto"),
    ("max_steps", "key=value"),
])
def test_bad_values_are_one_clear_error(arg, words):
    with pytest.raises(KitError, match=words):
        apply_overrides(RecipeConfig(), arg.split())


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(KitError) as err:
        apply_overrides(RecipeConfig(), ["lora.rank=8"])
    for key in ("lora.r", "max_steps", "model", "data", "output_dir", "export"):
        assert key in str(err.value)


def test_every_field_of_every_recipe_config_has_a_docstring():
    configs = [v for name in names() for v in vars(recipe(name)).values()
               if isinstance(v, type) and issubclass(v, RecipeConfig) and v is not RecipeConfig]
    assert len(configs) == len(names()) == 6
    for cls in (RecipeConfig, LoraConfig, *configs):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_shared_keys_exist():
    keys = valid_keys(RecipeConfig())
    assert {"model", "data", "output_dir", "max_steps", "export"} <= set(keys)


def test_help_prints_keys_and_returns_none(capsys):
    assert parse_cli(RecipeConfig(), ["--help"]) is None
    out = capsys.readouterr().out
    assert "lora.r" in out and "max_steps" in out


def test_configs_built_in_python_are_checked_too():
    from kit.config import validate

    with pytest.raises(KitError, match="adapter, merged, both, gguf, gguf-lora, all"):
        validate(RecipeConfig(export="onnx"))

    with pytest.raises(KitError, match="out of range"):
        validate(RecipeConfig(max_steps=-5))
    validate(RecipeConfig())
