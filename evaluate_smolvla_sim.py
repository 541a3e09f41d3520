#!/usr/bin/env python
"""Closed-loop evaluation of a SmolVLA policy in the simulator: does it insert the needle?

    python evaluate_smolvla_sim.py --policy outputs/train/RUN/checkpoints/final_hf --episodes 50
    python evaluate_smolvla_sim.py --policy outputs/train/RUN/checkpoints/checkpoint_step_10000.pt --episodes 20
    python evaluate_smolvla_sim.py --expert --episodes 100 --videos 0                  # sanity check of the evaluator
    python evaluate_smolvla_sim.py --policy .../final_hf --episodes_from data/real_robot   # offline, recorded episodes

Each episode resets sim/'s NeedleInsertionEnv with its own seed and lets the policy act: a chunk of actions is
predicted from the current observation and its first K (--n_action_steps) are executed before the next
prediction (receding horizon), until success (tip within 1 mm and axis within 2 deg, held 1 s) or the timeout.
The policy sees what training saw: each camera mapped to its lerobot key as in the policy's training config,
JPEG round trip at the collector's quality, resized with padding as insertion_vla.dataset.resize_with_pad does,
float [0, 1]; the state built from the same observations (normally ee_pose); the same task instruction.

Seeds: evaluation episode i runs on sim.seeding.episode_seed(S, i) with S = --seed (default 1000). A collection
with base seed B uses episode_seed(B, i, attempt); the map is one-to-one, so evaluation seeds are disjoint from
any collection with another base seed. The collector's default is 0; when the policy's training episodes can be
found (the run's config names them), the evaluator reads their `base_seed` attributes and refuses an S among them.

The env renders only the observations the policy is fed (every K steps; the expert needs none): rendering is
most of a step's cost and does not change the physics.

Outputs (--output_dir): report.json (settings, summary, every episode), episodes.csv (a row per episode),
videos/ (the three cameras side by side for the first --videos episodes, MP4, rendered by a renderer of their own
without the image noise, so recording changes nothing the policy sees). The console ends with
`Success rate: K/N (P %, 95 % CI lo-hi %)` (Wilson score interval).

Training runs the same rollout through `make_training_evaluator(cfg)` (see train_smolvla_sim.py).
"""

import sim  # noqa: F401, I001  (first: selects MuJoCo's headless EGL backend before mujoco is imported)

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import h5py
import imageio_ffmpeg
import mujoco
import numpy as np
import torch
from tqdm import tqdm

from insertion_vla.checkpoint import load_checkpoint, restore_policy
from insertion_vla.config import defaults, load_config
from insertion_vla.dataset import EpisodeDataset, resize_with_pad
from insertion_vla.episodes import discover_episodes, keys_from_config, open_episode
from insertion_vla.errors import UserError, exit_on_user_error
from insertion_vla.fileio import atomic_output, atomic_write_text
from insertion_vla.plots import plot_trajectories
from insertion_vla.policy import predict_action_chunk, prepare_batch
from insertion_vla.validation import predict_episode
from sim.env import CONTROL_HZ, NeedleInsertionEnv
from sim.expert import ScriptedExpert
from sim.randomization import DomainRandomization, PhantomPlacement, add_randomization_args, randomization_from_args
from sim.recorder import TASK_INSTRUCTION, decode_jpeg, encode_jpeg
from sim.scene import CAMERA_NAMES
from sim.seeding import episode_seed

EVAL_BASE_SEED = 1000  # collections default to base seed 0; see the module docstring
DEFAULT_SIZE = (640, 480)  # the collector's default image size
COLLECTOR_JPEG_QUALITY = 95  # the collector's default --jpeg_quality
SIM_STATE = {"observations/ee_pose": "ee_pose", "observations/qpos": "qpos"}  # HDF5 path -> env observation key
Z_95 = 1.959964


# ----------------------------------------------------------------------------------------------------------------
# The policy and what it expects to see


@dataclass(frozen=True)
class PolicyInputs:
    """How a simulator observation becomes the policy's input, as the training data loader built it."""

    cameras: dict  # simulator camera -> lerobot image key, e.g. {"side_camera": "observation.images.camera1"}
    state: tuple  # observation keys concatenated into the state, e.g. ("ee_pose",)
    task: str
    image_side: int  # policy.resize_imgs_with_padding (square)
    jpeg_quality: int  # JPEG round trip as the collector stores frames; 0: none


