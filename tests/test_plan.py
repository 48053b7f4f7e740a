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


# A held-out peak must come within 10% of its prediction: inside the 15% memory_margin a run
# keeps free by default, so a plan made from such a fit would still not run out of memory.
HELD_OUT_TOLERANCE = 0.10


def _total(coef, point) -> float:
    dims, mode, micro = point[:3]
    return plan.estimate(plan.Shape.from_config(dims), plan.Setting(mode, micro, 1, 2048), coef=coef).total


def _fit(stack: str, points: list) -> plan.Coefficients:
    """One stack's four coefficients fitted by least squares to `points` ((dims, checkpointing,
    micro-batch, measured GiB)); the estimate is linear in them. Where the points do not
    separate two coefficients (the fixed part and the buffers, without a second model size) it
    is the smallest solution, which still predicts exactly the points those two cannot tell apart."""
    import numpy as np

    stored = plan.KIT if stack == "kit" else plan.PLAIN
    zero = plan.Coefficients(0, 0, 0, 0, stored.embedding_bytes, stored.vocab_margin)
    units = [plan.Coefficients(*(float(j == i) for j in range(4)), stored.embedding_bytes,
                               stored.vocab_margin) for i in range(4)]
    x = np.array([[_total(u, p) - _total(zero, p) for u in units] for p in points])
    y = np.array([p[3] - _total(zero, p) for p in points])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return plan.Coefficients(*(float(c) for c in coef), stored.embedding_bytes, stored.vocab_margin)


def _points(stack: str, rows=plan.CALIBRATION) -> list:
    return [(dims, mode, micro, gib) for s, dims, mode, micro, gib in rows if s == stack]


def test_a_fit_to_the_probe_predicts_the_bench_runs():
    # kit/plan.py's first six points come from the GPU probe, the rest from bench/bench.py, a
    # separate harness and run, which also measured micro-batches of 1 and 2 rows the probe never
    # ran. Fitted to the probe alone, the kit's estimate predicts every bench peak.
    probe, bench = _points("kit", plan.CALIBRATION[:6]), _points("kit", plan.CALIBRATION[6:])
    assert len(probe) == 6 and len(bench) == 4
    coef = _fit("kit", probe)
    for point in bench:
        assert _total(coef, point) == pytest.approx(point[3], rel=HELD_OUT_TOLERANCE), point[1:]
    # The plain stack, fitted to 1 and 2 rows per pass, predicts 4 (twice the tokens of the fit).
    plain = {p[2]: p for p in _points("plain")}
    coef = _fit("plain", [plain[1], plain[2]])
    assert _total(coef, plain[4]) == pytest.approx(plain[4][3], rel=HELD_OUT_TOLERANCE)


def test_stored_coefficients_are_the_fit_of_the_calibration():
    # Not a check of accuracy (the tests around it hold points out for that): KIT and PLAIN must
    # be the least-squares fit of CALIBRATION, rounded, so that a changed constant or a new
    # point without a refit shows.
    for stack, stored in (("kit", plan.KIT), ("plain", plan.PLAIN)):
        points = _points(stack)
        coef = _fit(stack, points)
        for point in points:
            assert _total(stored, point) == pytest.approx(_total(coef, point), rel=0.03), (stack, point[1:])


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
    assert p.message.startswith("does not fit: needs ~") and "GiB is usable" in p.message
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


