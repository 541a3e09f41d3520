"""insertion_vla.vision_pretrain end to end: placements rendered by MuJoCo, SmolVLA's image path trained on them and
written into a tiny VLM's folder, and a real SmolVLAPolicy that loads it with policy.load_vlm_weights."""

import json
import shutil

import collected_runs
import numpy as np
import pytest
import torch
from collected_runs import PLACED
from fixtures_policy import CAMERA_KEYS, make_policy_cfg, make_stats
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from safetensors import safe_open

from evaluation.policy_io import training_config_of_export
from insertion_vla.config import defaults, load_config
from insertion_vla.errors import UserError
from insertion_vla.export import TRAINING_CONFIG_FILE, export_pretrained, repoint_export
from insertion_vla.localizer import (
    LOCALIZER_FILE,
    NEAR_LOCALIZER_FILE,
    NearTarget,
    estimator_from_config,
    load_localizer,
    placement_xy_of_entry,
)
from insertion_vla.policy import build_policy
from insertion_vla.tiny_vlm import build_tiny_vlm
from insertion_vla.vision_pretrain import (
    NEAR_RENDER_BASE_SEED,
    RENDER_BASE_SEED,
    STANDOFF_MM,
    WEIGHTS_FILE,
    RenderSettings,
    close_render_env,
    main,
    render_near_pose,
    render_placement,
)
from sim.randomization import DomainRandomization, PhantomPlacement


@pytest.fixture(scope="module")
def pretrained_vlm(tmp_path_factory):
    return collected_runs.pretrained_vlm(tmp_path_factory)


def image_path_weights(vlm_dir) -> dict:
    with safe_open(str(vlm_dir / WEIGHTS_FILE), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys() if ".vision_model." in key or ".connector." in key}


def build(vlm_dir, load: bool):
    torch.manual_seed(1)
    cfg = make_policy_cfg(vlm_dir, load_vlm_weights=load, freeze_vision_encoder=False, train_expert_only=False)
    return build_policy(cfg, state_dim=13, action_dim=6, camera_keys=CAMERA_KEYS, stats=make_stats(13, 6))


def vlm_weights(vlm_dir, load: bool) -> dict:
    policy, _, _ = build(vlm_dir, load)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # lerobot loads a VLM in bfloat16
    return policy.model.vlm_with_expert.vlm.state_dict()


def test_the_policy_starts_from_the_pretrained_image_path(pretrained_vlm):
    saved = image_path_weights(pretrained_vlm)
    assert len(saved) > 10  # the encoder's layers and the connector, not a stray tensor or two
    loaded = vlm_weights(pretrained_vlm, load=True)
    assert set(saved) <= set(loaded)
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)
    # Negative control: without load_vlm_weights the same folder gives a random image path.
    random = vlm_weights(pretrained_vlm, load=False)
    assert not any(torch.equal(random[key], tensor) for key, tensor in saved.items() if tensor.ndim == 2)


def test_an_export_of_such_a_policy_loads_in_float32_with_its_weights(pretrained_vlm, tmp_path):
    """The VLM's config read from a bfloat16 load would make lerobot build the exported VLM in bfloat16, beside a
    float32 expert: the evaluator failed so (expected m1 and m2 to have the same dtype)."""
    policy, preprocessor, postprocessor = build(pretrained_vlm, load=True)
    export_dir = export_pretrained(policy, preprocessor, postprocessor, tmp_path / "export", device="cpu")
    loaded = SmolVLAPolicy.from_pretrained(export_dir)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for key, tensor in image_path_weights(pretrained_vlm).items():
        torch.testing.assert_close(loaded.model.vlm_with_expert.vlm.state_dict()[key], tensor, rtol=0, atol=0)


def test_an_export_carries_its_localizers_and_its_training_config_where_it_moves(pretrained_vlm, tmp_path):
    """final_hf/ keeps the run's config and the localizers of its placement estimate: moved elsewhere, with the
    pretraining's folder gone, the evaluator's config names the export's own copies, which are the same."""
    vlm = shutil.copytree(pretrained_vlm, tmp_path / "pretrained")
    policy, preprocessor, postprocessor = build(vlm, load=True)
    cfg = defaults()
    cfg["dataset"].update(placement_estimate=str(vlm), near_target_estimate=True)
    export_dir = export_pretrained(policy, preprocessor, postprocessor, tmp_path / "run" / "final_hf", device="cpu",
                                   train_cfg=cfg)
    shutil.rmtree(vlm)  # the localizers now exist only in the export
    moved = shutil.move(export_dir, tmp_path / "robot")
    train_cfg, source = training_config_of_export(moved)
    assert source == str(moved / TRAINING_CONFIG_FILE)
    assert train_cfg["dataset"]["placement_estimate"] == str(moved / "vlm")
    estimator = estimator_from_config(train_cfg["dataset"])
    assert estimator.near is not None
    for kept, original in ((estimator.first, load_localizer(pretrained_vlm)),
                           (estimator.near.localizer, load_localizer(pretrained_vlm, NEAR_LOCALIZER_FILE))):
        assert kept.metadata == original.metadata
        for key, tensor in original.state_dict().items():
            torch.testing.assert_close(kept.state_dict()[key], tensor, rtol=0, atol=0, msg=key)
    repoint_export(moved)  # the file itself names the new place too
    assert load_config(moved / TRAINING_CONFIG_FILE)["dataset"]["placement_estimate"] == str(moved / "vlm")