@dataclass
class LoadedPolicy:
    policy: object
    preprocessor: object
    postprocessor: object
    train_cfg: dict  # the training config (its dataset section says how the policy saw the data)
    config_source: str  # where train_cfg came from, for the report


def load_policy(path, device: str, config_path=None) -> LoadedPolicy:
    """A `final_hf/` export (lerobot's own loading) or a training `checkpoint_*.pt` (restore_policy), with the
    training config that says how it saw the data: `config_path`, else the checkpoint's own or the run's."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        policy, pre, post = restore_policy(ckpt, device=device)
        train_cfg, source = ckpt["config"], f"{path} (the checkpoint's own)"
    elif path.is_dir() and (path / "config.json").is_file():
        policy, pre, post = load_export(path, device)
        train_cfg, source = (None, None) if config_path else training_config_of_export(path)
    else:
        raise UserError(
            f"--policy {path}: not found, or neither a checkpoint_*.pt file nor an exported policy folder (a final_hf/ "
            "with config.json and model.safetensors). Training writes both under OUTPUT_DIR/checkpoints/."
        )
    if config_path is not None:
        train_cfg, source = load_config(config_path), str(config_path)
    return LoadedPolicy(policy, pre, post, train_cfg, source)


def load_export(path: Path, device: str):
    """lerobot's loading of an export, pointed at the folder's own vlm/ (so a moved folder loads too)."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    path = path.resolve()
    vlm = str(path / "vlm")
    policy = SmolVLAPolicy.from_pretrained(path, cli_overrides=[f"--vlm_model_name={vlm}", f"--device={device}"])
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(path),
        preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": vlm}, "device_processor": {"device": device}},
    )
    return policy, preprocessor, postprocessor


def training_config_of_export(export_dir: Path) -> tuple[dict, str]:
    """The run's config.yaml (OUTPUT_DIR/checkpoints/final_hf -> OUTPUT_DIR/config.yaml), else the defaults (the
    simulator's cameras and the ee_pose state)."""
    run_config = export_dir.resolve().parent.parent / "config.yaml"
    if run_config.is_file():
        return load_config(run_config), str(run_config)
    print(f"note: no training config next to {export_dir} ({run_config} is missing) and no --config: assuming the "
          "default inputs (dataset.cameras, ee_pose state, task instruction of insertion_vla.config)")
    return defaults(), "defaults"


def policy_inputs(policy, dataset_cfg: dict, jpeg_quality: int = COLLECTOR_JPEG_QUALITY) -> PolicyInputs:
    """The policy's inputs in simulator terms, checked against what the simulator provides."""
    keys = keys_from_config(dataset_cfg)
    cameras = {camera: f"observation.images.{name}" for camera, name in keys.cameras.items()}
    unknown = sorted(set(cameras) - set(CAMERA_NAMES))
    if unknown:
        raise UserError(
            f"the policy was trained on cameras {sorted(cameras)} (dataset.cameras of its training config), but the "
            f"simulator has {list(CAMERA_NAMES)}: {unknown} do not exist there. Pass --config with a config whose "
            "dataset.cameras maps simulator cameras to the policy's keys (e.g. side_camera: camera1)."
        )
    expected = sorted(policy.config.image_features)
    if sorted(cameras.values()) != expected:
        raise UserError(
            f"the policy's image inputs are {expected}, but its config maps the cameras to {sorted(cameras.values())} "
            "(dataset.cameras): pass --config with the config the policy was trained with."
        )
    missing = [key for key in keys.state_keys if key not in SIM_STATE]
    if missing:
        raise UserError(f"the policy's state comes from {missing}, which the simulator does not provide "
                        f"(it has {list(SIM_STATE)}); set dataset.use_ee_pose / use_qpos / state_key accordingly")
    state = tuple(SIM_STATE[key] for key in keys.state_keys)
    state_dim = policy.config.robot_state_feature.shape[0]
    if state_dim != 6 * len(state):
        raise UserError(f"the policy expects a state of {state_dim} values, but {list(keys.state_keys)} give "
                        f"{6 * len(state)}: pass --config with the config the policy was trained with")
    action_dim = policy.config.action_feature.shape[0]
    if action_dim != 6:
        raise UserError(f"the policy outputs {action_dim} action values; the simulator takes 6 joint positions")
    return PolicyInputs(
        cameras=cameras, state=state, task=dataset_cfg["task_instruction"] or TASK_INSTRUCTION,
        image_side=policy.config.resize_imgs_with_padding[0], jpeg_quality=jpeg_quality,
    )


