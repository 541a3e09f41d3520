"""The fast training path is the same model: SDPA attention, torch.compile of the loss, fused / foreach AdamW.

Real lerobot SmolVLAPolicy on the tiny offline VLM (4 heads over 2 key/value heads: grouped-query attention), real
torch.compile; on CPU, in float32.
"""

import copy
import json

import pytest
import torch
from fixtures_policy import CAMERA_KEYS, make_policy_cfg, make_raw_batch, make_stats, tiny_vlm_dir  # noqa: F401
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.smolvlm_with_expert import SmolVLMWithExpertModel

from insertion_vla.config import ConfigError, load_config
from insertion_vla.errors import UserError
from insertion_vla.export import export_pretrained
from insertion_vla.optim import make_optimizer
from insertion_vla.policy import (
    CompiledTrainingLoss,
    TrainingLoss,
    build_policy,
    make_training_loss,
    predict_action_chunk,
    prepare_batch,
    sdpa_attention_forward,
    set_attention,
    validation_noise_and_time,
)

STATE_DIM, ACTION_DIM = 6, 6
LEROBOT_ATTENTION_INTERFACE = SmolVLMWithExpertModel.__dict__["get_attention_interface"]  # before any policy exists
# inductor needs minutes for the tiny model on a shared 2-core CPU; aot_eager still captures the graphs with
# dynamo and traces forward and backward with AOTAutograd, running them with torch's own kernels
TEST_COMPILE_BACKEND = "aot_eager"


def build(vlm_dir, attention, chunk=50, **cfg_overrides):
    torch.manual_seed(0)
    policy, pre, post = build_policy(
        make_policy_cfg(vlm_dir, chunk_size=chunk, n_action_steps=chunk, attention=attention, **cfg_overrides),
        state_dim=STATE_DIM, action_dim=ACTION_DIM, camera_keys=CAMERA_KEYS,
        stats=make_stats(STATE_DIM, ACTION_DIM, action_mean=3.0, action_std=0.5), device="cpu", warn_random_vlm=False,
    )
    policy.train()
    return policy, pre, post


def batch_and_draws(policy, pre, chunk=50, seed=0):
    raw = make_raw_batch(2, STATE_DIM, ACTION_DIM, horizon=chunk, seed=seed)
    raw["action_is_pad"][1, chunk - 3:] = True
    raw["task"] = [raw["task"][0], "Insert"]  # per-episode instructions: the shorter one is padded...
    batch = prepare_batch(raw, pre, "cpu")
    assert not batch["observation.language.attention_mask"][1].all()  # ...and a padding token attends to nothing
    return batch, validation_noise_and_time(policy, raw["episode_index"], raw["frame_index"], seed=5)


def losses_and_gradients(objective, policy, batch, noise, time):
    policy.zero_grad(set_to_none=True)
    losses = objective(batch, 0.3, noise, time)
    losses["loss"].backward()
    gradients = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
    return {key: value.detach() for key, value in losses.items()}, gradients


def assert_same_losses_and_gradients(expected, actual, rtol):
    expected_losses, expected_grads = expected
    actual_losses, actual_grads = actual
    for key, value in expected_losses.items():
        torch.testing.assert_close(actual_losses[key], value, rtol=rtol, atol=0)
    assert actual_grads.keys() == expected_grads.keys() and len(expected_grads) > 10
    for name, grad in expected_grads.items():
        assert grad.norm() > 0, name
        relative = ((actual_grads[name] - grad).norm() / grad.norm()).item()
        assert relative < rtol, f"{name}: relative difference {relative:.2e}"


def uses_sdpa(policy) -> bool:
    return policy.model.vlm_with_expert.get_attention_interface() is sdpa_attention_forward


def test_sdpa_attention_function_equals_lerobots_eager_one(tiny_vlm_dir):
    policy, _, _ = build(tiny_vlm_dir, "eager")
    eager = policy.model.vlm_with_expert.eager_attention_forward
    g = torch.Generator().manual_seed(0)
    batch, queries, keys, heads, kv_heads, head_dim = 2, 5, 9, 4, 2, 16
    query = torch.randn(batch, queries, heads, head_dim, generator=g)
    key, value = (torch.randn(batch, keys, kv_heads, head_dim, generator=g) for _ in range(2))
    mask = torch.rand(batch, queries, keys, generator=g) > 0.4
    mask[:, :, 0] = True  # every query attends to something (padding rows: see the model-level tests)
    expected = eager(mask, batch, head_dim, query, key, value)
    actual = sdpa_attention_forward(mask, batch, head_dim, query, key, value)
    assert actual.shape == expected.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    # the mask masks: changing a masked-out value changes nothing, an attended one does
    changed = value.clone()
    changed[0, 1] += 10.0
    for function in (eager, sdpa_attention_forward):
        delta = function(mask, batch, head_dim, query, key, changed) - function(mask, batch, head_dim, query, key, value)
        attends = mask[0, :, 1]
        assert (delta[0, ~attends].abs().max() == 0) and (delta[0, attends].abs().min() > 0)