def test_speed_model_predicts_a_run_held_out_of_its_fit(monkeypatch):
    # One and two rows per pass are both bound by the host's launches at 7.38B. Fit the launch
    # time per layer to one of them and the MFU to 4 rows (GPU-bound), then predict the other
    # within 5% (taken for GPU-bound, two rows would come out 10% too fast).
    measured = {(mode, micro): tps for mode, micro, tps in plan.SPEED_POINTS}
    peak = plan.PEAK_TFLOPS["H200"]

    def seconds(micro: int) -> float:
        return micro * 2048 / measured["off", micro]

    mfu = 4 * 2048 * LLAMA_8B.flops_per_token(2048) / (peak * 1e12 * seconds(4))
    monkeypatch.setattr(plan, "ACHIEVED_MFU", mfu)
    for fit_on, held_out in ((1, 2), (2, 1)):
        monkeypatch.setattr(plan, "HOST_SECONDS_PER_LAYER", seconds(fit_on) / LLAMA_8B.layers)
        predicted = plan.Setting("off", held_out, 1, 2048).tokens_per_second(LLAMA_8B, peak)
        assert predicted == pytest.approx(measured["off", held_out], rel=0.05), (fit_on, held_out)
    monkeypatch.undo()
    # The stored constants are these fits, rounded (the mean of the two host-bound runs).
    assert plan.ACHIEVED_MFU == pytest.approx(mfu, rel=0.02)
    host = (seconds(1) + seconds(2)) / 2 / LLAMA_8B.layers
    assert plan.HOST_SECONDS_PER_LAYER == pytest.approx(host, rel=0.02)


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


def test_coefficients_predict_each_configuration_held_out_of_the_fit():
    # Refit the kit's coefficients without one 8B configuration, every measurement of it (the
    # probe and bench measured some twice: a repeat left in the fit would make it no held-out
    # point), and predict it. The lone 1B point stays in every fit: only it separates the fixed
    # part from the dequantization buffers.
    points = _points("kit")
    configs = {p[1:3] for p in points if p[0] is plan.LLAMA_8B}
    assert len(configs) == 7
    for config in configs:
        held_out = [p for p in points if p[0] is plan.LLAMA_8B and p[1:3] == config]
        coef = _fit("kit", [p for p in points if p not in held_out])
        for point in held_out:
            assert _total(coef, point) == pytest.approx(point[3], rel=HELD_OUT_TOLERANCE), config


def _tiny(arch: str, **dims):
    """A random-init model of `arch` with tiny dimensions, on CPU, and its config as a dict."""
    import torch
    import transformers

    config = getattr(transformers, f"{arch}Config")(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, **dims)
    torch.manual_seed(0)
    model_class = getattr(transformers, f"{arch.removesuffix('Text')}ForCausalLM")  # Gemma3TextConfig
    return model_class(config), config.to_dict()


TINY = [("Llama", {"tie_word_embeddings": False}), ("Llama", {"head_dim": 24}),
        ("Qwen2", {"tie_word_embeddings": True}), ("Phi3", {"tie_word_embeddings": False}),
        ("Gemma3Text", {"head_dim": 32})]


@pytest.mark.parametrize("arch, dims", TINY)
def test_shape_counts_parameters_of_each_layout(arch, dims):
    model, config = _tiny(arch, **dims)
    # Norms and attention biases (Qwen2's) are not counted: a few thousand parameters at 7B.
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if "norm" not in n and not n.endswith(".bias"))
    assert plan.Shape.from_config(config).params == weights


def test_phi3_mini_has_fused_projections():
    phi3 = plan.Shape.from_config({"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
                                   "num_hidden_layers": 32, "num_attention_heads": 32,
                                   "num_key_value_heads": 32, "vocab_size": 32064})
    # Phi-3-mini's 3,821,079,552 parameters, less its 65 norms of 3,072.
    assert phi3.params == 3_821_079_552 - 65 * 3072
    assert set(phi3._linears()) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert phi3.lora_params(16, ("qkv_proj",)) == 32 * 16 * (3072 + 3 * 3072)


@pytest.mark.parametrize("arch, dims, targets", [
    ("Phi3", {}, ["qkv_proj", "gate_up_proj"]),
    ("Phi3", {}, list(plan.ALL_TARGETS)),  # the kit's old default: only o_proj and down_proj exist
    ("Phi3", {}, "all-linear"),
    ("Llama", {"head_dim": 24}, "all-linear"),
    ("Qwen2", {"tie_word_embeddings": True}, "all-linear"),
])
def test_lora_parameters_match_peft(arch, dims, targets):
    from peft import LoraConfig, get_peft_model

    model, config = _tiny(arch, **dims)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    kit_targets = plan.AUTO_TARGETS if targets == "all-linear" else tuple(targets)
    assert plan.Shape.from_config(config).lora_params(8, kit_targets) == trainable


