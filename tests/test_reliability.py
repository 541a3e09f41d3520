"""Crash safety through the real CLIs: kill -9 at any moment, preemption signals under torchrun, a full disk, secrets.

Runs are killed for real (SIGKILL to the processes), also while a checkpoint is being written: the test polls for
the writer's temporary file (`checkpoint_step_N.pt.tmp-PID`) and kills then; a kill that lands after the rename is
retried at the next checkpoint. The VLM has SmolVLM2's real vocabulary size (frozen random embeddings, cheap to
run) so that a checkpoint is ~30 MB and its write takes long enough to be caught in the act.
"""

import ast
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fixtures_policy import tiny_vlm_dir  # noqa: F401  (session fixture)
from test_ddp import free_port
from torch.utils.data import DataLoader
from train_runs import ROOT, assert_same_weights, env, load, make_run_dir, train

from insertion_vla.checkpoint import find_resume_checkpoint
from insertion_vla.train import ignore_stop_signals

SMOLVLM2_VOCAB = 49280


@pytest.fixture(scope="module")
def large_vlm(tmp_path_factory, tiny_vlm_dir):  # noqa: F811
    """The tiny VLM with SmolVLM2's vocabulary size: same speed, ~30 MB checkpoints."""
    vlm = Path(shutil.copytree(tiny_vlm_dir, tmp_path_factory.mktemp("large_vlm") / "vlm"))
    config = json.loads((vlm / "config.json").read_text())
    config["text_config"]["vocab_size"] = SMOLVLM2_VOCAB
    (vlm / "config.json").write_text(json.dumps(config))
    return vlm


# ---- running and killing process trees ---------------------------------------------------------------------------


