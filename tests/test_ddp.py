"""torchrun with the gloo backend on CPU: two processes, one job; two 'nodes' on one machine."""

import re
import shutil
import socket
import subprocess

import yaml
from fixtures_policy import tiny_vlm_dir  # noqa: F401
from train_runs import ROOT, assert_same_weights, env, load, make_run_dir, torchrun

STEP_LINE = re.compile(r"\] Step (\d+)/\d+ \|")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_model_and_resume_exactly(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=5, length=12, training={"batch_size": 2})
    res = torchrun(config, nproc=2, MASTER_PORT=free_port())
    assert "on 2 x cpu" in res.stdout
    assert [int(s) for s in STEP_LINE.findall(res.stdout)] == [2, 4, 6, 8]  # rank 0 alone prints
    ckpts = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == [
        "checkpoint_best.pt", "checkpoint_latest.pt", "checkpoint_step_4.pt", "checkpoint_step_8.pt"]
    assert not list(ckpts.glob("*tmp*"))  # written once, by one rank, no leftovers
    # the loop checks that replicas agree before every save: reaching step 8 means they did
    assert load(ckpts / "checkpoint_step_8.pt")["step"] == 8

    cfg = yaml.safe_load(config.read_text())
    cfg["output_dir"] = str(tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpts / "checkpoint_step_4.pt", tmp_path / "resumed" / "checkpoints")
    resumed = tmp_path / "resumed.yaml"
    resumed.write_text(yaml.safe_dump(cfg))
    res = torchrun(resumed, "--resume", "auto", nproc=2, MASTER_PORT=free_port())
    assert [int(s) for s in STEP_LINE.findall(res.stdout)] == [6, 8]
    assert_same_weights(tmp_path / "resumed" / "checkpoints" / "checkpoint_step_8.pt", ckpts / "checkpoint_step_8.pt")


def test_two_nodes_on_one_machine_form_one_job(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=4, length=12,
                          training={"steps": 2, "batch_size": 2, "save_freq": 2}, validation={"enable": False})
    port = free_port()
    nodes = [subprocess.Popen(["bash", ROOT / "train_smolvla_sim.sh"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT, env=env(NUM_GPUS=1, NNODES=2, NODE_RANK=rank, MASTER_PORT=port, CONFIG=config))
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs
    assert "on 2 x cpu" in outputs[0]
    assert "Step 2/2" in outputs[0] and "Step 2/2" not in outputs[1]
    assert (tmp_path / "out" / "checkpoints" / "checkpoint_step_2.pt").is_file()


def test_launcher_checks_stats_before_starting(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=2, length=12)
    res = torchrun(config, "--normalization.stats_file=" + str(tmp_path / "missing.yaml"), check=False, MASTER_PORT=free_port())
    assert res.returncode != 0 and "missing.yaml not found" in res.stderr and "compute_dataset_stats_sim.sh" in res.stderr
    assert "torchrun:" not in res.stdout  # stopped before launching any process