def test_auto_targets_are_every_projection():
    assert LLAMA_8B.lora_params(16, ("auto",)) == LLAMA_8B.lora_params(16, ()) == LLAMA_8B.lora_params(16)


MOE_CONFIGS = [("Qwen3Moe", 128), ("Mixtral", 8), ("GptOss", 128), ("DeepseekV3", 256)]


@pytest.mark.parametrize("arch, experts", MOE_CONFIGS)
def test_mixture_of_experts_is_refused_plainly(arch, experts):
    import transformers

    config = getattr(transformers, f"{arch}Config")().to_dict()
    with pytest.raises(ValueError, match=rf"^cannot plan a mixture-of-experts model \({experts} experts\)"):
        plan.Shape.from_config(config)
    with pytest.raises(ValueError, match="mixture-of-experts"):  # nested, as in Llama 4
        plan.Shape.from_config({"model_type": "llama4", "text_config": config})


def test_unknown_layouts_are_refused():
    with pytest.raises(ValueError, match="^cannot plan model_type 'gpt_neox': its projections are not"):
        plan.Shape.from_config({**plan.LLAMA_8B, "model_type": "gpt_neox"})
    gemma3 = {"model_type": "gemma3", "text_config": {**plan.LLAMA_1B, "model_type": "gemma3_text"}}
    assert plan.Shape.from_config(gemma3) == plan.Shape.from_config(plan.LLAMA_1B)


def test_big_vocabularies_get_a_margin():
    s = plan.Setting("unsloth", 4, 1, 2048)
    small = plan.estimate(LLAMA_8B, s)
    gemma_vocab = plan.Shape.from_config({**plan.LLAMA_8B, "vocab_size": 262144})
    big = plan.estimate(gemma_vocab, s)
    # Embedding and head at 16 bits, exactly; logits more than linear beyond the measured 49,152.
    extra_embedding = (262144 - 49152) * 4096 * 2 * 2 / 2**30  # untied: embedding and head
    assert big.parts["weights"] - small.parts["weights"] == pytest.approx(extra_embedding)
    assert big.parts["logits"] > small.parts["logits"] * 262144 / 49152 * 1.5
    assert plan.estimate(gemma_vocab, s, coef=plan.PLAIN).parts["logits"] == pytest.approx(
        plan.estimate(LLAMA_8B, s, coef=plan.PLAIN).parts["logits"] * 262144 / 49152)


@pytest.fixture
def config_only_moe(tmp_path):
    """A Mixtral-shaped config.json without weights: a model the plan refuses."""
    import json

    import transformers

    folder = tmp_path / "mixtral"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(transformers.MixtralConfig().to_dict()))
    return folder


def test_unplanned_model_falls_back_to_safe_settings(config_only_moe, capsys):
    from kit.choice import resolve_model
    from kit.device import Device
    from kit.memory import Request, decide_settings, read_shape
    from kit.showplan import show_plan

    cfg = apply_overrides(RecipeConfig(), [f"model={config_only_moe}", "gpu_memory_gib=14.6", "batch_size=4"])
    assert show_plan(cfg) is None
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert ("cannot plan a mixture-of-experts model (8 experts): memory not modelled; using safe settings: "
            "offloaded checkpointing, micro-batch 1 × 4 accumulation") in out
    gpu = Device("cuda", "T4", 15.0, True)
    want = Request.of(cfg)
    choice = resolve_model(cfg.model, gpu, progress=lambda _: None)
    lines = []
    shape, settings = read_shape(choice, want, decide_settings(want, gpu), lines.append)
    assert shape is None and len(lines) == 1
    assert (settings.gradient_checkpointing, settings.micro_batch, settings.grad_accum) == ("unsloth", 1, 4)
    explicit = Request.of(apply_overrides(cfg, ["micro_batch_size=2", "gradient_checkpointing=true"]))
    _, settings = read_shape(choice, explicit, decide_settings(explicit, gpu), lines.append)
    assert (settings.gradient_checkpointing, settings.micro_batch, settings.grad_accum) == (True, 2, 2)