class Run:
    """A training started in the background (the CLI or the torchrun launcher); its output collected line by line."""

    def __init__(self, argv, preexec_fn=None, **extra_env):
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=ROOT, env=env(PYTHONUNBUFFERED=1, **extra_env), preexec_fn=preexec_fn)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout=300):
        """Poll `condition()` every millisecond until it returns something true; that value is returned."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = condition()
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended ({self.proc.returncode}) before the awaited moment:\n{self.output[-4000:]}")
            time.sleep(0.001)
        self.kill()
        pytest.fail(f"timed out waiting:\n{self.output[-4000:]}")

    def wait_for_line(self, text):
        return self.wait_for(lambda: any(text in line for line in list(self.lines)))

    def processes(self) -> list[psutil.Process]:
        """The launcher and everything under it: torchrun, the workers, their DataLoader workers."""
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def worker(self, rank: int) -> psutil.Process:
        """The training process of `rank` (its DataLoader workers, forked from it, share its environment)."""
        return next(p for p in self.processes()
                    if p.environ().get("RANK") == str(rank) and "torch.distributed.run" in " ".join(p.parent().cmdline()))

    def send(self, sig, processes=None):
        for p in processes if processes is not None else self.processes():
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def kill(self):
        """kill -9 of every process of the run at once, as the OOM killer or a node failure would."""
        self.send(signal.SIGKILL)
        return self.finish()

    def finish(self, timeout=300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code


def single(config, *args, **kw):
    return Run([sys.executable, ROOT / "train_smolvla_sim.py", "--config", config, *args], **kw)


def launcher(config, *args, **kw):
    return Run(["bash", ROOT / "train_smolvla_sim.sh", *args], NUM_GPUS=2, CONFIG=config, MASTER_PORT=free_port(), **kw)


def temporaries(directory: Path, prefix: str) -> list[Path]:
    return [Path(e.path) for e in os.scandir(directory) if e.name.startswith(prefix) and ".tmp-" in e.name] \
        if directory.is_dir() else []


def kill_inside_a_checkpoint_write(start, ckpts: Path, attempts=4) -> Path:
    """Start runs with `start()` and kill -9 each as soon as a checkpoint temporary appears, until one kill lands
    before the rename (its temporary is left behind); returns that temporary."""
    for _ in range(attempts):
        run = start()
        tmp = run.wait_for(lambda: temporaries(ckpts, "checkpoint_step_"))[0]
        run.kill()
        if tmp.exists():
            return tmp
    pytest.fail(f"no kill landed inside a checkpoint write in {attempts} attempts")


def assert_every_checkpoint_loads(ckpts: Path) -> int:
    """Every *.pt left behind loads with weights_only=True; returns the step --resume auto will take."""
    for path in ckpts.glob("*.pt"):
        assert load(path)["step"] >= 0, path
    newest = find_resume_checkpoint(ckpts)
    return load(newest)["step"] if newest else 0


def resumed_from(output: str) -> int:
    marker = "resumed from "
    assert marker in output, output[-3000:]
    return int(output.split(marker, 1)[1].split("checkpoint_step_", 1)[1].split(".pt", 1)[0])


# ---- one process --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, large_vlm):
    """A config checkpointing every step (keeping 3) and its uninterrupted 8-step reference run."""
    tmp = tmp_path_factory.mktemp("one_process")
    config = make_run_dir(tmp, large_vlm, n_episodes=3, length=12,
                          training={"steps": 8, "save_freq": 1, "log_freq": 1, "keep_last_checkpoints": 3},
                          validation={"enable": False})
    train(config, "--output_dir", tmp / "reference")
    return config, tmp / "reference" / "checkpoints"


def test_kill_9_at_any_moment_then_resume_auto_ends_with_the_uninterrupted_weights(one_process, tmp_path):
    config, reference = one_process
    ckpts = tmp_path / "out" / "checkpoints"
    args = ("--output_dir", tmp_path / "out", "--resume", "auto")

    # between checkpoints: after step 3's line
    run = single(config, *args)
    run.wait_for_line("] Step 3/8")
    assert run.kill() == -signal.SIGKILL
    newest = assert_every_checkpoint_loads(ckpts)
    assert newest >= 2

    # inside a checkpoint write: the half-written temporary stays, every *.pt still loads, resume takes the newest
    stale = kill_inside_a_checkpoint_write(lambda: single(config, *args), ckpts)
    newest = assert_every_checkpoint_loads(ckpts)
    assert int(stale.name.split("_")[2].split(".")[0]) == newest + 1  # the step being written is not taken

    # inside the final export (final_hf.tmp-PID), after the last checkpoint
    run = single(config, *args)
    run.wait_for(lambda: temporaries(ckpts, "final_hf"))
    run.kill()
    assert not (ckpts / "final_hf").exists() and assert_every_checkpoint_loads(ckpts) == 8

    res = train(config, *args)
    assert resumed_from(res.stdout) == 8 and "Exported" in res.stdout
    assert (ckpts / "final_hf" / "model.safetensors").is_file()
    assert not list(ckpts.parent.rglob("*.tmp-*")), "stale temporaries of the killed runs are removed on resume"
    assert_same_weights(ckpts / "checkpoint_step_8.pt", reference / "checkpoint_step_8.pt")
    assert train_losses(tmp_path / "out") == train_losses(reference.parent)  # the log was repaired too


def train_losses(out: Path) -> list[str]:
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    return [(step, value) for step, metric, value in rows if metric == "train/loss"]


def file_size_limit(limit_bytes: int):
    """A full disk, for real: writes past `limit_bytes` fail with EFBIG (RLIMIT_FSIZE; SIGXFSZ ignored, as Python
    does anyway), however the process writes them."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_disk_full_at_a_checkpoint_is_a_clear_error_and_earlier_checkpoints_load(one_process, tmp_path):
    config, reference = one_process
    ckpts = tmp_path / "out" / "checkpoints"
    args = ("--output_dir", tmp_path / "out", "--resume", "auto")
    train(config, *args, "--training.steps=4")

    run = single(config, *args, preexec_fn=file_size_limit(10 * 2**20))  # a checkpoint is ~30 MB
    assert run.finish() == 1
    assert "Traceback" not in run.output
    error = next(line[line.index("error:"):] for line in run.lines if "error:" in line)  # after the progress bar
    assert error.startswith(f"error: cannot write {ckpts / 'checkpoint_step_5.pt'}: File too large. To fix: free space")
    assert "ulimit -f" in error and "Earlier checkpoints are intact: `--resume auto` continues" in error
    assert sorted(p.name for p in ckpts.iterdir()) == [  # final_hf: the 4-step run's export
        "checkpoint_latest.pt", "checkpoint_step_2.pt", "checkpoint_step_3.pt", "checkpoint_step_4.pt", "final_hf"]
    assert assert_every_checkpoint_loads(ckpts) == 4 and load(ckpts / "checkpoint_latest.pt")["step"] == 4

    res = train(config, *args)  # space freed: it continues from the newest and ends as the uninterrupted run
    assert resumed_from(res.stdout) == 4
    assert_same_weights(ckpts / "checkpoint_step_8.pt", reference / "checkpoint_step_8.pt")


# ---- torchrun, two processes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, large_vlm):
    """2 processes with a DataLoader worker each (what SLURM signals too) and the uninterrupted 16-step run."""
    tmp = tmp_path_factory.mktemp("two_processes")
    config = make_run_dir(tmp, large_vlm, n_episodes=5, length=12,
                          training={"steps": 16, "batch_size": 2, "save_freq": 2, "log_freq": 1, "num_workers": 1},
                          validation={"enable": False})
    run = launcher(config, "--output_dir", tmp / "reference")
    assert run.finish() == 0, run.output[-4000:]
    return config, tmp / "reference" / "checkpoints"


