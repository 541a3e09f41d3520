"""The training configuration: its schema with defaults, YAML loading, `--section.key=value` overrides.

A config is a plain nested dict. Every key that may appear is declared in SCHEMA with its default and the
types it accepts, so a typo is an error that names the closest valid key instead of a silently ignored
setting. Defaults are the values of the real 5-GPU simulation run (train_config_smolvla_sim.yaml).
"""

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from episode_format.atomic import atomic_write_text
from insertion_vla.errors import UserError


class ConfigError(UserError):
    pass


@dataclass(frozen=True)
class Field:
    default: object
    types: tuple  # accepted Python types; NoneType where null is allowed
    help: str = ""


NoneType = type(None)
NUMBER = (int, float)


def _field(default, *types, help=""):
    return Field(default, types or (type(default),), help)


SCHEMA = {
    "seed": _field(1000, help="seed of every random choice (data order, noise, validation split)"),
    "output_dir": _field("outputs/train/smolvla_needle_insertion_sim", help="checkpoints, logs, plots"),
    "normalization": {
        "enable": _field(True, help="normalize state/action with the stats file (false: explicit opt-out)"),
        "stats_file": _field("dataset_stats_sim.yaml", help="made by compute_dataset_stats.py"),
        "mode": _field("MEAN_STD", help="lerobot NormalizationMode: MEAN_STD, MIN_MAX or IDENTITY"),
    },
    "dataset": {
        "root_dir": _field("data/Eye_trocar_sim", help="searched recursively for *.h5 / *.hdf5"),
        "horizon": _field(50, help="actions per sample (the action chunk)"),
        "use_ee_pose": _field(True, help="state includes observations/ee_pose (when state_key is null)"),
        "use_qpos": _field(False, help="state includes observations/qpos (when state_key is null)"),
        "state_key": _field(None, str, NoneType, help="HDF5 path of the state; overrides use_ee_pose/use_qpos"),
        "action_key": _field("action", help="HDF5 path of the action"),
        "task_instruction": _field(
            "Insert needle into eye trocar in simulation", str, NoneType,
            help="language instruction; null: each episode's `task` attribute",
        ),
        "cameras": _field(
            {"side_camera": "camera1", "tool_camera": "camera2", "top_camera": "camera3"},
            help="HDF5 camera name -> lerobot name (observation.images.<name>)",
        ),
        "augment": _field(False, help="photometric augmentation of training images (real data)"),
        "augmentation": {
            "brightness": _field(0.2, *NUMBER, help="max relative brightness change"),
            "contrast": _field(0.2, *NUMBER, help="max relative contrast change"),
            "saturation": _field(0.2, *NUMBER, help="max relative saturation change"),
            "hue": _field(0.05, *NUMBER, help="max hue shift, fraction of the colour circle"),
            "noise_std": _field(3.0, *NUMBER, help="std of Gaussian pixel noise, 0-255 scale"),
        },
    },
    "policy": {
        "vlm_model_name": _field("HuggingFaceTB/SmolVLM2-500M-Video-Instruct", help="Hub id or local dir"),
        "pretrained_model_id": _field(None, str, NoneType, help="trained SmolVLA to start from (dir or Hub id)"),
        "load_vlm_weights": _field(False, help="load the VLM's pretrained weights (else random unless pretrained)"),
        "n_obs_steps": _field(1, help="observation frames per sample (SmolVLA uses 1)"),
        "chunk_size": _field(50, help="actions predicted at once; equals dataset.horizon"),
        "n_action_steps": _field(50, help="actions of a chunk executed before predicting again"),
        "max_state_dim": _field(32, help="state zero-padded to this size inside SmolVLA"),
        "max_action_dim": _field(32, help="action zero-padded to this size inside SmolVLA"),
        "num_steps": _field(10, help="flow-matching denoising steps at inference"),
        "resize_imgs_with_padding": _field([512, 512], list, help="image size the policy sees"),
        "tokenizer_max_length": _field(48, help="language tokens of the instruction"),
        "freeze_vision_encoder": _field(True, help="keep the VLM's vision encoder frozen"),
        "train_expert_only": _field(True, help="train the action expert only; the VLM stays frozen"),
        "train_state_proj": _field(True, help="train the state projection"),
        "num_vlm_layers": _field(16, help="VLM layers kept (the first N)"),
    },
    "training": {
        "steps": _field(30000, help="steps of the current schedule"),
        "batch_size": _field(16, help="per GPU / process"),
        "gradient_accumulation_steps": _field(1, help="micro-batches per optimizer step"),
        "num_workers": _field(4, help="DataLoader workers per process"),
        "log_freq": _field(100, help="console / W&B line every N steps"),
        "save_freq": _field(2000, help="checkpoint every N steps"),
        "keep_last_checkpoints": _field(None, int, NoneType, help="keep the newest N step checkpoints; null: all"),
        "lambda_temporal": _field(0.1, *NUMBER, help="weight of the temporal-consistency loss"),
        "loss_spike_threshold": _field(10.0, *NUMBER, help="spike: loss > threshold x recent mean"),
        "loss_spike_window": _field(100, help="losses in the recent mean"),
        "max_nonfinite_steps": _field(10, help="stop after this many non-finite steps in a row"),
        "use_bfloat16": _field(True, help="bf16 autocast on CUDA"),
        "device": _field("auto", help="auto, cuda or cpu"),
    },
    "validation": {
        "enable": _field(True, help="hold out episodes and validate on them"),
        "num_episodes": _field(20, help="episodes held out by a seeded choice"),
        "val_freq": _field(2000, help="validate every N steps and at the end"),
        "max_samples": _field(None, int, NoneType, help="cap on validation frames; null: all"),
        "batch_size": _field(16, help="validation batch per process"),
        "plot_episodes": _field(3, help="held-out episodes drawn in the trajectory plot"),
    },
    "evaluation": {
        "enable": _field(False, help="closed-loop episodes in the simulator during training (rank 0)"),
        "freq": _field(2000, help="every N steps and at the end"),
        "episodes": _field(10, help="simulated episodes per evaluation"),
    },
    "optimizer": {
        "lr": _field(1e-4, *NUMBER, help="peak learning rate"),
        "betas": _field([0.9, 0.95], list, help="AdamW betas"),
        "eps": _field(1e-8, *NUMBER, help="AdamW epsilon"),
        "weight_decay": _field(1e-10, *NUMBER, help="AdamW weight decay"),
        "grad_clip_norm": _field(10.0, *NUMBER, help="clip the gradient norm to this"),
    },
    "scheduler": {
        "num_warmup_steps": _field(1000, help="linear warmup to optimizer.lr"),
        "num_decay_steps": _field(30000, help="cosine decay to decay_lr, counted from the schedule start"),
        "decay_lr": _field(2.5e-6, *NUMBER, help="LR at the end of the cosine decay"),
    },
    "wandb": {
        "enable": _field(True, help="also works with WANDB_MODE=offline"),
        "project": _field("smolvla-meca500-insertion-sim", help="W&B project"),
        "entity": _field(None, str, NoneType, help="W&B team or user; null: your default"),
        "name": _field(None, str, NoneType, help="run name; null: W&B picks one"),
        "tags": _field([], list, help="run tags"),
        "notes": _field(None, str, NoneType, help="run notes"),
    },
}