def observation_batch(observation: dict, inputs: PolicyInputs) -> dict:
    """One simulator observation as a dataset batch of one (uint8 images, state, task), for prepare_batch."""
    batch = {}
    for camera, key in inputs.cameras.items():
        image = observation["images"][camera]
        if inputs.jpeg_quality:
            image = decode_jpeg(encode_jpeg(image, inputs.jpeg_quality))
        image = resize_with_pad(image, inputs.image_side, inputs.image_side)
        batch[key] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).unsqueeze(0)
    state = np.concatenate([observation[name] for name in inputs.state]).astype(np.float32)
    batch["observation.state"] = torch.from_numpy(state).unsqueeze(0)
    batch["task"] = [inputs.task]
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Drivers: reset(env) at the episode start, act(observation) every step, needs_images() before each step


class PolicyDriver:
    """Receding horizon: predict a chunk from the observation, execute its first `n_action_steps` actions."""

    uses_images = True

    def __init__(self, policy, preprocessor, postprocessor, inputs: PolicyInputs, n_action_steps: int | None = None):
        self.policy, self.preprocessor, self.postprocessor, self.inputs = policy, preprocessor, postprocessor, inputs
        chunk = policy.config.chunk_size
        self.n_action_steps = n_action_steps or policy.config.n_action_steps
        if not 1 <= self.n_action_steps <= chunk:
            raise UserError(f"--n_action_steps must be in [1, {chunk}] (the policy's chunk_size), got {self.n_action_steps}")
        self.device = next(policy.parameters()).device
        self.queue: deque = deque()
        self.queries = 0
        self._noise = torch.Generator()

    def reset(self, env, seed: int) -> None:
        self.policy.reset()
        self.queue.clear()
        self.queries = 0
        self._noise.manual_seed(seed)  # the sampler's noise is a function of the episode: reruns are identical

    def needs_images(self) -> bool:
        """True when the next observation will be fed to the policy (the chunk is used up)."""
        return not self.queue

    def act(self, observation: dict) -> np.ndarray:
        if not self.queue:
            batch = prepare_batch(observation_batch(observation, self.inputs), self.preprocessor, self.device)
            config = self.policy.config
            noise = torch.randn(1, config.chunk_size, config.max_action_dim, generator=self._noise).to(self.device)
            chunk = predict_action_chunk(self.policy, batch, self.postprocessor, noise=noise)[0].float().numpy()
            if not np.all(np.isfinite(chunk)):
                raise UserError(f"the policy predicted non-finite actions (query {self.queries}): the weights are broken")
            self.queue.extend(chunk[: self.n_action_steps])
            self.queries += 1
        return self.queue.popleft()


class ExpertDriver:
    """sim's scripted expert (privileged state, no images) behind the same interface."""

    uses_images = False
    n_action_steps = 1
    queries = 0

    def __init__(self):
        self.expert = ScriptedExpert()

    def reset(self, env, seed: int) -> None:
        self.expert.reset(env)

    def needs_images(self) -> bool:
        return False

    def act(self, observation: dict) -> np.ndarray:
        return self.expert.act(observation)


# ----------------------------------------------------------------------------------------------------------------
# Episodes


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
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


