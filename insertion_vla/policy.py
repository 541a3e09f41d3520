"""lerobot's SmolVLAPolicy and its pre/post processors, built from our config; our training loss.

The policy, the processors and the on-disk format are lerobot's own, so an exported checkpoint loads with
lerobot alone. The loss is ours (see compute_losses): lerobot 0.4.4's `SmolVLAPolicy.forward` reads the episode-end
pad mask from a misspelt key (`actions_id_pad`), so padded steps are trained on, and it averages over all 32 padded
action dimensions, so its figure is not the error on our real joints.

Data flow of one training step (the loop does this):

    batch = prepare_batch(raw_batch, preprocessor, device)     # uint8 -> [0, 1] on device, normalize, tokenize
    losses = compute_losses(policy, batch, lambda_temporal)      # {"loss", "action_loss", "temporal_loss"}
    losses["loss"].backward()

and for validation / evaluation, in joint units: `predict_action_chunk(policy, batch, postprocessor)`.

Speed without changing the model: `policy.attention: sdpa` computes lerobot's attention with torch's
scaled_dot_product_attention (set_attention), and `training.compile` runs the loss through torch.compile
(make_training_loss, CompiledTrainingLoss).
"""

import logging
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hub_constants
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE
from torch import nn

from insertion_vla.config import SCHEMA
from insertion_vla.errors import UserError
from insertion_vla.stats import floor_constant_dims

logger = logging.getLogger(__name__)
SAFETENSORS_FILE = "model.safetensors"  # the weights file of a saved lerobot policy

ACTION_IS_PAD = "action_is_pad"
# How the policy runs, not what it is: set on the built model, never saved in lerobot's config.
ATTENTION_KEY = "attention"
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
# The config's policy section (its schema) minus the attention choice: what becomes lerobot's SmolVLAConfig.
POLICY_CONFIG_KEYS = tuple(key for key in SCHEMA["policy"] if key != ATTENTION_KEY)
# Statistics lerobot's normalizer reads; our stats files also hold `count`, which it does not need.
NORMALIZER_STATS = ("mean", "std", "min", "max", "q01", "q99")
# The modes the config allows (normalization.mode; IDENTITY also when normalization is off) and what they read.
STATS_NEEDED = {
    NormalizationMode.MEAN_STD: ("mean", "std"),
    NormalizationMode.MIN_MAX: ("min", "max"),
    NormalizationMode.IDENTITY: (),
}