@pytest.mark.parametrize("vlm_flags", [{}, {"train_expert_only": False}])
def test_sdpa_gives_the_eager_loss_and_gradients(tiny_vlm_dir, vlm_flags):
    policy, pre, _ = build(tiny_vlm_dir, "eager", **vlm_flags)
    batch, (noise, time) = batch_and_draws(policy, pre)
    objective = TrainingLoss(policy)
    eager = losses_and_gradients(objective, policy, batch, noise, time)
    set_attention(policy, "sdpa")
    assert uses_sdpa(policy)
    sdpa = losses_and_gradients(objective, policy, batch, noise, time)
    assert_same_losses_and_gradients(eager, sdpa, rtol=1e-5)
    assert any(".vlm.model.text_model.layers.0." in name for name in sdpa[1]) == bool(vlm_flags)


def test_sdpa_predicts_the_eager_actions(tiny_vlm_dir):
    """Inference runs the other attention calls: prefix into the KV cache, then each denoising step on it."""
    policy, pre, post = build(tiny_vlm_dir, "sdpa")
    batch, (noise, _) = batch_and_draws(policy, pre)
    sdpa = predict_action_chunk(policy, batch, post, noise=noise)
    set_attention(policy, "eager")
    assert not uses_sdpa(policy)
    torch.testing.assert_close(sdpa, predict_action_chunk(policy, batch, post, noise=noise), rtol=1e-5, atol=1e-5)


def test_sdpa_is_set_on_the_instance_only(tiny_vlm_dir):
    sdpa_policy, _, _ = build(tiny_vlm_dir, "sdpa")
    assert uses_sdpa(sdpa_policy)
    assert SmolVLMWithExpertModel.__dict__["get_attention_interface"] is LEROBOT_ATTENTION_INTERFACE
    # built afterwards: by us without the key (a config saved before it existed), and by lerobot alone
    ours, _, _ = build_policy(make_policy_cfg(tiny_vlm_dir), state_dim=STATE_DIM, action_dim=ACTION_DIM,
                              camera_keys=CAMERA_KEYS, stats=None, warn_random_vlm=False)
    lerobots = SmolVLAPolicy(sdpa_policy.config)
    for fresh in (ours, lerobots):
        vlm_with_expert = fresh.model.vlm_with_expert
        assert "get_attention_interface" not in vars(vlm_with_expert)
        assert vlm_with_expert.get_attention_interface().__func__ is SmolVLMWithExpertModel.eager_attention_forward
    assert uses_sdpa(sdpa_policy)


def test_unknown_attention_is_a_clear_error(tiny_vlm_dir):
    with pytest.raises(UserError, match=r"policy.attention='flash': choose one of \['eager', 'sdpa'\]"):
        build(tiny_vlm_dir, "flash")
    with pytest.raises(ConfigError, match="policy.attention"):
        load_config(None, ["--policy.attention=flash"])
    cfg = load_config(None)
    assert cfg["policy"]["attention"] == "sdpa" and cfg["training"]["compile"] is False
    assert cfg["optimizer"]["implementation"] == "auto"


def test_compiled_loss_equals_the_eager_one(tiny_vlm_dir, capsys):
    chunk = 10
    policy, pre, _ = build(tiny_vlm_dir, "sdpa", chunk=chunk)
    batch, (noise, time) = batch_and_draws(policy, pre, chunk=chunk)
    eager_objective = make_training_loss(policy, compile=False)
    assert type(eager_objective) is TrainingLoss
    compiled_objective = CompiledTrainingLoss(policy, backend=TEST_COMPILE_BACKEND)
    eager = losses_and_gradients(eager_objective, policy, batch, noise, time)
    compiled = losses_and_gradients(compiled_objective, policy, batch, noise, time)
    assert_same_losses_and_gradients(eager, compiled, rtol=1e-6)
    assert f"torch.compile ({TEST_COMPILE_BACKEND}): the first loss forward took" in capsys.readouterr().out

    # The step's own draws (noise and time from the seed) are the same numbers as eager draws, and it stays
    # compiled: a second batch runs the compiled graphs again (no recompiling) and reports nothing more.
    other, _ = batch_and_draws(policy, pre, chunk=chunk, seed=1)
    torch.manual_seed(7)
    expected = eager_objective(other, 0.3)
    torch.manual_seed(7)
    with torch._dynamo.config.patch(error_on_recompile=True):
        actual = compiled_objective(other, 0.3)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-6, atol=0)
    assert capsys.readouterr().out == ""