class EpisodeVideo:
    """The three cameras side by side, streamed to an MP4 (H.264), written atomically.

    Frames are rendered from the simulation state by a renderer of the video's own, so recording changes nothing
    the policy sees (the env's image-noise stream advances only with the env's own renders); they carry no image
    noise. Call add(env) right after reset (the renderer then uploads the episode's textures) and after each step.
    """

    def __init__(self, path: Path):
        self.path = path
        self._renderer = None
        self._writer = None

    def __enter__(self):
        self._output = atomic_output(self.path)
        self._temporary = self._output.__enter__()
        return self

    def add(self, env: NeedleInsertionEnv) -> None:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(env.model, env.height, env.width)
        images = []
        for camera in CAMERA_NAMES:
            self._renderer.update_scene(env.data, camera=camera)
            images.append(self._renderer.render())
        frame = np.concatenate(images, axis=1)
        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))  # H.264 wants even sizes
        if self._writer is None:
            # The container is named explicitly: the temporary file's name does not end in .mp4.
            self._writer = imageio_ffmpeg.write_frames(
                str(self._temporary), (frame.shape[1], frame.shape[0]), fps=CONTROL_HZ, codec="libx264", quality=7,
                macro_block_size=1, output_params=["-f", "mp4"],
            )
            self._writer.send(None)
        self._writer.send(np.ascontiguousarray(frame))

    def __exit__(self, *exc):
        if self._renderer is not None:
            self._renderer.close()
        if self._writer is not None:
            self._writer.close()
        return self._output.__exit__(*exc)


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
    min_tip_error, steps, done = math.inf, 0, False
    while not done:
        if video is not None:
            video.add(env)
        action = driver.act(observation)
        env.render_images = driver.needs_images()
        observation, _, terminated, truncated, info = env.step(action)
        steps += 1
        min_tip_error = min(min_tip_error, info["tip_error_mm"])
        done = terminated or truncated
    if video is not None:
        video.add(env)
    env.render_images = True  # as built
    return EpisodeResult(
        episode=episode, seed=seed, success=bool(info["success"]), steps=steps,
        time_to_success_s=info["time_s"] if info["success"] else None,
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
        progress.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
    return results


# ----------------------------------------------------------------------------------------------------------------
# Figures and reports


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0/N and N/N, unlike p +- z*se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def summarize(results: list[EpisodeResult]) -> dict:
    n, k = len(results), sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    tip = [r.final_tip_error_mm for r in results]
    axis = [r.final_axis_error_deg for r in results]
    times = [r.time_to_success_s for r in results if r.success]
    return {
        "episodes": n, "successes": k, "success_rate": k / n, "success_rate_ci95": [lo, hi],
        "tip_error_mm": {"mean": float(np.mean(tip)), "worst": float(np.max(tip)),
                         "worst_episode": results[int(np.argmax(tip))].episode},
        "axis_error_deg": {"mean": float(np.mean(axis)), "worst": float(np.max(axis)),
                           "worst_episode": results[int(np.argmax(axis))].episode},
        "time_to_success_s": {"mean": float(np.mean(times)), "min": float(np.min(times)), "max": float(np.max(times))}
        if times else None,
        "wall_seconds_per_episode": float(np.mean([r.wall_s for r in results])),
    }


def summary_lines(summary: dict) -> list[str]:
    tip, axis, times = summary["tip_error_mm"], summary["axis_error_deg"], summary["time_to_success_s"]
    lo, hi = summary["success_rate_ci95"]
    k, n = summary["successes"], summary["episodes"]
    return [
        f"Final tip error:  mean {tip['mean']:.3f} mm, worst {tip['worst']:.3f} mm (episode {tip['worst_episode']})",
        f"Final axis error: mean {axis['mean']:.2f} deg, worst {axis['worst']:.2f} deg (episode {axis['worst_episode']})",
        f"Time to success:  mean {times['mean']:.2f} s (min {times['min']:.2f}, max {times['max']:.2f}; the 1 s hold "
        f"included) over {k} successes" if times else "Time to success:  no successful episode",
        f"Wall time: {summary['wall_seconds_per_episode']:.1f} s per episode",
        f"Success rate: {k}/{n} ({100 * k / n:.1f} %, 95 % CI {100 * lo:.1f}-{100 * hi:.1f} %)",
    ]


def write_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_report(output_dir: Path, settings: dict, summary: dict, rows: list[dict]) -> None:
    """report.json (settings, summary, every episode) and episodes.csv (a row per episode)."""
    report = {"settings": settings, "summary": summary, "episodes": rows}
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=2, default=str))
    write_csv(output_dir / "episodes.csv", rows)


# ----------------------------------------------------------------------------------------------------------------
# Training data: its seeds (to stay disjoint from them) and its image size (to render the same)


