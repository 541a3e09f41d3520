"""Bad frames mid-run: a JPEG that does not decode, a NaN action row. The sample is replaced (deterministically),
the frame logged once in bad_samples.csv, and the run stops, naming the files, only past training.max_bad_samples."""

import csv
import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
import yaml
from collected_runs import pretrained_vlm, randomized_episode
from episode_files import CAMERAS, write_dataset
from fixtures_policy import tiny_vlm_dir  # noqa: F401  (session fixture)
from torch.utils.data import DataLoader
from train_runs import assert_same_weights, make_run_dir, torchrun, train

from episode_format.errors import EpisodeFormatError
from episode_format.reader import EpisodeKeys
from insertion_vla.config import defaults
from insertion_vla.dataset import BAD_FRAMES, EpisodeDataset, bad_frames_of
from insertion_vla.episodes import keys_from_config
from insertion_vla.localizer import NearTarget, PlacementEstimator, load_localizer

KEYS = EpisodeKeys(cameras={c: f"camera{i + 1}" for i, c in enumerate(CAMERAS)}, state_keys=("observations/ee_pose",))
BAD_JPEG = ("episode_0001.h5", "tool_camera", [3, 4, 5, 6])  # frames in the middle of the episode
NAN_ACTION = ("episode_0003.h5", 5)  # action row


def corrupt_jpeg(path, camera: str, frame: int):
    """The frame's bytes stay, with their JPEG header zeroed: OpenCV and torchvision both refuse them."""
    with h5py.File(path, "r+") as f:
        images = f[f"observations/images/{camera}"]
        data = images[frame].copy()
        data[:16] = 0
        images[frame] = data


def nan_action_row(path, row: int):
    with h5py.File(path, "r+") as f:
        f["action"][row, 2] = np.nan


def spoil(data_dir):
    name, camera, frames = BAD_JPEG
    for frame in frames:
        corrupt_jpeg(data_dir / name, camera, frame)
    nan_action_row(data_dir / NAN_ACTION[0], NAN_ACTION[1])