class HubUnavailableError(UserError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Building


def build_policy(
    policy_cfg: dict,
    *,
    state_dim: int,
    action_dim: int,
    camera_keys: list[str],
    stats: dict | None,
    normalization_mode: str = "MEAN_STD",
    device: str | torch.device = "cpu",
    warn_random_vlm: bool = True,
) -> tuple[SmolVLAPolicy, object, object]:
    """lerobot's SmolVLAPolicy and its (preprocessor, postprocessor), normalizing with `stats`.

    policy_cfg: the `policy` section of our config: exactly POLICY_CONFIG_KEYS, and `attention` (see
        set_attention; absent, as in configs saved before it existed: eager, lerobot's own).
    camera_keys: lerobot image keys, e.g. ["observation.images.camera1", ...].
    stats: {"observation.state": {"mean": (D,), "std", "min", "max", "q01", "q99", "count"}, "action": {...}};
        None means normalization is disabled (the explicit opt-out): state and action pass through unchanged.
    warn_random_vlm: False when every weight is loaded from a checkpoint next (no warning about a random VLM).
    The policy is returned in eval mode, as lerobot's from_pretrained returns it: call policy.train() to train
    (SmolVLA's train() keeps a frozen VLM / vision encoder in eval mode).
    """
    attention = policy_cfg.get(ATTENTION_KEY, "eager")
    policy_cfg = {key: value for key, value in policy_cfg.items() if key != ATTENTION_KEY}
    config = make_smolvla_config(
        policy_cfg, state_dim=state_dim, action_dim=action_dim, camera_keys=camera_keys,
        normalization_mode=normalization_mode if stats is not None else "IDENTITY", device=device,
    )
    pretrained = policy_cfg["pretrained_model_id"]
    if warn_random_vlm and pretrained is None and not policy_cfg["load_vlm_weights"]:
        logger.warning(
            "\n" + "!" * 100 + "\n"
            "!! The VLM is RANDOM: policy.pretrained_model_id is null and policy.load_vlm_weights is false, so the\n"
            f"!! vision-language model {policy_cfg['vlm_model_name']!r} starts from random weights"
            f"{' and stays frozen (train_expert_only)' if policy_cfg['train_expert_only'] else ''}.\n"
            "!! Fine for tests and the tiny demo; for real training set policy.pretrained_model_id (e.g.\n"
            "!! lerobot/smolvla_base) or policy.load_vlm_weights: true.\n" + "!" * 100
        )
    lerobot_stats = None
    if stats is not None:
        mode = config.normalization_mapping["ACTION"]
        lerobot_stats = to_lerobot_stats(stats, state_dim=state_dim, action_dim=action_dim, mode=mode)
    hub_names = [name for name in (policy_cfg["vlm_model_name"], pretrained) if name and not Path(name).is_dir()]
    for name in hub_names:
        if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, never a Hub id
            raise UserError(
                f"{name!r} (policy.vlm_model_name / policy.pretrained_model_id) is not a directory. Point it at an "
                "existing folder (pretrained_model_id: a saved SmolVLA such as a run's checkpoints/final_hf; "
                "vlm_model_name: a VLM's config and tokenizer), give a Hub id, or set pretrained_model_id: null."
            )
    try:
        if pretrained is not None:
            # All weights, the VLM's included, come from the trained SmolVLA; config (features, sizes) is ours.
            policy = SmolVLAPolicy.from_pretrained(pretrained, config=config)
            check_every_weight_loaded(policy, pretrained)
        else:
            policy = SmolVLAPolicy(config).to(config.device).eval()
            if config.load_vlm_weights and torch.device(config.device).type == "cpu":
                reload_vlm_in_float32(policy, config.vlm_model_name)
        preprocessor, postprocessor = make_smolvla_pre_post_processors(config, dataset_stats=lerobot_stats)
    except (OSError, ValueError) as err:  # transformers/huggingface_hub report a missing repo or no network so
        if not hub_names:
            raise
        raise hub_unavailable_error(hub_names, err) from err
    check_image_size(policy)
    freeze_unreached_vlm_layers(policy)
    set_attention(policy, attention)
    return policy, preprocessor, postprocessor


def reload_vlm_in_float32(policy: SmolVLAPolicy, vlm_name: str) -> None:
    """lerobot loads the VLM's own weights in bfloat16 (SmolVLMWithExpertModel). A CPU has no fast bfloat16 matmul,
    the rounding costs a pretrained encoder its last digits (insertion_vla.vision_pretrain), and AdamW's small late
    updates fall below bfloat16's 8 significant bits: on CPU the policy runs in float32, the VLM's weights loaded
    again as the file has them."""
    from transformers import AutoModelForImageTextToText

    policy.float()
    vlm = policy.model.vlm_with_expert.vlm
    source = AutoModelForImageTextToText.from_pretrained(vlm_name, dtype=torch.float32)
    # The file may have more text layers than policy.num_vlm_layers keeps: those are unexpected, never missing.
    missing, _ = vlm.load_state_dict(source.state_dict(), strict=False)
    if missing:
        raise UserError(f"policy.vlm_model_name={vlm_name!r}: {len(missing)} weights of the VLM are not in its files "
                        f"({missing[:8]}); give a VLM of this architecture, or set policy.load_vlm_weights: false")
    # The config still says bfloat16; an export saves it, and lerobot would build the exported VLM in bfloat16.
    for config in (vlm.config, vlm.config.text_config, vlm.config.vision_config):
        config.dtype = torch.float32


def check_every_weight_loaded(policy: SmolVLAPolicy, pretrained: str) -> None:
    """Refuse a pretrained SmolVLA that lacks some of the policy's weights.

    lerobot's from_pretrained loads with strict=False and only logs missing keys, so a renamed parameter (as
    transformers versions rename some) would silently stay random while training goes on. Tensors that share
    storage (tied weights) are saved once: one name of a shared tensor in the file is enough.
    """
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    directory = Path(pretrained)
    model_file = directory / SAFETENSORS_FILE if directory.is_dir() else hf_hub_download(pretrained, SAFETENSORS_FILE)
    with safe_open(str(model_file), framework="pt") as f:
        in_file = set(f.keys())
    by_storage: dict[int, list[str]] = {}
    for name, tensor in policy.state_dict().items():
        by_storage.setdefault(tensor.untyped_storage().data_ptr(), []).append(name)
    missing = sorted(name for names in by_storage.values() if not in_file.intersection(names) for name in names)
    if missing:
        unexpected = sorted(in_file - set(policy.state_dict()))
        raise UserError(
            f"policy.pretrained_model_id={pretrained!r}: {len(missing)} weights of the policy are not in {model_file} "
            f"and would stay random: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
            + (f"; the file has names the policy lacks: {unexpected[:8]}" if unexpected else "")
            + ". The file comes from another lerobot/transformers version or architecture (policy.num_vlm_layers, "
            "vlm_model_name): use a SmolVLA saved by this lerobot version, or one whose names match."
        )


def make_smolvla_config(
    policy_cfg: dict,
    *,
    state_dim: int,
    action_dim: int,
    camera_keys: list[str],
    normalization_mode: str,
    device: str | torch.device,
) -> SmolVLAConfig:
    missing = [k for k in POLICY_CONFIG_KEYS if k not in policy_cfg]
    unknown = [k for k in policy_cfg if k not in POLICY_CONFIG_KEYS]
    if missing or unknown:
        raise UserError(
            f"policy section: missing keys {missing}, unknown keys {unknown}; expected {list(POLICY_CONFIG_KEYS)}"
        )
    # Ranges, square images, n_action_steps <= chunk_size and the normalization mode are checked at config load
    height, width = policy_cfg["resize_imgs_with_padding"]
    bad_keys = [k for k in camera_keys if not k.startswith(f"{OBS_IMAGES}.")]
    if not camera_keys or bad_keys:
        raise UserError(f"camera keys must look like '{OBS_IMAGES}.camera1'; got {camera_keys}")
    mode = NormalizationMode[normalization_mode]
    for dim, name, limit in ((state_dim, "state", "max_state_dim"), (action_dim, "action", "max_action_dim")):
        if dim > policy_cfg[limit]:
            raise UserError(f"the {name} has {dim} dims but policy.{limit}={policy_cfg[limit]}; raise policy.{limit}")
    input_features = {key: PolicyFeature(FeatureType.VISUAL, (3, height, width)) for key in camera_keys}
    input_features[OBS_STATE] = PolicyFeature(FeatureType.STATE, (state_dim,))
    return SmolVLAConfig(
        n_obs_steps=policy_cfg["n_obs_steps"],
        chunk_size=policy_cfg["chunk_size"],
        n_action_steps=policy_cfg["n_action_steps"],
        max_state_dim=policy_cfg["max_state_dim"],
        max_action_dim=policy_cfg["max_action_dim"],
        num_steps=policy_cfg["num_steps"],
        resize_imgs_with_padding=(height, width),
        tokenizer_max_length=policy_cfg["tokenizer_max_length"],
        freeze_vision_encoder=policy_cfg["freeze_vision_encoder"],
        train_expert_only=policy_cfg["train_expert_only"],
        train_state_proj=policy_cfg["train_state_proj"],
        num_vlm_layers=policy_cfg["num_vlm_layers"],
        vlm_model_name=str(policy_cfg["vlm_model_name"]),
        # With a trained SmolVLA to start from, its checkpoint holds the VLM weights: downloading the VLM's
        # own weights first would only be overwritten.
        load_vlm_weights=bool(policy_cfg["load_vlm_weights"]) and policy_cfg["pretrained_model_id"] is None,
        input_features=input_features,
        output_features={ACTION: PolicyFeature(FeatureType.ACTION, (action_dim,))},
        normalization_mapping={"VISUAL": NormalizationMode.IDENTITY, "STATE": mode, "ACTION": mode},
        device=str(device),
        push_to_hub=False,
    )


def to_lerobot_stats(stats: dict, *, state_dim: int, action_dim: int, mode: NormalizationMode) -> dict:
    """Our stats ({key: {stat: array}}) as lerobot's normalizer takes them, checked against the data's dims, with
    near-constant dimensions normalized to a constant (insertion_vla.stats.floor_constant_dims)."""
    lerobot_stats = {}
    for key, dim in ((OBS_STATE, state_dim), (ACTION, action_dim)):
        if key not in stats:
            raise UserError(f"the stats have no {key!r} entry (found {sorted(stats)}); recompute them")
    stats = floor_constant_dims({key: stats[key] for key in (OBS_STATE, ACTION)})
    for key, dim in ((OBS_STATE, state_dim), (ACTION, action_dim)):
        entry = {
            name: np.asarray(value, dtype=np.float32) for name, value in stats[key].items() if name in NORMALIZER_STATS
        }
        missing = [name for name in STATS_NEEDED[mode] if name not in entry]
        if missing:
            raise UserError(f"normalization mode {mode.name} needs stats {missing} for {key!r}; recompute the stats")
        for name, value in entry.items():
            if value.shape != (dim,):
                raise UserError(
                    f"stats[{key!r}][{name!r}] has shape {value.shape} but the data's {key} has {dim} dims: the stats "
                    "file was made for other data; recompute it for this dataset"
                )
        lerobot_stats[key] = entry
    return lerobot_stats


def check_image_size(policy: SmolVLAPolicy) -> None:
    """The image side must split into whole patches that SmolVLM's pixel shuffle can fold (e.g. 64 for the 500M)."""
    vlm_config = policy.model.vlm_with_expert.config
    multiple = vlm_config.vision_config.patch_size * vlm_config.scale_factor
    side = policy.config.resize_imgs_with_padding[0]
    if side % multiple:
        raise UserError(
            f"policy.resize_imgs_with_padding={list(policy.config.resize_imgs_with_padding)}: with "
            f"{policy.config.vlm_model_name} the side must be a multiple of {multiple} (patch_size "
            f"{vlm_config.vision_config.patch_size} x scale_factor {vlm_config.scale_factor})"
        )


def freeze_unreached_vlm_layers(policy: SmolVLAPolicy) -> None:
    """Freeze the VLM's last layer(s) and final norm when the VLM trains (train_expert_only false), as lerobot means to.

    Their outputs never reach the action expert, so they get no gradient, and DDP stops at the second step
    ("Expected to have finished reduction..."). lerobot 0.4.4 freezes them by the names "text_model.model.layers.N."
    and "text_model.model.norm.weight", which transformers 4.57 spells "text_model.layers.N." and
    "text_model.norm.weight": it freezes nothing. Same rule here, with today's names.
    """
    vlm_with_expert = policy.model.vlm_with_expert
    if vlm_with_expert.train_expert_only:
        return  # the whole VLM is frozen already
    num_vlm, num_expert = vlm_with_expert.num_vlm_layers, vlm_with_expert.num_expert_layers
    last_layers = [num_vlm - 1]
    if num_vlm != num_expert and num_vlm % num_expert == 0:
        last_layers.append(num_vlm - 2)
    frozen = ["text_model.norm.weight", *(f"text_model.layers.{layer}." for layer in last_layers)]
    for name, parameter in vlm_with_expert.vlm.named_parameters():
        if any(part in name for part in frozen):
            parameter.requires_grad = False


def set_attention(policy: SmolVLAPolicy, implementation: str) -> None:
    """Compute the VLM's and the expert's attention with `implementation`: "eager" (lerobot's matmul-softmax-matmul)
    or "sdpa" (sdpa_attention_forward, the same numbers through torch's fused kernels).

    Set on this policy's SmolVLMWithExpertModel instance only, where lerobot looks it up (get_attention_interface):
    lerobot's class is untouched, so other policies stay eager, and nothing of it is saved.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise UserError(f"policy.attention={implementation!r}: choose one of {list(ATTENTION_IMPLEMENTATIONS)}")
    vlm_with_expert = policy.model.vlm_with_expert
    vars(vlm_with_expert).pop("get_attention_interface", None)  # lerobot's own method again: eager
    if implementation == "sdpa":
        vlm_with_expert.get_attention_interface = sdpa_attention_interface


def sdpa_attention_interface():
    return sdpa_attention_forward


def sdpa_attention_forward(
    attention_mask: torch.Tensor,
    batch_size: int,
    head_dim: int,
    query_states: torch.Tensor,
    key_states: torch.Tensor,
    value_states: torch.Tensor,
) -> torch.Tensor:
    """lerobot 0.4.4's SmolVLMWithExpertModel.eager_attention_forward, computed by scaled_dot_product_attention.

    query (B, Lq, H, D), key and value (B, Lk, Hkv, D), attention_mask (B, Lq, Lk) bool, true where a query may
    attend -> (B, Lq, H * D) in value's dtype. As eager: key/value heads repeated for grouped-query attention
    (head h reads kv head h // (H / Hkv)), scores scaled by head_dim**-0.5, computed in float32 (under autocast both
    run their matmuls in the autocast dtype, softmax in float32).
    """
    heads, kv_heads = query_states.shape[2], key_states.shape[2]
    query = query_states.float().transpose(1, 2)  # (B, H, Lq, D)
    key = key_states.float().transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    value = value_states.float().transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    # A query that may attend to nothing (a padding token) gets a uniform average in eager and 0 or NaN,
    # depending on the kernel, here; let it attend to every key instead: finite, and as in eager no other
    # token reads it (padding is masked as a key everywhere), so the loss and its gradients are unchanged.
    mask = attention_mask | ~attention_mask.any(dim=-1, keepdim=True)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], scale=head_dim**-0.5)
    return output.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(value_states.dtype)


def hub_unavailable_error(hub_names: list[str], err: Exception) -> HubUnavailableError:
    offline = "HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE else "the Hugging Face Hub could not be reached"
    return HubUnavailableError(
        f"{', '.join(repr(n) for n in hub_names)} is not a local directory, so it was looked up on the Hugging Face "
        f"Hub, and {offline} (nor is it in the local Hub cache): {type(err).__name__}: {err}\n"
        "Offline options: point policy.vlm_model_name / policy.pretrained_model_id at local directories (a copy "
        "made with huggingface-cli download on a machine that has the Hub), or, for tests and the demo, write a tiny "
        "random VLM with `python -m insertion_vla.tiny_vlm DIR` and set policy.vlm_model_name=DIR, "
        "policy.pretrained_model_id=null. If the name is a local directory, check the path."
    )


# ----------------------------------------------------------------------------------------------------------------
# Batches


def prepare_batch(batch: dict, preprocessor, device: str | torch.device) -> dict:
    """The dataset's collated batch, ready for the policy: on `device`, images float [0, 1], normalized, tokenized.

    Images arrive as uint8 (B, 3, H, W) and are converted on the device (4x less to copy), giving float [0, 1] as
    lerobot's robots deliver them, so training and the exported processors see the same input. lerobot's own
    preprocessor then normalizes state and action and tokenizes `task`. Keys lerobot does not know
    (frame_index) are dropped by it; `action_is_pad` and `episode_index` are kept.
    """
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key.startswith(f"{OBS_IMAGES}.") and value.dtype == torch.uint8:
                value = value.float().div_(255.0)
        moved[key] = value
    return preprocessor(moved)


def check_batch_images(policy: SmolVLAPolicy, batch: dict) -> None:
    """Images must already have the policy's size: SmolVLA would otherwise resize them itself (bilinear +
    padding), a silent change between training data and what a robot sends."""
    side = policy.config.resize_imgs_with_padding[0]
    for key in policy.config.image_features:
        shape = tuple(batch[key].shape[-3:])
        if shape != (3, side, side):
            raise UserError(f"{key} has shape {shape}, expected (3, {side}, {side}) = policy.resize_imgs_with_padding")


# ----------------------------------------------------------------------------------------------------------------
# Loss


def compute_losses(
    policy: SmolVLAPolicy,
    batch: dict,
    lambda_temporal: float,
    noise: torch.Tensor | None = None,
    time: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Our flow-matching loss on a prepared batch: {"loss", "action_loss", "temporal_loss"} (scalar tensors).

    action_loss: mean squared error of the predicted velocity over the real action dims (the first action_dim of
        max_action_dim) and the in-episode steps (action_is_pad false), averaged over all such elements of the batch.
    temporal_loss: mean squared error between consecutive differences of the predicted clean actions
        (noise - v_t) and of the target actions, over real dims and pairs of in-episode steps.
    loss = action_loss + lambda_temporal * temporal_loss. All in normalized action units.
    noise (B, chunk, max_action_dim) and time (B,) default to lerobot's own draws (standard normal; Beta(1.5, 1)
    scaled into [0.001, 1]); pass fixed ones (validation_noise_and_time) for a validation figure that only moves
    when the model does.
    """
    model = policy.model
    actions = policy.prepare_action(batch)  # (B, chunk, max_action_dim), zero-padded dims
    if actions.shape[1] != policy.config.chunk_size:
        raise UserError(
            f"the batch has {actions.shape[1]} action steps but policy.chunk_size={policy.config.chunk_size}; "
            "set dataset.horizon to policy.chunk_size"
        )
    check_batch_images(policy, batch)
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    if noise is None:
        noise = model.sample_noise(actions.shape, actions.device)
    if time is None:
        time = model.sample_time(actions.shape[0], actions.device)

    # lerobot's inner forward returns only the squared errors (u_t - v_t)^2; v_t itself is captured from
    # action_out_proj with a forward hook (not recomputed: that would run the model twice).
    captured = {}
    hook = model.action_out_proj.register_forward_hook(lambda module, args, output: captured.update(v_t=output))
    try:
        lang_tokens, lang_masks = batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK]
        errors = model.forward(images, img_masks, lang_tokens, lang_masks, state, actions, noise, time)
    finally:
        hook.remove()

    action_dim = policy.config.action_feature.shape[0]
    in_episode = ~batch[ACTION_IS_PAD].to(torch.bool)  # (B, chunk)
    action_loss = masked_mean(errors[..., :action_dim].float(), in_episode)

    # x_t = t*noise + (1-t)*actions and v_t estimates noise - actions, so the clean actions are noise - v_t.
    predicted = (noise - captured["v_t"].float())[..., :action_dim]
    target = actions[..., :action_dim].float()
    step_error = (predicted[:, 1:] - predicted[:, :-1]) - (target[:, 1:] - target[:, :-1])
    temporal_loss = masked_mean(step_error.square(), in_episode[:, 1:] & in_episode[:, :-1])

    return {
        "loss": action_loss + lambda_temporal * temporal_loss,
        "action_loss": action_loss,
        "temporal_loss": temporal_loss,
    }


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, T, A) over the (B, T) entries where mask is true (0 when there are none)."""
    mask = mask.unsqueeze(-1).to(values.dtype)
    count = mask.sum() * values.shape[-1]
    return (values * mask).sum() / count.clamp(min=1)


class TrainingLoss(nn.Module):
    """compute_losses as a module, so DistributedDataParallel can wrap it: DDP(TrainingLoss(policy))(batch, ...).

    (DDP only synchronizes gradients when the forward runs through the wrapper, and SmolVLAPolicy.forward is
    lerobot's loss, not ours.)
    """

    def __init__(self, policy: SmolVLAPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict, lambda_temporal: float, noise=None, time=None) -> dict[str, torch.Tensor]:
        return compute_losses(self.policy, batch, lambda_temporal, noise, time)


class CompiledTrainingLoss(TrainingLoss):
    """TrainingLoss with compute_losses run through torch.compile: the same losses and gradients, faster steps.

    The noise and time a step draws by default are drawn here, outside the compiled graphs, by lerobot's own
    sample_noise / sample_time: the same numbers as TrainingLoss draws for the same seed (inductor's own random
    numbers would differ). Compiling happens in the first forward and the first backward; when that backward has
    run, one console line (first process only) says how long the two took.
    """

    def __init__(self, policy: SmolVLAPolicy, backend: str = "inductor"):
        super().__init__(policy)
        self.backend = backend
        self.compiled_losses = torch.compile(compute_losses, backend=backend)
        self.compile_reported = False

    def forward(self, batch: dict, lambda_temporal: float, noise=None, time=None) -> dict[str, torch.Tensor]:
        model, actions = self.policy.model, batch[ACTION]
        if noise is None:
            noise = model.sample_noise((*actions.shape[:2], self.policy.config.max_action_dim), actions.device)
        if time is None:
            time = model.sample_time(actions.shape[0], actions.device)
        if self.compile_reported:
            return self.compiled_losses(self.policy, batch, lambda_temporal, noise, time)
        self.compile_reported = True
        start = perf_counter()
        losses = self.compiled_losses(self.policy, batch, lambda_temporal, noise, time)
        forward_s = perf_counter() - start

        def report(_grads):
            handle.remove()
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
                print(f"torch.compile ({self.backend}): the first loss forward took {forward_s:.1f} s and its backward "
                      f"{perf_counter() - start - forward_s:.1f} s, compiling included", flush=True)

        # called once every trainable parameter has its gradient: the end of the first backward
        handle = torch.autograd.graph.register_multi_grad_hook(
            [p for p in self.policy.parameters() if p.requires_grad], report
        )
        return losses


def make_training_loss(policy: SmolVLAPolicy, compile: bool) -> TrainingLoss:
    """The loss module a training loop calls (and DistributedDataParallel wraps): compiled when `compile`
    (training.compile)."""
    return CompiledTrainingLoss(policy) if compile else TrainingLoss(policy)


def validation_noise_and_time(
    policy: SmolVLAPolicy, episode_index: torch.Tensor, frame_index: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (B, chunk, max_action_dim) and time (B,) fixed per sample: drawn from a generator seeded by
    (seed, episode, frame), so a sample gets the same draw whatever its batch, rank or step. Same distributions as
    lerobot's sample_noise / sample_time; time by inverse CDF (Beta(1.5, 1) has CDF t^1.5)."""
    shape = (policy.config.chunk_size, policy.config.max_action_dim)
    noises, times = [], []
    for episode, frame in zip(episode_index.tolist(), frame_index.tolist()):
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + episode) * 1_000_003 + frame) % 2**63)
        noises.append(torch.randn(shape, generator=generator))
        times.append(torch.rand((), generator=generator).pow(1 / 1.5) * 0.999 + 0.001)
    device = policy.model.action_out_proj.weight.device
    return torch.stack(noises).to(device), torch.stack(times).to(device)


# ----------------------------------------------------------------------------------------------------------------
# Inference


@torch.no_grad()
def predict_action_chunk(
    policy: SmolVLAPolicy, batch: dict, postprocessor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Full action chunks (B, chunk, action_dim) in joint units (denormalized by the postprocessor, on the CPU)
    for a prepared batch. Runs lerobot's sampler (policy.config.num_steps denoising steps); keeps the policy's
    train/eval mode as it was (lerobot's predict_action_chunk switches to eval)."""
    was_training = policy.training
    try:
        actions = policy.predict_action_chunk(batch, noise=noise)
    finally:
        policy.train(was_training)
    return postprocessor(actions)
