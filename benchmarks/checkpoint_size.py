"""Size of a training checkpoint of the real-size model, as insertion_vla.train writes it.

    .venv/bin/python -m benchmarks.checkpoint_size          # CPU, a few GB of RAM, a minute or two

Runs `insertion_vla.train.train()` for one step on CPU (batch 1) with the real configuration
(train_config_smolvla_sim.yaml: train_expert_only, freeze_vision_encoder, num_vlm_layers 16, ...) and the
SmolVLM2-500M architecture with random weights (`insertion_vla.tiny_vlm --preset smolvlm2-500m`), then
reports the size of the checkpoint_step_1.pt it wrote (full model state_dict + AdamW state of the trainable
parameters + config, stats and loop state) and of the final_hf export, with a breakdown read back from the file.
Sizes do not depend on the weights' values, so a random VLM gives the real figure.
"""

import argparse
import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.measure import load_average, machine, mb
from benchmarks.synthetic import write_full_size_episodes

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smolvlm2-500m", choices=["tiny", "smolvlm2-500m"],
                   help="VLM architecture (default: %(default)s, the real size)")
    p.add_argument("--tmp_dir", default=None, help="where the temporary run goes (default: the system temp dir; needs ~5 GB)")
    return p.parse_args(argv)


def tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from episode_format.reader import discover_episodes
    from insertion_vla.config import load_config
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.stats import compute_stats, save_stats
    from insertion_vla.tiny_vlm import build_tiny_vlm
    from insertion_vla.train import train

    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        build_tiny_vlm(tmp / "vlm", preset=args.preset)
        write_full_size_episodes(tmp / "episodes", 1, 60, height=48, width=64)  # the data does not change the size
        overrides = {
            "output_dir": tmp / "out", "normalization.stats_file": tmp / "stats.yaml", "dataset.root_dir": tmp / "episodes",
            "policy.vlm_model_name": tmp / "vlm", "policy.pretrained_model_id": "null", "policy.load_vlm_weights": "false",
            "training.steps": 1, "training.batch_size": 1, "training.num_workers": 0, "training.device": "cpu",
            "validation.enable": "false", "wandb.enable": "false",
        }
        cfg = load_config(ROOT / "train_config_smolvla_sim.yaml", [f"--{k}={v}" for k, v in overrides.items()])
        stats, _ = compute_stats(discover_episodes(tmp / "episodes"), keys_from_config(cfg["dataset"]), progress=False)
        save_stats(stats, tmp / "stats.yaml")

        t0, load = time.perf_counter(), load_average()
        with open(tmp / "train_log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            train(cfg)
        seconds = time.perf_counter() - t0
        ckpt_dir = tmp / "out" / "checkpoints"
        path = ckpt_dir / "checkpoint_step_1.pt"
        size = path.stat().st_size
        export = sum(p.stat().st_size for p in (ckpt_dir / "final_hf").rglob("*") if p.is_file())
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = ckpt["model"]
        optimizer_state = ckpt["optimizer"]["state"]
        n_params = sum(t.numel() for t in model.values())
        n_trainable = sum(s["exp_avg"].numel() for s in optimizer_state.values())
        dtypes = sorted({str(t.dtype) for t in model.values()})

    print(f"{machine()}; VLM preset {args.preset}; train() 1 step on CPU in {seconds:.0f} s ({load}); "
          f"peak RSS {mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024):.0f} MiB")
    print(f"checkpoint_step_1.pt: {mb(size):.1f} MiB ({size / 1e9:.3f} GB); checkpoint_latest.pt is a hard link to it")
    print(f"  model state_dict: {n_params / 1e6:.1f} M values ({', '.join(dtypes)}), {mb(tensor_bytes(model)):.1f} MiB")
    print(f"  AdamW state: exp_avg + exp_avg_sq of {n_trainable / 1e6:.1f} M trainable values, "
          f"{mb(tensor_bytes(optimizer_state)):.1f} MiB")
    print(f"  rest (config, stats, loop state, file structure): {mb(size - tensor_bytes(model) - tensor_bytes(optimizer_state)):.1f} MiB")
    print(f"final_hf export (lerobot layout: model.safetensors, processors, VLM config/tokenizer): {mb(export):.1f} MiB")


if __name__ == "__main__":
    main()
