"""Closed-loop evaluation during training: the evaluate_fn callback that train_smolvla_sim.py passes to
insertion_vla.train.train (the library never imports this package)."""

import dataclasses
from pathlib import Path

from evaluation.drivers import PolicyDriver
from evaluation.policy_io import policy_inputs
from evaluation.report import summarize, write_report
from evaluation.rollout import EVAL_BASE_SEED, evaluation_seeds, make_env, run_episodes
from evaluation.training_data import DEFAULT_SIZE, check_seeds_disjoint, training_data_facts
from sim.randomization import PhantomPlacement


def make_training_evaluator(cfg: dict, base_seed: int = EVAL_BASE_SEED):
    """evaluate_fn(policy, preprocessor, postprocessor, step) for insertion_vla.train.train: evaluation.episodes
    closed-loop episodes (the same seeds every time, so evaluations compare), rendered at the training data's
    image size, the phantom placed within the training data's range, all DR on, chunks executed as
    evaluation.temporal_ensemble_coeff says; writes
    OUTPUT_DIR/eval/step_N/{report.json, episodes.csv}."""
    episodes = cfg["evaluation"]["episodes"]  # its range (and evaluation.freq's) is checked at config load
    facts = training_data_facts(cfg["dataset"])
    seeds_note = check_seeds_disjoint(base_seed, facts)
    width, height = facts["image_size"] if facts else DEFAULT_SIZE
    phantom = facts["phantom"] if facts else PhantomPlacement()
    seeds = evaluation_seeds(base_seed, episodes)
    env = None  # built on first use: only rank 0 evaluates

    def evaluate_fn(policy, preprocessor, postprocessor, step: int) -> dict:
        nonlocal env
        if env is None:
            env = make_env(width, height, phantom=phantom)
        driver = PolicyDriver(policy, preprocessor, postprocessor, policy_inputs(policy, cfg["dataset"]),
                              temporal_ensemble_coeff=cfg["evaluation"]["temporal_ensemble_coeff"])
        results = run_episodes(env, driver, seeds, desc=f"eval step {step}")
        summary = summarize(results)
        settings = {"step": step, "base_seed": base_seed, "seeds": seeds, "seeds_check": seeds_note,
                    "width": width, "height": height, "n_action_steps": driver.n_action_steps,
                    "temporal_ensemble_coeff": driver.temporal_ensemble_coeff,
                    "phantom": dataclasses.asdict(phantom), "dr": dataclasses.asdict(env.dr)}
        write_report(Path(cfg["output_dir"]) / "eval" / f"step_{step}", settings, summary,
                     [dataclasses.asdict(r) for r in results])
        return {"eval/success_rate": summary["success_rate"], "eval/tip_error_mm": summary["tip_error_mm"]["mean"],
                "eval/axis_error_deg": summary["axis_error_deg"]["mean"]}

    return evaluate_fn
