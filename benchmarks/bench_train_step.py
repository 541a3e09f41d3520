"""Training step: our loop (insertion_vla.train.train) vs a bare lerobot forward + backward + AdamW step.

    .venv/bin/python -m benchmarks.bench_train_step                                   # tiny VLM, CPU, 64x64
    .venv/bin/python -m benchmarks.bench_train_step --steps 30 --repeats 1            # quick
    python -m benchmarks.bench_train_step --device cuda --preset smolvlm2-500m --image_size 512 --num_workers 8
                                                                                      # real size, on a GPU

Both sides train the same lerobot SmolVLAPolicy, built by insertion_vla.policy.build_policy from the real
configuration (train_config_smolvla_sim.yaml) with a random VLM written by insertion_vla.tiny_vlm, on
episodes written to a temp dir (3 cameras, JPEG with noise, resized with padding to --image_size).

- bare: lerobot's own loss, `policy.forward(batch)`, + backward + AdamW step (+ zero_grad), repeated on one
  batch that the library prepared (prepare_batch: on the device, [0, 1] images, normalized, tokenized).
- ours: `insertion_vla.train.train(cfg)` itself, the loop as users run it: prepare_batch, TrainingLoss forward
  under autocast, backward, clip_grad_norm_, the finite check, optimizer step, LR schedule, loss-spike
  detector, progress bar and the console/metrics.csv lines every log_freq steps. Its step cannot be called
  alone, so it is timed from outside: train() prints a line every log_freq steps and each line is
  timestamped as it is written; s/step = time between lines / log_freq (the first window, which holds the
  first step's allocations, is dropped; no checkpoint or validation falls inside a window). That time
  includes reading the next batch; on CPU with --num_workers 0 loading is serial, so it is measured alone
  with the loop's own loader (train.micro_batches, same config) and subtracted. With workers (and on CUDA,
  where the GPU runs queued work while the CPU loads) it overlaps and is not subtracted.
- our loss alone: TrainingLoss(policy)(batch) + backward + AdamW step on the same prepared batch as bare, to
  show what the loss itself costs (a diagnostic, not the loop).
- bare on a new batch each step: prepare_batch of the next loaded batch + the bare step (a diagnostic: what
  a fresh batch costs, without the loop's bookkeeping).

Overhead = ours (minus serial loading on CPU) / bare, judged on CPU time on a CPU (other jobs on a shared
machine inflate wall time, not CPU time) and on wall time on CUDA (where CPU time is meaningless: the CPU
spins while it waits for the GPU). On CUDA, bf16 autocast (training.use_bfloat16) on both sides and the peak
allocated GPU memory of each. Repeats are interleaved; medians are reported with the machine's load.
"""

import argparse
import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

from benchmarks.measure import load_average, machine, mb, median, print_table, spread
from benchmarks.synthetic import write_full_size_episodes

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"\] Step (\d+)/\d+ \|")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train (default: %(default)s)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "smolvlm2-500m"],
                   help="VLM architecture written by insertion_vla.tiny_vlm, random weights (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=16, help="training.batch_size (default: %(default)s, the real per-GPU batch)")
    p.add_argument("--image_size", type=int, default=64, help="policy.resize_imgs_with_padding side (default: %(default)s; real: 512)")
    p.add_argument("--frame_size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None,
                   help="size of the stored camera frames (default: 640 480 when --image_size is 512, else "
                   "image_size x 3/4 image_size, so data loading stays small beside a tiny model)")
    p.add_argument("--episodes", type=int, default=8, help="episodes written (default: %(default)s)")
    p.add_argument("--length", type=int, default=150, help="frames per episode (default: %(default)s; an epoch longer than the run keeps DataLoader restarts out of the timing)")
    p.add_argument("--steps", type=int, default=60, help="training steps per train() run (default: %(default)s)")
    p.add_argument("--log_freq", type=int, default=10, help="training.log_freq: the timing window (default: %(default)s)")
    p.add_argument("--bare_steps", type=int, default=30, help="timed bare / loss-only steps per repeat (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed bare / loss-only steps first (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=0, help="training.num_workers (default: %(default)s: loading is serial and subtracted)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default: %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="on CUDA, also profile 3 bare and 3 loss-only steps: GPU kernel time per step vs wall time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s; the CPU is shared)")
    p.add_argument("--tmp_dir", default=None, help="where the temporary data and run outputs go (default: the system temp dir)")
    return p.parse_args(argv)