def test_kill_9_with_two_processes_then_resume_auto_ends_with_the_uninterrupted_weights(two_processes, tmp_path):
    config, reference = two_processes
    ckpts = tmp_path / "out" / "checkpoints"
    args = ("--output_dir", tmp_path / "out", "--resume", "auto")

    # one worker dies (the OOM killer): torchrun stops the other, the job fails, checkpoints stay whole
    run = launcher(config, *args)
    run.wait_for_line("] Step 5/16")
    run.send(signal.SIGKILL, [run.worker(rank=1)])
    assert run.finish() != 0
    assert assert_every_checkpoint_loads(ckpts) >= 4

    # the whole job dies while rank 0 writes a checkpoint
    kill_inside_a_checkpoint_write(lambda: launcher(config, *args), ckpts)
    newest = assert_every_checkpoint_loads(ckpts)

    run = launcher(config, *args)
    assert run.finish() == 0, run.output[-4000:]
    assert resumed_from(run.output) == newest
    assert not temporaries(ckpts, "checkpoint")
    assert_same_weights(ckpts / "checkpoint_step_16.pt", reference / "checkpoint_step_16.pt")


def stopped_at(run: Run) -> int:
    """The stop step a cleanly stopped run reports (rank 0 alone prints, once)."""
    assert run.finish() == 0, run.output[-4000:]
    lines = [line for line in run.lines if "Stop signal received: checkpoint written at step" in line]
    assert len(lines) == 1, run.output[-4000:]
    return int(lines[0].split("at step ", 1)[1].split(";", 1)[0])


def test_dataloader_workers_ignore_stop_signals_except_their_parents_terminate():
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, worker_init_fn=ignore_stop_signals)
    batches = iter(loader)
    assert next(batches).tolist() == [0, 1]
    [worker] = multiprocessing.active_children()
    for sig in ("-TERM", "-USR1"):  # sent by another process, as SLURM sends them to every process of a job
        subprocess.run(["kill", sig, str(worker.pid)], check=True)
    assert next(batches).tolist() == [2, 3]  # the worker ran again: it took the signals and lived
    worker.terminate()  # its parent's SIGTERM: multiprocessing's exit-time cleanup, torch's shutdown
    worker.join(timeout=60)
    assert worker.exitcode == 0


def test_preemption_signals_with_torchrun_stop_every_rank_at_one_step_then_resume(two_processes, tmp_path):
    config, reference = two_processes
    ckpts = tmp_path / "out" / "checkpoints"
    args = ("--output_dir", tmp_path / "out", "--resume", "auto", "--training.steps=1000")  # stopped by signals only

    # SIGTERM to the launcher (kill PID, a scheduler that signals the job's main process): forwarded to the workers
    run = launcher(config, *args)
    run.wait_for_line("] Step 2/1000")
    run.send(signal.SIGTERM, [psutil.Process(run.proc.pid)])
    step = stopped_at(run)
    assert load(ckpts / "checkpoint_latest.pt")["step"] == step == load(ckpts / f"checkpoint_step_{step}.pt")["step"]

    # SIGUSR1 to rank 1 alone: rank 0 never sees a signal but stops at the same step (exit 0 for both)
    run = launcher(config, *args)
    run.wait_for_line(f"] Step {step + 1}/1000")
    run.send(signal.SIGUSR1, [run.worker(rank=1)])
    assert resumed_from(run.output) == step
    step, before = stopped_at(run), step
    assert step > before and load(ckpts / "checkpoint_latest.pt")["step"] == step

    # SLURM: SIGTERM to every process of the job at once (launcher, torchrun, workers, DataLoader workers)
    run = launcher(config, *args)
    run.wait_for_line(f"] Step {step + 1}/1000")
    run.send(signal.SIGTERM)
    step, before = stopped_at(run), step
    assert step > before and load(ckpts / "checkpoint_latest.pt")["step"] == step
    assert step < 16, "stopped too late to compare with the 16-step reference"

    run = launcher(config, "--output_dir", tmp_path / "out", "--resume", "auto")
    assert run.finish() == 0, run.output[-4000:]
    assert resumed_from(run.output) == step
    assert_same_weights(ckpts / "checkpoint_step_16.pt", reference / "checkpoint_step_16.pt")


# ---- security -----------------------------------------------------------------------------------------------------


def test_no_secret_reaches_logs_configs_checkpoints_or_wandb_files(tmp_path, tiny_vlm_dir):  # noqa: F811
    secrets = {"WANDB_API_KEY": uuid.uuid4().hex + uuid.uuid4().hex[:8], "HF_TOKEN": "hf_" + uuid.uuid4().hex}
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=3, length=12,
                          training={"steps": 2, "save_freq": 1}, validation={"enable": False})
    run = single(config, "--wandb.enable=true", WANDB_MODE="offline", **secrets)
    assert run.finish() == 0, run.output[-4000:]
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "the W&B offline run was written"
    for path in files:
        data = path.read_bytes()
        for name, secret in secrets.items():
            assert secret.encode() not in data, f"{name} written into {path}"
    for name, secret in secrets.items():
        assert secret not in run.output, f"{name} printed"


def python_sources():
    skip = {".venv", "outputs", "data", ".git"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_every_torch_load_is_weights_only_and_every_yaml_load_is_safe():
    unsafe = []
    for path in python_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            call = f"{node.func.value.id}.{node.func.attr}"
            weights_only = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
            if (call == "torch.load" and not weights_only) or call in (
                    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
                unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno} {call}")
    assert not unsafe, unsafe
    assert len(python_sources()) > 20  # the walk did see the repository
