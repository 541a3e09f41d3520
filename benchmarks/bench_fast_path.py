"""The fast training path, piece by piece: attention eager vs SDPA, the loss eager vs compiled, AdamW kernels.

    .venv/bin/python -m benchmarks.bench_fast_path                                    # tiny VLM, CPU, 64x64
    .venv/bin/python -m benchmarks.bench_fast_path --compile                          # + compiled loss (minutes)
    python -m benchmarks.bench_fast_path --device cuda --preset smolvlm2-500m --image_size 512 --compile
                                                                                      # real size, on a GPU

One lerobot SmolVLAPolicy built by insertion_vla.policy.build_policy from train_config_smolvla_sim.yaml with a
random VLM written by insertion_vla.tiny_vlm, one prepared batch of random images. Timed, in turn (A B A B ...):
- loss: our loss forward + backward (TrainingLoss, under the training's autocast), with policy.attention
  eager and sdpa (set_attention switches the same policy), and with --compile the sdpa loss compiled
  (CompiledTrainingLoss; its first step, which compiles, is reported apart and left out of the timing);
- AdamW: one optimizer step over the trainable parameters (gradients set once) per optimizer.implementation.
Figures are CPU seconds on a CPU (other jobs on a shared machine inflate wall time, not CPU time) and wall seconds
on CUDA; medians with the machine's load. Ratios are against eager attention / for_loop AdamW.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.bench_train_step import synchronize, time_steps
from benchmarks.measure import load_average, machine, median, print_table

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = ("camera1", "camera2", "camera3")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: %(default)s")
    p.add_argument("--preset", default="tiny", choices=["tiny", "smolvlm2-500m"], help="VLM size (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=16, help="default: %(default)s, the real per-GPU batch")
    p.add_argument("--image_size", type=int, default=64, help="policy.resize_imgs_with_padding side (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed calls of each variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each variant first (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time the compiled loss (compiling takes minutes)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s; the CPU is shared)")
    return p.parse_args(argv)


def random_batch(batch_size: int, side: int, state_dim: int, action_dim: int, horizon: int, task: str) -> dict:
    """A batch as the dataset's DataLoader yields it: uint8 images, state, actions, pad mask, instruction."""
    import torch

    g = torch.Generator().manual_seed(0)
    batch = {f"observation.images.{name}": torch.randint(0, 256, (batch_size, 3, side, side), dtype=torch.uint8,
                                                         generator=g) for name in CAMERAS}
    batch["observation.state"] = torch.randn(batch_size, state_dim, generator=g)
    batch["action"] = torch.randn(batch_size, horizon, action_dim, generator=g)
    batch["action_is_pad"] = torch.zeros(batch_size, horizon, dtype=torch.bool)
    batch["task"] = [task] * batch_size
    return batch


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from insertion_vla.config import load_config
    from insertion_vla.optim import IMPLEMENTATIONS, make_optimizer
    from insertion_vla.policy import CompiledTrainingLoss, TrainingLoss, build_policy, prepare_batch, set_attention
    from insertion_vla.tiny_vlm import build_tiny_vlm
    from insertion_vla.train import make_autocast

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    state_dim = action_dim = 6
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "train_config_smolvla_sim.yaml", [
            f"--policy.vlm_model_name={build_tiny_vlm(Path(tmp) / 'vlm', preset=args.preset)}",
            "--policy.pretrained_model_id=null", "--policy.load_vlm_weights=false",
            f"--policy.resize_imgs_with_padding=[{args.image_size}, {args.image_size}]",
        ])
        torch.manual_seed(cfg["seed"])
        policy, preprocessor, _ = build_policy(
            cfg["policy"], state_dim=state_dim, action_dim=action_dim, stats=None, device=device,
            camera_keys=[f"observation.images.{name}" for name in CAMERAS], warn_random_vlm=False)
    policy.train()
    raw = random_batch(args.batch_size, args.image_size, state_dim, action_dim, cfg["policy"]["chunk_size"],
                       cfg["dataset"]["task_instruction"])
    batch = prepare_batch(raw, preprocessor, device)
    autocast = make_autocast(device, cfg["training"]["use_bfloat16"])
    lambda_temporal = cfg["training"]["lambda_temporal"]

    def loss_step(objective, attention):
        def step():
            set_attention(policy, attention)
            with autocast():
                losses = objective(batch, lambda_temporal)
            losses["loss"].backward()
            policy.zero_grad(set_to_none=True)
        return step

    eager_loss = TrainingLoss(policy)
    loss_steps = {"loss, eager attention": loss_step(eager_loss, "eager"),
                  "loss, sdpa attention": loss_step(eager_loss, "sdpa")}
    compile_s = None
    if args.compile:
        compiled = loss_step(CompiledTrainingLoss(policy), "sdpa")
        start = time.perf_counter()
        compiled()
        synchronize(device)
        compile_s = time.perf_counter() - start
        loss_steps["loss, sdpa attention, compiled"] = compiled
    timed = time_steps(loss_steps, args.steps, args.warmup, device)

    with autocast():
        eager_loss(batch, lambda_temporal)["loss"].backward()  # gradients for the optimizer steps
    optimizers = {name: make_optimizer(policy, cfg["optimizer"] | {"implementation": name}) for name in IMPLEMENTATIONS
                  if name != "fused" or device.type == "cuda"}
    timed |= time_steps({f"AdamW step, {name}": optimizer.step for name, optimizer in optimizers.items()},
                        args.steps, args.warmup, device)

    column = 0 if device.type == "cuda" else 1  # wall on CUDA, CPU time on a CPU
    seconds = {name: median(figures[column]) for name, figures in timed.items()}
    baselines = {"loss": seconds["loss, eager attention"], "AdamW step": seconds["AdamW step, for_loop"]}
    print(f"{machine()}; {args.device}, {args.preset}, batch {args.batch_size}, {args.image_size}px, "
          f"{args.threads} thread(s), {args.steps} calls each; {load_average()}")
    if compile_s is not None:
        print(f"compiled loss: first forward + backward (compiling) {compile_s:.1f} s wall")
    print_table(["what", f"{'wall' if column == 0 else 'CPU'} ms/call", "ratio"],
                [[name, s * 1e3, f"{s / baselines[name.split(',')[0]]:.3f}"] for name, s in seconds.items()])


if __name__ == "__main__":
    main()
