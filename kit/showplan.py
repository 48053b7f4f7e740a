"""`make plan` / `--plan`: the memory plan for a config and card, printed without loading any
weights (nor Unsloth)."""

from __future__ import annotations

import dataclasses

from kit import choice as choice_mod
from kit import gpus, memory
from kit import plan as plan_mod
from kit.device import Device, detect_device, visible_gpus
from kit.errors import fail


def show_plan(cfg) -> plan_mod.Plan | None:
    """Print the plan for this config on this machine's card, or with `gpu_memory_gib` on a
    CPU machine, on a card of that size (`nproc` of them)."""
    from kit.report import say

    want = memory.Request.of(cfg)
    device = detect_device()
    simulated = not device.gpu and bool(want.gpu_memory_gib)  # a card this machine lacks
    if simulated:
        device = Device("cuda", f"a {want.gpu_memory_gib:g} GiB GPU", want.gpu_memory_gib, True)
        if want.model == "auto":
            want = dataclasses.replace(want, model=want.gpu_model)
    choice = choice_mod.resolve_model(want.model, device, say, want.gpu_model)
    settings = memory.decide_settings(want, device)
    shape, settings = memory.read_shape(choice, want, settings, say)
    choice_mod.check_targets(want.target_modules, choice)
    if shape is None:
        return None
    say(f"model: {choice.label}: {shape.params / 1e9:.2f}B parameters, {shape.layers} layers, "
        f"hidden {shape.hidden}, vocabulary {shape.vocab}; "
        f"{'4-bit' if settings.load_in_4bit else '16-bit'} base")
    count = max(want.nproc, 1) if simulated else visible_gpus(device)  # simulated: nproc cards
    world, cards = 1, 1
    if count > 1:
        asked = dataclasses.replace(want, nproc=0) if simulated else want
        way = gpus.parallel(asked, say, device, gpus=count)
        world, cards = way.processes, (count if way.split else 1)
        say(f"GPUs: {count}{' (as nproc says)' if simulated else ''}; {way.why}")
    chosen, source = memory.plan_memory(want, device, shape, want.max_seq_length,
                                        settings.load_in_4bit, world=world, cards=cards)
    if not chosen.fits:
        say(f"  estimate: {chosen.estimate.describe()} GiB")
        fail(chosen.message)
    memory.say_plan(chosen, source, say)
    return chosen
