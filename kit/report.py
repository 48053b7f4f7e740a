"""Reporting: console messages, the end-of-run summary table, and metrics.json."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from kit import ranks
from kit.metrics import improved

# Among several training processes only rank 0 talks (errors still reach stderr from any).
console = Console(highlight=False, quiet=not ranks.is_main())


def printable(text: str, keep: str = "") -> str:
    """`text` with every control or format character (terminal escapes, carriage returns, bidi
    overrides) but those in `keep` written as its Python escape, so words a model generated or a
    dataset holds cannot recolour, retitle or move the user's terminal."""
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def escape(text: str) -> str:
    """Text for the console: printable (newlines and tabs kept) and rich's markup escaped."""
    return escape_markup(printable(text, keep="\n\t"))


def say(message: str) -> None:
    console.print(message)


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "unsloth", "unsloth_zoo", "transformers", "trl", "peft", "datasets",
                "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metric_rows(before: dict, after: dict) -> list[tuple[str, str, str]]:
    return [(k, _fmt(before.get(k, "-")), _fmt(after.get(k, "-"))) for k in before]


def summary_table(rows: list[tuple[str, str]], before: dict, after: dict, better: dict[str, bool]) -> Table:
    """Run facts, then each metric before → after, marked green where it improved."""
    table = Table(title="Run summary", show_header=False, title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    for name, b, a in metric_rows(before, after):
        up = better.get(name)
        mark = "" if up is None else (" [green]better[/]" if up else " [red]not better[/]")
        table.add_row(f"{name}", f"{b} → {a}{mark}")
    return table


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def finish(recipe: str, cfg, prep, result, before: dict, after: dict, exports: dict,
           started: float, held_out: int = 0, extra: dict | None = None) -> dict:
    """Write output_dir/metrics.json and report.png, print the summary table; return the
    metrics. `held_out`: how many held-out examples the metrics were measured on."""
    import dataclasses
    import time

    out = Path(cfg.output_dir)
    peak, peak_kind = prep.device.peak_memory_gib()
    better = improved(before, after)
    wall = time.perf_counter() - started
    lora = getattr(cfg, "lora", None)
    merged = (exports.get("merged") or {}).get("merge")
    metrics = {
        "recipe": recipe, "model": prep.choice.label, "device": prep.device.name,
        # The Hub id, or a local folder's name: never a path on this machine (kit.pin).
        "base_model": prep.choice.hub_id or Path(prep.choice.path).name,
        "data": {"source": cfg.data, "train": result.rows, "held_out": held_out},
        "before": before, "after": after, "improved": better, **(extra or {}),
        "train": {"steps": result.steps, "seconds": round(result.seconds, 1),
                  "tokens": result.tokens, "tokens_per_second": round(result.tokens_per_second, 1),
                  "loss_first": result.losses[0], "loss_last": result.losses[-1],
                  "losses": result.losses, "learning_rates": result.learning_rates,
                  "peak_memory_gib": round(peak, 2), "peak_memory_kind": peak_kind,
                  "ranks_agree": result.ranks_agree},
        "world_size": result.world_size,
        "trainable_parameters": prep.trainable, "total_parameters": prep.total,
        "learning_rate": prep.learning_rate,
        **({"lora": {"variant": lora.variant, "init": lora.init, "plus_ratio": lora.plus_ratio}}
           if lora is not None else {}),
        **({"merge": merged} if merged else {}),
        "memory_plan": _plan_record(prep.settings),
        "exports": exports, "wall_seconds": round(wall, 1),
        "config": dataclasses.asdict(cfg), "versions": versions(),
    }
    write_json(out / "metrics.json", metrics)
    picture = None
    try:  # a picture must never fail a finished run
        from kit.plots import write_report

        picture = write_report(out / "report.png", metrics)
    except Exception as exc:
        warn(f"could not draw {out / 'report.png'}: {exc}")
    rows = [
        ("device", prep.device.name + (f" × {result.world_size} processes" if result.world_size > 1 else "")),
        ("model", prep.choice.label),
        ("trainable", f"{prep.trainable:,} ({100 * prep.trainable / prep.total:.2f}%)"),
        ("steps", str(result.steps)), ("tokens/s", f"{result.tokens_per_second:,.0f}"),
        (f"peak {peak_kind}", f"{peak:.2f} GiB"),
        ("train loss", f"{result.losses[0]:.3f} → {result.losses[-1]:.3f}"),
        ("wall time", f"{wall:.0f} s"),
        ("outputs", ", ".join([*(str(out / k) for k in exports), str(out / "metrics.json"),
                               *([str(picture)] if picture else [])])),
    ]
    console.print(summary_table(rows, {k: v for k, v in before.items() if not isinstance(v, dict | list)},
                                {k: v for k, v in after.items() if not isinstance(v, dict | list)}, better))
    return metrics


def _plan_record(settings) -> dict:
    """The memory plan as metrics.json keeps it: what ran, and what was predicted."""
    record = {"gradient_checkpointing": settings.gradient_checkpointing,
              "micro_batch": settings.micro_batch, "grad_accum": settings.grad_accum,
              "packing": getattr(settings, "packing", False),
              "packing_reason": getattr(settings, "packing_reason", "")}
    if settings.plan is not None:
        record.update(seq=settings.plan.setting.seq, tokens_per_pass=settings.plan.setting.tokens,
                      predicted_peak_gib=round(settings.plan.estimate.total, 2),
                      usable_gib=round(settings.plan.budget_gib, 2))
    return record