def training_data_facts(dataset_cfg: dict) -> dict | None:
    """Base seeds and image size of a config's training episodes; None when its folder is not reachable here."""
    root = Path(dataset_cfg["root_dir"])
    if not root.is_dir():
        return None
    paths = discover_episodes(root)
    base_seeds = set()
    for path in paths:
        with contextlib.suppress(OSError), h5py.File(path, "r") as f:  # a damaged file is training's to report
            if "base_seed" in f.attrs:
                base_seeds.add(int(f.attrs["base_seed"]))
    keys = keys_from_config(dataset_cfg)
    camera = next(iter(keys.cameras))
    with open_episode(paths[0], keys) as episode:
        height, width = episode.read_image(camera, 0).shape[:2]
    return {"root": str(root), "episodes": len(paths), "base_seeds": sorted(base_seeds), "image_size": (width, height)}


def check_seeds_disjoint(base_seed: int, facts: dict | None) -> str:
    """Refuse an evaluation base seed that the training episodes were collected with; a note for the report."""
    if facts is None:
        return "not checked: the training episodes are not reachable from here"
    if base_seed in facts["base_seeds"]:
        raise UserError(
            f"--seed {base_seed}: the training episodes in {facts['root']} were collected with base seed {base_seed}, "
            f"so evaluation would replay training scenes. Choose another --seed (their base seeds: {facts['base_seeds']})."
        )
    if not facts["base_seeds"]:
        return f"nothing to check: the training episodes in {facts['root']} have no base_seed (not simulator collections)"
    return f"checked: the training episodes in {facts['root']} have base seeds {facts['base_seeds']}"


# ----------------------------------------------------------------------------------------------------------------
# During training


def make_training_evaluator(cfg: dict, base_seed: int = EVAL_BASE_SEED):
    """evaluate_fn(policy, preprocessor, postprocessor, step) for insertion_vla.train.train: evaluation.episodes
    closed-loop episodes (the same seeds every time, so evaluations compare), rendered at the training data's
    image size with all DR on; writes OUTPUT_DIR/eval/step_N/{report.json, episodes.csv}."""
    episodes = cfg["evaluation"]["episodes"]
    if episodes < 1 or cfg["evaluation"]["freq"] < 1:
        raise UserError(f"evaluation.episodes and evaluation.freq must be at least 1, got {episodes} and "
                        f"{cfg['evaluation']['freq']}")
    facts = training_data_facts(cfg["dataset"])
    seeds_note = check_seeds_disjoint(base_seed, facts)
    width, height = facts["image_size"] if facts else DEFAULT_SIZE
    seeds = evaluation_seeds(base_seed, episodes)
    env = None  # built on first use: only rank 0 evaluates

    def evaluate_fn(policy, preprocessor, postprocessor, step: int) -> dict:
        nonlocal env
        if env is None:
            env = make_env(width, height)
        driver = PolicyDriver(policy, preprocessor, postprocessor, policy_inputs(policy, cfg["dataset"]))
        results = run_episodes(env, driver, seeds, desc=f"eval step {step}")
        summary = summarize(results)
        settings = {"step": step, "base_seed": base_seed, "seeds": seeds, "seeds_check": seeds_note,
                    "width": width, "height": height, "n_action_steps": driver.n_action_steps,
                    "dr": dataclasses.asdict(env.dr)}
        write_report(Path(cfg["output_dir"]) / "eval" / f"step_{step}", settings, summary,
                     [dataclasses.asdict(r) for r in results])
        return {"eval/success_rate": summary["success_rate"], "eval/tip_error_mm": summary["tip_error_mm"]["mean"],
                "eval/axis_error_deg": summary["axis_error_deg"]["mean"]}

    return evaluate_fn


# ----------------------------------------------------------------------------------------------------------------
# Offline: recorded episodes (real robot or simulator)