def bad_rows(out_dir) -> list[dict]:
    with open(out_dir / "bad_samples.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- the dataset ------------------------------------------------------------------------------------------------


def test_a_sample_with_a_bad_frame_is_replaced_by_a_seeded_draw(tmp_path):
    paths = write_dataset(tmp_path, n=2, length=10)
    corrupt_jpeg(paths[1], "tool_camera", 4)
    nan_action_row(paths[0], 7)
    ds = EpisodeDataset(paths, KEYS, horizon=4, image_size=(32, 32), seed=3, replace_bad_frames=True)
    bad_jpeg, nan_chunk, fine = 10 + 4, 6, 2  # sample 6's chunk holds actions 6..9, row 7 among them

    sample = ds[bad_jpeg]
    replacement = ds.replacement(bad_jpeg, 1)
    assert replacement != bad_jpeg and replacement == ds.replacement(bad_jpeg, 1)  # a function of its arguments
    assert (sample["episode_index"], sample["frame_index"]) == ds.locate(replacement)
    assert torch.equal(sample["observation.images.camera1"], ds[replacement]["observation.images.camera1"])
    [record] = json.loads(sample[BAD_FRAMES])
    assert record == {"file": str(paths[1]), "camera": "tool_camera", "frame": 4,
                      "problem": record["problem"]} and "is not a decodable JPEG" in record["problem"]
    [record] = json.loads(ds[nan_chunk][BAD_FRAMES])
    assert (record["file"], record["camera"], record["frame"]) == (str(paths[0]), "", 7)
    assert record["problem"] == "action has NaN/Inf at frame 7."
    assert json.loads(ds[fine][BAD_FRAMES]) == []
    draws = [ds.replacement(i, 1) for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds.replacement(i, 1) for i in range(len(ds))] != draws  # another epoch, other draws
    ds.set_epoch(0)

    batch = next(iter(DataLoader(ds, batch_size=len(ds), num_workers=1, collate_fn=ds.collate)))
    records = bad_frames_of(batch)
    assert BAD_FRAMES not in batch  # taken out before prepare_batch
    assert {(r["file"], r["frame"]) for r in records} == {(str(paths[1]), 4), (str(paths[0]), 7)}
    assert len(records) >= 1 + 4  # the JPEG, the NaN row in the chunks of samples 4..7 (and any bad draws)


def test_without_replacement_the_error_is_raised_as_before(tmp_path):
    paths = write_dataset(tmp_path, n=2, length=10)
    corrupt_jpeg(paths[0], "side_camera", 2)
    nan_action_row(paths[1], 3)
    with pytest.raises(EpisodeFormatError, match=r"camera 'side_camera' frame 2 is not a decodable JPEG"):
        EpisodeDataset(paths[:1], KEYS, horizon=4, image_size=(32, 32))[2]
    with pytest.raises(EpisodeFormatError, match="action has NaN/Inf at frame 3"):  # refused up front
        EpisodeDataset(paths[1:], KEYS, horizon=4, image_size=(32, 32))


def test_a_frame_the_placement_estimate_cannot_read_is_a_bad_frame_of_every_sample_from_it_on(tmp_path,
                                                                                               tmp_path_factory):
    """The estimate at a frame depends on the frames before it (refined near the trocar from the tool camera; the
    window widened to the whole episode, as in test_alignment): a tool-camera JPEG that does not decode at frame k
    makes the samples from k on bad, each naming that frame, while those before it keep their states. Without
    replacement the dataset refuses the file up front, naming the frame."""
    vlm = pretrained_vlm(tmp_path_factory)
    near = replace(NearTarget.load(vlm), standoff_mm=(-1e3, 1e3), across_mm=1e3, tilt_deg=180.0)
    estimator = PlacementEstimator(load_localizer(vlm), near)
    keys = keys_from_config(defaults()["dataset"])
    path = tmp_path / "episode_0000.h5"
    shutil.copy(randomized_episode(tmp_path_factory), path)
    clean = EpisodeDataset([path], keys, horizon=4, image_size=(32, 32), estimator=estimator)
    k = len(clean) // 2
    corrupt_jpeg(path, "tool_camera", k)
    with pytest.raises(EpisodeFormatError, match=rf"camera 'tool_camera' frame {k} is not a decodable JPEG"):
        EpisodeDataset([path], keys, horizon=4, image_size=(32, 32), estimator=estimator)

    ds = EpisodeDataset([path], keys, horizon=4, image_size=(32, 32), estimator=estimator, replace_bad_frames=True)
    for t in (0, k - 1):
        assert json.loads(ds[t][BAD_FRAMES]) == []
        assert torch.equal(ds[t]["observation.state"], clean[t]["observation.state"])
    for t in (k, k + 1, len(ds) - 1):
        sample = ds[t]
        records = json.loads(sample[BAD_FRAMES])
        assert records and {(r["file"], r["camera"], r["frame"]) for r in records} == {(str(path), "tool_camera", k)}
        assert sample["frame_index"] < k and torch.isfinite(sample["observation.state"]).all()  # a replacement


# ---- training ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spoiled_run(tmp_path_factory, tiny_vlm_dir):  # noqa: F811
    """8 steps on 5 episodes, one with 4 undecodable JPEG frames, one with a NaN action row (stats from before)."""
    tmp = tmp_path_factory.mktemp("spoiled")
    config = make_run_dir(tmp, tiny_vlm_dir, n_episodes=5, length=10, validation={"enable": False})
    spoil(tmp / "data")
    return config, tmp / "out", train(config)


def test_bad_frames_are_replaced_logged_once_and_the_run_ends(spoiled_run):
    config, out, res = spoiled_run
    assert (out / "checkpoints" / "checkpoint_step_8.pt").is_file()
    rows = bad_rows(out)
    met = {(r["file"].rsplit("/", 1)[1], r["camera"], int(r["frame"])) for r in rows}
    assert len(met) == len(rows) >= 2  # once each
    assert met <= {(BAD_JPEG[0], BAD_JPEG[1], f) for f in BAD_JPEG[2]} | {(NAN_ACTION[0], "", NAN_ACTION[1])}
    assert (NAN_ACTION[0], "", NAN_ACTION[1]) in met  # 6 of the 50 samples hold the row in their chunk
    assert any(name == BAD_JPEG[0] for name, _, _ in met)
    assert res.stdout.count("BAD FRAME at step") == len(rows)
    assert "not a decodable JPEG" in res.stdout and "sample replaced by another" in res.stdout


def test_past_max_bad_samples_the_run_stops_naming_the_files(spoiled_run, tmp_path):
    config, out, _ = spoiled_run
    limit = len(bad_rows(out)) - 1
    res = train(config, "--output_dir", tmp_path / "limited", f"--training.max_bad_samples={limit}", check=False)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"more than training.max_bad_samples={limit}" in res.stderr
    assert BAD_JPEG[0] in res.stderr and "bad_samples.csv" in res.stderr
    assert not (tmp_path / "limited" / "checkpoints" / "checkpoint_step_8.pt").exists()


def test_bad_frames_met_in_validation_are_logged_too(tiny_vlm_dir, tmp_path):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=4, length=10,
                          validation={"num_episodes": 1, "val_freq": 4, "max_samples": None})
    for path in sorted((tmp_path / "data").glob("*.h5")):  # every episode: the held-out one too
        corrupt_jpeg(path, "side_camera", 5)
    res = train(config)
    held_out = (tmp_path / "out" / "validation_episodes.txt").read_text().splitlines()[1].split("\t")[1]
    rows = [r for r in bad_rows(tmp_path / "out") if r["file"] == held_out]  # never a training sample's
    assert [(r["camera"], r["frame"], r["step"]) for r in rows] == [("side_camera", "5", "4")], rows  # once
    assert f"{held_out}: camera 'side_camera' frame 5 is not a decodable JPEG" in res.stdout
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        counts = {r["step"]: float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "val/bad_frames"}
    assert counts["4"] >= 1 and counts["8"] >= 1  # met at every validation, logged at the first


