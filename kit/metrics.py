"""Which way is better for each held-out metric, and whether a run improved it: shared by the
evaluation (kit.evaluate, kit.classify, kit.code), the summary (kit.report) and the picture
(kit.plots) without pulling torch into the last two."""

from __future__ import annotations

# Which way is better for each metric.
HIGHER_IS_BETTER = {"check_rate": True, "reply_f1": True, "stopped_at_eos": True,
                    "accuracy": True, "macro_f1": True, "pass_at_1": True,
                    "preference_accuracy": True, "reward_margin": True,
                    "reward": True, "exact_match": True,
                    "loss": False, "perplexity": False}
LOWER_IS_BETTER = tuple(name for name, higher in HIGHER_IS_BETTER.items() if not higher)


def improved(before: dict, after: dict) -> dict[str, bool]:
    """Per metric: did it strictly improve? (equal counts as not better). `reward/NAME` (one
    reward function's mean) goes the way `reward` does."""
    out = {}
    for name, b in before.items():
        kind = name.split("/")[0]
        if name in after and kind in HIGHER_IS_BETTER:
            out[name] = after[name] > b if HIGHER_IS_BETTER[kind] else after[name] < b
    return out
