"""The memory planner: plain arithmetic, checked against measured peaks and typical cards."""

import pytest

from kit import plan
from kit.config import RecipeConfig, apply_overrides
from kit.errors import KitError

LLAMA_8B = plan.Shape.from_config(plan.LLAMA_8B)
# Cards as sold (GB) → what torch reports free before a run, roughly (GiB).
CARDS = {16: 14.6, 24: 21.9, 40: 39.0, 80: 78.6, 141: 138.7}


def usable(card_gb: int) -> float:
    return plan.usable_gib(CARDS[card_gb], RecipeConfig().memory_margin)


@pytest.mark.parametrize("stack, dims, mode, micro, measured", plan.CALIBRATION)
def test_estimate_matches_measured_peaks(stack, dims, mode, micro, measured):
    coef = plan.KIT if stack == "kit" else plan.PLAIN
    est = plan.estimate(plan.Shape.from_config(dims), plan.Setting(mode, micro, 1, 2048), coef=coef)
    assert est.total == pytest.approx(measured, rel=0.15)


def test_shape_counts_parameters_like_the_model():
    # Llama-3.1-8B dims with a 49,152 vocabulary: 7.38B parameters (the probe's count, norms aside).
    assert LLAMA_8B.params == pytest.approx(7.38e9, rel=0.002)
    assert LLAMA_8B.lora_params(16) == 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336))
    assert LLAMA_8B.lora_params(16, ("q_proj", "v_proj")) < LLAMA_8B.lora_params(16)


def test_estimate_grows_with_what_it_should():
    s = plan.Setting("off", 4, 1, 2048)
    base = plan.estimate(LLAMA_8B, s).total
    assert plan.estimate(LLAMA_8B, plan.Setting("off", 8, 1, 2048)).total > base
    assert plan.estimate(LLAMA_8B, plan.Setting("off", 4, 1, 4096)).total > base
    assert plan.estimate(LLAMA_8B, s, r=64).total > base
    assert plan.estimate(LLAMA_8B, s, four_bit=False).total > base + 9  # 16-bit weights: ~14 GiB
    on = plan.estimate(LLAMA_8B, plan.Setting("on", 4, 1, 2048)).total
    offload = plan.estimate(LLAMA_8B, plan.Setting("unsloth", 4, 1, 2048)).total
    assert offload < on < base


@pytest.mark.parametrize("card, mode, micro", [
    (16, "unsloth", 4),  # no checkpointing needs ~12.4 GiB even one row at a time: too tight
    (24, "unsloth", 4),  # one row at a time would fit, but leaves an H100 waiting on the host
    (40, "off", 2),
    (80, "off", 4),
    (141, "off", 4),
])
def test_plan_for_8b_at_2048_on_each_card(card, mode, micro):
    p = plan.choose(LLAMA_8B, budget_gib=usable(card), batch_size=4, seq=2048)
    assert p.fits and p.estimate.total <= usable(card)
    assert (p.setting.checkpointing, p.setting.micro_batch) == (mode, micro)
    assert p.setting.micro_batch * p.setting.grad_accum == 4  # the requested batch, always
    if card < 80:
        assert p.faster_not_fitting, "a tight card should say what it had to give up"


def test_plan_prefers_speed_then_memory():
    p = plan.choose(LLAMA_8B, budget_gib=usable(141), batch_size=16, seq=2048)
    # Without checkpointing 16 rows need ~124 GiB: the fastest fitting is fewer rows per pass.
    assert p.setting.checkpointing == "off" and p.setting.micro_batch == 8
    # Both checkpointing modes run at the same speed; the one that uses less memory wins.
    p = plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=4, seq=4096, modes=("on", "unsloth"))
    assert p.setting.checkpointing == "unsloth"


def test_explicit_settings_win_or_name_what_fits():
    p = plan.choose(LLAMA_8B, budget_gib=usable(141), batch_size=4, seq=2048, checkpointing="unsloth")
    assert p.fits and p.setting.checkpointing == "unsloth"
    p = plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=4, seq=2048, checkpointing="off",
                    micro_batch=4)
    assert not p.fits
    assert "gradient_checkpointing=unsloth micro_batch_size=4 fits" in p.message


def test_too_long_for_a_t4_names_the_longest_that_fits():
    p = plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=4, seq=65536)
    assert not p.fits and "\n" not in p.message
    longest = int(p.message.split("max_seq_length=")[1].split()[0])
    assert 16384 <= longest < 65536 and longest % 128 == 0
    assert plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=4, seq=longest).fits
    assert not plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=4, seq=longest + 128).fits


