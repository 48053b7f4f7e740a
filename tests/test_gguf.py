"""GGUF export: llama.cpp's converter and quantizer run offline from the tools that
scripts/setup_llama.sh installs, the files load in llama-cpp-python, and failures leave nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit import embedded, gguf
from kit.errors import KitError

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return embedded.ensure_converted(progress=lambda _: None)


@pytest.fixture(scope="module")
def q8(smollm2, tmp_path_factory) -> Path:
    assert gguf.tools_available() is None, "the GGUF tools are missing: run `make gguf-tools`"
    return gguf.export_gguf(smollm2, tmp_path_factory.mktemp("q8") / "gguf", "q8_0",
                            progress=lambda _: None, name="smollm2")


@pytest.fixture(scope="module")
def q4(smollm2, tmp_path_factory) -> Path:
    return gguf.export_gguf(smollm2, tmp_path_factory.mktemp("q4") / "gguf", "q4_k_m",
                            progress=lambda _: None, name="smollm2")


@pytest.fixture
def fake_model(tmp_path) -> Path:
    """Enough of a model folder to get past the checks that come before conversion."""
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    return tmp_path / "merged"


def _fields(path: Path) -> tuple[dict, list]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}, reader.tensors


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_q8_0_has_smollm2_architecture_and_tokenizer(q8, smollm2):
    assert q8.name == "smollm2-q8_0.gguf"
    assert _only(q8.parent) == ["Modelfile", "smollm2-q8_0.gguf"], "no temporary files left"
    f, tensors = _fields(q8)
    assert f["general.architecture"] == "llama"
    assert f["llama.block_count"] == 30 and f["llama.embedding_length"] == 576
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # EOS must be <|im_end|> (what ends each assistant turn), not transformers' <|im_start|>.
    assert f["tokenizer.ggml.eos_token_id"] == 2 and f["tokenizer.ggml.bos_token_id"] == 1
    assert f["tokenizer.ggml.add_bos_token"] is False  # ChatML prompts carry no BOS
    assert f["tokenizer.chat_template"] == (smollm2 / "chat_template.jinja").read_text()
    kinds = {t.tensor_type.name for t in tensors}
    assert kinds == {"Q8_0", "F32"}  # norms stay f32, every matrix is q8_0
    assert 130 * 2**20 < q8.stat().st_size < 150 * 2**20


@pytest.mark.slow
def test_gguf_tokenizes_like_the_hf_tokenizer(q8, tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Café 2024, naïve 你好!\n\tdef f(x): return x**2"}],
        tokenize=False, add_generation_prompt=True)
    script = ("import json, sys; from llama_cpp import Llama; "
              "llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False); "
              "print(json.dumps(llm.tokenize(sys.argv[2].encode(), add_bos=False, special=True)))")
    proc = subprocess.run([sys.executable, "-c", script, str(q8), text],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_q8_0_answers_and_stops_in_llama_cpp(q8):
    res = gguf.verify_gguf(q8, PROMPT)
    assert "error" not in res, res
    assert res["ok"] and res["stopped"] and res["finish_reason"] == "stop", res
    assert "Paris" in res["reply"]
    assert res["chat_format"] == "chat_template.default"  # the GGUF's own template rendered it


@pytest.mark.slow
def test_q4_k_m_quantized_through_the_binding(q4, q8):
    assert _only(q4.parent) == ["Modelfile", "smollm2-q4_k_m.gguf"]
    f, tensors = _fields(q4)
    assert f["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    kinds = {t.tensor_type.name for t in tensors}
    # SmolLM2's 576-wide rows are not a multiple of 256, so llama.cpp falls back to q5_0 for
    # most matrices; the ones 1536 wide get real k-quants.
    assert {"Q4_K", "Q6_K"} <= kinds, kinds
    assert q4.stat().st_size < 0.8 * q8.stat().st_size
    assert f["tokenizer.ggml.eos_token_id"] == 2
    say_yes = [{"role": "user", "content": "Say yes."}]
    res = gguf.verify_gguf(q4, say_yes, max_new_tokens=24)
    assert "error" not in res and res["reply"], res
    # The 4-bit file still ends its turn by itself, well before the limit, and passes the check.
    assert res["finish_reason"] == "stop" and res["completion_tokens"] < 24 and res["ok"] is True, res
    # Cut off before then, the same file gives the start of the same reply and fails the check.
    cut = gguf.verify_gguf(q4, say_yes, max_new_tokens=4)
    assert cut["finish_reason"] == "length" and cut["completion_tokens"] == 4, cut
    assert cut["reply"] and res["reply"].startswith(cut["reply"]) and cut["reply"] != res["reply"]
    assert cut["ok"] is False and not cut["stopped"]


@pytest.mark.slow
def test_modelfile_for_smollm2(q8):
    text = (q8.parent / "Modelfile").read_text()
    assert "FROM ./smollm2-q8_0.gguf\n" in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in text
    assert text.count("TEMPLATE") == 1 and "<|im_start|>assistant\n\"\"\"" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text


LLAMA3 = ("{{ bos_token }}{% for m in messages %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA = ("{% for m in messages %}"
         "{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_chat_family_detection():
    assert gguf.chat_family(CHATML) == ("chatml", None)
    assert gguf.chat_family(LLAMA3, "<|begin_of_text|>", "<|eot_id|>") == ("llama3", None)
    assert gguf.chat_family(GEMMA, "<bos>", "<eos>") == (None, None)
    assert gguf.chat_family(None) == (None, None)
    assert gguf.chat_family("{{ raise_exception('no') }}") == (None, None)


def test_modelfile_llama3_and_unknown_family():
    text = gguf.modelfile_text("m-q4_k_m.gguf", LLAMA3, "<|begin_of_text|>", "<|end_of_text|>")
    assert "FROM ./m-q4_k_m.gguf\n" in text
    assert "<|begin_of_text|>" not in text.split("TEMPLATE", 1)[1].split('"""')[1]  # llama.cpp adds BOS
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n\"\"\"" in text
    for stop in ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"):
        assert f'PARAMETER stop "{stop}"' in text

    text = gguf.modelfile_text("g.gguf", GEMMA, "<bos>", "<end_of_turn>")
    assert not [ln for ln in text.splitlines() if ln.startswith(("TEMPLATE", "SYSTEM"))]
    assert "tokenizer.chat_template" in text  # says where Ollama's template comes from instead
    assert 'PARAMETER stop "<end_of_turn>"' in text


