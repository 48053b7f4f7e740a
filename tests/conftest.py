"""Shared fixtures: everything is built offline, on CPU, from the embedded GGUF's tokenizer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# `make test` runs the suite in as many pytest-xdist workers as the machine has cores
# (PYTEST_XDIST_WORKER_COUNT): each worker, and every process its tests start, then takes its
# share of the cores' threads (set before torch loads), so two workers on 2 cores do not fight
# over them. Much of the suite waits on one thread anyway (fresh processes importing Unsloth).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(_share)

import kit.models  # noqa: F401, E402  (Unsloth patches transformers/trl/peft on import: load it first)

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub


@pytest.fixture(scope="session")
def tokenizer():
    from kit.embedded import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A random-init 2-layer Llama with SmolLM2's tokenizer and chat template (~3.5M params)."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def fim_tokenizer():
    """SmolLM2's tokenizer plus StarCoder-style fill-in-the-middle tokens."""
    from kit.embedded import build_tokenizer

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]})
    return tok


@pytest.fixture(scope="session")
def tiny_fim_model_dir(tmp_path_factory, fim_tokenizer) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("tiny-fim"), fim_tokenizer)


@pytest.fixture(scope="session")
def taught_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The tiny Llama, taught (full parameters) to answer "Done!" and end its turn, whatever
    it is asked: for runs whose exports must pass their check (a random model never stops)."""
    path = _tiny_llama(tmp_path_factory.mktemp("taught-llama"), tokenizer)
    teach(path, tokenizer, [[{"role": "user", "content": f"Say {w}."},
                             {"role": "assistant", "content": "Done!"}] for w in SAY_WORDS])
    return path


SAY_WORDS = "yes no maybe hello thanks sure fine great ok cool right left up down".split()


def overfit(model, tokenizer, conversations: list[list[dict]], lr: float, steps: int, stop: float,
            max_len: int = 128) -> float:
    """Train `model`'s trainable parameters (AdamW, fp32, one batch of all `conversations`,
    prompt tokens masked) until the loss is under `stop` or `steps` run out: the last loss."""
    import torch

    from kit import data

    rows = [data.encode(tokenizer, c, max_len) for c in conversations]
    ids, mask, labels = data.pad_batch(rows, tokenizer.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if loss.item() < stop:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    return loss.item()


def teach(path: Path, tokenizer, conversations: list[list[dict]], steps: int = 150) -> None:
    """Overfit the saved model in `path` on `conversations` (full parameters, fp32) until it
    answers them and ends its turn; saved back in bf16 with its generation config."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    loss = overfit(model, tokenizer, conversations, lr=1e-2, steps=steps, stop=0.01)
    assert loss < 0.05, f"the fixture did not learn its conversations (loss {loss:.3f})"
    generation_config = model.generation_config
    model.to(torch.bfloat16).save_pretrained(path)
    generation_config.save_pretrained(path)


# Two adapters on the embedded model that say who they are (tests/test_serve.py and
# tests/test_gguf_lora.py share them): name → (answer, rsLoRA).
PERSONAS = {"pip": ("I am Pip, your pocket helper.", True), "bob": ("I am Bob the builder.", False)}
WHO_QUESTIONS = ["Who are you?", "What's your name?", "Introduce yourself.", "Tell me about you."]


def teach_lora(base_dir: Path, tokenizer, answer: str, rslora: bool, steps: int = 40):
    """A LoRA (r=16 on every projection, fp32, plain PEFT) on the model in `base_dir`, taught to
    answer WHO_QUESTIONS with `answer` and end its turn; returned in eval mode."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, use_rslora=rslora, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"]))
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
                     for q in WHO_QUESTIONS]
    loss = overfit(model, tokenizer, conversations, lr=2e-3, steps=steps, stop=0.02, max_len=64)
    assert loss < 0.1, f"the adapter did not learn its answer (loss {loss:.3f})"
    return model.eval()


def embedded_choice():
    """The embedded SmolLM2-135M-Instruct, converted once, as a recipe's model choice."""
    from kit import embedded
    from kit.choice import ModelChoice

    base_dir = embedded.ensure_converted(progress=lambda _: None)
    return ModelChoice(str(base_dir), "SmolLM2-135M-Instruct (embedded)", "", embedded.HUB_ID)


@contextmanager
def made_once(tmp_path_factory, name: str):
    """A folder for the whole test run, made by whichever pytest-xdist worker asks first while the
    others wait for it (a file lock in the run's shared temporary folder); with one process, a
    session fixture's folder. Yields (folder, ready): ready is False for the one who makes it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-N/, beside each worker's popen-gwK/
    folder = root / f"made-{name}"
    with FileLock(str(folder) + ".lock"):
        ready = (folder / ".made").is_file()
        if not ready:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, ready
        (folder / ".made").touch()


@pytest.fixture(scope="session")
def persona_adapters(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """PERSONAS taught on the embedded model (teach_lora) and saved as a recipe saves its adapter
    (export.save_adapter: the base named by Hub id, fingerprinted), each in NAME/adapter: name →
    NAME, a folder laid out as a run's output. Made once for all workers."""
    from kit import export

    with made_once(tmp_path_factory, "personas") as (root, ready):
        if not ready:
            choice = embedded_choice()
            for name, (answer, rslora) in PERSONAS.items():
                model = teach_lora(Path(choice.path), tokenizer, answer, rslora)
                export.save_adapter(model, tokenizer, root / name / "adapter", base=choice)
    return {name: root / name for name in PERSONAS}