def recorded_episode_paths(source) -> list[Path]:
    """A folder (searched recursively), a single episode file, or a validation_episodes.txt listing files."""
    source = Path(source)
    if source.is_dir():
        return discover_episodes(source)
    if source.suffix in (".h5", ".hdf5") and source.is_file():
        return [source]
    if source.suffix == ".txt" and source.is_file():
        lines = [line for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
        paths = [Path(line.split("\t")[-1]) for line in lines]
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise UserError(f"--episodes_from {source}: " + (f"files not found: {missing[:5]} (paths are relative to "
                            "the directory training ran in; run from there)" if missing else "lists no episode"))
        return paths
    raise UserError(f"--episodes_from {source}: not a folder of episodes, an .h5/.hdf5 file or a "
                    "validation_episodes.txt")


def evaluate_recorded(loaded: LoadedPolicy, paths: list[Path], output_dir: Path, n_action_steps: int | None,
                      device: str) -> tuple[dict, list[dict]]:
    """Open-loop: chunks predicted along each recorded episode every n_action_steps frames (predict_episode),
    compared with the recorded actions -> per-joint MAE in degrees; one trajectory plot per episode."""
    policy, cfg = loaded.policy, loaded.train_cfg
    if n_action_steps is not None:
        if not 1 <= n_action_steps <= policy.config.chunk_size:
            raise UserError(f"--n_action_steps must be in [1, {policy.config.chunk_size}], got {n_action_steps}")
        policy.config.n_action_steps = n_action_steps
    side = policy.config.resize_imgs_with_padding[0]
    dataset = EpisodeDataset(paths, keys_from_config(cfg["dataset"]), horizon=policy.config.chunk_size,
                             image_size=(side, side), task_instruction=cfg["dataset"]["task_instruction"])
    rows, abs_sum, frames = [], np.zeros(dataset.action_dim), 0
    for position in tqdm(range(len(paths)), desc="episodes", unit="ep", dynamic_ncols=True, leave=False):
        true, pred = predict_episode(loaded.policy, loaded.preprocessor, loaded.postprocessor, dataset, position,
                                     device, contextlib.nullcontext)
        error = np.degrees(np.abs(pred - true))
        abs_sum += error.sum(axis=0)
        frames += len(error)
        plot = output_dir / "plots" / f"{position:03d}_{paths[position].stem}.png"
        plot_trajectories([(paths[position].stem, true, pred)], plot,
                          f"{paths[position].name}: recorded vs. predicted (chunks every {policy.config.n_action_steps} frames)")
        mae = error.mean(axis=0)
        rows.append({"episode": str(paths[position]), "frames": len(error),
                     **{f"mae_q{j + 1}_deg": float(v) for j, v in enumerate(mae)}, "mae_mean_deg": float(mae.mean()),
                     "plot": str(plot)})
    mae = abs_sum / frames
    return {"episodes": len(paths), "frames": frames, "mae_deg": mae.tolist(), "mae_mean_deg": float(mae.mean())}, rows


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", type=Path, metavar="PATH",
                     help="the policy: an exported final_hf/ folder or a training checkpoint_*.pt")
    who.add_argument("--expert", action="store_true",
                     help="evaluate sim's scripted expert instead of a policy (sanity check of the evaluator: >= 95 %%)")
    parser.add_argument("--episodes", type=int, default=20, help="simulated episodes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=EVAL_BASE_SEED,
                        help="evaluation base seed: episode i runs on sim.seeding.episode_seed(SEED, i); must differ "
                             "from the training data's collection seed (default: %(default)s; collections use 0)")
    parser.add_argument("--output_dir", type=Path,
                        help="report.json, episodes.csv, videos/ (default: outputs/eval/<run>_<policy name>)")
    parser.add_argument("--n_action_steps", type=int,
                        help="actions of each predicted chunk executed before the next prediction (default: the "
                             "policy's n_action_steps)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the policy runs (default here: %(default)s)")
    parser.add_argument("--width", type=int, help="rendered image width (default: the training data's, else 640)")
    parser.add_argument("--height", type=int, help="rendered image height (default: the training data's, else 480)")
    parser.add_argument("--max_episode_seconds", type=float, default=12.0,
                        help="simulated seconds before an episode times out (default: %(default)s, as the collector)")
    parser.add_argument("--videos", type=int, default=3, help="episodes recorded as MP4, the first ones (default: %(default)s)")
    parser.add_argument("--jpeg_quality", type=int, default=COLLECTOR_JPEG_QUALITY,
                        help="JPEG round trip of the policy's images at the training data's quality, as the collector "
                             "stores frames; 0: none (default: %(default)s)")
    parser.add_argument("--config", type=Path,
                        help="training config whose dataset section (cameras, state, task) describes the policy's "
                             "inputs (default: the checkpoint's own, or the run's config.yaml next to final_hf/)")
    parser.add_argument("--episodes_from", type=Path, metavar="DIR_OR_LIST",
                        help="offline mode: predict along recorded episodes (a folder, an .h5 file or a "
                             "validation_episodes.txt) and report per-joint MAE in degrees with plots; no simulation")
    add_randomization_args(parser)  # the collector's DR flags and --no_dr: the same distribution by default
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if (args.width is None) != (args.height is None) or (args.width is not None and min(args.width, args.height) < 1):
        parser.error("give --width and --height together, both positive")
    if args.episodes_from and args.expert:
        parser.error("--episodes_from needs --policy (the expert has nothing to predict offline)")
    if not 0 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in [0, 100], got {args.jpeg_quality}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    return args


