"""Classification pieces: labels from data, balancing, metrics, scoring and the predict helper."""

import json

import pytest
from conftest import write_jsonl

from kit import classify, export, models
from kit.choice import resolve_model
from kit.config import LoraConfig
from kit.device import detect_device
from kit.errors import KitError

# Labels of different lengths, one of several tokens, listed longest first: a model that
# scored nothing would pick the first label, one that scores them picks a short one.
LABELS = ["delivery problem or delay", "billing", "other", "x"]
LONG_TEXT = "My order has not arrived and nobody answers my emails about it. " * 300


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
    device = detect_device()
    model, tokenizer = models.load(resolve_model(str(tiny_model_dir), device), 128, False)
    model = models.add_lora(model, LoraConfig(r=4), False, 0)
    texts = ["I was charged twice", "Where is my parcel?"]
    probs = classify.score(model, tokenizer, texts, LABELS)
    assert len(probs) == 2
    for p in probs:
        assert set(p) == set(LABELS) and sum(p.values()) == pytest.approx(1.0, abs=1e-3)
    # The Unsloth PEFT model in training mode, as the recipe scores it before and after
    # training: the same numbers as full forwards (bf16 here), and it is left training.
    model.train()
    got = classify.logliks(model, tokenizer, texts, LABELS, batch_size=1)
    assert model.training
    assert got.numpy() == pytest.approx(reference_logliks(model, tokenizer, texts, LABELS).numpy(), abs=1e-2)

    folder = export.save_adapter(model, tokenizer, tmp_path / "adapter",
                                 {classify.LABELS_FILE: classify.labels_file(LABELS, 128)})
    assert json.loads((folder / "labels.json").read_text())["labels"] == LABELS
    # A text far longer than max_seq_length=128 (from labels.json) is cut, not its label:
    # it scores as its cut version does, and the long first label does not win by default.
    cut = classify.fit_texts(tokenizer, [LONG_TEXT], LABELS, 128)[0][0]
    (label, p), (label_cut, p_cut), (short_label, _) = classify.predict(
        folder, [LONG_TEXT, cut, "I was charged twice"])
    assert label in LABELS and label == max(p, key=p.get) and short_label in LABELS
    assert (label, p) == (label_cut, p_cut)
    assert label != LABELS[0] and p[LABELS[0]] < 0.01
    with pytest.raises(KitError, match="no labels.json"):
        classify.predict(tiny_model_dir, ["x"])


# ------------------------------------------------------------ scoring: truncation, equivalence

def reference_logliks(model, tokenizer, texts, label_set):
    """The scoring before the shared prompt: each (text, label) conversation encoded whole and
    run through the model alone, log-softmax over the full vocabulary at every position."""
    import torch

    from kit import data

    out = torch.empty((len(texts), len(label_set)))
    model.eval()
    with torch.no_grad():
        for i, text in enumerate(texts):
            for j, lab in enumerate(label_set):
                enc = data.encode(tokenizer, classify.prompt(text, label_set)
                                  + [{"role": "assistant", "content": lab}], 10_000)
                ids, mask, labels = data.pad_batch([enc], tokenizer.pad_token_id)
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1], -1)
                target = labels[:, 1:]
                picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                out[i, j] = (picked * (target != -100)).sum()
    return out


def sharpened(path):
    """The tiny model in fp32 with larger random weights, so texts and labels score far apart
    and a wrong mask or position shows in the numbers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return model


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    import families

    return families.tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"))


@pytest.mark.parametrize("family", ["smollm2", "qwen2"])
def test_shared_prompt_scores_equal_full_forward_log_likelihoods(family, tiny_model_dir, qwen2_dir,
                                                                monkeypatch):
    import torch
    from transformers import AutoTokenizer

    path = tiny_model_dir if family == "smollm2" else qwen2_dir
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = sharpened(path)
    texts = ["I was charged twice", "hi",
             "Where is my parcel? It has been a week and nothing arrived, not even an email."]
    lengths = {len(tokenizer(lab, add_special_tokens=False)["input_ids"]) for lab in LABELS}
    assert max(lengths) >= 3 and len(lengths) >= 2
    want = reference_logliks(model, tokenizer, texts, LABELS)
    got = classify.logliks(model, tokenizer, texts, LABELS, batch_size=2)  # batches of unequal prompts
    assert got.shape == want.shape
    assert (want.max() - want.min()) > 1.0  # the scores differ enough to show a mistake
    assert got.numpy() == pytest.approx(want.numpy(), abs=2e-4)
    # Nothing cached (the fallback for a row whose prompt would be empty): the same numbers.
    rows = [classify._row(tokenizer, t, LABELS, 512) for t in texts]
    with torch.no_grad():
        unshared = classify._score_rows(model, [classify._unshared(r) for r in rows],
                                        tokenizer.pad_token_id, "cpu")
    assert unshared.numpy() == pytest.approx(want.numpy(), abs=2e-4)
    # A vocabulary too large for the logit budget: one text per batch, the same numbers.
    monkeypatch.setattr(classify, "LOGIT_BUDGET", 1)
    assert classify.logliks(model, tokenizer, texts, LABELS).numpy() == pytest.approx(want.numpy(), abs=2e-4)


def test_texts_are_cut_at_their_end_keeping_instruction_and_label(tokenizer):
    from kit import data

    short = "Where is my parcel?"
    (cut, kept), n_cut = classify.fit_texts(tokenizer, [LONG_TEXT, short], LABELS, 128)
    assert n_cut == 1 and kept == short
    assert LONG_TEXT.startswith(cut) and 100 < len(cut) < len(LONG_TEXT)
    examples = classify.to_examples([cut], [LABELS[0]], LABELS)
    encoded, notes = data.encode_all(tokenizer, examples, 128, "train")
    assert notes == [] and len(encoded[0].input_ids) <= 128
    text = tokenizer.decode(encoded[0].input_ids)
    assert ", ".join(LABELS) in text and "Message: My order" in text
    replies = [tokenizer.decode([t for t in encoded[0].labels if t != -100])]
    assert replies[0].startswith("delivery problem or delay")


def test_label_list_too_long_for_max_seq_length_is_one_clear_error(tokenizer):
    with pytest.raises(KitError, match=r"max_seq_length=24 is too short .* longest label \('delivery"):
        classify.fit_texts(tokenizer, ["hi"], LABELS, 24)
