"""Training step: our loop (insertion_vla.train.train) vs a bare lerobot forward + backward + AdamW step.

    .venv/bin/python -m benchmarks.bench_train_step                                   # tiny VLM, CPU, 64x64
    .venv/bin/python -m benchmarks.bench_train_step --steps 20 --repeats 1            # quick
    .venv/bin/python -m benchmarks.bench_train_step --compare --steps 8 --warmup_steps 3 \\
        --repeats 1 --sweep 4 8 --batch_size 4 --episodes 2 --length 40              # the --compare table, CPU smoke test
    python -m benchmarks.bench_train_step --device cuda --preset smolvlm2-500m --image_size 512 --num_workers 4 --compare
                                                                                      # real size, on a GPU

Both sides train the same lerobot SmolVLAPolicy, built by insertion_vla.policy.build_policy from the real
configuration (train_config_smolvla_sim.yaml) with a random VLM written by insertion_vla.tiny_vlm, on
episodes written to a temp dir (3 cameras, JPEG with noise, resized with padding to --image_size).

- bare: lerobot's own loss, `policy.forward(batch)`, + backward + AdamW step (+ zero_grad), repeated on one
  batch that the library prepared (prepare_batch: on the device, [0, 1] images, normalized, tokenized).
- train(): `insertion_vla.train.train(cfg)` itself, the loop as users run it (data loading, prepare_batch, the
  loss under autocast, backward, clipping, the finite check, AdamW, LR schedule, loss-spike and bad-frame
  watches, progress bar, console/metrics.csv lines). It is instrumented, not copied: its `update_policy` and
  `micro_batches` are wrapped, so each step's end is timestamped (s/step: the median step after
  --warmup_steps, which hold compiling and the first allocations), the time the loop waits in next(batches)
  is summed (data wait: loading, and with dataset.decode=cuda the decode on the device, as a fraction of the
  step), and on CUDA the last --profile_steps steps run under torch.profiler (GPU busy: kernel time per step /
  the unprofiled s/step).
- our loss alone, bare on a new batch each step (default table only): TrainingLoss + backward + AdamW on the
  bare batch (what the loss itself costs), and prepare_batch of a new loaded batch + the bare step (what a fresh
  batch costs without the loop's bookkeeping).

Default table: bare, the diagnostics, train() as configured and train() minus its data wait. Overhead = the
latter / bare, judged on CPU time on a CPU (other jobs on a shared machine inflate wall time, not CPU time) and
on wall time on CUDA (where CPU time is meaningless: the CPU spins while it waits for the GPU).

--compare: bare lerobot (eager attention) vs train() as shipped with eager settings (policy.attention=eager,
optimizer.implementation=foreach, training.compile=false, dataset.decode=cpu) vs train() on the fast path
(policy.attention=sdpa, optimizer.implementation=auto: fused on CUDA, training.compile=true unless
--no_compile, dataset.decode=cuda), then the fast path at each --sweep batch size per GPU. On CUDA, bf16 autocast
(training.use_bfloat16) everywhere and the peak allocated GPU memory of each. Repeats are interleaved; medians are
reported with the machine's load.
"""

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from benchmarks.measure import load_average, machine, mb, median, print_table, spread
from benchmarks.synthetic import write_full_size_episodes

ROOT = Path(__file__).resolve().parents[1]
EAGER = {"policy.attention": "eager", "optimizer.implementation": "foreach", "training.compile": "false",
         "dataset.decode": "cpu"}