def test_export_of_an_sdpa_trained_policy_loads_and_predicts_in_plain_lerobot(tiny_vlm_dir, tmp_path):
    policy, pre, post = build(tiny_vlm_dir, "sdpa")
    objective = make_training_loss(policy, compile=False)
    optimizer = make_optimizer(policy, load_config(None)["optimizer"] | {"lr": 1e-2})
    for seed in range(2):  # trained: the exported weights are not the initial ones
        batch, _ = batch_and_draws(policy, pre, seed=seed)
        optimizer.zero_grad()
        objective(batch, 0.1)["loss"].backward()
        optimizer.step()
    out_dir = export_pretrained(policy, pre, post, tmp_path / "final_hf")
    assert "attention" not in json.loads((out_dir / "config.json").read_text())

    loaded = SmolVLAPolicy.from_pretrained(out_dir)
    loaded_pre, loaded_post = make_pre_post_processors(loaded.config, pretrained_path=str(out_dir))
    assert not uses_sdpa(loaded) and "get_attention_interface" not in vars(loaded.model.vlm_with_expert)
    raw = make_raw_batch(1, STATE_DIM, ACTION_DIM, horizon=50, seed=3)
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(3))
    observation = {key: raw[key].float() / 255 for key in CAMERA_KEYS}
    observation |= {"observation.state": raw["observation.state"], "task": raw["task"]}
    in_memory = predict_action_chunk(policy, prepare_batch(raw, pre, "cpu"), post, noise=noise)
    plain = loaded_post(loaded.predict_action_chunk(loaded_pre(observation), noise=noise))
    assert plain.shape == (1, 50, ACTION_DIM)
    torch.testing.assert_close(plain, in_memory, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# AdamW implementations


def adamw_run(implementation, steps=4, start=None, state=None, seed=0):
    """A few AdamW steps with varying learning rates on parameters of several shapes; -> (params, optimizer)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    if start is not None:
        model.load_state_dict(start)
    cfg = load_config(None, [f"--optimizer.implementation={implementation}"])["optimizer"]
    optimizer = make_optimizer(model, cfg)
    if state is not None:
        optimizer.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (step + 1)
        optimizer.step()
    return model, optimizer


def test_foreach_adamw_makes_todays_cpu_updates():
    today, _ = adamw_run("for_loop")  # what torch.optim.AdamW does by default on the CPU
    auto, optimizer = adamw_run("auto")
    assert optimizer.param_groups[0]["foreach"] is True and optimizer.param_groups[0]["fused"] is False
    for expected, actual in zip(today.parameters(), auto.parameters()):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("saved_with, resumed_with", [("for_loop", "fused"), ("fused", "foreach")])
def test_a_loaded_optimizer_state_keeps_the_configured_implementation(saved_with, resumed_with):
    """A checkpoint's AdamW state carries its implementation's flags; resuming uses the configured one."""
    model, optimizer = adamw_run(saved_with, steps=3)
    start, state = model.state_dict(), optimizer.state_dict()
    # (a loaded state's tensors are the optimizer's own from then on: each run loads a copy, as from a file)
    reference, _ = adamw_run(saved_with, steps=2, start=start, state=copy.deepcopy(state), seed=1)
    resumed, resumed_optimizer = adamw_run(resumed_with, steps=2, start=start, state=copy.deepcopy(state), seed=1)
    group = resumed_optimizer.param_groups[0]
    assert (group["fused"], group["foreach"]) == (resumed_with == "fused", resumed_with == "foreach")
    assert all(s["step"].item() == 5 for s in resumed_optimizer.state.values())
    for expected, actual in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_implementation_is_a_clear_error():
    cfg = load_config(None)["optimizer"] | {"implementation": "apex"}
    with pytest.raises(UserError, match=r"optimizer.implementation='apex': choose one of \['auto', 'fused'"):
        make_optimizer(torch.nn.Linear(2, 2), cfg)
    with pytest.raises(ConfigError, match="optimizer.implementation"):
        load_config(None, ["--optimizer.implementation=apex"])
