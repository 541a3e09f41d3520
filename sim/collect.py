"""Collect scripted-expert demonstrations as HDF5 episodes.

    python -m sim.collect --episodes 352 --out data/Eye_trocar_sim [--seed 0] [--workers 2]

Episode i is written to DIR/episode_{i:06d}.h5 (sorted order = episode order) from the simulation seed
`episode_seed(seed, i, attempt)`; a failed attempt (no success before the timeout) is discarded, counted, and
retried with the next attempt number. Re-running into the same DIR skips the episodes already there.

Four options make demonstrations a policy learns more from (the env's success rule is unchanged):
  --hold_seconds S   keep recording S more seconds after the success: the expert stays at the target, so a policy
                     sees what to do once there (without it every episode ends 1 s into the hold);
  --perturb_std R    DART-style recovery: Gaussian noise (std R rad per joint) is added to the command sent to the
                     arm on the approach (up to the stand-off point before the trocar, as --drift_mm below), while
                     the recorded `action` is the expert's clean command solved from the joints actually commanded,
                     i.e. the correction back onto its path; the sent command is kept as `executed_action`.
  --start_joint_range_deg R
                     start each episode with every joint uniformly within +/-R deg of the home pose (from the
                     episode's seed). From the home pose alone, the joints an expert passes through tell where the
                     phantom stands, and a policy learns that instead of looking (it then fails in closed loop, where
                     the joints are its own); from varied starts they tell much less on the first part of the way.
  --drift_mm D       recovery from deviations that last: on the approach (from the start to the stand-off point
                     before the trocar) the needle tip is commanded off the expert's path by a slowly wandering
                     offset (per axis std D mm, correlation time --drift_seconds, starting at 0), while the recorded
                     `action` stays the expert's command on its path. The white noise of --perturb_std moves the arm
                     about half a millimetre for one frame; a policy in closed loop strays by millimetres for seconds,
                     and only demonstrations that do so show what to do from there. The offset ends at the stand-off,
                     or with --drift_until_mm D once the expert's path has come within D mm of the entry (the arm
                     is then sent back onto the path), so the needle always enters the eye on the expert's path.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from episode_format.atomic import remove_stale_temporaries
from episode_format.errors import UserError, exit_on_user_error
from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from sim.env import CONTROL_HZ, NeedleInsertionEnv
from sim.expert import ScriptedExpert
from sim.randomization import (
    DomainRandomization,
    PhantomPlacement,
    add_randomization_args,
    load_backgrounds,
    randomization_from_args,
)
from sim.recorder import EpisodeRecorder
from sim.render_workers import DEFAULT_RESTARTS, RenderWorkerDied, render_in_workers, warn_on_restart
from sim.scene import CAMERA_NAMES
from sim.seeding import MAX_ATTEMPTS, episode_seed

PERTURBATION_STREAM = 7  # the injected noise has a random stream of its own, seeded by the episode's seed
DRIFT_STREAM = 8  # and so has the drift: adding one does not change the other
STAND_OFF_MM = ScriptedExpert().standoff * 1000.0  # where the approach ends, before the entry site


@dataclass(frozen=True)
class CollectionSettings:
    out_dir: Path
    base_seed: int = 0
    width: int = 640
    height: int = 480
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    phantom: PhantomPlacement = PhantomPlacement()
    dr: DomainRandomization | None = DomainRandomization()
    max_attempts: int = 10
    max_episode_seconds: float = 12.0
    hold_seconds: float = 0.0
    perturb_std: float = 0.0
    start_joint_range_deg: float = 0.0
    drift_mm: float = 0.0
    drift_seconds: float = 1.0
    drift_until_mm: float = STAND_OFF_MM  # the drift ends where the expert's path is this far before the entry


@dataclass(frozen=True)
class EpisodeOutcome:
    index: int
    attempts: int  # attempts run, the successful one included
    saved: bool
    unsafe: bool = False  # saved, but the needle entered the eye beside the trocar's cannula on the way


def episode_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"episode_{index:06d}.h5"


def record_episode(
    env: NeedleInsertionEnv, expert: ScriptedExpert, seed: int, settings: CollectionSettings
) -> tuple[EpisodeRecorder, dict]:
    """Run the expert for one episode (and settings.hold_seconds past its success); returns the recorded frames and
    the info of the step that decided success."""
    observation, info = env.reset(seed=seed)
    expert.reset(env)
    recorder = EpisodeRecorder(CAMERA_NAMES, settings.jpeg_quality)
    noise = np.random.default_rng([seed, PERTURBATION_STREAM])
    drift = tip_drift(np.random.default_rng([seed, DRIFT_STREAM]), int(expert.duration_seconds * CONTROL_HZ) + 1,
                      settings.drift_mm / 1000.0, settings.drift_seconds)
    recovering = settings.perturb_std > 0 or settings.drift_mm > 0
    extra_steps, outcome, sent, deepest = int(round(settings.hold_seconds * CONTROL_HZ)), None, None, 0.0
    while True:
        action = expert.act(observation, from_q=sent if recovering else None)
        frame = len(recorder)
        # Both deviations end before the entry (the noise at the stand-off, the drift there or drift_until_mm before
        # the entry): the needle enters the eye on the expert's path (noise during the insertion pushed it through
        # the eye wall beside the 0.8 mm cannula in every narrow-tier one).
        drifting = settings.drift_mm > 0 and (
            expert.on_approach or expert.tip_before_entry_m() * 1000.0 > settings.drift_until_mm)
        sent = expert.offset_command(drift[frame]) if drifting else action
        if settings.perturb_std > 0 and expert.on_approach:
            sent = sent + noise.normal(0.0, settings.perturb_std, 6).astype(np.float32)
        recorder.add(observation, action, timestamp=frame / CONTROL_HZ, executed=sent if recovering else None)
        observation, _, terminated, truncated, info = env.step(sent)
        deepest = max(deepest, info["penetration_outside_trocar_mm"])
        if outcome is None and (terminated or truncated):
            outcome, extra_steps = info, 0 if truncated else extra_steps  # a timeout is not held
        if outcome is not None:
            if extra_steps == 0:
                return recorder, {**outcome, "max_penetration_outside_trocar_mm": deepest}
            extra_steps -= 1


def tip_drift(rng: np.random.Generator, steps: int, std_m: float, correlation_seconds: float) -> np.ndarray:
    """(steps, 3) tip offsets in m, one per frame: an Ornstein-Uhlenbeck path from 0 whose per-axis std tends to
    std_m, frames correlated as exp(-dt / correlation_seconds)."""
    decay = np.exp(-1.0 / (CONTROL_HZ * correlation_seconds))
    path, value = np.zeros((steps, 3)), np.zeros(3)
    for frame in range(steps):
        path[frame] = value
        value = decay * value + np.sqrt(1.0 - decay**2) * rng.normal(0.0, std_m, 3)
    return path


def episode_attrs(settings: CollectionSettings, env: NeedleInsertionEnv, index: int, attempt: int, info: dict) -> dict:
    entry, target, axis = env.trocar_target()
    return {
        "sim_seed": episode_seed(settings.base_seed, index, attempt),
        "episode_index": index,
        "attempt": attempt,
        "success": bool(info["success"]),
        "fps": CONTROL_HZ,
        "dr_enabled": int(settings.dr is not None),
        **collection_attrs(settings),
        "final_tip_error_mm": info["tip_error_mm"],
        "final_axis_error_deg": info["axis_error_deg"],
        "max_penetration_outside_trocar_mm": info["max_penetration_outside_trocar_mm"],
        "trocar_entry": entry,
        "trocar_target": target,
        "trocar_axis": axis,
        **env.scene_params,
    }


_worker: tuple[CollectionSettings, NeedleInsertionEnv, ScriptedExpert] | None = None  # one env per process


def _worker_env(settings: CollectionSettings) -> tuple[NeedleInsertionEnv, ScriptedExpert]:
    global _worker
    if _worker is None or _worker[0] != settings:
        if _worker is not None:
            _worker[1].close()
        env = NeedleInsertionEnv(
            width=settings.width,
            height=settings.height,
            dr=settings.dr,
            phantom=settings.phantom,
            max_episode_seconds=settings.max_episode_seconds,
            start_joint_range_deg=settings.start_joint_range_deg,
        )
        _worker = (settings, env, ScriptedExpert())
    return _worker[1], _worker[2]


def collect_episode(index: int, settings: CollectionSettings) -> EpisodeOutcome:
    """Record episode `index`, retrying failed attempts; writes the file only for a success."""
    env, expert = _worker_env(settings)
    for attempt in range(settings.max_attempts):
        recorder, info = record_episode(env, expert, episode_seed(settings.base_seed, index, attempt), settings)
        if info["success"]:
            recorder.write(episode_path(settings.out_dir, index), episode_attrs(settings, env, index, attempt, info))
            return EpisodeOutcome(index, attempt + 1, saved=True,
                                  unsafe=info["max_penetration_outside_trocar_mm"] > 0)
    return EpisodeOutcome(index, settings.max_attempts, saved=False)


def _collect_in_worker(task: tuple[int, CollectionSettings]) -> EpisodeOutcome:
    return collect_episode(*task)


def collection_attrs(settings: CollectionSettings) -> dict:
    """What an episode file says about how the whole collection was made (a re-run must match it). A perturbed
    collection also says that its noise stopped at the stand-off: before that was so, it went on into the eye."""
    window = {"perturb_stops_at_stand_off": 1} if settings.perturb_std > 0 else {}
    return {"base_seed": settings.base_seed, "image_width": settings.width, "image_height": settings.height,
            "hold_seconds": settings.hold_seconds, "perturb_std": settings.perturb_std, **window,
            "start_joint_range_deg": settings.start_joint_range_deg, "drift_mm": settings.drift_mm,
            "drift_seconds": settings.drift_seconds, "drift_until_mm": settings.drift_until_mm,
            **settings.phantom.to_attrs()}


def check_existing(path: Path, settings: CollectionSettings) -> None:
    """An episode already in DIR must come from the same collection settings, or the dataset would mix them. Files
    from before hold, perturbation, start range, drift and placement were recorded count as 0 s, 0 rad, 0 deg, no
    drift and the default placement; perturbed ones from before the noise stopped at the stand-off, as 0 there."""
    defaults = {"perturb_stops_at_stand_off": 0, **collection_attrs(CollectionSettings(out_dir=path.parent))}
    expected = collection_attrs(settings)
    try:
        with h5py.File(path, "r") as f:
            found = {key: f.attrs.get(key, None if key in ("base_seed", "image_width", "image_height") else defaults[key])
                     for key in expected}
    except OSError as err:
        raise SystemExit(f"error: {path} exists but cannot be opened as HDF5 ({err}); remove it and re-run") from None
    differ = {key: found[key] for key in expected if found[key] is None or not np.isclose(float(found[key]), expected[key])}
    if "perturb_stops_at_stand_off" in differ:  # no flag makes such episodes again: they are not to be extended
        raise SystemExit(
            f"error: {path} is from a perturbed collection whose noise went on during the insertion, before it "
            "stopped at the stand-off (no perturb_stops_at_stand_off attribute): its demonstrations push the needle "
            "through the eye wall beside the cannula. Collect into another --out directory, or delete that "
            "directory's episode_*.h5 files and re-run."
        )
    if differ:
        raise SystemExit(
            f"error: {path} was collected with {differ}, but this run asks for "
            f"{ {key: expected[key] for key in differ} }. Use another --out directory, or the same --seed, --width, "
            "--height, --hold_seconds, --perturb_std, --start_joint_range_deg, --drift_mm, --drift_seconds, "
            "--drift_until_mm and --phantom_* "
            "flags to extend this one."
        )


def collect(settings: CollectionSettings, episodes: int, workers: int = 1,
            worker_restarts: int = DEFAULT_RESTARTS) -> list[EpisodeOutcome]:
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(settings.out_dir)
    existing = [i for i in range(episodes) if episode_path(settings.out_dir, i).exists()]
    for index in existing:
        check_existing(episode_path(settings.out_dir, index), settings)
    todo = [i for i in range(episodes) if i not in set(existing)]

    outcomes = []
    progress = tqdm(total=episodes, initial=len(existing), desc="episodes", unit="ep", dynamic_ncols=True)
    restarting = warn_on_restart("episodes", f" (--worker_restarts {worker_restarts} in all)")
    try:
        for outcome in render_in_workers(_collect_in_worker, [(i, settings) for i in todo], workers, ordered=False,
                                         restarts=worker_restarts, on_restart=restarting):
            outcomes.append(outcome)
            progress.update(1)
            progress.set_postfix(failed_attempts=sum(o.attempts - o.saved for o in outcomes))
    except RenderWorkerDied as err:
        # From the disk: a worker may have saved an episode whose outcome never came back.
        lost = [i for i in todo if not episode_path(settings.out_dir, i).exists()]
        raise UserError(f"{err} while recording episodes of {settings.out_dir}: {len(lost)} not recorded "
                        f"({lost[:10]}{' ...' if len(lost) > 10 else ''}); the {episodes - len(lost)} saved are "
                        "complete. Re-run the same command to record the missing ones.") from None
    finally:
        progress.close()
    return outcomes


def _pixels(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels: give one, e.g. 640") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag, and the module docstring as written."""


