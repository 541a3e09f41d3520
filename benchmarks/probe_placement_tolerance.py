"""How precisely must the placement be known? A policy trained with the simulator's true placement in its state
(dataset.true_placement: `python -m benchmarks.bench_learning --tier narrow --true_placement`) runs the evaluator's
held-out episodes with that placement moved R mm in the plane, for each R: the error a localizer's estimate may
have for this policy to succeed as often.

    python -m benchmarks.probe_placement_tolerance --policy RUN/checkpoints/final_hf [--errors_mm 0 0.25 0.5 1]
           [--episodes 20] [--eval_seed 1000] [--n_action_steps 10] [--temporal_ensemble_coeff 0.01]
           [sim.collect's --phantom_* flags; default: the narrow tier's placement]

Episode i of N has its error in the direction 360 * i / N deg (in the world's x-y plane), so every R sees the same
episodes and directions. The episodes, env and chunk execution are the evaluator's (evaluation.rollout, 128x96,
every randomization on); an unsafe episode is never a success. benchmarks/README.md ("Does it learn?").
"""

import argparse
import os
from dataclasses import replace

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402  (after MUJOCO_GL)

from benchmarks.bench_learning import COLLECT, ENSEMBLE_COEFF, N_ACTION_STEPS, TIERS  # noqa: E402
from benchmarks.measure import load_average, machine, print_table  # noqa: E402
from evaluation.drivers import PolicyDriver  # noqa: E402
from evaluation.policy_io import load_policy, policy_inputs  # noqa: E402
from evaluation.report import summarize  # noqa: E402
from evaluation.rollout import EVAL_BASE_SEED, evaluation_seeds, make_env, run_episode  # noqa: E402
from insertion_vla.localizer import TruePlacement  # noqa: E402
from sim.randomization import add_randomization_args, randomization_from_args  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="an export (RUN/checkpoints/final_hf) or a checkpoint_*.pt "
                                                        "trained with dataset.true_placement")
    parser.add_argument("--errors_mm", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0],
                        help="the placement's errors to try, mm in the plane (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=20, help="per error (default: %(default)s)")
    parser.add_argument("--eval_seed", type=int, default=EVAL_BASE_SEED, help="base seed (default: %(default)s, the evaluator's)")
    parser.add_argument("--n_action_steps", type=int, default=N_ACTION_STEPS, help="default: %(default)s")
    parser.add_argument("--temporal_ensemble_coeff", type=float, default=ENSEMBLE_COEFF, help="default: %(default)s")
    add_randomization_args(parser)
    parser.set_defaults(**TIERS["narrow"].placement)
    args = parser.parse_args()
    loaded = load_policy(args.policy, "cpu")
    if not loaded.train_cfg["dataset"].get("true_placement"):
        parser.error(f"{args.policy} was not trained with dataset.true_placement (its state has no placement to "
                     "move): train one with `python -m benchmarks.bench_learning --tier narrow --true_placement`")
    inputs = policy_inputs(loaded.policy, loaded.train_cfg["dataset"])
    phantom, dr = randomization_from_args(args)
    env = make_env(COLLECT["width"], COLLECT["height"], dr, phantom)
    seeds = evaluation_seeds(args.eval_seed, args.episodes)
    rows = []
    for error in args.errors_mm:
        results = []
        for i, seed in enumerate(seeds):
            angle = 2 * np.pi * i / len(seeds)
            moved = TruePlacement((error * np.cos(angle), error * np.sin(angle)))
            driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor,
                                  replace(inputs, estimator=moved), args.n_action_steps, args.temporal_ensemble_coeff)
            results.append(run_episode(env, driver, i, seed))
        s = summarize(results)
        low, high = s["success_rate_ci95"]
        rows.append([f"{error:.2f}", f"{s['successes']}/{s['episodes']}", f"{100 * low:.0f}-{100 * high:.0f} %",
                     f"{s['unsafe']}/{s['episodes']}", f"{s['tip_error_mm']['mean']:.2f}",
                     f"{s['tip_error_mm']['worst']:.2f}"])
        print(f"error {error:.2f} mm: {s['successes']}/{s['episodes']}", flush=True)
    env.close()
    print(f"machine: {machine()}; {load_average()}; {args.policy}, {args.episodes} episodes from seed {args.eval_seed}, "
          f"n_action_steps {args.n_action_steps}, temporal_ensemble_coeff {args.temporal_ensemble_coeff}")
    print_table(["placement error (mm)", "success", "95 % CI", "unsafe", "final tip error mean (mm)", "worst (mm)"], rows)


if __name__ == "__main__":
    main()
