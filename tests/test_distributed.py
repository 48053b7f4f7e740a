"""Every GPU: the data-parallel path run for real on CPU, two gloo processes (`nproc=2`, or the
user's own torchrun), against one process with the same effective batch; and two machines, as
two torchrun launchers on this one, against `nproc=2`."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ROOT, SAY_WORDS, write_jsonl
from safetensors.torch import load_file

from kit import checkpoints

ROWS = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
        for w in SAY_WORDS]


def chat(model, data, out, *extra):
    return [sys.executable, str(ROOT / "recipes" / "chat.py"), f"model={model}", f"data={data}",
            "batch_size=2", "eval_samples=2", "max_new_tokens=4", "export=adapter",
            f"output_dir={out}", *extra]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, **kw)


def metrics_of(proc, out):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


STEPS = ("max_steps=6", "save_steps=3")


@pytest.fixture(scope="module")
def two_processes(taught_model_dir, tmp_path_factory):
    """`nproc=2` on one launcher: (the run, its metrics, its output_dir), which one process and
    two machines are compared against."""
    folder = tmp_path_factory.mktemp("two-processes")
    out = folder / "two"
    proc = run(chat(taught_model_dir, write_jsonl(folder / "d.jsonl", ROWS), out, "nproc=2", *STEPS))
    return proc, metrics_of(proc, out), out


def same_adapter(a_dir, b_dir) -> None:
    """Same weights, up to the float rounding of one pass of 2 rows against two passes of 1."""
    a = load_file(a_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(b_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k].float(), b[k].float()
        assert (x - y).norm() <= 0.02 * x.norm(), k


def same_training(one: dict, two: dict) -> None:
    """The same rows make up each step (each rank a different half of them), so the curve is
    one process's, within float rounding, and every row's tokens are counted once."""
    assert two["train"]["ranks_agree"] is True  # DDP kept both ranks' adapters identical
    assert two["train"]["steps"] == one["train"]["steps"] == 6
    assert two["train"]["losses"] == pytest.approx(one["train"]["losses"], rel=1e-3)
    assert two["train"]["tokens"] == one["train"]["tokens"]


@pytest.mark.slow
def test_two_processes_train_like_one_and_rank_0_alone_writes(taught_model_dir, two_processes, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    one_out = tmp_path / "one"
    one = metrics_of(run(chat(taught_model_dir, data, one_out, "nproc=1", *STEPS)), one_out)
    proc, two, two_out = two_processes

    assert (one["world_size"], two["world_size"]) == (1, 2)
    same_training(one, two)
    same_adapter(one_out, two_out)
    assert two["exports"]["adapter"]["ok"], two["exports"]

    # Rank 0 alone wrote the exports, the report and the markers; each complete checkpoint
    # holds both ranks' RNG states (the marker waits for every rank's part).
    said = proc.stdout
    assert said.count("launching 2 processes (gloo)") == 1
    assert said.count("Saving adapter to") == 1 and said.count("Run summary") == 1
    assert said.count("checkpoint saved at step 3") == 1
    checkpoints_hold_both_ranks(two_out)


def checkpoints_hold_both_ranks(out) -> None:
    for step in (3, 6):
        folder = out / "checkpoints" / f"checkpoint-{step}"
        names = {p.name for p in folder.iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", checkpoints.MARKER} <= names
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or ".kit-shared" in p.name]


def two_nodes(tmp_path, model, outs, *extra):
    """The several-machines command of docs/multi-gpu.md, one node per launcher, both on this
    machine (one core each): `torchrun --nnodes 2 --node_rank R --master_addr HOST
    --master_port PORT --nproc_per_node 1 recipes/chat.py ...`, node R writing to outs[R].
    wandb, if a run reports to it, logs offline into tmp_path/wandb-R. Returns (stdout, stderr,
    exit code) of each node."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    nodes = []
    for node, out in enumerate(outs):
        (tmp_path / f"wandb-{node}").mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "WANDB_DIR": str(tmp_path / f"wandb-{node}")}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                    str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
                    "--nproc_per_node", "1"]
        nodes.append(subprocess.Popen(torchrun + chat(model, data, out, *extra)[1:], cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    said = [p.communicate(timeout=600) for p in nodes]
    return [(out, err, p.returncode) for (out, err), p in zip(said, nodes)]


def wandb_records(path):
    """The records of a run's .wandb file (wandb's own protobuf messages, in LevelDB's log
    format: 32 KiB blocks of chunks, each with a 7-byte header), after its 7-byte file header.
    wandb 0.31 reads it in its Go core only."""
    from wandb.proto import wandb_internal_pb2

    raw, block, pos, part = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, size, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        part += raw[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            part = b""
            yield record


@pytest.mark.slow
def test_two_machines_train_like_two_processes_on_one_and_finish_their_wandb_run(
        taught_model_dir, two_processes, tmp_path):
    """Two nodes of one process each, meeting at 127.0.0.1, with one shared output_dir, train
    as `nproc=2` on one launcher does; report_to=wandb (offline) ends a finished run with every
    step's loss, though each rank ends with os._exit."""
    _, two, two_out = two_processes
    out = tmp_path / "shared"
    nodes = two_nodes(tmp_path, taught_model_dir, [out, out], *STEPS, "report_to=wandb")
    (said0, err0, code0), (said1, err1, code1) = nodes
    assert code0 == 0 and code1 == 0, err0[-3000:] + err1[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    same_training(two, m)
    same_adapter(two_out, out)
    assert m["exports"]["adapter"]["ok"], m["exports"]

    # Rank 0 (node 0) alone evaluates, exports and reports; node 1 saves only its RNG state
    # into each checkpoint of the shared folder.
    assert said0.count("Saving adapter to") == 1 and said0.count("Run summary") == 1
    assert "Saving adapter to" not in said1 and "Run summary" not in said1
    checkpoints_hold_both_ranks(out)

    # transformers logs to wandb from rank 0 alone: node 1 started no run; node 0's run holds
    # the six losses and its exit record (an unfinished offline run's file is its header alone).
    assert not list((tmp_path / "wandb-1").iterdir())
    files = list((tmp_path / "wandb-0").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = list(wandb_records(files[0]))
    losses = [json.loads(item.value_json) for r in records if r.HasField("history")
              for item in r.history.item if (item.key or "/".join(item.nested_key)) == "train/loss"]
    assert losses == pytest.approx(m["train"]["losses"], rel=1e-6)
    exits = [r.exit for r in records if r.HasField("exit")]
    assert len(exits) == 1 and exits[0].exit_code == 0


@pytest.mark.slow
def test_two_machines_without_a_shared_output_dir_stop_at_once(taught_model_dir, tmp_path):
    """Each node with its own output_dir (local disks): the run stops before the model loads,
    one line from rank 0, and neither folder is left behind."""
    outs = [tmp_path / "node0", tmp_path / "node1"]
    (said0, err0, code0), (said1, err1, code1) = two_nodes(tmp_path, taught_model_dir, outs, *STEPS)
    assert code0 != 0 and code1 != 0
    lines = [line for line in err0.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err0[-3000:]
    assert f"output_dir {outs[0]} is not one folder for every process: the processes on " in lines[0]
    assert "(rank 1) cannot see what rank 0 writes there" in lines[0]
    assert "must be a shared folder" in lines[0]
    assert not [line for line in err1.splitlines() if line.startswith("error: ")]  # rank 0 says it
    assert "held-out conversations" not in said0  # it stopped before reading the data
    assert not outs[0].exists() and not outs[1].exists()


@pytest.mark.slow
def test_the_users_own_torchrun_and_the_code_recipe_on_two_processes(taught_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 recipes/classification.py ...` runs as two ranks with no
    launch of ours; the code recipe takes nproc=2."""
    out = tmp_path / "cls"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                str(ROOT / "recipes" / "classification.py"), f"model={taught_model_dir}",
                "max_steps=2", "export=adapter", f"output_dir={out}"])
    m = metrics_of(proc, out)
    assert m["world_size"] == 2 and m["train"]["ranks_agree"] and m["train"]["steps"] == 2
    assert "launching" not in proc.stdout and proc.stdout.count("Run summary") == 1
    assert m["exports"]["adapter"]["ok"]

    out = tmp_path / "code"
    m = metrics_of(run([sys.executable, str(ROOT / "recipes" / "code.py"), f"model={taught_model_dir}",
                        "max_steps=2", "eval_limit=2", "max_new_tokens=8", "export=adapter",
                        "nproc=2", f"output_dir={out}"]), out)
    assert m["world_size"] == 2 and m["train"]["ranks_agree"]
    assert m["before"]["problems"] == m["after"]["problems"] == 2  # evaluated once, on rank 0


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_then_the_run_resumes_on_one_process(taught_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "killed"
    args = ("max_steps=60", "save_steps=3")
    proc = subprocess.Popen(chat(taught_model_dir, data, out, "nproc=2", *args), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "checkpoints" / "checkpoint-3" / checkpoints.MARKER
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    ranks = {c.environ().get("RANK"): c for c in psutil.Process(proc.pid).children(recursive=True)
             if c.environ().get("RANK") is not None}
    assert set(ranks) == {"0", "1"}, "the two ranks were not running"
    ranks["1"].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - killed < 60  # the launcher stopped rank 0 within its shutdown time
    assert proc.returncode == 1
    assert not (out / "metrics.json").exists(), "killed too late: the run had finished"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 was killed by SIGKILL; the launcher stopped the other processes")
    best = checkpoints.latest(out)[0]
    assert best is not None and f"the last complete checkpoint is {best}" in last
    assert "Traceback" not in err

    # The same run, now on one process, picks up from that checkpoint and finishes.
    again = run(chat(taught_model_dir, data, out, "nproc=1", *args))
    m = metrics_of(again, out)
    assert f"resuming from {best}" in again.stdout.replace("\n", "")
    assert m["train"]["steps"] == 60 and m["world_size"] == 1


@pytest.mark.parametrize("extra, message", [
    (("nproc=2", "batch_size=3"), "batch_size=3 does not split over 2 processes"),
    (("nproc=2", "data=missing.jsonl"), "missing.jsonl"),
])
def test_bad_input_stops_before_any_process_starts(taught_model_dir, tmp_path, extra, message):
    out = tmp_path / "bad"
    cmd = [a for a in chat(taught_model_dir, write_jsonl(tmp_path / "d.jsonl", ROWS), out)
           if not a.startswith("batch_size")] + list(extra)
    proc = run(cmd)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "launching" not in proc.stdout and not out.exists()


def test_nproc_is_a_checked_key():
    from kit.config import RecipeConfig, apply_overrides
    from kit.errors import KitError

    assert apply_overrides(RecipeConfig(), ["nproc=2"]).nproc == 2
    for bad in ("nproc=-1", "nproc=two"):
        with pytest.raises(KitError, match="nproc"):
            apply_overrides(RecipeConfig(), [bad])
    os.environ.pop("WORLD_SIZE", None)  # this process is no rank
    from kit import launch

    cfg = apply_overrides(RecipeConfig(), ["nproc=2", "batch_size=8", "micro_batch_size=4", "model=x/y"])
    assert launch.as_args(cfg)[:3] == ["model=x/y", "data=builtin", "output_dir=outputs/run"]
    assert apply_overrides(RecipeConfig(), launch.as_args(cfg)) == cfg  # the ranks get this config


@pytest.mark.parametrize("card, seq, says", [
    (15, 512, "data-parallel: 2 processes, one per GPU, each with the whole model and 2 of batch_size=4"),
    (5, 1024, "layers split over 2 GPUs in one process (device_map=balanced)"),
])
def test_make_plan_says_how_the_gpus_are_used(tmp_path, capsys, card, seq, says):
    """`make plan ... gpu_memory_gib=G nproc=2` on a machine without them: two such cards."""
    from kit import plan
    from kit.config import RecipeConfig, apply_overrides
    from kit.showplan import show_plan

    (tmp_path / "config.json").write_text(json.dumps({**plan.LLAMA_8B, "model_type": "llama"}))
    cfg = apply_overrides(RecipeConfig(), [f"model={tmp_path}", f"gpu_memory_gib={card}", "nproc=2",
                                           f"max_seq_length={seq}"])
    chosen = show_plan(cfg)
    out = " ".join(capsys.readouterr().out.split())
    assert says in out and chosen.fits
    if "split" in says:  # planned against both cards together, which one card alone is not
        assert f"2 × gpu_memory_gib={card}, layers split" in out and chosen.estimate.total > card


def test_a_model_too_big_for_every_card_together_stops(tmp_path):
    from kit import plan
    from kit.config import RecipeConfig, apply_overrides
    from kit.errors import KitError
    from kit.showplan import show_plan

    (tmp_path / "config.json").write_text(json.dumps({**plan.LLAMA_8B, "model_type": "llama"}))
    cfg = apply_overrides(RecipeConfig(), [f"model={tmp_path}", "gpu_memory_gib=3", "nproc=2"])
    with pytest.raises(KitError, match="split over 2 GPUs"):
        show_plan(cfg)
