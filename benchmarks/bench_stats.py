"""Statistics precompute: time on one core and peak RSS for 352 and 704 episodes x 300 frames.

    .venv/bin/python -m benchmarks.bench_stats                               # 352 and 704 episodes, 3 repeats
    .venv/bin/python -m benchmarks.bench_stats --episodes 20 40 --repeats 1  # quick

Runs the user's command itself, `compute_dataset_stats.py --dataset_root DIR --output FILE --max_episodes N`,
in a fresh process pinned to one CPU core (OpenMP/BLAS on one thread), and reads that process's own peak RSS
and CPU time from the kernel (os.wait4). Figures: the wall time of the whole process (Python start-up and
imports included), the compute-and-write time the command prints itself, CPU seconds, and peak RSS. The
episodes hold state (ee_pose, 6), qpos (6) and action (6) for every frame and 1x1-pixel cameras, so the files
pass the schema check while images cost nothing (statistics never read an image). Repeats are interleaved
and the median is reported, with the machine's load beside each run.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import load_average, machine, mb, median, print_table
from benchmarks.synthetic import write_lowdim_episodes

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 5.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, nargs="+", default=[352, 704], help="dataset sizes to measure (default: 352 704)")
    p.add_argument("--length", type=int, default=300, help="frames per episode (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per size; the median is reported (default: %(default)s)")
    p.add_argument("--core", type=int, default=None, help="CPU core to pin the run to (default: the first one this process may use)")
    p.add_argument("--tmp_dir", default=None, help="where the temporary episodes go (default: the system temp dir)")
    return p.parse_args(argv)


def run_stats_cli(root: Path, n: int, output: Path, core: int) -> dict:
    """compute_dataset_stats.py on the first n episodes, pinned to `core`; its wall time, CPU time and peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "compute_dataset_stats.py"), "--dataset_root", str(root), "--output", str(output),
           "--max_episodes", str(n)]
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    reported = float(re.search(r"in ([0-9.]+) s", out).group(1))  # "Wrote FILE in X s": compute + write
    return {"wall": wall, "reported": reported, "cpu": usage.ru_utime + usage.ru_stime,
            "peak_rss": usage.ru_maxrss * 1024, "load": load}


def main(argv=None):
    args = parse_args(argv)
    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench_stats_", dir=args.tmp_dir) as tmp:
        tmp = Path(tmp)
        paths = write_lowdim_episodes(tmp / "episodes", max(args.episodes), args.length)
        print(f"{machine()}; {max(args.episodes)} episodes x {args.length} frames written "
              f"({mb(sum(p.stat().st_size for p in paths)):.1f} MiB on disk); stats pinned to core {core}")
        runs = {n: [] for n in args.episodes}
        for repeat in range(args.repeats):
            for n in args.episodes:
                r = run_stats_cli(tmp / "episodes", n, tmp / f"stats_{n}.yaml", core)
                print(f"repeat {repeat + 1}, {n} episodes: {r['wall']:.2f} s wall, {r['reported']:.2f} s reported, "
                      f"{r['cpu']:.2f} CPU-s, peak RSS {mb(r['peak_rss']):.1f} MiB ({r['load']})", flush=True)
                runs[n].append(r)

    rows = []
    for n, results in runs.items():
        frames = n * args.length
        lowdim = frames * 2 * 6 * 4  # state (6) and action (6) as float32
        wall = median([r["wall"] for r in results])
        rows.append([n, frames, wall, median([r["reported"] for r in results]), median([r["cpu"] for r in results]),
                     "yes" if wall < TARGET_SECONDS else "NO", mb(median([r["peak_rss"] for r in results])), mb(lowdim),
                     " / ".join(r["load"].split()[1] for r in results)])
    print()
    print_table(["episodes", "frames", "process wall s", "compute+write s (printed)", "CPU s", f"< {TARGET_SECONDS:.0f} s",
                 "peak RSS MiB", "state+action float32 MiB", "load (1 min) per repeat"], rows)
    if len(runs) > 1:
        (n0, r0), (n1, r1) = list(runs.items())[0], list(runs.items())[-1]
        growth = median([r["peak_rss"] for r in r1]) - median([r["peak_rss"] for r in r0])
        data = (n1 - n0) * args.length * 2 * 6 * 4
        # kept: state and action as float32; at the quantiles of one feature: its float32 concatenation, a float64
        # copy and numpy's float64 partition copy -> 1 + (1 + 2 + 2) / 2 = 3.5 x the float32 data
        print(f"\npeak RSS growth {n0} -> {n1} episodes: {mb(growth):.1f} MiB for {mb(data):.1f} MiB more state+action "
              f"(float32); expected from the low-dimensional data alone: 3.5 x {mb(data):.1f} = {mb(3.5 * data):.1f} MiB "
              "(float32 values kept for the exact quantiles, float64 working copies of one feature while they are computed)")


if __name__ == "__main__":
    main()
