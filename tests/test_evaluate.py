"""evaluation/ and its command line evaluate_smolvla_sim.py: closed-loop episodes in the real simulator with the
scripted expert and a real tiny SmolVLA trained for a few steps; safety (an unsafe episode is never a success);
temporal ensembling of chunks; the CLI's report, video and offline mode; the training callback.

(The environment's own API and determinism per seed are tested in test_sim_env.py.)
"""

import contextlib
import csv
import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys

import h5py
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import yaml
from episode_files import write_episode
from fixtures_policy import tiny_vlm_dir  # noqa: F401
from needle_paths import PokeBesideTheTrocar
from train_runs import ROOT, env, make_run_dir, run_dir, train  # noqa: F401  (run_dir: a pytest fixture)

import evaluate_smolvla_sim as ev
from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from evaluation.drivers import ActionChunkSchedule, ExpertDriver, PolicyDriver
from evaluation.offline import recorded_episode_paths
from evaluation.policy_io import load_policy, observation_batch, policy_inputs
from evaluation.report import Z_95, summarize, summary_lines, wilson_interval, write_report
from evaluation.rollout import EVAL_BASE_SEED, evaluation_seeds, make_env, run_episode, run_episodes
from evaluation.training_data import check_seeds_disjoint, training_data_facts
from insertion_vla.config import defaults
from insertion_vla.dataset import EpisodeDataset
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError, exit_on_user_error
from insertion_vla.validation import predict_episode
from sim.recorder import EpisodeRecorder
from sim.scene import CAMERA_NAMES
from sim.seeding import episode_seed

WIDTH, HEIGHT = 64, 48  # the test episodes' image size (episode_files); rendering size does not change physics
SUCCESS_LINE = re.compile(r"^Success rate: (\d+)/(\d+) \((\d+\.\d) %, 95 % CI (\d+\.\d)-(\d+\.\d) %\)$")
UNSAFE_LINE = re.compile(r"^Unsafe: (\d+)/(\d+)( \(.*deepest (\d+\.\d\d) mm, episode (\d+)\))?$")