def test_bad_quant_is_one_line_and_writes_nothing(tmp_path, fake_model):
    out = tmp_path / "gguf"
    with pytest.raises(KitError) as exc:
        gguf.export_gguf(fake_model, out, "q3_xs", progress=lambda _: None)
    msg = str(exc.value)
    assert "\n" not in msg and "q3_xs" in msg and "q4_k_m" in msg
    assert not out.exists()


def test_missing_tools_are_one_line_and_write_nothing(tmp_path, fake_model, monkeypatch):
    monkeypatch.setenv("KIT_LLAMA_CPP", str(tmp_path / "no-llama.cpp"))
    assert "make gguf-tools" in gguf.tools_available("q8_0")
    out = tmp_path / "gguf"
    with pytest.raises(KitError) as exc:
        gguf.export_gguf(fake_model, out, "q8_0", progress=lambda _: None)
    assert "\n" not in str(exc.value) and "scripts/setup_llama.sh" in str(exc.value)
    assert not out.exists()

    monkeypatch.delenv("KIT_LLAMA_CPP")
    monkeypatch.setattr(gguf, "_has_binding", lambda: False)
    assert gguf.tools_available("q8_0") is None  # the converter alone makes q8_0
    with pytest.raises(KitError, match="llama_cpp"):
        gguf.export_gguf(fake_model, out, "q4_k_m", progress=lambda _: None)
    assert not out.exists()
    res = gguf.verify_gguf(out / "x.gguf", PROMPT)
    assert not res["ok"] and "make gguf-tools" in res["error"]


def test_not_a_model_folder(tmp_path):
    with pytest.raises(KitError, match="no config.json"):
        gguf.export_gguf(tmp_path, tmp_path / "gguf", "q8_0", progress=lambda _: None)


def test_converter_failure_leaves_old_results_and_no_partial_file(tmp_path, fake_model):
    assert gguf.tools_available("q8_0") is None, "the GGUF tools are missing: run `make gguf-tools`"
    out = tmp_path / "gguf"
    out.mkdir()
    (out / "Modelfile").write_text("old")
    with pytest.raises(KitError) as exc:
        gguf.export_gguf(fake_model, out, "q8_0", progress=lambda _: None)
    msg = str(exc.value)
    assert "\n" not in msg and "NoSuchForCausalLM" in msg and not msg.startswith("ERROR")
    assert _only(out) == ["Modelfile"] and (out / "Modelfile").read_text() == "old"


def test_verify_reports_a_broken_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    res = gguf.verify_gguf(bad, PROMPT, timeout=120)
    assert res["ok"] is False and res["error"] and "\n" not in res["error"]
