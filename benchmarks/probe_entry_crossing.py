"""Where does a closed-loop needle cross the eye wall? Per held-out episode: when the placement estimate was
refined, how far the tip is from the true trocar axis when it reaches the entry, the estimate's error then, and the
first step beside the trocar.

    python -m benchmarks.probe_entry_crossing --policy RUN/checkpoints/final_hf [--episodes 20] [--eval_seed 1000]
           [--n_action_steps 10] [--temporal_ensemble_coeff 0.01] [--noise_scale 1]
           [sim.collect's --phantom_* flags; default: the narrow tier's placement]

The episodes are the evaluator's (evaluation.rollout: the same seeds, env and driver, 128x96 renders, every
randomization on). The tip "reaches the entry" at the first step within 0.5 mm of the entry's plane across the
trocar axis; the cannula's radius is 0.8 mm, so a tip further off the axis there goes through the eye wall beside
it. For a policy without dataset.placement_estimate the estimate columns are empty. benchmarks/README.md ("Does it
learn?").
"""

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402  (after MUJOCO_GL)

from benchmarks.bench_learning import COLLECT, ENSEMBLE_COEFF, N_ACTION_STEPS, TIERS  # noqa: E402
from benchmarks.measure import load_average, machine, print_table  # noqa: E402
from evaluation.drivers import PolicyDriver  # noqa: E402
from evaluation.policy_io import load_policy, policy_inputs  # noqa: E402
from evaluation.rollout import EVAL_BASE_SEED, evaluation_seeds, make_env  # noqa: E402
from insertion_vla.localizer import placement_offsets  # noqa: E402
from sim.randomization import add_randomization_args, randomization_from_args  # noqa: E402
from sim.scene import CANNULA_RADIUS, along_and_across  # noqa: E402

AT_ENTRY_MM = 0.5  # along the axis: the tip this close before the entry's plane counts as reaching it


def crossing(env, driver, seed: int) -> dict:
    """One episode: the step of the first refinement, and at the entry the tip's distance from the axis and the
    estimate's error in the plane (mm); the first unsafe step, the final tip error."""
    env.render_images = True
    observation, _ = env.reset(seed=seed)
    driver.reset(env, seed)
    truth = np.array(placement_offsets(env.scene_params))
    entry, _, axis = env.trocar_target()
    row = {"refined_at": None, "entry_step": None, "off_axis_mm": None, "estimate_error_mm": None,
           "first_frame_error_mm": None, "unsafe_step": None}
    step, done = 0, False
    while not done:
        action = driver.act(observation)
        env.render_images = driver.needs_images()
        tracker = driver.tracker
        if tracker is not None and row["refined_at"] is None and tracker.near_count:
            row["refined_at"] = step
        along, across = along_and_across(observation["ee_pose"][:3], entry, axis)
        if row["entry_step"] is None and along > -AT_ENTRY_MM:
            row["entry_step"], row["off_axis_mm"] = step, across
            if tracker is not None:
                row["estimate_error_mm"] = float(np.linalg.norm(tracker.current[:2] - truth[:2]))
                row["first_frame_error_mm"] = float(np.linalg.norm(tracker.first[:2] - truth[:2]))
        observation, _, terminated, truncated, info = env.step(action)
        if row["unsafe_step"] is None and info["penetration_outside_trocar_mm"] > 0:
            row["unsafe_step"] = step
        step += 1
        done = terminated or truncated
    return {**row, "final_tip_error_mm": info["tip_error_mm"], "success": bool(info["success"]) and row["unsafe_step"] is None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True, help="an export (RUN/checkpoints/final_hf) or a checkpoint_*.pt")
    parser.add_argument("--episodes", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--eval_seed", type=int, default=EVAL_BASE_SEED, help="base seed (default: %(default)s, the evaluator's)")
    parser.add_argument("--n_action_steps", type=int, default=N_ACTION_STEPS, help="default: %(default)s")
    parser.add_argument("--temporal_ensemble_coeff", type=float, default=ENSEMBLE_COEFF, help="default: %(default)s")
    parser.add_argument("--noise_scale", type=float, default=1.0, help="the evaluator's flag (default: %(default)s)")
    add_randomization_args(parser)
    parser.set_defaults(**TIERS["narrow"].placement)
    args = parser.parse_args()
    phantom, dr = randomization_from_args(args)
    loaded = load_policy(args.policy, "cpu")
    driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor,
                          policy_inputs(loaded.policy, loaded.train_cfg["dataset"]), args.n_action_steps,
                          args.temporal_ensemble_coeff, args.noise_scale)
    env = make_env(COLLECT["width"], COLLECT["height"], dr, phantom)
    rows = [crossing(env, driver, seed) for seed in evaluation_seeds(args.eval_seed, args.episodes)]
    env.close()

    def cell(value, digits=2):
        return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    print(f"machine: {machine()}; {load_average()}; {args.policy}, {args.episodes} episodes from seed {args.eval_seed}")
    print_table(["episode", "refined at step", "at the entry: step", "off the axis (mm)", "estimate error (mm)",
                 "first frame's (mm)", "first unsafe step", "final tip error (mm)", "success"],
                [[i, cell(r["refined_at"]), cell(r["entry_step"]), cell(r["off_axis_mm"]), cell(r["estimate_error_mm"]),
                  cell(r["first_frame_error_mm"]), cell(r["unsafe_step"]), cell(r["final_tip_error_mm"]),
                  "yes" if r["success"] else "no"] for i, r in enumerate(rows)])
    reached = [r for r in rows if r["entry_step"] is not None]

    def mean(key):
        values = [r[key] for r in reached if r[key] is not None]
        return f"{np.mean(values):.2f}" if values else "-"

    inside = sum(r["off_axis_mm"] < CANNULA_RADIUS * 1000 for r in reached)
    unsafe = [r for r in rows if r["unsafe_step"] is not None]
    at_entry = sum(r["entry_step"] is not None and 0 <= r["unsafe_step"] - r["entry_step"] <= 5 for r in unsafe)
    print(f"reached the entry: {len(reached)}/{len(rows)}; off the axis there {mean('off_axis_mm')} mm mean "
          f"({inside} within the cannula's {CANNULA_RADIUS * 1000:.1f} mm); estimate error then {mean('estimate_error_mm')} "
          f"mm (the first frame's {mean('first_frame_error_mm')}); unsafe {len(unsafe)}/{len(rows)}, {at_entry} of them "
          "within 5 steps of reaching the entry")


if __name__ == "__main__":
    main()