FAST_PATH = {"policy.attention": "sdpa", "optimizer.implementation": "auto", "training.compile": "true",
             "dataset.decode": "cuda"}


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
    p.add_argument("--length", type=int, default=150,
                   help="frames per episode (default: %(default)s; an epoch longer than the run keeps DataLoader restarts out of the timing)")
    p.add_argument("--steps", type=int, default=40, help="training steps per train() run (default: %(default)s)")
    p.add_argument("--warmup_steps", type=int, default=5,
                   help="first train() steps left out of s/step (compiling, first allocations; default: %(default)s)")
    p.add_argument("--profile_steps", type=int, default=3,
                   help="on CUDA, the last steps of each run (and bare steps) under torch.profiler for GPU busy; 0: none "
                   "(default: %(default)s)")
    p.add_argument("--log_freq", type=int, default=10, help="training.log_freq (default: %(default)s)")
    p.add_argument("--bare_steps", type=int, default=30, help="timed bare / loss-only steps per repeat (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed bare / loss-only steps first (default: %(default)s)")
    p.add_argument("--num_workers", type=int, default=0, help="training.num_workers (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (default: %(default)s)")
    p.add_argument("--compare", action="store_true", help="the eager vs fast-path table and the fast path's batch sweep")
    p.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64],
                   help="with --compare: batch sizes per GPU for the fast path (default: %(default)s)")
    p.add_argument("--no_compile", action="store_true",
                   help="fast path without training.compile (compiling on a CPU takes minutes; for smoke tests)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s; the CPU is shared)")
    p.add_argument("--tmp_dir", default=None, help="where the temporary data and run outputs go (default: the system temp dir)")
    args = p.parse_args(argv)
    if args.warmup_steps < 1:
        p.error("--warmup_steps must be at least 1: the first step's start is not seen from outside train()")
    if args.steps <= args.warmup_steps + args.profile_steps:
        p.error(f"--steps {args.steps} must exceed --warmup_steps + --profile_steps = {args.warmup_steps + args.profile_steps}")
    return args