def default_output_dir(args) -> Path:
    if args.expert:
        return Path("outputs/eval/expert")
    path = args.policy.resolve()
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return Path("outputs/eval") / f"{run}_{path.stem}"


def main(argv=None):
    args = parse_args(argv)
    output_dir = args.output_dir or default_output_dir(args)
    loaded = None if args.expert else load_policy(args.policy, args.device, args.config)

    if args.episodes_from:
        torch.manual_seed(args.seed)  # the sampler's noise
        summary, rows = evaluate_recorded(loaded, recorded_episode_paths(args.episodes_from), output_dir,
                                          args.n_action_steps, args.device)
        settings = {"mode": "offline", "policy": str(args.policy), "config": loaded.config_source,
                    "episodes_from": str(args.episodes_from), "n_action_steps": loaded.policy.config.n_action_steps}
        write_report(output_dir, settings, summary, rows)
        print(f"Report: {output_dir / 'report.json'}, {output_dir / 'episodes.csv'}, plots in {output_dir / 'plots'}")
        joints = " | ".join(f"q{j + 1} {v:.2f}" for j, v in enumerate(summary["mae_deg"]))
        print(f"Per-joint MAE over {summary['frames']} frames of {summary['episodes']} episodes (deg): {joints} | "
              f"mean {summary['mae_mean_deg']:.2f}")
        return

    phantom, dr = randomization_from_args(args)
    facts = training_data_facts(loaded.train_cfg["dataset"]) if loaded else None
    seeds_note = check_seeds_disjoint(args.seed, facts) if loaded else "expert: no training data"
    width, height = (args.width, args.height) if args.width else facts["image_size"] if facts else DEFAULT_SIZE
    if loaded:
        inputs = policy_inputs(loaded.policy, loaded.train_cfg["dataset"], args.jpeg_quality)
        driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor, inputs, args.n_action_steps)
    else:
        driver = ExpertDriver()
    seeds = evaluation_seeds(args.seed, args.episodes)
    env = make_env(width, height, dr, phantom, args.max_episode_seconds)
    try:
        results = run_episodes(env, driver, seeds, output_dir / "videos", args.videos)
    finally:
        env.close()

    summary = summarize(results)
    settings = {
        "mode": "expert" if args.expert else "policy", "policy": str(args.policy) if loaded else None,
        "config": loaded.config_source if loaded else None, "device": args.device, "base_seed": args.seed,
        "seeds": seeds, "seeds_check": seeds_note, "width": width, "height": height,
        "n_action_steps": driver.n_action_steps, "jpeg_quality": args.jpeg_quality if loaded else None,
        "max_episode_seconds": args.max_episode_seconds, "phantom": dataclasses.asdict(phantom),
        "dr": dataclasses.asdict(dr) if dr is not None else None,
    }
    write_report(output_dir, settings, summary, [dataclasses.asdict(r) for r in results])
    label = "scripted expert" if args.expert else str(args.policy)
    print(f"Evaluated {label} on {len(seeds)} episodes: seeds episode_seed({args.seed}, 0..{len(seeds) - 1}), "
          f"DR {'off' if dr is None else 'on'}, {width}x{height}, {settings['n_action_steps']} actions per prediction")
    print(f"Report: {output_dir / 'report.json'}, {output_dir / 'episodes.csv'}"
          + (f", videos in {output_dir / 'videos'}" if args.videos else ""))
    print("\n".join(summary_lines(summary)))


if __name__ == "__main__":
    exit_on_user_error(main)