def parse_args(
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, PhantomPlacement, DomainRandomization | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=_HelpFormatter,
    )
    parser.add_argument("--episodes", type=int, required=True, help="number of successful episodes wanted in --out")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created; re-runs skip existing)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode i uses episode_seed(seed, i, attempt)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--worker_restarts", type=int, default=DEFAULT_RESTARTS,
                        help="times a worker that dies (a crash in the renderer, the OOM killer) is replaced, its "
                             "unfinished episodes recorded anew, before the collection stops with an error")
    parser.add_argument("--width", type=_pixels, default=640, help="image width, pixels")
    parser.add_argument("--height", type=_pixels, default=480, help="image height, pixels")
    parser.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY, help="JPEG quality of the stored frames (1-100)")
    parser.add_argument("--max_attempts", type=int, default=10, help="attempts per episode before giving up on it")
    parser.add_argument(
        "--max_episode_seconds", type=float, default=12.0, help="simulated seconds before an attempt times out"
    )
    parser.add_argument("--hold_seconds", type=float, default=0.0,
                        help="seconds recorded after the success, the expert holding at the target (see above)")
    parser.add_argument("--perturb_std", type=float, default=0.0,
                        help="std (rad per joint) of the noise added to the sent command on the approach; the recorded "
                             "action is the expert's correction (DART-style recovery demonstrations, see above)")
    parser.add_argument("--start_joint_range_deg", type=float, default=0.0,
                        help="start every joint uniformly within +/- this many deg of the home pose (0: always "
                             "home; see above)")
    parser.add_argument("--drift_mm", type=float, default=0.0,
                        help="per-axis std (mm) of the slowly wandering offset of the commanded tip on the approach; "
                             "the recorded action stays on the expert's path (0: none; see above)")
    parser.add_argument("--drift_seconds", type=float, default=None,
                        help=f"correlation time of that offset, s (default: {CollectionSettings.drift_seconds}; only "
                             "with --drift_mm)")
    parser.add_argument("--drift_until_mm", type=float, default=None,
                        help=f"the drift goes on into the insertion until the expert's path is this many mm before the "
                             f"entry, then the arm is sent back onto it (default: {STAND_OFF_MM:g}, the stand-off: "
                             "the approach only; only with --drift_mm)")
    add_randomization_args(parser)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}: ask for the episodes wanted, e.g. --episodes 10")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.worker_restarts < 0:
        parser.error(f"--worker_restarts must be >= 0 (0: stop at the first dead worker), got {args.worker_restarts}")
    if not 1 <= args.max_attempts <= MAX_ATTEMPTS:
        parser.error(f"--max_attempts must be in [1, {MAX_ATTEMPTS}], got {args.max_attempts}")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in [1, 100], got {args.jpeg_quality}")
    if args.width < 1 or args.height < 1:
        parser.error(f"--width and --height must be positive, got {args.width}x{args.height}")
    amounts = (args.hold_seconds, args.perturb_std, args.start_joint_range_deg, args.drift_mm)
    if not all(math.isfinite(value) and value >= 0 for value in amounts):
        parser.error("--hold_seconds, --perturb_std, --start_joint_range_deg and --drift_mm must be finite and >= 0, "
                     "got {}, {}, {} and {}".format(*amounts))
    if args.drift_seconds is not None and args.drift_mm == 0:
        parser.error("--drift_seconds acts only on a drift: add --drift_mm (e.g. --drift_mm 3) or leave it out")
    if args.drift_until_mm is not None and args.drift_mm == 0:
        parser.error("--drift_until_mm acts only on a drift: add --drift_mm (e.g. --drift_mm 3) or leave it out")
    if args.drift_until_mm is None:
        args.drift_until_mm = STAND_OFF_MM
    if not (math.isfinite(args.drift_until_mm) and 0 < args.drift_until_mm <= STAND_OFF_MM):
        parser.error(f"--drift_until_mm must be in (0, {STAND_OFF_MM:g}] mm before the entry, got {args.drift_until_mm}: "
                     "e.g. --drift_until_mm 8")
    if args.drift_seconds is None:
        args.drift_seconds = CollectionSettings.drift_seconds
    if not (math.isfinite(args.drift_seconds) and args.drift_seconds > 0):
        parser.error(f"--drift_seconds must be finite and > 0, got {args.drift_seconds}: e.g. --drift_seconds 1")
    try:
        phantom, dr = randomization_from_args(args)
        if dr is not None and dr.backgrounds:
            load_backgrounds(dr.backgrounds)  # fail here, not in every worker
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return args, phantom, dr


