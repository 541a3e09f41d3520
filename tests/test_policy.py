"""insertion_vla.policy with lerobot's real SmolVLAPolicy on the tiny offline VLM."""

import logging

import pytest
import torch
from fixtures_policy import CAMERA_KEYS, make_policy_cfg, make_raw_batch, make_stats, tiny_vlm_dir  # noqa: F401

from insertion_vla.errors import UserError
from insertion_vla.policy import (
    HubUnavailableError,
    build_policy,
    compute_losses,
    predict_action_chunk,
    prepare_batch,
    validation_noise_and_time,
)

STATE_DIM, ACTION_DIM = 6, 6


def build(vlm_dir, stats="default", **cfg_overrides):
    torch.manual_seed(0)
    stats = make_stats(STATE_DIM, ACTION_DIM) if stats == "default" else stats
    policy, pre, post = build_policy(
        make_policy_cfg(vlm_dir, **cfg_overrides), state_dim=STATE_DIM, action_dim=ACTION_DIM,
        camera_keys=CAMERA_KEYS, stats=stats, device="cpu",
    )
    policy.train()
    return policy, pre, post


def fixed_draws(policy, raw):
    return validation_noise_and_time(policy, raw["episode_index"], raw["frame_index"], seed=3)


def test_padded_steps_and_padded_dims_do_not_change_the_loss(tiny_vlm_dir):
    policy, pre, _ = build(tiny_vlm_dir)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    raw["action_is_pad"][0, 30:] = True  # sample 0 ends 30 steps into its chunk
    noise, time = fixed_draws(policy, raw)
    reference = compute_losses(policy, prepare_batch(raw, pre, "cpu"), 0.5, noise, time)

    # Padded steps: whatever their target (the dataset repeats the last action), the loss is the same...
    changed = {**raw, "action": raw["action"].clone()}
    changed["action"][0, 30:] += 100.0
    changed_batch = prepare_batch(changed, pre, "cpu")
    after = compute_losses(policy, changed_batch, 0.5, noise, time)
    for key in reference:
        torch.testing.assert_close(after[key], reference[key], rtol=1e-6, atol=0)
    # ...although the per-step errors there did change (so the mask is what keeps them out).
    errors = policy.model.forward(*inner_inputs(policy, prepare_batch(raw, pre, "cpu")), noise, time)
    changed_errors = policy.model.forward(*inner_inputs(policy, changed_batch), noise, time)
    assert not torch.allclose(errors[0, 30:], changed_errors[0, 30:])

    # Padded dims (6..31 of 32): change what the model outputs there; the loss on the 6 joints stays.
    with torch.no_grad():
        policy.model.action_out_proj.weight[ACTION_DIM:] *= 5.0
        policy.model.action_out_proj.bias[ACTION_DIM:] += 3.0
    after = compute_losses(policy, prepare_batch(raw, pre, "cpu"), 0.5, noise, time)
    for key in reference:
        torch.testing.assert_close(after[key], reference[key], rtol=1e-6, atol=0)
    padded_dim_errors = policy.model.forward(*inner_inputs(policy, prepare_batch(raw, pre, "cpu")), noise, time)
    assert not torch.allclose(padded_dim_errors[..., ACTION_DIM:], errors[..., ACTION_DIM:])


def inner_inputs(policy, batch):
    images, img_masks = policy.prepare_images(batch)
    return (images, img_masks, batch["observation.language.tokens"], batch["observation.language.attention_mask"],
            policy.prepare_state(batch), policy.prepare_action(batch))