def make_config(tmp: Path, args, out_name: str, batch_size: int, settings: dict | None = None):
    from insertion_vla.config import load_config

    s = args.image_size
    overrides = {
        "output_dir": tmp / out_name, "normalization.stats_file": tmp / "stats.yaml", "dataset.root_dir": tmp / "episodes",
        "policy.vlm_model_name": tmp / "vlm", "policy.pretrained_model_id": "null", "policy.load_vlm_weights": "false",
        "policy.resize_imgs_with_padding": f"[{s}, {s}]", "training.steps": args.steps, "training.batch_size": batch_size,
        "training.num_workers": args.num_workers, "training.log_freq": args.log_freq, "training.save_freq": 10**9,
        "training.device": args.device, "validation.enable": "false", "wandb.enable": "false", **(settings or {}),
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


def kernel_seconds(prof) -> float:
    """GPU kernel time (s) recorded by a torch.profiler run."""
    import torch

    return sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6


def gpu_busy(step_fn, n: int, device) -> float:
    """GPU kernel seconds per step of n steps under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step_fn()
        synchronize(device)
    return kernel_seconds(prof) / n


class StepClock:
    """train() instrumented from outside: the end of each optimizer step (wall and CPU time), the time spent in
    next(batches) by then, and on CUDA a torch.profiler window over the last `profile_steps` steps."""

    def __init__(self, steps: int, profile_steps: int, device):
        self.marks = []  # (wall, CPU, data wait so far in wall and CPU seconds) at the end of each step
        self.waited, self.waited_cpu = 0.0, 0.0
        self.profile_steps = profile_steps if device.type == "cuda" else 0
        self.profile_from = steps - self.profile_steps  # the window opens at the end of this step
        self.profiler, self.kernels = None, None  # kernels: GPU kernel seconds per profiled step

    def timed_batches(self, batches):
        """micro_batches' generator, its next() timed; closing it closes the loader (train() does)."""
        try:
            while True:
                t0, c0 = time.perf_counter(), time.process_time()
                item = next(batches)
                self.waited += time.perf_counter() - t0
                self.waited_cpu += time.process_time() - c0
                yield item
        finally:
            batches.close()

    def step_done(self):
        self.marks.append((time.perf_counter(), time.process_time(), self.waited, self.waited_cpu))
        if self.profile_steps and len(self.marks) == self.profile_from:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.profiler.__enter__()
        elif self.profiler is not None and len(self.marks) == self.profile_from + self.profile_steps:
            self.profiler.__exit__(None, None, None)
            self.kernels = kernel_seconds(self.profiler) / self.profile_steps
            self.profiler = None

    @contextlib.contextmanager
    def around(self, train_module):
        """train_module's update_policy and micro_batches wrapped while the block runs."""
        update_policy, micro_batches = train_module.update_policy, train_module.micro_batches

        def timed_update(*args, **kwargs):
            result = update_policy(*args, **kwargs)  # ends in a host sync (the all-reduced losses): the GPU is done
            self.step_done()
            return result

        train_module.update_policy = timed_update
        train_module.micro_batches = lambda *args, **kwargs: self.timed_batches(micro_batches(*args, **kwargs))
        try:
            yield self
        finally:
            train_module.update_policy, train_module.micro_batches = update_policy, micro_batches

    def per_step(self, warmup: int) -> dict:
        """Over the steps after the first `warmup` (>= 1: the first step has no start mark), the profiled ones
        left out: median wall s and CPU s per step, and without the data wait; the fraction of the time spent
        waiting for data."""
        steps = [[b - a for a, b in zip(m0, m1)] for m0, m1 in zip(self.marks[warmup - 1:self.profile_from - 1],
                                                                   self.marks[warmup:self.profile_from])]
        wall = [w for w, _, _, _ in steps]
        return {"wall": median(wall), "cpu": median([c for _, c, _, _ in steps]),
                "net_wall": median([w - d for w, _, d, _ in steps]), "net_cpu": median([c - d for _, c, _, d in steps]),
                "wait": sum(d for _, _, d, _ in steps) / sum(wall), "spread": spread(wall)}


def measure_train(cfg, tmp: Path, device, args) -> dict:
    """train(cfg) under a StepClock: per-step medians, data wait, GPU busy, peak GPU memory, checkpoint sizes."""
    import torch

    import insertion_vla.train as train_module

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(cfg["training"]["steps"], args.profile_steps, device)
    with open(tmp / "train_log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        with clock.around(train_module):
            train_module.train(cfg)
    result = clock.per_step(args.warmup_steps)
    result["busy"] = clock.kernels / result["wall"] if clock.kernels is not None else None
    result["mem"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    ckpt_dir = Path(cfg["output_dir"]) / "checkpoints"
    result["checkpoint"] = (ckpt_dir / f"checkpoint_step_{cfg['training']['steps']}.pt").stat().st_size
    result["export"] = sum(p.stat().st_size for p in (ckpt_dir / "final_hf").rglob("*") if p.is_file())
    return result


def measure_bare_and_loss(cfg, stats, args, info, diagnostics: bool) -> dict:
    """Bare lerobot steps on one prepared batch, and with `diagnostics` our loss alone on it and bare on a new
    prepared batch each step. Each entry: {wall, cpu, mem, busy}; "prepare": prepare_batch alone."""
    import torch

    from episode_format.reader import discover_episodes
    from insertion_vla.dataset import EpisodeDataset
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.optim import make_optimizer
    from insertion_vla.policy import TrainingLoss, build_policy, prepare_batch
    from insertion_vla.train import make_autocast, micro_batches

    keys = keys_from_config(cfg["dataset"])
    dataset = EpisodeDataset(discover_episodes(cfg["dataset"]["root_dir"]), keys, horizon=cfg["dataset"]["horizon"],
                             image_size=cfg["policy"]["resize_imgs_with_padding"],
                             task_instruction=cfg["dataset"]["task_instruction"], seed=cfg["seed"])
    loader = micro_batches(dataset, info, {**cfg["training"], "num_workers": 0}, cfg["seed"], 0, 0)  # the loop's own
    raws = [next(loader)[2] for _ in range(4)]
    loader.close()

    torch.manual_seed(cfg["seed"])
    policy, preprocessor, _ = build_policy(
        cfg["policy"], state_dim=dataset.state_dim, action_dim=dataset.action_dim, warn_random_vlm=False,
        camera_keys=[f"observation.images.{n}" for n in keys.cameras.values()], stats=stats,
        normalization_mode=cfg["normalization"]["mode"], device=info.device)
    policy.train()
    autocast = make_autocast(info.device, cfg["training"]["use_bfloat16"])
    timed = time_steps({"prepare": lambda: prepare_batch(raws[0], preprocessor, info.device)}, 10, 2, info.device)
    batch = prepare_batch(raws[0], preprocessor, info.device)
    optimizer = make_optimizer(policy, cfg["optimizer"])
    objective = TrainingLoss(policy)

    def bare_step(prepared=batch):
        with autocast():
            loss, _ = policy.forward(prepared)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fresh = iter(range(10**9))

    def bare_fresh_step():  # bare, but each step prepares the next of the loaded batches, as the loop does
        bare_step(prepare_batch(raws[next(fresh) % len(raws)], preprocessor, info.device))

    def loss_step():
        with autocast():
            losses = objective(batch, cfg["training"]["lambda_temporal"])
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {"bare": bare_step, **({"loss_only": loss_step, "bare_fresh": bare_fresh_step} if diagnostics else {})}
    timed.update(time_steps(steps, args.bare_steps, args.warmup, info.device))
    result = {name: {"wall": median(wall), "cpu": median(cpu), "mem": peak, "wait": None, "busy": None}
              for name, (wall, cpu, peak) in timed.items()}
    result["spread"] = ", ".join(f"{name} {spread(timed[name][0])} s" for name in steps)
    if args.profile_steps and info.device.type == "cuda":
        for name in steps:
            result[name]["busy"] = gpu_busy(steps[name], args.profile_steps, info.device) / result[name]["wall"]
    result["params"] = sum(p.numel() for p in policy.parameters())
    result["trainable"] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    if info.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def device_decode_difference(cfg, device, n: int = 16) -> tuple[float, int]:
    """(mean, max) |image with dataset.decode=cuda on `device` - image with decode=cpu (OpenCV)| in grey levels over
    n samples: nvJPEG on a GPU is not the libjpeg that tests/test_gpu_images.py compares on the CPU."""
    from episode_format.reader import discover_episodes
    from insertion_vla.dataset import EpisodeDataset
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.gpu_images import DeviceImageDecoder

    common = dict(keys=keys_from_config(cfg["dataset"]), horizon=cfg["dataset"]["horizon"],
                  image_size=cfg["policy"]["resize_imgs_with_padding"], task_instruction=cfg["dataset"]["task_instruction"])
    paths = discover_episodes(cfg["dataset"]["root_dir"])
    cpu, on_device = EpisodeDataset(paths, decode="cpu", **common), EpisodeDataset(paths, decode="cuda", **common)
    indices = range(0, len(cpu), max(1, len(cpu) // n))[:n]
    expected = cpu.collate([cpu[i] for i in indices])
    decoded = DeviceImageDecoder(on_device, device)(on_device.collate([on_device[i] for i in indices]))
    diffs = [(decoded[k].cpu().int() - expected[k].int()).abs() for k in expected if k.startswith("observation.images.")]
    return sum(d.float().mean().item() for d in diffs) / len(diffs), max(d.max().item() for d in diffs)


def settings_label(settings: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from episode_format.reader import discover_episodes
    from insertion_vla import distributed as dist
    from insertion_vla.episodes import keys_from_config
    from insertion_vla.stats import compute_stats, load_stats, save_stats
    from insertion_vla.tiny_vlm import build_tiny_vlm

    torch.set_num_threads(args.threads)
    frame_w, frame_h = args.frame_size or ((640, 480) if args.image_size == 512 else (args.image_size, args.image_size * 3 // 4))
    fast = {**FAST_PATH, **({"training.compile": "false"} if args.no_compile else {})}
    # (row name, batch size, config settings) of each train() run
    runs = ([("train(): as shipped, eager", args.batch_size, EAGER), ("train(): fast path", args.batch_size, fast)]
            + [(f"train(): fast path, batch {b}", b, fast) for b in args.sweep if b != args.batch_size]
            if args.compare else [("train(): as configured", args.batch_size, {})])
    with tempfile.TemporaryDirectory(prefix="bench_train_step_", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        build_tiny_vlm(tmp / "vlm", preset=args.preset)
        write_full_size_episodes(tmp / "episodes", args.episodes, args.length, height=frame_h, width=frame_w)
        cfg = make_config(tmp, args, "out", args.batch_size, EAGER if args.compare else None)
        stats, _ = compute_stats(discover_episodes(tmp / "episodes"), keys_from_config(cfg["dataset"]), progress=False)
        save_stats(stats, tmp / "stats.yaml")
        stats = load_stats(tmp / "stats.yaml")
        info = dist.setup(args.device)
        cuda = info.device.type == "cuda"
        print(f"{torch.cuda.get_device_name(info.device) if cuda else machine()}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads; VLM preset {args.preset}; batch {args.batch_size}, 3 cameras "
              f"{frame_w}x{frame_h} -> {args.image_size}x{args.image_size}; bf16 autocast: "
              f"{cuda and cfg['training']['use_bfloat16']}; num_workers {args.num_workers}; train() steps {args.steps}, "
              f"the first {args.warmup_steps} left out", flush=True)

        repeats, failures = [], {}
        for repeat in range(args.repeats):
            load_before = load_average()
            row = measure_bare_and_loss(cfg, stats, args, info, diagnostics=not args.compare)
            spreads = row.pop("spread")
            for i, (name, batch_size, settings) in enumerate(runs):
                try:
                    row[name] = measure_train(make_config(tmp, args, f"out_{repeat}_{i}", batch_size, settings), tmp,
                                              info.device, args)
                except Exception as err:  # one failing variant (a compile error, out of memory) keeps the others' figures
                    failures[name] = f"{type(err).__name__}: {str(err)[:400]}"
                    log_tail = (tmp / "train_log.txt").read_text().splitlines()[-15:]
                    print(f"{name} FAILED ({failures[name]}); the end of its log:\n" + "\n".join(log_tail), flush=True)
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                spreads += f"; {name} {row[name].pop('spread')} s/step"
            row["load"] = f"{load_before.split()[1]}/{load_average().split()[1]}"
            repeats.append(row)
            print(f"repeat {repeat + 1}: {spreads}; prepare_batch {row['prepare']['wall']:.4f} s ({load_before} -> "
                  f"{load_average()})", flush=True)
        decode_difference = device_decode_difference(cfg, info.device) if args.compare else None

    first, done = repeats[0], [name for name, _, _ in runs if name not in failures]
    print(f"\npolicy: {first['params'] / 1e6:.1f} M parameters, {first['trainable'] / 1e6:.1f} M trainable"
          + (f"; train()'s checkpoint_step_{args.steps}.pt {mb(first[done[0]]['checkpoint']):.1f} MiB, final_hf "
             f"{mb(first[done[0]]['export']):.1f} MiB" if done else ""))
    rows = [("bare lerobot: forward + backward + AdamW" + (" (eager attention)" if args.compare else ""), "bare", args.batch_size)]
    if not args.compare:
        rows += [("our loss alone: TrainingLoss + backward + AdamW", "loss_only", args.batch_size),
                 ("bare on a new batch each step: prepare_batch + bare", "bare_fresh", args.batch_size)]
    rows += [(name, name, batch_size) for name, batch_size, _ in runs if name in done]

    def figure(key, field):
        values = [r[key][field] for r in repeats if r[key][field] is not None]
        return median(values) if values else None

    table = []
    for label, key, batch_size in rows:
        wall, cpu, busy, wait = (figure(key, f) for f in ("wall", "cpu", "busy", "wait"))
        table.append([label, batch_size, f"{wall:.4f}", batch_size / wall, f"{median([r[key]['wall'] / r['bare']['wall'] for r in repeats]):.3f}x",
                      f"{cpu:.4f}", f"{100 * busy:.0f} %" if busy is not None else "-", f"{100 * wait:.0f} %" if wait is not None else "-",
                      f"{mb(figure(key, 'mem')) / 1024:.2f}" if cuda else "-", " ".join(r["load"] for r in repeats)])
    if not args.compare and done:  # the loop's own cost: train() without the time it waits for data
        name = runs[0][0]
        wall, cpu = figure(name, "net_wall"), figure(name, "net_cpu")
        table.append(["train() minus its data wait", args.batch_size, f"{wall:.4f}", args.batch_size / wall,
                      f"{median([r[name]['net_wall'] / r['bare']['wall'] for r in repeats]):.3f}x", f"{cpu:.4f}", "-", "-",
                      "-", ""])
    print_table(["step", "batch", "s/step", "samples/s", "vs bare", "CPU s/step", "GPU busy", "data wait", "peak GPU GiB",
                 "load before/after per repeat"], table)
    for name, _, settings in runs:
        if settings:
            print(f"{name}: {settings_label(settings)}" + (f": FAILED, {failures[name]}" if name in failures else ""))
    if not args.compare and done:
        name = runs[0][0]
        # On CUDA the GPU time decides; on a shared CPU the CPU time does (wall time also counts other jobs' turns).
        verdict = median([r[name]["net_wall"] / r["bare"]["wall"] if cuda else r[name]["net_cpu"] / r["bare"]["cpu"]
                          for r in repeats])
        print(f"overhead of our step, data wait taken out, over bare lerobot ({'wall' if cuda else 'CPU'} time): "
              f"{verdict:.3f}x (target <= 1.05x: {'met' if verdict <= 1.05 else 'NOT met'})")
    if decode_difference is not None:
        print(f"dataset.decode=cuda on {info.device.type} vs decode=cpu (OpenCV), 16 samples: mean |difference| "
              f"{decode_difference[0]:.3f} grey levels, max {decode_difference[1]}")
    print(f"prepare_batch alone: {median([r['prepare']['wall'] for r in repeats]):.4f} s/batch (part of train(), not of bare)")
    dist.teardown()


if __name__ == "__main__":
    main()