def unsafe_warning(outcomes: list[EpisodeOutcome]) -> str | None:
    """What to tell the user about saved demonstrations that entered the eye beside the cannula, if any did."""
    unsafe = sorted(o.index for o in outcomes if o.unsafe)
    if not unsafe:
        return None
    return (f"warning: in {len(unsafe)} of the {sum(o.saved for o in outcomes)} new episodes the needle entered the "
            "eye beside the trocar's cannula (attribute max_penetration_outside_trocar_mm > 0), which the evaluator "
            f"counts as unsafe, and a policy trained on them learns it: remove episodes {unsafe} before training (a "
            "re-run of this command records the same ones again)")


def main(argv: list[str] | None = None) -> int:
    args, phantom, dr = parse_args(argv)
    settings = CollectionSettings(
        out_dir=args.out,
        base_seed=args.seed,
        width=args.width,
        height=args.height,
        jpeg_quality=args.jpeg_quality,
        phantom=phantom,
        dr=dr,
        max_attempts=args.max_attempts,
        max_episode_seconds=args.max_episode_seconds,
        hold_seconds=args.hold_seconds,
        perturb_std=args.perturb_std,
        start_joint_range_deg=args.start_joint_range_deg,
        drift_mm=args.drift_mm,
        drift_seconds=args.drift_seconds,
        drift_until_mm=args.drift_until_mm,
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the output directory {args.out}: {err.strerror}. Give --out a writable "
              "directory path.", file=sys.stderr)
        return 1
    outcomes = collect(settings, args.episodes, args.workers, args.worker_restarts)
    saved = sum(o.saved for o in outcomes)
    attempts = sum(o.attempts for o in outcomes)
    failed = attempts - saved
    rate = f"{100.0 * saved / attempts:.1f} %" if attempts else "n/a"
    print(
        f"{saved} new episodes saved to {args.out} ({args.episodes - len(outcomes)} already there); "
        f"failed attempts discarded: {failed} of {attempts} (expert success rate {rate})"
    )
    warning = unsafe_warning(outcomes)
    if warning:
        print(warning, file=sys.stderr)
    given_up = sorted(o.index for o in outcomes if not o.saved)
    if given_up:
        print(f"error: episodes {given_up} failed all {args.max_attempts} attempts", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