def test_pretraining_records_its_settings_and_errors(pretrained_vlm):
    record = json.loads((pretrained_vlm / "pretraining.json").read_text())
    assert record["settings"]["placements"] == 3 and record["settings"]["phantom_x_range"] == 0.01
    assert [e["step"] for e in record["held_out_errors"]] == [2]
    assert all(e["dx_mm"] >= 0 for e in record["held_out_errors"])


def test_a_folder_without_a_vlm_is_refused_with_the_command_that_makes_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "python -m insertion_vla.tiny_vlm" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--phantom_x_range", "-0.01"], "x_range >= 0"),
    (["--image_side", "60"], "--image_side 48"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_bad_flags_are_refused_before_any_rendering(pretrained_vlm, flags, message, capsys):
    before = (pretrained_vlm / WEIGHTS_FILE).read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([str(pretrained_vlm), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert (pretrained_vlm / WEIGHTS_FILE).read_bytes() == before  # nothing written


def test_a_fixed_range_is_a_constant_target_not_nan(tmp_path):
    vlm_dir = build_tiny_vlm(tmp_path / "vlm", "tiny-vision")
    main([str(vlm_dir), "--placements", "2", "--held_out", "1", "--steps", "1", "--workers", "1", "--width", "64",
          "--height", "48", *PLACED, "--phantom_yaw_range_deg", "0"])
    errors = json.loads((vlm_dir / "pretraining.json").read_text())["held_out_errors"]
    assert all(np.isfinite([e["dx_mm"], e["dy_mm"], e["yaw_deg"]]).all() for e in errors)
    with safe_open(str(vlm_dir / WEIGHTS_FILE), framework="pt") as f:
        assert all(torch.isfinite(f.get_tensor(key)).all() for key in f.keys())


def test_the_whole_localizer_is_kept_beside_the_image_path_it_gives_the_policy(pretrained_vlm):
    """dataset.placement_estimate loads it: the same trained encoder and connector as model.safetensors, its head,
    and the normalization of its targets (mm, mm, deg), so that its estimate is in the units it was trained in."""
    localizer = load_localizer(pretrained_vlm)
    saved = image_path_weights(pretrained_vlm)
    for part, prefix in ((localizer.vision, "model.vision_model."), (localizer.connector, "model.connector.")):
        for key, tensor in part.state_dict().items():
            torch.testing.assert_close(tensor, saved[prefix + key], rtol=0, atol=0, msg=key)
    assert localizer.cameras == ("side_camera", "tool_camera", "top_camera") and localizer.side == 64
    # The targets' spread of the 3 rendered placements, not the initial 1: the estimate comes back in mm and deg.
    settings = RenderSettings(phantom=PhantomPlacement(x_range=0.01, y_min=-0.01, y_max=0.01), dr=DomainRandomization(),
                              width=64, height=48)
    rendered = [render_placement((RENDER_BASE_SEED, index, settings)) for index in range(3)]
    close_render_env()
    offsets = torch.tensor([offset for _, offset in rendered], dtype=torch.float32)
    torch.testing.assert_close(localizer.target_mean, offsets.mean(0))
    torch.testing.assert_close(localizer.target_std, offsets.std(0))
    images = torch.from_numpy(np.stack([image for image, _ in rendered]))
    estimates = localizer.predict(images)
    assert estimates.shape == (3, 3) and torch.isfinite(estimates).all()


def test_a_folder_without_a_localizer_is_refused_with_the_command_that_writes_one(tmp_path):
    vlm_dir = build_tiny_vlm(tmp_path / "vlm", "tiny-vision")
    with pytest.raises(UserError, match=f"no {LOCALIZER_FILE} there.*python -m insertion_vla.vision_pretrain {vlm_dir}"):
        load_localizer(vlm_dir)


def test_a_damaged_or_mismatched_localizer_is_refused_naming_the_file_and_the_fix(pretrained_vlm, tmp_path):
    """A truncated localizer.safetensors (an interrupted copy) and one beside another VLM's config (its encoder a
    different size) each get a UserError naming the file and the command that writes it, not a raw traceback."""
    damaged = tmp_path / "damaged"
    shutil.copytree(pretrained_vlm, damaged)
    data = (damaged / LOCALIZER_FILE).read_bytes()
    (damaged / LOCALIZER_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"{damaged / LOCALIZER_FILE} is not a localizer.*vision_pretrain {damaged}"):
        load_localizer(damaged)
    mismatched = build_tiny_vlm(tmp_path / "other", "tiny")
    shutil.copy(pretrained_vlm / LOCALIZER_FILE, mismatched / LOCALIZER_FILE)
    with pytest.raises(UserError, match=f"does not fit the VLM of {mismatched / 'config.json'}"):
        load_localizer(mismatched)
    assert load_localizer(pretrained_vlm).side == 64  # the intact one still loads


def test_the_near_target_localizer_is_kept_with_its_window_and_fusion_weights(pretrained_vlm):
    near = NearTarget.load(pretrained_vlm)
    assert near.localizer.cameras == ("tool_camera",) and near.standoff_mm == STANDOFF_MM
    assert near.weights.shape == (2,) and ((near.weights >= 0) & (near.weights <= 1)).all()
    record = json.loads((pretrained_vlm / "pretraining.json").read_text())["near_target"]
    assert record["poses"] == 3 and record["fusion_weights"] == pytest.approx(near.weights.tolist())
    for name in ("first_frame_error", "near_target_error", "fused_error"):
        assert np.isfinite(record[name]["in_plane_mm"]) and 0 <= record[name]["under_1mm"] <= 1


def test_a_near_target_localizer_is_refused_beside_another_localizer_than_it_was_fitted_to(pretrained_vlm, tmp_path):
    """Its fusion weights weigh the first localizer's errors: a localizer.safetensors changed since (here saved again
    with other metadata) makes NearTarget.load refuse the pair, with the command that writes both again. A near
    localizer without the digest (written before it was kept) is not checked."""
    vlm_dir = tmp_path / "vlm"
    shutil.copytree(pretrained_vlm, vlm_dir)
    NearTarget.load(vlm_dir)  # the pair as written
    load_localizer(vlm_dir).save(vlm_dir / LOCALIZER_FILE, {"another": True})
    with pytest.raises(UserError, match=f"fitted to another .*vision_pretrain {vlm_dir} --near_poses"):
        NearTarget.load(vlm_dir)
    near = load_localizer(vlm_dir, NEAR_LOCALIZER_FILE)  # as written before the digest was kept: not checked
    near.save(vlm_dir / NEAR_LOCALIZER_FILE, {k: v for k, v in near.metadata.items() if k != "fused_with"})
    NearTarget.load(vlm_dir)


def test_a_near_target_pose_is_in_the_window_and_the_entry_seen_from_its_tip_gives_the_placement():
    """The geometry the refinement relies on, checked on a rendered pose against the scene's own placement: the tip
    is in the window for the true placement, not 50 mm further back or for a placement 10 mm off, and the entry
    where the render puts it relative to the tip gives back the placement's dx, dy (the yaw matters: negated, it
    does not)."""
    settings = RenderSettings(phantom=PhantomPlacement(x_range=0.01, y_min=-0.01, y_max=0.01, yaw_range_deg=5),
                              dr=DomainRandomization(), width=64, height=48)
    pose = render_near_pose((NEAR_RENDER_BASE_SEED, 0, settings))
    close_render_env()
    near = NearTarget(localizer=None, standoff_mm=STANDOFF_MM, across_mm=4.0, tilt_deg=4.0, weights=np.ones(2))
    placement = np.array(pose.placement)
    assert near.sees(pose.ee_pose, placement)
    backed_off = pose.ee_pose.copy()
    backed_off[:3] -= 0.05 * np.array(pose.offset_mm) / np.linalg.norm(pose.offset_mm)
    assert not near.sees(backed_off, placement)
    assert not near.sees(pose.ee_pose, placement + [10.0, 0.0, 0.0])
    np.testing.assert_allclose(placement_xy_of_entry(pose.offset_mm, pose.ee_pose, placement[2]), placement[:2],
                               rtol=0, atol=1e-3)
    assert np.abs(placement_xy_of_entry(pose.offset_mm, pose.ee_pose, -placement[2]) - placement[:2]).max() > 0.1


def test_pretraining_again_without_near_poses_removes_the_near_target_localizer_it_no_longer_fits(pretrained_vlm,
                                                                                                   tmp_path):
    vlm_dir = tmp_path / "vlm"
    shutil.copytree(pretrained_vlm, vlm_dir)
    main([str(vlm_dir), "--placements", "2", "--held_out", "1", "--steps", "1", "--workers", "1", "--width", "64",
          "--height", "48", *PLACED])
    assert (vlm_dir / LOCALIZER_FILE).is_file() and not (vlm_dir / NEAR_LOCALIZER_FILE).exists()
    assert json.loads((vlm_dir / "pretraining.json").read_text())["near_target"] is None
    cfg = {**defaults()["dataset"], "placement_estimate": str(vlm_dir), "near_target_estimate": True}
    with pytest.raises(UserError, match=f"no {NEAR_LOCALIZER_FILE} there.*vision_pretrain {vlm_dir} --near_poses"):
        estimator_from_config(cfg)
    assert estimator_from_config({**cfg, "near_target_estimate": False}).near is None