def test_loss_equals_a_hand_computation(tiny_vlm_dir):
    chunk = 5
    policy, pre, _ = build(tiny_vlm_dir, chunk_size=chunk, n_action_steps=chunk)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=chunk, seed=1)
    raw["action_is_pad"][1, 3:] = True
    batch = prepare_batch(raw, pre, "cpu")
    noise, time = fixed_draws(policy, raw)
    lam = 0.7
    losses = compute_losses(policy, batch, lam, noise, time)

    # The same inner forward, with v_t read independently, then the definition written out element by element.
    outputs = []
    hook = policy.model.action_out_proj.register_forward_hook(lambda m, a, out: outputs.append(out.detach()))
    errors = policy.model.forward(*inner_inputs(policy, batch), noise, time).detach().double()
    hook.remove()
    v_t = outputs[0].double()
    target = batch["action"].double()  # normalized
    pad = raw["action_is_pad"]
    err_sum, err_n, tmp_sum, tmp_n = 0.0, 0, 0.0, 0
    for b in range(2):
        for t in range(chunk):
            for d in range(ACTION_DIM):
                if not pad[b, t]:
                    err_sum += errors[b, t, d].item()
                    err_n += 1
                if t > 0 and not pad[b, t] and not pad[b, t - 1]:
                    predicted_step = (noise[b, t, d] - v_t[b, t, d]) - (noise[b, t - 1, d] - v_t[b, t - 1, d])
                    target_step = target[b, t, d] - target[b, t - 1, d]
                    tmp_sum += (predicted_step - target_step).item() ** 2
                    tmp_n += 1
    assert (err_n, tmp_n) == ((5 + 3) * ACTION_DIM, (4 + 2) * ACTION_DIM)
    assert losses["action_loss"].item() == pytest.approx(err_sum / err_n, rel=1e-5)
    assert losses["temporal_loss"].item() == pytest.approx(tmp_sum / tmp_n, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(err_sum / err_n + lam * tmp_sum / tmp_n, rel=1e-5)


def test_temporal_term_has_a_gradient_on_trainable_parameters(tiny_vlm_dir):
    policy, pre, _ = build(tiny_vlm_dir)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    losses = compute_losses(policy, prepare_batch(raw, pre, "cpu"), 1.0)
    losses["temporal_loss"].backward()
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    with_grad = [n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert "model.action_out_proj.weight" in with_grad
    assert any(".lm_expert." in n for n in with_grad)
    assert all(p.grad is None for p in policy.parameters() if not p.requires_grad)  # frozen VLM stays frozen


@pytest.mark.parametrize(
    "vlm_flags", [{}, {"train_expert_only": False}, {"train_expert_only": False, "num_vlm_layers": 2}]
)
def test_every_trainable_parameter_gets_a_gradient(tiny_vlm_dir, vlm_flags):
    """What DistributedDataParallel needs (else it stops at the second step): no trainable parameter left unused,
    also when the VLM trains (lerobot 0.4.4 misses freezing its unreached last layer there)."""
    policy, pre, _ = build(tiny_vlm_dir, **vlm_flags)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    compute_losses(policy, prepare_batch(raw, pre, "cpu"), 0.1)["loss"].backward()
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == []
    assert any(".vlm.model.text_model.layers.0." in n for n in trainable) == ("train_expert_only" in vlm_flags)


def test_fixed_noise_and_time_give_a_repeatable_loss_and_default_draws_vary(tiny_vlm_dir):
    policy, pre, _ = build(tiny_vlm_dir)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    batch = prepare_batch(raw, pre, "cpu")
    first = compute_losses(policy, batch, 0.1, *fixed_draws(policy, raw))["loss"]
    second = compute_losses(policy, batch, 0.1, *fixed_draws(policy, raw))["loss"]
    assert first.item() == second.item()
    assert compute_losses(policy, batch, 0.1)["loss"].item() != compute_losses(policy, batch, 0.1)["loss"].item()
    _, time = fixed_draws(policy, raw)
    assert ((time > 0.001 - 1e-6) & (time <= 1.0)).all()


def test_prepare_batch_scales_images_and_normalizes(tiny_vlm_dir):
    policy, pre, _ = build(tiny_vlm_dir)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    batch = prepare_batch(raw, pre, "cpu")
    key = CAMERA_KEYS[0]
    assert batch[key].dtype == torch.float32
    torch.testing.assert_close(batch[key], raw[key].float() / 255)
    stats = make_stats(STATE_DIM, ACTION_DIM)["observation.state"]
    expected = (raw["observation.state"] - torch.from_numpy(stats["mean"])) / (torch.from_numpy(stats["std"]) + 1e-8)
    torch.testing.assert_close(batch["observation.state"], expected)
    assert batch["observation.language.tokens"].shape[0] == 2
    assert batch["action_is_pad"].dtype == torch.bool


def test_normalization_disabled_passes_state_and_action_through(tiny_vlm_dir):
    policy, pre, post = build(tiny_vlm_dir, stats=None)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    batch = prepare_batch(raw, pre, "cpu")
    torch.testing.assert_close(batch["observation.state"], raw["observation.state"])
    torch.testing.assert_close(batch["action"], raw["action"])


def test_predict_action_chunk_in_joint_units_keeps_train_mode(tiny_vlm_dir):
    stats = make_stats(STATE_DIM, ACTION_DIM, action_mean=50.0, action_std=0.01)
    policy, pre, post = build(tiny_vlm_dir, stats=stats)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    chunk = predict_action_chunk(policy, prepare_batch(raw, pre, "cpu"), post)
    assert chunk.shape == (2, 50, ACTION_DIM)
    assert policy.training
    # Denormalized: near the action mean (50 + 0.1 * dim), in joint units, not around 0.
    assert (chunk - torch.from_numpy(stats["action"]["mean"])).abs().max() < 1.0


def test_wrong_image_size_is_a_clear_error(tiny_vlm_dir):
    policy, pre, _ = build(tiny_vlm_dir)
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=50)
    raw[CAMERA_KEYS[1]] = raw[CAMERA_KEYS[1]][..., :32, :32]
    with pytest.raises(UserError, match=r"observation.images.camera2 has shape \(3, 32, 32\), expected \(3, 64, 64\)"):
        compute_losses(policy, prepare_batch(raw, pre, "cpu"), 0.1)


def test_stats_of_other_data_are_a_clear_error(tiny_vlm_dir):
    with pytest.raises(UserError, match="stats file was made for other data"):
        build(tiny_vlm_dir, stats=make_stats(STATE_DIM, 3))


def test_unreachable_hub_names_the_offline_options(tiny_vlm_dir):
    with pytest.raises(HubUnavailableError) as info:
        build(tiny_vlm_dir, vlm_model_name="insertion-vla-tests/no-such-vlm")
    message = str(info.value)
    assert "'insertion-vla-tests/no-such-vlm' is not a local directory" in message
    assert "python -m insertion_vla.tiny_vlm DIR" in message
    assert "HF_HUB_OFFLINE is set" in message
    with pytest.raises(HubUnavailableError, match="insertion-vla-tests/no-such-smolvla"):
        build(tiny_vlm_dir, pretrained_model_id="insertion-vla-tests/no-such-smolvla")
    with pytest.raises(UserError, match="is not a directory"):
        build(tiny_vlm_dir, vlm_model_name=str(tiny_vlm_dir) + "-typo")


def test_random_vlm_is_warned_about_and_a_pretrained_smolvla_initialises_all_weights(tiny_vlm_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="insertion_vla.policy"):
        trained, _, _ = build(tiny_vlm_dir)
    assert "The VLM is RANDOM" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="insertion_vla.policy"):
        build_policy(make_policy_cfg(tiny_vlm_dir), state_dim=STATE_DIM, action_dim=ACTION_DIM,
                     camera_keys=CAMERA_KEYS, stats=None, warn_random_vlm=False)  # weights come from a checkpoint
    assert "RANDOM" not in caplog.text
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01)  # so the weights differ from any fresh random init
    trained.save_pretrained(tmp_path / "smolvla")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="insertion_vla.policy"):
        started, _, _ = build(tiny_vlm_dir, pretrained_model_id=str(tmp_path / "smolvla"))
    assert "RANDOM" not in caplog.text
    trained_state = trained.state_dict()
    for name, value in started.state_dict().items():
        assert torch.equal(value, trained_state[name]), name


def test_bad_policy_config_is_a_clear_error(tiny_vlm_dir):
    # (square images and the normalization mode are config rules: tests/test_cli.py checks them at load)
    with pytest.raises(UserError, match="multiple of 32"):
        build(tiny_vlm_dir, resize_imgs_with_padding=[48, 48])
    with pytest.raises(UserError, match="unknown keys \\['lr'\\]"):
        build(tiny_vlm_dir, lr=1e-4)


def test_a_pretrained_file_missing_some_weights_is_refused_naming_them(tiny_vlm_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    trained, _, _ = build(tiny_vlm_dir)
    trained.save_pretrained(tmp_path / "smolvla")
    build(tiny_vlm_dir, pretrained_model_id=str(tmp_path / "smolvla"))  # the file as saved loads
    weights_file = tmp_path / "smolvla" / "model.safetensors"
    weights = load_file(weights_file)
    weights["model.state_projection.weight"] = weights.pop("model.state_proj.weight")  # as a renaming release would
    save_file(weights, weights_file)
    with pytest.raises(UserError, match=r"would stay random: \['model\.state_proj\.weight'\].*lacks: \['model\.state_projection\.weight'\]"):
        build(tiny_vlm_dir, pretrained_model_id=str(tmp_path / "smolvla"))