def _tiny_llama(path: Path, tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat_row(question: str = "Hi?", answer: str = "Hello!") -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def run_recipe(name: str, *args: str, timeout: float = 900, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a recipe as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{name}.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """A `python3` kernelspec that runs this interpreter (the venv's), put first on JUPYTER_PATH,
    so the notebooks run against the checkout's stack whatever other kernels are installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (unsloth-recipe-kit venv)", "language": "python"}))
    names = ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "PYDEVD_DISABLE_FILE_VALIDATION")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(root), saved["JUPYTER_PATH"]) if p)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    yield "python3"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class BareKernel:
    """A Jupyter kernel on an environment like a fresh Colab or Kaggle runtime: the stack is
    installed and the kit is not."""

    name: str  # its kernel spec's name
    prefix: Path  # sys.prefix in the kernel
    python: Path


KIT_ENTRIES = ("kit", "unsloth_recipe_kit", "__editable__")  # the kit, its dist-info, its finder


@pytest.fixture
def bare_kernel(tmp_path, monkeypatch) -> BareKernel:
    """A new venv that sees this venv's stack but not the kit, and a kernel spec for it, first on
    JUPYTER_PATH; one per test (a fraction of a second), as a cell may install the kit into it.
    Each site-packages folder on this interpreter's path is mirrored as a folder of links
    without the kit's entries (the editable install's finder and dist-info), and the new venv's
    one .pth file lists those mirrors: a .pth line adds a folder to the path without running the
    .pth files inside it. pip there installs into the new venv. The kernel runs offline
    (PIP_NO_INDEX): whatever a cell installs must come from a local file."""
    import venv

    root = tmp_path / "bare"
    prefix = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(prefix)
    python = prefix / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    mirrors = []
    for i, folder in enumerate(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)):
        mirror = root / f"stack{i}"
        mirror.mkdir()
        for entry in os.scandir(folder):
            if not entry.name.startswith(KIT_ENTRIES) and not entry.name.endswith(".pth"):
                (mirror / entry.name).symlink_to(entry.path)
        mirrors.append(str(mirror))
    (Path(purelib) / "_stack.pth").write_text("".join(m + "\n" for m in mirrors))

    spec = root / "jupyter" / "kernels" / "kit-bare"
    spec.mkdir(parents=True)
    argv = [str(python), "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    env = {"PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1", "VIRTUAL_ENV": str(prefix)}
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "env": env, "display_name": "Python 3 (stack, no kit)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        p for p in (str(root / "jupyter"), os.environ.get("JUPYTER_PATH")) if p))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return BareKernel("kit-bare", prefix, python)


# ---------------------------------------------------------------- the kit installed from its wheel


@dataclass
class Installed:
    """The kit built as a wheel and installed (without its dependencies, which the venv has)
    into a folder of its own, away from the checkout."""

    wheel: Path
    site: Path  # `pip install --target`: kit/ and kit/recipes/ as a user's site-packages has them

    def env(self) -> dict[str, str]:
        # Only the installed copy on the path: not the checkout (PYTHONPATH or the current folder).
        return {**os.environ, "PYTHONPATH": str(self.site)}

    def kit(self, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
        """`python -m kit ARGS` as a user of the installed package runs it, from `cwd` (outside
        the checkout)."""
        return subprocess.run([sys.executable, "-m", "kit", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=self.env())


def packaged_copy(dest: Path) -> Path:
    """The files a build of the package reads, copied from the checkout into `dest`, so that a
    build leaves no build/ or egg-info in the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("kit", "recipes"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="session")
def installed_kit(tmp_path_factory) -> Installed:
    """Build the wheel from a copy of the checkout's packaged files (so no build/ or egg-info is
    left in the checkout) with the venv's setuptools, and install it into a fresh folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = packaged_copy(root / "src")

    def pip(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input",
                               *args], capture_output=True, text=True, cwd=root)
        assert proc.returncode == 0, f"pip {args[0]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"

    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(src))
    [wheel] = (root / "dist").glob("*.whl")
    site = root / "site"
    pip("install", "--no-deps", "-q", "--target", str(site), str(wheel))
    return Installed(wheel, site)


@pytest.fixture(scope="session")
def code_run(installed_kit, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The code recipe, 20 steps on the embedded SmolLM2-135M, adapter export only, run from the
    installed wheel (once for all workers): its output folder and the process.
    tests/test_recipes.py checks the run; tests/test_grpo.py starts GRPO on code tasks from its
    adapter."""
    with made_once(tmp_path_factory, "code-run") as (root, ready):
        out, record = root / "code", root / "process.json"
        if not ready:
            proc = installed_kit.kit("code", "max_steps=20", "eval_limit=16", "export=adapter",
                                     f"output_dir={out}", cwd=root)
            record.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode,
                                          "stdout": proc.stdout, "stderr": proc.stderr}))
    return out, subprocess.CompletedProcess(**json.loads(record.read_text()))
