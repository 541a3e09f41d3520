"""Evaluation of a SmolVLA policy: closed loop in sim/'s environment, or offline along recorded episodes.

It uses both the library (insertion_vla) and the simulator (sim), which never import each other's side, hence a
package of its own. evaluate_smolvla_sim.py is its command line; train_smolvla_sim.py passes
training_hook.make_training_evaluator(cfg) to the training loop.

    policy_io       loading a final_hf/ export or a checkpoint; a simulator observation -> the policy's batch
    drivers         what acts in an episode: the policy (receding horizon or temporal ensembling of its chunks)
                    or sim's scripted expert
    video           MP4 of an episode, the three cameras side by side
    rollout         closed-loop episodes and their seeds
    training_data   the training episodes' base seeds (kept disjoint) and image size (rendered the same)
    report          summary figures (unsafe episodes too), Wilson interval, console lines, report.json, episodes.csv
    offline         --episodes_from: per-joint MAE of predictions along recorded episodes
    training_hook   the evaluate_fn callback for training
"""

import sim  # noqa: F401  (before any submodule: selects MuJoCo's headless EGL backend before mujoco is imported)