def test_resume_after_a_replaced_sample_gives_the_same_weights_and_log(spoiled_run, tmp_path):
    config, out, _ = spoiled_run
    assert min(int(r["step"]) for r in bad_rows(out)) <= 4  # a sample was replaced before the checkpoint
    cfg = yaml.safe_load(config.read_text())
    cfg["output_dir"] = str(tmp_path / "resumed")
    resumed_config = tmp_path / "config.yaml"
    resumed_config.write_text(yaml.safe_dump(cfg))
    train(resumed_config, "--training.steps=4")  # stops at step 4, as a preempted run would
    train(resumed_config, "--resume", "auto")
    assert_same_weights(tmp_path / "resumed" / "checkpoints" / "checkpoint_step_8.pt",
                        out / "checkpoints" / "checkpoint_step_8.pt")
    assert bad_rows(tmp_path / "resumed") == bad_rows(out)


def test_decoding_on_the_device_replaces_the_same_samples(spoiled_run, tmp_path):
    """dataset.decode=cuda runs its device path on the CPU here: torchvision finds the bad JPEGs after loading."""
    config, out, _ = spoiled_run
    train(config, "--output_dir", tmp_path / "device", "--dataset.decode=cuda")
    where = [(r["step"], r["file"], r["camera"], r["frame"]) for r in bad_rows(tmp_path / "device")]
    assert where == [(r["step"], r["file"], r["camera"], r["frame"]) for r in bad_rows(out)]
    assert any("not a decodable JPEG on cpu" in r["problem"] for r in bad_rows(tmp_path / "device"))


def test_two_processes_log_the_bad_frames_of_both(spoiled_run, tmp_path):
    """torchrun, 2 CPU processes: rank 0's bad_samples.csv holds the frames every rank met, step by step."""
    from test_ddp import free_port
    from torch.utils.data import DistributedSampler

    from episode_format.reader import discover_episodes
    from insertion_vla.config import load_config
    from insertion_vla.episodes import keys_from_config

    config, _, _ = spoiled_run
    cfg = load_config(config, ["--training.batch_size=2"])
    out = tmp_path / "ddp"
    torchrun(config, f"--output_dir={out}", "--training.batch_size=2", nproc=2, MASTER_PORT=free_port())

    # what each rank's batches held: the loop's sampler order, the dataset's replacements
    dataset = EpisodeDataset(discover_episodes(cfg["dataset"]["root_dir"]), keys_from_config(cfg["dataset"]),
                             horizon=cfg["dataset"]["horizon"], image_size=cfg["policy"]["resize_imgs_with_padding"],
                             seed=cfg["seed"], replace_bad_frames=True)
    orders = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=cfg["seed"], drop_last=True))
              for r in range(2)]
    expected, met = [], set()
    for step in range(1, 9):  # 8 steps of 2 samples per rank: within the first epoch (25 samples per rank)
        for order in orders:
            for index in order[2 * (step - 1):2 * step]:
                for r in json.loads(dataset[index][BAD_FRAMES]):
                    if (r["file"], r["camera"], r["frame"]) not in met:
                        met.add((r["file"], r["camera"], r["frame"]))
                        expected.append((str(step), r["file"], r["camera"], str(r["frame"])))
    assert expected and [(r["step"], r["file"], r["camera"], r["frame"]) for r in bad_rows(out)] == expected
