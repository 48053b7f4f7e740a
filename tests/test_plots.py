"""report.png: the figure's panels hold the run's numbers, the PNG is valid and written atomically,
odd inputs draw without raising, and pyplot (a notebook's global state) is never imported."""

import math
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from conftest import ROOT

from kit.plots import build_figure, write_report

LOSSES = [2.9, 2.4, 2.0, 1.7, 1.5, 1.42, 1.38, 1.3]
LRS = [5e-5, 1e-4, 2e-4, 1.7e-4, 1.4e-4, 1e-4, 6e-5, 3e-5]
CHAT = {
    "recipe": "chat", "model": "SmolLM2-135M-Instruct", "device": "cpu (2 threads)",
    "before": {"loss": 2.41, "perplexity": 11.13, "check_rate": 0.3125, "reply_f1": 0.21,
               "stopped_at_eos": 0.9},
    "after": {"loss": 1.12, "perplexity": 3.065, "check_rate": 0.75, "reply_f1": 0.48, "stopped_at_eos": 1.0},
    "improved": {"loss": True, "perplexity": True, "check_rate": True, "reply_f1": True,
                 "stopped_at_eos": True},
    "train": {"steps": 8, "losses": LOSSES, "learning_rates": LRS, "loss_first": 2.9, "loss_last": 1.3},
}
LABELS = ["billing", "technical_support", "shipping"]
CONF_BEFORE = [[4, 3, 3], [2, 5, 3], [1, 2, 7]]
CONF_AFTER = [[9, 1, 0], [0, 10, 0], [1, 0, 9]]
CLASSIFICATION = {
    "recipe": "classification", "model": "SmolLM2-135M-Instruct", "device": "cpu", "labels": LABELS,
    "before": {"accuracy": 0.5333, "macro_f1": 0.52, "confusion": CONF_BEFORE, "labels": LABELS,
               "mean_true_label_probability": 0.34},
    "after": {"accuracy": 0.9333, "macro_f1": 0.93, "confusion": CONF_AFTER, "labels": LABELS,
              "mean_true_label_probability": 0.88},
    "improved": {"accuracy": True, "macro_f1": True},
    "train": {"losses": LOSSES, "learning_rates": LRS},
}


def axes_by_label(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label()}


def bar_heights(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


def test_chat_figure_panels_hold_the_run_numbers():
    fig = build_figure(CHAT)
    assert fig.get_suptitle() == "chat · SmolLM2-135M-Instruct · cpu (2 threads)"
    axes = axes_by_label(fig)
    loss, lr = axes["loss"], axes["learning rate"]
    assert loss.get_title() == "Training loss" and lr.get_title() == "Learning rate"
    assert list(loss.lines[0].get_ydata()) == LOSSES
    assert list(loss.lines[0].get_xdata()) == list(range(1, len(LOSSES) + 1))  # logged every step
    assert list(lr.lines[0].get_ydata()) == LRS
    for name in CHAT["before"]:
        ax = axes[f"metric:{name}"]
        b, a = CHAT["before"][name], CHAT["after"][name]
        assert bar_heights(ax) == [b, a]
        assert [t.get_text() for t in ax.texts] == [f"{b:.4g}", f"{a:.4g}"]  # values annotated
    assert "lower is better" in axes["metric:loss"].get_title()
    assert "lower is better" in axes["metric:perplexity"].get_title()
    assert "higher is better" in axes["metric:reply_f1"].get_title()
    assert not any(k.startswith("confusion:") for k in axes)


def test_classification_figure_has_both_confusion_matrices_with_names_and_counts():
    axes = axes_by_label(build_figure(CLASSIFICATION))
    for when, matrix in (("before", CONF_BEFORE), ("after", CONF_AFTER)):
        ax = axes[f"confusion:{when}"]
        assert ax.get_title() == f"{when} training"
        np.testing.assert_array_equal(ax.images[0].get_array(), np.array(matrix))
        assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
        assert [t.get_text() for t in ax.get_yticklabels()] == LABELS
        assert [t.get_text() for t in ax.texts] == [str(v) for row in matrix for v in row]
    assert bar_heights(axes["metric:accuracy"]) == [0.5333, 0.9333]
    assert "metric:confusion" not in axes and "metric:labels" not in axes  # only scalars are bars


@pytest.mark.parametrize("metrics", [CHAT, CLASSIFICATION], ids=["chat", "classification"])
def test_write_report_writes_a_valid_png_and_nothing_else(tmp_path, metrics):
    out = write_report(tmp_path / "run" / "report.png", metrics)
    assert out == tmp_path / "run" / "report.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 400 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["report.png"]  # no temp file left behind


def test_a_failed_draw_keeps_the_old_report_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "report.png"
    path.write_bytes(b"old")

    def broken(self, fname, **kw):
        open(fname, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        write_report(path, CHAT)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]


def _many_labels(n: int) -> dict:
    labels = [f"category_number_{i}" for i in range(n)]
    matrix = [[5 * (i == j) + (i + j) % 3 for j in range(n)] for i in range(n)]
    return {"before": {"accuracy": 0.1, "confusion": matrix, "labels": labels},
            "after": {"accuracy": 0.4, "confusion": matrix, "labels": labels}}


EDGE_CASES = {
    "single step": {"train": {"losses": [2.0], "learning_rates": [1e-4]}, "before": {"loss": 2.0},
                    "after": {"loss": 1.9}},
    "empty lists": {"train": {"losses": [], "learning_rates": []}, "before": {}, "after": {}},
    "empty dict": {},
    "nan losses": {"train": {"losses": [math.nan, 1.0, math.nan, 0.5, math.inf],
                             "learning_rates": [1e-4] * 5},
                   "before": {"loss": math.nan, "flag": True}, "after": {"loss": 1.0, "new": 3}},
    "all nan": {"train": {"losses": [math.nan, math.nan], "learning_rates": [0.0, 0.0]}},
    "many labels": _many_labels(40),
    "all-zero confusion": {"after": {"confusion": [[0, 0], [0, 0]], "labels": ["a", "b"]}},
    "ragged confusion": {"after": {"confusion": [[1, 2], [3]], "labels": ["a", "b"]}},
    "labels mismatch": {"after": {"confusion": [[1, 2], [3, 4]], "labels": ["only one"]}},
}


@pytest.mark.parametrize("metrics", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_odd_inputs_still_draw(tmp_path, metrics):
    out = write_report(tmp_path / "report.png", metrics)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]


def test_odd_inputs_are_drawn_sensibly():
    axes = axes_by_label(build_figure(EDGE_CASES["nan losses"]))
    assert "3 non-finite" in axes["loss"].get_title()
    assert set(axes) == {"loss", "learning rate", "metric:loss", "metric:new"}  # bools are not metrics
    assert "no steps logged" in axes_by_label(build_figure({}))["loss"].texts[0].get_text()
    many = axes_by_label(build_figure(EDGE_CASES["many labels"]))
    assert "confusion:before" not in many  # 40 labels: only the after matrix, at full width
    ticks = many["confusion:after"].get_xticklabels()
    assert len(ticks) == 40 and ticks[0].get_rotation() == 45


def test_pyplot_is_never_imported(tmp_path):
    """A notebook's pyplot state and backend stay as the user set them."""
    code = ("import sys; from pathlib import Path; from kit.plots import write_report; "
            f"write_report(Path({str(tmp_path / 'r.png')!r}), {{'train': {{'losses': [1.0, 0.5]}}}}); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
