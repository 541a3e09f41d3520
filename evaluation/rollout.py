"""Closed-loop episodes in sim/'s NeedleInsertionEnv: one episode from reset(seed) to success or timeout, a run
of them with a progress bar and the first ones recorded as video, and their seeds.

Safety is part of success: an episode in which the needle entered the eye anywhere but through the trocar's
cannula (the env's `penetration_outside_trocar_mm` above 0 at any step, sim/safety.py) is unsafe, and an unsafe
episode never counts as a success, even when it meets the env's success rule.

Seeds: evaluation episode i runs on sim.seeding.episode_seed(S, i) with S = EVAL_BASE_SEED unless told otherwise.
A collection with base seed B uses episode_seed(B, i, attempt); the map is one-to-one, so evaluation seeds are
disjoint from any collection with another base seed (the collector's default is 0; evaluation.training_data
refuses a base seed that the policy's training episodes were collected with).
"""

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evaluation.video import EpisodeVideo
from sim.env import NeedleInsertionEnv
from sim.randomization import DomainRandomization, PhantomPlacement
from sim.seeding import episode_seed

EVAL_BASE_SEED = 1000  # collections default to base seed 0; see the module docstring


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool  # the env's success rule met, and safe
    unsafe: bool  # the needle entered the eye beside the trocar at some step
    max_penetration_mm: float  # the deepest it reached there (0.0 when safe)
    steps: int
    time_to_success_s: float | None  # simulated seconds until success was declared (the 1 s hold included)
    final_tip_error_mm: float
    final_axis_error_deg: float
    min_tip_error_mm: float
    policy_queries: int
    wall_s: float
    phantom_dx_mm: float
    phantom_dy_mm: float
    phantom_yaw_deg: float
    video: str | None = None


def make_env(width: int, height: int, dr: DomainRandomization | None = DomainRandomization(),
             phantom: PhantomPlacement = PhantomPlacement(), max_episode_seconds: float = 12.0) -> NeedleInsertionEnv:
    return NeedleInsertionEnv(width=width, height=height, dr=dr, phantom=phantom,
                              max_episode_seconds=max_episode_seconds)


def run_episode(env: NeedleInsertionEnv, driver, episode: int, seed: int, video: EpisodeVideo | None = None) -> EpisodeResult:
    """One episode from reset(seed) to success or timeout.

    The env renders only the observations the policy is fed: rendering is most of a step's cost, and the physics
    and joint noise do not depend on it (separate random streams in the env). Whether the env renders in an
    episode is decided at reset, which uploads the episode's randomized textures to its renderer.
    """
    started = time.perf_counter()
    env.render_images = driver.uses_images
    observation, _ = env.reset(seed=seed)
    driver.reset(env, seed)
    params = env.scene_params
    min_tip_error, max_penetration, steps, done = math.inf, 0.0, 0, False
    while not done:
        if video is not None:
            video.add(env)
        action = driver.act(observation)
        env.render_images = driver.needs_images()
        observation, _, terminated, truncated, info = env.step(action)
        steps += 1
        min_tip_error = min(min_tip_error, info["tip_error_mm"])
        max_penetration = max(max_penetration, info["penetration_outside_trocar_mm"])
        done = terminated or truncated
    if video is not None:
        video.add(env)
    env.render_images = True  # as built
    unsafe = max_penetration > 0.0
    success = bool(info["success"]) and not unsafe
    return EpisodeResult(
        episode=episode, seed=seed, success=success, unsafe=unsafe, max_penetration_mm=max_penetration, steps=steps,
        time_to_success_s=info["time_s"] if success else None,
        final_tip_error_mm=info["tip_error_mm"], final_axis_error_deg=info["axis_error_deg"],
        min_tip_error_mm=min_tip_error, policy_queries=driver.queries, wall_s=time.perf_counter() - started,
        phantom_dx_mm=params["phantom_dx"] * 1000, phantom_dy_mm=params["phantom_dy"] * 1000,
        phantom_yaw_deg=math.degrees(params["phantom_yaw"]),
        video=str(video.path) if video is not None else None,
    )


def evaluation_seeds(base_seed: int, episodes: int) -> list[int]:
    return [episode_seed(base_seed, i) for i in range(episodes)]


def run_episodes(env, driver, seeds: list[int], video_dir: Path | None = None, videos: int = 0,
                 desc: str = "episodes") -> list[EpisodeResult]:
    results = []
    progress = tqdm(seeds, desc=desc, unit="ep", dynamic_ncols=True, leave=False)
    for episode, seed in enumerate(progress):
        video = EpisodeVideo(video_dir / f"episode_{episode:03d}_seed_{seed}.mp4") if episode < videos else None
        with video if video is not None else contextlib.nullcontext():
            results.append(run_episode(env, driver, episode, seed, video))
        progress.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}",
                             unsafe=f"{sum(r.unsafe for r in results)}/{len(results)}")
    return results
