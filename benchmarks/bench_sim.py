"""Simulator figures: seconds per episode per core, MB per episode, expert success rate.

    LP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_sim --episodes 5                      # 640x480 cost
    LP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_sim --episodes 100 --width 64 --height 48 --seed 1000
                                                                                          # success rate, all DR on

Runs the real collector (scripted expert, all DR on unless --no_dr, JPEG q95, atomic HDF5 writes) in this
process with one worker. With LP_NUM_THREADS=1 Mesa's llvmpipe renders on one thread, so the process uses one
core and its CPU time per episode is the per-core cost; the CPU seconds (user + system, all threads) are printed
beside the wall time because the machine may be shared. Success rate = episodes saved / attempts run (a failed
attempt is retried with the next seed; see sim/seeding.py). Rendering does not touch the physics, so the
success rate measured at a small resolution holds at any resolution.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py

from benchmarks.measure import load_average, machine, mb
from sim.collect import CollectionSettings, collect
from sim.randomization import DomainRandomization


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5, help="successful episodes to collect")
    parser.add_argument("--width", type=int, default=640, help="image width")
    parser.add_argument("--height", type=int, default=480, help="image height")
    parser.add_argument("--seed", type=int, default=1000, help="base seed (disjoint from a collection with seed 0)")
    parser.add_argument("--no_dr", action="store_true", help="measure without domain randomization")
    parser.add_argument("--out", type=Path, default=None, help="keep the episodes here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        settings = CollectionSettings(
            out_dir=out,
            base_seed=args.seed,
            width=args.width,
            height=args.height,
            dr=None if args.no_dr else DomainRandomization(),
        )
        print(f"machine: {machine()}; {load_average()} before")
        wall, cpu = time.perf_counter(), cpu_seconds()
        outcomes = collect(settings, args.episodes, workers=1)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        files = sorted(out.glob("episode_*.h5"))
        saved = sum(o.saved for o in outcomes)
        attempts = sum(o.attempts for o in outcomes)
        frames = sum(_length(f) for f in files)
        size = sum(f.stat().st_size for f in files)

    print(f"{load_average()} after")
    print(f"resolution {args.width}x{args.height}, DR {'off' if args.no_dr else 'on'}, seeds from base {args.seed}")
    print(f"episodes saved: {saved} of {attempts} attempts -> expert success rate {100.0 * saved / attempts:.1f} %")
    print(f"frames per episode: {frames / max(saved, 1):.1f}")
    print(f"wall seconds per episode: {wall / attempts:.2f}")
    print(f"CPU seconds per episode (= seconds per episode per core with LP_NUM_THREADS=1): {cpu / attempts:.2f}")
    print(f"MB per episode: {mb(size) / max(saved, 1):.2f}")
    print(f"352 episodes on 2 cores (2 workers): about {352 * cpu / attempts / 2 / 3600:.2f} h")


def _length(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return len(f["action"])


if __name__ == "__main__":
    main()