class LineClock:
    """A stdout stand-in that keeps (wall time, CPU time, step) of every training console line train() writes."""

    def __init__(self, log):
        self.log, self.marks = log, []

    def write(self, text):
        match = STEP_LINE.search(text)
        if match:
            self.marks.append((time.perf_counter(), time.process_time(), int(match.group(1))))
        self.log.write(text)
        return len(text)

    def flush(self):
        self.log.flush()

    def per_step(self) -> tuple[list[float], list[float]]:
        """(wall s/step, CPU s/step), one figure per log window, the first window dropped."""
        windows = list(zip(self.marks[1:], self.marks[2:]))
        return ([(w1 - w0) / (s1 - s0) for (w0, _, s0), (w1, _, s1) in windows],
                [(c1 - c0) / (s1 - s0) for (_, c0, s0), (_, c1, s1) in windows])


def make_config(tmp: Path, args, out_name: str):
    from insertion_vla.config import load_config

    s = args.image_size
    overrides = {
        "output_dir": tmp / out_name, "normalization.stats_file": tmp / "stats.yaml", "dataset.root_dir": tmp / "episodes",
        "policy.vlm_model_name": tmp / "vlm", "policy.pretrained_model_id": "null", "policy.load_vlm_weights": "false",
        "policy.resize_imgs_with_padding": f"[{s}, {s}]", "training.steps": args.steps, "training.batch_size": args.batch_size,
        "training.num_workers": args.num_workers, "training.log_freq": args.log_freq, "training.save_freq": 10**9,
        "training.device": args.device, "validation.enable": "false", "wandb.enable": "false",
    }
    return load_config(ROOT / "train_config_smolvla_sim.yaml", [f"--{k}={v}" for k, v in overrides.items()])


def synchronize(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fns: dict, n: int, warmup: int, device) -> dict:
    """{name: (wall seconds per call, CPU seconds per call, peak GPU bytes)} of n calls of each step function,
    taken in turn (A B A B ...: a drift of the machine's speed hits all alike) after `warmup` untimed rounds.
    CPU time (this process) does not grow when other jobs share the cores; wall time does."""
    import torch

    cuda = device.type == "cuda"
    for _ in range(warmup):
        for fn in step_fns.values():
            fn()
    synchronize(device)
    out = {name: ([], [], 0) for name in step_fns}
    for _ in range(n):
        for name, fn in step_fns.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            wall, cpu, peak = out[name]
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            out[name] = (wall, cpu, max(peak, torch.cuda.max_memory_allocated(device) if cuda else 0))
    return out


