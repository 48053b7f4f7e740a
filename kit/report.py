"""Reporting: console messages, the end-of-run summary table, and metrics.json."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def say(message: str) -> None:
    console.print(message)


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


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