def test_too_big_a_model_says_so():
    llama_70b = plan.Shape.from_config({**plan.LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672,
                                        "num_hidden_layers": 80, "num_attention_heads": 64,
                                        "vocab_size": 128256})
    p = plan.choose(llama_70b, budget_gib=usable(16), batch_size=4, seq=2048)
    assert not p.fits and "use a smaller model" in p.message
    assert plan.choose(llama_70b, budget_gib=usable(80), batch_size=4, seq=2048).fits


def test_shape_from_odd_configs():
    nested = plan.Shape.from_config({"text_config": plan.LLAMA_1B})
    assert nested == plan.Shape.from_config(plan.LLAMA_1B)
    with pytest.raises(ValueError, match="decoder dimensions"):
        plan.Shape.from_config({"model_type": "vit"})


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(KitError, match="not a multiple"):
        apply_overrides(RecipeConfig(), ["batch_size=6", "micro_batch_size=4"])
    cfg = apply_overrides(RecipeConfig(), ["batch_size=8", "micro_batch_size=2"])
    assert cfg.micro_batch_size == 2


def test_speed_model_matches_measured_throughput():
    for mode, micro, measured in plan.SPEED_POINTS:
        predicted = plan.Setting(mode, micro, 1, 2048).tokens_per_second(LLAMA_8B, plan.PEAK_TFLOPS["H200"])
        assert predicted == pytest.approx(measured, rel=0.05)


def test_slow_card_or_small_model_changes_the_order():
    # On a T4 the GPU, not the host, is the limit: one row without recompute beats four with it.
    t4 = plan.choose(LLAMA_8B, budget_gib=usable(24), batch_size=4, seq=2048,
                     tflops=plan.peak_tflops("Tesla T4"))
    assert (t4.setting.checkpointing, t4.setting.micro_batch) == ("off", 1)
    # A 135M model is host-bound everywhere: recomputing only adds launches.
    small = plan.Shape.from_config({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                                    "num_attention_heads": 9, "num_key_value_heads": 3,
                                    "vocab_size": 49152, "tie_word_embeddings": True})
    p = plan.choose(small, budget_gib=usable(16), batch_size=4, seq=512)
    assert (p.setting.checkpointing, p.setting.micro_batch) == ("off", 4)


@pytest.fixture
def config_only_8b(tmp_path):
    """A model folder with a config.json and no weights: only a plan can be made from it."""
    import json

    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**plan.LLAMA_8B, "model_type": "llama"}))
    return folder


@pytest.mark.slow
def test_make_plan_prints_the_plan_for_another_card(config_only_8b):
    from conftest import run_recipe

    proc = run_recipe("chat", "--plan", f"model={config_only_8b}", "gpu_memory_gib=14.6",
                      "max_seq_length=2048", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())  # rich wraps lines
    assert "7.38B parameters" in out and "offloaded checkpointing, micro-batch 4 × 1 accumulation" in out
    assert "faster, but does not fit" in out


@pytest.mark.slow
def test_a_run_that_cannot_fit_stops_before_loading(config_only_8b, tmp_path):
    from conftest import run_recipe

    # The folder has no weights: had the recipe tried to load, the error would say so instead.
    # (On this CPU machine the base would be 16-bit: ~15 GiB of weights for 7.38B parameters.)
    proc = run_recipe("chat", f"model={config_only_8b}", "gpu_memory_gib=40", "max_seq_length=262144",
                      f"output_dir={tmp_path / 'out'}", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not fit" in errors[0]
    assert "max_seq_length=262144" in errors[0] and "fits with micro-batch 1" in errors[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_offloading_must_fit_the_host_too():
    # A Colab VM: ~12 GiB of RAM, half of it for offloaded activations. At 32k tokens Unsloth's
    # offload would put 8 GiB of layer inputs in RAM; plain checkpointing keeps them on the GPU.
    roomy = plan.choose(LLAMA_8B, budget_gib=usable(40), batch_size=1, seq=32768)
    assert roomy.setting.checkpointing == "unsloth" and roomy.estimate.host_gib == pytest.approx(8.0)
    assert "offloaded to CPU RAM" in roomy.message
    colab = plan.choose(LLAMA_8B, budget_gib=usable(40), batch_size=1, seq=32768, host_gib=6.0)
    assert colab.fits and colab.setting.checkpointing != "unsloth"
    t4 = plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=1, seq=32768, host_gib=6.0)
    assert not t4.fits and "max_seq_length=" in t4.message
    longest = int(t4.message.split("max_seq_length=")[1].split()[0])
    assert plan.choose(LLAMA_8B, budget_gib=usable(16), batch_size=1, seq=longest, host_gib=6.0).fits