def evaluate_cli(*args):
    res = subprocess.run([sys.executable, ROOT / "evaluate_smolvla_sim.py", *map(str, args)],
                         capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def evaluate_in_process(capsys, *args) -> str:
    """The command line without a new process (no second import of torch and lerobot); returns stdout."""
    ev.main([str(a) for a in args])
    return capsys.readouterr().out


def read_report(output_dir):
    report = json.loads((output_dir / "report.json").read_text())
    with open(output_dir / "episodes.csv", newline="") as f:
        return report, list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sim_env():
    environment = make_env(WIDTH, HEIGHT)
    yield environment
    environment.close()


@pytest.fixture(scope="module")
def exported(run_dir):
    return load_policy(run_dir / "out" / "checkpoints" / "final_hf", "cpu")


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    z2 = Z_95**2
    assert wilson_interval(0, 10)[1] == pytest.approx(z2 / (10 + z2))  # closed form at 0 successes


def test_expert_through_the_evaluator_succeeds_and_is_deterministic(sim_env):
    seeds = evaluation_seeds(EVAL_BASE_SEED, 2)
    results = run_episodes(sim_env, ExpertDriver(), seeds)
    assert [r.seed for r in results] == [episode_seed(EVAL_BASE_SEED, i) for i in range(2)]
    for r in results:
        assert r.success, r
        assert r.final_tip_error_mm < 1.0 and r.final_axis_error_deg < 2.0
        assert r.time_to_success_s == pytest.approx(r.steps / 15.0)
    assert results[0].phantom_dx_mm != results[1].phantom_dx_mm  # two different scenes
    again = run_episode(sim_env, ExpertDriver(), 0, seeds[0])
    assert (again.steps, again.final_tip_error_mm) == (results[0].steps, results[0].final_tip_error_mm)
    summary = summarize(results)
    assert summary["successes"] == 2 and summary_lines(summary)[-1].startswith("Success rate: 2/2 (100.0 %")


def test_the_expert_through_the_command_line_is_safe_on_every_episode(tmp_path, capsys):
    out = tmp_path / "expert"
    stdout = evaluate_in_process(capsys, "--expert", "--episodes", 4, "--videos", 0, "--width", WIDTH, "--height",
                                 HEIGHT, "--output_dir", out)
    assert stdout.strip().splitlines()[-2:] == ["Unsafe: 0/4", "Success rate: 4/4 (100.0 %, 95 % CI 51.0-100.0 %)"]
    report, rows = read_report(out)
    assert [(e["unsafe"], e["max_penetration_mm"]) for e in report["episodes"]] == [(False, 0.0)] * 4
    assert [(r["unsafe"], float(r["max_penetration_mm"])) for r in rows] == [("False", 0.0)] * 4
    assert report["summary"]["unsafe"] == 0 and report["summary"]["max_penetration_mm"]["worst"] == 0.0


def test_an_unsafe_episode_is_never_a_success(tmp_path):
    """The needle pushed 2 mm deep through the eye wall 3 mm beside the trocar, pulled out, then inserted through the
    trocar by the expert: the env's success rule is met, the evaluator reports an unsafe failure, 2 mm deep."""
    seed = 17
    environment = make_env(WIDTH, HEIGHT, max_episode_seconds=20)
    result = run_episode(environment, PokeBesideTheTrocar(offset=0.003, depth=0.002), 0, seed)
    assert result.steps < 20 * 15  # ended by the env's success rule, not the timeout ...
    assert result.final_tip_error_mm < 1.0 and result.final_axis_error_deg < 2.0
    assert result.unsafe and result.max_penetration_mm == pytest.approx(2.0, abs=0.01)
    assert not result.success and result.time_to_success_s is None  # ... but it is no success

    safe = run_episode(environment, ExpertDriver(), 1, seed)
    environment.close()
    summary = summarize([result, safe])
    assert (summary["successes"], summary["unsafe"]) == (1, 1)
    assert summary["max_penetration_mm"] == {"worst": result.max_penetration_mm, "worst_episode": 0}
    lines = summary_lines(summary)
    assert lines[-2] == ("Unsafe: 1/2 (the needle entered the eye beside the trocar; never a success; deepest "
                         "2.00 mm, episode 0)")
    assert lines[-1].startswith("Success rate: 1/2 (50.0 %")
    write_report(tmp_path, {}, summary, [dataclasses.asdict(r) for r in (result, safe)])
    _, rows = read_report(tmp_path)
    assert [(r["success"], r["unsafe"]) for r in rows] == [("False", "True"), ("True", "False")]
    assert float(rows[0]["max_penetration_mm"]) == pytest.approx(2.0, abs=0.01)


def test_temporal_ensemble_weights_overlapping_chunks_by_hand():
    """Chunks of 3 steps predicted every step, weights exp(-ln 2 * i) = 1, 1/2, 1/4 from the oldest prediction."""
    schedule = ActionChunkSchedule(chunk_size=3, every=1, ensemble_coeff=math.log(2))
    chunks = [[10, 20, 30], [21, 31, 41], [32, 42, 52], [43, 53, 63]]  # chunk k predicted at step k
    actions = []
    for chunk in chunks:
        assert schedule.needs_chunk()
        schedule.add((np.array(chunk)[:, None] * [1.0, -1.0]).astype(np.float32))  # two joints, the second negated
        actions.append(schedule.next_action())
    expected = [10, (20 + 21 / 2) / 1.5, (30 + 31 / 2 + 32 / 4) / 1.75, (41 + 42 / 2 + 43 / 4) / 1.75]
    np.testing.assert_allclose(np.array(actions), np.array(expected)[:, None] * [1.0, -1.0], rtol=1e-6)
    assert actions[0].dtype == np.float32

    # A chunk every 2 steps: two predictions overlap on steps 2 and 3, equal weights with m = 0.
    schedule = ActionChunkSchedule(chunk_size=4, every=2, ensemble_coeff=0.0)
    steps = []
    for step, chunk in zip(range(4), ([[10], [20], [30], [40]], None, [[32], [42], [52], [62]], None)):
        assert schedule.needs_chunk() == (chunk is not None)
        if chunk is not None:
            schedule.add(np.array(chunk, dtype=np.float32))
        steps.append(float(schedule.next_action()[0]))
    assert steps == [10, 20, (30 + 32) / 2, (40 + 42) / 2]


def test_receding_horizon_executes_the_first_actions_of_the_newest_chunk():
    schedule = ActionChunkSchedule(chunk_size=4, every=2)
    executed = []
    for chunk in ([[10], [20], [30], [40]], [[32], [42], [52], [62]]):
        schedule.add(np.array(chunk, dtype=np.float32))
        executed += [float(schedule.next_action()[0]) for _ in range(2)]
    assert executed == [10, 20, 32, 42] and schedule.needs_chunk()
    with pytest.raises(RuntimeError, match="no chunk covers step 4"):
        schedule.next_action()
    with pytest.raises(UserError, match=r"--n_action_steps must be in \[1, 4\]"):
        ActionChunkSchedule(chunk_size=4, every=5)
    for bad in (math.inf, -0.01):
        with pytest.raises(UserError, match="--temporal_ensemble_coeff must be a finite number >= 0"):
            ActionChunkSchedule(chunk_size=4, every=1, ensemble_coeff=bad)


def test_temporal_ensembling_closed_loop_with_the_tiny_policy(run_dir, tmp_path, capsys):
    """End to end: a chunk every policy.n_action_steps steps by default, every step with --n_action_steps 1; with 5
    every 5 steps, and the executed actions (so the episode) differ from plain receding horizon with the same
    chunks' schedule."""
    policy = run_dir / "out" / "checkpoints" / "final_hf"
    common = ("--policy", policy, "--episodes", 1, "--videos", 0, "--max_episode_seconds", 1, "--device", "cpu")
    own_steps = json.loads((policy / "config.json").read_text())["n_action_steps"]
    evaluate_in_process(capsys, *common, "--temporal_ensemble_coeff", 0.01, "--output_dir", tmp_path / "default")
    default, _ = read_report(tmp_path / "default")
    assert default["settings"]["temporal_ensemble_coeff"] == 0.01 and default["settings"]["n_action_steps"] == own_steps
    assert default["episodes"][0]["policy_queries"] == math.ceil(15 / own_steps)
    stdout = evaluate_in_process(capsys, *common, "--temporal_ensemble_coeff", 0.01, "--n_action_steps", 1,
                                 "--output_dir", tmp_path / "every")
    assert "a prediction every 1 steps, ensembled (M = 0.01)" in stdout
    every_step, _ = read_report(tmp_path / "every")
    assert every_step["episodes"][0]["steps"] == 15 and every_step["episodes"][0]["policy_queries"] == 15

    reports = {}
    for name, extra in (("ensembled", ("--temporal_ensemble_coeff", 0.01)), ("plain", ())):
        evaluate_in_process(capsys, *common, "--n_action_steps", 5, *extra, "--output_dir", tmp_path / name)
        reports[name] = read_report(tmp_path / name)[0]["episodes"][0]
        assert reports[name]["steps"] == 15 and reports[name]["policy_queries"] == 3
    assert reports["ensembled"]["final_tip_error_mm"] != reports["plain"]["final_tip_error_mm"]

    with pytest.raises(SystemExit):
        ev.parse_args(["--expert", "--temporal_ensemble_coeff", "0.01"])
    assert "--temporal_ensemble_coeff needs --policy in closed loop" in capsys.readouterr().err


def test_noise_scale_zero_predicts_one_chunk_per_observation(sim_env, exported, run_dir, tmp_path, capsys):
    """--noise_scale 0: the flow starts from zero noise, so two predictions from one observation are the same chunk,
    whatever the noise generator's state; at the default 1 they differ (the control). Negative scales are refused;
    the report and the console say the scale."""
    observation, _ = sim_env.reset(seed=3)
    inputs = policy_inputs(exported.policy, exported.train_cfg["dataset"])
    chunks = {}
    for scale in (0.0, 1.0):
        driver = PolicyDriver(exported.policy, exported.preprocessor, exported.postprocessor, inputs,
                              noise_scale=scale)
        driver.reset(sim_env, seed=3)
        driver.observe(observation)
        chunks[scale] = [driver.predict_chunk(observation) for _ in range(2)]
    np.testing.assert_array_equal(*chunks[0.0])
    assert np.abs(chunks[1.0][0] - chunks[1.0][1]).max() > 1e-3
    for bad in (-0.5, math.nan):
        with pytest.raises(UserError, match="--noise_scale must be a finite number >= 0"):
            PolicyDriver(exported.policy, exported.preprocessor, exported.postprocessor, inputs, noise_scale=bad)

    stdout = evaluate_in_process(capsys, "--policy", run_dir / "out" / "checkpoints" / "final_hf", "--episodes", 1,
                                 "--videos", 0, "--max_episode_seconds", 0.5, "--device", "cpu", "--noise_scale", 0,
                                 "--output_dir", tmp_path / "eval")
    assert "noise x0" in stdout and read_report(tmp_path / "eval")[0]["settings"]["noise_scale"] == 0
    with pytest.raises(SystemExit):
        ev.parse_args(["--expert", "--noise_scale", "0"])
    assert "--noise_scale needs --policy in closed loop" in capsys.readouterr().err


def test_policy_sees_what_training_reads_from_a_recorded_episode(sim_env, exported, tmp_path):
    """The evaluator's input for an observation == the dataset's sample of the same frame recorded by sim/."""
    observation, _ = sim_env.reset(seed=7)
    recorder = EpisodeRecorder(CAMERA_NAMES, jpeg_quality=DEFAULT_JPEG_QUALITY)
    recorder.add(observation, np.zeros(6, np.float32), timestamp=0.0)
    recorder.write(tmp_path / "episode.h5", {})
    dataset_cfg = exported.train_cfg["dataset"]
    side = exported.policy.config.resize_imgs_with_padding[0]
    sample = EpisodeDataset([tmp_path / "episode.h5"], keys_from_config(dataset_cfg), horizon=50,
                            image_size=(side, side), task_instruction=dataset_cfg["task_instruction"])[0]

    inputs = policy_inputs(exported.policy, dataset_cfg)
    batch = observation_batch(observation, inputs)
    assert sorted(k for k in batch if k.startswith("observation.images.")) == sorted(exported.policy.config.image_features)
    for key in exported.policy.config.image_features:
        assert batch[key].shape == (1, 3, side, side)
        assert np.array_equal(batch[key][0].numpy(), sample[key].numpy()), key
    assert np.array_equal(batch["observation.state"][0].numpy(), sample["observation.state"].numpy())
    assert batch["task"] == [sample["task"]]


def test_policy_cli_end_to_end_writes_report_csv_and_video(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    res = evaluate_cli("--policy", run_dir / "out" / "checkpoints" / "final_hf", "--episodes", 2, "--videos", 1,
                       "--max_episode_seconds", 2, "--n_action_steps", 10, "--device", "cpu", "--output_dir", out)
    *_, unsafe_line, last = res.stdout.strip().splitlines()
    match = SUCCESS_LINE.match(last)
    assert match and match.group(2) == "2", last
    assert UNSAFE_LINE.match(unsafe_line) and unsafe_line.split()[1].endswith("/2"), unsafe_line
    assert "Final tip error" in res.stdout and "Final axis error" in res.stdout and "Time to success" in res.stdout

    report, rows = read_report(out)
    assert report["settings"]["width"] == WIDTH and report["settings"]["n_action_steps"] == 10
    assert [r["seed"] for r in report["episodes"]] == [episode_seed(EVAL_BASE_SEED, i) for i in range(2)]
    assert len(rows) == 2 and [int(r["seed"]) for r in rows] == report["settings"]["seeds"]
    assert [r["unsafe"] for r in rows] == [str(e["unsafe"]) for e in report["episodes"]]
    assert report["summary"]["unsafe"] == sum(e["unsafe"] for e in report["episodes"])
    assert report["settings"]["temporal_ensemble_coeff"] is None
    for episode in report["episodes"]:
        assert episode["steps"] == 30 or episode["success"]  # 2 s at 15 Hz unless it succeeded
        assert episode["policy_queries"] == math.ceil(episode["steps"] / 10)  # receding horizon: 10 actions a chunk
    tips = [e["final_tip_error_mm"] for e in report["episodes"]]
    assert report["summary"]["tip_error_mm"]["mean"] == pytest.approx(np.mean(tips))
    assert report["summary"]["tip_error_mm"]["worst"] == pytest.approx(max(tips))

    videos = sorted((out / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == [f"episode_000_seed_{episode_seed(EVAL_BASE_SEED, 0)}.mp4"]
    assert report["episodes"][0]["video"] == str(videos[0]) and report["episodes"][1]["video"] is None
    reader = imageio.get_reader(videos[0], format="FFMPEG")
    assert reader.get_meta_data()["size"] == (3 * WIDTH, HEIGHT)
    assert reader.count_frames() == report["episodes"][0]["steps"] + 1
    assert not list(out.rglob("*.tmp-*"))

    # The checkpoint of the same weights, loaded our way instead of lerobot's, gives the same episode (recording
    # a video does not change what the policy sees): the same to float round-off, since final_hf runs lerobot's
    # eager attention and the checkpoint the configured policy.attention (sdpa).
    evaluate_in_process(capsys, "--policy", run_dir / "out" / "checkpoints" / "checkpoint_step_8.pt", "--episodes", 1,
                        "--videos", 0, "--max_episode_seconds", 2, "--n_action_steps", 10, "--device", "cpu",
                        "--output_dir", tmp_path / "eval_ckpt")
    from_checkpoint, _ = read_report(tmp_path / "eval_ckpt")
    assert from_checkpoint["episodes"][0]["steps"] == report["episodes"][0]["steps"]
    for key in ("final_tip_error_mm", "final_axis_error_deg", "min_tip_error_mm"):
        assert from_checkpoint["episodes"][0][key] == pytest.approx(report["episodes"][0][key], rel=1e-6), key


def test_offline_mode_reports_per_joint_mae_and_plots(run_dir, exported, tmp_path, capsys):
    """A known answer: a held-out episode whose recorded actions are the policy's own predictions along it (the
    same sampler seed) plus j deg on joint j, alternating in sign -> per-joint MAE j deg, mean 3.5 deg."""
    (source,) = recorded_episode_paths(run_dir / "out" / "validation_episodes.txt")
    dataset_cfg, config = exported.train_cfg["dataset"], exported.policy.config
    side = config.resize_imgs_with_padding[0]
    dataset = EpisodeDataset([source], keys_from_config(dataset_cfg), horizon=config.chunk_size,
                             image_size=(side, side), task_instruction=dataset_cfg["task_instruction"])
    torch.manual_seed(EVAL_BASE_SEED)  # as the command line seeds the sampler
    _, predicted = predict_episode(exported.policy, exported.preprocessor, exported.postprocessor, dataset, 0, "cpu",
                                   contextlib.nullcontext)
    signs = np.where(np.arange(len(predicted)) % 2 == 0, 1.0, -1.0)[:, None]
    episode = shutil.copy(source, tmp_path / "episode.h5")
    with h5py.File(episode, "a") as f:
        f[dataset_cfg["action_key"]][...] = predicted + signs * np.deg2rad(np.arange(1, 7))

    out = tmp_path / "offline"
    stdout = evaluate_in_process(capsys, "--policy", run_dir / "out" / "checkpoints" / "final_hf", "--episodes_from",
                                 episode, "--device", "cpu", "--output_dir", out)
    assert stdout.strip().splitlines()[-1] == ("Per-joint MAE over 30 frames of 1 episodes (deg): q1 1.00 | q2 2.00 | "
                                               "q3 3.00 | q4 4.00 | q5 5.00 | q6 6.00 | mean 3.50")
    report, rows = read_report(out)
    assert len(rows) == 1 and int(rows[0]["frames"]) == 30
    assert report["summary"]["mae_deg"] == pytest.approx(list(range(1, 7)), abs=1e-4)
    assert [float(rows[0][f"mae_q{j}_deg"]) for j in range(1, 7)] == pytest.approx(list(range(1, 7)), abs=1e-4)
    plot = out / "plots" / "000_episode.png"
    assert rows[0]["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_with_evaluation_logs_eval_metrics(tiny_vlm_dir, tmp_path, capsys):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, length=30)
    cfg = yaml.safe_load(config.read_text())
    cfg["evaluation"] = {"enable": True, "freq": 4, "episodes": 1, "temporal_ensemble_coeff": 0.01}
    config.write_text(yaml.safe_dump(cfg))
    res = train(config)
    assert re.search(r"\[EVAL\] Step 4 \| eval/success_rate: \d\.\d{3} \| eval/tip_error_mm: \d+\.\d{3} \| "
                     r"eval/axis_error_deg: \d+\.\d{3}", res.stdout), res.stdout[-3000:]
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        logged = {(int(r["step"]), r["metric"]) for r in csv.DictReader(f)}
    assert {(4, "eval/success_rate"), (8, "eval/success_rate"), (8, "eval/tip_error_mm")} <= logged
    during_training = json.loads((tmp_path / "out" / "eval" / "step_8" / "report.json").read_text())
    assert during_training["settings"]["temporal_ensemble_coeff"] == 0.01

    # The callback and the command line run the same episode for the same weights and seed, chunks ensembled alike.
    evaluate_in_process(capsys, "--policy", tmp_path / "out" / "checkpoints" / "checkpoint_step_8.pt", "--episodes", 1,
                        "--videos", 0, "--device", "cpu", "--output_dir", tmp_path / "eval",
                        "--temporal_ensemble_coeff", 0.01)
    from_cli, _ = read_report(tmp_path / "eval")
    assert from_cli["episodes"][0]["final_tip_error_mm"] == during_training["episodes"][0]["final_tip_error_mm"]


def test_clear_errors(exported, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: ev.main(["--policy", str(tmp_path / "missing" / "final_hf")]))
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: --policy") and "not found" in stderr

    real_cameras = {**defaults()["dataset"], "cameras": {"zed_left": "camera1", "oak_wrist": "camera2", "zed_top": "camera3"}}
    with pytest.raises(UserError, match=r"\['oak_wrist', 'zed_left', 'zed_top'\] missing"):
        policy_inputs(exported.policy, real_cameras)
    two_cameras = {**defaults()["dataset"], "cameras": {"side_camera": "camera1", "top_camera": "camera3"}}
    with pytest.raises(UserError, match="image inputs are"):
        policy_inputs(exported.policy, two_cameras)
    with pytest.raises(UserError, match="state of 6 values"):
        policy_inputs(exported.policy, {**defaults()["dataset"], "use_qpos": True})

    listing = tmp_path / "validation_episodes.txt"
    listing.write_text("# episode_index\tfile\n0\tnowhere/episode_0000.h5\n")
    with pytest.raises(UserError, match="files not found"):
        recorded_episode_paths(listing)


def test_an_evaluation_seed_used_by_the_training_collection_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    path = write_episode(data / "episode_000000.h5", length=3)
    with h5py.File(path, "a") as f:
        f.attrs["base_seed"] = EVAL_BASE_SEED
    facts = training_data_facts({**defaults()["dataset"], "root_dir": str(data)})
    assert facts["image_size"] == (64, 48)
    with pytest.raises(UserError, match=f"--seed {EVAL_BASE_SEED}: the training episodes"):
        check_seeds_disjoint(EVAL_BASE_SEED, facts)
    assert check_seeds_disjoint(0, facts).startswith("checked")
