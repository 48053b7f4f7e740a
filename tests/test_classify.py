"""Classification pieces: labels from data, balancing, metrics, scoring and the predict helper."""

import json

import pytest
from conftest import write_jsonl

from kit import classify, export, models
from kit.config import LoraConfig
from kit.errors import KitError


def load(tmp_path, rows, test_rows=None):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    eval_path = str(write_jsonl(tmp_path / "e.jsonl", test_rows)) if test_rows else ""
    return classify.load_labeled(str(path), eval_path, 0.25, "text", "label", 0)


def test_labels_from_training_split_ints_become_names(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(12)]
    d = load(tmp_path, rows, [{"text": "x", "label": 2}])
    assert d.labels == ["0", "1", "2"] and d.test_labels == ["2"]
    assert len(d.train_texts) == 12


def test_unseen_eval_label_is_dropped_with_a_warning(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(6)]
    d = load(tmp_path, rows, [{"text": "x", "label": "a"}, {"text": "y", "label": "zebra"}])
    assert d.test_texts == ["x"]
    assert any("never seen in training" in n and "'zebra'" in n for n in d.notes)


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a", "category": "x"}] * 4, r"no label column 'label'; columns found \['category', 'text'\]"),
    ([{"body": "a", "label": "x"}] * 4, "no text column 'text'"),
    ([{"text": f"t{i}", "label": "same"} for i in range(8)], "only one class"),
    ([{"text": "a", "label": None}] * 4, "not a string or an integer"),
])
def test_bad_classification_data(tmp_path, rows, message):
    with pytest.raises(KitError, match=message):
        load(tmp_path, rows)


def test_oversample_balances_classes():
    texts, labels = classify.oversample(["a1", "a2", "a3", "a4", "b1"], list("aaaab"), seed=0)
    assert labels.count("a") == labels.count("b") == 4
    assert {t for t, lab in zip(texts, labels) if lab == "b"} == {"b1"}


def test_metrics_accuracy_macro_f1_confusion():
    m = classify.metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"], ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    # F1: a = 2/3, b = 2/3, c = 1 → macro 0.7778
    assert m["macro_f1"] == pytest.approx(0.7778, abs=1e-4)


def test_builtin_tickets_data():
    d = classify.load_labeled("builtin:tickets", "", 0.2, "text", "label", 0)
    assert len(d.labels) >= 3 and len(d.train_texts) >= 200 and len(d.test_texts) >= 40
    assert not set(d.train_texts) & set(d.test_texts)


def test_score_and_predict_from_an_exported_folder(tiny_model_dir, tmp_path):
    device = models.detect_device()
    model, tokenizer = models.load(models.resolve_model(str(tiny_model_dir), device), 128, False)
    model = models.add_lora(model, LoraConfig(r=4), False, 0)
    labels = ["billing", "shipping", "other"]
    probs = classify.score(model, tokenizer, ["I was charged twice", "Where is my parcel?"], labels)
    assert len(probs) == 2
    for p in probs:
        assert set(p) == set(labels) and sum(p.values()) == pytest.approx(1.0, abs=1e-3)

    folder = export.save_adapter(model, tokenizer, tmp_path / "adapter",
                                 {classify.LABELS_FILE: classify.labels_file(labels)})
    assert json.loads((folder / "labels.json").read_text())["labels"] == labels
    predicted = classify.predict(folder, ["I was charged twice"])
    label, p = predicted[0]
    assert label in labels and label == max(p, key=p.get)
    with pytest.raises(KitError, match="no labels.json"):
        classify.predict(tiny_model_dir, ["x"])