def gpu_busy(step_fn, n: int, device) -> tuple[float, float]:
    """(GPU kernel seconds per step, wall seconds per step) of n steps under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step_fn()
        synchronize(device)
    wall = (time.perf_counter() - t0) / n
    kernels = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)
    return kernels / 1e6 / n, wall


def measure_bare_and_loss(cfg, stats, args, info) -> dict:
    """Bare lerobot steps and our-loss-alone steps on one prepared batch; data loading and prepare_batch alone.
    Each entry: (wall, CPU) seconds; *_mem: peak GPU bytes."""
    import torch

    from insertion_vla.dataset import EpisodeDataset
    from episode_format.reader import discover_episodes
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.optim import make_optimizer
    from insertion_vla.policy import TrainingLoss, build_policy, prepare_batch
    from insertion_vla.train import make_autocast, micro_batches

    keys = keys_from_config(cfg["dataset"])
    dataset = EpisodeDataset(discover_episodes(cfg["dataset"]["root_dir"]), keys, horizon=cfg["dataset"]["horizon"],
                             image_size=cfg["policy"]["resize_imgs_with_padding"],
                             task_instruction=cfg["dataset"]["task_instruction"], seed=cfg["seed"])
    batches = micro_batches(dataset, info, cfg["training"], cfg["seed"], 0, 0)  # the loop's own loader
    raws = []
    timed = time_steps({"loading": lambda: raws.append(next(batches)[2])}, max(args.log_freq, 2 * args.num_workers),
                       max(1, args.num_workers), torch.device("cpu"))
    del batches

    torch.manual_seed(cfg["seed"])
    policy, preprocessor, _ = build_policy(
        cfg["policy"], state_dim=dataset.state_dim, action_dim=dataset.action_dim, warn_random_vlm=False,
        camera_keys=[f"observation.images.{n}" for n in keys.cameras.values()], stats=stats,
        normalization_mode=cfg["normalization"]["mode"], device=info.device)
    policy.train()
    autocast = make_autocast(info.device, cfg["training"]["use_bfloat16"])
    timed.update(time_steps({"prepare": lambda: prepare_batch(raws[0], preprocessor, info.device)}, 10, 2, info.device))
    batch = prepare_batch(raws[0], preprocessor, info.device)
    optimizer = make_optimizer(policy, cfg["optimizer"])
    objective = TrainingLoss(policy)

    def bare_step():
        with autocast():
            loss, _ = policy.forward(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fresh = iter(range(10**9))

    def bare_fresh_step():  # bare, but each step prepares the next of the loaded batches, as the loop does
        fresh_batch = prepare_batch(raws[next(fresh) % len(raws)], preprocessor, info.device)
        with autocast():
            loss, _ = policy.forward(fresh_batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loss_step():
        with autocast():
            losses = objective(batch, cfg["training"]["lambda_temporal"])
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed.update(time_steps({"bare": bare_step, "loss_only": loss_step, "bare_fresh": bare_fresh_step},
                            args.bare_steps, args.warmup, info.device))
    result = {name: (median(wall), median(cpu)) for name, (wall, cpu, _) in timed.items()}
    result.update({f"{name}_mem": timed[name][2] for name in ("bare", "loss_only", "bare_fresh")})
    result["spread"] = f"bare {spread(timed['bare'][0])} s, loss only {spread(timed['loss_only'][0])} s"
    if args.profile and info.device.type == "cuda":
        result["busy"] = {name: gpu_busy(fn, 3, info.device) for name, fn in (("bare", bare_step), ("loss_only", loss_step))}
    result["params"] = sum(p.numel() for p in policy.parameters())
    result["trainable"] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    del policy, optimizer, objective, batch, raws
    if info.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def measure_train(cfg, tmp: Path, device) -> dict:
    """(wall, CPU) s/step of insertion_vla.train.train(cfg) from its console lines; peak GPU memory of the run."""
    import torch

    from insertion_vla.train import train

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with open(tmp / "train_log.txt", "a") as log:
        clock = LineClock(log)
        with contextlib.redirect_stdout(clock), contextlib.redirect_stderr(log):
            train(cfg)
    wall, cpu = clock.per_step()
    ckpt_dir = Path(cfg["output_dir"]) / "checkpoints"
    return {"ours": (median(wall), median(cpu)), "ours_mem": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
            "spread": f"train() {spread(wall)} s/step",
            "checkpoint": (ckpt_dir / f"checkpoint_step_{cfg['training']['steps']}.pt").stat().st_size,
            "export": sum(p.stat().st_size for p in (ckpt_dir / "final_hf").rglob("*") if p.is_file())}


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from insertion_vla import distributed as dist
    from episode_format.reader import discover_episodes
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.stats import compute_stats, load_stats, save_stats
    from insertion_vla.tiny_vlm import build_tiny_vlm

    torch.set_num_threads(args.threads)
    frame_w, frame_h = args.frame_size or ((640, 480) if args.image_size == 512 else (args.image_size, args.image_size * 3 // 4))
    with tempfile.TemporaryDirectory(prefix="bench_train_step_", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        build_tiny_vlm(tmp / "vlm", preset=args.preset)
        write_full_size_episodes(tmp / "episodes", args.episodes, args.length, height=frame_h, width=frame_w)
        cfg = make_config(tmp, args, "out")
        stats, _ = compute_stats(discover_episodes(tmp / "episodes"), keys_from_config(cfg["dataset"]), progress=False)
        save_stats(stats, tmp / "stats.yaml")
        stats = load_stats(tmp / "stats.yaml")
        info = dist.setup(args.device)
        cuda = info.device.type == "cuda"
        subtract_loading = args.num_workers == 0 and not cuda
        print(f"{torch.cuda.get_device_name(info.device) if cuda else machine()}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads; VLM preset {args.preset}; batch {args.batch_size}, 3 cameras "
              f"{frame_w}x{frame_h} -> {args.image_size}x{args.image_size}; bf16 autocast: "
              f"{cuda and cfg['training']['use_bfloat16']}; num_workers {args.num_workers}", flush=True)

        rows = []
        for repeat in range(args.repeats):
            load_before = load_average()
            row = measure_bare_and_loss(cfg, stats, args, info)
            spreads = row.pop("spread")
            train_result = measure_train(make_config(tmp, args, f"out_{repeat}"), tmp, info.device)
            spreads += ", " + train_result.pop("spread")
            row.update(train_result)
            # Serial loading (0 workers, CPU) is taken out. With workers it overlaps the step; on CUDA even serial
            # loading overlaps the GPU's queued work, so subtracting it there would undercount the step.
            row["ours_net"] = tuple(o - (l if subtract_loading else 0.0) for o, l in zip(row["ours"], row["loading"]))
            row["ours_net_mem"] = row["ours_mem"]
            row["load"] = f"{load_before.split()[1]}/{load_average().split()[1]}"
            rows.append(row)
            print(f"repeat {repeat + 1}: {spreads}; loading {row['loading'][0]:.4f} s/batch, prepare_batch "
                  f"{row['prepare'][0]:.4f} s ({load_before} -> {load_average()})", flush=True)

    print(f"\npolicy: {rows[0]['params'] / 1e6:.1f} M parameters, {rows[0]['trainable'] / 1e6:.1f} M trainable; "
          f"train()'s checkpoint_step_{args.steps}.pt {mb(rows[0]['checkpoint']):.1f} MiB, final_hf {mb(rows[0]['export']):.1f} MiB")
    table = []
    for name, key in (("bare lerobot: forward + backward + AdamW", "bare"),
                      ("our loss alone: TrainingLoss + backward + AdamW", "loss_only"),
                      ("bare on a new batch each step: prepare_batch + bare", "bare_fresh"),
                      ("ours: train() per step, as logged", "ours"),
                      ("ours minus data loading" if subtract_loading else "ours (loading overlapped, not subtracted)", "ours_net")):
        wall, cpu = (median([r[key][i] for r in rows]) for i in (0, 1))
        table.append([name, f"{wall:.4f}", args.batch_size / wall, f"{median([r[key][0] / r['bare'][0] for r in rows]):.3f}x",
                      f"{cpu:.4f}", f"{median([r[key][1] / r['bare'][1] for r in rows]):.3f}x",
                      f"{mb(median([r[key + '_mem'] for r in rows])) / 1024:.2f}" if cuda else "-",
                      " ".join(r["load"] for r in rows)])
    for name, (kernel, wall) in rows[-1].get("busy", {}).items():
        print(f"torch.profiler, {name}: GPU kernels {kernel:.4f} s per step; {wall:.4f} s wall under the profiler, "
              f"{rows[-1][name][0]:.4f} s without: the GPU is busy {100 * kernel / rows[-1][name][0]:.0f} % of an unprofiled step")
    print_table(["step", "s/step", "samples/s", "vs bare", "CPU s/step", "vs bare (CPU)", "peak GPU GiB",
                 "load before/after per repeat"], table)
    print(f"data loading alone (train.micro_batches, {args.num_workers} workers): "
          f"{median([r['loading'][0] for r in rows]):.4f} s/batch; prepare_batch: {median([r['prepare'][0] for r in rows]):.4f} "
          "s/batch (part of ours, not of bare)")
    # On CUDA the GPU time decides; on a shared CPU the CPU time does (wall time also counts other jobs' turns).
    index = 0 if cuda else 1
    verdict = median([r["ours_net"][index] / r["bare"][index] for r in rows])
    print(f"overhead of our step over bare lerobot ({'wall' if cuda else 'CPU'} time): {verdict:.3f}x "
          f"(target <= 1.05x: {'met' if verdict <= 1.05 else 'NOT met'})")
    dist.teardown()


if __name__ == "__main__":
    main()
