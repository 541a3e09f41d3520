"""Data loading throughput: our EpisodeDataset vs the bare OpenCV limit vs lerobot's LeRobotDataset (video).

    .venv/bin/python -m benchmarks.bench_dataloader                       # 3 episodes x 80 frames, 0/1/2 workers
    .venv/bin/python -m benchmarks.bench_dataloader --episodes 2 --length 40 --samples 64 --repeats 1   # quick

Full-size data: 3 cameras, 640x480 JPEG q95 with Gaussian noise (std 5) baked in, resized with padding to
512x512, state + 50-step action chunks, the same random frames (seeded) for every loader:
- bare limit: a loop of cv2.imdecode + resize + pad over the same JPEG bytes, preloaded in memory, in one
  process with OpenCV on one thread (the work one DataLoader worker has to do, and nothing else);
- ours: insertion_vla.dataset.EpisodeDataset through a torch DataLoader (batch 16, as training) with
  0, 1, 2 workers, in three layouts (--layouts):
  - chw: as shipped, each image (3, 512, 512) uint8, lerobot's layout (a transposing copy in the worker);
  - hwc: the same images left (512, 512, 3), for the device to permute (an EpisodeDataset subclass: measured,
    not shipped);
  - bytes: dataset.decode=cuda, the workers only read the JPEG bytes (the decode on the device is not
    counted: insertion_vla.gpu_images does it on the GPU);
- lerobot: the same frames written with LeRobotDataset.create(use_videos=True) (lerobot's default AV1 video
  encoding), read as lerobot-train reads them: LeRobotDataset(delta_timestamps={"action": 50 steps}) through
  the same DataLoader, with each decoder backend that works here (torchcodec needs FFmpeg's shared libraries).
  It returns 640x480 float images: SmolVLA resizes them on the GPU, so lerobot's loader does less work here.

Every measurement runs in a fresh process (peak RSS is its own) and starts timing once each worker has
delivered a batch (steady state); the machine's load is printed beside it. Beside samples/s (wall clock, which
drops when other jobs share the cores) it reports samples per CPU-second of the main process and its workers
over the whole run (which drops less): the per-core efficiency the "per worker" target is about. Peak RSS: of
the main process, of the largest worker, and the largest sum over the process tree (an upper bound: pages
shared between processes count in each). Repeats are interleaved; throughput is given as the median and the
best of the repeats (other jobs only ever slow a run down, so the best is nearest the code's own speed), RSS
as the median.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import TreeRSSSampler, cpu_seconds, in_fresh_process, load_average, machine, mb, median, print_table, rss_now
from benchmarks.synthetic import CAMERAS, FPS, TASK, write_full_size_episodes

HORIZON = 50
LIMIT = "bare OpenCV loop (1 thread)"
LAYOUTS = {"chw": "EpisodeDataset (ours), CHW", "hwc": "EpisodeDataset, HWC (device permutes)",
           "bytes": "EpisodeDataset, decode=cuda (JPEG bytes)"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=3, help="episodes to generate (default: %(default)s)")
    p.add_argument("--length", type=int, default=80, help="frames per episode (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers to measure (default: 0 1 2)")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS),
                   help="what our dataset returns per image, see above (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=16, help="DataLoader batch size (default: %(default)s, training's per-GPU batch)")
    p.add_argument("--samples", type=int, default=192,
                   help="random samples (without repetition) read per measurement, at most episodes x length (default: %(default)s)")
    p.add_argument("--image_size", type=int, default=512, help="square side the images are resized to with padding (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repetitions of every measurement; the median is reported (default: %(default)s)")
    p.add_argument("--lerobot_backends", nargs="*", default=["pyav", "torchcodec"],
                   help="LeRobotDataset video backends to measure, those that fail to load are reported and skipped; "
                   "none: skip lerobot (default: pyav torchcodec)")
    p.add_argument("--tmp_dir", default=None, help="where the temporary data goes (default: the system temp dir)")
    args = p.parse_args(argv)
    if args.samples > args.episodes * args.length or args.samples < args.batch_size * (max(args.workers) + 1):
        p.error(f"--samples {args.samples} must be at most --episodes x --length = {args.episodes * args.length} and at "
                f"least --batch_size x (max workers + 1) = {args.batch_size * (max(args.workers) + 1)}")
    return args


# ---- measurements (each runs in a fresh process) -------------------------------------------------------------


def bare_opencv(paths, indices, lengths, image_size, threads) -> dict:
    """Decode + resize + pad the same JPEGs in a plain loop; with OpenCV on one thread, the per-core limit."""
    import cv2
    import h5py

    from insertion_vla.dataset import resize_with_pad

    if threads:
        cv2.setNumThreads(threads)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    jpegs = []
    files = [h5py.File(p, "r") for p in paths]
    for index in indices:
        pos = int(np.searchsorted(starts, index, side="right") - 1)
        jpegs.append([files[pos][f"observations/images/{c}"][index - starts[pos]] for c in CAMERAS])
    for f in files:
        f.close()
    load, rss_before = load_average(), rss_now()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    for sample in jpegs:
        for data in sample:
            resize_with_pad(cv2.imdecode(data, cv2.IMREAD_COLOR), image_size, image_size)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"samples_per_s": len(jpegs) / seconds, "samples_per_cpu_s": len(jpegs) / cpu, "load": load,
            "rss_before": rss_before, "peak_self": TreeRSSSampler.peak_self(), "peak_child": 0,
            "peak_total": TreeRSSSampler.peak_self()}


def _time_loader(loader, workers: int) -> dict:
    """Samples/s of a DataLoader after every worker delivered its first batch; samples per CPU-second of the
    whole run (main process and workers, start-up included); RSS of the process tree."""
    load, rss_before = load_average(), rss_now()
    skip = max(1, workers)
    counted, total, t0, cpu0 = 0, 0, None, cpu_seconds()
    with TreeRSSSampler() as rss:
        for i, batch in enumerate(loader):  # the workers are joined when the loop ends
            total += len(batch["action"])
            if i == skip - 1:
                t0 = time.perf_counter()
            elif i >= skip:
                counted += len(batch["action"])
        seconds = time.perf_counter() - t0
    return {"samples_per_s": counted / seconds, "samples_per_cpu_s": total / (cpu_seconds() - cpu0), "load": load,
            "rss_before": rss_before, "peak_self": TreeRSSSampler.peak_self(),
            "peak_child": TreeRSSSampler.peak_child(), "peak_total": rss.peak_total}


def ours(paths, indices, workers, batch_size, image_size, layout) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from insertion_vla.config import defaults
    from insertion_vla.dataset import EpisodeDataset
    from insertion_vla.episodes import keys_from_config

    class HWCEpisodeDataset(EpisodeDataset):
        image_tensor = staticmethod(torch.from_numpy)  # (H, W, 3) as resized: no transposing copy

    cfg = defaults()["dataset"]  # the real configuration's cameras, state and action keys
    cls = HWCEpisodeDataset if layout == "hwc" else EpisodeDataset
    dataset = cls(paths, keys_from_config(cfg), horizon=HORIZON, image_size=(image_size, image_size),
                  task_instruction=cfg["task_instruction"], decode="cuda" if layout == "bytes" else "cpu")
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers, drop_last=True,
                        collate_fn=dataset.collate, generator=torch.Generator().manual_seed(0))
    result = _time_loader(loader, workers)
    batch = next(iter(DataLoader(dataset, batch_size=2, sampler=indices[:2], collate_fn=dataset.collate)))
    result["sample"] = {k: (tuple(v.shape), str(v.dtype)) if hasattr(v, "shape") else (f"list of {len(v)} 1-D uint8 JPEG", "")
                        for k, v in batch.items() if hasattr(v, "shape") or k.startswith("observation.images.")}
    return result


def lerobot(root, indices, workers, batch_size, backend) -> dict:
    import warnings

    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore", message="The video decoding and encoding capabilities of torchvision")
    # lerobot-train's delta_timestamps for SmolVLA (chunk_size 50): action_delta_indices = range(50)
    dataset = LeRobotDataset("bench/insertion", root=root, video_backend=backend,
                             delta_timestamps={"action": [i / FPS for i in range(HORIZON)]})
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    result = _time_loader(loader, workers)
    batch = next(iter(DataLoader(dataset, batch_size=2, sampler=indices[:2])))
    result["sample"] = {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items() if hasattr(v, "shape")}
    return result


def write_lerobot_dataset(paths, root) -> float:
    """The same frames, state and action as a LeRobotDataset with video; returns the seconds it took."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    from episode_format.reader import open_episode
    from insertion_vla.config import defaults
    from insertion_vla.episodes import keys_from_config

    keys = keys_from_config(defaults()["dataset"])
    t0 = time.perf_counter()
    features = {f"observation.images.{name}": {"dtype": "video", "shape": (480, 640, 3), "names": ["height", "width", "channels"]}
                for name in keys.cameras.values()}
    features["observation.state"] = {"dtype": "float32", "shape": (6,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (6,), "names": None}
    dataset = LeRobotDataset.create("bench/insertion", fps=int(FPS), features=features, root=root, use_videos=True)
    for path in tqdm(paths, desc="writing LeRobotDataset (video)", unit="ep"):
        with open_episode(path, keys) as ep:
            for t in range(ep.length):
                frame = {f"observation.images.{name}": ep.read_image(camera, t) for camera, name in keys.cameras.items()}
                dataset.add_frame({**frame, "observation.state": ep.state[t], "action": ep.action[t], "task": TASK})
            dataset.save_episode()
    dataset.finalize()
    return time.perf_counter() - t0


def backend_works(root, backend) -> str | None:
    """None when LeRobotDataset decodes a frame with this backend here, else why not."""
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        LeRobotDataset("bench/insertion", root=root, video_backend=backend)[0]
        return None
    except Exception as err:  # torchcodec raises OSError/RuntimeError when FFmpeg's libraries are missing
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"


# ---- the run -----------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench_dataloader_", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        paths = write_full_size_episodes(tmp / "h5", args.episodes, args.length)
        total = args.episodes * args.length
        indices = np.random.default_rng(0).permutation(total)[: args.samples].tolist()
        lengths = [args.length] * args.episodes
        jpeg_bytes = sum(p.stat().st_size for p in paths) / (total * len(CAMERAS))
        print(f"{machine()}; {args.episodes} episodes x {args.length} frames x {len(CAMERAS)} cameras, "
              f"640x480 JPEG q95 + noise std 5: {jpeg_bytes / 1024:.0f} kB per image (file bytes / images); "
              f"-> {args.image_size}x{args.image_size}; {args.samples} random samples per measurement, batch {args.batch_size}")

        backends = []
        if args.lerobot_backends:
            seconds = in_fresh_process(write_lerobot_dataset, paths, tmp / "lerobot")
            video_mb = mb(sum(p.stat().st_size for p in (tmp / "lerobot").rglob("*.mp4")))
            print(f"LeRobotDataset written in {seconds:.0f} s: videos {video_mb:.1f} MiB "
                  f"(HDF5 JPEGs {mb(sum(p.stat().st_size for p in paths)):.1f} MiB)")
            for backend in args.lerobot_backends:
                problem = in_fresh_process(backend_works, tmp / "lerobot", backend)
                if problem:
                    print(f"lerobot video_backend={backend} skipped: it does not decode here ({problem})")
                else:
                    backends.append(backend)

        runs = {}  # name -> list of results
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats} ({load_average()})", flush=True)
            runs.setdefault((LIMIT, 0), []).append(in_fresh_process(bare_opencv, paths, indices, lengths, args.image_size, 1))
            runs.setdefault(("bare OpenCV loop (default threads)", 0), []).append(
                in_fresh_process(bare_opencv, paths, indices, lengths, args.image_size, None))
            for w in args.workers:
                for layout in args.layouts:
                    runs.setdefault((LAYOUTS[layout], w), []).append(
                        in_fresh_process(ours, paths, indices, w, args.batch_size, args.image_size, layout))
                for backend in backends:
                    runs.setdefault((f"LeRobotDataset video, {backend}", w), []).append(
                        in_fresh_process(lerobot, tmp / "lerobot", indices, w, args.batch_size, backend))

    # Other jobs on a shared machine only ever slow a run down: the best of the repeats is the code's own speed,
    # the median what one run typically got. "of limit" compares bests.
    limit = max(r["samples_per_s"] for r in runs[(LIMIT, 0)])
    cpu_limit = max(r["samples_per_cpu_s"] for r in runs[(LIMIT, 0)])
    rows = []
    for (name, workers), results in runs.items():
        rates, per_cpu = [r["samples_per_s"] for r in results], [r["samples_per_cpu_s"] for r in results]
        per_worker = max(rates) / max(1, workers)
        rows.append([name, workers if "bare" not in name else "-", median(rates), max(rates), per_worker,
                     f"{100 * per_worker / limit:.0f} %", median(per_cpu), max(per_cpu), f"{100 * max(per_cpu) / cpu_limit:.0f} %",
                     mb(median([r["rss_before"] for r in results])), mb(median([r["peak_self"] for r in results])),
                     mb(median([r["peak_child"] for r in results])), mb(median([r["peak_total"] for r in results])),
                     " / ".join(r["load"].split()[1] for r in results)])
    print()
    print_table(["loader", "workers", "samples/s median", "best", "best per worker", "of limit", "samples/CPU-s median",
                 "best", "of limit", "RSS before MiB", "peak RSS main MiB", "peak RSS worker MiB", "peak RSS sum MiB",
                 "load (1 min) per repeat"], rows)
    print("\nlayouts of our dataset, per worker (best of the repeats): samples/s as a share of the bare limit; "
          "samples per CPU-second, and as a ratio to CHW")
    for w in args.workers:
        best = {layout: (max(r["samples_per_s"] for r in runs[(LAYOUTS[layout], w)]) / max(1, w),
                         max(r["samples_per_cpu_s"] for r in runs[(LAYOUTS[layout], w)])) for layout in args.layouts}
        print(f"  {w} workers: " + "; ".join(
            f"{layout} {100 * per_worker / limit:.0f} % of limit, {per_cpu:.0f}/CPU-s"
            + (f" ({per_cpu / best['chw'][1]:.2f}x chw)" if "chw" in best and layout != "chw" else "")
            for layout, (per_worker, per_cpu) in best.items()))
    print()
    for (name, workers), results in runs.items():
        if "sample" in results[0] and workers == args.workers[0]:
            print(f"{name} sample: " + ", ".join(f"{k} {s} {d}" for k, (s, d) in results[0]["sample"].items()))


if __name__ == "__main__":
    main()