def defaults(schema=SCHEMA) -> dict:
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _all_keys(schema=SCHEMA, prefix="") -> list[str]:
    keys = []
    for k, v in schema.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def _unknown_key_error(dotted: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, _all_keys(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{dotted}' in {source}.{hint}")


def _type_name(types) -> str:
    return " or ".join("null" if t is NoneType else t.__name__ for t in types)


def _check_value(dotted: str, value, field: Field, source: str):
    # bool is an int in Python; a flag is never a number and a number never a flag
    ok = isinstance(value, field.types) and not (isinstance(value, bool) and bool not in field.types)
    if not ok:
        raise ConfigError(
            f"config key '{dotted}' in {source} must be {_type_name(field.types)}, got {value!r} "
            f"({type(value).__name__}). Default: {field.default!r}."
        )
    if isinstance(value, float) and int in field.types and float not in field.types:
        raise ConfigError(f"config key '{dotted}' in {source} must be a whole number, got {value!r}.")


def _yaml11_float(value, field: Field):
    """YAML 1.1 reads `1e-4` (no dot) as a string; for a numeric key it is the number the user meant."""
    if isinstance(value, str) and float in field.types:
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _merge(base: dict, update: dict, schema: dict, source: str, prefix=""):
    for key, value in update.items():
        dotted = prefix + str(key)
        if key not in schema:
            raise _unknown_key_error(dotted, source)
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} is a section: give keys under it, got {value!r}.")
            _merge(base[key], value, schema[key], source, dotted + ".")
        else:
            value = _yaml11_float(value, schema[key])
            _check_value(dotted, value, schema[key], source)
            base[key] = value  # a dict or list value replaces the old one whole


def parse_override(arg: str) -> tuple[str, object]:
    """'--section.key=value' -> ('section.key', value parsed as YAML)."""
    if not arg.startswith("--") or "=" not in arg:
        raise ConfigError(f"cannot read override '{arg}': write it as --section.key=value, e.g. --training.steps=100")
    dotted, text = arg[2:].split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of override '{arg}' as YAML: {err}") from None
    return dotted, value


def _nest(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def load_config(path, overrides: list[str] = ()) -> dict:
    """Defaults <- YAML file <- `--section.key=value` overrides, each validated against SCHEMA."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}. Pass --config with an existing YAML file.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}.")
        _merge(cfg, data, SCHEMA, str(path))
    for arg in overrides:
        dotted, value = parse_override(arg)
        _merge(cfg, _nest(dotted, value), SCHEMA, f"override '{arg}'")
    validate(cfg)
    return cfg


def validate(cfg: dict):
    """Checks across keys that the per-key types cannot express."""
    d, p = cfg["dataset"], cfg["policy"]
    if d["state_key"] is None and not (d["use_ee_pose"] or d["use_qpos"]):
        raise ConfigError(
            "dataset.use_ee_pose and dataset.use_qpos are both false and dataset.state_key is null: "
            "the policy needs a state. Set one of them."
        )
    if not d["cameras"] or not all(isinstance(k, str) and isinstance(v, str) for k, v in d["cameras"].items()):
        raise ConfigError(f"dataset.cameras must map HDF5 camera names to lerobot names, got {d['cameras']!r}.")
    size = p["resize_imgs_with_padding"]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"policy.resize_imgs_with_padding must be two positive integers, got {size!r}.")
    if d["horizon"] != p["chunk_size"]:
        raise ConfigError(
            f"dataset.horizon ({d['horizon']}) must equal policy.chunk_size ({p['chunk_size']}): "
            "each sample carries one action chunk."
        )
    for dotted in ("training.steps", "training.batch_size", "training.gradient_accumulation_steps",
                   "training.log_freq", "training.save_freq", "validation.val_freq", "dataset.horizon"):
        section, key = dotted.split(".")
        if cfg[section][key] < 1:
            raise ConfigError(f"{dotted} must be at least 1, got {cfg[section][key]}.")
    keep = cfg["training"]["keep_last_checkpoints"]
    if keep is not None and keep < 1:
        raise ConfigError(f"training.keep_last_checkpoints must be at least 1 or null (keep all), got {keep}.")
    if cfg["normalization"]["mode"] not in ("MEAN_STD", "MIN_MAX", "IDENTITY"):
        raise ConfigError(f"normalization.mode must be MEAN_STD, MIN_MAX or IDENTITY, got {cfg['normalization']['mode']!r}.")


def save_config(cfg: dict, path):
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def markdown_reference(schema=SCHEMA, prefix="") -> str:
    """Every key with its default and meaning, as the README's config table (`python -m insertion_vla.config`)."""
    rows = [] if prefix else ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, field in schema.items():
        if isinstance(field, dict):
            rows.append(markdown_reference(field, prefix + key + "."))
        else:
            default = yaml.safe_dump(field.default, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append(f"| `{prefix}{key}` | `{default}` | {field.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_reference())
