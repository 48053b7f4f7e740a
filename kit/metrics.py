"""Which way is better for each held-out metric, and whether a run improved it: shared by the
evaluation (kit.evaluate, kit.classify, kit.code), the summary (kit.report) and the picture
(kit.plots) without pulling torch into the last two."""

from __future__ import annotations

# Which way is better for each metric.
HIGHER_IS_BETTER = {"check_rate": True, "reply_f1": True, "stopped_at_eos": True,
                    "accuracy": True, "macro_f1": True, "pass_at_1": True,
                    "loss": False, "perplexity": False}
LOWER_IS_BETTER = tuple(name for name, higher in HIGHER_IS_BETTER.items() if not higher)


def improved(before: dict, after: dict) -> dict[str, bool]:
    """Per metric: did it strictly improve? (equal counts as not better)."""
    out = {}
    for name, b in before.items():
        if name in after and name in HIGHER_IS_BETTER:
            out[name] = after[name] > b if HIGHER_IS_BETTER[name] else after[name] < b
    return out
